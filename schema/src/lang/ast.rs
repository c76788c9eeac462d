//! Syntax tree of the instruction language. Spans point into the source; [`SourceFile::strip_spans`]
//! gives a span-free copy so trees can be compared structurally (formatter round trip).

use super::diagnostic::Span;

/// A whole source text: optional recipe header, `let` bindings and one formula.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    /// Comments before the recipe header (or before the body of a bare formula).
    pub head_comments: Vec<String>,
    /// `recipe NAME(...) { ... }` header, if the text is a recipe.
    pub recipe: Option<RecipeHeader>,
    /// `let $x = expr;` bindings, in order.
    pub lets: Vec<Let>,
    /// Comments placed before the formula (and comments written inside it, which move there).
    pub formula_comments: Vec<String>,
    /// The formula.
    pub formula: Formula,
    /// Comments after the recipe's closing `}`.
    pub tail_comments: Vec<String>,
}

/// `recipe NAME(VAR: UNIT in LO..HI step S, ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeHeader {
    /// Recipe name.
    pub name: String,
    /// Span of the name.
    pub name_span: Span,
    /// Free parameters an optimizer may set.
    pub vars: Vec<VarDecl>,
}

/// `T: °C in 90..180 step 0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct VarDecl {
    /// Name (without `$`).
    pub name: String,
    /// Span of the name.
    pub name_span: Span,
    /// Unit text (empty for dimensionless).
    pub unit: String,
    /// Span of the unit.
    pub unit_span: Span,
    /// Lower bound, in `unit`.
    pub lo: f64,
    /// Upper bound, in `unit`.
    pub hi: f64,
    /// Campaign resolution, in `unit`.
    pub step: Option<f64>,
    /// Span of the whole declaration.
    pub span: Span,
}

/// `let $x = expr;`
#[derive(Debug, Clone, PartialEq)]
pub struct Let {
    /// Comments before it.
    pub comments: Vec<String>,
    /// Name (without `$`).
    pub name: String,
    /// Span of `$name`.
    pub name_span: Span,
    /// Value.
    pub value: Expr,
    /// Span of the statement.
    pub span: Span,
}

/// Formula operators (space and time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormulaOp {
    /// `|` run at the same time.
    Par,
    /// `.` / `·` then.
    Seq,
    /// `->` / `→` the stream flows through.
    Flow,
    /// `+` join streams.
    Join,
}

impl FormulaOp {
    /// Binding strength (higher binds tighter).
    pub fn precedence(self) -> u8 {
        match self {
            FormulaOp::Par => 1,
            FormulaOp::Seq => 2,
            FormulaOp::Flow => 3,
            FormulaOp::Join => 4,
        }
    }
    /// Canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FormulaOp::Par => "|",
            FormulaOp::Seq => ".",
            FormulaOp::Flow => "->",
            FormulaOp::Join => "+",
        }
    }
}

/// A formula over module calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Formula {
    /// A module call.
    Module(Module),
    /// `lhs OP rhs` (left-associative).
    Binary {
        /// Operator.
        op: FormulaOp,
        /// Left operand.
        lhs: Box<Formula>,
        /// Right operand.
        rhs: Box<Formula>,
        /// Span of the operator token.
        op_span: Span,
        /// Whole span.
        span: Span,
    },
    /// `n * body`.
    Repeat {
        /// Count as written (checked to be a whole number later).
        count: f64,
        /// Span of the count.
        count_span: Span,
        /// What is repeated.
        body: Box<Formula>,
        /// Whole span.
        span: Span,
    },
}

impl Formula {
    /// Whole span.
    pub fn span(&self) -> Span {
        match self {
            Formula::Module(m) => m.span,
            Formula::Binary { span, .. } | Formula::Repeat { span, .. } => *span,
        }
    }
    /// Binding strength of the top node (modules bind tightest).
    pub fn precedence(&self) -> u8 {
        match self {
            Formula::Module(_) => 6,
            Formula::Repeat { .. } => 5,
            Formula::Binary { op, .. } => op.precedence(),
        }
    }
}

/// `SYMBOL[:method][[name = expr, ...]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// Device symbol.
    pub symbol: String,
    /// Span of the symbol.
    pub symbol_span: Span,
    /// Explicit method (`H:set_temperature`).
    pub method: Option<(String, Span)>,
    /// Parameter vector; `None` when no brackets were written.
    pub args: Option<Vec<Arg>>,
    /// Whole span.
    pub span: Span,
}

/// `name = expr` in a parameter vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// Parameter name.
    pub name: String,
    /// Span of the name.
    pub name_span: Span,
    /// Value.
    pub value: Expr,
}

/// Arithmetic operators in parameter expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

impl ExprOp {
    /// Binding strength.
    pub fn precedence(self) -> u8 {
        match self {
            ExprOp::Add | ExprOp::Sub => 1,
            ExprOp::Mul | ExprOp::Div => 2,
        }
    }
    /// Spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExprOp::Add => "+",
            ExprOp::Sub => "-",
            ExprOp::Mul => "*",
            ExprOp::Div => "/",
        }
    }
}

/// A parameter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number, optionally with a unit (`12.5 uL/min`).
    Number {
        /// Value as written.
        value: f64,
        /// Unit text and span.
        unit: Option<(String, Span)>,
        /// Whole span.
        span: Span,
    },
    /// `$name`.
    Var {
        /// Name without `$`.
        name: String,
        /// Span.
        span: Span,
    },
    /// `-expr`.
    Neg {
        /// Operand.
        expr: Box<Expr>,
        /// Span.
        span: Span,
    },
    /// `lhs op rhs`.
    Binary {
        /// Operator.
        op: ExprOp,
        /// Left.
        lhs: Box<Expr>,
        /// Right.
        rhs: Box<Expr>,
        /// Span.
        span: Span,
    },
}

impl Expr {
    /// Whole span.
    pub fn span(&self) -> Span {
        match self {
            Expr::Number { span, .. }
            | Expr::Var { span, .. }
            | Expr::Neg { span, .. }
            | Expr::Binary { span, .. } => *span,
        }
    }
    /// Binding strength of the top node.
    pub fn precedence(&self) -> u8 {
        match self {
            Expr::Binary { op, .. } => op.precedence(),
            Expr::Neg { .. } => 3,
            _ => 4,
        }
    }
    /// Names of the variables it mentions, in order of appearance (with repeats).
    pub fn vars(&self, out: &mut Vec<(String, Span)>) {
        match self {
            Expr::Number { .. } => {}
            Expr::Var { name, span } => out.push((name.clone(), *span)),
            Expr::Neg { expr, .. } => expr.vars(out),
            Expr::Binary { lhs, rhs, .. } => {
                lhs.vars(out);
                rhs.vars(out);
            }
        }
    }
    /// Does it contain a unit anywhere?
    pub fn has_unit(&self) -> bool {
        match self {
            Expr::Number { unit, .. } => unit.is_some(),
            Expr::Var { .. } => false,
            Expr::Neg { expr, .. } => expr.has_unit(),
            Expr::Binary { lhs, rhs, .. } => lhs.has_unit() || rhs.has_unit(),
        }
    }
}

const Z: Span = Span { start: 0, end: 0 };

impl SourceFile {
    /// A copy with every span set to zero, for structural comparison.
    pub fn strip_spans(&self) -> SourceFile {
        SourceFile {
            head_comments: self.head_comments.clone(),
            recipe: self.recipe.as_ref().map(|r| RecipeHeader {
                name: r.name.clone(),
                name_span: Z,
                vars: r
                    .vars
                    .iter()
                    .map(|v| VarDecl {
                        name_span: Z,
                        unit_span: Z,
                        span: Z,
                        ..v.clone()
                    })
                    .collect(),
            }),
            lets: self
                .lets
                .iter()
                .map(|l| Let {
                    comments: l.comments.clone(),
                    name: l.name.clone(),
                    name_span: Z,
                    value: strip_expr(&l.value),
                    span: Z,
                })
                .collect(),
            formula_comments: self.formula_comments.clone(),
            formula: strip_formula(&self.formula),
            tail_comments: self.tail_comments.clone(),
        }
    }
}

fn strip_formula(f: &Formula) -> Formula {
    match f {
        Formula::Module(m) => Formula::Module(Module {
            symbol: m.symbol.clone(),
            symbol_span: Z,
            method: m.method.as_ref().map(|(n, _)| (n.clone(), Z)),
            args: m.args.as_ref().map(|a| {
                a.iter()
                    .map(|a| Arg {
                        name: a.name.clone(),
                        name_span: Z,
                        value: strip_expr(&a.value),
                    })
                    .collect()
            }),
            span: Z,
        }),
        Formula::Binary { op, lhs, rhs, .. } => Formula::Binary {
            op: *op,
            lhs: Box::new(strip_formula(lhs)),
            rhs: Box::new(strip_formula(rhs)),
            op_span: Z,
            span: Z,
        },
        Formula::Repeat { count, body, .. } => Formula::Repeat {
            count: *count,
            count_span: Z,
            body: Box::new(strip_formula(body)),
            span: Z,
        },
    }
}

fn strip_expr(e: &Expr) -> Expr {
    match e {
        Expr::Number { value, unit, .. } => Expr::Number {
            value: *value,
            unit: unit.as_ref().map(|(u, _)| (u.clone(), Z)),
            span: Z,
        },
        Expr::Var { name, .. } => Expr::Var {
            name: name.clone(),
            span: Z,
        },
        Expr::Neg { expr, .. } => Expr::Neg {
            expr: Box::new(strip_expr(expr)),
            span: Z,
        },
        Expr::Binary { op, lhs, rhs, .. } => Expr::Binary {
            op: *op,
            lhs: Box::new(strip_expr(lhs)),
            rhs: Box::new(strip_expr(rhs)),
            span: Z,
        },
    }
}
