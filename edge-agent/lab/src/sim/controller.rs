//! The virtual controller's Modbus face, one per profile: the same register layout, scaling, word
//! order, function codes, write gate and watchdog as the profile says the real controller has,
//! acting on the shared heater model. Pure: no I/O (the RTU framing is in `sim::servers`).

use crate::drivers::profiles::{Command, ControllerProfile, RunReadback, Watchdog, WriteFunction};

use super::thermal::HeaterSim;

/// Modbus exception codes the face answers with.
pub mod exception {
    pub const ILLEGAL_FUNCTION: u8 = 1;
    pub const ILLEGAL_ADDRESS: u8 = 2;
    pub const ILLEGAL_VALUE: u8 = 3;
    /// Omron answers writes while "communications writing" is off with an operation error.
    pub const DEVICE_FAILURE: u8 = 4;
}

/// Highest setpoint the twin's controller accepts without configured limits, °C.
const DEFAULT_SP_HIGH: f64 = 400.0;

/// One virtual controller's register face.
#[derive(Debug, Clone)]
pub struct ControllerFace {
    pub profile: &'static ControllerProfile,
    /// Implied decimals of temperatures (the instrument's configured decimal point).
    pub decimals: u8,
    /// Setpoint limits written over comms (high, low), °C.
    pub sp_limits: (f64, f64),
    /// Writes refused so far (gate closed, bad address or value).
    pub refused: u64,
}

impl ControllerFace {
    pub fn new(profile: &'static ControllerProfile, decimals: u8) -> Self {
        Self {
            profile,
            decimals,
            sp_limits: (DEFAULT_SP_HIGH, 0.0),
            refused: 0,
        }
    }

    /// Set the heater model up as this controller behaves: a lease only where the profile has
    /// one, latching alarms only where they can be reset over comms.
    pub fn configure(&self, h: &mut HeaterSim) {
        h.device_lease = matches!(self.profile.watchdog, Watchdog::Lease { .. });
        h.alarm_latching = self.profile.alarm_reset.is_some();
        h.comms_writing = self.profile.write_gate.is_none();
    }

    fn temp(&self, c: f64) -> Vec<u16> {
        self.profile
            .encode(c, self.decimals)
            .unwrap_or_else(|_| vec![0; usize::from(self.profile.words())])
    }

    fn status_bits(&self, h: &HeaterSim) -> u32 {
        let s = &self.profile.status;
        let a = h.alarms();
        let mut bits = 0u32;
        let mut set = |bit: u8, on: bool| {
            if on {
                bits |= 1u32 << bit.min(31);
            }
        };
        set(s.high_alarm_bit, a.high_temperature);
        set(s.sensor_break_bit, a.sensor_break);
        if let Some(b) = s.lease_expired_bit {
            set(b, a.lease_expired);
        }
        if let RunReadback::StatusBitStopped { bit } = self.profile.run_readback {
            set(bit, !h.enabled);
        }
        bits
    }

    fn words_of(&self, raw: u32, words: u8) -> Vec<u16> {
        if words >= 2 {
            self.profile.split(raw).to_vec()
        } else {
            vec![raw as u16]
        }
    }

    /// The registers of one table as (address, registers) entries.
    fn entries(&self, h: &HeaterSim, read_table: bool, holding: bool) -> Vec<(u16, Vec<u16>)> {
        let p = self.profile;
        let mut v = Vec::new();
        if read_table {
            let pv = match (h.faults.broken, p.sensor_break_pv) {
                (true, Some(raw)) => vec![raw],
                _ => self.temp(h.pv_c),
            };
            v.push((p.pv, pv));
            v.push((p.setpoint_readback, self.temp(h.sp_c)));
            let out = p
                .encode(h.output_pct.clamp(0.0, 100.0), p.output_decimals)
                .unwrap_or_else(|_| vec![0; usize::from(p.words())]);
            v.push((p.output, out));
            v.push((
                p.status.address,
                self.words_of(self.status_bits(h), p.status.words),
            ));
            if let RunReadback::RegisterEquals { address, value } = p.run_readback {
                let off = if p.run.stop.address == address {
                    p.run.stop.value
                } else {
                    u16::from(value == 0)
                };
                v.push((address, vec![if h.enabled { value } else { off }]));
            }
        }
        if holding {
            v.push((p.setpoint, self.temp(h.sp_c)));
            v.push((p.high_alarm, self.temp(h.high_alarm_c)));
            if let Some((hi, lo)) = p.setpoint_limits {
                v.push((hi, self.temp(self.sp_limits.0)));
                v.push((lo, self.temp(self.sp_limits.1)));
            }
            let run = if h.enabled { p.run.run } else { p.run.stop };
            if !v.iter().any(|(a, _)| *a == run.address) {
                v.push((run.address, vec![run.value]));
            }
            for c in self.commands() {
                if !v.iter().any(|(a, _)| *a == c.address) {
                    v.push((c.address, vec![0]));
                }
            }
        }
        v
    }

    /// Every single-register command the profile knows (run, stop, reset, lease, init, gate).
    fn commands(&self) -> Vec<Command> {
        let p = self.profile;
        let mut v = vec![p.run.run, p.run.stop];
        v.extend(p.alarm_reset);
        if let Watchdog::Lease { refresh } = p.watchdog {
            v.push(refresh);
        }
        v.extend(p.init.iter().copied());
        v.extend(p.write_gate);
        v
    }

    /// Serve a read of one register with function `fc`; `Err` is the exception code.
    pub fn read(&self, h: &HeaterSim, fc: u8, addr: u16) -> Result<u16, u8> {
        let p = self.profile;
        let (read_table, holding) = match (fc, p.read_function.code()) {
            (f, r) if f == r => (true, f == 0x03),
            (0x03, _) => (false, true),
            _ => return Err(exception::ILLEGAL_FUNCTION),
        };
        for (a, regs) in self.entries(h, read_table, holding) {
            let n = regs.len() as u32;
            if addr >= a && u32::from(addr) < u32::from(a) + n {
                return Ok(regs[usize::from(addr - a)]);
            }
        }
        let in_block = read_table
            && p.read_blocks
                .iter()
                .any(|&(s, c)| addr >= s && u32::from(addr) < u32::from(s) + u32::from(c));
        if in_block {
            Ok(0)
        } else {
            Err(exception::ILLEGAL_ADDRESS)
        }
    }

    fn refuse(&mut self, code: u8) -> Result<(), u8> {
        self.refused += 1;
        Err(code)
    }

    /// Serve a single-register write (0x06).
    pub fn write_single(&mut self, h: &mut HeaterSim, addr: u16, value: u16) -> Result<(), u8> {
        let p = self.profile;
        let cmds = self.commands();
        if cmds.iter().any(|c| c.address == addr) {
            let is = |c: Option<Command>| {
                c == Some(Command {
                    address: addr,
                    value,
                })
            };
            if is(p.write_gate) {
                h.comms_writing = true;
                return Ok(());
            }
            if !h.comms_writing {
                return self.refuse(exception::DEVICE_FAILURE);
            }
            if is(Some(p.run.run)) {
                h.set_enabled(true);
            } else if is(Some(p.run.stop)) {
                h.set_enabled(false);
            } else if let Watchdog::Lease { refresh } = p.watchdog {
                if refresh.address == addr {
                    h.refresh_lease();
                } else if is(p.alarm_reset) {
                    h.reset_alarms();
                } else if p.alarm_reset.is_some_and(|c| c.address == addr) {
                    // a register that only clears alarms: other values do nothing
                } else {
                    return self.refuse(exception::ILLEGAL_VALUE);
                }
            } else if is(p.alarm_reset) {
                h.reset_alarms();
            } else if p.init.iter().any(|c| is(Some(*c))) {
                // accepted settings (write mode etc.)
            } else {
                return self.refuse(exception::ILLEGAL_VALUE);
            }
            return Ok(());
        }
        if !h.comms_writing {
            return self.refuse(exception::DEVICE_FAILURE);
        }
        if p.write_function != WriteFunction::Single || p.words() != 1 {
            // two-register values are written with 0x10 only
            return self.refuse(exception::ILLEGAL_ADDRESS);
        }
        self.write_value(h, addr, &[value])
    }

    /// Serve a multiple-register write (0x10).
    pub fn write_multiple(
        &mut self,
        h: &mut HeaterSim,
        addr: u16,
        values: &[u16],
    ) -> Result<(), u8> {
        let p = self.profile;
        if p.write_function == WriteFunction::Single {
            for (i, v) in values.iter().enumerate() {
                self.write_single(h, addr.saturating_add(i as u16), *v)?;
            }
            return Ok(());
        }
        if !h.comms_writing {
            return self.refuse(exception::DEVICE_FAILURE);
        }
        let w = usize::from(p.words());
        if values.is_empty() || !values.len().is_multiple_of(w) {
            return self.refuse(exception::ILLEGAL_VALUE);
        }
        for (i, chunk) in values.chunks(w).enumerate() {
            let a = addr.saturating_add((i * w) as u16);
            self.write_value(h, a, chunk)?;
        }
        Ok(())
    }

    fn write_value(&mut self, h: &mut HeaterSim, addr: u16, regs: &[u16]) -> Result<(), u8> {
        let p = self.profile;
        let Some(v) = p.decode(regs, self.decimals) else {
            return self.refuse(exception::ILLEGAL_VALUE);
        };
        if addr == p.setpoint {
            let (hi, lo) = self.sp_limits;
            if !(lo..=hi).contains(&v) {
                return self.refuse(exception::ILLEGAL_VALUE);
            }
            h.sp_c = v;
        } else if addr == p.high_alarm {
            h.high_alarm_c = v;
        } else if p.setpoint_limits.is_some_and(|(hi, _)| hi == addr) {
            if v <= self.sp_limits.1 {
                return self.refuse(exception::ILLEGAL_VALUE);
            }
            self.sp_limits.0 = v;
        } else if p.setpoint_limits.is_some_and(|(_, lo)| lo == addr) {
            if v >= self.sp_limits.0 {
                return self.refuse(exception::ILLEGAL_VALUE);
            }
            self.sp_limits.1 = v;
        } else {
            return self.refuse(exception::ILLEGAL_ADDRESS);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::profiles::{EUROTHERM_3200, MAOSIC_TWIN, OMRON_E5CC, PROFILES};
    use crate::sim::thermal::ThermalParams;

    fn heater() -> HeaterSim {
        HeaterSim::new(ThermalParams::default())
    }

    #[test]
    fn twin_face_serves_the_original_map() {
        let mut h = heater();
        let mut f = ControllerFace::new(&MAOSIC_TWIN, 1);
        f.write_single(&mut h, 0, 1205).unwrap();
        f.write_single(&mut h, 1, 1).unwrap();
        assert_eq!(h.sp_c, 120.5);
        assert!(h.enabled);
        assert_eq!(f.read(&h, 0x04, 3), Ok(1205));
        assert_eq!(f.read(&h, 0x04, 4), Ok(1));
        assert_eq!(f.read(&h, 0x03, 0), Ok(1205));
        assert_eq!(
            f.write_single(&mut h, 0, 5000),
            Err(exception::ILLEGAL_VALUE)
        );
        assert_eq!(f.read(&h, 0x04, 9), Err(exception::ILLEGAL_ADDRESS));
        h.faults.broken = true;
        assert_eq!(f.read(&h, 0x04, 0), Ok(0x8000));
    }

    #[test]
    fn omron_face_refuses_writes_until_communications_writing_is_on() {
        let mut h = heater();
        let mut f = ControllerFace::new(&OMRON_E5CC, 1);
        f.configure(&mut h);
        let sp = OMRON_E5CC.encode(150.0, 1).unwrap();
        assert_eq!(
            f.write_multiple(&mut h, OMRON_E5CC.setpoint, &sp),
            Err(exception::DEVICE_FAILURE)
        );
        for c in OMRON_E5CC.init {
            f.write_single(&mut h, c.address, c.value).unwrap();
        }
        f.write_multiple(&mut h, OMRON_E5CC.setpoint, &sp).unwrap();
        assert_eq!(h.sp_c, 150.0);
        // single-register writes of a two-word value are refused
        assert!(f.write_single(&mut h, OMRON_E5CC.setpoint, 1500).is_err());
        // status: stopped bit set until RUN
        let status = |f: &ControllerFace, h: &HeaterSim| {
            OMRON_E5CC
                .join(&[f.read(h, 3, 2).unwrap(), f.read(h, 3, 3).unwrap()])
                .unwrap()
        };
        assert_ne!(status(&f, &h) & (1 << 24), 0);
        let run = OMRON_E5CC.run.run;
        f.write_single(&mut h, run.address, run.value).unwrap();
        assert_eq!(status(&f, &h) & (1 << 24), 0);
        // PV is two words, high word first
        h.pv_c = -12.5;
        assert_eq!(f.read(&h, 3, 0), Ok(0xFFFF));
        assert_eq!(f.read(&h, 3, 1), Ok((-125i16) as u16));
    }

    #[test]
    fn eurotherm_face_standby_and_setpoint_limits() {
        let mut h = heater();
        let mut f = ControllerFace::new(&EUROTHERM_3200, 1);
        let (hi, lo) = EUROTHERM_3200.setpoint_limits.unwrap();
        f.write_single(&mut h, hi, 2000).unwrap();
        f.write_single(&mut h, lo, 200).unwrap();
        assert_eq!(
            f.write_single(&mut h, 2, 2500),
            Err(exception::ILLEGAL_VALUE)
        );
        f.write_single(&mut h, 2, 1500).unwrap();
        assert_eq!(f.read(&h, 3, 199), Ok(1)); // standby
        f.write_single(&mut h, 199, 0).unwrap();
        assert!(h.enabled);
        assert_eq!(f.read(&h, 3, 199), Ok(0));
        assert_eq!(f.read(&h, 3, 3), Ok(0)); // filler inside the read block
        assert_eq!(
            f.write_single(&mut h, 199, 2),
            Err(exception::ILLEGAL_VALUE)
        );
    }

    #[test]
    fn stop_command_leaves_every_value_register_unchanged() {
        for p in PROFILES {
            let mut h = heater();
            let mut f = ControllerFace::new(p, 1);
            f.configure(&mut h);
            for c in p.init {
                f.write_single(&mut h, c.address, c.value).unwrap();
            }
            f.write_multiple(&mut h, p.setpoint, &p.encode(150.0, 1).unwrap())
                .unwrap();
            f.write_single(&mut h, p.run.run.address, p.run.run.value)
                .unwrap();
            h.pv_c = 140.0;
            let before: Vec<_> = p
                .value_registers()
                .iter()
                .flat_map(|&(a, n)| (a..a + n).map(|x| (f.read(&h, 3, x), f.read(&h, 4, x))))
                .collect();
            f.write_single(&mut h, p.run.stop.address, p.run.stop.value)
                .unwrap();
            let after: Vec<_> = p
                .value_registers()
                .iter()
                .flat_map(|&(a, n)| (a..a + n).map(|x| (f.read(&h, 3, x), f.read(&h, 4, x))))
                .collect();
            assert!(!h.enabled, "{}", p.name);
            assert_eq!(before, after, "{}", p.name);
            assert_eq!((h.sp_c, h.pv_c), (150.0, 140.0), "{}", p.name);
        }
    }
}
