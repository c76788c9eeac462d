//! Canonical pretty-printer of the instruction language. Parentheses are emitted only where the
//! tree needs them, operators are spelled in ASCII, a top-level `.` chain is laid out one step per
//! line, and comments are kept (comments written inside a formula move to just before it).
//! Invariant: `parse(format(tree)) == tree` up to spans.

use super::ast::*;

const INDENT: &str = "    ";
const MAX_HEADER: usize = 100;

/// Format a parsed source file.
pub fn format_file(f: &SourceFile) -> String {
    let mut out = String::new();
    for c in &f.head_comments {
        push_comment(&mut out, "", c);
    }
    let indent = if f.recipe.is_some() { INDENT } else { "" };
    if let Some(r) = &f.recipe {
        let vars: Vec<String> = r.vars.iter().map(var_decl).collect();
        let one_line = format!("recipe {}({}) {{", r.name, vars.join(", "));
        if one_line.chars().count() <= MAX_HEADER || vars.is_empty() {
            out.push_str(&one_line);
        } else {
            out.push_str(&format!("recipe {}(\n", r.name));
            for v in &vars {
                out.push_str(&format!("{INDENT}{v},\n"));
            }
            out.push_str(") {");
        }
        out.push('\n');
    }
    for l in &f.lets {
        for c in &l.comments {
            push_comment(&mut out, indent, c);
        }
        out.push_str(&format!("{indent}let ${} = {};\n", l.name, expr(&l.value)));
    }
    for c in &f.formula_comments {
        push_comment(&mut out, indent, c);
    }
    // A top-level `.` chain: one step per line.
    let mut chain = Vec::new();
    seq_chain(&f.formula, &mut chain);
    for (i, step) in chain.iter().enumerate() {
        let text = if i == 0 {
            formula_in(step, FormulaOp::Seq.precedence(), false)
        } else {
            format!(". {}", formula_in(step, FormulaOp::Seq.precedence(), true))
        };
        out.push_str(indent);
        out.push_str(&text);
        out.push('\n');
    }
    if f.recipe.is_some() {
        out.push_str("}\n");
    }
    for c in &f.tail_comments {
        push_comment(&mut out, "", c);
    }
    out
}

fn push_comment(out: &mut String, indent: &str, c: &str) {
    out.push_str(indent);
    out.push('#');
    out.push_str(c);
    out.push('\n');
}

fn var_decl(v: &VarDecl) -> String {
    let mut s = if v.unit.is_empty() {
        format!("{}: in {}..{}", v.name, v.lo, v.hi)
    } else {
        format!("{}: {} in {}..{}", v.name, v.unit, v.lo, v.hi)
    };
    if let Some(st) = v.step {
        s.push_str(&format!(" step {st}"));
    }
    s
}

/// Flatten the left-nested top-level `.` chain.
fn seq_chain<'a>(f: &'a Formula, out: &mut Vec<&'a Formula>) {
    match f {
        Formula::Binary {
            op: FormulaOp::Seq,
            lhs,
            rhs,
            ..
        } => {
            seq_chain(lhs, out);
            out.push(rhs);
        }
        other => out.push(other),
    }
}

/// Format a formula on one line.
pub fn formula(f: &Formula) -> String {
    formula_in(f, 0, false)
}

/// `parent`: precedence of the enclosing operator; `right`: is it the right operand.
fn formula_in(f: &Formula, parent: u8, right: bool) -> String {
    let p = f.precedence();
    let needs = if right { p <= parent } else { p < parent };
    let s = match f {
        Formula::Module(m) => module(m),
        Formula::Binary { op, lhs, rhs, .. } => {
            let mut l = formula_in(lhs, op.precedence(), false);
            // Readability: a joined stream entering a flow path keeps its parentheses,
            // `(P1 + P2) -> H`, though `+` binds tighter than `->` anyway.
            if *op == FormulaOp::Flow
                && matches!(
                    **lhs,
                    Formula::Binary {
                        op: FormulaOp::Join,
                        ..
                    }
                )
            {
                l = format!("({l})");
            }
            format!(
                "{l} {} {}",
                op.as_str(),
                formula_in(rhs, op.precedence(), true)
            )
        }
        // The body of a repeat may be another repeat without parentheses (`2 * 3 * A`).
        Formula::Repeat { count, body, .. } => format!("{count} * {}", formula_in(body, 5, false)),
    };
    if needs && !matches!(f, Formula::Module(_)) {
        format!("({s})")
    } else {
        s
    }
}

fn module(m: &Module) -> String {
    let mut s = m.symbol.clone();
    if let Some((meth, _)) = &m.method {
        s.push(':');
        s.push_str(meth);
    }
    if let Some(args) = &m.args {
        let a: Vec<String> = args
            .iter()
            .map(|a| format!("{} = {}", a.name, expr(&a.value)))
            .collect();
        s.push('[');
        s.push_str(&a.join(", "));
        s.push(']');
    }
    s
}

/// Format an expression.
pub fn expr(e: &Expr) -> String {
    expr_in(e, 0, false)
}

fn expr_in(e: &Expr, parent: u8, right: bool) -> String {
    let p = e.precedence();
    let needs = if right { p <= parent } else { p < parent };
    let s = match e {
        Expr::Number {
            value,
            unit: Some((u, _)),
            ..
        } => format!("{value} {u}"),
        Expr::Number {
            value, unit: None, ..
        } => format!("{value}"),
        Expr::Var { name, .. } => format!("${name}"),
        // `--x` for nested negation (no parentheses, so formatting never adds nesting).
        Expr::Neg { expr: inner, .. } => format!("-{}", expr_in(inner, 3, false)),
        Expr::Binary { op, lhs, rhs, .. } => format!(
            "{} {} {}",
            expr_in(lhs, op.precedence(), false),
            op.as_str(),
            expr_in(rhs, op.precedence(), true)
        ),
    };
    if needs && p < 4 {
        format!("({s})")
    } else {
        s
    }
}
