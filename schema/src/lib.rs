//! Shared vocabulary of MAOSIC: instruction language, agent wire protocol, capability descriptors, units.
