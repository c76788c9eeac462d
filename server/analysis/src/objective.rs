//! Campaign objectives: `maximize abs(cd_at_exciton)`-style expressions over features, constants
//! and arithmetic, parsed and checked once at campaign creation and evaluated per experiment.
//!
//! Grammar (case-insensitive keywords):
//! ```text
//! objective := ("maximize" | "maximise" | "minimize" | "minimise") expr
//! expr      := term (("+" | "-") term)*
//! term      := unary (("*" | "/") unary)*
//! unary     := "-" unary | power
//! power     := atom ("^" unary)?
//! atom      := number | feature | function "(" expr ("," expr)* ")" | "(" expr ")"
//! function  := abs | sqrt | ln | log10 | exp | min | max
//! ```

use std::fmt;

use thiserror::Error;

use crate::features::{Feature, Features};

/// Whether larger or smaller values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Maximize,
    Minimize,
}

/// Why an objective text was rejected, or could not be evaluated.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ObjectiveError {
    #[error("objective is empty; write e.g. `maximize abs(cd_at_exciton)`")]
    Empty,
    #[error("objective must start with `maximize` or `minimize` (found `{found}`)")]
    MissingDirection { found: String },
    #[error("unknown feature `{name}` at column {column}; known features: {known}")]
    UnknownFeature {
        name: String,
        column: usize,
        known: String,
    },
    #[error("unknown function `{name}` at column {column}; known functions: abs, sqrt, ln, log10, exp, min, max")]
    UnknownFunction { name: String, column: usize },
    #[error("function `{name}` takes {expected} argument(s), got {got} (column {column})")]
    WrongArity {
        name: &'static str,
        expected: usize,
        got: usize,
        column: usize,
    },
    #[error("syntax error at column {column}: expected {expected}, found {found}")]
    Syntax {
        column: usize,
        expected: &'static str,
        found: String,
    },
    #[error(
        "feature `{0}` is not available for this experiment (e.g. no CD spectrum was measured)"
    )]
    FeatureUnavailable(&'static str),
    #[error("objective evaluated to a non-finite number ({0})")]
    NonFinite(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Abs,
    Sqrt,
    Ln,
    Log10,
    Exp,
    Min,
    Max,
}

impl Func {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "abs" => Self::Abs,
            "sqrt" => Self::Sqrt,
            "ln" => Self::Ln,
            "log10" => Self::Log10,
            "exp" => Self::Exp,
            "min" => Self::Min,
            "max" => Self::Max,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Self::Abs => "abs",
            Self::Sqrt => "sqrt",
            Self::Ln => "ln",
            Self::Log10 => "log10",
            Self::Exp => "exp",
            Self::Min => "min",
            Self::Max => "max",
        }
    }
    fn arity(self) -> usize {
        match self {
            Self::Min | Self::Max => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Num(f64),
    Feature(Feature),
    Neg(Box<Expr>),
    Bin(char, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// A parsed, checked objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    direction: Direction,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
    End,
}

fn lex(s: &str) -> Result<Vec<(Tok, usize)>, ObjectiveError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let save = i;
                i += 1;
                if i < chars.len() && (chars[i] == '+' || chars[i] == '-') {
                    i += 1;
                }
                if i < chars.len() && chars[i].is_ascii_digit() {
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                } else {
                    i = save;
                }
            }
            let text: String = chars[start..i].iter().collect();
            let v: f64 = text.parse().map_err(|_| ObjectiveError::Syntax {
                column: col,
                expected: "a number",
                found: format!("`{text}`"),
            })?;
            out.push((Tok::Num(v), col));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push((Tok::Ident(text.to_ascii_lowercase()), col));
        } else if "+-*/^(),".contains(c) {
            out.push((Tok::Op(c), col));
            i += 1;
        } else {
            return Err(ObjectiveError::Syntax {
                column: col,
                expected: "a number, a name, an operator or a parenthesis",
                found: format!("`{c}`"),
            });
        }
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::End, |t| &t.0)
    }
    fn column(&self) -> usize {
        self.toks.get(self.pos).map_or(0, |t| t.1)
    }
    fn found(&self) -> String {
        match self.peek() {
            Tok::Num(v) => format!("number {v}"),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Op(c) => format!("`{c}`"),
            Tok::End => "end of input".into(),
        }
    }
    fn syntax(&self, expected: &'static str) -> ObjectiveError {
        ObjectiveError::Syntax {
            column: self.column(),
            expected,
            found: self.found(),
        }
    }
    fn eat(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Op(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, ObjectiveError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.syntax("a shallower expression (nesting limit 64)"));
        }
        let mut lhs = self.term()?;
        while let Tok::Op(op @ ('+' | '-')) = *self.peek() {
            self.pos += 1;
            let rhs = self.term()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Expr, ObjectiveError> {
        let mut lhs = self.unary()?;
        while let Tok::Op(op @ ('*' | '/')) = *self.peek() {
            self.pos += 1;
            let rhs = self.unary()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ObjectiveError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.syntax("a shallower expression (nesting limit 64)"));
        }
        let e = if self.eat('-') {
            Expr::Neg(Box::new(self.unary()?))
        } else if self.eat('+') {
            self.unary()?
        } else {
            let base = self.atom()?;
            if self.eat('^') {
                Expr::Bin('^', Box::new(base), Box::new(self.unary()?))
            } else {
                base
            }
        };
        self.depth -= 1;
        Ok(e)
    }

    fn atom(&mut self) -> Result<Expr, ObjectiveError> {
        let col = self.column();
        match self.peek().clone() {
            Tok::Num(v) => {
                self.pos += 1;
                Ok(Expr::Num(v))
            }
            Tok::Op('(') => {
                self.pos += 1;
                let e = self.expr()?;
                if !self.eat(')') {
                    return Err(self.syntax("`)`"));
                }
                Ok(e)
            }
            Tok::Ident(name) => {
                self.pos += 1;
                if *self.peek() == Tok::Op('(') {
                    self.pos += 1;
                    let func = Func::parse(&name).ok_or(ObjectiveError::UnknownFunction {
                        name: name.clone(),
                        column: col,
                    })?;
                    let mut args = vec![self.expr()?];
                    while self.eat(',') {
                        args.push(self.expr()?);
                    }
                    if !self.eat(')') {
                        return Err(self.syntax("`,` or `)`"));
                    }
                    if args.len() != func.arity() {
                        return Err(ObjectiveError::WrongArity {
                            name: func.name(),
                            expected: func.arity(),
                            got: args.len(),
                            column: col,
                        });
                    }
                    Ok(Expr::Call(func, args))
                } else if name == "pi" {
                    Ok(Expr::Num(std::f64::consts::PI))
                } else {
                    let f =
                        Feature::parse(&name).ok_or_else(|| ObjectiveError::UnknownFeature {
                            name: name.clone(),
                            column: col,
                            known: Feature::ALL
                                .iter()
                                .map(|f| f.name())
                                .collect::<Vec<_>>()
                                .join(", "),
                        })?;
                    Ok(Expr::Feature(f))
                }
            }
            _ => Err(self.syntax("a number, a feature, a function call or `(`")),
        }
    }
}

fn eval(e: &Expr, f: &Features) -> Result<f64, ObjectiveError> {
    Ok(match e {
        Expr::Num(v) => *v,
        Expr::Feature(k) => f
            .value(*k)
            .ok_or(ObjectiveError::FeatureUnavailable(k.name()))?,
        Expr::Neg(a) => -eval(a, f)?,
        Expr::Bin(op, a, b) => {
            let (x, y) = (eval(a, f)?, eval(b, f)?);
            match op {
                '+' => x + y,
                '-' => x - y,
                '*' => x * y,
                '/' => x / y,
                _ => x.powf(y),
            }
        }
        Expr::Call(func, args) => {
            let x = eval(&args[0], f)?;
            match func {
                Func::Abs => x.abs(),
                Func::Sqrt => x.sqrt(),
                Func::Ln => x.ln(),
                Func::Log10 => x.log10(),
                Func::Exp => x.exp(),
                Func::Min => x.min(eval(&args[1], f)?),
                Func::Max => x.max(eval(&args[1], f)?),
            }
        }
    })
}

fn collect(e: &Expr, out: &mut Vec<Feature>) {
    match e {
        Expr::Num(_) => {}
        Expr::Feature(k) => {
            if !out.contains(k) {
                out.push(*k);
            }
        }
        Expr::Neg(a) => collect(a, out),
        Expr::Bin(_, a, b) => {
            collect(a, out);
            collect(b, out);
        }
        Expr::Call(_, args) => args.iter().for_each(|a| collect(a, out)),
    }
}

impl Objective {
    /// Parses and checks an objective such as `maximize abs(cd_at_exciton)`.
    pub fn parse(text: &str) -> Result<Self, ObjectiveError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ObjectiveError::Empty);
        }
        let toks = lex(text)?;
        let direction = match &toks[0].0 {
            Tok::Ident(w) if w == "maximize" || w == "maximise" => Direction::Maximize,
            Tok::Ident(w) if w == "minimize" || w == "minimise" => Direction::Minimize,
            _ => {
                return Err(ObjectiveError::MissingDirection {
                    found: trimmed.split_whitespace().next().unwrap_or("").to_string(),
                })
            }
        };
        let mut p = Parser {
            toks,
            pos: 1,
            depth: 0,
        };
        let expr = p.expr()?;
        if *p.peek() != Tok::End {
            return Err(p.syntax("an operator or end of input"));
        }
        Ok(Self { direction, expr })
    }

    /// Whether the optimizer should maximise or minimise [`Objective::evaluate`].
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Features the expression reads (so a campaign can require a CD measurement, say).
    pub fn features(&self) -> Vec<Feature> {
        let mut v = Vec::new();
        collect(&self.expr, &mut v);
        v
    }

    /// Value of the expression on one experiment's features. Never NaN: a missing feature or a
    /// non-finite result (division by zero, sqrt of a negative) is an error.
    pub fn evaluate(&self, features: &Features) -> Result<f64, ObjectiveError> {
        let v = eval(&self.expr, features)?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(ObjectiveError::NonFinite(format!("{v} from `{self}`")))
        }
    }

    /// The value as a loss to minimise (the paper's L = −|CD| for `maximize abs(cd_at_exciton)`).
    pub fn loss(&self, features: &Features) -> Result<f64, ObjectiveError> {
        let v = self.evaluate(features)?;
        Ok(match self.direction {
            Direction::Maximize => -v,
            Direction::Minimize => v,
        })
    }
}

fn write_expr(e: &Expr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match e {
        Expr::Num(v) => write!(f, "{v}"),
        Expr::Feature(k) => write!(f, "{}", k.name()),
        Expr::Neg(a) => {
            write!(f, "-(")?;
            write_expr(a, f)?;
            write!(f, ")")
        }
        Expr::Bin(op, a, b) => {
            write!(f, "(")?;
            write_expr(a, f)?;
            write!(f, " {op} ")?;
            write_expr(b, f)?;
            write!(f, ")")
        }
        Expr::Call(func, args) => {
            write!(f, "{}(", func.name())?;
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write_expr(a, f)?;
            }
            write!(f, ")")
        }
    }
}

impl std::str::FromStr for Objective {
    type Err = ObjectiveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Objective {
    /// Canonical, fully parenthesised text that parses back to the same objective.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.direction {
            Direction::Maximize => write!(f, "maximize ")?,
            Direction::Minimize => write!(f, "minimize ")?,
        }
        write_expr(&self.expr, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Features {
        Features {
            exciton_wavelength_nm: 452.0,
            exciton_absorbance: 0.5,
            exciton_fwhm_nm: 20.0,
            absorbance_at_exciton: 0.8,
            cd_at_exciton_mdeg: Some(-1.0),
            cd_extremum_mdeg: Some(-1.2),
            cd_extremum_wavelength_nm: Some(448.0),
            g_factor: Some(-1.0 / (32980.0 * 0.8)),
            peak_count: 2,
            fit_r_squared: 0.999,
            fit_reduced_chi_square: 1e-4,
        }
    }

    #[test]
    fn paper_objective() {
        let o = Objective::parse("maximize abs(cd_at_exciton)").unwrap();
        assert_eq!(o.direction(), Direction::Maximize);
        assert_eq!(o.evaluate(&features()).unwrap(), 1.0);
        assert_eq!(o.loss(&features()).unwrap(), -1.0);
        assert_eq!(o.features(), vec![Feature::CdAtExciton]);
    }

    #[test]
    fn arithmetic_precedence_constants_and_functions() {
        let f = features();
        let cases = [
            ("minimize 1 + 2 * 3", 7.0),
            ("minimize (1 + 2) * 3", 9.0),
            ("minimize -2 ^ 2", -4.0),
            ("minimize 2 ^ 3 ^ 2", 512.0),
            ("minimize 10 / 4 - 1", 1.5),
            (
                "maximize abs(cd_extremum) - 0.1 * abs(exciton_wavelength_nm - 450)",
                1.0,
            ),
            (
                "maximise max(abs(cd_at_exciton_mdeg), 0.5) / exciton_absorbance",
                2.0,
            ),
            (
                "minimize min(1, 2) + sqrt(16) + log10(100) + ln(exp(1))",
                8.0,
            ),
            ("minimize 1.5e2 + .5", 150.5),
            ("MAXIMIZE ABS(CD_AT_EXCITON)", 1.0),
        ];
        for (text, want) in cases {
            let o = Objective::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let v = o.evaluate(&f).unwrap();
            assert!((v - want).abs() < 1e-12, "{text}: {v} vs {want}");
            // Display round-trips.
            let again = Objective::parse(&o.to_string()).unwrap();
            assert_eq!(again.evaluate(&f).unwrap(), v, "{o}");
        }
    }

    #[test]
    fn clear_errors() {
        assert_eq!(Objective::parse("  "), Err(ObjectiveError::Empty));
        assert!(matches!(
            Objective::parse("abs(cd_at_exciton)"),
            Err(ObjectiveError::MissingDirection { .. })
        ));
        match Objective::parse("maximize abs(cd_at_excitn)") {
            Err(ObjectiveError::UnknownFeature {
                name,
                column,
                known,
            }) => {
                assert_eq!(name, "cd_at_excitn");
                assert_eq!(column, 14);
                assert!(known.contains("cd_at_exciton"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Objective::parse("maximize foo(1)"),
            Err(ObjectiveError::UnknownFunction { .. })
        ));
        assert!(matches!(
            Objective::parse("maximize min(1)"),
            Err(ObjectiveError::WrongArity { .. })
        ));
        assert!(matches!(
            Objective::parse("maximize (1 + 2"),
            Err(ObjectiveError::Syntax { .. })
        ));
        assert!(matches!(
            Objective::parse("maximize 1 2"),
            Err(ObjectiveError::Syntax { .. })
        ));
        assert!(matches!(
            Objective::parse("maximize 1 $ 2"),
            Err(ObjectiveError::Syntax { column: 12, .. })
        ));
        let deep = format!("maximize {}1{}", "(".repeat(500), ")".repeat(500));
        assert!(Objective::parse(&deep).is_err());
    }

    #[test]
    fn evaluation_errors_instead_of_nan() {
        let mut f = features();
        f.cd_at_exciton_mdeg = None;
        assert_eq!(
            Objective::parse("maximize abs(cd_at_exciton)")
                .unwrap()
                .evaluate(&f),
            Err(ObjectiveError::FeatureUnavailable("cd_at_exciton"))
        );
        for text in ["minimize 1 / 0", "minimize sqrt(-1)", "minimize ln(0)"] {
            assert!(matches!(
                Objective::parse(text).unwrap().evaluate(&f),
                Err(ObjectiveError::NonFinite(_))
            ));
        }
    }
}
