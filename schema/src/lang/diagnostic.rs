//! Diagnostics of the instruction language: spans, kinds, chemist-readable messages and hints;
//! conversion to serde-friendly line/column reports (GraphQL, editor) and rendering like compiler
//! errors (codespan-reporting, plain text).

use serde::{Deserialize, Serialize};

/// A byte range in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end` (swapped if reversed).
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start: start.min(end),
            end: start.max(end),
        }
    }
    /// Smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Compilation fails.
    Error,
    /// Compiles, but probably not what was meant.
    Warning,
    /// For information.
    Note,
}

/// The kind of a diagnostic; its stable machine-readable code is [`Code::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// Unexpected token.
    Syntax,
    /// `(`, `[` or `{` never closed.
    UnclosedDelimiter,
    /// A character that is not part of the language.
    InvalidCharacter,
    /// A number that cannot be represented.
    InvalidNumber,
    /// Nesting deeper than the parser allows.
    TooDeep,
    /// Symbol not declared by the lab.
    UnknownSymbol,
    /// Method not offered by the device.
    UnknownMethod,
    /// Parameter not accepted by the method.
    UnknownParameter,
    /// Parameter given twice.
    DuplicateParameter,
    /// Required parameter not given.
    MissingParameter,
    /// Unit not known.
    UnknownUnit,
    /// A dimensioned parameter given as a bare number.
    MissingUnit,
    /// Quantities of different dimensions combined, or a parameter given the wrong kind of value.
    UnitMismatch,
    /// Value outside the device's range.
    OutOfRange,
    /// `$name` not declared.
    UndefinedVariable,
    /// Declared variable with no value at compile time.
    UnboundVariable,
    /// A bound value outside the recipe's declared range.
    VariableOutOfRange,
    /// A variable declared twice.
    DuplicateVariable,
    /// A value given for a variable the recipe does not declare.
    UnknownBinding,
    /// A recipe header range that is empty or has a non-positive step.
    BadRange,
    /// `+` applied to something that carries no stream.
    JoinNonStream,
    /// `->` with a left side that carries no stream.
    FlowFromNonStream,
    /// `->` into a device a stream cannot pass through.
    FlowIntoNonFlow,
    /// The same device asked to do two things at once.
    DeviceConflict,
    /// Repeat count not a whole number in 1..=1000.
    BadRepeat,
    /// A value that is not a finite number (division by zero ...).
    NonFinite,
    /// The program would have too many steps.
    TooManySteps,
    /// Rounding to the device grid loses the campaign's resolution.
    ResolutionLoss,
    /// A literal value was rounded to the device grid.
    Rounded,
    /// A declared variable is never used.
    UnusedVariable,
}

impl Code {
    /// Stable machine-readable code (kebab case).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "syntax",
            Code::UnclosedDelimiter => "unclosed-delimiter",
            Code::InvalidCharacter => "invalid-character",
            Code::InvalidNumber => "invalid-number",
            Code::TooDeep => "too-deep",
            Code::UnknownSymbol => "unknown-symbol",
            Code::UnknownMethod => "unknown-method",
            Code::UnknownParameter => "unknown-parameter",
            Code::DuplicateParameter => "duplicate-parameter",
            Code::MissingParameter => "missing-parameter",
            Code::UnknownUnit => "unknown-unit",
            Code::MissingUnit => "missing-unit",
            Code::UnitMismatch => "unit-mismatch",
            Code::OutOfRange => "out-of-range",
            Code::UndefinedVariable => "undefined-variable",
            Code::UnboundVariable => "unbound-variable",
            Code::VariableOutOfRange => "variable-out-of-range",
            Code::DuplicateVariable => "duplicate-variable",
            Code::UnknownBinding => "unknown-binding",
            Code::BadRange => "bad-range",
            Code::JoinNonStream => "join-non-stream",
            Code::FlowFromNonStream => "flow-from-non-stream",
            Code::FlowIntoNonFlow => "flow-into-non-flow",
            Code::DeviceConflict => "device-conflict",
            Code::BadRepeat => "bad-repeat",
            Code::NonFinite => "non-finite",
            Code::TooManySteps => "too-many-steps",
            Code::ResolutionLoss => "resolution-loss",
            Code::Rounded => "rounded",
            Code::UnusedVariable => "unused-variable",
        }
    }
}

/// One finding about a source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Kind.
    pub code: Code,
    /// Seriousness.
    pub severity: Severity,
    /// Where.
    pub span: Span,
    /// What is wrong, in words a chemist understands.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// Other places worth pointing at.
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    /// An error.
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Error, code, span, message)
    }
    /// A warning.
    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Warning, code, span, message)
    }
    /// A note.
    pub fn note(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Note, code, span, message)
    }
    fn new(severity: Severity, code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity,
            span,
            message: message.into(),
            hint: None,
            related: vec![],
        }
    }
    /// Attach a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }
    /// Point at another place.
    pub fn with_related(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.related.push((span, label.into()));
        self
    }
    /// Is it an error?
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Does the list contain an error?
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}

/// A serde-friendly diagnostic with 1-based line/column positions (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticReport {
    /// Stable kind code, e.g. `unknown-symbol`.
    pub code: String,
    /// `error`, `warning` or `note`.
    pub severity: Severity,
    /// The message.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// 1-based start line.
    pub line: u32,
    /// 1-based start column.
    pub column: u32,
    /// 1-based end line.
    pub end_line: u32,
    /// 1-based end column (exclusive).
    pub end_column: u32,
}

/// 1-based (line, column) of a byte offset; columns count characters. Offsets past the end or
/// inside a character are clamped.
pub fn line_col(src: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..offset].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

impl Diagnostic {
    /// Convert to a line/column report against `src`.
    pub fn report(&self, src: &str) -> DiagnosticReport {
        let (line, column) = line_col(src, self.span.start);
        let (end_line, end_column) = line_col(src, self.span.end);
        DiagnosticReport {
            code: self.code.as_str().to_string(),
            severity: self.severity,
            message: self.message.clone(),
            hint: self.hint.clone(),
            line,
            column,
            end_line,
            end_column,
        }
    }
}

/// Render diagnostics as plain-text compiler messages (codespan-reporting), with the offending
/// source lines underlined.
pub fn render(file_name: &str, src: &str, diags: &[Diagnostic]) -> String {
    use codespan_reporting::diagnostic as cs;
    use codespan_reporting::files::SimpleFile;
    use codespan_reporting::term;

    let file = SimpleFile::new(file_name, src);
    let config = term::Config::default();
    let mut out = String::new();
    let clamp = |s: Span| {
        let mut a = s.start.min(src.len());
        let mut b = s.end.min(src.len());
        while !src.is_char_boundary(a) {
            a -= 1;
        }
        while !src.is_char_boundary(b) {
            b += 1;
        }
        a..b
    };
    for d in diags {
        let sev = match d.severity {
            Severity::Error => cs::Severity::Error,
            Severity::Warning => cs::Severity::Warning,
            Severity::Note => cs::Severity::Note,
        };
        let mut labels = vec![cs::Label::primary((), clamp(d.span))];
        for (s, l) in &d.related {
            labels.push(cs::Label::secondary((), clamp(*s)).with_message(l.clone()));
        }
        let mut notes = Vec::new();
        if let Some(h) = &d.hint {
            notes.push(format!("hint: {h}"));
        }
        let diag = cs::Diagnostic::new(sev)
            .with_code(d.code.as_str())
            .with_message(d.message.clone())
            .with_labels(labels)
            .with_notes(notes);
        if term::emit_to_string(&mut out, &config, &file, &diag).is_err() {
            // Fall back to a one-line form if the renderer rejects a span.
            let (l, c) = line_col(src, d.span.start);
            out.push_str(&format!(
                "{file_name}:{l}:{c}: {}: {}\n",
                d.code.as_str(),
                d.message
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let src = "ab\n°C x";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 3), (2, 1));
        assert_eq!(line_col(src, 6), (2, 3)); // after "°C" (° is 2 bytes)
        assert_eq!(line_col(src, 4), (2, 1)); // inside ° → clamped back
        assert_eq!(line_col(src, 999), (2, 5));
    }

    #[test]
    fn renders_like_a_compiler() {
        let src = "X[a = 1]";
        let d = Diagnostic::error(Code::UnknownSymbol, Span::new(0, 1), "no device `X`")
            .with_hint("did you mean `H`?");
        let out = render("r.recipe", src, &[d]);
        assert!(
            out.contains("error[unknown-symbol]: no device `X`"),
            "{out}"
        );
        assert!(out.contains("r.recipe:1:1"), "{out}");
        assert!(out.contains("hint: did you mean `H`?"), "{out}");
    }
}
