//! The logic of the `maosic-server lang check|compile|fmt` subcommands, without I/O: callers pass
//! file contents in and print the returned stdout/stderr text and exit with the returned code.

use super::{
    compile as compile_src, diagnostic::render, format as format_src, has_errors, Bindings,
    Diagnostic, Severity,
};
use crate::capability::{DescriptorError, LabDescriptor};

/// What a subcommand prints and its exit code (0 ok, 1 error diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliOutcome {
    /// Text for standard output.
    pub stdout: String,
    /// Text for standard error.
    pub stderr: String,
    /// Process exit code.
    pub code: i32,
}

/// Parse one `--set NAME=VALUE` (also `$NAME=VALUE`; the value is in the unit the recipe declares).
pub fn parse_set(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`--set {s}`: expected NAME=VALUE, e.g. `--set T=130`"))?;
    let name = name.trim().trim_start_matches('$');
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(format!("`--set {s}`: `{name}` is not a variable name"));
    }
    let v: f64 = value.trim().parse().map_err(|_| {
        format!(
            "`--set {s}`: `{}` is not a number (give it in the unit the recipe declares)",
            value.trim()
        )
    })?;
    if !v.is_finite() {
        return Err(format!("`--set {s}`: the value must be finite"));
    }
    Ok((name.to_string(), v))
}

/// Parse every `--set`; a name given twice is an error.
pub fn parse_sets(sets: &[String]) -> Result<Bindings, String> {
    let mut b = Bindings::new();
    for s in sets {
        let (k, v) = parse_set(s)?;
        if b.insert(k.clone(), v).is_some() {
            return Err(format!("`--set {k}=...` is given twice"));
        }
    }
    Ok(b)
}

/// Load a lab descriptor: JSON if the file name ends in `.json`, TOML otherwise.
pub fn load_lab(file_name: &str, text: &str) -> Result<LabDescriptor, DescriptorError> {
    if file_name.to_ascii_lowercase().ends_with(".json") {
        LabDescriptor::from_json_str(text)
    } else {
        LabDescriptor::from_toml_str(text)
    }
}

fn summary(diags: &[Diagnostic]) -> String {
    let count = |s: Severity| diags.iter().filter(|d| d.severity == s).count();
    let (e, w, n) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Note),
    );
    let plural = |k: usize, w: &str| {
        if k == 1 {
            format!("{k} {w}")
        } else {
            format!("{k} {w}s")
        }
    };
    format!(
        "{}, {}, {}",
        plural(e, "error"),
        plural(w, "warning"),
        plural(n, "note")
    )
}

/// `lang check`: diagnostics on stderr, a one-line verdict on stdout.
pub fn check(file_name: &str, src: &str, lab: &LabDescriptor, bindings: &Bindings) -> CliOutcome {
    let diags = super::check(src, lab, bindings);
    let failed = has_errors(&diags);
    let stdout = format!(
        "{file_name}: {} against lab `{}` ({})\n",
        if failed { "FAILED" } else { "ok" },
        lab.name,
        summary(&diags)
    );
    CliOutcome {
        stdout,
        stderr: render(file_name, src, &diags),
        code: i32::from(failed),
    }
}

/// `lang compile`: the program as JSON (or a dry-run trace) on stdout, diagnostics on stderr.
pub fn compile(
    file_name: &str,
    src: &str,
    lab: &LabDescriptor,
    bindings: &Bindings,
    dry_run: bool,
) -> CliOutcome {
    let out = compile_src(src, lab, bindings);
    let stderr = render(file_name, src, &out.diagnostics);
    match out.program {
        Some(p) => CliOutcome {
            stdout: if dry_run {
                p.dry_run()
            } else {
                format!("{}\n", p.to_json_pretty())
            },
            stderr,
            code: 0,
        },
        None => CliOutcome {
            stdout: String::new(),
            stderr: format!(
                "{stderr}{file_name}: not compiled ({})\n",
                summary(&out.diagnostics)
            ),
            code: 1,
        },
    }
}

/// `lang fmt`: the canonical text on stdout, or syntax errors on stderr.
pub fn fmt(file_name: &str, src: &str) -> CliOutcome {
    match format_src(src) {
        Ok(text) => CliOutcome {
            stdout: text,
            stderr: String::new(),
            code: 0,
        },
        Err(diags) => CliOutcome {
            stdout: String::new(),
            stderr: render(file_name, src, &diags),
            code: 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = include_str!("../../../examples/paper-lab.toml");

    #[test]
    fn sets() {
        assert_eq!(parse_set("T=130").unwrap(), ("T".into(), 130.0));
        assert_eq!(parse_set("$C = 0.8").unwrap(), ("C".into(), 0.8));
        assert!(parse_set("T").is_err());
        assert!(parse_set("T=hot").is_err());
        assert!(parse_set("=1").is_err());
        assert!(parse_set("T=inf").is_err());
        assert!(parse_sets(&["T=1".into(), "T=2".into()]).is_err());
    }

    #[test]
    fn check_compile_fmt_exit_codes() {
        let lab = load_lab("paper-lab.toml", LAB).unwrap();
        let b = Bindings::new();
        let ok = check("x.recipe", "H[T = 130 °C]", &lab, &b);
        assert_eq!(ok.code, 0, "{ok:?}");
        assert!(ok.stdout.contains("ok against lab `paper-lab`"));
        let bad = check("x.recipe", "HH[T = 130 °C]", &lab, &b);
        assert_eq!(bad.code, 1);
        assert!(
            bad.stderr.contains("error[unknown-symbol]"),
            "{}",
            bad.stderr
        );
        assert!(bad.stderr.contains("did you mean `H`?"), "{}", bad.stderr);
        let c = compile("x.recipe", "H[T = 130 °C] . CD", &lab, &b, false);
        assert_eq!(c.code, 0);
        let p = crate::program::Program::from_json(&c.stdout).unwrap();
        assert_eq!(p.steps.len(), 2);
        let d = compile("x.recipe", "H[T = 130 °C] . CD", &lab, &b, true);
        assert!(
            d.stdout.contains("H.set_temperature(T=130)"),
            "{}",
            d.stdout
        );
        let e = compile("x.recipe", "H[T = 500 °C]", &lab, &b, false);
        assert_eq!(e.code, 1);
        assert!(e.stdout.is_empty());
        let f = fmt("x.recipe", "H[T=130 °C]·CD");
        assert_eq!(f.stdout, "H[T = 130 °C]\n. CD\n");
        assert_eq!(fmt("x.recipe", "H[").code, 1);
    }

    #[test]
    fn json_lab() {
        let lab = load_lab("paper-lab.toml", LAB).unwrap();
        let json = serde_json::to_string(&lab).unwrap();
        assert_eq!(load_lab("lab.JSON", &json).unwrap(), lab);
        assert!(load_lab("lab.toml", &json).is_err());
    }
}
