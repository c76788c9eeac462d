//! Real protocol drivers over serial ports (tokio-serial): NE-1000 syringe pumps and a Modbus RTU
//! PID temperature controller. The virtual lab runs these unchanged against pseudo-terminals.

pub mod external;
pub mod ne1000_pump;
pub mod pid_modbus;
pub mod profiles;

use std::time::Duration;

/// Timing of a serial driver: how long to wait for a whole reply and how often to try.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialTiming {
    /// Wait for a complete reply, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Extra attempts after the first (bounded retries).
    #[serde(default = "default_retries")]
    pub retries: u32,
}
fn default_timeout_ms() -> u64 {
    300
}
fn default_retries() -> u32 {
    2
}
impl Default for SerialTiming {
    fn default() -> Self {
        Self {
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
        }
    }
}
impl SerialTiming {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
