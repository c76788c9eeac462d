//! The validated `Spectrum` type: equal-length, finite, strictly monotonic wavelength/value pairs.

use thiserror::Error;

/// Fewest points a spectrum may hold. Anything shorter cannot carry a peak with a baseline.
pub const MIN_POINTS: usize = 5;

/// Why a pair of arrays is not a spectrum.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpectrumError {
    #[error("spectrum is empty")]
    Empty,
    #[error("spectrum has {len} points; at least {min} are needed")]
    TooFewPoints { len: usize, min: usize },
    #[error("wavelength has {wavelengths} entries but values has {values}")]
    LengthMismatch { wavelengths: usize, values: usize },
    #[error("wavelength at index {index} is not finite ({value})")]
    NonFiniteWavelength { index: usize, value: f64 },
    #[error("value at index {index} is not finite ({value})")]
    NonFiniteValue { index: usize, value: f64 },
    #[error("wavelengths are not strictly monotonic at index {index} ({previous} then {current})")]
    NotMonotonic {
        index: usize,
        previous: f64,
        current: f64,
    },
}

/// A spectrum on a strictly increasing wavelength axis (nm).
///
/// Construction validates the data once; every function in this crate may rely on the invariants:
/// both vectors have the same length `>= MIN_POINTS`, all numbers are finite and
/// `wavelength_nm` is strictly increasing (a strictly decreasing input is reversed on construction).
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    wavelength_nm: Vec<f64>,
    values: Vec<f64>,
}

impl Spectrum {
    /// Validates and builds a spectrum. A strictly decreasing axis (common for CD instruments that
    /// scan from red to blue) is accepted and stored in increasing order.
    pub fn new(wavelength_nm: Vec<f64>, values: Vec<f64>) -> Result<Self, SpectrumError> {
        Self::with_min_points(wavelength_nm, values, MIN_POINTS)
    }

    /// As [`Spectrum::new`] with a caller-chosen minimum number of points (at least 2).
    pub fn with_min_points(
        mut wavelength_nm: Vec<f64>,
        mut values: Vec<f64>,
        min_points: usize,
    ) -> Result<Self, SpectrumError> {
        let min = min_points.max(2);
        if wavelength_nm.len() != values.len() {
            return Err(SpectrumError::LengthMismatch {
                wavelengths: wavelength_nm.len(),
                values: values.len(),
            });
        }
        if wavelength_nm.is_empty() {
            return Err(SpectrumError::Empty);
        }
        if wavelength_nm.len() < min {
            return Err(SpectrumError::TooFewPoints {
                len: wavelength_nm.len(),
                min,
            });
        }
        if let Some((index, &value)) = wavelength_nm
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(SpectrumError::NonFiniteWavelength { index, value });
        }
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SpectrumError::NonFiniteValue { index, value });
        }
        let decreasing = wavelength_nm[1] < wavelength_nm[0];
        for index in 1..wavelength_nm.len() {
            let (previous, current) = (wavelength_nm[index - 1], wavelength_nm[index]);
            let ok = if decreasing {
                current < previous
            } else {
                current > previous
            };
            if !ok {
                return Err(SpectrumError::NotMonotonic {
                    index,
                    previous,
                    current,
                });
            }
        }
        if decreasing {
            wavelength_nm.reverse();
            values.reverse();
        }
        Ok(Self {
            wavelength_nm,
            values,
        })
    }

    /// Wavelengths in nm, strictly increasing.
    pub fn wavelength_nm(&self) -> &[f64] {
        &self.wavelength_nm
    }

    /// Values (absorbance, mdeg, counts ...), one per wavelength.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Number of points (always `>= 2`).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Always false: a spectrum cannot be empty. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// First and last wavelength.
    pub fn range_nm(&self) -> (f64, f64) {
        let first = self.wavelength_nm.first().copied().unwrap_or(0.0);
        let last = self.wavelength_nm.last().copied().unwrap_or(0.0);
        (first, last)
    }

    /// Mean wavelength step in nm.
    pub fn mean_step_nm(&self) -> f64 {
        let (a, b) = self.range_nm();
        (b - a) / (self.len().saturating_sub(1).max(1)) as f64
    }

    /// True when every step is within 1 % of the mean step.
    pub fn is_uniform(&self) -> bool {
        let mean = self.mean_step_nm();
        self.wavelength_nm
            .windows(2)
            .all(|w| ((w[1] - w[0]) - mean).abs() <= 0.01 * mean)
    }

    /// Linear interpolation of the value at `wavelength_nm`; `None` outside the covered range.
    pub fn value_at(&self, wavelength_nm: f64) -> Option<f64> {
        let x = &self.wavelength_nm;
        let (lo, hi) = self.range_nm();
        if !(wavelength_nm >= lo && wavelength_nm <= hi) {
            return None;
        }
        let i = x.partition_point(|&v| v < wavelength_nm);
        if i == 0 {
            return self.values.first().copied();
        }
        let (x0, x1) = (x[i - 1], x[i]);
        let (y0, y1) = (self.values[i - 1], self.values[i]);
        Some(y0 + (y1 - y0) * (wavelength_nm - x0) / (x1 - x0))
    }

    /// Consumes the spectrum, returning `(wavelength_nm, values)`.
    pub fn into_parts(self) -> (Vec<f64>, Vec<f64>) {
        (self.wavelength_nm, self.values)
    }

    /// Replaces the values, keeping the axis (used by preprocessing; length is checked).
    pub(crate) fn with_values(&self, values: Vec<f64>) -> Result<Self, SpectrumError> {
        Self::with_min_points(self.wavelength_nm.clone(), values, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!(Spectrum::new(vec![], vec![]), Err(SpectrumError::Empty));
        assert!(matches!(
            Spectrum::new(vec![1.0], vec![1.0]),
            Err(SpectrumError::TooFewPoints { len: 1, .. })
        ));
        assert!(matches!(
            Spectrum::new(vec![1.0, 2.0], vec![1.0]),
            Err(SpectrumError::LengthMismatch { .. })
        ));
        let x: Vec<f64> = (0..10).map(f64::from).collect();
        let mut y = vec![0.0; 10];
        y[3] = f64::NAN;
        assert!(matches!(
            Spectrum::new(x.clone(), y),
            Err(SpectrumError::NonFiniteValue { index: 3, .. })
        ));
        let mut x2 = x.clone();
        x2[5] = x2[4];
        assert!(matches!(
            Spectrum::new(x2, vec![0.0; 10]),
            Err(SpectrumError::NotMonotonic { index: 5, .. })
        ));
    }

    #[test]
    fn decreasing_axis_is_reversed() {
        let s = Spectrum::new(
            vec![5.0, 4.0, 3.0, 2.0, 1.0],
            vec![50.0, 40.0, 30.0, 20.0, 10.0],
        )
        .unwrap();
        assert_eq!(s.wavelength_nm(), &[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(s.values(), &[10.0, 20.0, 30.0, 40.0, 50.0]);
        assert_eq!(s.value_at(2.5), Some(25.0));
        assert_eq!(s.value_at(0.5), None);
    }
}
