//! Golden tests: our SNOBFIT against SQSnobFit 0.4.5 (patched to MATLAB v2.1's snoblocf
//! singular-value floor) on fixed inputs. Fixtures: `snobfit_golden.json`, written once by
//! `bench/reference/snobfit_golden.py` (no Python at test time).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::needless_range_loop)]

use maosic_optimizer::snobfit::{Snobfit, SnobfitSettings};
use maosic_optimizer::{ProposalKind, Space};
use serde_json::Value;

const FIXTURE: &str = include_str!("snobfit_golden.json");

fn vec_of(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| (p - q).abs() <= tol * (1.0 + q.abs()))
}

fn same_point(a: &[f64], b: &[f64]) -> bool {
    close(a, b, 1e-9)
}

/// Equal on the grid, except that a coordinate may differ by one grid step when the unrounded
/// value was exactly half-way between the two (a rounding tie: numpy rounds `x/dx`, MATLAB
/// too, we round `(x − lower)/dx`; at a tie the floating-point error decides). `ties` lists the
/// unrounded values that may be ties, per coordinate.
fn grid_equal(a: &[f64], b: &[f64], dx: &[f64], ties: &dyn Fn(usize, f64) -> bool) -> bool {
    a.len() == b.len()
        && (0..a.len()).all(|i| {
            let diff = (a[i] - b[i]).abs();
            diff <= 1e-9 * (1.0 + b[i].abs())
                || ((diff - dx[i]).abs() <= 1e-9 * dx[i] && ties(i, 0.5 * (a[i] + b[i])))
        })
}

struct Run {
    state: Snobfit,
    request: Vec<(u8, Vec<f64>)>,
}

/// Replays a case: the first `first_call` points, ask 3, the rest, ask `nreq` (p = 1).
fn run(case: &Value) -> Run {
    let lower = vec_of(&case["lower"]);
    let upper = vec_of(&case["upper"]);
    let dx = vec_of(&case["dx"]);
    let space =
        Space::new((0..lower.len()).map(|i| (format!("x{i}"), lower[i], upper[i], Some(dx[i]))));
    let mut s = Snobfit::new(&space, &SnobfitSettings { p: 1.0 }, 7).expect("snobfit");
    let xs: Vec<Vec<f64>> = case["x"]
        .as_array()
        .expect("x")
        .iter()
        .map(vec_of)
        .collect();
    let fs = vec_of(&case["f"]);
    let df = case["df"].as_f64().expect("df");
    let k = case["first_call"].as_u64().expect("first_call") as usize;
    for i in 0..k {
        s.tell(space.snap(&xs[i]), Some(fs[i]), Some(df));
    }
    let first = s.ask(3);
    assert!(first
        .iter()
        .all(|p| p.kind == ProposalKind::Snobfit { class: 5 }));
    for i in k..xs.len() {
        s.tell(space.snap(&xs[i]), Some(fs[i]), Some(df));
    }
    let nreq = case["nreq"].as_u64().expect("nreq") as usize;
    let request = s
        .ask(nreq)
        .into_iter()
        .map(|p| match p.kind {
            ProposalKind::Snobfit { class } => (class, p.x),
            other => panic!("unexpected kind {other:?}"),
        })
        .collect();
    Run { state: s, request }
}

fn cases() -> Vec<Value> {
    let v: Value = serde_json::from_str(FIXTURE).expect("fixture JSON");
    v["cases"].as_array().expect("cases").clone()
}

#[test]
fn partition_and_neighbours_match_sqsnobfit() {
    for case in cases() {
        let name = case["name"].as_str().expect("name");
        let r = run(&case);
        let pts = r.state.points();
        let golden = case["points"].as_array().expect("points");
        assert_eq!(pts.len(), golden.len(), "{name}");
        for g in golden {
            let x = vec_of(&g["x"]);
            let p = pts
                .iter()
                .find(|p| same_point(&p.x, &x))
                .unwrap_or_else(|| panic!("{name}: point {x:?} missing"));
            assert!(
                close(&p.xl, &vec_of(&g["xl"]), 1e-9) && close(&p.xu, &vec_of(&g["xu"]), 1e-9),
                "{name} {x:?}: box {:?}..{:?} vs {:?}..{:?}",
                p.xl,
                p.xu,
                g["xl"],
                g["xu"]
            );
            assert_eq!(p.small, g["small"].as_i64().expect("small"), "{name} {x:?}");
            let d = g["d"].as_f64().expect("d");
            assert!(
                (p.d - d).abs() <= 1e-9 * (1.0 + d),
                "{name} {x:?}: d {} vs {d}",
                p.d
            );
            let mut want: Vec<Vec<f64>> = g["near"]
                .as_array()
                .expect("near")
                .iter()
                .map(vec_of)
                .collect();
            let mut got: Vec<Vec<f64>> = p.near.iter().map(|&k| pts[k].x.clone()).collect();
            let key = |a: &Vec<f64>, b: &Vec<f64>| {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| p.total_cmp(q))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            };
            want.sort_by(key);
            got.sort_by(key);
            assert!(
                want.len() == got.len() && want.iter().zip(&got).all(|(a, b)| same_point(a, b)),
                "{name} {x:?}: neighbours {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn local_fits_match_sqsnobfit_with_the_matlab_floor() {
    for case in cases() {
        let name = case["name"].as_str().expect("name");
        let r = run(&case);
        let pts = r.state.points();
        for g in case["points"].as_array().expect("points") {
            let x = vec_of(&g["x"]);
            let p = pts.iter().find(|p| same_point(&p.x, &x)).expect("point");
            let gw = vec_of(&g["g"]);
            let scale = gw.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
            assert!(
                p.g.iter()
                    .zip(&gw)
                    .all(|(a, b)| (a - b).abs() <= 1e-7 * scale),
                "{name} {x:?}: g {:?} vs {gw:?}",
                p.g
            );
            let sw = g["sigma"].as_f64().expect("sigma");
            assert!(
                (p.sigma - sw).abs() <= 1e-7 * (sw.abs() + 1e-12),
                "{name} {x:?}: sigma {} vs {sw}",
                p.sigma
            );
            if !g["y_collides"].as_bool().expect("flag") {
                let raw = vec_of(&g["y_raw"]);
                let dx = vec_of(&case["dx"]);
                let tie = |i: usize, mid: f64| (raw[i] - mid).abs() <= 1e-9 * (1.0 + mid.abs());
                assert!(
                    grid_equal(&p.y, &vec_of(&g["y"]), &dx, &tie),
                    "{name} {x:?}: y {:?} vs {:?}",
                    p.y,
                    g["y"]
                );
                // f3 is the model at y: comparable when y is the same grid point
                let f3 = g["f3"].as_f64().expect("f3");
                if !close(&p.y, &vec_of(&g["y"]), 1e-9) {
                    continue;
                }
                assert!(
                    (p.f3 - f3).abs() <= 1e-7 * (1.0 + f3.abs()),
                    "{name} {x:?}: f3 {} vs {f3}",
                    p.f3
                );
            }
        }
    }
}

#[test]
fn class_4_requests_match_sqsnobfit() {
    for case in cases() {
        let name = case["name"].as_str().expect("name");
        let r = run(&case);
        let want: Vec<(u8, Vec<f64>)> = case["request"]
            .as_array()
            .expect("request")
            .iter()
            .map(|q| (q["class"].as_u64().expect("class") as u8, vec_of(&q["x"])))
            .collect();
        let c4 = |v: &[(u8, Vec<f64>)]| -> Vec<Vec<f64>> {
            v.iter().filter(|q| q.0 == 4).map(|q| q.1.clone()).collect()
        };
        let (got4, want4) = (c4(&r.request), c4(&want));
        let dx = vec_of(&case["dx"]);
        let pts = r.state.points();
        // snobpoint's unrounded coordinates: halfway between the point and a face of its box
        let tie = |i: usize, mid: f64| {
            pts.iter().any(|p| {
                [0.5 * (p.xl[i] + p.x[i]), 0.5 * (p.x[i] + p.xu[i])]
                    .iter()
                    .any(|m| (m - mid).abs() <= 1e-9 * (1.0 + mid.abs()))
            })
        };
        assert!(
            got4.len() == want4.len()
                && got4
                    .iter()
                    .zip(&want4)
                    .all(|(a, b)| grid_equal(a, b, &dx, &tie)),
            "{name}: class 4 {got4:?}\n vs SQSnobFit {want4:?}"
        );
    }
}
