//! Checker and compiler: resolves a parsed formula against a lab's capability descriptor, checks
//! units, ranges, required parameters and operator use, rounds values to device grids, schedules
//! the calls into a timed DAG and emits the low-level [`Program`].
//!
//! Variables a recipe declares but that have no value are explored over the corners of their
//! declared ranges (check mode), so range errors show up before an optimizer picks a point.

use super::ast::*;
use super::diagnostic::{has_errors, Code, Diagnostic, Span};
use super::parser::parse;
use crate::capability::{DeviceDescriptor, LabDescriptor, MethodDescriptor, ParamDescriptor};
use crate::program::{BoundVariable, Program, RpcRequest, Step, PROGRAM_FORMAT};
use crate::units::{Dim, Unit};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Values for a recipe's variables, by name (without `$`), in the units the recipe declares.
pub type Bindings = BTreeMap<String, f64>;

/// Most steps a program may have.
pub const MAX_STEPS: usize = 10_000;
/// Largest repeat count.
pub const MAX_REPEAT: f64 = 1000.0;
/// Most module visits plus dependency edges a compilation may do.
const MAX_WORK: usize = 100_000;
/// Unbound variables explored at both range ends (more are held at mid-range).
const MAX_CORNER_VARS: usize = 6;

/// What to do with variables that have no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Explore them over their declared ranges; never emit a program.
    Check,
    /// They are errors; emit a program when there is no error.
    Compile,
}

/// Result of checking or compiling.
#[derive(Debug, Clone)]
pub struct Output {
    /// The program (compile mode, no errors).
    pub program: Option<Program>,
    /// Everything found, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

/// Check or compile `src` against `lab` with `bindings`.
pub fn analyze(src: &str, lab: &LabDescriptor, bindings: &Bindings, mode: Mode) -> Output {
    let parsed = parse(src);
    let mut diagnostics = parsed.diagnostics;
    let file = match parsed.file {
        Some(f) if !has_errors(&diagnostics) => f,
        // A text with lexical errors has a doubtful tree: report those first.
        _ => {
            return Output {
                program: None,
                diagnostics,
            }
        }
    };
    let mut cx = Ctx::new(src, lab);
    cx.header(&file, bindings, mode);
    let _ = cx.formula(&file.formula);
    cx.conflicts();
    cx.unused();
    let program = if mode == Mode::Compile && !has_errors(&diagnostics) && !has_errors(&cx.diags) {
        cx.program(&file)
    } else {
        None
    };
    diagnostics.append(&mut cx.diags);
    diagnostics.sort_by_key(|d| (d.span.start, d.span.end, d.severity));
    Output {
        program,
        diagnostics,
    }
}

/// The closest candidate to `word` (case-insensitive match first, then edit distance).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lw = word.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let lc = c.to_lowercase();
        if lc == lw {
            return Some(c);
        }
        let d = strsim::damerau_levenshtein(&lw, &lc);
        let limit = (word.chars().count().max(c.chars().count()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn suggestion(word: &str, candidates: Vec<&str>) -> Option<String> {
    did_you_mean(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// Round `v` to the grid `min + k * res` inside `[min, max]`, without float noise.
pub fn round_to_grid(v: f64, min: f64, max: f64, res: f64) -> f64 {
    if res.is_nan() || res <= 0.0 || !v.is_finite() {
        return v;
    }
    let k = ((v - min) / res).round();
    let mut r = min + k * res;
    if r > max + 1e-9 * res {
        r = min + (k - 1.0) * res;
    }
    if r < min {
        r = min;
    }
    let prec = decimals(res).max(decimals(min));
    format!("{r:.prec$}").parse().unwrap_or(r)
}

fn decimals(x: f64) -> usize {
    let s = format!("{x}");
    s.split_once('.').map(|(_, d)| d.len()).unwrap_or(0).min(12)
}

fn fmt_num(v: f64) -> String {
    // Shortest form with at most 6 significant decimals, for messages.
    let r = (v * 1e6).round() / 1e6;
    format!("{r}")
}

fn with_unit(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        fmt_num(v)
    } else {
        format!("{} {unit}", fmt_num(v))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Stream,
    NoStream,
    Unknown,
}

#[derive(Debug, Clone, Default)]
struct Frag {
    heads: Vec<usize>,
    tails: Vec<usize>,
}

#[derive(Debug, Clone)]
struct VarInfo {
    name: String,
    unit: Option<Unit>,
    unit_text: String,
    lo: f64,
    hi: f64,
    step: Option<f64>,
    name_span: Span,
    used: bool,
}

#[derive(Debug, Clone)]
struct LetInfo {
    name: String,
    value: Expr,
    dim: Option<Dim>,
    deps: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct PendingStep {
    method: String,
    params: BTreeMap<String, f64>,
    after: BTreeSet<usize>,
    duration_ms: u64,
    setpoint: bool,
    yields: Vec<String>,
    line: u32,
    span: Span,
}

type Env = BTreeMap<String, f64>;

struct Ctx<'a> {
    /// Byte offsets where lines start (for step line numbers).
    line_starts: Vec<usize>,
    lab: &'a LabDescriptor,
    diags: Vec<Diagnostic>,
    quiet: u32,
    vars: Vec<VarInfo>,
    lets: Vec<LetInfo>,
    /// Header values (declared units) of each scenario; scenario 0 is the bound point when `bound`.
    scenarios: Vec<BTreeMap<String, f64>>,
    envs: Vec<Env>,
    bound: bool,
    steps: Vec<PendingStep>,
    too_many: bool,
    /// Module visits and dependency edges so far (bounds the work on hostile input).
    work: usize,
}

impl<'a> Ctx<'a> {
    fn new(src: &str, lab: &'a LabDescriptor) -> Self {
        Ctx {
            line_starts: std::iter::once(0)
                .chain(src.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            lab,
            diags: vec![],
            quiet: 0,
            vars: vec![],
            lets: vec![],
            scenarios: vec![],
            envs: vec![],
            bound: true,
            steps: vec![],
            too_many: false,
            work: 0,
        }
    }

    fn push(&mut self, d: Diagnostic) {
        if self.quiet == 0 {
            self.diags.push(d);
        }
    }

    // ------------------------------------------------------------------ header, bindings, lets

    fn header(&mut self, file: &SourceFile, bindings: &Bindings, mode: Mode) {
        let anchor = file
            .recipe
            .as_ref()
            .map(|r| r.name_span)
            .unwrap_or_default();
        if let Some(r) = &file.recipe {
            for v in &r.vars {
                if self.vars.iter().any(|x| x.name == v.name) {
                    self.push(
                        Diagnostic::error(
                            Code::DuplicateVariable,
                            v.name_span,
                            format!("the variable `{}` is declared twice", v.name),
                        )
                        .with_hint("give each variable its own name"),
                    );
                    continue;
                }
                let unit = Unit::parse(&v.unit);
                if unit.is_none() {
                    self.unknown_unit(&v.unit, v.unit_span);
                }
                if !(v.lo.is_finite() && v.hi.is_finite()) || v.lo > v.hi {
                    self.push(
                        Diagnostic::error(
                            Code::BadRange,
                            v.span,
                            format!("the range {}..{} of `{}` is empty", v.lo, v.hi, v.name),
                        )
                        .with_hint("write the lower bound first, e.g. `in 90..180`"),
                    );
                }
                if let Some(s) = v.step {
                    if !(s > 0.0 && s.is_finite()) {
                        self.push(
                            Diagnostic::error(
                                Code::BadRange,
                                v.span,
                                format!("the step of `{}` must be positive, got {s}", v.name),
                            )
                            .with_hint("the step is the smallest change the optimizer makes, e.g. `step 0.5`"),
                        );
                    }
                }
                self.vars.push(VarInfo {
                    name: v.name.clone(),
                    unit,
                    unit_text: v.unit.clone(),
                    lo: v.lo,
                    hi: v.hi,
                    step: v.step.filter(|s| *s > 0.0 && s.is_finite()),
                    name_span: v.name_span,
                    used: false,
                });
            }
        }

        // Bindings.
        for (name, value) in bindings {
            let Some(v) = self.vars.iter().find(|v| &v.name == name).cloned() else {
                let names: Vec<&str> = self.vars.iter().map(|v| v.name.as_str()).collect();
                let mut d = Diagnostic::error(
                    Code::UnknownBinding,
                    anchor,
                    format!(
                        "a value was given for `{name}`, but the recipe declares no such variable"
                    ),
                );
                d = match suggestion(name, names.clone()) {
                    Some(s) => d.with_hint(s),
                    None if names.is_empty() => d.with_hint("this text declares no variables"),
                    None => d.with_hint(format!("the recipe declares {}", names.join(", "))),
                };
                self.push(d);
                continue;
            };
            if !value.is_finite() || *value < v.lo || *value > v.hi {
                self.push(
                    Diagnostic::error(
                        Code::VariableOutOfRange,
                        v.name_span,
                        format!(
                            "${} = {} lies outside its declared range {}..{}",
                            v.name,
                            with_unit(*value, &v.unit_text),
                            v.lo,
                            with_unit(v.hi, &v.unit_text)
                        ),
                    )
                    .with_hint(
                        "choose a value inside the range, or widen the range in the recipe header",
                    ),
                );
            }
        }

        // Scenarios.
        let mut base: BTreeMap<String, f64> = BTreeMap::new();
        let mut corners: Vec<&VarInfo> = Vec::new();
        for v in &self.vars {
            match bindings.get(&v.name) {
                Some(x) => {
                    base.insert(v.name.clone(), *x);
                }
                None => {
                    if mode == Mode::Compile {
                        self.diags.push(
                            Diagnostic::error(
                                Code::UnboundVariable,
                                v.name_span,
                                format!("${} has no value", v.name),
                            )
                            .with_hint(format!(
                                "give it one, e.g. `--set {}={}` (allowed {}..{})",
                                v.name,
                                fmt_num((v.lo + v.hi) / 2.0),
                                v.lo,
                                with_unit(v.hi, &v.unit_text)
                            )),
                        );
                    }
                    if corners.len() < MAX_CORNER_VARS {
                        corners.push(v);
                    } else {
                        base.insert(v.name.clone(), (v.lo + v.hi) / 2.0);
                    }
                }
            }
        }
        self.bound = corners.is_empty();
        let mut scen = vec![base];
        for v in corners {
            let mut next = Vec::new();
            for s in &scen {
                let mut a = s.clone();
                a.insert(v.name.clone(), v.lo);
                next.push(a);
                if v.hi != v.lo {
                    let mut b = s.clone();
                    b.insert(v.name.clone(), v.hi);
                    next.push(b);
                }
            }
            scen = next;
        }
        self.scenarios = scen;

        // Lets.
        for l in &file.lets {
            if self.vars.iter().any(|v| v.name == l.name)
                || self.lets.iter().any(|x| x.name == l.name)
            {
                self.push(
                    Diagnostic::error(
                        Code::DuplicateVariable,
                        l.name_span,
                        format!("`${}` is already defined", l.name),
                    )
                    .with_hint("give the new value its own name"),
                );
                continue;
            }
            let mut deps = BTreeSet::new();
            let dim = self.dim_of(&l.value, &mut deps);
            self.lets.push(LetInfo {
                name: l.name.clone(),
                value: l.value.clone(),
                dim,
                deps,
            });
        }
        self.envs = self.scenarios.iter().map(|s| self.env_for(s)).collect();
        for l in &file.lets {
            if let Some(k) = (0..self.envs.len()).find(|&k| {
                self.envs[k].get(&l.name).is_some_and(|v| !v.is_finite())
                    && self
                        .lets
                        .iter()
                        .any(|x| x.name == l.name && x.dim.is_some())
            }) {
                let deps = self
                    .lets
                    .iter()
                    .find(|x| x.name == l.name)
                    .map(|x| x.deps.clone())
                    .unwrap_or_default();
                let why = self.because(k, &deps);
                self.push(
                    Diagnostic::error(
                        Code::NonFinite,
                        l.value.span(),
                        format!("`${}` is not a finite number{why}", l.name),
                    )
                    .with_hint("check for a division by zero"),
                );
            }
        }
    }

    /// SI values of header variables and lets for one scenario (NaN where undefined).
    fn env_for(&self, header: &BTreeMap<String, f64>) -> Env {
        let mut env = Env::new();
        for v in &self.vars {
            let si = match (&v.unit, header.get(&v.name)) {
                (Some(u), Some(x)) => u.to_si(*x),
                _ => f64::NAN,
            };
            env.insert(v.name.clone(), si);
        }
        for l in &self.lets {
            let x = if l.dim.is_some() {
                eval(&l.value, &env)
            } else {
                f64::NAN
            };
            env.insert(l.name.clone(), x);
        }
        env
    }

    /// " (from $C = 1.2 mmol/ml, $T = 130 °C)" for the variables in `deps` in scenario `k`.
    fn because(&self, k: usize, deps: &BTreeSet<String>) -> String {
        let Some(s) = self.scenarios.get(k) else {
            return String::new();
        };
        let parts: Vec<String> = self
            .vars
            .iter()
            .filter(|v| deps.contains(&v.name))
            .filter_map(|v| {
                s.get(&v.name)
                    .map(|x| format!("${} = {}", v.name, with_unit(*x, &v.unit_text)))
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" (from {})", parts.join(", "))
        }
    }

    fn unknown_unit(&mut self, text: &str, span: Span) {
        let mut d = Diagnostic::error(Code::UnknownUnit, span, format!("unknown unit `{text}`"));
        let atoms: Vec<&str> = Unit::known_atoms().collect();
        let bad: Vec<&str> = text
            .split('/')
            .filter(|a| Unit::parse(a).is_none())
            .collect();
        let fixed: Option<String> = if bad.len() == 1 && !text.contains("°C/") {
            did_you_mean(bad[0], atoms.iter().copied()).map(|s| text.replacen(bad[0], s, 1))
        } else {
            None
        };
        d = match fixed {
            Some(f) if Unit::parse(&f).is_some() => d.with_hint(format!("did you mean `{f}`?")),
            _ => d.with_hint("known units: uL/min, mL, uL, °C, K, mmol/ml, M, nm, ms, s, min, h, %, mW, Hz (°C cannot be combined with `/`)"),
        };
        self.push(d);
    }

    /// Dimension of an expression (None if it has an error), collecting header variables it depends on.
    fn dim_of(&mut self, e: &Expr, deps: &mut BTreeSet<String>) -> Option<Dim> {
        match e {
            Expr::Number { unit: None, .. } => Some(Dim::NONE),
            Expr::Number {
                unit: Some((u, us)),
                ..
            } => match Unit::parse(u) {
                Some(unit) => Some(unit.dim),
                None => {
                    self.unknown_unit(u, *us);
                    None
                }
            },
            Expr::Var { name, span } => {
                if let Some(l) = self.lets.iter().find(|l| &l.name == name) {
                    deps.extend(l.deps.iter().cloned());
                    return l.dim;
                }
                if let Some(v) = self.vars.iter_mut().find(|v| &v.name == name) {
                    v.used = true;
                    deps.insert(name.clone());
                    return v.unit.as_ref().map(|u| u.dim);
                }
                let names: Vec<&str> = self
                    .vars
                    .iter()
                    .map(|v| v.name.as_str())
                    .chain(self.lets.iter().map(|l| l.name.as_str()))
                    .collect();
                let mut d = Diagnostic::error(
                    Code::UndefinedVariable,
                    *span,
                    format!("`${name}` is not defined"),
                );
                d = match did_you_mean(name, names) {
                    Some(c) => d.with_hint(format!("did you mean `${c}`?")),
                    None => d.with_hint(format!(
                        "declare it in the recipe header, e.g. `recipe r({name}: °C in 90..180 step 0.5)`, or with `let ${name} = ...;`"
                    )),
                };
                self.push(d);
                None
            }
            Expr::Neg { expr, .. } => self.dim_of(expr, deps),
            Expr::Binary { op, lhs, rhs, span } => {
                let a = self.dim_of(lhs, deps);
                let b = self.dim_of(rhs, deps);
                let (a, b) = (a?, b?);
                match op {
                    ExprOp::Add | ExprOp::Sub => {
                        if a != b {
                            let verb = if *op == ExprOp::Add {
                                "add"
                            } else {
                                "subtract"
                            };
                            self.push(
                                Diagnostic::error(
                                    Code::UnitMismatch,
                                    *span,
                                    format!("cannot {verb} {} and {}", a.describe(), b.describe()),
                                )
                                .with_hint("both sides need the same kind of unit (uL/min with mL/h is fine, °C with uL is not)"),
                            );
                            return None;
                        }
                        Some(a)
                    }
                    ExprOp::Mul => Some(a.times(b)),
                    ExprOp::Div => Some(a.per(b)),
                }
            }
        }
    }

    // ------------------------------------------------------------------ formula

    fn describe(&self, f: &Formula) -> String {
        match f {
            Formula::Module(m) => match self.lab.device(&m.symbol) {
                Some(d) => format!("`{}` (the {})", m.symbol, d.kind.noun()),
                None => format!("`{}`", m.symbol),
            },
            Formula::Binary {
                op: FormulaOp::Seq, ..
            } => "a sequence (`.`)".into(),
            Formula::Binary {
                op: FormulaOp::Par, ..
            } => "a parallel group (`|`)".into(),
            Formula::Repeat { .. } => "a repetition (`n *`)".into(),
            Formula::Binary { .. } => "this group".into(),
        }
    }

    fn formula(&mut self, f: &Formula) -> (Frag, Ty) {
        if self.too_many {
            return (Frag::default(), Ty::Unknown);
        }
        match f {
            Formula::Module(m) => {
                if !self.charge(1, m.span) {
                    return (Frag::default(), Ty::Unknown);
                }
                self.module(m)
            }
            Formula::Repeat {
                count,
                count_span,
                body,
                ..
            } => {
                let n = if count.fract() == 0.0 && *count >= 1.0 && *count <= MAX_REPEAT {
                    *count as usize
                } else {
                    self.push(
                        Diagnostic::error(
                            Code::BadRepeat,
                            *count_span,
                            format!("cannot repeat something {} times", fmt_num(*count)),
                        )
                        .with_hint(format!(
                            "the repeat count must be a whole number from 1 to {MAX_REPEAT}"
                        )),
                    );
                    1
                };
                let (mut acc, _) = self.formula(body);
                // A body that yields no step (e.g. only unknown modules) has nothing to repeat.
                let n = if acc.heads.is_empty() && acc.tails.is_empty() {
                    1
                } else {
                    n
                };
                self.quiet += 1;
                for _ in 1..n {
                    if self.too_many {
                        break;
                    }
                    let (next, _) = self.formula(body);
                    acc = self.seq(acc, next);
                }
                self.quiet -= 1;
                (acc, Ty::NoStream)
            }
            Formula::Binary { op, lhs, rhs, .. } => {
                let (l, lt) = self.formula(lhs);
                let (r, rt) = self.formula(rhs);
                match op {
                    FormulaOp::Seq => (self.seq(l, r), Ty::NoStream),
                    FormulaOp::Par => (union(l, r), Ty::NoStream),
                    FormulaOp::Join => {
                        for (side, t) in [(lhs, lt), (rhs, rt)] {
                            if t == Ty::NoStream {
                                let what = self.describe(side);
                                let hint = match side.as_ref() {
                                    Formula::Module(m) if self.lab.device(&m.symbol).is_some_and(|d| d.flow) => format!(
                                        "to send a stream through `{0}`, use `->`: `(P1[...] + P2[...]) -> {0}[...]`",
                                        m.symbol
                                    ),
                                    _ => "only stream sources (pumps) and flow paths can be joined; use `.` to run one after the other or `|` to run both at once".into(),
                                };
                                self.push(
                                    Diagnostic::error(
                                        Code::JoinNonStream,
                                        side.span(),
                                        format!("`+` joins streams, but {what} carries no stream"),
                                    )
                                    .with_hint(hint),
                                );
                            }
                        }
                        (union(l, r), Ty::Stream)
                    }
                    FormulaOp::Flow => {
                        if lt == Ty::NoStream {
                            let what = self.describe(lhs);
                            self.push(
                                Diagnostic::error(
                                    Code::FlowFromNonStream,
                                    lhs.span(),
                                    format!("`->` sends a stream onward, but {what} carries no stream"),
                                )
                                .with_hint("start a flow path with a pump or a `+` join of pumps, e.g. `(P1[...] + P2[...]) -> H[...]`"),
                            );
                        }
                        match rhs.as_ref() {
                            Formula::Module(m) => {
                                if let Some(d) = self.lab.device(&m.symbol) {
                                    if !d.flow {
                                        self.push(
                                            Diagnostic::error(
                                                Code::FlowIntoNonFlow,
                                                m.span,
                                                format!("a stream cannot flow through `{}` (the {})", m.symbol, d.kind.noun()),
                                            )
                                            .with_hint(format!(
                                                "use `.` to run `{}` after the stream has been collected, e.g. `... -> S . ARM . {}`",
                                                m.symbol, m.symbol
                                            )),
                                        );
                                    }
                                }
                            }
                            other => {
                                let what = self.describe(other);
                                self.push(
                                    Diagnostic::error(
                                        Code::FlowIntoNonFlow,
                                        other.span(),
                                        format!("`->` must be followed by one module the stream flows through, not {what}"),
                                    )
                                    .with_hint("write the flow path module by module: `A -> H[...] -> UV`"),
                                );
                            }
                        }
                        let setpoint = r.heads.len() == 1
                            && r.tails.len() == 1
                            && self.steps.get(r.heads[0]).is_some_and(|s| s.setpoint);
                        if setpoint {
                            // The path is made ready before the stream starts.
                            let span = rhs.span();
                            let cost = l.heads.len().saturating_mul(r.tails.len());
                            if !self.charge(cost, span) {
                                return (Frag::default(), Ty::Unknown);
                            }
                            for &h in &l.heads {
                                for &t in &r.tails {
                                    if let Some(s) = self.steps.get_mut(h) {
                                        s.after.insert(t);
                                    }
                                }
                            }
                            let heads = if r.heads.is_empty() {
                                l.heads.clone()
                            } else {
                                r.heads
                            };
                            (
                                Frag {
                                    heads,
                                    tails: l.tails,
                                },
                                Ty::Stream,
                            )
                        } else {
                            (self.seq(l, r), Ty::Stream)
                        }
                    }
                }
            }
        }
    }

    /// Account for `cost` units of work (module visits, dependency edges); false once the
    /// program is too large, after reporting it once.
    fn charge(&mut self, cost: usize, span: Span) -> bool {
        self.work = self.work.saturating_add(cost);
        if self.work <= MAX_WORK && !self.too_many {
            return true;
        }
        if !self.too_many {
            self.too_many = true;
            let q = std::mem::replace(&mut self.quiet, 0);
            self.push(
                Diagnostic::error(
                    Code::TooManySteps,
                    span,
                    format!("the program would be too large (more than {MAX_STEPS} steps or {MAX_WORK} dependencies)"),
                )
                .with_hint("reduce the repeat counts or the size of parallel groups; split long campaigns into several experiments"),
            );
            self.quiet = q;
        }
        false
    }

    fn seq(&mut self, a: Frag, b: Frag) -> Frag {
        if a.heads.is_empty() && a.tails.is_empty() {
            return b;
        }
        if b.heads.is_empty() && b.tails.is_empty() {
            return a;
        }
        if !self.charge(b.heads.len().saturating_mul(a.tails.len()), Span::default()) {
            return Frag::default();
        }
        for &h in &b.heads {
            for &t in &a.tails {
                if let Some(s) = self.steps.get_mut(h) {
                    s.after.insert(t);
                }
            }
        }
        Frag {
            heads: a.heads,
            tails: b.tails,
        }
    }

    fn module(&mut self, m: &Module) -> (Frag, Ty) {
        let Some(dev) = self.lab.device(&m.symbol) else {
            if self.quiet > 0 {
                return (Frag::default(), Ty::Unknown); // already reported on the first pass
            }
            let syms: Vec<&str> = self.lab.devices.iter().map(|d| d.symbol.as_str()).collect();
            let mut d = Diagnostic::error(
                Code::UnknownSymbol,
                m.symbol_span,
                format!("the lab `{}` has no module `{}`", self.lab.name, m.symbol),
            );
            d = match suggestion(&m.symbol, syms.clone()) {
                Some(s) => d.with_hint(s),
                None => d.with_hint(format!("its modules are {}", syms.join(", "))),
            };
            self.push(d);
            self.check_args_only(m);
            return (Frag::default(), Ty::Unknown);
        };
        let method = match &m.method {
            Some((name, span)) => match dev.method(name) {
                Some(x) => Some(x),
                None => {
                    let names: Vec<&str> = dev.methods.iter().map(|x| x.name.as_str()).collect();
                    let mut d = Diagnostic::error(
                        Code::UnknownMethod,
                        *span,
                        format!("`{}` (the {}) cannot `{name}`", m.symbol, dev.kind.noun()),
                    );
                    d = match suggestion(name, names.clone()) {
                        Some(s) => d.with_hint(s),
                        None => d.with_hint(format!("it offers {}", names.join(", "))),
                    };
                    self.push(d);
                    None
                }
            },
            None => dev.default_method(),
        };
        let ty = if dev.stream { Ty::Stream } else { Ty::NoStream };
        let Some(method) = method else {
            self.check_args_only(m);
            return (Frag::default(), ty);
        };
        let params = self.args(m, dev, method);
        let frag = self.emit(m, dev, method, params);
        (frag, ty)
    }

    /// Still report variable and unit errors inside the parameters of an unresolved module.
    fn check_args_only(&mut self, m: &Module) {
        for a in m.args.iter().flatten() {
            let mut deps = BTreeSet::new();
            let _ = self.dim_of(&a.value, &mut deps);
        }
    }

    fn args(
        &mut self,
        m: &Module,
        dev: &DeviceDescriptor,
        method: &MethodDescriptor,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
        let call = format!("{}.{}", m.symbol, method.name);
        for a in m.args.iter().flatten() {
            let Some(p) = method.param(&a.name) else {
                let names: Vec<&str> = method.params.iter().map(|p| p.name.as_str()).collect();
                let mut d = Diagnostic::error(
                    Code::UnknownParameter,
                    a.name_span,
                    format!("`{call}` has no parameter `{}`", a.name),
                );
                d = match suggestion(&a.name, names) {
                    Some(s) => d.with_hint(s),
                    None => d.with_hint(describe_params(method)),
                };
                self.push(d);
                let mut deps = BTreeSet::new();
                let _ = self.dim_of(&a.value, &mut deps);
                continue;
            };
            if let Some(first) = seen.get(a.name.as_str()) {
                let first = *first;
                self.push(
                    Diagnostic::error(
                        Code::DuplicateParameter,
                        a.name_span,
                        format!("`{}` is given twice for `{call}`", a.name),
                    )
                    .with_related(first, "first given here")
                    .with_hint("keep one of them"),
                );
                continue;
            }
            seen.insert(&a.name, a.name_span);
            if let Some(v) = self.arg_value(&call, dev, p, &a.value) {
                out.insert(p.name.clone(), v);
            }
        }
        let mut missing = Vec::new();
        for p in &method.params {
            if out.contains_key(&p.name) || seen.contains_key(p.name.as_str()) {
                continue;
            }
            match p.default {
                Some(d) => {
                    let d = match p.resolution {
                        Some(res) => round_to_grid(d, p.min, p.max, res),
                        None => d,
                    };
                    out.insert(p.name.clone(), d);
                }
                None if p.required => missing.push(p),
                None => {}
            }
        }
        let misnamed = m
            .args
            .iter()
            .flatten()
            .any(|a| method.param(&a.name).is_none());
        if !missing.is_empty() && !misnamed {
            let names: Vec<String> = missing.iter().map(|p| format!("`{}`", p.name)).collect();
            let example: Vec<String> = m
                .args
                .iter()
                .flatten()
                .map(|a| format!("{} = {}", a.name, super::format::expr(&a.value)))
                .chain(
                    missing
                        .iter()
                        .map(|p| format!("{} = {}", p.name, with_unit(example_value(p), &p.unit))),
                )
                .collect();
            let what: Vec<String> = missing.iter().map(|p| describe_param(p)).collect();
            self.push(
                Diagnostic::error(
                    Code::MissingParameter,
                    m.span,
                    format!(
                        "`{call}` needs {} ({})",
                        names.join(" and "),
                        what.join("; ")
                    ),
                )
                .with_hint(format!(
                    "write e.g. `{}[{}]`",
                    m.symbol,
                    example.join(", ")
                )),
            );
        }
        out
    }

    /// Check one argument and return its (rounded) value in the parameter's unit.
    fn arg_value(
        &mut self,
        call: &str,
        dev: &DeviceDescriptor,
        p: &ParamDescriptor,
        e: &Expr,
    ) -> Option<f64> {
        let punit = Unit::parse(&p.unit)?;
        let mut deps = BTreeSet::new();
        let dim = self.dim_of(e, &mut deps)?;
        let pname = format!("{call}({})", p.name);
        if dim != punit.dim {
            let mut vars = Vec::new();
            e.vars(&mut vars);
            if dim == Dim::NONE && !e.has_unit() && vars.is_empty() {
                self.push(
                    Diagnostic::error(
                        Code::MissingUnit,
                        e.span(),
                        format!(
                            "`{}` is {}, so this number needs a unit",
                            p.name,
                            punit.dim.describe()
                        ),
                    )
                    .with_hint(format!(
                        "write e.g. `{} = {}`",
                        p.name,
                        with_unit(example_value(p), &p.unit)
                    )),
                );
            } else {
                let want = if p.unit.is_empty() {
                    "a plain number".to_string()
                } else {
                    format!("{} ({})", punit.dim.describe(), p.unit)
                };
                let hint = format!("give `{}` in {}", p.name, punit.dim.unit_examples());
                self.push(
                    Diagnostic::error(
                        Code::UnitMismatch,
                        e.span(),
                        format!("`{pname}` takes {want}, but this is {}", dim.describe()),
                    )
                    .with_hint(hint),
                );
            }
            return None;
        }
        // Values in every scenario.
        let vals: Vec<f64> = self
            .envs
            .iter()
            .map(|env| punit.from_si(eval(e, env)))
            .collect();
        if let Some(k) = vals.iter().position(|v| !v.is_finite()) {
            let why = self.because(k, &deps);
            self.push(
                Diagnostic::error(
                    Code::NonFinite,
                    e.span(),
                    format!("`{pname}` is not a finite number{why}"),
                )
                .with_hint("check for a division by zero"),
            );
            return None;
        }
        let tol = 1e-9 * (1.0 + p.min.abs().max(p.max.abs()));
        if let Some(k) = vals
            .iter()
            .position(|v| *v < p.min - tol || *v > p.max + tol)
        {
            let v = vals[k];
            let (rel, bound) = if v > p.max {
                ("≤", p.max)
            } else {
                ("≥", p.min)
            };
            let why = self.because(k, &deps);
            let hint = if deps.is_empty() {
                format!("{} accepts {}..{}", pname, p.min, with_unit(p.max, &p.unit))
            } else if self.bound {
                "choose variable values that keep it in range, or narrow the recipe's declared ranges".to_string()
            } else {
                "some points of the declared variable ranges drive it out of range: narrow the ranges or change the formula".to_string()
            };
            self.push(
                Diagnostic::error(
                    Code::OutOfRange,
                    e.span(),
                    format!(
                        "`{pname}` must be {rel} {}; got {}{why}",
                        with_unit(bound, &p.unit),
                        with_unit(v, &p.unit)
                    ),
                )
                .with_hint(hint),
            );
            return None;
        }
        let v = vals.first().copied()?.clamp(p.min, p.max);
        let Some(res) = p.resolution else {
            return Some(v);
        };
        let r = round_to_grid(v, p.min, p.max, res);
        let changed = (r - v).abs();
        if changed <= 1e-9 * (1.0 + v.abs()) {
            return Some(r);
        }
        if deps.is_empty() {
            self.push(
                Diagnostic::note(
                    Code::Rounded,
                    e.span(),
                    format!(
                        "`{pname}` = {} is rounded to {} (the {}'s grid is {})",
                        with_unit(v, &p.unit),
                        with_unit(r, &p.unit),
                        dev.kind.noun(),
                        with_unit(res, &p.unit)
                    ),
                )
                .with_hint(format!(
                    "write {} to silence this note",
                    with_unit(r, &p.unit)
                )),
            );
        } else if self.bound {
            // How much does one campaign step of each variable move this parameter?
            let mut finest: Option<(f64, &VarInfo)> = None;
            let base = self.scenarios.first().cloned().unwrap_or_default();
            for var in self.vars.iter().filter(|x| deps.contains(&x.name)) {
                let (Some(step), Some(x)) = (var.step, base.get(&var.name)) else {
                    continue;
                };
                let mut moved = base.clone();
                let nx = if x + step <= var.hi {
                    x + step
                } else {
                    x - step
                };
                moved.insert(var.name.clone(), nx);
                let env = self.env_for(&moved);
                let dv = (punit.from_si(eval(e, &env)) - v).abs();
                if dv.is_finite() && dv > 0.0 && finest.is_none_or(|(f, _)| dv < f) {
                    finest = Some((dv, var));
                }
            }
            if let Some((dv, var)) = finest {
                if changed > dv / 2.0 + 1e-12 {
                    let step = var.step.unwrap_or(0.0);
                    let d = Diagnostic::warning(
                        Code::ResolutionLoss,
                        e.span(),
                        format!(
                            "rounding `{pname}` to the {}'s {} grid changes it by {}, more than half of what one step of ${} ({}) changes it ({})",
                            dev.kind.noun(),
                            with_unit(res, &p.unit),
                            with_unit(changed, &p.unit),
                            var.name,
                            with_unit(step, &var.unit_text),
                            with_unit(dv, &p.unit)
                        ),
                    )
                    .with_hint(format!(
                        "neighbouring campaign points may run the same experiment; coarsen the step of ${} or use a finer {}",
                        var.name,
                        dev.kind.noun()
                    ));
                    self.push(d);
                }
            }
        }
        Some(r)
    }

    fn emit(
        &mut self,
        m: &Module,
        _dev: &DeviceDescriptor,
        method: &MethodDescriptor,
        params: BTreeMap<String, f64>,
    ) -> Frag {
        if self.steps.len() >= MAX_STEPS {
            if !self.too_many {
                self.too_many = true;
                let q = self.quiet;
                self.quiet = 0;
                self.push(
                    Diagnostic::error(
                        Code::TooManySteps,
                        m.span,
                        format!("the program would have more than {MAX_STEPS} steps"),
                    )
                    .with_hint(
                        "reduce the repeat counts; split long campaigns into several experiments",
                    ),
                );
                self.quiet = q;
            }
            return Frag::default();
        }
        let mut duration_ms = method.duration_ms;
        if let Some(dp) = &method.duration_param {
            let secs = method
                .param(dp)
                .and_then(|p| Unit::parse(&p.unit))
                .zip(params.get(dp))
                .map(|(u, v)| u.to_si(*v))
                .unwrap_or(0.0);
            if secs.is_finite() && secs > 0.0 {
                duration_ms = duration_ms.saturating_add((secs * 1000.0).round() as u64);
            }
        }
        let line = u32::try_from(self.line_starts.partition_point(|&s| s <= m.span.start))
            .unwrap_or(u32::MAX);
        self.steps.push(PendingStep {
            method: format!("{}.{}", m.symbol, method.name),
            params,
            after: BTreeSet::new(),
            duration_ms,
            setpoint: method.setpoint,
            yields: method.yields.clone(),
            line,
            span: m.span,
        });
        let i = self.steps.len() - 1;
        Frag {
            heads: vec![i],
            tails: vec![i],
        }
    }

    fn unused(&mut self) {
        if self.diags.iter().any(|d| d.code == Code::UndefinedVariable) {
            return; // the misspelt name probably meant one of them
        }
        let unused: Vec<(String, Span)> = self
            .vars
            .iter()
            .filter(|v| !v.used)
            .map(|v| (v.name.clone(), v.name_span))
            .collect();
        for (name, span) in unused {
            self.push(
                Diagnostic::warning(
                    Code::UnusedVariable,
                    span,
                    format!("${name} is declared but never used"),
                )
                .with_hint("use it in a parameter, or remove it from the recipe header"),
            );
        }
    }

    // ------------------------------------------------------------------ scheduling

    /// A device asked to do two things at once: two calls to the same device with no path
    /// between them in the DAG (e.g. `CD | CD`). Checked for programs up to 2000 steps.
    fn conflicts(&mut self) {
        let n = self.steps.len();
        if !(2..=2000).contains(&n) || self.too_many {
            return;
        }
        let Some(order) = self.topo_order() else {
            return;
        };
        let words = n.div_ceil(64);
        let mut anc = vec![0u64; n * words];
        for &i in &order {
            for &d in &self.steps[i].after {
                for w in 0..words {
                    let x = anc[d * words + w];
                    anc[i * words + w] |= x;
                }
                anc[i * words + d / 64] |= 1 << (d % 64);
            }
        }
        let ordered = |a: usize, b: usize| {
            anc[b * words + a / 64] & (1 << (a % 64)) != 0
                || anc[a * words + b / 64] & (1 << (b % 64)) != 0
        };
        let mut by_device: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            let dev = s.method.split('.').next().unwrap_or_default();
            by_device.entry(dev).or_default().push(i);
        }
        let mut found = Vec::new();
        for (dev, idx) in by_device {
            'pairs: for (k, &a) in idx.iter().enumerate() {
                for &b in &idx[k + 1..] {
                    if !ordered(a, b) {
                        found.push((dev.to_string(), a, b));
                        break 'pairs;
                    }
                }
            }
        }
        for (dev, a, b) in found {
            let (sa, sb) = (&self.steps[a], &self.steps[b]);
            let (first, second) = if sa.span.start <= sb.span.start {
                (sa, sb)
            } else {
                (sb, sa)
            };
            let mut d = Diagnostic::error(
                Code::DeviceConflict,
                second.span,
                format!("`{dev}` would be asked to do two things at once: `{}` and `{}`", first.method, second.method),
            )
            .with_hint(format!("a device does one thing at a time: use `.` to run the `{dev}` calls one after the other"));
            if first.span != second.span {
                d = d.with_related(first.span, "also runs at the same time");
            }
            self.push(d);
        }
    }

    /// Kahn's algorithm, ties broken by source order: a deterministic topological order.
    fn topo_order(&self) -> Option<Vec<usize>> {
        let n = self.steps.len();
        let mut indeg = vec![0usize; n];
        let mut out: Vec<Vec<usize>> = vec![vec![]; n];
        for (i, s) in self.steps.iter().enumerate() {
            for &d in &s.after {
                if d < n {
                    indeg[i] += 1;
                    out[d].push(i);
                }
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &j in &out[i] {
                indeg[j] -= 1;
                if indeg[j] == 0 {
                    ready.push(Reverse(j));
                }
            }
        }
        // Always complete by construction: dependencies point backwards in time.
        (order.len() == n).then_some(order)
    }

    fn program(&self, file: &SourceFile) -> Option<Program> {
        let n = self.steps.len();
        let order = self.topo_order()?;
        let mut new_id = vec![0u32; n];
        for (k, &i) in order.iter().enumerate() {
            new_id[i] = u32::try_from(k + 1).ok()?;
        }
        let mut end = vec![0u64; n];
        let mut steps = Vec::with_capacity(n);
        for &i in &order {
            let s = &self.steps[i];
            let start = s.after.iter().map(|&d| end[d]).max().unwrap_or(0);
            end[i] = start.saturating_add(s.duration_ms);
            let mut after: Vec<u32> = s.after.iter().map(|&d| new_id[d]).collect();
            after.sort_unstable();
            let id = new_id[i];
            steps.push(Step {
                id,
                request: RpcRequest {
                    jsonrpc: "2.0".into(),
                    id: u64::from(id),
                    method: s.method.clone(),
                    params: s.params.clone(),
                },
                after,
                start_ms: start,
                duration_ms: s.duration_ms,
                yields: s.yields.clone(),
                line: s.line,
            });
        }
        let estimated_duration_ms = end.iter().copied().max().unwrap_or(0);
        let base = self.scenarios.first().cloned().unwrap_or_default();
        let variables = self
            .vars
            .iter()
            .filter_map(|v| {
                base.get(&v.name).map(|x| {
                    (
                        v.name.clone(),
                        BoundVariable {
                            value: *x,
                            unit: v.unit_text.clone(),
                        },
                    )
                })
            })
            .collect();
        Some(Program {
            format: PROGRAM_FORMAT,
            recipe: file.recipe.as_ref().map(|r| r.name.clone()),
            lab: self.lab.name.clone(),
            variables,
            steps,
            estimated_duration_ms,
        })
    }
}

fn union(a: Frag, b: Frag) -> Frag {
    let mut heads = a.heads;
    heads.extend(b.heads);
    let mut tails = a.tails;
    tails.extend(b.tails);
    Frag { heads, tails }
}

/// A round value inside the parameter's range, for examples in hints.
fn example_value(p: &ParamDescriptor) -> f64 {
    if let Some(d) = p.default {
        return d;
    }
    let mid = (p.min + p.max) / 2.0;
    let mag = 10f64.powf(mid.abs().max(1e-9).log10().floor());
    let v = (mid / mag).round() * mag;
    if v >= p.min && v <= p.max {
        v
    } else {
        mid
    }
}

fn describe_param(p: &ParamDescriptor) -> String {
    let dim = Unit::parse(&p.unit)
        .map(|u| u.dim.describe())
        .unwrap_or_default();
    format!("{} {}..{}", dim, p.min, with_unit(p.max, &p.unit))
}

fn describe_params(m: &MethodDescriptor) -> String {
    if m.params.is_empty() {
        return format!("`{}` takes no parameters", m.name);
    }
    let ps: Vec<String> = m
        .params
        .iter()
        .map(|p| format!("`{}` ({})", p.name, describe_param(p)))
        .collect();
    format!("its parameters are {}", ps.join(", "))
}

/// Evaluate an expression in SI units; NaN for anything undefined.
fn eval(e: &Expr, env: &Env) -> f64 {
    match e {
        Expr::Number {
            value, unit: None, ..
        } => *value,
        Expr::Number {
            value,
            unit: Some((u, _)),
            ..
        } => Unit::parse(u).map(|u| u.to_si(*value)).unwrap_or(f64::NAN),
        Expr::Var { name, .. } => env.get(name).copied().unwrap_or(f64::NAN),
        Expr::Neg { expr, .. } => -eval(expr, env),
        Expr::Binary { op, lhs, rhs, .. } => {
            let (a, b) = (eval(lhs, env), eval(rhs, env));
            match op {
                ExprOp::Add => a + b,
                ExprOp::Sub => a - b,
                ExprOp::Mul => a * b,
                ExprOp::Div => a / b,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_rounding() {
        assert_eq!(round_to_grid(12.34, 0.0, 1000.0, 0.1), 12.3);
        assert_eq!(round_to_grid(12.35000001, 0.0, 1000.0, 0.1), 12.4);
        assert_eq!(round_to_grid(999.99, 0.0, 1000.0, 0.3), 999.9);
        assert_eq!(round_to_grid(0.1, 0.1, 5.0, 0.1), 0.1);
        assert_eq!(round_to_grid(130.04, 20.0, 200.0, 0.1), 130.0);
    }

    #[test]
    fn did_you_mean_prefers_case_then_distance() {
        assert_eq!(did_you_mean("uv", ["UV", "H"]), Some("UV"));
        assert_eq!(did_you_mean("HH", ["H", "UV"]), Some("H"));
        assert_eq!(
            did_you_mean("set_temprature", ["set_temperature"]),
            Some("set_temperature")
        );
        assert_eq!(did_you_mean("zzzzzz", ["H", "UV"]), None);
    }
}
