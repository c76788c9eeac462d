//! `maosic-server analyze SPECTRUM.csv [--cd CD.csv] [--model …] [--peaks auto|N] [--json]`: the
//! spectral analysis on files, without a server. Thin: reads the files, parses them with
//! `maosic_analysis::parse_spectrum_csv`, calls `fit_peaks` (or `analyse_experiment` with a CD
//! spectrum) and prints a table or one JSON object.

use std::path::{Path, PathBuf};

use clap::Args;
use maosic_analysis::{
    analyse_experiment, fit_peaks, parse_spectrum_csv, AnalysisError, AnalysisSettings, Baseline,
    CsvError, FitError, FitSettings, LineShape, PeakCount, PeakFit, Spectrum,
};
use serde_json::{json, Value};
use thiserror::Error;

/// Arguments of `analyze`.
#[derive(Args, Debug, Clone)]
pub struct AnalyzeArgs {
    /// Absorption spectrum: two columns, wavelength (nm) and value, optional header row.
    #[arg(value_name = "SPECTRUM.csv")]
    pub spectrum: PathBuf,
    /// CD spectrum (mdeg) on any axis covering the exciton peak: adds `cd_at_exciton_mdeg`.
    #[arg(long, value_name = "CD.csv")]
    pub cd: Option<PathBuf>,
    /// Line shape of every peak.
    #[arg(
        long,
        default_value = "gaussian",
        value_name = "gaussian|lorentzian|voigt|pseudo-voigt"
    )]
    pub model: LineShape,
    /// Number of peaks: `auto` (1..=4 by BIC), `auto:M` (1..=M) or a fixed count.
    #[arg(long, default_value = "auto", value_name = "auto|auto:M|N")]
    pub peaks: PeakCount,
    /// Baseline fitted with the peaks.
    #[arg(
        long,
        default_value = "linear",
        value_name = "none|constant|linear|quadratic"
    )]
    pub baseline: BaselineArg,
    /// Fit only this window, `MIN:MAX` in nm.
    #[arg(long, value_name = "MIN:MAX", value_parser = parse_window)]
    pub window: Option<(f64, f64)>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--baseline` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineArg {
    None,
    Constant,
    Linear,
    Quadratic,
}

impl From<BaselineArg> for Baseline {
    fn from(b: BaselineArg) -> Self {
        match b {
            BaselineArg::None => Self::None,
            BaselineArg::Constant => Self::Constant,
            BaselineArg::Linear => Self::Linear,
            BaselineArg::Quadratic => Self::Quadratic,
        }
    }
}

fn parse_window(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("expected MIN:MAX in nm, got `{s}`"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{v}` is not a number"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if a.is_finite() && b.is_finite() && a < b {
        Ok((a, b))
    } else {
        Err(format!("window {a}:{b} must be an increasing range"))
    }
}

/// Why `analyze` failed; each message names the file it is about, the cause follows in the
/// error chain (`error: … is not a two-column spectrum: line 3: `x` is not a number`).
#[derive(Debug, Error)]
pub enum AnalyzeError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a two-column spectrum", path.display())]
    Csv { path: PathBuf, source: CsvError },
    #[error("fit of {} failed", path.display())]
    Fit { path: PathBuf, source: FitError },
    #[error("analysis of {} failed", path.display())]
    Analysis {
        path: PathBuf,
        source: AnalysisError,
    },
}

fn read_spectrum(path: &Path) -> Result<Spectrum, AnalyzeError> {
    let text = std::fs::read_to_string(path).map_err(|source| AnalyzeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_spectrum_csv(&text).map_err(|source| AnalyzeError::Csv {
        path: path.to_path_buf(),
        source,
    })
}

/// The result as printed by `--json`.
fn to_json(args: &AnalyzeArgs, fit: &PeakFit, cd: Option<&maosic_analysis::Features>) -> Value {
    let st = &fit.statistics;
    let mut out = json!({
        "spectrum": args.spectrum.display().to_string(),
        "model": fit.shape.name(),
        "baseline": format!("{:?}", fit.baseline_kind).to_ascii_lowercase(),
        "window_nm": [fit.window_nm.0, fit.window_nm.1],
        "peaks": fit.peaks.iter().map(|p| json!({
            "center_nm": p.center_nm,
            "center_stderr_nm": p.center_stderr_nm,
            "amplitude": p.amplitude,
            "amplitude_stderr": p.amplitude_stderr,
            "fwhm_nm": p.fwhm_nm,
            "fwhm_stderr_nm": p.fwhm_stderr_nm,
            "area": p.area,
            "area_stderr": p.area_stderr,
        })).collect::<Vec<_>>(),
        "baseline_coefficients": fit.baseline.iter().map(|b| json!({
            "name": b.name,
            "value": b.value,
            "stderr": b.stderr,
        })).collect::<Vec<_>>(),
        "statistics": {
            "n_points": st.n_points,
            "n_params": st.n_params,
            "chi_square": st.chi_square,
            "reduced_chi_square": st.reduced_chi_square,
            "r_squared": st.r_squared,
            "aic": st.aic,
            "bic": st.bic,
            "evaluations": st.evaluations,
            "termination": st.termination,
            "covariance_ok": st.covariance_ok,
        },
        "model_selection": fit.model_selection.iter().map(|m| json!({
            "n_peaks": m.n_peaks,
            "bic": m.bic,
            "error": m.error,
        })).collect::<Vec<_>>(),
    });
    if let (Some(f), Some(obj)) = (cd, out.as_object_mut()) {
        obj.insert(
            "cd".into(),
            json!(args.cd.as_ref().map(|p| p.display().to_string())),
        );
        obj.insert(
            "exciton_wavelength_nm".into(),
            json!(f.exciton_wavelength_nm),
        );
        obj.insert("exciton_fwhm_nm".into(), json!(f.exciton_fwhm_nm));
        obj.insert(
            "absorbance_at_exciton".into(),
            json!(f.absorbance_at_exciton),
        );
        obj.insert("cd_at_exciton_mdeg".into(), json!(f.cd_at_exciton_mdeg));
        obj.insert("cd_extremum_mdeg".into(), json!(f.cd_extremum_mdeg));
        obj.insert(
            "cd_extremum_wavelength_nm".into(),
            json!(f.cd_extremum_wavelength_nm),
        );
        obj.insert("g_factor".into(), json!(f.g_factor));
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

fn print_table(args: &AnalyzeArgs, fit: &PeakFit, cd: Option<&maosic_analysis::Features>) {
    let st = &fit.statistics;
    println!(
        "{}: {} peak(s), {} line shape, {:?} baseline, {:.1}–{:.1} nm",
        args.spectrum.display(),
        fit.peaks.len(),
        fit.shape.name(),
        fit.baseline_kind,
        fit.window_nm.0,
        fit.window_nm.1
    );
    println!(
        "{:>12} {:>9} {:>12} {:>10} {:>10} {:>12}",
        "center (nm)", "± SE", "amplitude", "± SE", "FWHM (nm)", "area"
    );
    for p in &fit.peaks {
        println!(
            "{:>12.3} {:>9} {:>12.5} {:>10} {:>10.3} {:>12.5}",
            p.center_nm,
            opt(p.center_stderr_nm, 3),
            p.amplitude,
            opt(p.amplitude_stderr, 5),
            p.fwhm_nm,
            p.area
        );
    }
    println!(
        "R² {:.6}  reduced χ² {:.4e}  BIC {:.2}  ({} evaluations, {})",
        st.r_squared, st.reduced_chi_square, st.bic, st.evaluations, st.termination
    );
    if let Some(f) = cd {
        println!(
            "exciton {:.2} nm: CD {} mdeg, g-factor {}",
            f.exciton_wavelength_nm,
            opt(f.cd_at_exciton_mdeg, 4),
            opt(f.g_factor, 6)
        );
    }
}

/// Runs the analysis and prints the result.
pub fn run(args: AnalyzeArgs) -> Result<(), AnalyzeError> {
    let absorption = read_spectrum(&args.spectrum)?;
    let fit_settings = FitSettings {
        shape: args.model,
        peaks: args.peaks,
        baseline: args.baseline.into(),
        window_nm: args.window,
        ..FitSettings::default()
    };
    let (fit, features) = match &args.cd {
        None => {
            let fit =
                fit_peaks(&absorption, &fit_settings).map_err(|source| AnalyzeError::Fit {
                    path: args.spectrum.clone(),
                    source,
                })?;
            (fit, None)
        }
        Some(cd_path) => {
            let cd = read_spectrum(cd_path)?;
            let settings = AnalysisSettings {
                fit: fit_settings,
                ..AnalysisSettings::default()
            };
            let a = analyse_experiment(&absorption, Some(&cd), &settings).map_err(|source| {
                AnalyzeError::Analysis {
                    path: args.spectrum.clone(),
                    source,
                }
            })?;
            (a.absorption_fit, Some(a.features))
        }
    };
    if args.json {
        println!("{}", to_json(&args, &fit, features.as_ref()));
    } else {
        print_table(&args, &fit, features.as_ref());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_flag_parses_and_rejects() {
        assert_eq!(parse_window("400:650"), Ok((400.0, 650.0)));
        assert!(parse_window("650:400").is_err());
        assert!(parse_window("400").is_err());
        assert!(parse_window("a:b").is_err());
    }
}
