//! What differs between models of New Era's NE-1000 family, as data: the syringe diameters a
//! model takes, the plunger speeds its drive can do (so the rates it can pump through a given
//! syringe), the volume units it defaults to for a diameter, and how it names itself in reply to
//! `VER`. Pure: no I/O. The driver checks rates against the model before writing, the lab
//! configuration is validated against it at start, and the virtual pump emulates it.
//!
//! Provenance: the rate ranges are the data sheets' "maximum rate with a 60 mL syringe" and
//! "minimum rate with a 1 mL syringe" (B-D syringes: 26.59 mm and 4.699 mm inside diameter),
//! turned into plunger speeds; the volume-unit rule (µL at or below 14.00 mm, mL above) is the
//! manuals' (NE-500/NE-1000 family, firmware 3.9). They were written from the published manuals,
//! not measured on a pump: check a new model's figures against its own manual.

use crate::ne1000::RateUnit;

/// Inside diameters of the B-D syringes the data sheets quote their rate range with, mm.
const BD_60_ML_MM: f64 = 26.59;
const BD_1_ML_MM: f64 = 4.699;

/// One pump model.
#[derive(Debug, PartialEq)]
pub struct PumpModel {
    /// Name in the lab configuration (`model = "ne-1000"`).
    pub name: &'static str,
    /// What it is.
    pub title: &'static str,
    /// How the firmware's `VER` reply begins (e.g. `NE1000V3.928`).
    pub version_prefix: &'static str,
    pub min_diameter_mm: f64,
    pub max_diameter_mm: f64,
    /// Highest plunger speed, mm/min.
    pub max_speed_mm_min: f64,
    /// Lowest plunger speed, mm/min.
    pub min_speed_mm_min: f64,
    /// Above this syringe diameter the pump's volume units default to mL (else µL).
    pub ml_above_diameter_mm: f64,
    /// Where the figures come from.
    pub provenance: &'static str,
}

/// Cross-section of a syringe, mm² (1 mm³ = 1 µL).
pub fn area_mm2(diameter_mm: f64) -> f64 {
    std::f64::consts::PI / 4.0 * diameter_mm * diameter_mm
}

impl PumpModel {
    /// Highest rate through a syringe of this diameter, µL/min.
    pub fn max_rate_ul_min(&self, diameter_mm: f64) -> f64 {
        area_mm2(diameter_mm) * self.max_speed_mm_min
    }

    /// Lowest non-zero rate through a syringe of this diameter, µL/min.
    pub fn min_rate_ul_min(&self, diameter_mm: f64) -> f64 {
        area_mm2(diameter_mm) * self.min_speed_mm_min
    }

    /// The pump's own volume units for this diameter: `true` for mL.
    pub fn volume_in_ml(&self, diameter_mm: f64) -> bool {
        diameter_mm > self.ml_above_diameter_mm
    }

    /// The units to send `ul_min` in: the most exact one, except that a running pump cannot change
    /// rate units (the manuals: "rate units cannot be changed while pumping"), so while it runs
    /// the current units are kept if they can write the rate at all.
    pub fn rate_unit(
        &self,
        ul_min: f64,
        current: Option<RateUnit>,
        running: bool,
    ) -> Option<RateUnit> {
        match (running, current) {
            (true, Some(u)) => u.written(ul_min).map(|_| u),
            _ => RateUnit::best_for(ul_min),
        }
    }

    /// Does a `VER` reply name this model?
    pub fn matches_version(&self, version: &str) -> bool {
        version
            .trim()
            .to_ascii_uppercase()
            .starts_with(self.version_prefix)
    }
}

/// Plunger speed that moves `ml_h` mL/h through a syringe of `diameter_mm`, mm/min.
const fn speed(ml_h: f64, diameter_mm: f64) -> f64 {
    // const-evaluable: π/4·d² written out
    ml_h * 1000.0 / 60.0 / (std::f64::consts::FRAC_PI_4 * diameter_mm * diameter_mm)
}

/// NE-1000 (and the NE-1010, the same drive with more force): one syringe up to 60 mL, 0.73 µL/h
/// with a 1 mL syringe to 1,699 mL/h with a 60 mL syringe.
pub static NE_1000: PumpModel = PumpModel {
    name: "ne-1000",
    title: "New Era NE-1000 / NE-1010 single-syringe pump",
    version_prefix: "NE1000",
    min_diameter_mm: 0.1,
    max_diameter_mm: 50.0,
    max_speed_mm_min: speed(1699.0, BD_60_ML_MM),
    min_speed_mm_min: speed(0.73e-3, BD_1_ML_MM),
    ml_above_diameter_mm: 14.0,
    provenance: "NE-1000 data sheet and user manual (firmware 3.9); not measured on a unit",
};

/// NE-1600: six syringes up to 60 mL on one pusher, 0.452 µL/h with 1 mL syringes to 1,477 mL/h
/// with 60 mL syringes (per syringe).
pub static NE_1600: PumpModel = PumpModel {
    name: "ne-1600",
    title: "New Era NE-1600 six-syringe pump",
    version_prefix: "NE1600",
    min_diameter_mm: 0.1,
    max_diameter_mm: 50.0,
    max_speed_mm_min: speed(1477.0, BD_60_ML_MM),
    min_speed_mm_min: speed(0.452e-3, BD_1_ML_MM),
    ml_above_diameter_mm: 14.0,
    provenance: "NE-1600 data sheet and user manual (firmware 3.9); not measured on a unit",
};

/// Every built-in model.
pub static MODELS: [&PumpModel; 2] = [&NE_1000, &NE_1600];

/// A lab named a model that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pump model {name:?}; known models: {}", known().join(", "))]
pub struct UnknownModel {
    pub name: String,
}

fn known() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.name).collect()
}

/// The model called `name` (case-insensitive).
pub fn by_name(name: &str) -> Result<&'static PumpModel, UnknownModel> {
    MODELS
        .iter()
        .copied()
        .find(|m| m.name.eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| UnknownModel {
            name: name.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_ranges_reproduce_the_data_sheet_figures() {
        // back to the figures they came from, in mL/h and µL/h
        let max_60 = NE_1000.max_rate_ul_min(BD_60_ML_MM) * 60.0 / 1000.0;
        let min_1 = NE_1000.min_rate_ul_min(BD_1_ML_MM) * 60.0;
        assert!((max_60 - 1699.0).abs() < 1e-6, "{max_60}");
        assert!((min_1 - 0.73).abs() < 1e-9, "{min_1}");
        // the paper's 0.5 mL glass syringe (3.26 mm) tops out near 425 µL/min on an NE-1000
        let m = NE_1000.max_rate_ul_min(3.26);
        assert!((420.0..430.0).contains(&m), "{m}");
        assert!(NE_1600.max_rate_ul_min(3.26) < m);
    }

    #[test]
    fn volume_units_follow_the_diameter() {
        assert!(!NE_1000.volume_in_ml(14.0));
        assert!(NE_1000.volume_in_ml(14.01));
    }

    #[test]
    fn a_running_pump_keeps_its_rate_units() {
        // stopped: the most exact units
        assert_eq!(
            NE_1000.rate_unit(1.0 / 3.0, Some(RateUnit::UlPerMin), false),
            Some(RateUnit::UlPerHour)
        );
        // running in µL/min: stay in µL/min (0.333 is close enough), never switch
        assert_eq!(
            NE_1000.rate_unit(1.0 / 3.0, Some(RateUnit::UlPerMin), true),
            Some(RateUnit::UlPerMin)
        );
        // running in µL/h, asked for more than 9999 µL/h: cannot be written without switching
        assert_eq!(
            NE_1000.rate_unit(200.0, Some(RateUnit::UlPerHour), true),
            None
        );
    }

    #[test]
    fn models_are_found_by_name_and_version() {
        assert_eq!(by_name("NE-1000").unwrap().name, "ne-1000");
        let e = by_name("ne-4000").unwrap_err().to_string();
        assert!(e.contains("ne-1000, ne-1600"), "{e}");
        assert!(NE_1000.matches_version("NE1000V3.928"));
        assert!(!NE_1000.matches_version("NE1600V3.919"));
    }
}
