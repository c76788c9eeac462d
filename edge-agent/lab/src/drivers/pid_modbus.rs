//! PID temperature controller driver over Modbus RTU (tokio-modbus on tokio-serial), generic over
//! the controller's register-map profile (`profiles`): setpoint, run/stop, device high alarm,
//! setpoint limits, output lease where the controller has one, process value, output and status.
//! Limits are checked before any byte is written; every transaction has a timeout and bounded
//! retries; after a failed transaction the port is reopened so the framing starts clean, and the
//! profile's start-up writes (e.g. Omron's "communications writing on") are sent again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::Slave;
use tokio_modbus::{Request, Response};

use super::profiles::{
    Command, ControllerProfile, ReadFunction, RunReadback, Watchdog, WriteFunction, MAOSIC_TWIN,
};
use super::SerialTiming;
use crate::devices::{HeaterAlarms, HeaterLimits, TempReading, TemperatureController};
use crate::error::{check_range, DeviceError};

/// A PID controller on a serial port.
pub struct PidModbus {
    name: String,
    path: String,
    baud: u32,
    slave: u8,
    limits: HeaterLimits,
    timing: SerialTiming,
    profile: &'static ControllerProfile,
    decimals: u8,
    /// The profile's start-up writes went through on the current port.
    prepared: AtomicBool,
    ctx: Mutex<Option<Conn>>,
    transactions: AtomicU64,
}

impl std::fmt::Debug for PidModbus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PidModbus")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("profile", &self.profile.name)
            .finish()
    }
}

/// An open port: the Modbus context and a second handle on the same port to discard stale input
/// (a late reply to a timed-out request, the echo of a stop frame the watchdog wrote) before each
/// request — RTU replies carry no transaction id.
struct Conn {
    ctx: Context,
    input: Option<Box<dyn tokio_serial::SerialPort>>,
}

/// What a gated write writes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gated {
    /// A temperature, scaled and sized by the profile.
    Temp(f64),
    /// One raw register value (a command).
    Raw(u16),
}

enum Op {
    WriteSingle(u16, u16),
    WriteMultiple(u16, Vec<u16>),
    Read(ReadFunction, u16, u16),
}

impl Op {
    fn request(&self) -> Request<'_> {
        match self {
            Op::WriteSingle(a, v) => Request::WriteSingleRegister(*a, *v),
            Op::WriteMultiple(a, v) => Request::WriteMultipleRegisters(*a, v.as_slice().into()),
            Op::Read(ReadFunction::Input, a, n) => Request::ReadInputRegisters(*a, *n),
            Op::Read(ReadFunction::Holding, a, n) => Request::ReadHoldingRegisters(*a, *n),
        }
    }

    /// The registers read (empty for writes) if `rsp` answers this request: the same function,
    /// the echoed address and value or count of a write, the requested number of registers of a
    /// read. tokio-modbus only checks the function code (and debug-asserts the rest).
    fn answer(&self, rsp: Response) -> Result<Vec<u16>, &'static str> {
        match (self, rsp) {
            (Op::WriteSingle(a, v), Response::WriteSingleRegister(ra, rv)) => {
                if (ra, rv) == (*a, *v) {
                    Ok(Vec::new())
                } else {
                    Err("write echo of another address or value")
                }
            }
            (Op::WriteMultiple(a, v), Response::WriteMultipleRegisters(ra, rn)) => {
                if ra == *a && usize::from(rn) == v.len() {
                    Ok(Vec::new())
                } else {
                    Err("write echo of another address or count")
                }
            }
            (Op::Read(ReadFunction::Input, _, n), Response::ReadInputRegisters(w))
            | (Op::Read(ReadFunction::Holding, _, n), Response::ReadHoldingRegisters(w)) => {
                if w.len() == usize::from(*n) {
                    Ok(w)
                } else {
                    Err("read of another number of registers")
                }
            }
            _ => Err("reply to another function"),
        }
    }
}

impl PidModbus {
    /// Open the controller at `path` with the `maosic-twin` register map (see [`Self::with_profile`];
    /// the port is opened now, and again after errors).
    pub fn open(
        name: &str,
        path: &str,
        baud: u32,
        slave: u8,
        limits: HeaterLimits,
        timing: SerialTiming,
    ) -> Result<Self, DeviceError> {
        let me = Self {
            name: name.to_string(),
            path: path.to_string(),
            baud,
            slave,
            limits,
            timing,
            profile: &MAOSIC_TWIN,
            decimals: MAOSIC_TWIN.decimals,
            prepared: AtomicBool::new(false),
            ctx: Mutex::new(None),
            transactions: AtomicU64::new(0),
        };
        let ctx = me.connect()?;
        *me.ctx.try_lock().map_err(|_| me.proto("lock"))? = Some(ctx);
        Ok(me)
    }

    /// Talk to the controller with `profile`'s register map; `decimals` overrides the profile's
    /// implied decimals (the instrument's configured decimal point).
    pub fn with_profile(
        mut self,
        profile: &'static ControllerProfile,
        decimals: Option<u8>,
    ) -> Self {
        self.profile = profile;
        self.decimals = decimals.unwrap_or(profile.decimals);
        self
    }

    /// The register map in use.
    pub fn profile(&self) -> &'static ControllerProfile {
        self.profile
    }

    /// Transactions that reached the wire (refused calls never count).
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    fn proto(&self, d: &str) -> DeviceError {
        DeviceError::Protocol {
            device: self.name.clone(),
            detail: d.to_string(),
        }
    }

    fn connect(&self) -> Result<Conn, DeviceError> {
        use tokio_serial::SerialPort;
        let port =
            crate::pty::open_serial(&self.path, self.baud).map_err(|e| DeviceError::Open {
                device: self.name.clone(),
                port: self.path.clone(),
                detail: e.to_string(),
            })?;
        let input = port.try_clone().ok();
        crate::pty::discard_input(&port);
        Ok(Conn {
            ctx: tokio_modbus::client::rtu::attach_slave(port, Slave(self.slave)),
            input,
        })
    }

    async fn op(&self, op: Op) -> Result<Vec<u16>, DeviceError> {
        let mut guard = self.ctx.lock().await;
        let attempts = self.timing.retries + 1;
        let mut last = String::new();
        let mut io_failures = 0;
        for _ in 0..attempts {
            if guard.is_none() {
                match self.connect() {
                    Ok(c) => {
                        *guard = Some(c);
                        // a reopened port may face a power-cycled controller: set it up again
                        self.prepared.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            // Taken out for the transaction: if this future is dropped half-way, the context (and
            // its half-read frame) is dropped too and the next call starts on a fresh port.
            let Some(Conn { mut ctx, input }) = guard.take() else {
                continue;
            };
            if let Some(i) = &input {
                let _ = i.clear(tokio_serial::ClearBuffer::Input);
            }
            self.transactions.fetch_add(1, Ordering::Relaxed);
            let fut = async {
                let r = ctx.call(op.request()).await;
                (r, ctx)
            };
            match tokio::time::timeout(self.timing.timeout(), fut).await {
                Ok((Ok(Ok(rsp)), ctx)) => match op.answer(rsp) {
                    Ok(v) => {
                        *guard = Some(Conn { ctx, input });
                        return Ok(v);
                    }
                    Err(why) => {
                        // a reply to another request (a late one, or an echo of a frame the
                        // watchdog wrote): RTU has no transaction id, so never use it, let the
                        // line go quiet and ask again on a clean port
                        tracing::debug!(device = %self.name, why, "stale Modbus reply dropped");
                        last = format!("reply does not match the request: {why}");
                        self.settle(input).await;
                    }
                },
                Ok((Ok(Err(exc)), ctx)) => {
                    *guard = Some(Conn { ctx, input });
                    return Err(DeviceError::Refused {
                        device: self.name.clone(),
                        detail: format!("Modbus exception {exc:?}"),
                    });
                }
                Ok((Err(e), _)) => {
                    last = e.to_string();
                    io_failures += 1;
                }
                Err(_) => {
                    last = "timeout".into();
                    // the reply may still come: wait for the line to go quiet so it cannot be
                    // taken for the answer to the next request
                    self.settle(input).await;
                }
            }
        }
        if io_failures == attempts {
            Err(DeviceError::Disconnected {
                device: self.name.clone(),
                detail: last,
            })
        } else if last == "timeout" {
            Err(DeviceError::Timeout {
                device: self.name.clone(),
                timeout: self.timing.timeout(),
                attempts,
            })
        } else {
            Err(self.proto(&last))
        }
    }

    /// Give a late reply time to arrive and discard it: watch the line for two reply timeouts,
    /// throwing away whatever comes. (Stopping at the first quiet moment let a reply that came
    /// later still be taken for the next request's answer.) RTU cannot tell a reply later than
    /// that from the answer to a request of the same function and length.
    async fn settle(&self, input: Option<Box<dyn tokio_serial::SerialPort>>) {
        let Some(port) = input else {
            return;
        };
        let tick = Duration::from_millis(30).min(self.timing.timeout());
        let deadline = tokio::time::Instant::now() + 2 * self.timing.timeout();
        let _ = port.clear(tokio_serial::ClearBuffer::Input);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(tick).await;
            if port.bytes_to_read().is_ok_and(|n| n > 0) {
                let _ = port.clear(tokio_serial::ClearBuffer::Input);
            }
        }
    }

    fn check_temp(&self, param: &str, c: f64) -> Result<(), DeviceError> {
        check_range(
            &self.name,
            param,
            c,
            self.limits.min_temperature_c,
            self.limits.max_temperature_c,
        )
    }

    async fn command(&self, c: Command) -> Result<(), DeviceError> {
        self.op(Op::WriteSingle(c.address, c.value)).await.map(drop)
    }

    /// Write a temperature to a value register with the profile's scaling, width and function.
    async fn write_temp(&self, address: u16, celsius: f64) -> Result<(), DeviceError> {
        let regs =
            self.profile
                .encode(celsius, self.decimals)
                .map_err(|e| DeviceError::BadParameter {
                    device: self.name.clone(),
                    message: e.to_string(),
                })?;
        let op = match (self.profile.write_function, regs.as_slice()) {
            (WriteFunction::Single, [one]) => Op::WriteSingle(address, *one),
            _ => Op::WriteMultiple(address, regs),
        };
        self.op(op).await.map(drop)
    }

    /// A write after the start-up writes. A controller with a write gate that refuses it has
    /// probably been power-cycled (the gate closes): the start-up writes go again, then the write
    /// once more.
    async fn gated_write(&self, address: u16, value: Gated) -> Result<(), DeviceError> {
        let write = || async {
            match value {
                Gated::Temp(c) => self.write_temp(address, c).await,
                Gated::Raw(v) => self.command(Command { address, value: v }).await,
            }
        };
        if let Err(e) = self.prepare().await {
            let stop = self.profile.run.stop;
            if (address, value) != (stop.address, Gated::Raw(stop.value)) {
                return Err(e);
            }
            // stopping never waits on set-up: write the stop regardless
            tracing::warn!(device = %self.name, error = %e, "set-up failed before stop");
        }
        match write().await {
            Err(DeviceError::Refused { detail, .. }) if self.profile.write_gate.is_some() => {
                tracing::warn!(
                    device = %self.name,
                    %detail,
                    "controller refused a write; sending its start-up writes again"
                );
                self.prepared.store(false, Ordering::Relaxed);
                self.prepare().await?;
                write().await
            }
            r => r,
        }
    }

    /// The profile's start-up writes and the setpoint limits, once per port.
    async fn prepare(&self) -> Result<(), DeviceError> {
        if self.prepared.load(Ordering::Relaxed) {
            return Ok(());
        }
        for c in self.profile.init {
            self.command(*c).await?;
        }
        if let Some((hi, lo)) = self.profile.setpoint_limits {
            self.write_temp(hi, self.limits.max_temperature_c).await?;
            self.write_temp(lo, self.limits.min_temperature_c).await?;
        }
        tracing::debug!(device = %self.name, profile = self.profile.name, "controller prepared");
        self.prepared.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn regs(
        &self,
        got: &BTreeMap<u16, u16>,
        address: u16,
        words: u16,
    ) -> Result<Vec<u16>, DeviceError> {
        (address..address.saturating_add(words))
            .map(|a| got.get(&a).copied())
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| self.proto("register missing from the read blocks"))
    }

    fn temp_of(&self, regs: &[u16], decimals: u8) -> Result<f64, DeviceError> {
        self.profile
            .decode(regs, decimals)
            .ok_or_else(|| self.proto("value of the wrong width"))
    }
}

#[async_trait]
impl TemperatureController for PidModbus {
    fn name(&self) -> &str {
        &self.name
    }
    fn limits(&self) -> &HeaterLimits {
        &self.limits
    }
    async fn set_setpoint(&self, celsius: f64) -> Result<(), DeviceError> {
        self.check_temp("setpoint_c", celsius)?;
        self.gated_write(self.profile.setpoint, Gated::Temp(celsius))
            .await
    }
    async fn set_enabled(&self, on: bool) -> Result<(), DeviceError> {
        let c = if on {
            self.profile.run.run
        } else {
            self.profile.run.stop
        };
        self.gated_write(c.address, Gated::Raw(c.value)).await
    }
    async fn refresh_lease(&self) -> Result<(), DeviceError> {
        match self.profile.watchdog {
            Watchdog::Lease { refresh } => self.command(refresh).await,
            // no comms-loss feature: nothing to refresh (the agent's own watchdog covers it)
            Watchdog::None => Ok(()),
        }
    }
    async fn set_high_alarm(&self, celsius: f64) -> Result<(), DeviceError> {
        check_range(
            &self.name,
            "high_alarm_c",
            celsius,
            self.limits.min_temperature_c,
            self.limits.max_temperature_c + 50.0,
        )?;
        self.gated_write(self.profile.high_alarm, Gated::Temp(celsius))
            .await
    }
    async fn reset_alarms(&self) -> Result<(), DeviceError> {
        match self.profile.alarm_reset {
            Some(c) => self.gated_write(c.address, Gated::Raw(c.value)).await,
            None => {
                tracing::warn!(
                    device = %self.name,
                    profile = self.profile.name,
                    "this controller's alarms cannot be reset over comms; acknowledge them on its front panel"
                );
                Ok(())
            }
        }
    }
    async fn read(&self) -> Result<TempReading, DeviceError> {
        let p = self.profile;
        let mut got = BTreeMap::new();
        for &(start, count) in p.read_blocks {
            let v = self.op(Op::Read(p.read_function, start, count)).await?;
            if v.len() != usize::from(count) {
                // a reply to another request (RTU has no transaction id): never use it
                return Err(self.proto("register read of the wrong length"));
            }
            for (i, x) in v.into_iter().take(usize::from(count)).enumerate() {
                got.insert(start.saturating_add(i as u16), x);
            }
        }
        let w = p.words();
        let pv = self.regs(&got, p.pv, w)?;
        let status_regs = self.regs(&got, p.status.address, u16::from(p.status.words))?;
        let status = match status_regs.as_slice() {
            [one] => u32::from(*one),
            regs => p
                .join(regs)
                .ok_or_else(|| self.proto("status of the wrong width"))?,
        };
        let bit = |b: u8| status & (1u32 << b.min(31)) != 0;
        let sentinel = w == 1 && p.sensor_break_pv.is_some_and(|s| pv.first() == Some(&s));
        let sensor_break = bit(p.status.sensor_break_bit) || sentinel;
        let enabled = match p.run_readback {
            RunReadback::RegisterEquals { address, value } => {
                self.regs(&got, address, 1)?.first().copied() == Some(value)
            }
            RunReadback::StatusBitStopped { bit: b } => !bit(b),
        };
        Ok(TempReading {
            pv_c: if sensor_break {
                None
            } else {
                Some(self.temp_of(&pv, self.decimals)?)
            },
            sp_c: self.temp_of(&self.regs(&got, p.setpoint_readback, w)?, self.decimals)?,
            output_pct: self.temp_of(&self.regs(&got, p.output, w)?, p.output_decimals)?,
            enabled,
            alarms: HeaterAlarms {
                high_temperature: bit(p.status.high_alarm_bit),
                sensor_break,
                lease_expired: p.status.lease_expired_bit.is_some_and(bit),
            },
        })
    }
}

/// The raw RTU frame that stops the controller (written by the watchdog without the runtime):
/// the profile's run/stop command, never a value register.
pub fn emergency_off_frame(profile: &ControllerProfile, slave: u8) -> Vec<u8> {
    profile.stop_frame(slave)
}
