//! The subcommands of `maosic-server` that are tools rather than the service: the instruction
//! language ([`lang`]), the optimizer benchmark ([`optimize_bench`]) and spectrum analysis
//! ([`analyze`]).

pub mod analyze;
pub mod lang;
pub mod optimize_bench;
