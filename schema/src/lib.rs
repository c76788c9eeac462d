//! Shared vocabulary of MAOSIC: instruction language, agent wire protocol, capability descriptors, units.

pub mod capability;
pub mod program;
pub mod units;
pub mod protocol;
