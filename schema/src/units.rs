//! Physical units of the instruction language: parsing unit text (`uL/min`, `°C`, `mmol/ml`),
//! dimensions, and the legal conversions between units of the same dimension (K↔°C, mL↔uL, ...).
//!
//! Quantities are carried internally in SI base units (m, kg, s, mol, K); a unit is a scale and an
//! offset from that. Temperatures in °C are absolute (offset 273.15); write differences in K.

use std::fmt;

/// Dimension exponents over (m, kg, s, mol, K).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dim(pub [i8; 5]);

impl Dim {
    /// No dimension (pure numbers, %).
    pub const NONE: Dim = Dim([0, 0, 0, 0, 0]);
    /// Length (m).
    pub const LENGTH: Dim = Dim([1, 0, 0, 0, 0]);
    /// Mass (kg).
    pub const MASS: Dim = Dim([0, 1, 0, 0, 0]);
    /// Time (s).
    pub const TIME: Dim = Dim([0, 0, 1, 0, 0]);
    /// Amount of substance (mol).
    pub const AMOUNT: Dim = Dim([0, 0, 0, 1, 0]);
    /// Temperature (K).
    pub const TEMPERATURE: Dim = Dim([0, 0, 0, 0, 1]);
    /// Volume (m³).
    pub const VOLUME: Dim = Dim([3, 0, 0, 0, 0]);
    /// Volumetric flow (m³/s).
    pub const FLOW: Dim = Dim([3, 0, -1, 0, 0]);
    /// Concentration (mol/m³).
    pub const CONCENTRATION: Dim = Dim([-3, 0, 0, 1, 0]);
    /// Power (W = kg m² s⁻³).
    pub const POWER: Dim = Dim([2, 1, -3, 0, 0]);
    /// Frequency (1/s).
    pub const FREQUENCY: Dim = Dim([0, 0, -1, 0, 0]);

    /// Product of dimensions.
    pub fn times(self, o: Dim) -> Dim {
        let mut r = [0i8; 5];
        for (i, x) in r.iter_mut().enumerate() {
            *x = self.0[i].saturating_add(o.0[i]);
        }
        Dim(r)
    }

    /// Quotient of dimensions.
    pub fn per(self, o: Dim) -> Dim {
        let mut r = [0i8; 5];
        for (i, x) in r.iter_mut().enumerate() {
            *x = self.0[i].saturating_sub(o.0[i]);
        }
        Dim(r)
    }

    /// A word a chemist recognises ("flow rate", "temperature", ...), or a base-unit formula.
    pub fn describe(self) -> String {
        let named = [
            (Dim::NONE, "a plain number"),
            (Dim::LENGTH, "a length"),
            (Dim::MASS, "a mass"),
            (Dim::TIME, "a time"),
            (Dim::AMOUNT, "an amount of substance"),
            (Dim::TEMPERATURE, "a temperature"),
            (Dim::VOLUME, "a volume"),
            (Dim::FLOW, "a flow rate"),
            (Dim::CONCENTRATION, "a concentration"),
            (Dim::POWER, "a power"),
            (Dim::FREQUENCY, "a frequency"),
        ];
        if let Some((_, n)) = named.iter().find(|(d, _)| *d == self) {
            return (*n).to_string();
        }
        let names = ["m", "kg", "s", "mol", "K"];
        let parts: Vec<String> = names
            .iter()
            .zip(self.0.iter())
            .filter(|(_, e)| **e != 0)
            .map(|(n, e)| {
                if *e == 1 {
                    n.to_string()
                } else {
                    format!("{n}^{e}")
                }
            })
            .collect();
        format!("a quantity in {}", parts.join("·"))
    }

    /// Units of this dimension a chemist may write, for hints.
    pub fn unit_examples(self) -> &'static str {
        [
            (Dim::LENGTH, "nm, um, mm"),
            (Dim::TIME, "ms, s, min, h"),
            (Dim::TEMPERATURE, "°C or K"),
            (Dim::VOLUME, "uL, mL"),
            (Dim::FLOW, "uL/min, mL/min, mL/h"),
            (Dim::CONCENTRATION, "mmol/ml, M, mM"),
            (Dim::POWER, "mW, W"),
            (Dim::FREQUENCY, "Hz, kHz"),
            (Dim::AMOUNT, "umol, mmol"),
            (Dim::MASS, "mg, g"),
            (Dim::NONE, "a plain number or %"),
        ]
        .iter()
        .find(|(d, _)| *d == self)
        .map(|(_, u)| *u)
        .unwrap_or("SI units")
    }

    /// A typical unit to suggest for this dimension.
    pub fn example_unit(self) -> Option<&'static str> {
        [
            (Dim::LENGTH, "nm"),
            (Dim::TIME, "s"),
            (Dim::TEMPERATURE, "°C"),
            (Dim::VOLUME, "uL"),
            (Dim::FLOW, "uL/min"),
            (Dim::CONCENTRATION, "mmol/ml"),
            (Dim::POWER, "mW"),
            (Dim::FREQUENCY, "Hz"),
            (Dim::AMOUNT, "mmol"),
            (Dim::MASS, "mg"),
        ]
        .iter()
        .find(|(d, _)| *d == self)
        .map(|(_, u)| *u)
    }
}

/// A unit: value_in_SI = value * scale + offset.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Dimension.
    pub dim: Dim,
    /// Multiplier to SI base units.
    pub scale: f64,
    /// Additive offset to SI (only °C has one).
    pub offset: f64,
}

/// (symbol, dim, scale, offset) of every unit atom the language knows.
const ATOMS: &[(&str, Dim, f64, f64)] = &[
    ("ms", Dim::TIME, 1e-3, 0.0),
    ("s", Dim::TIME, 1.0, 0.0),
    ("min", Dim::TIME, 60.0, 0.0),
    ("h", Dim::TIME, 3600.0, 0.0),
    ("L", Dim::VOLUME, 1e-3, 0.0),
    ("l", Dim::VOLUME, 1e-3, 0.0),
    ("mL", Dim::VOLUME, 1e-6, 0.0),
    ("ml", Dim::VOLUME, 1e-6, 0.0),
    ("uL", Dim::VOLUME, 1e-9, 0.0),
    ("ul", Dim::VOLUME, 1e-9, 0.0),
    ("µL", Dim::VOLUME, 1e-9, 0.0),
    ("μL", Dim::VOLUME, 1e-9, 0.0),
    ("nL", Dim::VOLUME, 1e-12, 0.0),
    ("m", Dim::LENGTH, 1.0, 0.0),
    ("cm", Dim::LENGTH, 1e-2, 0.0),
    ("mm", Dim::LENGTH, 1e-3, 0.0),
    ("um", Dim::LENGTH, 1e-6, 0.0),
    ("µm", Dim::LENGTH, 1e-6, 0.0),
    ("nm", Dim::LENGTH, 1e-9, 0.0),
    ("mol", Dim::AMOUNT, 1.0, 0.0),
    ("mmol", Dim::AMOUNT, 1e-3, 0.0),
    ("umol", Dim::AMOUNT, 1e-6, 0.0),
    ("µmol", Dim::AMOUNT, 1e-6, 0.0),
    ("M", Dim::CONCENTRATION, 1e3, 0.0),
    ("mM", Dim::CONCENTRATION, 1.0, 0.0),
    ("kg", Dim::MASS, 1.0, 0.0),
    ("g", Dim::MASS, 1e-3, 0.0),
    ("mg", Dim::MASS, 1e-6, 0.0),
    ("K", Dim::TEMPERATURE, 1.0, 0.0),
    ("°C", Dim::TEMPERATURE, 1.0, 273.15),
    ("degC", Dim::TEMPERATURE, 1.0, 273.15),
    ("W", Dim::POWER, 1.0, 0.0),
    ("mW", Dim::POWER, 1e-3, 0.0),
    ("uW", Dim::POWER, 1e-6, 0.0),
    ("µW", Dim::POWER, 1e-6, 0.0),
    ("Hz", Dim::FREQUENCY, 1.0, 0.0),
    ("kHz", Dim::FREQUENCY, 1e3, 0.0),
    ("%", Dim::NONE, 1e-2, 0.0),
];

impl Unit {
    /// The unit of plain numbers.
    pub fn none() -> Unit {
        Unit {
            dim: Dim::NONE,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// Parse unit text: an atom, or atoms joined by `/` (`uL/min`, `mmol/ml`, `mmol/mL`).
    /// The empty string is the dimensionless unit. Offset units (°C) cannot be combined.
    pub fn parse(text: &str) -> Option<Unit> {
        let text = text.trim();
        if text.is_empty() {
            return Some(Unit::none());
        }
        let mut parts = text.split('/');
        let first = atom(parts.next()?)?;
        let mut unit = first;
        let mut compound = false;
        for p in parts {
            let a = atom(p)?;
            if a.offset != 0.0 {
                return None;
            }
            compound = true;
            unit = Unit {
                dim: unit.dim.per(a.dim),
                scale: unit.scale / a.scale,
                offset: 0.0,
            };
        }
        if compound && first_offset(text) {
            return None;
        }
        Some(unit)
    }

    /// Convert a value in this unit to SI.
    pub fn to_si(&self, v: f64) -> f64 {
        v * self.scale + self.offset
    }

    /// Convert an SI value to this unit.
    pub fn from_si(&self, si: f64) -> f64 {
        (si - self.offset) / self.scale
    }

    /// Every unit atom the language knows (for "did you mean").
    pub fn known_atoms() -> impl Iterator<Item = &'static str> {
        ATOMS.iter().map(|a| a.0)
    }
}

fn first_offset(text: &str) -> bool {
    text.split('/')
        .next()
        .and_then(atom)
        .map(|a| a.offset != 0.0)
        .unwrap_or(false)
}

fn atom(s: &str) -> Option<Unit> {
    ATOMS
        .iter()
        .find(|a| a.0 == s)
        .map(|&(_, dim, scale, offset)| Unit { dim, scale, offset })
}

/// A value with a dimension, held in SI base units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity {
    /// Value in SI base units.
    pub si: f64,
    /// Dimension.
    pub dim: Dim,
}

impl Quantity {
    /// A plain number.
    pub fn number(v: f64) -> Quantity {
        Quantity {
            si: v,
            dim: Dim::NONE,
        }
    }
    /// `v` expressed in `unit`.
    pub fn new(v: f64, unit: &Unit) -> Quantity {
        Quantity {
            si: unit.to_si(v),
            dim: unit.dim,
        }
    }
    /// The value in `unit`, if dimensions agree.
    pub fn in_unit(&self, unit: &Unit) -> Option<f64> {
        (self.dim == unit.dim).then(|| unit.from_si(self.si))
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn legal_conversions() {
        let c = Unit::parse("°C").unwrap();
        let k = Unit::parse("K").unwrap();
        assert!(close(Quantity::new(130.0, &c).in_unit(&k).unwrap(), 403.15));
        let ml = Unit::parse("mL").unwrap();
        let ul = Unit::parse("uL").unwrap();
        assert!(close(Quantity::new(0.5, &ml).in_unit(&ul).unwrap(), 500.0));
        let ulmin = Unit::parse("uL/min").unwrap();
        let mlh = Unit::parse("mL/h").unwrap();
        assert!(close(
            Quantity::new(60.0, &ulmin).in_unit(&mlh).unwrap(),
            3.6
        ));
        let mmolml = Unit::parse("mmol/ml").unwrap();
        let molar = Unit::parse("M").unwrap();
        assert!(close(
            Quantity::new(0.8, &mmolml).in_unit(&molar).unwrap(),
            0.8
        ));
        assert_eq!(mmolml.dim, Dim::CONCENTRATION);
        let pct = Unit::parse("%").unwrap();
        assert!(close(
            Quantity::new(50.0, &pct).in_unit(&Unit::none()).unwrap(),
            0.5
        ));
    }

    #[test]
    fn illegal_conversions_and_units() {
        let c = Unit::parse("°C").unwrap();
        let ul = Unit::parse("uL").unwrap();
        assert_eq!(Quantity::new(1.0, &c).in_unit(&ul), None);
        assert!(Unit::parse("°C/min").is_none());
        assert!(Unit::parse("min/°C").is_none());
        assert!(Unit::parse("furlong").is_none());
        assert!(Unit::parse("uL//min").is_none());
    }

    #[test]
    fn describe_dims() {
        assert_eq!(Dim::FLOW.describe(), "a flow rate");
        assert_eq!(
            Dim::TEMPERATURE.times(Dim::TIME).describe(),
            "a quantity in s·K"
        );
    }
}
