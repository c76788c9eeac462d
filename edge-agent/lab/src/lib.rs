//! Lab side of the edge agent: device traits, serial drivers, the virtual lab, the program executor and the safety kernel.
//!
//! Entry points: [`lab::Lab::build`] (a lab from its TOML configuration, virtual or real),
//! [`lab::Lab::run_program`], [`lab::Lab::call`], [`lab::Lab::estop`], [`lab::Lab::link_lost`];
//! the operator commands live in [`cli`].

pub mod cli;
pub mod clock;
pub mod config;
pub mod devices;
pub mod drivers;
pub mod error;
pub mod executor;
pub mod lab;
pub mod ne1000;
pub mod probe;
pub mod pty;
pub mod pump_models;
pub mod record;
pub mod safety;
pub mod sim;
