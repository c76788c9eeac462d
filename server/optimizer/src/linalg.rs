//! Small dense linear-algebra helpers over nalgebra: robust least squares by SVD pseudo-inverse.

use nalgebra::{DMatrix, DVector};

/// Minimum-norm least-squares solution of `A x ≈ b` by SVD, with singular values below
/// `rcond · σ_max` treated as zero (never fails on rank-deficient or singular systems).
pub fn lstsq(a: &DMatrix<f64>, b: &DVector<f64>) -> DVector<f64> {
    let n = a.ncols();
    if a.nrows() == 0 || n == 0 {
        return DVector::zeros(n);
    }
    let svd = a.clone().svd(true, true);
    let smax = svd.singular_values.max();
    let tol = (smax * 1e-12 * (a.nrows().max(n) as f64)).max(f64::MIN_POSITIVE);
    match svd.solve(b, tol) {
        Ok(x) if x.iter().all(|v| v.is_finite()) => x,
        _ => DVector::zeros(n),
    }
}

/// Pseudo-inverse of a square or rectangular matrix (zero matrix if it cannot be computed).
pub fn pinv(a: &DMatrix<f64>) -> DMatrix<f64> {
    let (r, c) = a.shape();
    let smax = a.clone().svd(false, false).singular_values.max();
    let tol = (smax * 1e-12 * (r.max(c) as f64)).max(f64::MIN_POSITIVE);
    a.clone()
        .pseudo_inverse(tol)
        .unwrap_or_else(|_| DMatrix::zeros(c, r))
}

/// Least squares by SVD with every singular value raised to at least `floor · σ_max`
/// (MATLAB SNOBFIT v2.1 `snoblocf`: `Sigma = max(Sigma, 1e-4*Sigma(1))`): a regularised solve
/// that damps the near-null directions instead of dropping them. Zero vector if the SVD fails.
pub fn lstsq_floored(a: &DMatrix<f64>, b: &DVector<f64>, floor: f64) -> DVector<f64> {
    let n = a.ncols();
    if a.nrows() == 0 || n == 0 {
        return DVector::zeros(n);
    }
    let svd = a.clone().svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u.as_ref(), svd.v_t.as_ref()) else {
        return DVector::zeros(n);
    };
    let smax = svd.singular_values.max();
    if !(smax.is_finite() && smax > 0.0) {
        return DVector::zeros(n);
    }
    let utb = u.transpose() * b;
    let scaled = DVector::from_iterator(
        utb.len(),
        utb.iter()
            .zip(svd.singular_values.iter())
            .map(|(c, s)| c / s.max(floor * smax)),
    );
    let x = v_t.transpose() * scaled;
    if x.iter().all(|v| v.is_finite()) {
        x
    } else {
        DVector::zeros(n)
    }
}
