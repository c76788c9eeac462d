//! Pure model of the reactor heater: a first-order thermal plant (copper pipe + 100 W cartridge)
//! under the controller's own PID loop, its sensor and device-side protections. No I/O. The
//! registers a controller shows over Modbus are in `sim::controller`, one face per profile.

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::devices::HeaterAlarms;

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
    /// The controller has an output lease (the twin's comms-loss watchdog); real controllers
    /// without one never cut the output for silence.
    pub device_lease: bool,
    /// The high alarm latches until reset (off: it clears when the PV falls below it).
    pub alarm_latching: bool,
    /// The controller accepts writes over comms (Omron's "communications writing"; cleared by a
    /// power cycle).
    pub comms_writing: bool,
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
            device_lease: true,
            alarm_latching: true,
            comms_writing: true,
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
        } else if !self.alarm_latching {
            self.high_latched = false;
        }
        let window = self.p.lease_s.max(self.lease_floor_s);
        let expired = self.device_lease && self.enabled && now_s - self.last_lease_s > window;
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

    /// Control on or off (off: output cut at the next step, integral cleared).
    pub fn set_enabled(&mut self, on: bool) {
        if on && !self.enabled {
            self.last_lease_s = self.now_s;
        }
        self.enabled = on;
    }

    /// Refresh the output lease.
    pub fn refresh_lease(&mut self) {
        self.last_lease_s = self.now_s;
        self.lease_expired = false;
    }

    /// Clear a latched high alarm, only when the PV is back below it.
    pub fn reset_alarms(&mut self) {
        if self.pv_c < self.high_alarm_c {
            self.high_latched = false;
        }
    }

    /// Whether the high alarm is latched.
    pub fn high_alarm_latched(&self) -> bool {
        self.high_latched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pid_holds_within_one_degree_after_warm_up() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut h = HeaterSim::new(ThermalParams::default());
        h.sp_c = 130.0;
        h.set_enabled(true);
        let dt = 0.5;
        let mut worst: f64 = 0.0;
        for i in 0..2400 {
            let now = f64::from(i) * dt;
            h.refresh_lease();
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
        h.sp_c = 130.0;
        h.set_enabled(true);
        for i in 0..10 {
            h.step(f64::from(i) * 0.5, 0.5, &mut rng);
        }
        assert!(h.output_pct == 0.0 && h.lease_expired);
    }

    #[test]
    fn without_a_device_lease_silence_does_not_cut_output() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut h = HeaterSim::new(ThermalParams::default());
        h.device_lease = false;
        h.sp_c = 130.0;
        h.set_enabled(true);
        for i in 0..10 {
            h.step(f64::from(i) * 0.5, 0.5, &mut rng);
        }
        assert!(h.output_pct > 0.0 && !h.lease_expired);
    }
}
