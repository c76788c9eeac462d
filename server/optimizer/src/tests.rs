//! Unit and property tests of the ask/tell contract, SNOBFIT invariants, the GP and the bench.

use std::collections::BTreeSet;

use maosic_landscape::Landscape;
use proptest::prelude::*;

use crate::snobfit::{check_partition, Snobfit, SnobfitSettings};
use crate::*;

fn paper_space() -> Space {
    Space::new([
        ("T".to_string(), 90.0, 180.0, Some(0.5)),
        ("C".to_string(), 0.2, 1.2, Some(0.01)),
    ])
}

fn all_algorithms() -> Vec<Algorithm> {
    ["snobfit", "bo", "random", "sobol", "grid", "portfolio"]
        .iter()
        .filter_map(|n| Algorithm::from_name(n))
        .collect()
}

/// The spec of a campaign on the paper's space (maximising, like the paper landscape).
fn paper_spec(alg: Algorithm, seed: u64) -> OptimizerSpec {
    OptimizerSpec {
        space: paper_space(),
        goal: Goal::Maximize,
        seed,
        algorithm: alg,
    }
}

fn opt(alg: Algorithm, seed: u64) -> Optimizer {
    Optimizer::new(paper_spec(alg, seed)).unwrap()
}

fn on_grid(space: &Space, x: &[f64]) -> bool {
    space.parameters.iter().zip(x).all(|(p, &v)| {
        let k = (v - p.lower) / p.step();
        v >= p.lower && v <= p.upper && (k - k.round()).abs() < 1e-6
    })
}

/// Run `steps` ask/tell rounds on the paper landscape; every `fail_every`-th point fails.
fn drive(o: &mut Optimizer, steps: usize, batch: usize, fail_every: usize) -> Vec<Vec<f64>> {
    let l = Landscape::paper();
    let mut all = Vec::new();
    let mut k = 0;
    for _ in 0..steps {
        for p in o.ask(batch) {
            k += 1;
            let obs = if fail_every > 0 && k % fail_every == 0 {
                Observation::failed()
            } else {
                Observation::new(l.eval(&p.x) + 0.01 * ((k * 7919) % 13) as f64 / 13.0)
            };
            o.tell(&p.x, obs).unwrap();
            all.push(p.x);
        }
    }
    all
}

#[test]
fn space_snaps_into_box_and_onto_grid() {
    let s = paper_space();
    assert_eq!(s.snap(&[130.26, 0.8049]), vec![130.5, 0.8]);
    assert_eq!(s.snap(&[10.0, 5.0]), vec![90.0, 1.2]);
    assert_eq!(s.snap(&[f64::NAN, 0.2]), vec![90.0, 0.2]);
    assert_eq!(s.snap(&[0.2 + 60.0 * 0.01, 0.8])[0], 90.0);
    assert_eq!(s.grid_index(&[90.5, 0.21]), vec![1, 1]);
    let bad = Space::new([("a".to_string(), 1.0, 0.0, None)]);
    assert!(bad.validate().is_err());
    let bad = Space::new([("a".to_string(), 0.0, 1.0, Some(0.0))]);
    assert!(bad.validate().is_err());
    let wide = Space::new((0..257).map(|i| (format!("p{i}"), 0.0, 1.0, None)));
    assert!(wide.validate().is_err());
}

#[test]
fn every_algorithm_proposes_on_grid_inside_bounds_without_duplicates() {
    for alg in all_algorithms() {
        let mut o = opt(alg.clone(), 3);
        let mut measured: BTreeSet<Vec<i64>> = BTreeSet::new();
        let s = paper_space();
        for _ in 0..8 {
            let props = o.ask(5);
            assert_eq!(props.len(), 5, "{}", alg.name());
            let mut batch = BTreeSet::new();
            for p in &props {
                assert!(on_grid(&s, &p.x), "{} off grid: {:?}", alg.name(), p.x);
                let idx = s.grid_index(&p.x);
                assert!(
                    batch.insert(idx.clone()),
                    "{} duplicate in batch",
                    alg.name()
                );
                assert!(
                    !measured.contains(&idx),
                    "{} re-proposed {:?}",
                    alg.name(),
                    p.x
                );
            }
            for p in props {
                measured.insert(s.grid_index(&p.x));
                o.tell(&p.x, Observation::new(Landscape::paper().eval(&p.x)))
                    .unwrap();
            }
        }
    }
}

#[test]
fn state_round_trip_gives_identical_next_proposals() {
    for alg in all_algorithms() {
        let mut o = opt(alg.clone(), 11);
        drive(&mut o, 6, 3, 5);
        let json = o.state_json().unwrap();
        let mut r = Optimizer::from_state_json(&json).unwrap();
        for _ in 0..3 {
            let a = o.ask(4);
            let b = r.ask(4);
            assert_eq!(a, b, "{}", alg.name());
            for p in &a {
                o.tell(&p.x, Observation::new(1.0 + p.x[1])).unwrap();
                r.tell(&p.x, Observation::new(1.0 + p.x[1])).unwrap();
            }
        }
        // and the serialised states agree again
        assert_eq!(o.state_json().unwrap(), r.state_json().unwrap());
    }
}

#[test]
fn same_seed_same_history_same_proposals() {
    for alg in all_algorithms() {
        let mut a = opt(alg.clone(), 5);
        let mut b = opt(alg.clone(), 5);
        assert_eq!(
            drive(&mut a, 5, 4, 0),
            drive(&mut b, 5, 4, 0),
            "{}",
            alg.name()
        );
    }
}

#[test]
fn failed_observations_are_tolerated() {
    for alg in all_algorithms() {
        let mut o = opt(alg.clone(), 2);
        // every 3rd experiment fails
        drive(&mut o, 10, 4, 3);
        let props = o.ask(4);
        assert_eq!(props.len(), 4, "{}", alg.name());
        // all failures
        let mut o = opt(alg.clone(), 2);
        for _ in 0..4 {
            for p in o.ask(3) {
                o.tell(&p.x, Observation::new(f64::NAN)).unwrap();
            }
        }
        assert_eq!(o.ask(3).len(), 3, "{}", alg.name());
        assert!(o.best().is_none());
        assert!(Optimizer::from_state_json(&o.state_json().unwrap()).is_ok());
    }
}

#[test]
fn tell_rejects_bad_points() {
    let mut o = opt(Algorithm::Random, 0);
    assert!(o.tell(&[1.0], Observation::new(1.0)).is_err());
    assert!(o.tell(&[f64::NAN, 0.5], Observation::new(1.0)).is_err());
    assert!(o.tell(&[130.0, 0.5], Observation::new(1.0)).is_ok());
    assert!(Optimizer::from_state_json("{").is_err());
}

#[test]
fn best_respects_goal() {
    let mut o = opt(Algorithm::Random, 0);
    o.tell(&[130.0, 0.5], Observation::new(0.3)).unwrap();
    o.tell(&[131.0, 0.5], Observation::new(0.9)).unwrap();
    assert_eq!(o.best().map(|b| b.1), Some(0.9));
}

#[test]
fn snobfit_remeasurement_averages() {
    let mut s = Snobfit::new(&paper_space(), &SnobfitSettings::default(), 0).unwrap();
    let l = Landscape::paper();
    // enough distinct points for the neighbour structure
    for i in 0..10 {
        let x = vec![90.0 + 9.0 * i as f64, 0.2 + 0.1 * i as f64];
        s.tell(x.clone(), Some(-l.eval(&x)), None);
    }
    s.tell(vec![130.0, 0.8], Some(1.0), Some(0.1));
    s.ask(1);
    s.tell(vec![130.0, 0.8], Some(3.0), Some(0.1));
    s.tell(vec![130.0, 0.8], Some(5.0), Some(0.1));
    s.ask(2);
    let p = s.points().iter().find(|p| p.x == vec![130.0, 0.8]).unwrap();
    assert_eq!(p.np, 3);
    assert!((p.f - 3.0).abs() < 1e-12);
    assert!((p.t - 8.0).abs() < 1e-9, "t = {}", p.t);
    check_partition(&s).unwrap();
    assert_eq!(s.points().len(), 11);
}

#[test]
fn snobfit_batch_uses_several_classes() {
    let mut o = opt(Algorithm::Snobfit(SnobfitSettings::default()), 1);
    drive(&mut o, 4, 8, 0);
    let classes: BTreeSet<u8> = o
        .ask(8)
        .iter()
        .filter_map(|p| match p.kind {
            ProposalKind::Snobfit { class } => Some(class),
            _ => None,
        })
        .collect();
    assert!(classes.contains(&1), "{classes:?}");
    assert!(classes.len() >= 3, "{classes:?}");
}

#[test]
fn snobfit_first_calls_are_space_filling() {
    let mut o = opt(Algorithm::Snobfit(SnobfitSettings::default()), 1);
    let p = o.ask(8);
    assert!(p
        .iter()
        .all(|p| p.kind == ProposalKind::Snobfit { class: 5 }));
}

#[test]
fn snobfit_box_qp_finds_minimisers() {
    use nalgebra::DMatrix;
    // convex: minimiser (1, −2) inside the box
    let g = [-2.0, 4.0];
    let gm = DMatrix::from_row_slice(2, 2, &[2.0, 0.0, 0.0, 2.0]);
    let p = crate::snobfit::box_qp(&g, &gm, &[-5.0, -5.0], &[5.0, 5.0]);
    assert!(
        (p[0] - 1.0).abs() < 1e-9 && (p[1] + 2.0).abs() < 1e-9,
        "{p:?}"
    );
    // concave: a corner
    let gm = DMatrix::from_row_slice(2, 2, &[-2.0, 0.0, 0.0, -2.0]);
    let p = crate::snobfit::box_qp(&[0.1, -0.1], &gm, &[-1.0, -1.0], &[1.0, 1.0]);
    assert!(
        (p[0] + 1.0).abs() < 1e-12 && (p[1] - 1.0).abs() < 1e-12,
        "{p:?}"
    );
}

#[test]
fn least_squares_survives_singular_systems() {
    use nalgebra::{DMatrix, DVector};
    let a = DMatrix::from_row_slice(3, 2, &[1.0, 2.0, 2.0, 4.0, 3.0, 6.0]);
    let b = DVector::from_column_slice(&[1.0, 2.0, 3.0]);
    let x = crate::linalg::lstsq(&a, &b);
    assert!(x.iter().all(|v| v.is_finite()));
    assert!(((&a * &x) - &b).norm() < 1e-9);
    let z = DMatrix::<f64>::zeros(2, 2);
    assert!(crate::linalg::pinv(&z).iter().all(|v| *v == 0.0));
}

#[test]
fn expected_improvement_behaves() {
    use crate::bo::expected_improvement as ei;
    assert!(ei(0.0, 1.0, 0.0) > 0.39 && ei(0.0, 1.0, 0.0) < 0.4);
    assert!(ei(-1.0, 0.1, 0.0) > ei(1.0, 0.1, 0.0));
    assert!(ei(0.0, 2.0, 0.0) > ei(0.0, 1.0, 0.0));
    assert_eq!(ei(1.0, 0.0, 0.0), 0.0);
    assert_eq!(ei(-1.0, 0.0, 0.0), 1.0);
}

#[test]
fn bo_learns_the_paper_peak() {
    let l = Landscape::paper();
    let mut o = opt(Algorithm::from_name("bo").unwrap(), 4);
    for _ in 0..30 {
        for p in o.ask(1) {
            o.tell(&p.x, Observation::new(l.eval(&p.x))).unwrap();
        }
    }
    let best = o.best().unwrap().1;
    assert!(best > 0.9, "best after 30: {best}");
}

#[test]
fn spec_serde_round_trip() {
    let spec = paper_spec(Algorithm::from_name("snobfit").unwrap(), 9);
    let j = serde_json::to_string(&spec).unwrap();
    let back: OptimizerSpec = serde_json::from_str(&j).unwrap();
    assert_eq!(spec, back);
    let minimal: OptimizerSpec = serde_json::from_str(
        r#"{"space":{"parameters":[{"name":"T","lower":90,"upper":180,"resolution":0.5}]},
            "algorithm":{"kind":"bo"}}"#,
    )
    .unwrap();
    assert_eq!(minimal.goal, Goal::Minimize);
    assert!(Optimizer::new(minimal).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// SNOBFIT partition invariant: the boxes tile the search box, each holds its own point and
    /// no other point lies strictly inside another point's box — after every call, including
    /// re-measurements and failed points.
    #[test]
    fn snobfit_partition_invariant(seed in 0u64..1000, batch in 1usize..10, steps in 1usize..12, fail in 0usize..5) {
        let mut o = opt(Algorithm::Snobfit(SnobfitSettings::default()), seed);
        let l = Landscape::paper();
        let mut k = 0;
        for step in 0..steps {
            let props = o.ask(batch);
            for p in &props {
                k += 1;
                let obs = if fail > 0 && k % (fail + 2) == 0 { Observation::failed() } else { Observation::new(l.eval(&p.x)) };
                o.tell(&p.x, obs).unwrap();
            }
            // a re-measurement now and then
            if step % 3 == 2 {
                if let Some(p) = props.first() {
                    o.tell(&p.x, Observation::new(l.eval(&p.x) + 0.01)).unwrap();
                }
            }
            let _ = o.ask(1); // processes the told points
            let s = o.snobfit_state().unwrap();
            prop_assert!(check_partition(s).is_ok(), "{:?}", check_partition(s));
        }
    }

    /// Proposals of every algorithm lie inside the bounds, on the grid, without duplicates in
    /// the batch, for arbitrary (told) histories including failures and off-grid points.
    #[test]
    fn proposals_valid_after_arbitrary_history(
        alg in 0usize..5,
        seed in 0u64..100,
        pts in proptest::collection::vec((80.0f64..190.0, 0.0f64..1.5, proptest::option::of(-2.0f64..2.0)), 0..25),
        batch in 1usize..7,
    ) {
        let algorithm = all_algorithms()[alg].clone();
        let mut o = opt(algorithm, seed);
        for (t, c, v) in &pts {
            o.tell(&[*t, *c], v.map_or(Observation::failed(), Observation::new)).unwrap();
        }
        let s = paper_space();
        let props = o.ask(batch);
        prop_assert!(!props.is_empty());
        let mut seen = BTreeSet::new();
        for p in &props {
            prop_assert!(on_grid(&s, &p.x), "{:?}", p.x);
            prop_assert!(seen.insert(s.grid_index(&p.x)));
        }
    }

    /// Serialise → deserialise at an arbitrary point of an arbitrary history (failures,
    /// off-grid and repeated points included) gives identical next proposals.
    #[test]
    fn state_round_trip_after_arbitrary_history(
        alg in 0usize..5,
        seed in 0u64..100,
        pts in proptest::collection::vec((80.0f64..190.0, 0.0f64..1.5, proptest::option::of(-2.0f64..2.0)), 0..20),
        asks in 0usize..3,
        batch in 1usize..6,
    ) {
        let mut o = opt(all_algorithms()[alg].clone(), seed);
        for (k, (t, c, v)) in pts.iter().enumerate() {
            o.tell(&[*t, *c], v.map_or(Observation::failed(), Observation::new)).unwrap();
            if k % 7 == 6 {
                for _ in 0..asks {
                    let _ = o.ask(batch);
                }
            }
        }
        let mut r = Optimizer::from_state_json(&o.state_json().unwrap()).unwrap();
        prop_assert_eq!(o.ask(batch), r.ask(batch));
    }
}

/// A BO state stored before issue #16 (no `explore_every`, `ls_prior_sd`, `warm_restarts`,
/// `refine_starts`, `local_every` settings, no `model_asks` counter) still loads and asks.
#[test]
fn bo_state_without_the_issue_16_fields_loads() {
    let mut o = opt(Algorithm::from_name("bo").unwrap(), 3);
    drive(&mut o, 8, 1, 0);
    let mut v: serde_json::Value = serde_json::from_str(&o.state_json().unwrap()).unwrap();
    let removed = [
        "explore_every",
        "ls_prior_sd",
        "warm_restarts",
        "refine_starts",
        "local_every",
    ];
    for key in removed {
        assert!(v["spec"]["algorithm"]
            .as_object_mut()
            .unwrap()
            .remove(key)
            .is_some());
        assert!(v["engine"]["settings"]
            .as_object_mut()
            .unwrap()
            .remove(key)
            .is_some());
    }
    assert!(v["engine"]
        .as_object_mut()
        .unwrap()
        .remove("model_asks")
        .is_some());
    let mut r = Optimizer::from_state_json(&v.to_string()).unwrap();
    let p = r.ask(2);
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|q| on_grid(&paper_space(), &q.x)));
}

/// Every third model-based proposal is space-filling, and the local / refined acquisitions
/// (opt-in) still propose valid new points.
#[test]
fn bo_exploration_and_local_steps_propose_valid_points() {
    for settings in [
        bo::BoSettings::default(),
        bo::BoSettings {
            local_every: 2,
            refine_starts: 2,
            ..Default::default()
        },
    ] {
        let mut o = opt(Algorithm::Bo(settings), 5);
        let xs = drive(&mut o, 40, 1, 0);
        let distinct: BTreeSet<Vec<i64>> = xs.iter().map(|x| paper_space().grid_index(x)).collect();
        assert_eq!(distinct.len(), xs.len());
        assert!(xs.iter().all(|x| on_grid(&paper_space(), x)));
    }
}
