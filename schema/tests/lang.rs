//! Instruction-language tests: the paper's recipes compiled (snapshots), one snapshot per
//! diagnostic kind, scheduling semantics of the five operators, and the GraphQL-facing API.
#![allow(clippy::unwrap_used)]

use maosic_schema::capability::LabDescriptor;
use maosic_schema::lang::{self, Bindings, Code, Severity};
use maosic_schema::program::Program;

const LAB: &str = include_str!("../../examples/paper-lab.toml");
const CHIRALITY: &str = include_str!("../../examples/chirality.recipe");
const INVERSION: &str = include_str!("../../examples/inversion.recipe");

fn lab() -> LabDescriptor {
    LabDescriptor::from_toml_str(LAB).unwrap()
}

fn vars(pairs: &[(&str, f64)]) -> Bindings {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn compile_ok(src: &str, b: &Bindings) -> Program {
    let out = lang::compile(src, &lab(), b);
    let errors: Vec<_> = out.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(
        errors.is_empty(),
        "{}",
        lang::render("t", src, &out.diagnostics)
    );
    out.program.unwrap()
}

fn param(p: &Program, step: usize, name: &str) -> f64 {
    p.steps[step].request.params[name]
}

// ------------------------------------------------------------------ the paper's recipes

#[test]
fn paper_synthesis_compiles_to_the_expected_program() {
    let p = compile_ok(CHIRALITY, &vars(&[("T", 130.0), ("C", 0.8)]));
    p.validate().unwrap();
    p.check_against(&lab()).unwrap();
    insta::assert_json_snapshot!("chirality_T130_C0.8", p);
    insta::assert_snapshot!("chirality_T130_C0.8_dry_run", p.dry_run());
}

#[test]
fn paper_synthesis_keeps_pump_ratio_and_total_flow() {
    for (t, c) in [
        (90.0, 0.2),
        (110.0, 0.4),
        (130.0, 0.8),
        (180.0, 1.2),
        (147.5, 0.63),
    ] {
        let p = compile_ok(CHIRALITY, &vars(&[("T", t), ("C", c)]));
        let by = |m: &str| p.steps.iter().find(|s| s.request.method == m).unwrap();
        let r1 = by("P1.set_rate").request.params["rate"];
        let r2 = by("P2.set_rate").request.params["rate"];
        let r3 = by("P3.set_rate").request.params["rate"];
        // Total flow constant (residence time) and P1/P2 = 0.5, up to the pumps' 0.1 uL/min grid.
        assert!((r1 + r2 + r3 - 90.0).abs() <= 0.15, "{r1}+{r2}+{r3}");
        assert!((r1 / r2 - 0.5).abs() < 0.01, "{r1}/{r2}");
        assert!(
            (r3 - 60.0 * c).abs() <= 0.05 + 1e-9,
            "P3 sets C: {r3} vs {c}"
        );
        assert_eq!(by("H.set_temperature").request.params["T"], t);
        // Heater first (set-point of the flow path), then the pumps, UV, sampler, arm, CD.
        let h = by("H.set_temperature").id;
        assert!(by("P1.set_rate").after.contains(&h));
        assert!(by("CD.scan").start_ms > by("S.collect").start_ms);
        assert_eq!(by("UV.acquire").yields, vec!["absorption_spectrum"]);
        assert_eq!(by("CD.scan").yields, vec!["cd_spectrum"]);
        // The outlet is this synthesis's product only once the stream has flowed through the
        // coil: the UV cell and the sampler wait at least one residence time (100 uL / 90
        // uL/min = 66.7 s; the recipe holds two, for steady state) after the pumps start.
        let hold = by("H.hold");
        let pumps: Vec<u32> = ["P1.set_rate", "P2.set_rate", "P3.set_rate"]
            .iter()
            .map(|m| by(m).id)
            .collect();
        assert!(pumps.iter().all(|id| hold.after.contains(id)));
        let residence_ms = 100.0 / 90.0 * 60_000.0;
        assert!(hold.duration_ms as f64 >= 2.0 * residence_ms - 100.0);
        let uv = by("UV.acquire");
        assert_eq!(
            uv.after,
            vec![hold.id],
            "the inline spectrum waits for the hold"
        );
        assert!(uv.start_ms as f64 >= by("P1.set_rate").start_ms as f64 + residence_ms);
        assert!(by("S.collect").start_ms >= uv.start_ms);
        // The pumps stop (and refill) only after the sample is collected.
        let s = by("S.collect").id;
        assert!(by("P3.refill").after.contains(&s));
    }
}

#[test]
fn inversion_recipe_irradiates_at_800_nm_for_300_s_between_two_cd_scans() {
    let p = compile_ok(INVERSION, &vars(&[("T", 130.0), ("C", 0.8)]));
    let scans: Vec<_> = p
        .steps
        .iter()
        .filter(|s| s.request.method == "CD.scan")
        .collect();
    assert_eq!(scans.len(), 2);
    let l = p
        .steps
        .iter()
        .find(|s| s.request.method == "L.irradiate")
        .unwrap();
    assert_eq!(l.request.params["wavelength"], 800.0);
    assert_eq!(l.request.params["duration"], 300.0);
    assert_eq!(
        l.duration_ms, 302_000,
        "irradiation time counts in the schedule"
    );
    assert!(scans[0].start_ms < l.start_ms && l.start_ms < scans[1].start_ms);
    insta::assert_snapshot!("inversion_T130_C0.8_dry_run", p.dry_run());
}

#[test]
fn paper_recipes_check_clean_over_their_whole_declared_ranges() {
    for src in [CHIRALITY, INVERSION] {
        let d = lang::check(src, &lab(), &Bindings::new());
        assert!(d.is_empty(), "{}", lang::render("t", src, &d));
    }
}

#[test]
fn estimate_is_the_makespan() {
    let b = vars(&[("T", 130.0), ("C", 0.8)]);
    let p = compile_ok(CHIRALITY, &b);
    assert_eq!(
        lang::estimate(CHIRALITY, &lab(), &b).unwrap(),
        p.makespan_ms()
    );
    // 120 s heater (the arm's 15 s discard runs meanwhile) + 1 s pumps + 133.333 s hold (two
    // residence times) + 5 s UV + 60 s sampler + 30 s arm (refills meanwhile) + 180 s CD.
    assert_eq!(p.estimated_duration_ms, 529_333);
    assert!(lang::estimate(CHIRALITY, &lab(), &Bindings::new()).is_err());
}

#[test]
fn compilation_is_deterministic() {
    let b = vars(&[("T", 130.0), ("C", 0.8)]);
    let a = compile_ok(CHIRALITY, &b).to_json_pretty();
    let c = compile_ok(CHIRALITY, &b).to_json_pretty();
    assert_eq!(a, c);
}

// ------------------------------------------------------------------ operator semantics

#[test]
fn sequence_parallel_and_repeat_schedule() {
    let p = compile_ok(
        "CD . (ARM | L[wavelength = 800 nm, duration = 10 s]) . 3 * CD",
        &Bindings::new(),
    );
    let m: Vec<_> = p.steps.iter().map(|s| s.request.method.as_str()).collect();
    assert_eq!(
        m,
        [
            "CD.scan",
            "ARM.to_cd",
            "L.irradiate",
            "CD.scan",
            "CD.scan",
            "CD.scan"
        ]
    );
    assert_eq!(p.steps[1].after, vec![1]);
    assert_eq!(p.steps[2].after, vec![1]);
    assert_eq!(
        p.steps[1].start_ms, p.steps[2].start_ms,
        "`|` runs at the same time"
    );
    assert_eq!(p.steps[3].after, vec![2, 3], "`.` waits for both branches");
    assert_eq!(p.steps[4].after, vec![4]);
    assert_eq!(p.steps[5].after, vec![5]);
    // ARM 30 s ∥ laser 12 s → the join waits for the longer one.
    assert_eq!(p.steps[3].start_ms, 180_000 + 30_000);
}

#[test]
fn flow_into_a_setpoint_device_prepares_it_first() {
    let p = compile_ok(
        "P1[rate = 10 uL/min] -> H[T = 100 °C] -> UV",
        &Bindings::new(),
    );
    let m: Vec<_> = p.steps.iter().map(|s| s.request.method.as_str()).collect();
    assert_eq!(m, ["H.set_temperature", "P1.set_rate", "UV.acquire"]);
    assert_eq!(p.steps[1].after, vec![1]);
    assert_eq!(p.steps[2].after, vec![2]);
}

#[test]
fn units_convert_to_the_device_unit() {
    let p = compile_ok(
        "H[T = 403.15 K] . P1[rate = 0.6 mL/h, volume = 0.25 mL]",
        &Bindings::new(),
    );
    assert_eq!(param(&p, 0, "T"), 130.0);
    assert_eq!(param(&p, 1, "rate"), 10.0);
    assert_eq!(param(&p, 1, "volume"), 250.0);
    // Defaults fill in omitted parameters.
    let p = compile_ok("UV", &Bindings::new());
    assert_eq!(param(&p, 0, "averages"), 10.0);
}

#[test]
fn unicode_operators_mean_the_same() {
    let a = compile_ok(
        "P1[rate = 1 uL/min] → H[T = 100 °C] · 2 × CD",
        &Bindings::new(),
    );
    let b = compile_ok(
        "P1[rate = 1 uL/min] -> H[T = 100 °C] . 2 * CD",
        &Bindings::new(),
    );
    assert_eq!(a.steps, b.steps);
}

// ------------------------------------------------------------------ GraphQL-facing API

#[test]
fn compile_recipe_returns_program_or_located_diagnostics() {
    let lab = lab();
    let p = lang::compile_recipe(&lab, CHIRALITY, &vars(&[("T", 130.0), ("C", 0.8)])).unwrap();
    assert_eq!(p.recipe.as_deref(), Some("chirality"));
    let src = "recipe r(T: °C in 90..180 step 0.5) {\n    H[T = $T]\n    . CDD\n}\n";
    let err = lang::compile_recipe(&lab, src, &vars(&[("T", 100.0)])).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].code, "unknown-symbol");
    assert_eq!(
        (
            err[0].line,
            err[0].column,
            err[0].end_line,
            err[0].end_column
        ),
        (3, 7, 3, 10)
    );
    assert_eq!(err[0].severity, Severity::Error);
    assert_eq!(err[0].hint.as_deref(), Some("did you mean `CD`?"));
    let json = serde_json::to_value(&err[0]).unwrap();
    assert_eq!(json["severity"], "error");
}

// ------------------------------------------------------------------ diagnostics, one per kind

struct Case {
    name: &'static str,
    code: Code,
    src: String,
    vars: Bindings,
    compile: bool,
}

fn case(name: &'static str, code: Code, src: &str) -> Case {
    Case {
        name,
        code,
        src: src.to_string(),
        vars: Bindings::new(),
        compile: false,
    }
}

fn cases() -> Vec<Case> {
    let r = |body: &str| {
        format!("recipe r(T: °C in 90..180 step 0.5, C: mmol/ml in 0.2..1.2 step 0.01) {{\n    {body}\n}}\n")
    };
    let tc = vars(&[("T", 130.0), ("C", 0.8)]);
    vec![
        case("syntax", Code::Syntax, "H[T = 130 °C] UV"),
        case("unclosed_delimiter", Code::UnclosedDelimiter, "(H[T = 130 °C]\n. UV"),
        case("invalid_character", Code::InvalidCharacter, "H[T = 130 °C] & UV"),
        case("invalid_number", Code::InvalidNumber, "H[T = 1e999 °C]"),
        case("too_deep", Code::TooDeep, &format!("{}CD{}", "(".repeat(300), ")".repeat(300))),
        case("unknown_symbol", Code::UnknownSymbol, "HT[T = 130 °C] . CD"),
        case("unknown_method", Code::UnknownMethod, "H:set_temprature[T = 130 °C]"),
        case("unknown_parameter", Code::UnknownParameter, "H[temp = 130 °C]"),
        case("duplicate_parameter", Code::DuplicateParameter, "H[T = 130 °C, T = 140 °C]"),
        case("missing_parameter", Code::MissingParameter, "CD . L[wavelength = 800 nm]"),
        case("unknown_unit", Code::UnknownUnit, "P1[rate = 10 uL/mni]"),
        case("missing_unit", Code::MissingUnit, "H[T = 130]"),
        case("unit_mismatch", Code::UnitMismatch, "P1[rate = 130 °C]"),
        Case {
            vars: vars(&[("C", 1.2)]),
            ..case(
                "out_of_range",
                Code::OutOfRange,
                "recipe r(C: mmol/ml in 0.2..1.2 step 0.01) {\n    P3[rate = $C * 1000 uL/min / (1 mmol/ml)] -> H[T = 130 °C]\n}\n",
            )
        },
        case(
            "out_of_range_over_declared_range",
            Code::OutOfRange,
            "recipe r(T: °C in 90..250 step 0.5) {\n    P1[rate = 10 uL/min] -> H[T = $T]\n}\n",
        ),
        Case { vars: tc.clone(), ..case("undefined_variable", Code::UndefinedVariable, &r("P1[rate = $C * 10 uL/min / (1 mmol/ml)] -> H[T = $Tt]")) },
        Case {
            compile: true,
            ..case("unbound_variable", Code::UnboundVariable, &r("P1[rate = $C * 10 uL/min / (1 mmol/ml)] -> H[T = $T]"))
        },
        Case {
            vars: vars(&[("T", 200.0), ("C", 0.8)]),
            ..case("variable_out_of_range", Code::VariableOutOfRange, &r("P1[rate = $C * 10 uL/min / (1 mmol/ml)] -> H[T = $T]"))
        },
        case(
            "duplicate_variable",
            Code::DuplicateVariable,
            "recipe r(T: °C in 90..180, T: K in 300..400) {\n    H[T = $T]\n}\n",
        ),
        Case { vars: vars(&[("X", 1.0)]), ..case("unknown_binding", Code::UnknownBinding, "recipe r(T: °C in 90..180) {\n    H[T = $T]\n}\n") },
        case("bad_range", Code::BadRange, "recipe r(T: °C in 180..90 step 0.5) {\n    H[T = $T]\n}\n"),
        case("join_non_stream", Code::JoinNonStream, "P1[rate = 10 uL/min] + H[T = 130 °C]"),
        case("flow_from_non_stream", Code::FlowFromNonStream, "H[T = 130 °C] -> UV"),
        case("flow_into_non_flow", Code::FlowIntoNonFlow, "P1[rate = 10 uL/min] -> H[T = 130 °C] -> CD"),
        case("bad_repeat", Code::BadRepeat, "2.5 * CD"),
        case("device_conflict", Code::DeviceConflict, "CD[averages = 3] | ARM . CD[averages = 5]"),
        case("non_finite", Code::NonFinite, "let $x = 1 uL/min / 0;\nP1[rate = 5 uL/min + $x]"),
        case("too_many_steps", Code::TooManySteps, "100 * 200 * CD"),
        Case {
            vars: vars(&[("C", 0.8123)]),
            ..case(
                "resolution_loss",
                Code::ResolutionLoss,
                "recipe r(C: mmol/ml in 0.2..1.2 step 0.0001) {\n    P3[rate = $C * 100 uL/min / (1 mmol/ml)] -> H[T = 130 °C]\n}\n",
            )
        },
        case("rounded", Code::Rounded, "H[T = 130.04 °C]"),
        case("unused_variable", Code::UnusedVariable, "recipe r(T: °C in 90..180 step 0.5, X: in 0..1) {\n    H[T = $T]\n}\n"),
    ]
}

#[test]
fn every_diagnostic_kind_renders_like_a_compiler_error() {
    let lab = lab();
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut kinds = std::collections::BTreeSet::new();
    for c in &cases {
        let diags = if c.compile {
            lang::compile(&c.src, &lab, &c.vars).diagnostics
        } else {
            lang::check(&c.src, &lab, &c.vars)
        };
        assert!(
            diags.iter().any(|d| d.code == c.code),
            "case {}: expected {:?}, got {:#?}",
            c.name,
            c.code,
            diags
        );
        kinds.insert(c.code);
        for d in &diags {
            assert!(
                !d.message.is_empty() && d.hint.is_some(),
                "{}: every diagnostic has a hint: {d:?}",
                c.name
            );
        }
        let text = lang::render(&format!("{}.recipe", c.name), &c.src, &diags);
        insta::assert_snapshot!(format!("diag_{}", c.name), text);
    }
    assert!(kinds.len() >= 25, "{kinds:?}");
}

#[test]
fn out_of_range_names_the_variable_values_that_caused_it() {
    let c = &cases()
        .into_iter()
        .find(|c| c.name == "out_of_range")
        .unwrap();
    let d = lang::check(&c.src, &lab(), &c.vars);
    let d = d.iter().find(|d| d.code == Code::OutOfRange).unwrap();
    assert_eq!(
        d.message,
        "`P3.set_rate(rate)` must be ≤ 1000 uL/min; got 1200 uL/min (from $C = 1.2 mmol/ml)"
    );
    // Unbound: the checker explores the declared range and finds the same corner.
    let d = lang::check(&c.src, &lab(), &Bindings::new());
    assert!(
        d.iter()
            .any(|d| d.code == Code::OutOfRange && d.message.contains("$C = 1.2 mmol/ml")),
        "{d:?}"
    );
}

#[test]
fn warnings_and_notes_do_not_stop_compilation() {
    let out = lang::compile("H[T = 130.04 °C]", &lab(), &Bindings::new());
    assert!(out.diagnostics.iter().all(|d| !d.is_error()));
    assert_eq!(out.program.unwrap().steps[0].request.params["T"], 130.0);
    let src = "recipe r(C: mmol/ml in 0.2..1.2 step 0.0001) {\n    P3[rate = $C * 100 uL/min / (1 mmol/ml)] -> H[T = 130 °C]\n}\n";
    let out = lang::compile(src, &lab(), &vars(&[("C", 0.8123)]));
    assert!(out
        .diagnostics
        .iter()
        .any(|d| d.code == Code::ResolutionLoss && d.severity == Severity::Warning));
    let p = out.program.unwrap();
    assert_eq!(
        p.steps
            .iter()
            .find(|s| s.request.method == "P3.set_rate")
            .unwrap()
            .request
            .params["rate"],
        81.2
    );
    // One step of C (0.0001 → 0.01 uL/min) is far below the pump grid → warned; a coarse campaign
    // step (0.01 → 1 uL/min) is not.
    let coarse = src.replace("step 0.0001", "step 0.01");
    let out = lang::compile(&coarse, &lab(), &vars(&[("C", 0.81)]));
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
}

#[test]
fn formatter_is_idempotent_on_the_examples() {
    for src in [CHIRALITY, INVERSION] {
        let once = lang::format(src).unwrap();
        assert_eq!(once, src, "the shipped examples are canonically formatted");
        assert_eq!(lang::format(&once).unwrap(), once);
        let a = lang::parse(src).file.unwrap().strip_spans();
        let b = lang::parse(&once).file.unwrap().strip_spans();
        assert_eq!(a, b);
    }
    insta::assert_snapshot!("chirality_formatted", lang::format(CHIRALITY).unwrap());
}

#[test]
fn docs_intro_example_compiles() {
    let doc = include_str!("../../docs/language.md");
    let start = doc.find("```text\n").unwrap() + "```text\n".len();
    let block = &doc[start..start + doc[start..].find("```").unwrap()];
    let p = compile_ok(block, &vars(&[("T", 130.0), ("C", 0.8)]));
    assert_eq!(p.steps.len(), 9);
    // The chirality example in the docs is the shipped file.
    assert!(doc.contains(
        CHIRALITY
            .lines()
            .skip(5)
            .collect::<Vec<_>>()
            .join("\n")
            .as_str()
    ));
}

#[test]
fn agent_recheck_rejects_tampered_programs() {
    let lab = lab();
    let mut p = compile_ok(CHIRALITY, &vars(&[("T", 130.0), ("C", 0.8)]));
    let at = |p: &Program, m: &str| p.steps.iter().position(|s| s.request.method == m).unwrap();
    let (h, p1, p2, p3) = (
        at(&p, "H.set_temperature"),
        at(&p, "P1.set_rate"),
        at(&p, "P2.set_rate"),
        at(&p, "P3.set_rate"),
    );
    let uv = at(&p, "UV.acquire");
    p.steps[h].request.params.insert("T".into(), 250.0);
    p.steps[p1].request.params.insert("rate".into(), 14.05);
    p.steps[p2].request.params.remove("rate");
    p.steps[p3].request.method = "P3.explode".into();
    p.steps[uv].request.params.insert("colour".into(), 1.0);
    let problems = p.check_against(&lab).unwrap_err().join("\n");
    for needle in [
        "outside 20..200",
        "not on the 0.1 uL/min grid",
        "needs `rate`",
        "no method `P3.explode`",
        "`UV.acquire` has no parameter `colour`",
    ] {
        assert!(problems.contains(needle), "{needle} missing in\n{problems}");
    }
}

#[test]
fn hostile_sizes_are_bounded() {
    let lab = lab();
    // A billion repetitions stop at the step budget, reported once.
    let d = lang::check("1000 * 1000 * 1000 * (XX . CD)", &lab, &Bindings::new());
    assert_eq!(
        d.iter().filter(|d| d.code == Code::UnknownSymbol).count(),
        1
    );
    assert_eq!(d.iter().filter(|d| d.code == Code::TooManySteps).count(), 1);
    // A body that yields no step is not repeated at all.
    let d = lang::check("1000 * 1000 * 1000 * XX", &lab, &Bindings::new());
    let codes: Vec<_> = d.iter().map(|d| d.code).collect();
    assert_eq!(codes, vec![Code::UnknownSymbol]);
    // Wide parallel groups in sequence would need millions of dependency edges.
    let group = vec!["CD"; 50].join(" | ");
    let wide = format!("({group}) | ({group}) | ({group})");
    let src = format!("100 * ({wide}) . 100 * ({wide})");
    let d = lang::check(&src, &lab, &Bindings::new());
    assert!(d.iter().any(|d| d.code == Code::TooManySteps), "{d:?}");
}

#[test]
fn coarse_device_grid_against_a_finer_campaign_step_warns() {
    // A heater that only sets whole degrees, driven by a campaign that steps T by 0.5 °C.
    let coarse = LAB.replace(
        "    unit = \"°C\"\n    min = 20.0\n    max = 200.0\n    resolution = 0.1",
        "    unit = \"°C\"\n    min = 20.0\n    max = 200.0\n    resolution = 1.0",
    );
    assert_ne!(coarse, LAB);
    let lab = LabDescriptor::from_toml_str(&coarse).unwrap();
    let src = "recipe r(T: °C in 90..180 step 0.5) {\n    H[T = $T]\n}\n";
    let warned = lang::compile(src, &lab, &vars(&[("T", 130.5)]));
    let d: Vec<_> = warned.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(d, vec![Code::ResolutionLoss]);
    assert_eq!(warned.program.unwrap().steps[0].request.params["T"], 131.0);
    // On the device grid nothing is lost.
    assert!(lang::compile(src, &lab, &vars(&[("T", 130.0)]))
        .diagnostics
        .is_empty());
    // The paper's heater (0.1 °C) follows a 0.5 °C campaign step without loss.
    assert!(lang::compile(src, &self::lab(), &vars(&[("T", 130.5)]))
        .diagnostics
        .is_empty());
}

#[test]
fn graphql_variables_from_json() {
    let b = lang::bindings_from_json(&serde_json::json!({"T": 130, "$C": 0.8})).unwrap();
    assert_eq!(b, vars(&[("T", 130.0), ("C", 0.8)]));
    assert!(lang::bindings_from_json(&serde_json::Value::Null)
        .unwrap()
        .is_empty());
    assert!(lang::bindings_from_json(&serde_json::json!({"T": "hot"})).is_err());
    assert!(lang::bindings_from_json(&serde_json::json!([1, 2])).is_err());
}

#[test]
fn fuzzer_slow_units_stay_fast() {
    // Found by the fuzzer as "slow units": nested repeats of an unknown module.
    let lab = lab();
    for src in [
        " 8* 8*0*8*0* 8*0* 8*0*8*0* 8*0*8*0* 8*8*8*8* 8*0* 8*0*8*0* 8*0* 8*0* 8*0*y",
        "8*8*8*8*8*8*(y . y . y . CD)",
    ] {
        // They used to walk the tree up to the work budget; now an empty body is not repeated
        // and quiet repetitions skip building diagnostics.
        let d = lang::check(src, &lab, &Bindings::new());
        assert!(d.iter().any(|d| d.code == Code::UnknownSymbol));
        assert_eq!(
            d.iter().filter(|d| d.code == Code::UnknownSymbol).count(),
            if src.contains("CD") { 3 } else { 1 }
        );
    }
}
