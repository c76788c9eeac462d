//! Parsing of two-column spectrum text (header row, then `wavelength_nm, value` rows) into a
//! [`Spectrum`]. Works on a string the caller has read; no file I/O here.

use thiserror::Error;

use crate::spectrum::{Spectrum, SpectrumError};

/// Why a spectrum text could not be parsed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CsvError {
    #[error("line {line}: expected two columns (wavelength in nm, value), found {found}")]
    Columns { line: usize, found: usize },
    #[error("line {line}: `{text}` is not a number")]
    NotANumber { line: usize, text: String },
    #[error("no data rows after the header")]
    NoData,
    #[error(transparent)]
    Spectrum(#[from] SpectrumError),
}

fn split(line: &str) -> Vec<&str> {
    let sep: &[char] = if line.contains(',') {
        &[',']
    } else if line.contains(';') {
        &[';']
    } else if line.contains('\t') {
        &['\t']
    } else {
        &[' ']
    };
    line.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses CSV text with a header row and two columns: wavelength (nm) and value. Comma, semicolon,
/// tab or space separated; blank lines and lines starting with `#` are skipped. A first row that
/// parses as numbers is accepted as data (header optional). Descending axes are reversed.
pub fn parse_spectrum_csv(text: &str) -> Result<Spectrum, CsvError> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim().trim_start_matches('\u{feff}');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols = split(line);
        let header = std::mem::replace(&mut first, false);
        let parsed: Option<Vec<f64>> = cols.iter().map(|c| c.parse::<f64>().ok()).collect();
        match parsed {
            Some(v) if v.len() == 2 => {
                x.push(v[0]);
                y.push(v[1]);
            }
            Some(v) => {
                return Err(CsvError::Columns {
                    line: i + 1,
                    found: v.len(),
                })
            }
            None if header => {}
            None => {
                if cols.len() != 2 {
                    return Err(CsvError::Columns {
                        line: i + 1,
                        found: cols.len(),
                    });
                }
                let bad = cols
                    .iter()
                    .find(|c| c.parse::<f64>().is_err())
                    .copied()
                    .unwrap_or_default();
                return Err(CsvError::NotANumber {
                    line: i + 1,
                    text: bad.to_string(),
                });
            }
        }
    }
    if x.is_empty() {
        return Err(CsvError::NoData);
    }
    Ok(Spectrum::new(x, y)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_layouts() {
        let s = parse_spectrum_csv(
            "wavelength_nm,absorbance\n400,0.1\n401,0.2\n\n# note\n402,0.3\n403,0.2\n404,0.1\n",
        )
        .unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s.values()[2], 0.3);
        let s = parse_spectrum_csv("nm\tmdeg\n404\t1\n403\t2\n402\t3\n401\t4\n400\t5").unwrap();
        assert_eq!(s.wavelength_nm()[0], 400.0);
        assert_eq!(s.values()[0], 5.0);
        let s = parse_spectrum_csv("400 1e-3\n401 2e-3\n402 3e-3\n403 4e-3\n404 5e-3").unwrap();
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn reports_line_numbers() {
        assert_eq!(
            parse_spectrum_csv("a,b\n400,1\n401,x\n"),
            Err(CsvError::NotANumber {
                line: 3,
                text: "x".into()
            })
        );
        assert_eq!(
            parse_spectrum_csv("a,b\n400,1,2\n"),
            Err(CsvError::Columns { line: 2, found: 3 })
        );
        assert_eq!(parse_spectrum_csv("a,b\n"), Err(CsvError::NoData));
        assert!(matches!(
            parse_spectrum_csv("a,b\n400,1\n"),
            Err(CsvError::Spectrum(SpectrumError::TooFewPoints { .. }))
        ));
        assert!(matches!(
            parse_spectrum_csv("a,b\n400,1\n400,2\n401,1\n402,1\n403,1\n"),
            Err(CsvError::Spectrum(SpectrumError::NotMonotonic { .. }))
        ));
    }
}
