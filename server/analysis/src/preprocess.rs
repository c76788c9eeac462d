//! Preprocessing: Savitzky–Golay smoothing/derivatives, polynomial and asymmetric-least-squares
//! baselines, cropping, resampling and absorbance from transmission with dark/reference spectra.

use nalgebra::DMatrix;
use thiserror::Error;

use crate::spectrum::{Spectrum, SpectrumError};

/// Why a preprocessing step could not run.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PreprocessError {
    #[error("Savitzky–Golay window must be odd and >= 3 (got {0})")]
    WindowNotOdd(usize),
    #[error(
        "Savitzky–Golay polynomial order {polyorder} must be below the window length {window}"
    )]
    PolyorderTooLarge { polyorder: usize, window: usize },
    #[error("derivative order {deriv} is above the polynomial order {polyorder}")]
    DerivTooLarge { deriv: usize, polyorder: usize },
    #[error("window of {window} points is longer than the spectrum ({len} points)")]
    WindowTooLong { window: usize, len: usize },
    #[error(
        "wavelength steps are not uniform; resample the spectrum before taking SG derivatives"
    )]
    NonUniformGrid,
    #[error("baseline polynomial degree {degree} needs more than {len} points")]
    DegreeTooHigh { degree: usize, len: usize },
    #[error("parameter `{name}` = {value} is out of range: {expected}")]
    BadParameter {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("crop window {min_nm}..{max_nm} nm leaves {kept} points (the spectrum covers {lo}..{hi} nm)")]
    CropTooNarrow {
        min_nm: f64,
        max_nm: f64,
        kept: usize,
        lo: f64,
        hi: f64,
    },
    #[error("resampling range {start}..{end} nm is outside the spectrum ({lo}..{hi} nm)")]
    ResampleOutOfRange {
        start: f64,
        end: f64,
        lo: f64,
        hi: f64,
    },
    #[error("{what} spectrum is on a different wavelength axis than the sample")]
    AxisMismatch { what: &'static str },
    #[error(
        "reference minus dark is {value} at {wavelength_nm} nm; no light reached the detector"
    )]
    NoReferenceLight { wavelength_nm: f64, value: f64 },
    #[error("linear system in {0} is singular")]
    Singular(&'static str),
    #[error(transparent)]
    Spectrum(#[from] SpectrumError),
}

/// Savitzky–Golay filter on evenly spaced samples, with scipy's `mode="interp"` edge handling:
/// the first and last `window/2` outputs come from the polynomial fitted to the first/last window.
/// `deriv` > 0 returns the derivative with respect to x, using the sample spacing `delta`.
pub fn savgol_filter(
    values: &[f64],
    window: usize,
    polyorder: usize,
    deriv: usize,
    delta: f64,
) -> Result<Vec<f64>, PreprocessError> {
    if window < 3 || window & 1 == 0 {
        return Err(PreprocessError::WindowNotOdd(window));
    }
    if polyorder >= window {
        return Err(PreprocessError::PolyorderTooLarge { polyorder, window });
    }
    if deriv > polyorder {
        return Err(PreprocessError::DerivTooLarge { deriv, polyorder });
    }
    if window > values.len() {
        return Err(PreprocessError::WindowTooLong {
            window,
            len: values.len(),
        });
    }
    if !(delta.is_finite() && delta > 0.0) {
        return Err(PreprocessError::BadParameter {
            name: "delta",
            value: delta,
            expected: "finite and > 0",
        });
    }
    let half = window / 2;
    let ncoef = polyorder + 1;
    // Design matrix on t = -half..=half; pinv maps window samples to polynomial coefficients.
    let a = DMatrix::from_fn(window, ncoef, |i, j| {
        (i as f64 - half as f64).powi(j as i32)
    });
    let pinv = a
        .pseudo_inverse(1e-12)
        .map_err(|_| PreprocessError::Singular("Savitzky–Golay design"))?;
    let scale = delta.powi(deriv as i32);
    // Weights giving the `deriv`-th derivative of the fitted polynomial at offset t.
    let weights_at = |t: f64| -> Vec<f64> {
        let mut basis = vec![0.0; ncoef];
        for (j, b) in basis.iter_mut().enumerate().skip(deriv) {
            let falling: f64 = ((j - deriv + 1)..=j).map(|k| k as f64).product();
            *b = falling * t.powi((j - deriv) as i32);
        }
        (0..window)
            .map(|k| (0..ncoef).map(|j| basis[j] * pinv[(j, k)]).sum::<f64>() / scale)
            .collect()
    };
    let n = values.len();
    let mut out = vec![0.0; n];
    let centre = weights_at(0.0);
    for i in half..n - half {
        out[i] = centre
            .iter()
            .zip(&values[i - half..=i + half])
            .map(|(w, y)| w * y)
            .sum();
    }
    // Edges: fit the polynomial to the first / last window once, evaluate its derivative.
    let edge_poly = |ys: &[f64]| -> Vec<f64> {
        (0..ncoef)
            .map(|j| (0..window).map(|k| pinv[(j, k)] * ys[k]).sum::<f64>())
            .collect()
    };
    let eval_deriv = |coef: &[f64], t: f64| -> f64 {
        let mut v = 0.0;
        for (j, c) in coef.iter().enumerate().skip(deriv) {
            let falling: f64 = ((j - deriv + 1)..=j).map(|k| k as f64).product();
            v += c * falling * t.powi((j - deriv) as i32);
        }
        v / scale
    };
    let left = edge_poly(&values[..window]);
    let right = edge_poly(&values[n - window..]);
    for i in 0..half {
        out[i] = eval_deriv(&left, i as f64 - half as f64);
        out[n - 1 - i] = eval_deriv(&right, half as f64 - i as f64);
    }
    Ok(out)
}

/// Savitzky–Golay smoothing of a spectrum (any spacing; smoothing is index-based).
pub fn smooth(
    spectrum: &Spectrum,
    window: usize,
    polyorder: usize,
) -> Result<Spectrum, PreprocessError> {
    let v = savgol_filter(spectrum.values(), window, polyorder, 0, 1.0)?;
    Ok(spectrum.with_values(v)?)
}

/// Savitzky–Golay derivative d^order y / dλ^order; needs a uniform axis.
pub fn derivative(
    spectrum: &Spectrum,
    window: usize,
    polyorder: usize,
    order: usize,
) -> Result<Spectrum, PreprocessError> {
    if !spectrum.is_uniform() {
        return Err(PreprocessError::NonUniformGrid);
    }
    let v = savgol_filter(
        spectrum.values(),
        window,
        polyorder,
        order,
        spectrum.mean_step_nm(),
    )?;
    Ok(spectrum.with_values(v)?)
}

fn normalised_axis(x: &[f64]) -> Vec<f64> {
    let (lo, hi) = (
        x.first().copied().unwrap_or(0.0),
        x.last().copied().unwrap_or(1.0),
    );
    let mid = 0.5 * (lo + hi);
    let half = (0.5 * (hi - lo)).max(f64::MIN_POSITIVE);
    x.iter().map(|v| (v - mid) / half).collect()
}

/// Least-squares polynomial fitting on a fixed axis: the pseudo-inverse is computed once, so
/// repeated fits (modpoly iterations) cost one matrix-vector product each. Both are kept by
/// rows (`pinv` coefficient by coefficient, `vander` point by point) so each product is a run of
/// contiguous sums, taken in order (the same arithmetic as a column-by-column product).
struct PolyFitter {
    degree: usize,
    /// `vander` row-major: the powers t⁰..t^degree of each point.
    vander: Vec<f64>,
    /// The pseudo-inverse row-major: one row of `len` weights per coefficient.
    pinv: Vec<f64>,
}

impl PolyFitter {
    fn new(t: &[f64], degree: usize) -> Result<Self, PreprocessError> {
        let vander = DMatrix::from_fn(t.len(), degree + 1, |i, j| t[i].powi(j as i32));
        let pinv = vander
            .clone()
            .pseudo_inverse(1e-12)
            .map_err(|_| PreprocessError::Singular("polynomial baseline"))?;
        Ok(Self {
            degree,
            vander: vander.transpose().as_slice().to_vec(),
            pinv: pinv.transpose().as_slice().to_vec(),
        })
    }

    fn fit_eval(&self, y: &[f64]) -> Vec<f64> {
        let k = self.degree + 1;
        let coef: Vec<f64> = self
            .pinv
            .chunks_exact(y.len().max(1))
            .map(|w| w.iter().zip(y).map(|(p, v)| p * v).sum())
            .collect();
        self.vander
            .chunks_exact(k)
            .map(|powers| powers.iter().zip(&coef).map(|(p, c)| p * c).sum())
            .collect()
    }
}

/// Polynomial baseline of `degree`, made to pass under peaks by the "modpoly" iteration
/// (Lieber & Mahadevan-Jansen 2003): after each fit the working signal is clipped to the fit.
/// `iterations = 0` gives a plain least-squares polynomial. Returns the baseline itself.
pub fn polynomial_baseline(
    spectrum: &Spectrum,
    degree: usize,
    iterations: usize,
) -> Result<Spectrum, PreprocessError> {
    if degree + 1 >= spectrum.len() {
        return Err(PreprocessError::DegreeTooHigh {
            degree,
            len: spectrum.len(),
        });
    }
    let t = normalised_axis(spectrum.wavelength_nm());
    let fitter = PolyFitter::new(&t, degree)?;
    let mut work = spectrum.values().to_vec();
    let mut fit = fitter.fit_eval(&work);
    let span = work.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))
        - work.iter().fold(f64::INFINITY, |a, &b| a.min(b));
    for _ in 0..iterations {
        for (w, f) in work.iter_mut().zip(&fit) {
            if *w > *f {
                *w = *f;
            }
        }
        let next = fitter.fit_eval(&work);
        // Stop once the baseline moves by less than 1e-3 of the signal span.
        let moved = next
            .iter()
            .zip(&fit)
            .fold(0.0_f64, |a, (n, f)| a.max((n - f).abs()));
        fit = next;
        if moved.is_nan() || moved <= 1e-3 * span {
            break;
        }
    }
    Ok(spectrum.with_values(fit)?)
}

/// Asymmetric least squares baseline (Eilers & Boelens 2005): minimises
/// `Σ w_i (y_i − z_i)² + λ Σ (Δ² z_i)²` with weights `p` above and `1 − p` below the baseline.
/// Typical values: `lambda` 1e4..1e7, `p` 0.001..0.05, 10 iterations. Returns the baseline.
pub fn als_baseline(
    spectrum: &Spectrum,
    lambda: f64,
    p: f64,
    iterations: usize,
) -> Result<Spectrum, PreprocessError> {
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(PreprocessError::BadParameter {
            name: "lambda",
            value: lambda,
            expected: "finite and > 0",
        });
    }
    if !(p > 0.0 && p < 1.0) {
        return Err(PreprocessError::BadParameter {
            name: "p",
            value: p,
            expected: "strictly between 0 and 1",
        });
    }
    let y = spectrum.values();
    let n = y.len();
    // Band of λ DᵀD (second differences): diagonals 0, 1, 2.
    let mut d0 = vec![0.0; n];
    let mut d1 = vec![0.0; n.saturating_sub(1)];
    let mut d2 = vec![0.0; n.saturating_sub(2)];
    let c = [1.0, -2.0, 1.0];
    for r in 0..n.saturating_sub(2) {
        for a in 0..3 {
            d0[r + a] += lambda * c[a] * c[a];
            for b in (a + 1)..3 {
                let v = lambda * c[a] * c[b];
                if b - a == 1 {
                    d1[r + a] += v;
                } else {
                    d2[r + a] += v;
                }
            }
        }
    }
    let mut w = vec![1.0; n];
    let mut z = y.to_vec();
    for _ in 0..iterations.max(1) {
        let diag: Vec<f64> = d0.iter().zip(&w).map(|(a, b)| a + b).collect();
        let rhs: Vec<f64> = w.iter().zip(y).map(|(a, b)| a * b).collect();
        z = solve_pentadiagonal(&diag, &d1, &d2, &rhs)
            .ok_or(PreprocessError::Singular("asymmetric least squares"))?;
        let mut changed = false;
        for i in 0..n {
            let nw = if y[i] > z[i] { p } else { 1.0 - p };
            if nw != w[i] {
                changed = true;
            }
            w[i] = nw;
        }
        if !changed {
            break;
        }
    }
    Ok(spectrum.with_values(z)?)
}

/// Solves a symmetric positive definite pentadiagonal system by banded LDLᵀ.
/// `d0` is the diagonal, `d1[i]` = A[i][i+1], `d2[i]` = A[i][i+2]. `None` if not positive definite.
fn solve_pentadiagonal(d0: &[f64], d1: &[f64], d2: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    let n = d0.len();
    let mut dd = vec![0.0; n];
    let mut l1 = vec![0.0; n]; // L[i][i-1]
    let mut l2 = vec![0.0; n]; // L[i][i-2]
    for i in 0..n {
        if i >= 2 {
            l2[i] = d2[i - 2] / dd[i - 2];
        }
        if i >= 1 {
            let mut v = d1[i - 1];
            if i >= 2 {
                v -= l2[i] * l1[i - 1] * dd[i - 2];
            }
            l1[i] = v / dd[i - 1];
        }
        let mut v = d0[i];
        if i >= 1 {
            v -= l1[i] * l1[i] * dd[i - 1];
        }
        if i >= 2 {
            v -= l2[i] * l2[i] * dd[i - 2];
        }
        if !(v.is_finite() && v > 1e-300) {
            return None;
        }
        dd[i] = v;
    }
    let mut x = b.to_vec();
    for i in 0..n {
        if i >= 1 {
            x[i] -= l1[i] * x[i - 1];
        }
        if i >= 2 {
            x[i] -= l2[i] * x[i - 2];
        }
    }
    for i in 0..n {
        x[i] /= dd[i];
    }
    for i in (0..n).rev() {
        if i + 1 < n {
            x[i] -= l1[i + 1] * x[i + 1];
        }
        if i + 2 < n {
            x[i] -= l2[i + 2] * x[i + 2];
        }
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Subtracts a baseline (same axis) from a spectrum.
pub fn subtract(spectrum: &Spectrum, baseline: &Spectrum) -> Result<Spectrum, PreprocessError> {
    same_axis(spectrum, baseline, "baseline")?;
    let v = spectrum
        .values()
        .iter()
        .zip(baseline.values())
        .map(|(a, b)| a - b)
        .collect();
    Ok(spectrum.with_values(v)?)
}

/// Keeps the points with `min_nm <= λ <= max_nm`; at least `MIN_POINTS` must remain.
pub fn crop(spectrum: &Spectrum, min_nm: f64, max_nm: f64) -> Result<Spectrum, PreprocessError> {
    let (lo, hi) = spectrum.range_nm();
    let (x, y): (Vec<f64>, Vec<f64>) = spectrum
        .wavelength_nm()
        .iter()
        .zip(spectrum.values())
        .filter(|(x, _)| **x >= min_nm && **x <= max_nm)
        .map(|(x, y)| (*x, *y))
        .unzip();
    if x.len() < crate::spectrum::MIN_POINTS {
        return Err(PreprocessError::CropTooNarrow {
            min_nm,
            max_nm,
            kept: x.len(),
            lo,
            hi,
        });
    }
    Ok(Spectrum::new(x, y)?)
}

/// Linear interpolation onto `n` evenly spaced wavelengths from `start_nm` to `end_nm` inclusive.
pub fn resample(
    spectrum: &Spectrum,
    start_nm: f64,
    end_nm: f64,
    n: usize,
) -> Result<Spectrum, PreprocessError> {
    let (lo, hi) = spectrum.range_nm();
    if !(start_nm >= lo && end_nm <= hi && end_nm > start_nm) {
        return Err(PreprocessError::ResampleOutOfRange {
            start: start_nm,
            end: end_nm,
            lo,
            hi,
        });
    }
    if n < crate::spectrum::MIN_POINTS {
        return Err(PreprocessError::BadParameter {
            name: "n",
            value: n as f64,
            expected: ">= 5 points",
        });
    }
    let step = (end_nm - start_nm) / (n - 1) as f64;
    let x: Vec<f64> = (0..n).map(|i| start_nm + step * i as f64).collect();
    let y = x
        .iter()
        .map(|&xi| spectrum.value_at(xi.clamp(lo, hi)).unwrap_or(0.0))
        .collect();
    Ok(Spectrum::new(x, y)?)
}

/// Resamples onto a uniform axis with the same range and number of points.
pub fn resample_uniform(spectrum: &Spectrum) -> Result<Spectrum, PreprocessError> {
    let (lo, hi) = spectrum.range_nm();
    resample(spectrum, lo, hi, spectrum.len())
}

fn same_axis(a: &Spectrum, b: &Spectrum, what: &'static str) -> Result<(), PreprocessError> {
    let ok = a.len() == b.len()
        && a.wavelength_nm()
            .iter()
            .zip(b.wavelength_nm())
            .all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1.0));
    if ok {
        Ok(())
    } else {
        Err(PreprocessError::AxisMismatch { what })
    }
}

/// Absorbance computed from raw detector counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Absorbance {
    /// A = −log10((S − D) / (R − D)).
    pub spectrum: Spectrum,
    /// Pixels where the sample transmittance fell below `min_transmittance` and was clamped
    /// (absorbance saturates at −log10(min_transmittance) there).
    pub clamped_pixels: usize,
}

/// Absorbance from a sample and a reference (blank) intensity spectrum, optionally with a dark
/// spectrum subtracted from both. All spectra must share the axis. Transmittance below
/// `min_transmittance` (e.g. 1e-4, the detector's dynamic range) is clamped and counted.
pub fn absorbance_from_transmission(
    sample: &Spectrum,
    reference: &Spectrum,
    dark: Option<&Spectrum>,
    min_transmittance: f64,
) -> Result<Absorbance, PreprocessError> {
    if !(min_transmittance > 0.0 && min_transmittance < 1.0) {
        return Err(PreprocessError::BadParameter {
            name: "min_transmittance",
            value: min_transmittance,
            expected: "strictly between 0 and 1",
        });
    }
    same_axis(sample, reference, "reference")?;
    if let Some(d) = dark {
        same_axis(sample, d, "dark")?;
    }
    let mut clamped = 0;
    let mut out = Vec::with_capacity(sample.len());
    for i in 0..sample.len() {
        let d = dark.map_or(0.0, |d| d.values()[i]);
        let r = reference.values()[i] - d;
        if r.is_nan() || r <= 0.0 {
            return Err(PreprocessError::NoReferenceLight {
                wavelength_nm: sample.wavelength_nm()[i],
                value: r,
            });
        }
        let mut t = (sample.values()[i] - d) / r;
        if t.is_nan() || t < min_transmittance {
            t = min_transmittance;
            clamped += 1;
        }
        out.push(-t.log10());
    }
    Ok(Absorbance {
        spectrum: sample.with_values(out)?,
        clamped_pixels: clamped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(f: impl Fn(f64) -> f64, n: usize) -> Spectrum {
        let x: Vec<f64> = (0..n).map(|i| 400.0 + i as f64).collect();
        let y = x.iter().map(|&v| f(v)).collect();
        Spectrum::new(x, y).unwrap()
    }

    #[test]
    fn savgol_matches_scipy_reference() {
        // scipy.signal.savgol_filter([2, 2, 5, 2, 1, 0, 1, 4, 9], 5, 2) (scipy docs example)
        let x = [2.0, 2.0, 5.0, 2.0, 1.0, 0.0, 1.0, 4.0, 9.0];
        let y = savgol_filter(&x, 5, 2, 0, 1.0).unwrap();
        let want = [
            1.65714286, 3.17142857, 3.54285714, 2.85714286, 0.65714286, 0.17142857, 1.0, 4.0, 9.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn savgol_preserves_polynomials_and_differentiates_them() {
        let x: Vec<f64> = (0..40).map(|i| i as f64 * 0.5).collect();
        let y: Vec<f64> = x.iter().map(|t| 1.0 + 2.0 * t - 0.3 * t * t).collect();
        let s = savgol_filter(&y, 7, 3, 0, 0.5).unwrap();
        let d = savgol_filter(&y, 7, 3, 1, 0.5).unwrap();
        let d2 = savgol_filter(&y, 7, 3, 2, 0.5).unwrap();
        for i in 0..x.len() {
            assert!((s[i] - y[i]).abs() < 1e-9);
            assert!((d[i] - (2.0 - 0.6 * x[i])).abs() < 1e-8);
            assert!((d2[i] + 0.6).abs() < 1e-8);
        }
        assert!(savgol_filter(&y, 4, 2, 0, 1.0).is_err());
        assert!(savgol_filter(&y, 5, 5, 0, 1.0).is_err());
        assert!(savgol_filter(&y[..3], 5, 2, 0, 1.0).is_err());
    }

    #[test]
    fn polynomial_baseline_stays_under_peaks() {
        let s = spec(
            |x| 0.1 + 0.002 * (x - 400.0) + (-(x - 500.0).powi(2) / 200.0).exp(),
            200,
        );
        let b = polynomial_baseline(&s, 1, 100).unwrap();
        // Far from the peak the baseline equals the line.
        assert!((b.values()[10] - (0.1 + 0.02)).abs() < 0.01);
        assert!((b.values()[190] - (0.1 + 0.38)).abs() < 0.01);
    }

    #[test]
    fn als_baseline_recovers_smooth_background() {
        let s = spec(
            |x| 0.5 + 1e-5 * (x - 450.0).powi(2) + 2.0 * (-(x - 500.0).powi(2) / 50.0).exp(),
            200,
        );
        let b = als_baseline(&s, 1e5, 0.01, 20).unwrap();
        // Away from the ends (where ALS has no curvature penalty to lean on).
        for (i, x) in s.wavelength_nm().iter().enumerate().skip(15).take(170) {
            let truth = 0.5 + 1e-5 * (x - 450.0).powi(2);
            assert!(
                (b.values()[i] - truth).abs() < 0.05,
                "at {x}: {}",
                b.values()[i]
            );
        }
        assert!(als_baseline(&s, -1.0, 0.01, 5).is_err());
        assert!(als_baseline(&s, 1e5, 1.5, 5).is_err());
    }

    #[test]
    fn crop_resample_and_absorbance() {
        let s = spec(|x| x, 100);
        let c = crop(&s, 410.0, 420.0).unwrap();
        assert_eq!(c.len(), 11);
        assert!(crop(&s, 410.0, 411.0).is_err());
        let r = resample(&s, 400.5, 410.5, 21).unwrap();
        assert!((r.values()[3] - 402.0).abs() < 1e-12);
        assert!(resample(&s, 390.0, 410.0, 21).is_err());

        let dark = spec(|_| 100.0, 10);
        let reference = spec(|_| 1100.0, 10);
        let sample = spec(|_| 200.0, 10);
        let a = absorbance_from_transmission(&sample, &reference, Some(&dark), 1e-4).unwrap();
        assert!((a.spectrum.values()[0] - 1.0).abs() < 1e-12);
        assert_eq!(a.clamped_pixels, 0);
        let black = spec(|_| 50.0, 10);
        let a = absorbance_from_transmission(&black, &reference, Some(&dark), 1e-4).unwrap();
        assert_eq!(a.clamped_pixels, 10);
        assert!((a.spectrum.values()[0] - 4.0).abs() < 1e-12);
        assert!(matches!(
            absorbance_from_transmission(&sample, &dark, Some(&dark), 1e-4),
            Err(PreprocessError::NoReferenceLight { .. })
        ));
    }
}
