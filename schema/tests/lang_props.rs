//! Property tests of the instruction language: the formatter round trip on generated trees,
//! no panics on arbitrary text and token soup, and every emitted parameter inside its device's
//! range and on its resolution grid.
#![allow(clippy::unwrap_used)]

use maosic_schema::capability::LabDescriptor;
use maosic_schema::lang::ast::*;
use maosic_schema::lang::format::format_file;
use maosic_schema::lang::{self, Bindings, Span};
use proptest::prelude::*;

const LAB: &str = include_str!("../../examples/paper-lab.toml");
const CHIRALITY: &str = include_str!("../../examples/chirality.recipe");
const Z: Span = Span { start: 0, end: 0 };

fn lab() -> LabDescriptor {
    LabDescriptor::from_toml_str(LAB).unwrap()
}

// ------------------------------------------------------------------ generators of trees

fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_]{0,6}".prop_filter("keywords", |s| {
        !matches!(s.as_str(), "recipe" | "let" | "in" | "step")
    })
}

fn unit() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "uL/min",
        "mL",
        "uL",
        "°C",
        "K",
        "mmol/ml",
        "nm",
        "ms",
        "s",
        "min",
        "%",
        "mW",
        "furlong/h",
    ])
    .prop_map(str::to_string)
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..1e6f64,
        (0u32..1000).prop_map(f64::from),
        Just(0.5),
        Just(1e-7),
        Just(1e22)
    ]
}

fn signed() -> impl Strategy<Value = f64> {
    prop_oneof![number(), number().prop_map(|x| -x)]
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        (number(), prop::option::of(unit())).prop_map(|(value, u)| Expr::Number {
            value,
            unit: u.map(|u| (u, Z)),
            span: Z
        }),
        ident().prop_map(|name| Expr::Var { name, span: Z }),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Neg {
                expr: Box::new(e),
                span: Z
            }),
            (
                prop::sample::select(vec![ExprOp::Add, ExprOp::Sub, ExprOp::Mul, ExprOp::Div]),
                inner.clone(),
                inner
            )
                .prop_map(|(op, l, r)| Expr::Binary {
                    op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                    span: Z
                }),
        ]
    })
}

fn module() -> impl Strategy<Value = Formula> {
    (
        ident(),
        prop::option::of(ident()),
        prop::option::of(prop::collection::vec((ident(), expr()), 0..3)),
    )
        .prop_map(|(symbol, method, args)| {
            Formula::Module(Module {
                symbol,
                symbol_span: Z,
                method: method.map(|m| (m, Z)),
                args: args.map(|a| {
                    a.into_iter()
                        .map(|(name, value)| Arg {
                            name,
                            name_span: Z,
                            value,
                        })
                        .collect()
                }),
                span: Z,
            })
        })
}

fn formula() -> impl Strategy<Value = Formula> {
    module().prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            (
                prop::sample::select(vec![
                    FormulaOp::Par,
                    FormulaOp::Seq,
                    FormulaOp::Flow,
                    FormulaOp::Join
                ]),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, l, r)| Formula::Binary {
                    op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                    op_span: Z,
                    span: Z
                }),
            (
                prop_oneof![(1u32..20).prop_map(f64::from), Just(2.5)],
                inner
            )
                .prop_map(|(count, b)| {
                    Formula::Repeat {
                        count,
                        count_span: Z,
                        body: Box::new(b),
                        span: Z,
                    }
                }),
        ]
    })
}

fn comment() -> impl Strategy<Value = String> {
    // The lexer keeps comments right-trimmed.
    "[ a-zA-Z0-9#()+.,$°-]{0,20}".prop_map(|s: String| s.trim_end().to_string())
}

fn var_decl() -> impl Strategy<Value = VarDecl> {
    (
        ident(),
        prop_oneof![Just(String::new()), unit()],
        signed(),
        signed(),
        prop::option::of(number()),
    )
        .prop_map(|(name, unit, lo, hi, step)| VarDecl {
            name,
            name_span: Z,
            unit,
            unit_span: Z,
            lo,
            hi,
            step,
            span: Z,
        })
}

fn source_file() -> impl Strategy<Value = SourceFile> {
    (
        prop::option::of((ident(), prop::collection::vec(var_decl(), 0..3))),
        prop::collection::vec(
            (prop::collection::vec(comment(), 0..2), ident(), expr()),
            0..3,
        ),
        prop::collection::vec(comment(), 0..2),
        formula(),
        prop::collection::vec(comment(), 0..2),
        prop::collection::vec(comment(), 0..2),
    )
        .prop_map(|(recipe, lets, fc, formula, head, tail)| {
            let is_recipe = recipe.is_some();
            SourceFile {
                head_comments: if is_recipe { head } else { vec![] },
                recipe: recipe.map(|(name, vars)| RecipeHeader {
                    name,
                    name_span: Z,
                    vars,
                }),
                lets: lets
                    .into_iter()
                    .map(|(comments, name, value)| Let {
                        comments,
                        name,
                        name_span: Z,
                        value,
                        span: Z,
                    })
                    .collect(),
                formula_comments: fc,
                formula,
                tail_comments: if is_recipe { tail } else { vec![] },
            }
        })
}

// ------------------------------------------------------------------ token soup

fn token_soup() -> impl Strategy<Value = String> {
    let tok = prop::sample::select(vec![
        "P1",
        "P2",
        "P3",
        "H",
        "UV",
        "S",
        "ARM",
        "CD",
        "L",
        "X",
        ":",
        "set_rate",
        "stop",
        "to_laser",
        "[",
        "]",
        "(",
        ")",
        "{",
        "}",
        "rate",
        "T",
        "wavelength",
        "duration",
        "volume",
        "=",
        ",",
        ";",
        "+",
        "->",
        ".",
        "·",
        "|",
        "*",
        "×",
        "/",
        "-",
        "2",
        "0",
        "130",
        "0.8",
        "1e3",
        "uL/min",
        "°C",
        "K",
        "nm",
        "s",
        "mmol/ml",
        "$T",
        "$C",
        "$Q",
        "let",
        "recipe",
        "r",
        "in",
        "..",
        "step",
        "#c\n",
        "\n",
        "→",
    ]);
    prop::collection::vec(tok, 0..40).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `parse(format(x)) == x` for generated trees, and formatting is idempotent.
    #[test]
    fn format_round_trip(tree in source_file()) {
        let text = format_file(&tree);
        let parsed = lang::parse(&text);
        prop_assert!(parsed.diagnostics.is_empty(), "{text}\n{:?}", parsed.diagnostics);
        let back = parsed.file.unwrap();
        prop_assert_eq!(back.strip_spans(), tree.strip_spans(), "{}", text);
        prop_assert_eq!(format_file(&back), text);
    }

    /// Nothing panics on arbitrary text.
    #[test]
    fn never_panics_on_arbitrary_text(src in ".{0,200}", t in 0.0..300.0f64, c in -1.0..2.0f64) {
        let lab = lab();
        let b: Bindings = [("T".to_string(), t), ("C".to_string(), c)].into();
        let _ = lang::check(&src, &lab, &b);
        let out = lang::compile(&src, &lab, &b);
        let _ = lang::render("p", &src, &out.diagnostics);
        let _ = lang::format(&src);
    }

    /// Nothing panics on near-valid token soup; whatever compiles is a well-formed program, and
    /// whatever formats round-trips.
    #[test]
    fn token_soup_never_panics(src in token_soup(), t in 80.0..190.0f64) {
        let lab = lab();
        let b: Bindings = [("T".to_string(), t)].into();
        let _ = lang::check(&src, &lab, &Bindings::new());
        let out = lang::compile(&src, &lab, &b);
        if let Some(p) = out.program {
            prop_assert!(p.validate().is_ok());
        }
        if let Ok(f) = lang::format(&src) {
            let a = lang::parse(&src).file.unwrap().strip_spans();
            let b = lang::parse(&f).file.unwrap().strip_spans();
            prop_assert_eq!(a, b);
        }
        for d in lang::check(&src, &lab, &Bindings::new()) {
            prop_assert!(d.span.end <= src.len());
        }
    }

    /// Every emitted parameter lies in its device's range and on its resolution grid — for the
    /// paper's recipe at any point of its declared space ...
    #[test]
    fn paper_recipe_parameters_in_range_and_on_grid(t in 90.0..=180.0f64, c in 0.2..=1.2f64) {
        let lab = lab();
        let b: Bindings = [("T".to_string(), t), ("C".to_string(), c)].into();
        let out = lang::compile(CHIRALITY, &lab, &b);
        let p = out.program.unwrap();
        assert_on_grid(&lab, &p)?;
    }

    /// ... and for random module calls with values near and beyond the device limits.
    #[test]
    fn random_calls_in_range_and_on_grid(calls in prop::collection::vec((0usize..9, 0usize..4, prop::collection::vec(-0.2..1.2f64, 4)), 1..6)) {
        let lab = lab();
        let mut parts = Vec::new();
        for (d, m, fracs) in calls {
            let dev = &lab.devices[d];
            let meth = &dev.methods[m % dev.methods.len()];
            let args: Vec<String> = meth.params.iter().zip(fracs).map(|(p, f)| {
                let v = p.min + f * (p.max - p.min);
                format!("{} = {v} {}", p.name, p.unit)
            }).collect();
            parts.push(format!("{}:{}[{}]", dev.symbol, meth.name, args.join(", ")));
        }
        let src = parts.join(" . ");
        let out = lang::compile(&src, &lab, &Bindings::new());
        if let Some(p) = out.program {
            assert_on_grid(&lab, &p)?;
        } else {
            prop_assert!(out.diagnostics.iter().any(|d| d.is_error()));
        }
    }
}

fn assert_on_grid(
    lab: &LabDescriptor,
    p: &maosic_schema::program::Program,
) -> Result<(), TestCaseError> {
    prop_assert!(p.validate().is_ok());
    prop_assert!(p.check_against(lab).is_ok(), "{:?}", p.check_against(lab));
    for s in &p.steps {
        let (_, m) = lab.method(&s.request.method).unwrap();
        for (name, v) in &s.request.params {
            let d = m.param(name).unwrap();
            prop_assert!(
                *v >= d.min && *v <= d.max,
                "{} {name}={v} outside {}..{}",
                s.request.method,
                d.min,
                d.max
            );
            if let Some(res) = d.resolution {
                let k = (v - d.min) / res;
                prop_assert!(
                    (k - k.round()).abs() < 1e-6,
                    "{} {name}={v} off the {res} grid",
                    s.request.method
                );
            }
        }
    }
    Ok(())
}

/// Regression (fuzzer): texts near the depth limits still parse after formatting — formatting
/// never adds more nesting than the tree's own depth.
#[test]
fn deep_but_legal_texts_round_trip() {
    let negs = format!("UV[to = {}600 nm]", "-".repeat(99));
    let chain = vec!["CD"; 101].join(" . ");
    let mut nested = "P1".to_string();
    for _ in 0..50 {
        nested = format!("({nested} + P2 -> H)"); // two tree levels and one paren each
    }
    let mut expr = "1 uL/min".to_string();
    for _ in 0..33 {
        // three tree levels and one paren each
        expr = format!("-(-{expr} - 1 uL/min)");
    }
    for src in [negs, chain, nested, format!("P1[rate = {expr}]")] {
        let p = lang::parse(&src);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics.first());
        let text = lang::format(&src).unwrap();
        let back = lang::parse(&text);
        assert!(
            back.diagnostics.is_empty(),
            "{text}\n{:?}",
            back.diagnostics.first()
        );
        assert_eq!(
            back.file.unwrap().strip_spans(),
            p.file.unwrap().strip_spans()
        );
        // The checker walks such trees without exhausting a test thread's stack.
        let _ = lang::check(&src, &lab(), &Bindings::new());
        let _ = lang::compile(&src, &lab(), &Bindings::new());
    }
    // One more level is refused, with a diagnostic rather than a stack overflow.
    let too_long = vec!["CD"; 102].join(" . ");
    assert_eq!(
        lang::parse(&too_long).diagnostics[0].code,
        lang::Code::TooDeep
    );
    let too_nested = format!("{}CD{}", "(".repeat(300), ")".repeat(300));
    assert_eq!(
        lang::parse(&too_nested).diagnostics[0].code,
        lang::Code::TooDeep
    );
}
