//! Pure optics of the CsPbBr3 product: the 2,048-pixel inline absorption spectrum (exciton peaks,
//! band-edge continuum, scattering, noise), the CD spectrum whose magnitude at the first exciton
//! follows the landscape, random handedness and the femtosecond-laser inversion. No I/O.

use maosic_landscape::Landscape;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// Pixels of the absorption spectrometer (USB2000+-like, 200–1100 nm).
pub const PIXELS: usize = 2048;
/// First pixel wavelength, nm.
pub const WL_MIN: f64 = 200.0;
/// Last pixel wavelength, nm.
pub const WL_MAX: f64 = 1100.0;
/// Absorbance noise sd per pixel for one scan.
pub const ABS_NOISE: f64 = 0.002;

/// A synthesised product in a cuvette (or the stream at the flow cell).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Synthesis counter (1-based) — the handedness draw it used.
    pub id: u64,
    /// Effective reaction temperature the fluid saw, °C.
    pub t_c: f64,
    /// Cs+ concentration, mmol/ml.
    pub c: f64,
    /// +1 or −1.
    pub handedness: f64,
    /// Multiplier on |CD| (laser treatment).
    pub cd_scale: f64,
    /// Multiplier on absorbance (laser treatment).
    pub abs_scale: f64,
    /// Accumulated 800 nm irradiation not yet turned into an inversion, s.
    pub dose_800_s: f64,
}

impl Sample {
    /// A fresh product with the handedness drawn from `rng` (50/50).
    pub fn synthesise<R: Rng + ?Sized>(id: u64, t_c: f64, c: f64, rng: &mut R) -> Self {
        let handedness = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        Self {
            id,
            t_c,
            c,
            handedness,
            cd_scale: 1.0,
            abs_scale: 1.0,
            dose_800_s: 0.0,
        }
    }
}

/// First exciton peak position, nm: 450 nm at 130 °C, red-shifting with temperature (larger crystals).
pub fn exciton_nm(t_c: f64) -> f64 {
    (450.0 + 0.35 * (t_c - 130.0)).clamp(420.0, 500.0)
}

/// Wavelength of pixel `i`.
pub fn pixel_nm(i: usize) -> f64 {
    WL_MIN + (WL_MAX - WL_MIN) * i as f64 / (PIXELS - 1) as f64
}

fn gauss(x: f64, c: f64, s: f64) -> f64 {
    (-(x - c).powi(2) / (2.0 * s * s)).exp()
}

/// Noise-free absorbance of `s` at `wl` (1 mm path).
pub fn absorbance(s: &Sample, wl: f64) -> f64 {
    if s.c <= 0.0 {
        return 0.0;
    }
    let x1 = exciton_nm(s.t_c);
    let x2 = x1 - 28.0;
    let c = s.c;
    let peak1 = 0.30 * c * gauss(wl, x1, 7.0);
    let peak2 = 0.15 * c * gauss(wl, x2, 9.0);
    let edge = x1 + 4.0;
    let continuum =
        0.32 * c / (1.0 + ((wl - edge) / 6.0).exp()) * (1.0 + ((edge - wl) / 250.0).max(0.0));
    let scattering = 0.02 * c * (400.0 / wl).powi(4);
    (peak1 + peak2 + continuum + scattering) * s.abs_scale
}

/// The 2,048-pixel absorbance spectrum with noise, averaged over `averages` scans.
pub fn absorption_spectrum<R: Rng + ?Sized>(
    s: &Sample,
    averages: u32,
    rng: &mut R,
) -> (Vec<f64>, Vec<f64>) {
    let sd = ABS_NOISE / f64::from(averages.max(1)).sqrt();
    let noise = Normal::new(0.0, sd).ok();
    let mut wl = Vec::with_capacity(PIXELS);
    let mut a = Vec::with_capacity(PIXELS);
    for i in 0..PIXELS {
        let x = pixel_nm(i);
        let n = noise.map(|d| d.sample(rng)).unwrap_or(0.0);
        wl.push(x);
        a.push(absorbance(s, x) + n);
    }
    (wl, a)
}

/// Absorbance of `s` on a given axis with noise, averaged over `averages` scans.
pub fn absorbance_on<R: Rng + ?Sized>(
    s: &Sample,
    wl: &[f64],
    averages: u32,
    rng: &mut R,
) -> Vec<f64> {
    let sd = ABS_NOISE / f64::from(averages.max(1)).sqrt();
    let noise = Normal::new(0.0, sd).ok();
    wl.iter()
        .map(|&x| absorbance(s, x) + noise.map(|d| d.sample(rng)).unwrap_or(0.0))
        .collect()
}

/// |CD| the landscape gives for this product, mdeg (never negative).
pub fn cd_magnitude(landscape: &Landscape, s: &Sample) -> f64 {
    if s.c <= 0.0 {
        return 0.0;
    }
    let (ti, ci) = (landscape.variable_index("T"), landscape.variable_index("C"));
    let mut x = vec![0.0; landscape.variables().len()];
    if let Some(i) = ti {
        x[i] = s.t_c;
    }
    if let Some(i) = ci {
        x[i] = s.c;
    }
    let v = landscape.eval(&x);
    if v.is_finite() {
        v.max(0.0)
    } else {
        0.0
    }
}

/// Noise-free CD of `s` at `wl`, mdeg: a main lobe at the first exciton (value there = signed
/// landscape magnitude) and a weaker opposite lobe at the second exciton.
pub fn cd_value(landscape: &Landscape, s: &Sample, wl: f64) -> f64 {
    let x1 = exciton_nm(s.t_c);
    let m = cd_magnitude(landscape, s) * s.cd_scale * s.handedness;
    let lobe2 = 0.35;
    let norm = 1.0 - lobe2 * gauss(x1, x1 - 35.0, 10.0);
    m * (gauss(wl, x1, 14.0) - lobe2 * gauss(wl, x1 - 35.0, 10.0)) / norm
}

/// CD spectrum from `from` to `to` every `step` nm with instrument noise.
pub fn cd_spectrum<R: Rng + ?Sized>(
    landscape: &Landscape,
    s: &Sample,
    from: f64,
    to: f64,
    step: f64,
    averages: u32,
    rng: &mut R,
) -> (Vec<f64>, Vec<f64>) {
    let sd = landscape.noise_sd() / f64::from(averages.max(1)).sqrt();
    let noise = Normal::new(0.0, sd).ok();
    let (lo, hi) = if from <= to { (from, to) } else { (to, from) };
    let step = if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    };
    let n = (((hi - lo) / step).floor() as usize + 1).min(100_000);
    let mut wl = Vec::with_capacity(n);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let x = lo + step * i as f64;
        wl.push(x);
        v.push(cd_value(landscape, s, x) + noise.map(|d| d.sample(rng)).unwrap_or(0.0));
    }
    (wl, v)
}

/// Femtosecond irradiation: 800 nm accumulated for 300 s inverts the handedness (|CD| within a
/// few %, absorbance −0.4 %); 300 nm (less thermal effect) never inverts.
pub fn irradiate<R: Rng + ?Sized>(
    s: &mut Sample,
    wavelength_nm: f64,
    duration_s: f64,
    rng: &mut R,
) {
    if !(duration_s.is_finite() && duration_s > 0.0) || s.c <= 0.0 {
        return;
    }
    if (wavelength_nm - 800.0).abs() <= 50.0 {
        s.dose_800_s += duration_s;
        if s.dose_800_s >= 300.0 {
            s.dose_800_s -= 300.0;
            s.handedness = -s.handedness;
            s.cd_scale *= rng.random_range(0.92..0.99);
            s.abs_scale *= 0.996;
        }
    } else if wavelength_nm < 450.0 {
        s.cd_scale *= rng.random_range(0.97..1.0);
        s.abs_scale *= 0.998;
    }
}

/// Lamp counts reaching the detector of the inline optical bench through a clear cell, per
/// 100 ms of integration (a tungsten-halogen source seen through the fibre: broad, peaking in the
/// red, weak in the UV).
pub fn lamp_counts_per_100ms(wl: f64) -> f64 {
    4_000.0 + 36_000.0 * gauss(wl, 650.0, 220.0)
}

/// Dark counts of the detector: offset plus dark current.
pub fn dark_counts(integration_ms: f64) -> f64 {
    1_000.0 + 2.0 * integration_ms / 100.0
}

/// Raw detector counts of the optical bench (what a CCD spectrometer's `intensities()` returns):
/// dark counts plus, with the lamp on, the lamp light attenuated by the absorbance of `s`, with
/// read and photon noise averaged over `averages` scans, saturating at 16 bits. Converting these
/// back to absorbance (`-log10((S - D) / (R - D))`) is the driver's job.
pub fn detector_counts<R: Rng + ?Sized>(
    s: &Sample,
    lamp_on: bool,
    integration_ms: f64,
    averages: u32,
    rng: &mut R,
) -> Vec<f64> {
    let scale = integration_ms / 100.0;
    let n = f64::from(averages.max(1)).sqrt();
    (0..PIXELS)
        .map(|i| {
            let x = pixel_nm(i);
            let light = if lamp_on {
                lamp_counts_per_100ms(x) * scale * 10f64.powf(-absorbance(s, x))
            } else {
                0.0
            };
            // photon noise of the light reaching the detector, sized so a clear cell gives the
            // inline spectrometer's absorbance noise, plus 4 counts of read noise
            let sd = ((ABS_NOISE * std::f64::consts::LN_10 * light).powi(2) + 16.0).sqrt() / n;
            let noise = Normal::new(0.0, sd).map(|d| d.sample(rng)).unwrap_or(0.0);
            (dark_counts(integration_ms) + light + noise).clamp(0.0, 65_535.0)
        })
        .collect()
}
