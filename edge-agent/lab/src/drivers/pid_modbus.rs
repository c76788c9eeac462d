//! PID temperature controller driver over Modbus RTU (tokio-modbus on tokio-serial): setpoint,
//! enable, device high alarm, output lease, process value, output and alarm registers. Limits are
//! checked before any byte is written; every transaction has a timeout and bounded retries; after a
//! failed transaction the port is reopened so the framing starts clean.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::Slave;

use super::SerialTiming;
use crate::devices::{HeaterAlarms, HeaterLimits, TempReading, TemperatureController};
use crate::error::{check_range, DeviceError};
use crate::sim::thermal::{from_reg, regs, to_reg};

/// A PID controller on a serial port.
pub struct PidModbus {
    name: String,
    path: String,
    baud: u32,
    slave: u8,
    limits: HeaterLimits,
    timing: SerialTiming,
    ctx: Mutex<Option<Context>>,
    transactions: AtomicU64,
}

impl std::fmt::Debug for PidModbus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PidModbus")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

enum Op {
    Write(u16, u16),
    ReadInput(u16, u16),
}

impl PidModbus {
    /// Open the controller at `path` (the port is opened lazily on first use, and again after errors).
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
            ctx: Mutex::new(None),
            transactions: AtomicU64::new(0),
        };
        let ctx = me.connect()?;
        *me.ctx.try_lock().map_err(|_| me.proto("lock"))? = Some(ctx);
        Ok(me)
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

    fn connect(&self) -> Result<Context, DeviceError> {
        let port =
            crate::pty::open_serial(&self.path, self.baud).map_err(|e| DeviceError::Open {
                device: self.name.clone(),
                port: self.path.clone(),
                detail: e.to_string(),
            })?;
        Ok(tokio_modbus::client::rtu::attach_slave(
            port,
            Slave(self.slave),
        ))
    }

    async fn op(&self, op: Op) -> Result<Vec<u16>, DeviceError> {
        let mut guard = self.ctx.lock().await;
        let attempts = self.timing.retries + 1;
        let mut last = String::new();
        let mut io_failures = 0;
        for _ in 0..attempts {
            if guard.is_none() {
                match self.connect() {
                    Ok(c) => *guard = Some(c),
                    Err(e) => return Err(e),
                }
            }
            // Taken out for the transaction: if this future is dropped half-way, the context (and
            // its half-read frame) is dropped too and the next call starts on a fresh port.
            let Some(mut ctx) = guard.take() else {
                continue;
            };
            self.transactions.fetch_add(1, Ordering::Relaxed);
            let fut = async {
                let r = match op {
                    Op::Write(a, v) => ctx
                        .write_single_register(a, v)
                        .await
                        .map(|r| r.map(|()| Vec::new())),
                    Op::ReadInput(a, n) => ctx.read_input_registers(a, n).await,
                };
                (r, ctx)
            };
            match tokio::time::timeout(self.timing.timeout(), fut).await {
                Ok((Ok(Ok(v)), ctx)) => {
                    *guard = Some(ctx);
                    return Ok(v);
                }
                Ok((Ok(Err(exc)), ctx)) => {
                    *guard = Some(ctx);
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

    fn check_temp(&self, param: &str, c: f64) -> Result<(), DeviceError> {
        check_range(
            &self.name,
            param,
            c,
            self.limits.min_temperature_c,
            self.limits.max_temperature_c,
        )
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
        self.op(Op::Write(regs::SP, to_reg(celsius)))
            .await
            .map(drop)
    }
    async fn set_enabled(&self, on: bool) -> Result<(), DeviceError> {
        self.op(Op::Write(regs::ENABLE, u16::from(on)))
            .await
            .map(drop)
    }
    async fn refresh_lease(&self) -> Result<(), DeviceError> {
        self.op(Op::Write(regs::LEASE, 1)).await.map(drop)
    }
    async fn set_high_alarm(&self, celsius: f64) -> Result<(), DeviceError> {
        check_range(
            &self.name,
            "high_alarm_c",
            celsius,
            self.limits.min_temperature_c,
            self.limits.max_temperature_c + 50.0,
        )?;
        self.op(Op::Write(regs::HIGH_ALARM, to_reg(celsius)))
            .await
            .map(drop)
    }
    async fn reset_alarms(&self) -> Result<(), DeviceError> {
        self.op(Op::Write(regs::ALARM_RESET, 1)).await.map(drop)
    }
    async fn read(&self) -> Result<TempReading, DeviceError> {
        let v = self.op(Op::ReadInput(0, regs::INPUT_COUNT)).await?;
        if v.len() < usize::from(regs::INPUT_COUNT) {
            return Err(self.proto("short register read"));
        }
        let pv = v[usize::from(regs::PV)];
        Ok(TempReading {
            pv_c: if pv == regs::SENSOR_BREAK {
                None
            } else {
                Some(from_reg(pv))
            },
            sp_c: from_reg(v[usize::from(regs::SP_ECHO)]),
            output_pct: f64::from(v[usize::from(regs::OUTPUT)]) / 10.0,
            enabled: v[usize::from(regs::ENABLED)] != 0,
            alarms: HeaterAlarms::from_bits(v[usize::from(regs::ALARMS)]),
        })
    }
}

/// The raw RTU frame that turns the heater off (written by the watchdog without the runtime).
pub fn emergency_off_frame(slave: u8) -> Vec<u8> {
    let [hi, lo] = regs::ENABLE.to_be_bytes();
    crate::sim::servers::with_crc(vec![slave, 0x06, hi, lo, 0, 0])
}
