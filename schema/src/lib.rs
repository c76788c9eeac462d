//! Shared vocabulary of MAOSIC: instruction language, agent wire protocol, capability descriptors, units.

pub mod capability;
pub mod lang;
pub mod program;
pub mod protocol;
pub mod units;
