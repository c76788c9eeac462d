//! NE-1000-family syringe pump driver over RS-232 (tokio-serial): local limits checked before any
//! byte is written, whole-frame replies, timeouts, bounded retries, typed errors. Several pumps
//! with different addresses share one port (New Era's pump network) through one [`Ne1000Bus`]:
//! one command and its reply at a time on the wire, replies told apart by address.
//!
//! The model table (`pump_models`) bounds rates by what the pump can push through the syringe
//! fitted, picks the rate and volume units, and is checked against the pump's `VER` reply at
//! start. With `safe_mode_s` the pump's Safe mode is switched on at start: every packet is
//! length- and CRC-checked, and the pump stops by itself with a `?T` alarm when no valid packet
//! reaches it within that many seconds. A keep-alive task sends a status query whenever the line
//! has been quiet for a quarter of the time-out, so only a dead agent (or a dead link) lets it
//! expire.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_serial::SerialStream;
use tokio_util::codec::FramedRead;

use super::SerialTiming;
use crate::devices::{PumpLimits, PumpStatus, SyringePump};
use crate::error::{check_range, DeviceError};
use crate::ne1000::{self, Command, Direction, Framing, PumpState, RateUnit, Reply, ReplyCodec};
use crate::pump_models::{PumpModel, NE_1000};

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
    model: &'static PumpModel,
    /// Syringe inside diameter the pump was last set to (f64 bits), for the model's rate range.
    diameter_mm: AtomicU64,
    /// Safe mode's communications time-out to switch on at start, s (`None`: basic protocol).
    safe_timeout_s: Option<u8>,
    safe: AtomicBool,
    /// Rate units last accepted by the pump.
    rate_unit: std::sync::Mutex<Option<RateUnit>>,
    /// The last reply said the pump is moving.
    running: AtomicBool,
    /// An alarm the keep-alive read (the pump reports an alarm once): the next command sees it.
    pending_alarm: std::sync::Mutex<Option<String>>,
    /// When a command was last written.
    last_tx: std::sync::Mutex<Instant>,
}

impl std::fmt::Debug for Ne1000Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ne1000Pump")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("model", &self.model.name)
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

    /// The pump at `address` on a shared port (an NE-1000 until [`Ne1000Pump::with_model`]).
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
            model: &NE_1000,
            diameter_mm: AtomicU64::new(f64::NAN.to_bits()),
            safe_timeout_s: None,
            safe: AtomicBool::new(false),
            rate_unit: std::sync::Mutex::new(None),
            running: AtomicBool::new(false),
            pending_alarm: std::sync::Mutex::new(None),
            last_tx: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// The pump's model and the syringe fitted (its rate range follows from both).
    pub fn with_model(mut self, model: &'static PumpModel, diameter_mm: f64) -> Self {
        self.model = model;
        self.diameter_mm = AtomicU64::new(diameter_mm.to_bits());
        self
    }

    /// Switch Safe mode on at [`Ne1000Pump::start`] with this communications time-out, s.
    pub fn with_safe_mode(mut self, timeout_s: u8) -> Self {
        self.safe_timeout_s = (timeout_s > 0).then_some(timeout_s);
        self
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

    pub fn model(&self) -> &'static PumpModel {
        self.model
    }

    /// Is Safe mode on (the pump answered `SAF`)?
    pub fn safe_mode(&self) -> bool {
        self.safe.load(Ordering::SeqCst)
    }

    /// Bytes that stop this pump whatever protocol it speaks, for the watchdog thread: with Safe
    /// mode configured, the Safe `STP` packet, a CR (a basic-mode pump ends the packet's bytes as
    /// a line of its own there) and the basic `STP` line (which a Safe-mode pump ignores).
    pub fn emergency_stop_bytes(&self) -> Vec<u8> {
        let basic = ne1000::encode(self.address, &Command::Stop).unwrap_or_default();
        if self.safe_timeout_s.is_none() {
            return basic;
        }
        let mut v = ne1000::encode_safe(self.address, &Command::Stop).unwrap_or_default();
        v.push(b'\r');
        v.extend_from_slice(&basic);
        v
    }

    /// Bring the pump up: switch Safe mode on (from basic mode or already in it) when configured,
    /// take any alarm it kept from before (a reset, a comms time-out), check that `VER` names the
    /// configured model, and start the keep-alive. Refuses a pump of another model.
    pub async fn start(self: &Arc<Self>) -> Result<(), DeviceError> {
        if let Some(n) = self.safe_timeout_s {
            let cmd = Command::Safe(n);
            let basic = ne1000::encode(self.address, &cmd).map_err(|e| self.bad(e))?;
            // A pump already in Safe mode ignores the basic line: then say it as a packet.
            let r = match self.exchange(&basic, 1).await {
                Ok(r) => r,
                Err(DeviceError::Timeout { .. } | DeviceError::Protocol { .. }) => {
                    let packet =
                        ne1000::encode_safe(self.address, &cmd).map_err(|e| self.bad(e))?;
                    self.exchange(&packet, self.timing.retries + 1).await?
                }
                Err(e) => return Err(e),
            };
            if let Some(code) = r.error() {
                return Err(DeviceError::Refused {
                    device: self.name.clone(),
                    detail: format!("Safe mode (SAF{n}) refused: {code}"),
                });
            }
            self.safe.store(true, Ordering::SeqCst);
            tracing::info!(pump = %self.name, timeout_s = n, "Safe mode on");
        }
        let r = self.transact(&Command::Status).await?;
        if r.state == PumpState::Alarm {
            tracing::warn!(pump = %self.name, alarm = alarm_text(&r.data), "pump reported an alarm kept from before the agent started");
        }
        let version = self.transact(&Command::Version).await?.data;
        if !self.model.matches_version(&version) {
            return Err(DeviceError::Refused {
                device: self.name.clone(),
                detail: format!(
                    "configured as {} ({}) but the pump at address {} reports {version:?}; set `model` to the pump's model",
                    self.model.name, self.model.title, self.address
                ),
            });
        }
        if let Some(n) = self.safe_timeout_s {
            spawn_keepalive(Arc::downgrade(self), Duration::from_secs(u64::from(n)) / 4);
        }
        Ok(())
    }

    fn bad(&self, e: impl std::fmt::Display) -> DeviceError {
        DeviceError::BadParameter {
            device: self.name.clone(),
            message: e.to_string(),
        }
    }

    fn diameter(&self) -> f64 {
        f64::from_bits(self.diameter_mm.load(Ordering::SeqCst))
    }

    fn quiet_for(&self) -> Duration {
        self.last_tx.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    fn take_pending_alarm(&self) -> Option<String> {
        self.pending_alarm.lock().ok().and_then(|mut a| a.take())
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

    /// Check a command against the local limits and the model's range for the syringe fitted.
    /// Pure; runs before anything is written.
    pub fn check(&self, cmd: &Command) -> Result<(), DeviceError> {
        let l = &self.limits;
        let m = self.model;
        match cmd {
            Command::Diameter(v) => check_range(
                &self.name,
                "diameter_mm",
                *v,
                l.min_diameter_mm.max(m.min_diameter_mm),
                l.max_diameter_mm.min(m.max_diameter_mm),
            ),
            Command::Rate(v, _) => {
                check_range(&self.name, "rate_ul_min", *v, 0.0, l.max_rate_ul_min)?;
                let d = self.diameter();
                if d.is_finite() && *v > 0.0 {
                    let (lo, hi) = (m.min_rate_ul_min(d), m.max_rate_ul_min(d));
                    if *v > hi * (1.0 + 1e-9) || *v < lo * (1.0 - 1e-9) {
                        return Err(DeviceError::BadParameter {
                            device: self.name.clone(),
                            message: format!(
                                "rate {v} µL/min is outside what an {} pumps through a {d} mm syringe ({lo:.4} to {hi:.1} µL/min); nothing was sent",
                                m.name
                            ),
                        });
                    }
                }
                Ok(())
            }
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
        let framing = if self.safe_mode() {
            Framing::Safe
        } else {
            Framing::Basic
        };
        let bytes = ne1000::encode_framed(framing, self.address, cmd).map_err(|e| self.bad(e))?;
        self.exchange(&bytes, self.timing.retries + 1).await
    }

    /// Write `bytes` and wait for this pump's reply, up to `attempts` times.
    async fn exchange(&self, bytes: &[u8], attempts: u32) -> Result<Reply, DeviceError> {
        let mut guard = self.bus.port.lock().await;
        let Some(framed) = guard.as_mut() else {
            return Err(self.disconnected("port was closed after an earlier failure"));
        };
        let mut timed_out = false;
        let mut garbage: Option<String> = None;
        for _attempt in 0..attempts {
            crate::pty::discard_input(framed.get_ref());
            framed.read_buffer_mut().clear();
            let write = async {
                let io = framed.get_mut();
                io.write_all(bytes).await?;
                io.flush().await
            };
            match tokio::time::timeout(self.timing.timeout(), write).await {
                Ok(Ok(())) => {
                    self.bytes_written
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if let Ok(mut t) = self.last_tx.lock() {
                        *t = Instant::now();
                    }
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
                            None => {
                                self.running.store(
                                    matches!(
                                        reply.state,
                                        PumpState::Infusing
                                            | PumpState::Withdrawing
                                            | PumpState::Purging
                                    ),
                                    Ordering::SeqCst,
                                );
                                return Ok(reply);
                            }
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
        let stopping = matches!(cmd, Command::Stop | Command::Status);
        if !stopping {
            if let Some(a) = self.take_pending_alarm() {
                return Err(DeviceError::Fault {
                    device: self.name.clone(),
                    detail: alarm_text(&a).into(),
                });
            }
        }
        let r = self.transact(&cmd).await?;
        if r.state == PumpState::Alarm && !stopping {
            return Err(DeviceError::Fault {
                device: self.name.clone(),
                detail: alarm_text(&r.data).into(),
            });
        }
        Ok(())
    }
}

/// Keep Safe mode's communications time-out from expiring while the agent lives: a status query
/// whenever nothing was written for `quiet`. An alarm it reads is kept for the next command.
fn spawn_keepalive(pump: Weak<Ne1000Pump>, quiet: Duration) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(quiet / 2).await;
            let Some(p) = pump.upgrade() else { return };
            if p.quiet_for() < quiet {
                continue;
            }
            match p.transact(&Command::Status).await {
                Ok(r) => {
                    if r.state == PumpState::Alarm {
                        tracing::warn!(pump = %p.name, alarm = alarm_text(&r.data), "pump alarm");
                        if let Ok(mut a) = p.pending_alarm.lock() {
                            *a = Some(r.data);
                        }
                    }
                    failing = false;
                }
                Err(DeviceError::Disconnected { .. }) => return,
                Err(e) => {
                    if !failing {
                        tracing::warn!(pump = %p.name, error = %e, "Safe-mode keep-alive failed");
                    }
                    failing = true;
                }
            }
        }
    });
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
        self.expect_ok(Command::Diameter(mm)).await?;
        self.diameter_mm.store(mm.to_bits(), Ordering::SeqCst);
        Ok(())
    }
    async fn set_rate(&self, ul_per_min: f64) -> Result<(), DeviceError> {
        self.check(&Command::Rate(ul_per_min, RateUnit::UlPerMin))?;
        let current = self.rate_unit.lock().ok().and_then(|u| *u);
        let running = self.running.load(Ordering::SeqCst);
        let unit = self
            .model
            .rate_unit(ul_per_min, current, running)
            .ok_or_else(|| {
                self.bad(format!(
                    "rate {ul_per_min} µL/min cannot be written in four digits{}; nothing was sent",
                    if running {
                        " in the running pump's rate units (they cannot change while it pumps)"
                    } else {
                        ""
                    }
                ))
            })?;
        self.expect_ok(Command::Rate(ul_per_min, unit)).await?;
        if let Ok(mut u) = self.rate_unit.lock() {
            *u = Some(unit);
        }
        Ok(())
    }
    async fn set_volume(&self, ul: f64) -> Result<(), DeviceError> {
        self.check(&Command::Volume(ul))?;
        // Four digits: µL up to 9999, mL above. The units are always set first: the pump
        // defaults to mL for large syringes (the model's `volume_in_ml`), which would cost
        // resolution on small volumes.
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
        if let Some(a) = self.take_pending_alarm() {
            return Ok(PumpStatus {
                state: PumpState::Alarm,
                alarm: Some(a),
                infused_ul: 0.0,
                withdrawn_ul: 0.0,
            });
        }
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
