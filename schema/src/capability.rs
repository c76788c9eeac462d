//! Capability descriptors: what a lab declares about its devices (symbols, kinds, methods, parameter
//! units, ranges and resolutions). The instruction-language checker resolves symbols against them and
//! the edge agent re-checks compiled programs against them. Loadable from TOML and JSON.
//!
//! A JSON-RPC method is addressed as `"<SYMBOL>.<method>"` (e.g. `H.set_temperature`, `P1.set_rate`).
//! Parameter values in compiled programs are always expressed in the unit declared here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// Everything one lab declares: its name and its devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabDescriptor {
    /// Human-readable lab name.
    pub name: String,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The devices, each addressed by its symbol.
    #[serde(default)]
    pub devices: Vec<DeviceDescriptor>,
}

/// What kind of module a device is. Serialized in lowercase (`"pump"`, `"heater"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Syringe or other pump; a stream source.
    Pump,
    /// Heater / reactor temperature controller.
    Heater,
    /// Absorption (UV-Vis) or emission spectrometer.
    Spectrometer,
    /// Circular-dichroism spectrometer.
    Cd,
    /// Sample collector (e.g. the rotation sampler).
    Sampler,
    /// Robot arm.
    Arm,
    /// Laser (e.g. the femtosecond laser used for chirality inversion).
    Laser,
    /// Valve / stream switch.
    Valve,
    /// Mixer / mixing junction.
    Mixer,
    /// Anything else.
    Other,
}

impl DeviceKind {
    /// What a chemist calls it ("CD spectrometer", "robot arm", ...).
    pub fn noun(self) -> &'static str {
        match self {
            DeviceKind::Cd => "CD spectrometer",
            DeviceKind::Arm => "robot arm",
            DeviceKind::Other => "device",
            k => k.as_str(),
        }
    }

    /// Lowercase name, as in serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Pump => "pump",
            DeviceKind::Heater => "heater",
            DeviceKind::Spectrometer => "spectrometer",
            DeviceKind::Cd => "cd",
            DeviceKind::Sampler => "sampler",
            DeviceKind::Arm => "arm",
            DeviceKind::Laser => "laser",
            DeviceKind::Valve => "valve",
            DeviceKind::Mixer => "mixer",
            DeviceKind::Other => "other",
        }
    }
}

/// One device module of a lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDescriptor {
    /// Instruction symbol, e.g. `P1`, `H`, `UV`. Letters, digits and `_`, starting with a letter.
    pub symbol: String,
    /// Module kind.
    pub kind: DeviceKind,
    /// Free-text description (model, notes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Does the device produce/carry a liquid stream (may be joined with `+`)?
    #[serde(default)]
    pub stream: bool,
    /// Can a stream flow through it (may be the target of `->`)?
    #[serde(default)]
    pub flow: bool,
    /// Method used when a formula names the symbol without `:method`. Defaults to the first method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_method: Option<String>,
    /// The operations the device offers.
    #[serde(default)]
    pub methods: Vec<MethodDescriptor>,
}

/// One operation of a device, called as `"<SYMBOL>.<name>"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodDescriptor {
    /// Method name, e.g. `set_temperature`.
    pub name: String,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The method's parameter vector.
    #[serde(default)]
    pub params: Vec<ParamDescriptor>,
    /// Nominal duration of the call in milliseconds (settling, acquisition, transfer time ...).
    #[serde(default)]
    pub duration_ms: u64,
    /// Name of a time-valued parameter whose value is added to `duration_ms`
    /// (e.g. the irradiation time of `L.irradiate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_param: Option<String>,
    /// A set-point method configures the device rather than acting on a stream: in a flow path
    /// `A -> H[...]` it runs *before* the stream `A` is started (the path is made ready first).
    #[serde(default)]
    pub setpoint: bool,
    /// Measurements the call yields (e.g. `absorption_spectrum`, `cd_spectrum`).
    #[serde(default)]
    pub yields: Vec<String>,
}

/// One parameter of a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamDescriptor {
    /// Parameter name as written in formulas, e.g. `T`, `rate`.
    pub name: String,
    /// Unit the device expects; compiled values are expressed in it (e.g. `°C`, `uL/min`).
    /// Empty for dimensionless parameters.
    #[serde(default)]
    pub unit: String,
    /// Smallest allowed value (in `unit`).
    pub min: f64,
    /// Largest allowed value (in `unit`).
    pub max: f64,
    /// Step of the device's setting grid (in `unit`), anchored at `min`. `None`: continuous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<f64>,
    /// Must a formula give it (when no default)?
    #[serde(default)]
    pub required: bool,
    /// Value used when the formula omits the parameter (in `unit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<f64>,
}

/// Why a descriptor is not acceptable.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DescriptorError {
    /// TOML syntax or shape error.
    #[error("lab descriptor is not valid TOML: {0}")]
    Toml(String),
    /// JSON syntax or shape error.
    #[error("lab descriptor is not valid JSON: {0}")]
    Json(String),
    /// The descriptor parsed but is inconsistent.
    #[error("lab descriptor is inconsistent: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl LabDescriptor {
    /// Parse a descriptor from TOML and validate it.
    pub fn from_toml_str(s: &str) -> Result<Self, DescriptorError> {
        let lab: LabDescriptor =
            toml::from_str(s).map_err(|e| DescriptorError::Toml(e.to_string()))?;
        lab.validate()?;
        Ok(lab)
    }

    /// Parse a descriptor from JSON and validate it.
    pub fn from_json_str(s: &str) -> Result<Self, DescriptorError> {
        let lab: LabDescriptor =
            serde_json::from_str(s).map_err(|e| DescriptorError::Json(e.to_string()))?;
        lab.validate()?;
        Ok(lab)
    }

    /// Find a device by symbol.
    pub fn device(&self, symbol: &str) -> Option<&DeviceDescriptor> {
        self.devices.iter().find(|d| d.symbol == symbol)
    }

    /// Find a method by its JSON-RPC name `"<SYMBOL>.<method>"`.
    pub fn method(&self, rpc_method: &str) -> Option<(&DeviceDescriptor, &MethodDescriptor)> {
        let (sym, m) = rpc_method.split_once('.')?;
        let dev = self.device(sym)?;
        Some((dev, dev.method(m)?))
    }

    /// Check internal consistency: unique symbols, unique method and parameter names, valid symbols,
    /// known units, `min <= max`, positive resolutions, defaults inside the range, an existing default
    /// method and duration parameter. Returns every problem found, not just the first.
    pub fn validate(&self) -> Result<(), DescriptorError> {
        let mut problems = Vec::new();
        let mut symbols = BTreeSet::new();
        if self.devices.is_empty() {
            problems.push("the lab declares no devices".to_string());
        }
        for d in &self.devices {
            if !is_valid_symbol(&d.symbol) {
                problems.push(format!(
                    "device symbol `{}` must start with a letter and contain only letters, digits and `_`",
                    d.symbol
                ));
            }
            if !symbols.insert(d.symbol.as_str()) {
                problems.push(format!("device symbol `{}` is declared twice", d.symbol));
            }
            if d.methods.is_empty() {
                problems.push(format!("device `{}` declares no methods", d.symbol));
            }
            if let Some(dm) = &d.default_method {
                if d.method(dm).is_none() {
                    problems.push(format!(
                        "device `{}`: default_method `{dm}` is not one of its methods",
                        d.symbol
                    ));
                }
            }
            let mut names = BTreeSet::new();
            for m in &d.methods {
                let at = format!("{}.{}", d.symbol, m.name);
                if !is_valid_symbol(&m.name) {
                    problems.push(format!("method name `{at}` is not a valid identifier"));
                }
                if !names.insert(m.name.as_str()) {
                    problems.push(format!("method `{at}` is declared twice"));
                }
                let mut pnames = BTreeSet::new();
                for p in &m.params {
                    let pat = format!("{at}({})", p.name);
                    if !is_valid_symbol(&p.name) {
                        problems.push(format!("parameter name `{pat}` is not a valid identifier"));
                    }
                    if !pnames.insert(p.name.as_str()) {
                        problems.push(format!("parameter `{pat}` is declared twice"));
                    }
                    if crate::units::Unit::parse(&p.unit).is_none() {
                        problems.push(format!("parameter `{pat}`: unknown unit `{}`", p.unit));
                    }
                    if !(p.min.is_finite() && p.max.is_finite()) || p.min > p.max {
                        problems.push(format!(
                            "parameter `{pat}`: range {}..{} is empty or not finite",
                            p.min, p.max
                        ));
                    }
                    if let Some(r) = p.resolution {
                        if !(r.is_finite() && r > 0.0) {
                            problems.push(format!(
                                "parameter `{pat}`: resolution must be positive, got {r}"
                            ));
                        }
                    }
                    if let Some(def) = p.default {
                        if !(def >= p.min && def <= p.max) {
                            problems.push(format!(
                                "parameter `{pat}`: default {def} lies outside {}..{}",
                                p.min, p.max
                            ));
                        }
                    }
                }
                if let Some(dp) = &m.duration_param {
                    match m.params.iter().find(|p| &p.name == dp) {
                        None => problems.push(format!(
                            "method `{at}`: duration_param `{dp}` is not one of its parameters"
                        )),
                        Some(p) => {
                            let is_time = crate::units::Unit::parse(&p.unit)
                                .map(|u| u.dim == crate::units::Dim::TIME)
                                .unwrap_or(false);
                            if !is_time {
                                problems.push(format!(
                                    "method `{at}`: duration_param `{dp}` must have a time unit (s, min, ms)"
                                ));
                            }
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DescriptorError::Invalid(problems))
        }
    }
}

impl DeviceDescriptor {
    /// Find a method by name.
    pub fn method(&self, name: &str) -> Option<&MethodDescriptor> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The method used when a formula names the device without `:method`.
    pub fn default_method(&self) -> Option<&MethodDescriptor> {
        match &self.default_method {
            Some(n) => self.method(n),
            None => self.methods.first(),
        }
    }
}

impl MethodDescriptor {
    /// Find a parameter by name.
    pub fn param(&self, name: &str) -> Option<&ParamDescriptor> {
        self.params.iter().find(|p| p.name == name)
    }
}

fn is_valid_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAPER_LAB: &str = include_str!("../../examples/paper-lab.toml");

    #[test]
    fn paper_lab_loads_and_validates() {
        let lab = LabDescriptor::from_toml_str(PAPER_LAB).unwrap();
        let symbols: Vec<_> = lab.devices.iter().map(|d| d.symbol.as_str()).collect();
        assert_eq!(
            symbols,
            ["P1", "P2", "P3", "H", "UV", "S", "ARM", "CD", "L"]
        );
        let (_, m) = lab.method("H.set_temperature").unwrap();
        let t = m.param("T").unwrap();
        assert_eq!((t.min, t.max, t.unit.as_str()), (20.0, 200.0, "°C"));
        assert!(lab.method("P1.set_rate").is_some());
        assert!(lab.method("UV.acquire").is_some());
        assert!(lab.method("CD.scan").is_some());
        assert!(lab.method("L.irradiate").is_some());
        assert!(lab.device("P1").unwrap().stream);
        assert!(lab.device("H").unwrap().flow);
        assert!(!lab.device("CD").unwrap().flow);
    }

    #[test]
    fn json_round_trip() {
        let lab = LabDescriptor::from_toml_str(PAPER_LAB).unwrap();
        let json = serde_json::to_string(&lab).unwrap();
        assert!(json.contains("\"kind\":\"pump\""));
        let back = LabDescriptor::from_json_str(&json).unwrap();
        assert_eq!(back, lab);
    }

    #[test]
    fn validate_reports_every_problem() {
        let src = r#"
            name = "bad"
            [[devices]]
            symbol = "P1"
            kind = "pump"
            default_method = "nope"
              [[devices.methods]]
              name = "set_rate"
              duration_param = "rate"
                [[devices.methods.params]]
                name = "rate"
                unit = "uL/min"
                min = 10.0
                max = 1.0
                resolution = 0.0
                default = 50.0
                [[devices.methods.params]]
                name = "rate"
                unit = "furlongs"
                min = 0.0
                max = 1.0
            [[devices]]
            symbol = "P1"
            kind = "other"
        "#;
        let err = LabDescriptor::from_toml_str(src).unwrap_err();
        let DescriptorError::Invalid(problems) = err else {
            panic!("expected Invalid, got {err:?}")
        };
        let all = problems.join("\n");
        for needle in [
            "declared twice",
            "default_method `nope`",
            "range 10..1",
            "resolution must be positive",
            "default 50",
            "unknown unit `furlongs`",
            "must have a time unit",
            "declares no methods",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_kind_is_a_toml_error() {
        let src = "name = \"x\"\n[[devices]]\nsymbol = \"Z\"\nkind = \"teleporter\"\n";
        assert!(matches!(
            LabDescriptor::from_toml_str(src),
            Err(DescriptorError::Toml(_))
        ));
    }
}
