//! Lab side of the edge agent: device traits, serial drivers, the virtual lab, the program executor and the safety kernel.
