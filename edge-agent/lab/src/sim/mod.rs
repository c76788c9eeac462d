//! The virtual lab: a digital twin of the paper's setup. Serial devices (pumps, PID controller)
//! are served on pseudo-terminals on their own runtime thread, so the real drivers talk to them as
//! to hardware; the instruments without a serial protocol are virtual trait implementations.

pub mod controller;
pub mod instruments;
pub mod optics;
pub mod pump;
pub mod servers;
pub mod thermal;
pub mod twin;
pub mod world;
