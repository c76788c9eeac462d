//! MAOSIC edge agent: link to the cloud, program executor, safety kernel, drivers, virtual lab.
