//! Recursive-descent parser of the instruction language (grammar in `docs/language.md`).
//! Never panics: tree depth and delimiter nesting are bounded, and the first syntax error stops parsing with a
//! diagnostic (lexical errors are all reported).

use super::ast::*;
use super::diagnostic::{Code, Diagnostic, Span};
use super::lexer::{lex, Comment, Tok, Token};

/// Deepest formula or expression tree the parser builds (left-associative operator chains nest
/// in the tree, so a chain of n operators is n deep). Bounds the recursion of every tree walk.
pub const MAX_DEPTH: u32 = 100;
/// Most nested `(`, `[`, unary `-` and repeat prefixes (bounds the parser's own recursion).
/// Above `2 * MAX_DEPTH + 4`, so whatever parses also parses after formatting.
pub const MAX_NESTING: u32 = 208;

/// Result of parsing: the tree (if there was no syntax error) and all diagnostics.
#[derive(Debug)]
pub struct Parsed {
    /// The tree.
    pub file: Option<SourceFile>,
    /// Lexical and syntax errors.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parse a source text.
pub fn parse(src: &str) -> Parsed {
    let lexed = lex(src);
    let mut diagnostics = lexed.diagnostics;
    let mut p = Parser {
        toks: lexed.tokens,
        pos: 0,
    };
    let file = match p.file() {
        Ok(parts) => Some(attach_comments(parts, lexed.comments)),
        Err(d) => {
            diagnostics.push(*d);
            None
        }
    };
    diagnostics.sort_by_key(|d| (d.span.start, d.span.end));
    Parsed { file, diagnostics }
}

type PResult<T> = Result<T, Box<Diagnostic>>;

struct Parts {
    recipe: Option<(RecipeHeader, Span)>, // header and span of the closing `}`
    lets: Vec<Let>,
    formula: Formula,
    body_start: usize,
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

fn word_is(t: &Tok, w: &str) -> bool {
    matches!(t, Tok::Word(x) if x == w)
}

impl Parser {
    fn peek(&self) -> &Token {
        // `lex` always ends the list with Eof and `bump` never moves past it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }
    fn peek_at(&self, k: usize) -> &Tok {
        &self.toks[(self.pos + k).min(self.toks.len() - 1)].tok
    }
    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }
    fn at(&self, t: &Tok) -> bool {
        &self.peek().tok == t
    }
    fn unexpected(&self, expected: &str) -> Box<Diagnostic> {
        let t = self.peek();
        let mut d = Diagnostic::error(
            Code::Syntax,
            t.span,
            format!("expected {expected}, found {}", t.tok.describe()),
        );
        if let Tok::Word(w) = &t.tok {
            if expected.contains("operator") {
                d = d.with_hint(format!(
                    "join the module `{w}` with an operator: `+`, `->`, `.`, `|`; or write a number and a unit like `12 uL/min` inside `[...]`"
                ));
            }
        }
        Box::new(d)
    }
    fn expect(&mut self, t: Tok, expected: &str) -> PResult<Token> {
        if self.at(&t) {
            Ok(self.bump())
        } else {
            Err(self.unexpected(expected))
        }
    }
    fn close(&mut self, t: Tok, open: Span, what: &str) -> PResult<Token> {
        if self.at(&t) {
            return Ok(self.bump());
        }
        let found = self.peek().clone();
        Err(Box::new(
            Diagnostic::error(
                Code::UnclosedDelimiter,
                found.span,
                format!(
                    "expected {what} to close the one opened earlier, found {}",
                    found.tok.describe()
                ),
            )
            .with_related(open, "opened here")
            .with_hint(format!("add {what}")),
        ))
    }
    fn word(&mut self, expected: &str) -> PResult<(String, Span)> {
        match self.peek().tok.clone() {
            Tok::Word(w) => {
                let s = self.bump().span;
                Ok((w, s))
            }
            _ => Err(self.unexpected(expected)),
        }
    }
    fn number(&mut self, expected: &str) -> PResult<(f64, Span)> {
        let neg = if self.at(&Tok::Minus) {
            Some(self.bump().span)
        } else {
            None
        };
        match self.peek().tok {
            Tok::Number(v) => {
                let s = self.bump().span;
                Ok(match neg {
                    Some(n) => (-v, n.to(s)),
                    None => (v, s),
                })
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn file(&mut self) -> PResult<Parts> {
        if word_is(&self.peek().tok, "recipe") {
            self.bump();
            let (name, name_span) = self.word("a recipe name")?;
            let open = self
                .expect(Tok::LParen, "`(` and the recipe's variables")?
                .span;
            let mut vars = Vec::new();
            while !self.at(&Tok::RParen) && !self.at(&Tok::Eof) {
                vars.push(self.var_decl()?);
                if !self.at(&Tok::RParen) {
                    if self.at(&Tok::Eof) {
                        break;
                    }
                    self.expect(Tok::Comma, "`,` between variables")?;
                }
            }
            self.close(Tok::RParen, open, "`)`")?;
            let brace = self.expect(Tok::LBrace, "`{` and the recipe's body")?.span;
            let body_start = brace.end;
            let (lets, formula) = self.body()?;
            let end = self.close(Tok::RBrace, brace, "`}`")?.span;
            if !self.at(&Tok::Eof) {
                return Err(self.unexpected("the end of the text after the recipe"));
            }
            Ok(Parts {
                recipe: Some((
                    RecipeHeader {
                        name,
                        name_span,
                        vars,
                    },
                    end,
                )),
                lets,
                formula,
                body_start,
            })
        } else {
            // A bare formula has no head: every comment belongs to a `let` or the formula.
            let body_start = 0;
            let (lets, formula) = self.body()?;
            if !self.at(&Tok::Eof) {
                return Err(self.unexpected("an operator (`+`, `->`, `.`, `|`) or the end"));
            }
            Ok(Parts {
                recipe: None,
                lets,
                formula,
                body_start,
            })
        }
    }

    fn var_decl(&mut self) -> PResult<VarDecl> {
        let (name, name_span) = self.word("a variable name like `T`")?;
        self.expect(
            Tok::Colon,
            "`:` and the variable's unit, e.g. `T: °C in 90..180 step 0.5`",
        )?;
        let (unit, unit_span) = if word_is(&self.peek().tok, "in") {
            (
                String::new(),
                Span::new(self.peek().span.start, self.peek().span.start),
            )
        } else {
            self.unit_text()?
        };
        if !word_is(&self.peek().tok, "in") {
            return Err(self.unexpected("`in` and the variable's range, e.g. `in 90..180`"));
        }
        self.bump();
        let (lo, _) = self.number("the lower bound")?;
        self.expect(Tok::DotDot, "`..` between the bounds")?;
        let (hi, mut end) = self.number("the upper bound")?;
        let step = if word_is(&self.peek().tok, "step") {
            self.bump();
            let (s, sp) = self.number("the step (the campaign's resolution)")?;
            end = sp;
            Some(s)
        } else {
            None
        };
        Ok(VarDecl {
            name,
            name_span,
            unit,
            unit_span,
            lo,
            hi,
            step,
            span: name_span.to(end),
        })
    }

    /// `uL/min`, `°C`, `mmol/ml`.
    fn unit_text(&mut self) -> PResult<(String, Span)> {
        let (mut text, mut span) = self.word("a unit such as `°C` or `mmol/ml`")?;
        while self.at(&Tok::Slash) && matches!(self.peek_at(1), Tok::Word(_)) {
            self.bump();
            let (w, s) = self.word("a unit")?;
            text.push('/');
            text.push_str(&w);
            span = span.to(s);
        }
        Ok((text, span))
    }

    fn body(&mut self) -> PResult<(Vec<Let>, Formula)> {
        let mut lets = Vec::new();
        while word_is(&self.peek().tok, "let") {
            let kw = self.bump().span;
            let (name, name_span) = match self.peek().tok.clone() {
                Tok::Var(v) => (v, self.bump().span),
                _ => return Err(self.unexpected("a variable like `$Q` after `let`")),
            };
            self.expect(Tok::Eq, "`=`")?;
            let (value, _) = self.expr(0)?;
            let semi = self.expect(Tok::Semi, "`;` after the value")?.span;
            lets.push(Let {
                comments: vec![],
                name,
                name_span,
                value,
                span: kw.to(semi),
            });
        }
        if self.at(&Tok::Eof) || self.at(&Tok::RBrace) {
            return Err(Box::new(
                Diagnostic::error(Code::Syntax, self.peek().span, "expected a formula, found nothing")
                    .with_hint("write the modules to run, e.g. `(P1[rate = 10 uL/min] + P2[rate = 20 uL/min]) -> H[T = 130 °C] -> UV`"),
            ));
        }
        let (f, _) = self.formula(0)?;
        Ok((lets, f))
    }

    fn nesting(&self, nest: u32) -> PResult<()> {
        self.too_deep(nest > MAX_NESTING, self.peek().span)
    }

    fn tree_depth(&self, d: u32, span: Span) -> PResult<()> {
        self.too_deep(d > MAX_DEPTH, span)
    }

    fn too_deep(&self, bad: bool, span: Span) -> PResult<()> {
        if bad {
            Err(Box::new(
                Diagnostic::error(Code::TooDeep, span, "this formula is nested or chained too deeply")
                    .with_hint(format!("keep operator chains under {MAX_DEPTH} operators and nesting under {MAX_NESTING} levels; use `n * (...)` to repeat")),
            ))
        } else {
            Ok(())
        }
    }

    /// Formula at a precedence level: 1 `|`, 2 `.`, 3 `->`, 4 `+`, 5 repeat/primary.
    fn formula(&mut self, nest: u32) -> PResult<(Formula, u32)> {
        self.formula_level(1, nest)
    }

    /// Precedence climbing: parse operators binding at least as tightly as `min`
    /// (1 `|`, 2 `.`, 3 `->`, 4 `+`); one stack frame per nesting level, not per precedence level.
    fn formula_level(&mut self, min: u8, nest: u32) -> PResult<(Formula, u32)> {
        self.nesting(nest)?;
        let (mut lhs, mut d) = self.repeat(nest)?;
        loop {
            let op = match self.peek().tok {
                Tok::Pipe => FormulaOp::Par,
                Tok::Dot => FormulaOp::Seq,
                Tok::Arrow => FormulaOp::Flow,
                Tok::Plus => FormulaOp::Join,
                _ => break,
            };
            if op.precedence() < min {
                break;
            }
            let op_span = self.bump().span;
            let (rhs, rd) = self.formula_level(op.precedence() + 1, nest)?;
            let span = lhs.span().to(rhs.span());
            d = d.max(rd) + 1;
            self.tree_depth(d, span)?;
            lhs = Formula::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                op_span,
                span,
            };
        }
        Ok((lhs, d))
    }

    fn repeat(&mut self, nest: u32) -> PResult<(Formula, u32)> {
        if let Tok::Number(count) = self.peek().tok {
            let count_span = self.bump().span;
            if !self.at(&Tok::Star) {
                return Err(Box::new(
                    Diagnostic::error(
                        Code::Syntax,
                        self.peek().span,
                        format!("a number in a formula repeats what follows, so `*` must come next; found {}", self.peek().tok.describe()),
                    )
                    .with_hint("write e.g. `3 * (S . CD)`; numbers with units belong inside a parameter vector `[...]`"),
                ));
            }
            self.bump();
            let (body, d) = self.repeat(nest + 1)?;
            let span = count_span.to(body.span());
            self.tree_depth(d + 1, span)?;
            return Ok((
                Formula::Repeat {
                    count,
                    count_span,
                    body: Box::new(body),
                    span,
                },
                d + 1,
            ));
        }
        self.primary(nest)
    }

    fn primary(&mut self, nest: u32) -> PResult<(Formula, u32)> {
        match self.peek().tok.clone() {
            Tok::LParen => {
                let open = self.bump().span;
                let (f, d) = self.formula(nest + 1)?;
                self.close(Tok::RParen, open, "`)`")?;
                Ok((f, d))
            }
            Tok::Word(w) if w == "let" => Err(Box::new(
                Diagnostic::error(
                    Code::Syntax,
                    self.peek().span,
                    "`let` must come before the formula",
                )
                .with_hint("move the `let` lines to the top of the recipe body"),
            )),
            Tok::Word(symbol) => {
                let symbol_span = self.bump().span;
                let mut span = symbol_span;
                let method = if self.at(&Tok::Colon) {
                    self.bump();
                    let (m, ms) = self.word("a method name after `:`, e.g. `H:set_temperature`")?;
                    span = span.to(ms);
                    Some((m, ms))
                } else {
                    None
                };
                let args = if self.at(&Tok::LBracket) {
                    let open = self.bump().span;
                    let mut args = Vec::new();
                    while !self.at(&Tok::RBracket) && !self.at(&Tok::Eof) {
                        let (name, name_span) = self.word("a parameter name, e.g. `rate`")?;
                        self.expect(Tok::Eq, "`=` after the parameter name")?;
                        let (value, _) = self.expr(nest + 1)?;
                        args.push(Arg {
                            name,
                            name_span,
                            value,
                        });
                        if !self.at(&Tok::RBracket) {
                            if self.at(&Tok::Eof) {
                                break;
                            }
                            self.expect(Tok::Comma, "`,` between parameters or `]`")?;
                        }
                    }
                    let close = self.close(Tok::RBracket, open, "`]`")?.span;
                    span = span.to(close);
                    Some(args)
                } else {
                    None
                };
                Ok((
                    Formula::Module(Module {
                        symbol,
                        symbol_span,
                        method,
                        args,
                        span,
                    }),
                    0,
                ))
            }
            _ => Err(self.unexpected("a module symbol (like `H` or `P1`), `(` or a repeat count")),
        }
    }

    /// An arithmetic expression.
    fn expr(&mut self, nest: u32) -> PResult<(Expr, u32)> {
        self.expr_level(1, nest)
    }

    /// Precedence climbing over `+ -` (1) and `* /` (2).
    fn expr_level(&mut self, min: u8, nest: u32) -> PResult<(Expr, u32)> {
        self.nesting(nest)?;
        let (mut lhs, mut d) = self.unary(nest)?;
        loop {
            let op = match self.peek().tok {
                Tok::Plus => ExprOp::Add,
                Tok::Minus => ExprOp::Sub,
                Tok::Star => ExprOp::Mul,
                Tok::Slash => ExprOp::Div,
                _ => break,
            };
            if op.precedence() < min {
                break;
            }
            self.bump();
            let (rhs, rd) = self.expr_level(op.precedence() + 1, nest)?;
            let span = lhs.span().to(rhs.span());
            d = d.max(rd) + 1;
            self.tree_depth(d, span)?;
            lhs = Expr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                span,
            };
        }
        Ok((lhs, d))
    }

    fn unary(&mut self, nest: u32) -> PResult<(Expr, u32)> {
        if self.at(&Tok::Minus) {
            self.nesting(nest + 1)?;
            let s = self.bump().span;
            let (e, d) = self.unary(nest + 1)?;
            let span = s.to(e.span());
            self.tree_depth(d + 1, span)?;
            return Ok((
                Expr::Neg {
                    expr: Box::new(e),
                    span,
                },
                d + 1,
            ));
        }
        self.atom(nest)
    }

    fn atom(&mut self, nest: u32) -> PResult<(Expr, u32)> {
        match self.peek().tok.clone() {
            Tok::Number(value) => {
                let mut span = self.bump().span;
                let unit = if matches!(self.peek().tok, Tok::Word(_)) {
                    let (u, us) = self.unit_text()?;
                    span = span.to(us);
                    Some((u, us))
                } else {
                    None
                };
                Ok((Expr::Number { value, unit, span }, 0))
            }
            Tok::Var(name) => {
                let span = self.bump().span;
                Ok((Expr::Var { name, span }, 0))
            }
            Tok::LParen => {
                let open = self.bump().span;
                let (e, d) = self.expr(nest + 1)?;
                self.close(Tok::RParen, open, "`)`")?;
                Ok((e, d))
            }
            Tok::Word(w) => Err(Box::new(
                Diagnostic::error(
                    Code::Syntax,
                    self.peek().span,
                    format!("expected a value, found `{w}`"),
                )
                .with_hint(format!(
                    "values are numbers with units (`130 °C`) or variables (`${w}`)"
                )),
            )),
            _ => Err(self.unexpected("a value: a number with its unit, or a variable like `$T`")),
        }
    }
}

/// Attach comments: before the recipe → head; before each `let` → that let; the rest of the
/// body (before and inside the formula) → formula; after the recipe's `}` → tail.
fn attach_comments(parts: Parts, comments: Vec<Comment>) -> SourceFile {
    let Parts {
        recipe,
        mut lets,
        formula,
        body_start,
    } = parts;
    let mut head = Vec::new();
    let mut formula_comments = Vec::new();
    let mut tail = Vec::new();
    let close = recipe.as_ref().map(|(_, s)| s.start);
    for c in comments {
        let at = c.span.start;
        if at < body_start {
            head.push(c.text);
        } else if close.is_some_and(|e| at > e) {
            tail.push(c.text);
        } else if let Some(l) = lets.iter_mut().find(|l| at < l.span.start) {
            l.comments.push(c.text);
        } else {
            formula_comments.push(c.text);
        }
    }
    SourceFile {
        head_comments: head,
        recipe: recipe.map(|(h, _)| h),
        lets,
        formula_comments,
        formula,
        tail_comments: tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> SourceFile {
        let p = parse(src);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        p.file.unwrap()
    }

    fn err(src: &str) -> Code {
        let p = parse(src);
        p.diagnostics
            .first()
            .map(|d| d.code)
            .unwrap_or_else(|| panic!("no error for {src}"))
    }

    #[test]
    fn precedence_of_the_five_operators() {
        let f = ok("P1 + P2 -> H -> UV . S | 2 * CD").formula;
        // `|` is loosest, then `.`, then `->`, then `+`, then repeat.
        let Formula::Binary {
            op: FormulaOp::Par,
            lhs,
            rhs,
            ..
        } = f
        else {
            panic!()
        };
        assert!(matches!(*rhs, Formula::Repeat { count, .. } if count == 2.0));
        let Formula::Binary {
            op: FormulaOp::Seq,
            lhs,
            ..
        } = *lhs
        else {
            panic!()
        };
        let Formula::Binary {
            op: FormulaOp::Flow,
            lhs,
            ..
        } = *lhs
        else {
            panic!()
        };
        let Formula::Binary {
            op: FormulaOp::Flow,
            lhs,
            ..
        } = *lhs
        else {
            panic!()
        };
        assert!(matches!(
            *lhs,
            Formula::Binary {
                op: FormulaOp::Join,
                ..
            }
        ));
    }

    #[test]
    fn recipe_header_lets_and_comments() {
        let f = ok("# head\nrecipe r(T: °C in 90..180 step 0.5, C: mmol/ml in 0.2..1.2) {\n # q\n let $Q = 30 uL/min;\n # f\n H[T = $T] # inside\n}\n# tail\n");
        let r = f.recipe.unwrap();
        assert_eq!(r.name, "r");
        assert_eq!(r.vars.len(), 2);
        assert_eq!(
            (
                r.vars[0].unit.as_str(),
                r.vars[0].lo,
                r.vars[0].hi,
                r.vars[0].step
            ),
            ("°C", 90.0, 180.0, Some(0.5))
        );
        assert_eq!(r.vars[1].step, None);
        assert_eq!(f.head_comments, vec![" head"]);
        assert_eq!(f.lets[0].comments, vec![" q"]);
        assert_eq!(f.formula_comments, vec![" f", " inside"]);
        assert_eq!(f.tail_comments, vec![" tail"]);
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(err(""), Code::Syntax);
        assert_eq!(err("(H . UV"), Code::UnclosedDelimiter);
        assert_eq!(err("H[T = 1 °C"), Code::UnclosedDelimiter);
        assert_eq!(err("H UV"), Code::Syntax);
        assert_eq!(err("3 H"), Code::Syntax);
        assert_eq!(err(&"(".repeat(500)), Code::TooDeep);
        assert_eq!(
            err("A . ".repeat(400).trim_end_matches(". ")),
            Code::TooDeep
        );
        assert_eq!(err("H[T = 1 + ]"), Code::Syntax);
        assert_eq!(err("recipe r(T °C) { H }"), Code::Syntax);
    }
}
