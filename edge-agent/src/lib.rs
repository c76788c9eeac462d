//! MAOSIC edge agent: the link to the cloud (this crate) over the lab side (crate `maosic-lab`:
//! devices, drivers, virtual lab, executor, safety kernel).

pub mod backoff;
pub mod control;
pub mod link;
pub mod spool;
pub mod ssh;
pub mod transport;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
