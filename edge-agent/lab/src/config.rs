//! The agent's lab configuration (TOML): the lab's name, each device (symbol, kind, driver, port,
//! local limits), the safety kernel's settings and, for a virtual lab, the twin's settings.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::devices::{DeviceKind, HeaterLimits, PumpLimits};
use crate::drivers::SerialTiming;

/// The port value that asks the virtual lab to serve the device on a fresh pseudo-terminal.
pub const VIRTUAL_PORT: &str = "virtual";

/// Whole lab configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    pub lab: LabSection,
    #[serde(default)]
    pub safety: SafetyConfig,
    /// Present when any device is virtual.
    #[serde(default, rename = "virtual")]
    pub twin: TwinConfig,
    #[serde(default, rename = "devices")]
    pub devices: Vec<DeviceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSection {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// What to do with a running program when the cloud link is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LinkLossPolicy {
    /// Keep running within the local limits (data is spooled).
    #[default]
    Continue,
    /// Stop dosing (pumps stop), keep the heater at its setpoint, start no new step until the link is back.
    Hold,
    /// Cancel the program and go to the safe state (pumps stopped, heater off).
    SafeStop,
}

/// Safety kernel settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Kernel control period, s of lab time.
    pub control_period_s: f64,
    /// Shortest real time between two kernel cycles, ms (keeps high speed factors sane).
    pub min_real_period_ms: u64,
    /// Heater output lease, s of lab time.
    pub lease_s: f64,
    /// Watchdog period, ms of wall time: a stalled runtime for this long triggers the safe state.
    pub watchdog_ms: u64,
    /// Runaway: less than `runaway_min_rise_c` rise over `runaway_window_s` while heating hard.
    pub runaway_min_rise_c: f64,
    pub runaway_window_s: f64,
    /// Runaway: more than `below_target_c` below target for `below_target_s` once at target.
    pub below_target_c: f64,
    pub below_target_s: f64,
    /// Default link-loss policy for programs that do not say.
    pub link_loss: LinkLossPolicy,
    /// Stability band and hold time for `set_temperature`, °C and s.
    pub settle_band_c: f64,
    pub settle_hold_s: f64,
    /// Give up waiting for the temperature after this long, s.
    pub settle_timeout_s: f64,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            control_period_s: 1.0,
            min_real_period_ms: 5,
            lease_s: 3.0,
            watchdog_ms: 1000,
            runaway_min_rise_c: 2.0,
            runaway_window_s: 20.0,
            below_target_c: 4.0,
            below_target_s: 40.0,
            link_loss: LinkLossPolicy::Continue,
            settle_band_c: 1.0,
            settle_hold_s: 20.0,
            settle_timeout_s: 1200.0,
        }
    }
}

/// Virtual lab (digital twin) settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwinConfig {
    /// Lab-time speed factor (1 = real time); `"max"` (infinite): as fast as the CPU allows,
    /// on the event clock.
    #[serde(deserialize_with = "speed_de", serialize_with = "speed_ser")]
    pub speed: f64,
    /// Which clock the twin keeps (see [`crate::clock`]): `event` (the default: lab time moves
    /// by events, I/O takes none, results do not depend on machine load) or `scaled` (wall time ×
    /// speed: for tests of wall-time behaviour such as the watchdog).
    pub clock: TwinClock,
    /// Lab time one device call's serial exchange counts for on the event clock, ms (a
    /// 9600-baud request and reply with the device's turnaround).
    pub call_lab_ms: u64,
    pub seed: u64,
    /// `paper` or a path to a landscape TOML file.
    pub landscape: String,
    /// Reactor coil volume, µL.
    pub reactor_volume_ul: f64,
    /// CD scan speed, nm/min (the paper's: 20).
    pub cd_scan_rate_nm_per_min: f64,
    /// Robot arm move time, s.
    pub arm_move_s: f64,
    /// Sampler slots.
    pub sampler_slots: u32,
}

impl Default for TwinConfig {
    fn default() -> Self {
        Self {
            speed: 1.0,
            clock: TwinClock::Event,
            call_lab_ms: 100,
            seed: 1,
            landscape: "paper".into(),
            reactor_volume_ul: 100.0,
            cd_scan_rate_nm_per_min: 20.0,
            arm_move_s: 20.0,
            sampler_slots: 12,
        }
    }
}

/// The virtual lab's clock (see [`crate::clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TwinClock {
    /// Discrete-event lab time.
    #[default]
    Event,
    /// Wall time × speed.
    Scaled,
}

/// A speed: a positive number, or `"max"` (as fast as the CPU allows).
pub fn parse_speed(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(f64::INFINITY);
    }
    match t.parse::<f64>() {
        Ok(v) if v > 0.0 && !v.is_nan() => Ok(v),
        _ => Err(format!("speed must be a positive number or max, got {s:?}")),
    }
}

fn speed_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(v) => Ok(v),
        Raw::Text(t) => parse_speed(&t).map_err(serde::de::Error::custom),
    }
}

fn speed_ser<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_infinite() {
        s.serialize_str("max")
    } else {
        s.serialize_f64(*v)
    }
}

/// Which driver talks to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// NE-1000-family pump over RS-232.
    Ne1000,
    /// PID temperature controller over Modbus RTU.
    ModbusPid,
    /// A virtual instrument of the twin (no serial protocol).
    Virtual,
    /// A separate driver process speaking JSON-RPC over stdio (`command`), e.g. Python around a
    /// vendor SDK; see docs/external-drivers.md. For measuring instruments only.
    External,
}

/// One device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Instruction symbol (`P1`, `H`, `UV` …).
    pub symbol: String,
    pub kind: DeviceKind,
    pub driver: DriverKind,
    /// Serial port path, or `virtual` to serve it from the twin on a pseudo-terminal.
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Pump address (0–99) or Modbus slave id.
    #[serde(default)]
    pub address: u8,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub timing: SerialTiming,
    /// Pumps: syringe inside diameter, mm.
    #[serde(default)]
    pub diameter_mm: Option<f64>,
    /// Pumps: start refilling when less than this is left, µL.
    #[serde(default)]
    pub refill_below_ul: Option<f64>,
    /// Virtual pumps: Cs+ content of the reagent, mmol/ml.
    #[serde(default)]
    pub cs_mmol_per_ml: Option<f64>,
    /// Temperature controllers: the register-map profile (`maosic-twin`, `eurotherm-3200`,
    /// `omron-e5cc`; default `maosic-twin`). See `drivers::profiles` and docs/hardware.md.
    #[serde(default)]
    pub profile: Option<String>,
    /// Lasers: the symbol of the laser's beam shutter (a `shutter` device of the lab). The safety
    /// kernel closes it on e-stop, on a trip and when the cloud link is lost.
    #[serde(default)]
    pub shutter: Option<String>,
    /// Temperature controllers: implied decimals of temperatures on the wire (the instrument's
    /// configured decimal point), overriding the profile's default.
    #[serde(default)]
    pub decimals: Option<u8>,
    /// External drivers: the program and its arguments; `{port}` in an argument is replaced by
    /// the device's port path (with `port = "virtual"`, the twin's optical bench).
    #[serde(default)]
    pub command: Vec<String>,
    /// External drivers: longest wait for a reply, ms (default 10,000).
    #[serde(default)]
    pub rpc_timeout_ms: Option<u64>,
    /// NE-1000 pumps: the model (`ne-1000`, default, or `ne-1600`): its rate range for the
    /// syringe fitted and its volume units; checked against the pump's `VER` at start.
    #[serde(default)]
    pub model: Option<String>,
    /// NE-1000 pumps: switch the pump's Safe mode on with this communications time-out, s
    /// (1–255): the pump stops by itself when the agent goes silent that long.
    #[serde(default)]
    pub safe_mode_s: Option<u8>,
    /// Local limits (keys depend on the kind).
    #[serde(default)]
    pub limits: BTreeMap<String, f64>,
}

/// Syringe inside diameter when a pump does not say (the paper's 0.5 mL glass syringe), mm.
pub const DEFAULT_DIAMETER_MM: f64 = 3.26;

fn default_baud() -> u32 {
    19200
}

/// Why a configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("lab configuration is not valid TOML: {0}")]
    Toml(String),
    #[error("lab configuration is inconsistent: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl LabConfig {
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let c: LabConfig = toml::from_str(s).map_err(|e| ConfigError::Toml(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let s = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&s)
    }

    /// Every problem found (unique symbols, drivers fitting kinds, ports present, limits sane).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let speed_ok = match self.twin.clock {
            TwinClock::Event => self.twin.speed > 0.0,
            TwinClock::Scaled => self.twin.speed.is_finite() && self.twin.speed > 0.0,
        };
        if !speed_ok {
            p.push(format!(
                "virtual.speed must be positive (max only on the event clock), got {}",
                self.twin.speed
            ));
        }
        for d in &self.devices {
            if !seen.insert(d.symbol.clone()) {
                p.push(format!("device symbol {} is declared twice", d.symbol));
            }
            let ok = matches!(
                (d.kind, d.driver),
                (DeviceKind::SyringePump, DriverKind::Ne1000)
                    | (DeviceKind::TemperatureController, DriverKind::ModbusPid)
                    | (
                        DeviceKind::AbsorptionSpectrometer
                            | DeviceKind::CdSpectrometer
                            | DeviceKind::RotationSampler
                            | DeviceKind::RobotArm
                            | DeviceKind::Laser
                            | DeviceKind::Shutter,
                        DriverKind::Virtual
                    )
                    | (
                        DeviceKind::AbsorptionSpectrometer | DeviceKind::CdSpectrometer,
                        DriverKind::External
                    )
            );
            if !ok {
                p.push(format!(
                    "{}: driver {:?} cannot drive a {:?}",
                    d.symbol, d.driver, d.kind
                ));
            }
            if d.driver == DriverKind::External {
                if d.command.is_empty() {
                    p.push(format!(
                        "{}: an external driver needs `command` (the program and its arguments)",
                        d.symbol
                    ));
                }
                if d.port.as_deref() == Some(VIRTUAL_PORT)
                    && d.kind != DeviceKind::AbsorptionSpectrometer
                {
                    p.push(format!(
                        "{}: the virtual lab serves an optical bench for absorption spectrometers only",
                        d.symbol
                    ));
                }
                if d.rpc_timeout_ms
                    .is_some_and(|t| !(10..=600_000).contains(&t))
                {
                    p.push(format!("{}: rpc_timeout_ms must be 10 to 600000", d.symbol));
                }
            } else if !d.command.is_empty() || d.rpc_timeout_ms.is_some() {
                p.push(format!(
                    "{}: `command` and `rpc_timeout_ms` apply only to driver \"external\"",
                    d.symbol
                ));
            }
            if !matches!(d.driver, DriverKind::Virtual | DriverKind::External) && d.port.is_none() {
                p.push(format!(
                    "{}: a serial driver needs `port` (a path or \"virtual\")",
                    d.symbol
                ));
            }
            if d.driver == DriverKind::ModbusPid {
                if let Err(e) = d.controller_profile() {
                    p.push(format!("{}: {e}", d.symbol));
                }
                if d.decimals.is_some_and(|n| n > 3) {
                    p.push(format!(
                        "{}: decimals must be 0 to 3, got {:?}",
                        d.symbol, d.decimals
                    ));
                }
            } else if d.profile.is_some() || d.decimals.is_some() {
                p.push(format!(
                    "{}: `profile` and `decimals` apply only to driver \"modbus-pid\"",
                    d.symbol
                ));
            }
            if let Some(sh) = &d.shutter {
                if d.kind != DeviceKind::Laser {
                    p.push(format!("{}: only a laser has a `shutter`", d.symbol));
                } else if !self
                    .devices
                    .iter()
                    .any(|x| &x.symbol == sh && x.kind == DeviceKind::Shutter)
                {
                    p.push(format!(
                        "{}: shutter {sh} is not a device of kind \"shutter\" in this lab",
                        d.symbol
                    ));
                }
            }
            for (k, v) in &d.limits {
                if !v.is_finite() {
                    p.push(format!("{}: limit {k} is not finite", d.symbol));
                }
            }
            if d.driver != DriverKind::Ne1000 && (d.model.is_some() || d.safe_mode_s.is_some()) {
                p.push(format!(
                    "{}: `model` and `safe_mode_s` apply only to driver \"ne1000\"",
                    d.symbol
                ));
            }
            if d.safe_mode_s == Some(0) {
                p.push(format!(
                    "{}: safe_mode_s must be 1 to 255 seconds (leave it out for the basic protocol)",
                    d.symbol
                ));
            }
            match d.kind {
                DeviceKind::SyringePump => {
                    if let Err(e) = d.pump_limits() {
                        p.push(e);
                    }
                }
                DeviceKind::TemperatureController => {
                    if let Err(e) = d.heater_limits() {
                        p.push(e);
                    }
                }
                _ => {}
            }
        }
        p.extend(self.shared_port_problems());
        p.extend(self.mixing_problem());
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    /// Devices on one real port: only NE-1000 pumps may share one (a pump network), each with its
    /// own address, all at the same baud rate.
    fn shared_port_problems(&self) -> Vec<String> {
        let mut by_port: BTreeMap<&str, Vec<&DeviceConfig>> = BTreeMap::new();
        for d in &self.devices {
            if let Some(port) = d.port.as_deref().filter(|p| *p != VIRTUAL_PORT) {
                by_port.entry(port).or_default().push(d);
            }
        }
        let mut p = Vec::new();
        for (port, ds) in by_port.into_iter().filter(|(_, ds)| ds.len() > 1) {
            let names = ds
                .iter()
                .map(|d| d.symbol.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if ds.iter().any(|d| d.driver != DriverKind::Ne1000) {
                p.push(format!(
                    "{names} share port {port}: only NE-1000 pumps can share a port (a pump network)"
                ));
                continue;
            }
            let mut seen = std::collections::BTreeSet::new();
            for d in &ds {
                if !seen.insert(d.address) {
                    p.push(format!(
                        "{names} share port {port}: address {} is used twice (each pump on a network needs its own address)",
                        d.address
                    ));
                }
            }
            if ds.iter().any(|d| d.baud != ds[0].baud) {
                p.push(format!(
                    "{names} share port {port} with different baud rates"
                ));
            }
        }
        p
    }

    /// The twin's virtual instruments read the twin's own pumps and heater: a lab that puts pumps
    /// or a heater on real ports beside them would show the instruments no flow and no
    /// temperature. Refused, naming both sides.
    fn mixing_problem(&self) -> Option<String> {
        let virtual_instruments: Vec<&str> = self
            .devices
            .iter()
            .filter(|d| {
                d.driver == DriverKind::Virtual
                    || (d.driver == DriverKind::External && d.port.as_deref() == Some(VIRTUAL_PORT))
            })
            .map(|d| d.symbol.as_str())
            .collect();
        let real: Vec<&str> = self
            .devices
            .iter()
            .filter(|d| d.driver != DriverKind::Virtual)
            // an external driver without a port talks to its hardware directly (e.g. USB)
            .filter(|d| {
                d.port.as_deref().is_some_and(|p| p != VIRTUAL_PORT)
                    || (d.driver == DriverKind::External && d.port.is_none())
            })
            .map(|d| d.symbol.as_str())
            .collect();
        if virtual_instruments.is_empty() || real.is_empty() {
            return None;
        }
        Some(format!(
            "virtual instruments ({}) cannot be mixed with devices on real ports ({}): the virtual \
             instruments see only the virtual lab's pumps and heater, so they would find no flow; \
             make every device virtual (port = \"virtual\"), or leave the virtual instruments out \
             until they have real drivers",
            virtual_instruments.join(", "),
            real.join(", ")
        ))
    }

    /// Is any device served by the twin?
    pub fn needs_twin(&self) -> bool {
        self.devices
            .iter()
            .any(|d| d.driver == DriverKind::Virtual || d.port.as_deref() == Some(VIRTUAL_PORT))
    }
}

impl DeviceConfig {
    fn limits_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let table: toml::Table = self
            .limits
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::Float(*v)))
            .collect();
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("{}: limits: {e}", self.symbol))
    }

    /// The pump's limits. For an NE-1000-family pump they are also held to its model: the
    /// syringe must fit the model, and the rate limit is at most what the model pushes through
    /// that syringe (a rate limit left out defaults to that, capped at 1,000 µL/min; one set
    /// above it is refused, since the pump would answer `?OOR`).
    pub fn pump_limits(&self) -> Result<PumpLimits, String> {
        let mut l: PumpLimits = self.limits_as()?;
        if l.max_rate_ul_min <= 0.0
            || l.syringe_volume_ul <= 0.0
            || l.min_diameter_mm > l.max_diameter_mm
        {
            return Err(format!("{}: pump limits are not sane: {l:?}", self.symbol));
        }
        if self.driver == DriverKind::Ne1000 {
            let m = self.pump_model()?;
            let d = self.syringe_diameter_mm();
            if !(m.min_diameter_mm..=m.max_diameter_mm).contains(&d)
                || !(l.min_diameter_mm..=l.max_diameter_mm).contains(&d)
            {
                return Err(format!(
                    "{}: diameter_mm = {d} does not fit an {} ({} to {} mm) and the limits ({} to {} mm)",
                    self.symbol,
                    m.name,
                    m.min_diameter_mm,
                    m.max_diameter_mm,
                    l.min_diameter_mm,
                    l.max_diameter_mm
                ));
            }
            let top = m.max_rate_ul_min(d);
            if self.limits.contains_key("max_rate_ul_min") {
                if l.max_rate_ul_min > top {
                    return Err(format!(
                        "{}: limits.max_rate_ul_min = {} is more than an {} can pump through a {d} mm syringe ({top:.1} µL/min); lower it",
                        self.symbol, l.max_rate_ul_min, m.name
                    ));
                }
            } else {
                l.max_rate_ul_min = l.max_rate_ul_min.min(top);
            }
        }
        Ok(l)
    }

    /// The pump model (NE-1000 pumps; default `ne-1000`).
    pub fn pump_model(&self) -> Result<&'static crate::pump_models::PumpModel, String> {
        crate::pump_models::by_name(self.model.as_deref().unwrap_or("ne-1000"))
            .map_err(|e| format!("{}: {e}", self.symbol))
    }

    /// The syringe's inside diameter, mm.
    pub fn syringe_diameter_mm(&self) -> f64 {
        self.diameter_mm.unwrap_or(DEFAULT_DIAMETER_MM)
    }

    pub fn heater_limits(&self) -> Result<HeaterLimits, String> {
        let l: HeaterLimits = self.limits_as()?;
        if l.min_temperature_c >= l.max_temperature_c {
            return Err(format!(
                "{}: heater limits are not sane: {l:?}",
                self.symbol
            ));
        }
        Ok(l)
    }

    /// The controller's register-map profile (default `maosic-twin`).
    pub fn controller_profile(
        &self,
    ) -> Result<
        &'static crate::drivers::profiles::ControllerProfile,
        crate::drivers::profiles::UnknownProfile,
    > {
        crate::drivers::profiles::by_name(
            self.profile
                .as_deref()
                .unwrap_or(crate::drivers::profiles::DEFAULT_PROFILE),
        )
    }

    /// A named limit, if given.
    pub fn limit(&self, key: &str) -> Option<f64> {
        self.limits.get(key).copied()
    }
}

/// The built-in virtual paper lab (used by `virtual-lab probe` and tests).
pub const PAPER_VIRTUAL_TOML: &str = include_str!("../../../examples/agent-lab-virtual.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twin_speed_is_a_positive_factor_or_max_and_max_needs_the_event_clock() {
        assert_eq!(parse_speed("max"), Ok(f64::INFINITY));
        assert_eq!(parse_speed(" MAX "), Ok(f64::INFINITY));
        assert_eq!(parse_speed("250"), Ok(250.0));
        for bad in ["0", "-3", "NaN", "fast", ""] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
        let with = |line: &str| PAPER_VIRTUAL_TOML.replacen("speed = \"max\"", line, 1);
        let c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
        assert!(c.twin.speed.is_infinite());
        assert_eq!(c.twin.clock, TwinClock::Event);
        let c = LabConfig::from_toml_str(&with("speed = 300.0")).unwrap();
        assert_eq!(c.twin.speed, 300.0);
        assert!(LabConfig::from_toml_str(&with("speed = \"warp\"")).is_err());
        let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
        c.twin.clock = TwinClock::Scaled;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max only on the event clock"), "{e}");
        c.twin.speed = 50.0;
        c.validate().unwrap();
    }

    #[test]
    fn paper_virtual_lab_parses() {
        let c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
        assert_eq!(c.devices.len(), 9);
        assert!(c.needs_twin());
    }

    #[test]
    fn reports_every_problem() {
        let bad = r#"
            [lab]
            name = "x"
            [[devices]]
            symbol = "P1"
            kind = "syringe_pump"
            driver = "modbus-pid"
            [[devices]]
            symbol = "P1"
            kind = "temperature_controller"
            driver = "modbus-pid"
            port = "virtual"
            limits = { min_temperature_c = 100.0, max_temperature_c = 50.0 }
        "#;
        let e = LabConfig::from_toml_str(bad).unwrap_err().to_string();
        for n in ["declared twice", "cannot drive", "needs `port`", "not sane"] {
            assert!(e.contains(n), "{n} missing in {e}");
        }
    }

    #[test]
    fn controller_profile_is_validated_at_load() {
        let lab = |extra: &str| {
            format!(
                r#"
            [lab]
            name = "x"
            [[devices]]
            symbol = "H"
            kind = "temperature_controller"
            driver = "modbus-pid"
            port = "virtual"
            {extra}
            "#
            )
        };
        let c = LabConfig::from_toml_str(&lab("")).unwrap();
        assert_eq!(
            c.devices[0].controller_profile().unwrap().name,
            "maosic-twin"
        );
        let c = LabConfig::from_toml_str(&lab("profile = \"eurotherm-3200\"")).unwrap();
        assert_eq!(
            c.devices[0].controller_profile().unwrap().name,
            "eurotherm-3200"
        );
        let e = LabConfig::from_toml_str(&lab("profile = \"eurotherm-2408\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("H: unknown controller profile \"eurotherm-2408\"")
                && e.contains("omron-e5cc"),
            "{e}"
        );
        let e = LabConfig::from_toml_str(&lab("decimals = 5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("decimals must be 0 to 3"), "{e}");
    }
}

#[cfg(test)]
mod networks {
    use super::*;

    fn lab(devices: &str) -> Result<LabConfig, ConfigError> {
        LabConfig::from_toml_str(&format!("[lab]\nname = \"x\"\n{devices}"))
    }

    fn pump(symbol: &str, port: &str, address: u8) -> String {
        format!(
            "[[devices]]\nsymbol = \"{symbol}\"\nkind = \"syringe_pump\"\ndriver = \"ne1000\"\nport = \"{port}\"\naddress = {address}\n"
        )
    }

    #[test]
    fn pumps_with_distinct_addresses_share_a_port() {
        let c = lab(&[pump("P1", "/dev/ttyS0", 1), pump("P2", "/dev/ttyS0", 2)].concat()).unwrap();
        assert_eq!(c.devices.len(), 2);
        let e = lab(&[pump("P1", "/dev/ttyS0", 1), pump("P2", "/dev/ttyS0", 1)].concat())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("P1, P2 share port /dev/ttyS0: address 1 is used twice"),
            "{e}"
        );
        let heater = "[[devices]]\nsymbol = \"H\"\nkind = \"temperature_controller\"\ndriver = \"modbus-pid\"\nport = \"/dev/ttyS0\"\naddress = 5\n";
        let e = lab(&[pump("P1", "/dev/ttyS0", 1), heater.to_string()].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("only NE-1000 pumps can share a port"), "{e}");
    }

    #[test]
    fn pumps_are_held_to_their_model_and_safe_mode_is_checked() {
        let with = |extra: &str| lab(&format!("{}{extra}\n", pump("P1", "/dev/ttyS0", 1)));
        // no rate limit given: what an NE-1000 pushes through the default 3.26 mm syringe
        let c = with("").unwrap();
        let l = c.devices[0].pump_limits().unwrap();
        assert!((420.0..430.0).contains(&l.max_rate_ul_min), "{l:?}");
        // a 20 mL syringe: the default 1000 µL/min cap stays
        let c = with("diameter_mm = 19.13").unwrap();
        assert_eq!(c.devices[0].pump_limits().unwrap().max_rate_ul_min, 1000.0);
        let e = with("limits = { max_rate_ul_min = 1000.0 }")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.max_rate_ul_min = 1000 is more than an ne-1000 can pump through a 3.26 mm syringe"),
            "{e}"
        );
        let e = with("model = \"ne-9\"").unwrap_err().to_string();
        assert!(
            e.contains("unknown pump model \"ne-9\"; known models: ne-1000, ne-1600"),
            "{e}"
        );
        let e = with("diameter_mm = 60.0").unwrap_err().to_string();
        assert!(
            e.contains("diameter_mm = 60 does not fit an ne-1000"),
            "{e}"
        );
        with("model = \"ne-1600\"\nsafe_mode_s = 10").unwrap();
        let e = with("safe_mode_s = 0").unwrap_err().to_string();
        assert!(e.contains("safe_mode_s must be 1 to 255"), "{e}");
        let heater = "[[devices]]\nsymbol = \"H\"\nkind = \"temperature_controller\"\ndriver = \"modbus-pid\"\nport = \"/dev/ttyS1\"\nsafe_mode_s = 5\n";
        let e = lab(heater).unwrap_err().to_string();
        assert!(
            e.contains("H: `model` and `safe_mode_s` apply only to driver \"ne1000\""),
            "{e}"
        );
    }

    #[test]
    fn real_pumps_beside_virtual_instruments_are_refused_with_both_named() {
        let uv = "[[devices]]\nsymbol = \"UV\"\nkind = \"absorption_spectrometer\"\ndriver = \"virtual\"\n";
        let e = lab(&[pump("P1", "/dev/ttyS0", 1), uv.to_string()].concat())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("virtual instruments (UV) cannot be mixed with devices on real ports (P1)")
                && e.contains("no flow"),
            "{e}"
        );
        // all virtual, or all real: fine
        lab(&[pump("P1", "virtual", 1), uv.to_string()].concat()).unwrap();
        lab(&pump("P1", "/dev/ttyS0", 1)).unwrap();
    }
}

#[cfg(test)]
mod serial_example {
    #[test]
    fn serial_example_parses() {
        let c = super::LabConfig::from_toml_str(include_str!(
            "../../../examples/agent-lab-serial.toml"
        ))
        .unwrap();
        assert_eq!(
            c.devices
                .iter()
                .filter(|d| d.port.as_deref().is_some_and(|p| p.starts_with("/dev/")))
                .count(),
            4
        );
    }
}
