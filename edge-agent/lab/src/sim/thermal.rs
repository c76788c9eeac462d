//! Pure model of the reactor heater: a first-order thermal plant (copper pipe + 100 W cartridge)
//! under the controller's own PID loop, its sensor, device-side protections and the Modbus
//! register map the virtual controller serves. No I/O.

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::devices::HeaterAlarms;

/// Modbus register map of the PID controller (values in tenths: 1234 = 123.4 °C / 12.34 … %).
pub mod regs {
    /// Holding: setpoint, 0.1 °C (i16).
    pub const SP: u16 = 0;
    /// Holding: 1 = control on, 0 = heater off.
    pub const ENABLE: u16 = 1;
    /// Holding: device high-temperature alarm, 0.1 °C; PV at or above it cuts the output and latches.
    pub const HIGH_ALARM: u16 = 2;
    /// Holding: output lease; any write refreshes it. The output is cut when not refreshed in time.
    pub const LEASE: u16 = 3;
    /// Holding: write 1 to clear latched alarms.
    pub const ALARM_RESET: u16 = 4;
    /// Number of holding registers.
    pub const HOLDING_COUNT: u16 = 5;
    /// Input: process value, 0.1 °C (i16); `SENSOR_BREAK` when the thermocouple is open.
    pub const PV: u16 = 0;
    /// Input: heater output, 0.1 %.
    pub const OUTPUT: u16 = 1;
    /// Input: alarm bits (1 high temperature, 2 sensor break, 4 lease expired).
    pub const ALARMS: u16 = 2;
    /// Input: setpoint echo, 0.1 °C.
    pub const SP_ECHO: u16 = 3;
    /// Input: control on (1) / off (0).
    pub const ENABLED: u16 = 4;
    /// Number of input registers.
    pub const INPUT_COUNT: u16 = 5;
    /// PV value reported for an open sensor.
    pub const SENSOR_BREAK: u16 = 0x8000;
}

/// Plant and controller constants.
#[derive(Debug, Clone)]
pub struct ThermalParams {
    pub ambient_c: f64,
    /// Plant time constant, s.
    pub tau_s: f64,
    /// Steady-state rise per % output, °C.
    pub gain_c_per_pct: f64,
    /// Sensor noise sd, °C.
    pub sensor_noise_c: f64,
    /// Controller period, s.
    pub period_s: f64,
    pub kp: f64,
    pub ti_s: f64,
    /// Lease window, s of lab time.
    pub lease_s: f64,
}

impl Default for ThermalParams {
    fn default() -> Self {
        Self {
            ambient_c: 25.0,
            tau_s: 60.0,
            gain_c_per_pct: 2.25,
            sensor_noise_c: 0.05,
            period_s: 0.5,
            kp: 1.8,
            ti_s: 60.0,
            lease_s: 3.0,
        }
    }
}

/// Faults a test can inject into the simulated sensor.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SensorFaults {
    /// Thermocouple fell off the pipe: it relaxes to ambient.
    pub detached: bool,
    /// Added to the reading, °C.
    pub offset_c: f64,
    /// Open circuit.
    pub broken: bool,
}

/// The heater and its controller.
#[derive(Debug, Clone)]
pub struct HeaterSim {
    pub p: ThermalParams,
    /// True pipe temperature, °C.
    pub t_c: f64,
    /// Temperature of the (possibly detached) sensor tip, °C.
    sensor_c: f64,
    /// Last measured value, °C.
    pub pv_c: f64,
    pub sp_c: f64,
    pub enabled: bool,
    pub output_pct: f64,
    integral: f64,
    pub high_alarm_c: f64,
    high_latched: bool,
    pub last_lease_s: f64,
    pub lease_expired: bool,
    pub lease_expiries: u64,
    pub faults: SensorFaults,
    /// Real-time floor of the lease window, s of lab time (see `VirtualLab`).
    pub lease_floor_s: f64,
    pub now_s: f64,
}

impl HeaterSim {
    pub fn new(p: ThermalParams) -> Self {
        let a = p.ambient_c;
        Self {
            p,
            t_c: a,
            sensor_c: a,
            pv_c: a,
            sp_c: a,
            enabled: false,
            output_pct: 0.0,
            integral: 0.0,
            high_alarm_c: 250.0,
            high_latched: false,
            last_lease_s: 0.0,
            lease_expired: false,
            lease_expiries: 0,
            faults: SensorFaults::default(),
            lease_floor_s: 0.0,
            now_s: 0.0,
        }
    }

    pub fn alarms(&self) -> HeaterAlarms {
        HeaterAlarms {
            high_temperature: self.high_latched,
            sensor_break: self.faults.broken,
            lease_expired: self.lease_expired,
        }
    }

    /// One controller period of `dt` seconds ending at `now_s`.
    pub fn step<R: Rng + ?Sized>(&mut self, now_s: f64, dt: f64, rng: &mut R) {
        self.now_s = now_s;
        // sensor
        let noise = Normal::new(0.0, self.p.sensor_noise_c.max(1e-12))
            .map(|n| n.sample(rng))
            .unwrap_or(0.0);
        if self.faults.detached {
            self.sensor_c += (self.p.ambient_c - self.sensor_c) * (dt / 30.0).min(1.0);
        } else {
            self.sensor_c = self.t_c;
        }
        self.pv_c = self.sensor_c + self.faults.offset_c + noise;
        // device-side protections
        if !self.faults.broken && self.pv_c >= self.high_alarm_c {
            self.high_latched = true;
        }
        let window = self.p.lease_s.max(self.lease_floor_s);
        let expired = self.enabled && now_s - self.last_lease_s > window;
        if expired && !self.lease_expired {
            self.lease_expiries += 1;
        }
        self.lease_expired = expired;
        // PID with back-calculation anti-windup
        let allowed = self.enabled && !self.high_latched && !self.faults.broken && !expired;
        if allowed {
            let e = self.sp_c - self.pv_c;
            let u_raw = self.p.kp * (e + self.integral / self.p.ti_s);
            let u = u_raw.clamp(0.0, 100.0);
            let tt = 10.0;
            self.integral += dt * e + (u - u_raw) / self.p.kp * self.p.ti_s * dt / tt;
            self.output_pct = u;
        } else {
            self.output_pct = 0.0;
            if !self.enabled {
                self.integral = 0.0;
            }
        }
        // plant
        let target = self.p.ambient_c + self.p.gain_c_per_pct * self.output_pct;
        self.t_c += (target - self.t_c) * (dt / self.p.tau_s).min(1.0);
    }

    /// Serve a holding-register read.
    pub fn read_holding(&self, addr: u16) -> Option<u16> {
        Some(match addr {
            regs::SP => to_reg(self.sp_c),
            regs::ENABLE => u16::from(self.enabled),
            regs::HIGH_ALARM => to_reg(self.high_alarm_c),
            regs::LEASE => 0,
            regs::ALARM_RESET => 0,
            _ => return None,
        })
    }

    /// Serve an input-register read.
    pub fn read_input(&self, addr: u16) -> Option<u16> {
        Some(match addr {
            regs::PV => {
                if self.faults.broken {
                    regs::SENSOR_BREAK
                } else {
                    to_reg(self.pv_c)
                }
            }
            regs::OUTPUT => (self.output_pct * 10.0).round().clamp(0.0, 1000.0) as u16,
            regs::ALARMS => self.alarms().bits(),
            regs::SP_ECHO => to_reg(self.sp_c),
            regs::ENABLED => u16::from(self.enabled),
            _ => return None,
        })
    }

    /// Serve a register write; `false` for an illegal address or value.
    pub fn write(&mut self, addr: u16, value: u16) -> bool {
        match addr {
            regs::SP => {
                let v = from_reg(value);
                if !(0.0..=400.0).contains(&v) {
                    return false;
                }
                self.sp_c = v;
            }
            regs::ENABLE => {
                let on = value != 0;
                if on && !self.enabled {
                    self.last_lease_s = self.now_s;
                }
                self.enabled = on;
            }
            regs::HIGH_ALARM => self.high_alarm_c = from_reg(value),
            regs::LEASE => {
                self.last_lease_s = self.now_s;
                self.lease_expired = false;
            }
            regs::ALARM_RESET => {
                if value == 1 && self.pv_c < self.high_alarm_c {
                    self.high_latched = false;
                }
            }
            _ => return false,
        }
        true
    }
}

/// °C → register (0.1 °C, two's complement).
pub fn to_reg(c: f64) -> u16 {
    let v = (c * 10.0).round().clamp(-32767.0, 32767.0) as i16;
    v as u16
}

/// Register → °C.
pub fn from_reg(r: u16) -> f64 {
    f64::from(r as i16) / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pid_holds_within_one_degree_after_warm_up() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut h = HeaterSim::new(ThermalParams::default());
        h.write(regs::SP, to_reg(130.0));
        h.write(regs::ENABLE, 1);
        let dt = 0.5;
        let mut worst: f64 = 0.0;
        for i in 0..2400 {
            let now = f64::from(i) * dt;
            h.write(regs::LEASE, 1);
            h.step(now, dt, &mut rng);
            if now >= 300.0 {
                worst = worst.max((h.t_c - 130.0).abs());
            }
        }
        println!("max |T-130| after 5 min warm-up: {worst:.3} °C");
        assert!(worst < 1.0, "{worst}");
    }

    #[test]
    fn lease_cuts_output() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut h = HeaterSim::new(ThermalParams::default());
        h.write(regs::SP, to_reg(130.0));
        h.write(regs::ENABLE, 1);
        for i in 0..10 {
            h.step(f64::from(i) * 0.5, 0.5, &mut rng);
        }
        assert!(h.output_pct == 0.0 && h.lease_expired);
    }
}
