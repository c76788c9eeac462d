//! NE-1000-family syringe pump driver over RS-232 (tokio-serial): local limits checked before any
//! byte is written, whole-frame replies, timeouts, bounded retries, typed errors. Several pumps
//! with different addresses share one port (New Era's pump network) through one [`Ne1000Bus`]:
//! one command and its reply at a time on the wire, replies told apart by address.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_serial::SerialStream;
use tokio_util::codec::FramedRead;

use super::SerialTiming;
use crate::devices::{PumpLimits, PumpStatus, SyringePump};
use crate::error::{check_range, DeviceError};
use crate::ne1000::{self, Command, Direction, PumpState, Reply, ReplyCodec};

/// One serial port carrying a network of pumps: whoever holds the lock owns the wire for one
/// command and its reply.
pub struct Ne1000Bus {
    path: String,
    port: Mutex<Option<FramedRead<SerialStream, ReplyCodec>>>,
}

impl std::fmt::Debug for Ne1000Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ne1000Bus")
            .field("path", &self.path)
            .finish()
    }
}

impl Ne1000Bus {
    /// Wrap an open serial port.
    pub fn new(path: &str, port: SerialStream) -> Arc<Self> {
        Arc::new(Self {
            path: path.to_string(),
            port: Mutex::new(Some(FramedRead::new(port, ReplyCodec::default()))),
        })
    }

    /// Open `path` at `baud` for the pumps on it (`device` names the first, for errors).
    pub fn open(device: &str, path: &str, baud: u32) -> Result<Arc<Self>, DeviceError> {
        let port = crate::pty::open_serial(path, baud).map_err(|e| DeviceError::Open {
            device: device.to_string(),
            port: path.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Self::new(path, port))
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A pump on a serial port (alone, or on a network shared with other addresses).
pub struct Ne1000Pump {
    name: String,
    address: u8,
    limits: PumpLimits,
    timing: SerialTiming,
    bus: Arc<Ne1000Bus>,
    bytes_written: AtomicU64,
}

impl std::fmt::Debug for Ne1000Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ne1000Pump")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish()
    }
}

impl Ne1000Pump {
    /// Wrap an open serial port the pump has to itself.
    pub fn new(
        name: &str,
        port: SerialStream,
        address: u8,
        limits: PumpLimits,
        timing: SerialTiming,
    ) -> Self {
        Self::on_bus(name, Ne1000Bus::new("", port), address, limits, timing)
    }

    /// The pump at `address` on a shared port.
    pub fn on_bus(
        name: &str,
        bus: Arc<Ne1000Bus>,
        address: u8,
        limits: PumpLimits,
        timing: SerialTiming,
    ) -> Self {
        Self {
            name: name.to_string(),
            address: address.min(99),
            limits,
            timing,
            bus,
            bytes_written: AtomicU64::new(0),
        }
    }

    /// Open `path` at `baud` and wrap it.
    pub fn open(
        name: &str,
        path: &str,
        baud: u32,
        address: u8,
        limits: PumpLimits,
        timing: SerialTiming,
    ) -> Result<Self, DeviceError> {
        let bus = Ne1000Bus::open(name, path, baud)?;
        Ok(Self::on_bus(name, bus, address, limits, timing))
    }

    /// Bytes written to the port so far (tests check that refused commands write none).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    fn disconnected(&self, detail: impl std::fmt::Display) -> DeviceError {
        DeviceError::Disconnected {
            device: self.name.clone(),
            detail: detail.to_string(),
        }
    }

    /// Check a command against the local limits. Pure; runs before anything is written.
    pub fn check(&self, cmd: &Command) -> Result<(), DeviceError> {
        let l = &self.limits;
        match cmd {
            Command::Diameter(v) => check_range(
                &self.name,
                "diameter_mm",
                *v,
                l.min_diameter_mm,
                l.max_diameter_mm,
            ),
            Command::Rate(v) => check_range(&self.name, "rate_ul_min", *v, 0.0, l.max_rate_ul_min),
            Command::Volume(v) => {
                check_range(&self.name, "volume_ul", *v, 0.0, l.syringe_volume_ul)
            }
            _ => Ok(()),
        }
    }

    /// Send one command and wait for its reply, with the local limit check first and bounded
    /// retries on timeouts, garbled frames and `?COM` replies.
    pub async fn transact(&self, cmd: &Command) -> Result<Reply, DeviceError> {
        self.check(cmd)?;
        let bytes = ne1000::encode(self.address, cmd).map_err(|e| DeviceError::BadParameter {
            device: self.name.clone(),
            message: e.to_string(),
        })?;
        let mut guard = self.bus.port.lock().await;
        let Some(framed) = guard.as_mut() else {
            return Err(self.disconnected("port was closed after an earlier failure"));
        };
        let attempts = self.timing.retries + 1;
        let mut timed_out = false;
        let mut garbage: Option<String> = None;
        for _attempt in 0..attempts {
            crate::pty::discard_input(framed.get_ref());
            framed.read_buffer_mut().clear();
            let write = async {
                let io = framed.get_mut();
                io.write_all(&bytes).await?;
                io.flush().await
            };
            match tokio::time::timeout(self.timing.timeout(), write).await {
                Ok(Ok(())) => {
                    self.bytes_written
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    *guard = None;
                    return Err(self.disconnected(e));
                }
                Err(_) => {
                    timed_out = true;
                    continue;
                }
            }
            let deadline = tokio::time::Instant::now() + self.timing.timeout();
            loop {
                match tokio::time::timeout_at(deadline, framed.next()).await {
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                    Ok(None) => {
                        *guard = None;
                        return Err(self.disconnected("end of stream"));
                    }
                    Ok(Some(Err(e))) => {
                        *guard = None;
                        return Err(self.disconnected(e));
                    }
                    Ok(Some(Ok(Err(e)))) => {
                        // Garbage on the line: keep listening until the deadline, then resend.
                        garbage = Some(e.to_string());
                        continue;
                    }
                    Ok(Some(Ok(Ok(reply)))) => {
                        if reply.address != self.address {
                            garbage = Some(format!("reply from address {}", reply.address));
                            continue;
                        }
                        match reply.error() {
                            Some("?COM") => {
                                garbage = Some("pump reported a garbled command (?COM)".into());
                                break;
                            }
                            Some(code) => {
                                let detail = match code {
                                    "?OOR" => "value out of the pump's range (?OOR)",
                                    "?NA" => "command not applicable now (?NA)",
                                    "?IGN" => "command ignored (?IGN)",
                                    _ => "unrecognised command (?)",
                                };
                                return Err(DeviceError::Refused {
                                    device: self.name.clone(),
                                    detail: detail.into(),
                                });
                            }
                            None => return Ok(reply),
                        }
                    }
                }
            }
        }
        match garbage {
            Some(g) => Err(DeviceError::Protocol {
                device: self.name.clone(),
                detail: format!(
                    "{g} (after {attempts} attempts{})",
                    if timed_out { ", then timeouts" } else { "" }
                ),
            }),
            None => Err(DeviceError::Timeout {
                device: self.name.clone(),
                timeout: self.timing.timeout(),
                attempts,
            }),
        }
    }

    async fn expect_ok(&self, cmd: Command) -> Result<(), DeviceError> {
        let r = self.transact(&cmd).await?;
        if r.state == PumpState::Alarm && !matches!(cmd, Command::Stop | Command::Status) {
            return Err(DeviceError::Fault {
                device: self.name.clone(),
                detail: alarm_text(&r.data).into(),
            });
        }
        Ok(())
    }
}

/// Operator wording of an alarm code.
pub fn alarm_text(code: &str) -> &'static str {
    match code {
        "?R" => "pump was reset (power interrupted)",
        "?S" => "motor stalled (syringe empty or blocked)",
        "?T" => "communications watchdog timed out",
        "?E" => "program error",
        "?O" => "program phase out of range",
        _ => "unknown alarm",
    }
}

#[async_trait]
impl SyringePump for Ne1000Pump {
    fn name(&self) -> &str {
        &self.name
    }
    fn limits(&self) -> &PumpLimits {
        &self.limits
    }
    async fn set_diameter(&self, mm: f64) -> Result<(), DeviceError> {
        self.expect_ok(Command::Diameter(mm)).await
    }
    async fn set_rate(&self, ul_per_min: f64) -> Result<(), DeviceError> {
        self.expect_ok(Command::Rate(ul_per_min)).await
    }
    async fn set_volume(&self, ul: f64) -> Result<(), DeviceError> {
        self.check(&Command::Volume(ul))?;
        // four digits: µL up to 9999, mL above (large syringes)
        if ul < 9999.5 {
            self.expect_ok(Command::VolumeUnitsUl).await?;
            self.expect_ok(Command::Volume(ul)).await
        } else {
            self.expect_ok(Command::VolumeUnitsMl).await?;
            self.expect_ok(Command::Volume(ul / 1000.0)).await
        }
    }
    async fn set_direction(&self, dir: Direction) -> Result<(), DeviceError> {
        self.expect_ok(Command::Direction(dir)).await
    }
    async fn run(&self) -> Result<(), DeviceError> {
        self.expect_ok(Command::Run).await
    }
    async fn stop(&self) -> Result<(), DeviceError> {
        self.expect_ok(Command::Stop).await
    }
    async fn clear_dispensed(&self) -> Result<(), DeviceError> {
        self.expect_ok(Command::ClearDispensed(Direction::Infuse))
            .await?;
        self.expect_ok(Command::ClearDispensed(Direction::Withdraw))
            .await
    }
    async fn status(&self) -> Result<PumpStatus, DeviceError> {
        let r = self.transact(&Command::QueryDispensed).await?;
        let (state, alarm) = if r.state == PumpState::Alarm {
            (PumpState::Alarm, Some(r.data.clone()))
        } else {
            (r.state, None)
        };
        if alarm.is_some() {
            return Ok(PumpStatus {
                state,
                alarm,
                infused_ul: 0.0,
                withdrawn_ul: 0.0,
            });
        }
        let (infused_ul, withdrawn_ul) =
            ne1000::parse_dispensed(&r.data).ok_or_else(|| DeviceError::Protocol {
                device: self.name.clone(),
                detail: format!("cannot read dispensed volumes from {:?}", r.data),
            })?;
        Ok(PumpStatus {
            state,
            alarm,
            infused_ul,
            withdrawn_ul,
        })
    }
    async fn rate(&self) -> Result<f64, DeviceError> {
        let r = self.transact(&Command::QueryRate).await?;
        if r.state == PumpState::Alarm {
            return Err(DeviceError::Fault {
                device: self.name.clone(),
                detail: alarm_text(&r.data).into(),
            });
        }
        ne1000::parse_rate(&r.data).ok_or_else(|| DeviceError::Protocol {
            device: self.name.clone(),
            detail: format!("cannot read the rate from {:?}", r.data),
        })
    }
    async fn version(&self) -> Result<String, DeviceError> {
        Ok(self.transact(&Command::Version).await?.data)
    }
}
