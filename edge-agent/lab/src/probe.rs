//! One synthesis + measurement on the virtual lab (the `virtual-lab probe` command's engine):
//! the paper's recipe at (T, C), inline UV-Vis, sampler, arm, optional laser step, CD scan.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{LabConfig, PAPER_VIRTUAL_TOML};
use crate::lab::Lab;
use crate::record::Measurement;

/// Total flow of the paper recipe, µL/min (P1 + P2 + P3 constant).
pub const TOTAL_FLOW_UL_MIN: f64 = 90.0;
/// Cs-oleate stock in P3, mmol/ml.
pub const CS_STOCK: f64 = 1.5;

/// Pump rates (P1, P2, P3) for concentration `c`: P3 sets C, P1 : P2 = 1 : 2.
pub fn paper_rates(c: f64) -> (f64, f64, f64) {
    let r3 = TOTAL_FLOW_UL_MIN * c / CS_STOCK;
    let rest = (TOTAL_FLOW_UL_MIN - r3).max(0.0);
    (rest / 3.0, 2.0 * rest / 3.0, r3)
}

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub t_c: f64,
    pub c: f64,
    pub seed: u64,
    /// Landscape: `paper` or a file path.
    pub landscape: String,
    /// (wavelength nm, duration s) of an irradiation before the final CD scan.
    pub laser: Option<(f64, f64)>,
    pub speed: f64,
}

/// A spectrum in the output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XY {
    pub wavelength_nm: Vec<f64>,
    pub values: Vec<f64>,
    /// Absorbance on the same axis (the CD instrument's HT channel), when recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absorbance: Vec<f64>,
}

/// The probe's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    pub t_set_c: f64,
    pub c_set_mmol_per_ml: f64,
    pub seed: u64,
    /// Reactor temperature when stable.
    pub t_measured_c: Option<f64>,
    /// First exciton peak from the absorption spectrum, nm.
    pub exciton_nm: f64,
    /// Absorbance at the first exciton peak.
    pub absorbance: f64,
    /// Signed CD at the first exciton peak, mdeg (after the laser step when one was asked for).
    pub cd_mdeg: f64,
    /// CD before the laser step, when there was one.
    pub cd_mdeg_before_laser: Option<f64>,
    /// Change of the cuvette's absorbance at the exciton across the laser step, % (CD HT channel).
    pub absorbance_change_pct: Option<f64>,
    /// Absorbance of the cuvette at the exciton before/after the laser (from the CD instrument's HT channel model).
    pub laser: Option<String>,
    pub lab_time_s: f64,
    pub absorption: XY,
    pub cd: XY,
    pub cd_before_laser: Option<XY>,
}

fn smooth(v: &[f64], half: usize) -> Vec<f64> {
    (0..v.len())
        .map(|i| {
            let a = i.saturating_sub(half);
            let b = (i + half + 1).min(v.len());
            v[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

/// First (longest-wavelength) exciton peak of an absorbance spectrum in 400–520 nm: (nm, absorbance).
pub fn find_exciton(wl: &[f64], a: &[f64]) -> Option<(f64, f64)> {
    if wl.len() != a.len() || wl.len() < 3 {
        return None;
    }
    let s = smooth(a, 7);
    let at = |x: f64| -> f64 {
        let i = wl.partition_point(|w| *w < x).min(wl.len() - 1);
        s[i]
    };
    let mut best = None;
    for i in 1..wl.len() - 1 {
        if wl[i] < 400.0 || wl[i] > 520.0 {
            continue;
        }
        if s[i] >= s[i - 1] && s[i] >= s[i + 1] && s[i] > 0.02 {
            let prom = s[i] - at(wl[i] - 15.0).max(at(wl[i] + 15.0));
            if prom > 0.005 {
                best = Some((wl[i], s[i]));
            }
        }
    }
    best
}

/// Signed CD at `x`, mdeg: mean of the points within ±1 nm.
pub fn cd_at(wl: &[f64], v: &[f64], x: f64) -> f64 {
    let pts: Vec<f64> = wl
        .iter()
        .zip(v)
        .filter(|(w, _)| (**w - x).abs() <= 1.0)
        .map(|(_, y)| *y)
        .collect();
    if pts.is_empty() {
        f64::NAN
    } else {
        pts.iter().sum::<f64>() / pts.len() as f64
    }
}

/// Run one probe on a fresh virtual paper lab.
pub async fn probe(spec: &ProbeSpec) -> anyhow::Result<ProbeResult> {
    let mut cfg = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML)?;
    cfg.twin.seed = spec.seed;
    cfg.twin.speed = spec.speed;
    cfg.twin.landscape = spec.landscape.clone();
    let mut lab = Lab::build(cfg).await?;
    let r = probe_on(&lab, spec).await;
    lab.shutdown().await;
    r
}

/// Run one probe on an existing lab with the paper's devices (as one actor of its clock).
pub async fn probe_on(lab: &Lab, spec: &ProbeSpec) -> anyhow::Result<ProbeResult> {
    lab.clock.as_actor(probe_steps(lab, spec)).await
}

async fn probe_steps(lab: &Lab, spec: &ProbeSpec) -> anyhow::Result<ProbeResult> {
    let p = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let t_start = lab.clock.now_s();
    let h = lab
        .call("H.set_temperature", &p(&[("T", spec.t_c)]))
        .await?;
    let t_measured = h.result.get("T_pv").and_then(|v| v.as_f64());
    let (r1, r2, r3) = paper_rates(spec.c);
    for (sym, r) in [("P1", r1), ("P2", r2), ("P3", r3)] {
        lab.call(&format!("{sym}.set_rate"), &p(&[("rate", r)]))
            .await?;
    }
    let residence = lab.config.twin.reactor_volume_ul / TOTAL_FLOW_UL_MIN * 60.0;
    lab.clock
        .sleep(Duration::from_secs_f64(1.5 * residence))
        .await;
    let uv = lab.call("UV.acquire", &p(&[("averages", 10.0)])).await?;
    let Some((
        _,
        Measurement::AbsorptionSpectrum {
            wavelength_nm,
            absorbance,
            ..
        },
    )) = uv.measurements.into_iter().next()
    else {
        anyhow::bail!("no absorption spectrum");
    };
    lab.call("S.collect", &p(&[("volume", 400.0)])).await?;
    for sym in ["P1", "P2", "P3"] {
        lab.call(&format!("{sym}.stop"), &BTreeMap::new()).await?;
    }
    lab.call("ARM.to_cd", &p(&[("slot", 1.0)])).await?;
    let first = scan(lab).await?;
    let (exciton_nm, abs) =
        find_exciton(&wavelength_nm, &absorbance).unwrap_or((f64::NAN, f64::NAN));
    let (cd, before, laser) = match spec.laser {
        None => (first, None, None),
        Some((wl, dur)) => {
            lab.call("ARM.to_laser", &BTreeMap::new()).await?;
            lab.call("L.irradiate", &p(&[("wavelength", wl), ("duration", dur)]))
                .await?;
            lab.call("ARM.from_laser", &BTreeMap::new()).await?;
            let second = scan(lab).await?;
            (second, Some(first), Some(format!("{wl} nm for {dur} s")))
        }
    };
    Ok(ProbeResult {
        t_set_c: spec.t_c,
        c_set_mmol_per_ml: spec.c,
        seed: spec.seed,
        t_measured_c: t_measured,
        exciton_nm,
        absorbance: abs,
        cd_mdeg: cd_at(&cd.wavelength_nm, &cd.values, exciton_nm),
        absorbance_change_pct: before.as_ref().map(|b| {
            let a0 = cd_at(&b.wavelength_nm, &b.absorbance, exciton_nm);
            let a1 = cd_at(&cd.wavelength_nm, &cd.absorbance, exciton_nm);
            (a1 / a0 - 1.0) * 100.0
        }),
        cd_mdeg_before_laser: before
            .as_ref()
            .map(|b| cd_at(&b.wavelength_nm, &b.values, exciton_nm)),
        laser,
        lab_time_s: lab.clock.now_s() - t_start,
        absorption: XY {
            wavelength_nm,
            values: absorbance,
            absorbance: Vec::new(),
        },
        cd,
        cd_before_laser: before,
    })
}

async fn scan(lab: &Lab) -> anyhow::Result<XY> {
    let params: BTreeMap<String, f64> = [("from", 350.0), ("to", 600.0), ("step", 0.5)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let out = lab.call("CD.scan", &params).await?;
    match out.measurements.into_iter().next() {
        Some((
            _,
            Measurement::CdSpectrum {
                wavelength_nm,
                cd_mdeg,
                absorbance,
                ..
            },
        )) => Ok(XY {
            wavelength_nm,
            values: cd_mdeg,
            absorbance,
        }),
        _ => anyhow::bail!("no CD spectrum"),
    }
}
