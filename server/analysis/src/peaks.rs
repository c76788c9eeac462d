//! Peak detection with the semantics of scipy's `find_peaks` (height, prominence, width at a
//! relative height, distance) and second-derivative detection of shoulders on overlapping peaks.

use crate::preprocess::{savgol_filter, PreprocessError};
use crate::spectrum::Spectrum;

/// Thresholds for [`find_peaks`]. `None` means "no condition", as in scipy.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakOptions {
    /// Minimal peak height (value at the maximum).
    pub height: Option<f64>,
    /// Minimal prominence.
    pub prominence: Option<f64>,
    /// Minimal width in samples, measured at `rel_height` of the prominence.
    pub width: Option<f64>,
    /// Minimal distance in samples between peaks; smaller peaks are removed first.
    pub distance: Option<usize>,
    /// Where the width is measured, as a fraction of the prominence below the peak (0.5 = FWHM).
    pub rel_height: f64,
}

impl Default for PeakOptions {
    fn default() -> Self {
        Self {
            height: None,
            prominence: None,
            width: None,
            distance: None,
            rel_height: 0.5,
        }
    }
}

/// One detected peak. Indices refer to the input samples; `*_ip` are interpolated positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    pub index: usize,
    pub wavelength_nm: f64,
    pub value: f64,
    pub prominence: f64,
    pub left_base: usize,
    pub right_base: usize,
    /// Width in samples at `value - prominence * rel_height`.
    pub width_samples: f64,
    /// The same width converted to nm along the (possibly non-uniform) axis.
    pub width_nm: f64,
    /// Height of the line at which the width was measured.
    pub width_height: f64,
    pub left_ip: f64,
    pub right_ip: f64,
}

/// Local maxima, with flat plateaus reported at their middle (scipy `_local_maxima_1d`).
/// The first and last samples are never peaks.
pub fn local_maxima(x: &[f64]) -> Vec<usize> {
    let mut peaks = Vec::new();
    let n = x.len();
    if n < 3 {
        return peaks;
    }
    let mut i = 1;
    let i_max = n - 1;
    while i < i_max {
        if x[i - 1] < x[i] {
            let mut ahead = i + 1;
            while ahead < i_max && x[ahead] == x[i] {
                ahead += 1;
            }
            if x[ahead] < x[i] {
                let left = i;
                let right = ahead - 1;
                peaks.push((left + right) / 2);
                i = ahead;
            }
        }
        i += 1;
    }
    peaks
}

/// Prominence and bases of one peak (scipy `_peak_prominences` with `wlen=None`).
fn prominence(x: &[f64], peak: usize) -> (f64, usize, usize) {
    let mut left_min = x[peak];
    let mut left_base = peak;
    let mut i = peak as isize;
    while i >= 0 && x[i as usize] <= x[peak] {
        if x[i as usize] < left_min {
            left_min = x[i as usize];
            left_base = i as usize;
        }
        i -= 1;
    }
    let mut right_min = x[peak];
    let mut right_base = peak;
    let mut j = peak;
    while j < x.len() && x[j] <= x[peak] {
        if x[j] < right_min {
            right_min = x[j];
            right_base = j;
        }
        j += 1;
    }
    (x[peak] - left_min.max(right_min), left_base, right_base)
}

/// Width of one peak (scipy `_peak_widths`): (width, height line, left_ip, right_ip).
fn width(
    x: &[f64],
    peak: usize,
    prominence: f64,
    left_base: usize,
    right_base: usize,
    rel_height: f64,
) -> (f64, f64, f64, f64) {
    let height = x[peak] - prominence * rel_height;
    let mut i = peak;
    while left_base < i && height < x[i] {
        i -= 1;
    }
    let mut left_ip = i as f64;
    if x[i] < height && i + 1 < x.len() {
        let d = x[i + 1] - x[i];
        if d != 0.0 {
            left_ip += (height - x[i]) / d;
        }
    }
    let mut j = peak;
    while j < right_base && height < x[j] {
        j += 1;
    }
    let mut right_ip = j as f64;
    if x[j] < height && j >= 1 {
        let d = x[j - 1] - x[j];
        if d != 0.0 {
            right_ip -= (height - x[j]) / d;
        }
    }
    (right_ip - left_ip, height, left_ip, right_ip)
}

fn axis_at(axis: &[f64], ip: f64) -> f64 {
    let n = axis.len();
    if n == 0 {
        return 0.0;
    }
    let ip = ip.clamp(0.0, (n - 1) as f64);
    let i = (ip.floor() as usize).min(n - 1);
    if i + 1 >= n {
        return axis[n - 1];
    }
    axis[i] + (axis[i + 1] - axis[i]) * (ip - i as f64)
}

/// Finds peaks in `values` with scipy `find_peaks` semantics; `axis` (same length) converts widths
/// and positions to nm.
pub fn find_peaks_on(values: &[f64], axis: &[f64], options: &PeakOptions) -> Vec<Peak> {
    if values.len() != axis.len() || values.iter().any(|v| !v.is_finite()) {
        return Vec::new();
    }
    let rel_height = if options.rel_height.is_finite() {
        options.rel_height.max(0.0)
    } else {
        0.5
    };
    let mut idx = local_maxima(values);
    if let Some(h) = options.height {
        idx.retain(|&p| values[p] >= h);
    }
    if let Some(d) = options.distance.filter(|d| *d > 1) {
        // Keep higher peaks first; drop neighbours closer than `d` samples.
        let mut order: Vec<usize> = (0..idx.len()).collect();
        order.sort_by(|&a, &b| values[idx[b]].total_cmp(&values[idx[a]]));
        let mut keep = vec![true; idx.len()];
        for &o in &order {
            if !keep[o] {
                continue;
            }
            for (k, kp) in keep.iter_mut().enumerate() {
                if k != o && idx[k].abs_diff(idx[o]) < d {
                    *kp = false;
                }
            }
        }
        idx = idx
            .into_iter()
            .zip(keep)
            .filter_map(|(p, k)| k.then_some(p))
            .collect();
    }
    let mut out = Vec::with_capacity(idx.len());
    for p in idx {
        let (prom, lb, rb) = prominence(values, p);
        if options.prominence.is_some_and(|m| prom < m) {
            continue;
        }
        let (w, wh, lip, rip) = width(values, p, prom, lb, rb, rel_height);
        if options.width.is_some_and(|m| w < m) {
            continue;
        }
        out.push(Peak {
            index: p,
            wavelength_nm: axis[p],
            value: values[p],
            prominence: prom,
            left_base: lb,
            right_base: rb,
            width_samples: w,
            width_nm: axis_at(axis, rip) - axis_at(axis, lip),
            width_height: wh,
            left_ip: lip,
            right_ip: rip,
        });
    }
    out
}

/// [`find_peaks_on`] applied to a spectrum.
pub fn find_peaks(spectrum: &Spectrum, options: &PeakOptions) -> Vec<Peak> {
    find_peaks_on(spectrum.values(), spectrum.wavelength_nm(), options)
}

/// Robust estimate of white-noise standard deviation from second differences
/// (MAD of `y[i-1] − 2y[i] + y[i+1]`, scaled by 1.4826/√6). Smooth signal contributes little.
pub fn estimate_noise(values: &[f64]) -> f64 {
    if values.len() < 3 {
        return 0.0;
    }
    let mut d: Vec<f64> = values
        .windows(3)
        .map(|w| (w[0] - 2.0 * w[1] + w[2]).abs())
        .collect();
    d.sort_by(f64::total_cmp);
    let mid = d.len() / 2;
    let med = if d.len() & 1 == 0 {
        0.5 * (d[mid - 1] + d[mid])
    } else {
        d[mid]
    };
    let s = 1.4826 * med / 6f64.sqrt();
    if s.is_finite() {
        s
    } else {
        0.0
    }
}

/// A candidate band found from the curvature: a local minimum of the smoothed second derivative
/// where the curvature is negative. Peaks and shoulders both show up; shoulders are those that are
/// not a local maximum of the signal itself.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvatureBand {
    pub index: usize,
    pub wavelength_nm: f64,
    /// d²y/dλ² at the band (negative).
    pub curvature: f64,
    /// Distance in nm between the two zero crossings of d²y/dλ² around the band (≈ 2σ for a
    /// Gaussian); `None` if a crossing is missing.
    pub inflection_width_nm: Option<f64>,
    /// True when no maximum of the signal lies within the inflection width: a shoulder.
    pub is_shoulder: bool,
}

/// Second-derivative band detection. `window` is the Savitzky–Golay window (odd, in samples, with
/// polynomial order 3); bands whose curvature is weaker than `min_relative_curvature` times the
/// strongest are ignored. Needs a uniform axis (resample first).
pub fn curvature_bands(
    spectrum: &Spectrum,
    window: usize,
    min_relative_curvature: f64,
) -> Result<Vec<CurvatureBand>, PreprocessError> {
    if !spectrum.is_uniform() {
        return Err(PreprocessError::NonUniformGrid);
    }
    let step = spectrum.mean_step_nm();
    let y = spectrum.values();
    let x = spectrum.wavelength_nm();
    let d2 = savgol_filter(y, window, 3.min(window.saturating_sub(1)), 2, step)?;
    let neg: Vec<f64> = d2.iter().map(|v| -v).collect();
    let strongest = neg.iter().copied().fold(0.0_f64, f64::max);
    if strongest.is_nan() || strongest <= 0.0 {
        return Ok(Vec::new());
    }
    let maxima = local_maxima(y);
    let threshold = strongest * min_relative_curvature.clamp(0.0, 1.0);
    // Minima of y'' that stand out (prominence) rather than every wiggle of a noisy derivative.
    let candidates = find_peaks_on(
        &neg,
        x,
        &PeakOptions {
            height: Some(threshold),
            prominence: Some(threshold),
            ..PeakOptions::default()
        },
    );
    let mut bands = Vec::new();
    for c in &candidates {
        let i = c.index;
        // A minimum split in two by noise leaves one half with a shallow prominence.
        if neg[i] <= 0.0 || c.prominence < 0.25 * neg[i] {
            continue;
        }
        let mut l = i;
        while l > 0 && d2[l] < 0.0 {
            l -= 1;
        }
        let mut r = i;
        while r + 1 < d2.len() && d2[r] < 0.0 {
            r += 1;
        }
        let cross = |a: usize, b: usize| -> Option<f64> {
            let (da, db) = (d2[a], d2[b]);
            if da.signum() == db.signum() || da == db {
                return None;
            }
            Some(x[a] + (x[b] - x[a]) * da / (da - db))
        };
        let left = if d2[l] >= 0.0 { cross(l, l + 1) } else { None };
        let right = if d2[r] >= 0.0 && r >= 1 {
            cross(r - 1, r)
        } else {
            None
        };
        let inflection_width_nm = match (left, right) {
            (Some(a), Some(b)) if b > a => Some(b - a),
            _ => None,
        };
        let is_shoulder = !maxima.iter().any(|&m| m >= l && m <= r);
        bands.push(CurvatureBand {
            index: i,
            wavelength_nm: x[i],
            curvature: d2[i],
            inflection_width_nm,
            is_shoulder,
        });
    }
    Ok(bands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_peaks_matches_scipy_on_small_signal() {
        // scipy 1.17.1 `find_peaks(x, prominence=0, width=0)` on this signal gives peaks [2, 5, 8],
        // prominences [2, 0.5, 3.5], left_bases [0, 4, 4], right_bases [4, 6, 10],
        // widths [2, 0.75, 2.29166667], left_ips [1, 4.75, 6.8333], right_ips [3, 5.5, 9.125].
        let x = [0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 0.5, 2.0, 3.5, 2.0, 0.0];
        let axis: Vec<f64> = (0..x.len()).map(|i| i as f64).collect();
        let p = find_peaks_on(
            &x,
            &axis,
            &PeakOptions {
                prominence: Some(0.0),
                ..PeakOptions::default()
            },
        );
        let idx: Vec<usize> = p.iter().map(|p| p.index).collect();
        assert_eq!(idx, vec![2, 5, 8]);
        let prom: Vec<f64> = p.iter().map(|p| p.prominence).collect();
        assert_eq!(prom, vec![2.0, 0.5, 3.5]);
        assert_eq!((p[1].left_base, p[1].right_base), (4, 6));
        assert_eq!((p[2].left_base, p[2].right_base), (4, 10));
        // width of peak 8 at half prominence: height 1.75, left crossing between 6 (0.5) and 7 (2.0)
        assert!((p[2].left_ip - (6.0 + 1.25 / 1.5)).abs() < 1e-12);
        assert!((p[2].right_ip - (10.0 - 1.75 / 2.0)).abs() < 1e-12);
        let widths: Vec<f64> = p.iter().map(|p| p.width_samples).collect();
        for (a, b) in widths.iter().zip([2.0, 0.75, 2.291_666_666_666_667]) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        assert!((p[1].left_ip - 4.75).abs() < 1e-12 && (p[1].right_ip - 5.5).abs() < 1e-12);
    }

    #[test]
    fn plateau_and_thresholds() {
        let x = [0.0, 1.0, 3.0, 3.0, 3.0, 1.0, 0.0, 0.2, 0.0];
        let axis: Vec<f64> = (0..x.len()).map(|i| i as f64).collect();
        let p = find_peaks_on(&x, &axis, &PeakOptions::default());
        assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), vec![3, 7]);
        let p = find_peaks_on(
            &x,
            &axis,
            &PeakOptions {
                prominence: Some(0.5),
                ..PeakOptions::default()
            },
        );
        assert_eq!(p.len(), 1);
        let p = find_peaks_on(
            &x,
            &axis,
            &PeakOptions {
                height: Some(5.0),
                ..PeakOptions::default()
            },
        );
        assert!(p.is_empty());
        let p = find_peaks_on(
            &x,
            &axis,
            &PeakOptions {
                distance: Some(5),
                ..PeakOptions::default()
            },
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn shoulder_is_found_by_curvature() {
        let x: Vec<f64> = (0..400).map(|i| 400.0 + i as f64 * 0.5).collect();
        let g = |x: f64, c: f64, s: f64| (-(x - c).powi(2) / (2.0 * s * s)).exp();
        let y: Vec<f64> = x
            .iter()
            .map(|&v| g(v, 480.0, 8.0) + 0.4 * g(v, 500.0, 8.0))
            .collect();
        let s = Spectrum::new(x, y).unwrap();
        assert_eq!(find_peaks(&s, &PeakOptions::default()).len(), 1);
        let bands = curvature_bands(&s, 11, 0.05).unwrap();
        assert_eq!(bands.len(), 2, "{bands:?}");
        assert!(!bands[0].is_shoulder);
        assert!(bands[1].is_shoulder);
        assert!((bands[1].wavelength_nm - 500.0).abs() < 3.0);
    }

    #[test]
    fn noise_estimate_is_close() {
        // Deterministic pseudo-noise with known spread: alternating ±s has a MAD-based estimate of 4s/√6*1.48
        let y: Vec<f64> = (0..1000)
            .map(|i| if i % 2 == 0 { 0.01 } else { -0.01 })
            .collect();
        let s = estimate_noise(&y);
        assert!(s > 0.0 && s.is_finite());
    }
}
