//! Register-map profiles of Modbus RTU temperature controllers, as data: where the process value,
//! setpoint, output, status, alarm threshold and run/stop switch live, how values are scaled and
//! ordered, which function codes read and write them, what must be written before the controller
//! accepts writes, and which comms-loss (watchdog) feature the controller has.
//!
//! The driver (`pid_modbus`) and the virtual controller (`sim::controller`) both read these tables,
//! so the same tests run against every profile. A lab selects one per controller with
//! `profile = "<name>"` (default [`DEFAULT_PROFILE`]).
//!
//! Provenance: `maosic-twin` is this project's own map. The Eurotherm 3200 and Omron E5CC tables
//! were written from the manufacturers' communications manuals (Eurotherm HA028651 "3200 Series",
//! Omron H175 "E5@C Communications Manual") as remembered and spot-checked against excerpts; every
//! address marked `verify` below must be checked on the real instrument before it heats anything.
//! docs/hardware.md says the same per device.

use std::fmt;

/// The profile used when a lab does not name one.
pub const DEFAULT_PROFILE: &str = "maosic-twin";

/// Which Modbus function reads the monitored values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFunction {
    /// 0x03 read holding registers.
    Holding,
    /// 0x04 read input registers.
    Input,
}

impl ReadFunction {
    pub fn code(self) -> u8 {
        match self {
            Self::Holding => 0x03,
            Self::Input => 0x04,
        }
    }
}

/// Which Modbus function writes a value register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFunction {
    /// 0x06 write single register.
    Single,
    /// 0x10 write multiple registers (needed for two-word values).
    Multiple,
}

impl WriteFunction {
    pub fn code(self) -> u8 {
        match self {
            Self::Single => 0x06,
            Self::Multiple => 0x10,
        }
    }
}

/// Order of the two 16-bit words of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    /// High word at the lower address (big-endian, Omron's "four-byte mode").
    HighFirst,
    /// Low word at the lower address.
    LowFirst,
}

/// A single-register command: write `value` to `address` with function 0x06.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub address: u16,
    pub value: u16,
}

/// How the controller's control is switched on and off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSwitch {
    /// Written (0x06) to run control.
    pub run: Command,
    /// Written (0x06) to stop control: the emergency-off frame. Never a value register.
    pub stop: Command,
    /// What the operator calls it on the device.
    pub label: &'static str,
}

/// How the driver reads back whether control is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunReadback {
    /// A register (one word, in the read table) equals `value` while control runs.
    RegisterEquals { address: u16, value: u16 },
    /// A bit of the status word is set while control is stopped.
    StatusBitStopped { bit: u8 },
}

/// The status word and the meaning of its bits (bit 0 = least significant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusMap {
    pub address: u16,
    /// 1 or 2 registers (2: a 32-bit word in the profile's word order).
    pub words: u8,
    pub high_alarm_bit: u8,
    pub sensor_break_bit: u8,
    /// The twin's lease-expired bit (controllers without a lease have none).
    pub lease_expired_bit: Option<u8>,
}

/// The controller's own comms-loss feature, if it has one the agent can use as a watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watchdog {
    /// Output lease: any write of `refresh` keeps the output alive; when it is not written within
    /// the lease the controller cuts its output by itself.
    Lease { refresh: Command },
    /// No comms-loss output cut on this controller. Protection when the agent is gone is the
    /// controller's own alarm (wired to cut the heater) and the agent's wall-clock watchdog thread,
    /// which writes the stop frame straight to the port when the agent's runtime stalls.
    None,
}

/// One controller's register map and behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerProfile {
    /// Name the lab TOML uses.
    pub name: &'static str,
    pub model: &'static str,
    /// Where the values come from and what to check on hardware.
    pub provenance: &'static str,
    pub read_function: ReadFunction,
    pub write_function: WriteFunction,
    /// Registers per value (1: i16; 2: i32).
    pub value_words: u8,
    pub word_order: WordOrder,
    /// Implied decimals of temperatures (123.4 °C = 1234 with 1); a lab may override per device.
    pub decimals: u8,
    /// Implied decimals of the output, %.
    pub output_decimals: u8,
    /// The blocks `read()` fetches, `(start, count)`, with the read function. Every monitored
    /// register lies in one of them.
    pub read_blocks: &'static [(u16, u16)],
    /// Process value (read table).
    pub pv: u16,
    /// Target setpoint (written).
    pub setpoint: u16,
    /// Setpoint read back (read table).
    pub setpoint_readback: u16,
    /// Working output, % (read table).
    pub output: u16,
    /// High alarm threshold (written): the controller's own over-temperature protection.
    pub high_alarm: u16,
    /// Setpoint high and low limits (written at start), when they can be written in operation.
    pub setpoint_limits: Option<(u16, u16)>,
    /// Raw PV the controller reports for an open sensor, if it has such a value.
    pub sensor_break_pv: Option<u16>,
    pub status: StatusMap,
    pub run: RunSwitch,
    pub run_readback: RunReadback,
    /// Written (0x06) to clear latched alarms, if the controller can do it over comms.
    pub alarm_reset: Option<Command>,
    /// Written (0x06) before anything else (and again after the port is reopened).
    pub init: &'static [Command],
    /// Until this is written the controller refuses writes (Omron: "communications writing").
    pub write_gate: Option<Command>,
    pub watchdog: Watchdog,
}

/// The project's own virtual controller (the map every lab used before profiles existed).
pub static MAOSIC_TWIN: ControllerProfile = ControllerProfile {
    name: "maosic-twin",
    model: "MAOSIC virtual PID controller (digital twin)",
    provenance: "this project's own map; exact by definition",
    read_function: ReadFunction::Input,
    write_function: WriteFunction::Single,
    value_words: 1,
    word_order: WordOrder::HighFirst,
    decimals: 1,
    output_decimals: 1,
    read_blocks: &[(0, 5)],
    pv: 0,
    setpoint: 0,
    setpoint_readback: 3,
    output: 1,
    high_alarm: 2,
    setpoint_limits: None,
    sensor_break_pv: Some(0x8000),
    status: StatusMap {
        address: 2,
        words: 1,
        high_alarm_bit: 0,
        sensor_break_bit: 1,
        lease_expired_bit: Some(2),
    },
    run: RunSwitch {
        run: Command {
            address: 1,
            value: 1,
        },
        stop: Command {
            address: 1,
            value: 0,
        },
        label: "holding 1: control on (1) / heater off (0)",
    },
    run_readback: RunReadback::RegisterEquals {
        address: 4,
        value: 1,
    },
    alarm_reset: Some(Command {
        address: 4,
        value: 1,
    }),
    init: &[],
    write_gate: None,
    watchdog: Watchdog::Lease {
        refresh: Command {
            address: 3,
            value: 1,
        },
    },
};

/// Eurotherm 3200 series (3216, 3208, 32h8, 3204) over Modbus RTU.
pub static EUROTHERM_3200: ControllerProfile = ControllerProfile {
    name: "eurotherm-3200",
    model: "Eurotherm 3200 series (3216/3208/32h8/3204), Modbus RTU option",
    provenance: "Eurotherm HA028651 (3200 Series), section 'Parameter Modbus Addresses': PV.IN 1, \
                 TG.SP 2, WRK.OP 4, A1 threshold 13, StAt 75 (bit 0 alarm 1, bit 5 sensor break) \
                 checked against an excerpt; IM 199 (0 operating, 1 standby = control outputs off) \
                 and SP.HI 111 / SP.LO 112 from memory: verify. Values are scaled integers with the \
                 instrument's configured decimal point (dEC.P). TG.SP is non-volatile (100,000 \
                 writes): fine for one write per experiment. No comms-loss output cut (the remote \
                 comms setpoint, address 26, only raises 'remote SP fail', StAt bit 14).",
    read_function: ReadFunction::Holding,
    write_function: WriteFunction::Single,
    value_words: 1,
    word_order: WordOrder::HighFirst,
    decimals: 1,
    output_decimals: 1,
    read_blocks: &[(1, 5), (75, 1), (199, 1)],
    pv: 1,
    setpoint: 2,
    setpoint_readback: 2,
    output: 4,
    high_alarm: 13,
    setpoint_limits: Some((111, 112)),
    sensor_break_pv: None,
    status: StatusMap {
        address: 75,
        words: 1,
        high_alarm_bit: 0,
        sensor_break_bit: 5,
        lease_expired_bit: None,
    },
    run: RunSwitch {
        run: Command {
            address: 199,
            value: 0,
        },
        stop: Command {
            address: 199,
            value: 1,
        },
        label: "IM (instrument mode, 199): 0 operating / 1 standby, control outputs off",
    },
    run_readback: RunReadback::RegisterEquals {
        address: 199,
        value: 0,
    },
    alarm_reset: None,
    init: &[],
    write_gate: None,
    watchdog: Watchdog::None,
};

/// Omron's operation-command address (the manual allows 0x0000 or 0xFFFF with function 0x06;
/// 0xFFFF is used so no command shares an address with the PV).
pub const OMRON_OPERATION_COMMAND: u16 = 0xFFFF;

/// Omron E5CC in Modbus "four-byte mode" (double-word variables at 0x0000/0x0100).
pub static OMRON_E5CC: ControllerProfile = ControllerProfile {
    name: "omron-e5cc",
    model: "Omron E5CC (E5@C family), Modbus RTU, four-byte mode",
    provenance: "Omron H175 (E5@C Communications Manual), section 4/5: four-byte mode variable \
                 area (PV 0x0000, status 0x0002, internal SP 0x0004, MV heating 0x0008, set point \
                 0x0106, alarm value 1 0x0108, alarm upper limit 1 0x010A), 32-bit values high word \
                 first, reads 0x03, writes 0x10, operation commands 0x06 to address 0xFFFF \
                 (the manual allows 0x0000 or 0xFFFF; 0xFFFF keeps them off the PV's address): \
                 0x0001 communications writing on, 0x0100 run, 0x0101 stop, 0x0401 RAM write mode, \
                 0x0C0F cancel all alarm latches; checked against excerpts. Status bit positions \
                 (alarm 1 = 12, input error = 6, RUN/STOP = 24, 1 = stop) are from memory: verify. \
                 Alarm 1 type must be 8 (absolute-value upper limit) so alarm value 1 is an \
                 absolute temperature. No comms-loss function.",
    read_function: ReadFunction::Holding,
    write_function: WriteFunction::Multiple,
    value_words: 2,
    word_order: WordOrder::HighFirst,
    decimals: 1,
    output_decimals: 1,
    read_blocks: &[(0x0000, 10)],
    pv: 0x0000,
    setpoint: 0x0106,
    setpoint_readback: 0x0004,
    output: 0x0008,
    high_alarm: 0x0108,
    setpoint_limits: None,
    sensor_break_pv: None,
    status: StatusMap {
        address: 0x0002,
        words: 2,
        high_alarm_bit: 12,
        sensor_break_bit: 6,
        lease_expired_bit: None,
    },
    run: RunSwitch {
        run: Command {
            address: OMRON_OPERATION_COMMAND,
            value: 0x0100,
        },
        stop: Command {
            address: OMRON_OPERATION_COMMAND,
            value: 0x0101,
        },
        label: "operation command 01 (RUN/STOP), 0x06 to 0xFFFF: 0x0100 run / 0x0101 stop",
    },
    run_readback: RunReadback::StatusBitStopped { bit: 24 },
    alarm_reset: Some(Command {
        address: OMRON_OPERATION_COMMAND,
        value: 0x0C0F,
    }),
    init: &[
        Command {
            address: OMRON_OPERATION_COMMAND,
            value: 0x0001,
        },
        Command {
            address: OMRON_OPERATION_COMMAND,
            value: 0x0401,
        },
    ],
    write_gate: Some(Command {
        address: OMRON_OPERATION_COMMAND,
        value: 0x0001,
    }),
    watchdog: Watchdog::None,
};

/// Every built-in profile.
pub static PROFILES: [&ControllerProfile; 3] = [&MAOSIC_TWIN, &EUROTHERM_3200, &OMRON_E5CC];

/// A lab named a profile that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown controller profile {name:?}; known profiles: {}", known_names().join(", "))]
pub struct UnknownProfile {
    pub name: String,
}

/// Names of the built-in profiles.
pub fn known_names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

/// The built-in profile called `name`.
pub fn by_name(name: &str) -> Result<&'static ControllerProfile, UnknownProfile> {
    PROFILES
        .iter()
        .copied()
        .find(|p| p.name == name)
        .ok_or_else(|| UnknownProfile {
            name: name.to_string(),
        })
}

/// A value that does not fit the register format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{value} does not fit a {words}-register value with {decimals} decimal(s)")]
pub struct EncodeError {
    pub value: f64,
    pub words: u8,
    pub decimals: u8,
}

impl fmt::Display for ControllerProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.model)
    }
}

impl ControllerProfile {
    /// Registers of one value.
    pub fn words(&self) -> u16 {
        u16::from(self.value_words.clamp(1, 2))
    }

    /// Scale and encode `value` (implied `decimals`) as the registers to write, in word order.
    pub fn encode(&self, value: f64, decimals: u8) -> Result<Vec<u16>, EncodeError> {
        let err = EncodeError {
            value,
            words: self.value_words,
            decimals,
        };
        let scaled = value * 10f64.powi(i32::from(decimals));
        if !scaled.is_finite() {
            return Err(err);
        }
        let scaled = scaled.round();
        if self.words() == 1 {
            if !(f64::from(i16::MIN)..=f64::from(i16::MAX)).contains(&scaled) {
                return Err(err);
            }
            Ok(vec![(scaled as i16) as u16])
        } else {
            if !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&scaled) {
                return Err(err);
            }
            Ok(self.split(scaled as i32 as u32).to_vec())
        }
    }

    /// Split a 32-bit raw value into two registers in word order.
    pub fn split(&self, raw: u32) -> [u16; 2] {
        let (hi, lo) = ((raw >> 16) as u16, raw as u16);
        match self.word_order {
            WordOrder::HighFirst => [hi, lo],
            WordOrder::LowFirst => [lo, hi],
        }
    }

    /// Join registers (one or two, in word order) into the raw value.
    pub fn join(&self, regs: &[u16]) -> Option<u32> {
        match regs {
            [one] if self.words() == 1 => Some(u32::from(*one)),
            [a, b] => Some(match self.word_order {
                WordOrder::HighFirst => (u32::from(*a) << 16) | u32::from(*b),
                WordOrder::LowFirst => (u32::from(*b) << 16) | u32::from(*a),
            }),
            _ => None,
        }
    }

    /// Decode a signed scaled value from its registers.
    pub fn decode(&self, regs: &[u16], decimals: u8) -> Option<f64> {
        let raw = self.join(regs)?;
        let signed = if self.words() == 1 {
            f64::from(raw as u16 as i16)
        } else {
            f64::from(raw as i32)
        };
        Some(signed / 10f64.powi(i32::from(decimals)))
    }

    /// The raw RTU frame that stops control (what the watchdog thread writes without a runtime).
    pub fn stop_frame(&self, slave: u8) -> Vec<u8> {
        let [ah, al] = self.run.stop.address.to_be_bytes();
        let [vh, vl] = self.run.stop.value.to_be_bytes();
        crate::sim::servers::with_crc(vec![slave, 0x06, ah, al, vh, vl])
    }

    /// Value registers a stop must never touch: PV, setpoint, setpoint readback, alarm threshold.
    pub fn value_registers(&self) -> Vec<(u16, u16)> {
        let w = self.words();
        let mut v = vec![
            (self.pv, w),
            (self.setpoint, w),
            (self.setpoint_readback, w),
            (self.high_alarm, w),
        ];
        if let Some((hi, lo)) = self.setpoint_limits {
            v.push((hi, w));
            v.push((lo, w));
        }
        v
    }

    /// The value register (PV, setpoint, readback, alarm, limits) covering `address`, if any.
    pub fn value_register_at(&self, address: u16) -> Option<u16> {
        self.value_registers()
            .into_iter()
            .find(|&(a, n)| address >= a && u32::from(address) < u32::from(a) + u32::from(n))
            .map(|(a, _)| a)
    }

    /// Check the table is coherent: monitored registers inside the read blocks, the stop command
    /// off every value register, sane widths and decimals.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Vec::new();
        if !(1..=2).contains(&self.value_words) {
            p.push(format!("value_words {} (1 or 2)", self.value_words));
        }
        if self.decimals > 3 || self.output_decimals > 3 {
            p.push("more than 3 decimals".to_string());
        }
        if self.value_words == 2 && self.write_function == WriteFunction::Single {
            p.push("two-register values need function 0x10".into());
        }
        let in_blocks = |a: u16, n: u16| {
            self.read_blocks
                .iter()
                .any(|&(s, c)| a >= s && u32::from(a) + u32::from(n) <= u32::from(s) + u32::from(c))
        };
        let w = self.words();
        for (what, a, n) in [
            ("pv", self.pv, w),
            ("setpoint_readback", self.setpoint_readback, w),
            ("output", self.output, w),
            ("status", self.status.address, u16::from(self.status.words)),
        ] {
            if !in_blocks(a, n) {
                p.push(format!("{what} register {a} is outside the read blocks"));
            }
        }
        if let RunReadback::RegisterEquals { address, .. } = self.run_readback {
            if !in_blocks(address, 1) {
                p.push(format!(
                    "run readback register {address} is outside the read blocks"
                ));
            }
        }
        // A stop written to a value register would change a value instead of stopping.
        if let Some(a) = self.value_register_at(self.run.stop.address) {
            p.push(format!("the stop command writes value register {a}"));
        }
        if self.run.stop == self.run.run {
            p.push("run and stop are the same command".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(format!("profile {}: {}", self.name, p.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_is_coherent() {
        for p in PROFILES {
            p.validate().unwrap();
        }
    }

    #[test]
    fn unknown_profile_error_lists_the_known_ones() {
        let e = by_name("eurotherm-2408").unwrap_err().to_string();
        assert!(e.contains("eurotherm-2408"), "{e}");
        for n in known_names() {
            assert!(e.contains(n), "{e}");
        }
        assert_eq!(by_name("omron-e5cc").unwrap().name, "omron-e5cc");
    }

    #[test]
    fn values_scale_sign_and_order_per_profile() {
        let t = &MAOSIC_TWIN;
        assert_eq!(t.encode(123.4, 1).unwrap(), vec![1234]);
        assert_eq!(t.encode(-5.0, 1).unwrap(), vec![(-50i16) as u16]);
        assert_eq!(t.decode(&[(-50i16) as u16], 1), Some(-5.0));
        assert!(t.encode(4000.0, 1).is_err());
        assert!(t.encode(f64::NAN, 1).is_err());
        let o = &OMRON_E5CC;
        // the manual's example: 1000 = H'000003E8, -1000 = H'FFFFFC18, high word first
        assert_eq!(o.encode(100.0, 1).unwrap(), vec![0x0000, 0x03E8]);
        assert_eq!(o.encode(-100.0, 1).unwrap(), vec![0xFFFF, 0xFC18]);
        assert_eq!(o.decode(&[0xFFFF, 0xFC18], 1), Some(-100.0));
        assert_eq!(o.encode(4000.0, 1).unwrap(), vec![0x0000, 40000]);
        let e = &EUROTHERM_3200;
        assert_eq!(e.encode(150.0, 0).unwrap(), vec![150]);
        assert_eq!(e.decode(&[1505], 1), Some(150.5));
    }

    #[test]
    fn stop_frame_is_a_single_register_write_of_the_stop_command() {
        for p in PROFILES {
            let f = p.stop_frame(7);
            assert_eq!(f.len(), 8);
            assert_eq!((f[0], f[1]), (7, 0x06));
            assert_eq!(u16::from_be_bytes([f[2], f[3]]), p.run.stop.address);
            assert_eq!(u16::from_be_bytes([f[4], f[5]]), p.run.stop.value);
            let crc = crate::sim::servers::MODBUS_CRC.checksum(&f[..6]);
            assert_eq!(crc.to_le_bytes(), [f[6], f[7]]);
        }
    }

    #[test]
    fn validation_catches_a_stop_on_the_setpoint() {
        let mut bad = EUROTHERM_3200.clone();
        bad.run.stop = Command {
            address: bad.setpoint,
            value: 0,
        };
        let e = bad.validate().unwrap_err();
        assert!(e.contains("stop command writes value register"), "{e}");
    }
}
