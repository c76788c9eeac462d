//! Seeded generator of landscape families (issue #16): landscapes nobody tuned an optimizer to,
//! on the paper's domain and grid (T 90–180 °C step 0.5, C 0.2–1.2 mmol/ml step 0.01, plus a
//! flow and a nuisance variable for the higher-dimensional class).
//!
//! Every generated landscape is an ordinary [`LandscapeSpec`] (so it is written with
//! [`to_toml`] and read back by [`crate::Landscape::from_toml_str`] like any file), and its
//! `[optimum]` is computed on the resolution grid — the exact grid maximum for 2-D classes, a
//! coarse grid plus grid hill-climbing for 3-D and 4-D (see [`grid_optimum`]).
//!
//! Two disjoint seed streams: [`FamilySet::Tune`] (judge changes on it) and
//! [`FamilySet::Test`] (report on it, never tune on it). Landscape `i` of class `c` in set `s`
//! comes from a ChaCha8 generator seeded by `(c, i)` on stream `s`, so the two sets never share
//! a random draw, and the same `(class, set, index)` always gives the same landscape.
//! Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::spec::{LandscapeSpec, OptimumSpec, TermSpec, VariableSpec};
use crate::{Landscape, LandscapeError, Sense};

/// A class of generated landscapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FamilyClass {
    /// A narrow global peak (T width 1.5–5 °C) next to a broad local one (10× wider,
    /// 40–85 % of its height); noise 0.01–0.05.
    NarrowBroad,
    /// The optimum beside a high-temperature drop (a steep falling edge at 145–172 °C that
    /// cuts the global peak), plus 1–2 lower peaks; noise 0.01–0.1.
    Edge,
    /// Two near-equal peaks (the competitor at 88–94 % of the global one) under noise 0.05.
    Twin,
    /// 3–6 peaks with widths over an order of magnitude, some asymmetric (skewed by a sigmoid),
    /// and a flat-topped plateau decoy at 60–88 % of the optimum; noise 0.01–0.1.
    Rugged,
    /// 3-D (T, C, flow 0.5–5.0 ml/min step 0.1) or 4-D (plus a nuisance stirring rate
    /// 100–1000 rpm step 10 with a weak effect), 2–4 peaks; noise 0.01–0.1.
    Flow,
}

impl FamilyClass {
    /// All classes, in report order.
    pub const ALL: [FamilyClass; 5] = [
        FamilyClass::NarrowBroad,
        FamilyClass::Edge,
        FamilyClass::Twin,
        FamilyClass::Rugged,
        FamilyClass::Flow,
    ];

    /// Short name (`narrow-broad`, `edge`, `twin`, `rugged`, `flow`).
    pub fn name(self) -> &'static str {
        match self {
            Self::NarrowBroad => "narrow-broad",
            Self::Edge => "edge",
            Self::Twin => "twin",
            Self::Rugged => "rugged",
            Self::Flow => "flow",
        }
    }

    fn id(self) -> u64 {
        match self {
            Self::NarrowBroad => 1,
            Self::Edge => 2,
            Self::Twin => 3,
            Self::Rugged => 4,
            Self::Flow => 5,
        }
    }
}

impl fmt::Display for FamilyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FamilyClass {
    type Err = LandscapeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| LandscapeError::UnknownFamily(s.to_string()))
    }
}

/// Which seed stream a landscape comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FamilySet {
    /// The tuning family: every optimizer change is judged on it.
    Tune,
    /// The test family: reported on, never used for tuning.
    Test,
}

impl FamilySet {
    /// `tune` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tune => "tune",
            Self::Test => "test",
        }
    }

    fn stream(self) -> u64 {
        match self {
            Self::Tune => 0x7475_6e65, // "tune"
            Self::Test => 0x7465_7374, // "test"
        }
    }
}

impl fmt::Display for FamilySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FamilySet {
    type Err = LandscapeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tune" => Ok(Self::Tune),
            "test" => Ok(Self::Test),
            other => Err(LandscapeError::UnknownFamily(other.to_string())),
        }
    }
}

// The paper's domain and grid, and the extra variables of the `flow` class.
const T: (f64, f64, f64) = (90.0, 180.0, 0.5);
const C: (f64, f64, f64) = (0.2, 1.2, 0.01);
const FLOW: (f64, f64, f64) = (0.5, 5.0, 0.1);
const STIR: (f64, f64, f64) = (100.0, 1000.0, 10.0);
const BASELINE: f64 = 0.02;

/// The generator's random source for one landscape.
fn rng_for(class: FamilyClass, set: FamilySet, index: u32) -> ChaCha8Rng {
    let seed = 0x4D41_4F53_4943_0000 ^ (class.id() << 40) ^ u64::from(index);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(set.stream());
    rng
}

fn var(name: &str, unit: &str, (lower, upper, resolution): (f64, f64, f64)) -> VariableSpec {
    VariableSpec {
        name: name.to_string(),
        unit: unit.to_string(),
        lower,
        upper,
        resolution: Some(resolution),
    }
}

fn map<const N: usize>(pairs: [(&str, f64); N]) -> BTreeMap<String, f64> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Round to 6 significant decimals so the files read cleanly.
fn r6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn log_uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    (lo.ln() + (hi.ln() - lo.ln()) * rng.random::<f64>()).exp()
}

/// A peak in (T, C) and, for the flow class, in the extra variables: centre and width per
/// variable name.
#[derive(Debug, Clone)]
struct Peak {
    amplitude: f64,
    center: Vec<(&'static str, f64)>,
    width: Vec<(&'static str, f64)>,
}

impl Peak {
    fn gaussian(&self) -> TermSpec {
        TermSpec::Gaussian {
            amplitude: r6(self.amplitude),
            center: self
                .center
                .iter()
                .map(|(k, v)| (k.to_string(), r6(*v)))
                .collect(),
            width: self
                .width
                .iter()
                .map(|(k, v)| (k.to_string(), r6(*v)))
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Option<(f64, f64)> {
        let c = self.center.iter().find(|(k, _)| *k == name)?.1;
        let w = self.width.iter().find(|(k, _)| *k == name)?.1;
        Some((c, w))
    }
}

/// Unit-square centre at least `sep` (Euclidean, unit coordinates) away from `taken`, kept
/// `margin` inside the box (best of 200 tries if none qualifies).
fn spread_center<R: Rng>(rng: &mut R, taken: &[(f64, f64)], sep: f64, margin: f64) -> (f64, f64) {
    let mut best = (0.5, 0.5);
    let mut best_d = f64::NEG_INFINITY;
    for _ in 0..200 {
        let c = (
            uniform(rng, margin, 1.0 - margin),
            uniform(rng, margin, 1.0 - margin),
        );
        let d = taken
            .iter()
            .map(|t| ((t.0 - c.0).powi(2) + (t.1 - c.1).powi(2)).sqrt())
            .fold(f64::INFINITY, f64::min);
        if d >= sep {
            return c;
        }
        if d > best_d {
            best_d = d;
            best = c;
        }
    }
    best
}

fn t_of(u: f64) -> f64 {
    T.0 + u * (T.1 - T.0)
}

fn c_of(u: f64) -> f64 {
    C.0 + u * (C.1 - C.0)
}

/// A (T, C) peak from unit centre and widths in °C and mmol/ml.
fn tc_peak(amplitude: f64, (ut, uc): (f64, f64), wt: f64, wc: f64) -> Peak {
    Peak {
        amplitude,
        center: vec![("T", t_of(ut)), ("C", c_of(uc))],
        width: vec![("T", wt), ("C", wc)],
    }
}

/// A peak skewed along T: the Gaussian times a sigmoid whose edge sits `shift` widths from the
/// centre (`rising` keeps the high-T side).
fn skewed(p: &Peak, shift: f64, rising: bool) -> TermSpec {
    let (c, w) = p.get("T").unwrap_or((t_of(0.5), 5.0));
    let edge = if rising { c - shift * w } else { c + shift * w };
    TermSpec::Product {
        factors: vec![
            p.gaussian(),
            TermSpec::Sigmoid {
                amplitude: 1.0,
                variable: "T".to_string(),
                edge: r6(edge),
                width: r6(0.6 * w),
                rising,
            },
        ],
    }
}

/// A flat-topped plateau (mesa): product of four sigmoids in T and C.
fn plateau(amplitude: f64, (t0, t1): (f64, f64), (c0, c1): (f64, f64)) -> TermSpec {
    let s = |v: &str, edge: f64, width: f64, rising: bool, a: f64| TermSpec::Sigmoid {
        amplitude: r6(a),
        variable: v.to_string(),
        edge: r6(edge),
        width: r6(width),
        rising,
    };
    TermSpec::Product {
        factors: vec![
            s("T", t0, 1.5, true, amplitude),
            s("T", t1, 1.5, false, 1.0),
            s("C", c0, 0.02, true, 1.0),
            s("C", c1, 0.02, false, 1.0),
        ],
    }
}

/// The terms, variables and noise of one landscape (optimum not yet known).
struct Draft {
    variables: Vec<VariableSpec>,
    terms: Vec<TermSpec>,
    noise_sd: f64,
    description: String,
}

fn tc_vars() -> Vec<VariableSpec> {
    vec![var("T", "°C", T), var("C", "mmol/ml", C)]
}

fn draft_narrow_broad<R: Rng>(rng: &mut R) -> Draft {
    let wt = uniform(rng, 1.5, 5.0);
    let wc = uniform(rng, 0.02, 0.06);
    let ratio = uniform(rng, 8.0, 14.0);
    let local = uniform(rng, 0.4, 0.85);
    let ug = spread_center(rng, &[], 0.0, 0.1);
    let ub = spread_center(rng, &[ug], 0.45, 0.15);
    let global = tc_peak(1.0, ug, wt, wc);
    let broad = tc_peak(local, ub, (wt * ratio).min(40.0), (wc * ratio).min(0.5));
    Draft {
        variables: tc_vars(),
        terms: vec![
            TermSpec::Constant { value: BASELINE },
            global.gaussian(),
            broad.gaussian(),
        ],
        noise_sd: r6(uniform(rng, 0.01, 0.05)),
        description: format!(
            "narrow global peak (T width {wt:.1} °C) next to a broad local one at {local:.2}"
        ),
    }
}

fn draft_edge<R: Rng>(rng: &mut R) -> Draft {
    let edge = uniform(rng, 145.0, 172.0);
    let ew = uniform(rng, 0.8, 2.5);
    // global peak centred just beyond the edge, so the optimum sits on the edge's shoulder
    let tc = edge + uniform(rng, -4.0, 4.0);
    let wt = uniform(rng, 4.0, 12.0);
    let wc = uniform(rng, 0.08, 0.3);
    let uc = uniform(rng, 0.15, 0.85);
    let global = Peak {
        amplitude: 1.25,
        center: vec![("T", tc), ("C", c_of(uc))],
        width: vec![("T", wt), ("C", wc)],
    };
    let drop = |t: TermSpec| TermSpec::Product {
        factors: vec![
            t,
            TermSpec::Sigmoid {
                amplitude: 1.0,
                variable: "T".to_string(),
                edge: r6(edge),
                width: r6(ew),
                rising: false,
            },
        ],
    };
    let mut terms = vec![
        TermSpec::Constant { value: BASELINE },
        drop(global.gaussian()),
    ];
    let mut taken = vec![((tc - T.0) / (T.1 - T.0), uc)];
    for _ in 0..rng.random_range(1..=2) {
        let u = spread_center(rng, &taken, 0.3, 0.1);
        let u = ((u.0 * (edge - 10.0 - T.0) / (T.1 - T.0)).max(0.05), u.1);
        taken.push(u);
        let p = tc_peak(
            uniform(rng, 0.3, 0.7),
            u,
            uniform(rng, 4.0, 20.0),
            uniform(rng, 0.05, 0.3),
        );
        terms.push(drop(p.gaussian()));
    }
    Draft {
        variables: tc_vars(),
        terms,
        noise_sd: r6(log_uniform(rng, 0.01, 0.1)),
        description: format!("optimum beside a high-temperature drop at {edge:.1} °C"),
    }
}

fn draft_twin<R: Rng>(rng: &mut R) -> Draft {
    let ua = spread_center(rng, &[], 0.0, 0.1);
    let ub = spread_center(rng, &[ua], 0.35, 0.1);
    let second = uniform(rng, 0.88, 0.94);
    let a = tc_peak(1.0, ua, uniform(rng, 3.0, 10.0), uniform(rng, 0.04, 0.15));
    let b = tc_peak(
        second,
        ub,
        uniform(rng, 3.0, 10.0),
        uniform(rng, 0.04, 0.15),
    );
    Draft {
        variables: tc_vars(),
        terms: vec![
            TermSpec::Constant { value: BASELINE },
            a.gaussian(),
            b.gaussian(),
        ],
        noise_sd: 0.05,
        description: format!("two near-equal peaks (1.0 and {second:.2}) under noise 0.05"),
    }
}

fn draft_rugged<R: Rng>(rng: &mut R) -> Draft {
    let k = rng.random_range(3..=6);
    let mut terms = vec![TermSpec::Constant { value: BASELINE }];
    let mut taken: Vec<(f64, f64)> = Vec::new();
    for i in 0..k {
        let u = spread_center(rng, &taken, 0.2, 0.05);
        taken.push(u);
        let amp = if i == 0 { 1.0 } else { uniform(rng, 0.3, 0.9) };
        let p = tc_peak(
            amp,
            u,
            log_uniform(rng, 2.0, 20.0),
            log_uniform(rng, 0.03, 0.3),
        );
        if rng.random::<f64>() < 0.5 {
            terms.push(skewed(
                &p,
                uniform(rng, 0.0, 1.0),
                rng.random::<f64>() < 0.5,
            ));
        } else {
            terms.push(p.gaussian());
        }
    }
    // plateau decoy away from the peaks
    let u = spread_center(rng, &taken, 0.25, 0.15);
    let (ht, hc) = (uniform(rng, 5.0, 12.0), uniform(rng, 0.06, 0.15));
    let (tm, cm) = (t_of(u.0), c_of(u.1));
    terms.push(plateau(
        uniform(rng, 0.6, 0.88),
        (tm - ht, tm + ht),
        (cm - hc, cm + hc),
    ));
    Draft {
        variables: tc_vars(),
        terms,
        noise_sd: r6(log_uniform(rng, 0.01, 0.1)),
        description: format!("{k} peaks (some skewed) and a plateau decoy"),
    }
}

fn draft_flow<R: Rng>(rng: &mut R) -> Draft {
    let four = rng.random::<f64>() < 0.5;
    let mut variables = tc_vars();
    variables.push(var("flow", "ml/min", FLOW));
    if four {
        variables.push(var("stir", "rpm", STIR));
    }
    let k = rng.random_range(2..=4);
    let mut terms = vec![TermSpec::Constant { value: BASELINE }];
    let mut taken: Vec<(f64, f64)> = Vec::new();
    for i in 0..k {
        let u = spread_center(rng, &taken, 0.25, 0.08);
        taken.push(u);
        let amp = if i == 0 { 1.0 } else { uniform(rng, 0.4, 0.85) };
        let mut p = tc_peak(
            amp,
            u,
            log_uniform(rng, 3.0, 15.0),
            log_uniform(rng, 0.04, 0.25),
        );
        p.center.push(("flow", uniform(rng, 0.8, 4.7)));
        p.width.push(("flow", log_uniform(rng, 0.3, 2.0)));
        terms.push(p.gaussian());
    }
    if four {
        // nuisance: a weak, broad modulation (±5–15 %) of everything by the stirring rate
        let depth = uniform(rng, 0.05, 0.15);
        let centre = uniform(rng, 200.0, 900.0);
        let width = uniform(rng, 300.0, 800.0);
        let peaks: Vec<TermSpec> = terms.drain(1..).collect();
        for t in peaks {
            terms.push(TermSpec::Product {
                factors: vec![
                    t,
                    TermSpec::Linear {
                        offset: r6(1.0 - depth),
                        coefficients: BTreeMap::new(),
                    },
                ],
            });
        }
        // the modulated part: depth · gaussian(stir) times the main peak
        if let Some(TermSpec::Product { factors }) = terms.get(1).cloned() {
            if let Some(main) = factors.first().cloned() {
                terms.push(TermSpec::Product {
                    factors: vec![
                        main,
                        TermSpec::Gaussian {
                            amplitude: r6(depth),
                            center: map([("stir", r6(centre))]),
                            width: map([("stir", r6(width))]),
                        },
                    ],
                });
            }
        }
    }
    Draft {
        variables,
        terms,
        noise_sd: r6(log_uniform(rng, 0.01, 0.1)),
        description: format!(
            "{}-D with a flow variable{}, {k} peaks",
            if four { 4 } else { 3 },
            if four {
                " and a nuisance stirring rate"
            } else {
                ""
            }
        ),
    }
}

/// Grid levels of a variable: `lower + k·resolution`, k = 0..=kmax (values rounded to 1e-9).
fn levels(v: &VariableSpec) -> Vec<f64> {
    let step = v.resolution.unwrap_or((v.upper - v.lower) * 1e-5);
    let kmax = ((v.upper - v.lower) / step + 1e-9).floor() as usize;
    (0..=kmax)
        .map(|k| ((v.lower + k as f64 * step) * 1e9).round() / 1e9)
        .collect()
}

/// Most grid points evaluated exhaustively by [`grid_optimum`] before it switches to a coarse
/// grid plus hill-climbing.
pub const DENSE_GRID_LIMIT: usize = 400_000;

/// The best grid point of `l` (in its sense) and its noise-free value.
///
/// Exhaustive when the grid has at most [`DENSE_GRID_LIMIT`] points (every 2-D landscape on the
/// paper's grid: 181 × 101); otherwise the grid is sub-sampled with a stride per variable so that
/// at most that many points are evaluated, and the best 64 of them are refined by steepest
/// grid hill-climbing over the ±1-step neighbourhood (the family's peaks are several grid steps
/// wide, so the coarse grid always lands in the basin of the best one; checked against the
/// exhaustive maximum in the tests).
pub fn grid_optimum(l: &Landscape) -> (Vec<f64>, f64) {
    let specs: Vec<VariableSpec> = l
        .variables()
        .iter()
        .map(|v| VariableSpec {
            name: v.name.clone(),
            unit: v.unit.clone(),
            lower: v.lower,
            upper: v.upper,
            resolution: v.resolution,
        })
        .collect();
    let lv: Vec<Vec<f64>> = specs.iter().map(levels).collect();
    let sign = match l.sense() {
        Sense::Maximize => 1.0,
        Sense::Minimize => -1.0,
    };
    let score = |k: &[usize]| -> f64 {
        let x: Vec<f64> = k.iter().zip(&lv).map(|(&i, v)| v[i]).collect();
        sign * l.eval(&x)
    };
    let total: f64 = lv.iter().map(|v| v.len() as f64).product();
    let mut stride = vec![1usize; lv.len()];
    let mut count = total;
    while count > DENSE_GRID_LIMIT as f64 {
        // coarsen the variable with the most remaining levels
        let (i, _) = lv
            .iter()
            .enumerate()
            .map(|(i, v)| (i, v.len().div_ceil(stride[i])))
            .max_by_key(|&(_, n)| n)
            .unwrap_or((0, 0));
        stride[i] += 1;
        count = lv
            .iter()
            .enumerate()
            .map(|(i, v)| v.len().div_ceil(stride[i]) as f64)
            .product();
    }
    // enumerate the (coarse) grid, keeping the best 64
    let dims: Vec<usize> = lv
        .iter()
        .enumerate()
        .map(|(i, v)| v.len().div_ceil(stride[i]))
        .collect();
    let mut top: Vec<(f64, Vec<usize>)> = Vec::new();
    let mut idx = vec![0usize; dims.len()];
    'grid: loop {
        let k: Vec<usize> = idx.iter().zip(&stride).map(|(i, s)| i * s).collect();
        let v = score(&k);
        if top.len() < 64 || v > top[top.len() - 1].0 {
            top.push((v, k));
            top.sort_by(|a, b| b.0.total_cmp(&a.0));
            top.truncate(64);
        }
        for d in 0..dims.len() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                continue 'grid;
            }
            idx[d] = 0;
        }
        break;
    }
    let dense = stride.iter().all(|&s| s == 1);
    let mut best: (f64, Vec<usize>) = (f64::NEG_INFINITY, vec![0; lv.len()]);
    for (v0, k0) in top {
        let (mut v, mut k) = (v0, k0);
        if !dense {
            loop {
                let mut improved = false;
                for d in 0..k.len() {
                    for up in [false, true] {
                        let mut q = k.clone();
                        if up && q[d] + 1 < lv[d].len() {
                            q[d] += 1;
                        } else if !up && q[d] > 0 {
                            q[d] -= 1;
                        } else {
                            continue;
                        }
                        let w = score(&q);
                        if w > v {
                            v = w;
                            k = q;
                            improved = true;
                        }
                    }
                }
                if !improved {
                    break;
                }
            }
        }
        if v > best.0 {
            best = (v, k);
        }
    }
    let x: Vec<f64> = best.1.iter().zip(&lv).map(|(&i, v)| v[i]).collect();
    (x, sign * best.0)
}

/// The landscape spec of member `index` of `class` in `set`, with its optimum computed on the
/// grid. Deterministic.
pub fn generate(
    class: FamilyClass,
    set: FamilySet,
    index: u32,
) -> Result<LandscapeSpec, LandscapeError> {
    let mut rng = rng_for(class, set, index);
    let draft = match class {
        FamilyClass::NarrowBroad => draft_narrow_broad(&mut rng),
        FamilyClass::Edge => draft_edge(&mut rng),
        FamilyClass::Twin => draft_twin(&mut rng),
        FamilyClass::Rugged => draft_rugged(&mut rng),
        FamilyClass::Flow => draft_flow(&mut rng),
    };
    let mut spec = LandscapeSpec {
        name: format!("{}-{}-{index:03}", class.name(), set.name()),
        description: format!(
            "generated family {} ({} set, #{index}): {}",
            class.name(),
            set.name(),
            draft.description
        ),
        sense: Sense::Maximize,
        noise_sd: draft.noise_sd,
        variables: draft.variables,
        terms: draft.terms,
        optimum: OptimumSpec {
            x: BTreeMap::new(),
            value: 0.0,
        },
    };
    // placeholder optimum (the centre of the box) to compile, then the grid optimum
    spec.optimum.x = spec
        .variables
        .iter()
        .map(|v| (v.name.clone(), v.lower))
        .collect();
    let l = spec.compile()?;
    let (x, value) = grid_optimum(&l);
    spec.optimum = OptimumSpec {
        x: spec
            .variables
            .iter()
            .zip(&x)
            .map(|(v, &xi)| (v.name.clone(), xi))
            .collect(),
        value,
    };
    Ok(spec)
}

/// [`generate`], compiled.
pub fn generate_landscape(
    class: FamilyClass,
    set: FamilySet,
    index: u32,
) -> Result<Landscape, LandscapeError> {
    generate(class, set, index)?.compile()
}

/// The landscape file text (TOML) of a spec; reads back with
/// [`crate::Landscape::from_toml_str`].
pub fn to_toml(spec: &LandscapeSpec) -> Result<String, LandscapeError> {
    toml::to_string(spec).map_err(|e| LandscapeError::Parse(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all_points(l: &Landscape) -> Vec<Vec<f64>> {
        let lv: Vec<Vec<f64>> = l
            .variables()
            .iter()
            .map(|v| {
                levels(&VariableSpec {
                    name: v.name.clone(),
                    unit: String::new(),
                    lower: v.lower,
                    upper: v.upper,
                    resolution: v.resolution,
                })
            })
            .collect();
        let mut out = vec![Vec::new()];
        for v in &lv {
            out = out
                .into_iter()
                .flat_map(|p| {
                    v.iter().map(move |&x| {
                        let mut q = p.clone();
                        q.push(x);
                        q
                    })
                })
                .collect();
        }
        out
    }

    #[test]
    fn generation_is_deterministic_and_sets_are_disjoint() {
        for class in FamilyClass::ALL {
            let a = generate(class, FamilySet::Tune, 3).expect("generate");
            let b = generate(class, FamilySet::Tune, 3).expect("generate");
            assert_eq!(a, b, "{class}");
            let t = generate(class, FamilySet::Test, 3).expect("generate");
            assert_ne!(a.terms, t.terms, "{class}: tune and test share a landscape");
            let c = generate(class, FamilySet::Tune, 4).expect("generate");
            assert_ne!(a.terms, c.terms, "{class}: two indices share a landscape");
        }
    }

    #[test]
    fn names_parse_back() {
        for class in FamilyClass::ALL {
            assert_eq!(class.name().parse::<FamilyClass>(), Ok(class));
        }
        assert_eq!("test".parse::<FamilySet>(), Ok(FamilySet::Test));
        assert!("nope".parse::<FamilyClass>().is_err());
    }

    #[test]
    fn landscapes_use_the_paper_domain_and_grid() {
        for class in FamilyClass::ALL {
            for i in 0..8 {
                let l = generate_landscape(class, FamilySet::Tune, i).expect("generate");
                let v = l.variables();
                assert_eq!(
                    (v[0].name.as_str(), v[0].lower, v[0].upper),
                    ("T", 90.0, 180.0)
                );
                assert_eq!(v[0].resolution, Some(0.5));
                assert_eq!(
                    (v[1].name.as_str(), v[1].lower, v[1].upper),
                    ("C", 0.2, 1.2)
                );
                assert_eq!(v[1].resolution, Some(0.01));
                let dims = v.len();
                match class {
                    FamilyClass::Flow => assert!((3..=4).contains(&dims), "{dims}"),
                    _ => assert_eq!(dims, 2),
                }
                let sd = l.noise_sd();
                assert!((0.01..=0.1).contains(&sd), "{class} noise {sd}");
                if class == FamilyClass::Twin {
                    assert_eq!(sd, 0.05);
                }
                assert_eq!(l.sense(), Sense::Maximize);
            }
        }
    }

    #[test]
    fn toml_round_trips() {
        for class in FamilyClass::ALL {
            let spec = generate(class, FamilySet::Test, 1).expect("generate");
            let text = to_toml(&spec).expect("toml");
            let back = Landscape::from_toml_str(&text).expect("parse back");
            assert_eq!(back, spec.compile().expect("compile"), "{class}:\n{text}");
        }
    }

    #[test]
    fn optimum_is_the_exhaustive_grid_maximum() {
        // 2-D: all classes; 3-D flow landscapes too (the coarse + hill-climb path), exhaustively.
        for class in FamilyClass::ALL {
            let mut checked = 0;
            for i in 0..12 {
                let l = generate_landscape(class, FamilySet::Tune, i).expect("generate");
                if l.variables().len() > 3 || (l.variables().len() == 3 && checked >= 2) {
                    continue;
                }
                checked += 1;
                let opt = l.optimum();
                assert!((l.eval(&opt.x) - opt.value).abs() < 1e-12);
                let best = all_points(&l)
                    .iter()
                    .map(|x| l.eval(x))
                    .fold(f64::NEG_INFINITY, f64::max);
                assert!(
                    (best - opt.value).abs() <= 1e-12,
                    "{class} #{i}: grid max {best}, stated {}",
                    opt.value
                );
            }
            assert!(checked >= 2, "{class}");
        }
    }

    #[test]
    fn four_d_optimum_is_a_grid_local_maximum_no_sample_beats() {
        let mut seen = 0;
        for i in 0..16 {
            let l = generate_landscape(FamilyClass::Flow, FamilySet::Tune, i).expect("generate");
            if l.variables().len() != 4 {
                continue;
            }
            seen += 1;
            let opt = l.optimum().clone();
            let steps: Vec<f64> = l
                .variables()
                .iter()
                .map(|v| v.resolution.unwrap_or(1.0))
                .collect();
            for d in 0..4 {
                for s in [-1.0, 1.0] {
                    let mut q = opt.x.clone();
                    q[d] += s * steps[d];
                    let v = &l.variables()[d];
                    if q[d] < v.lower - 1e-9 || q[d] > v.upper + 1e-9 {
                        continue;
                    }
                    assert!(l.eval(&q) <= opt.value + 1e-12, "#{i}: neighbour better");
                }
            }
            // a fine random sample never beats it
            let mut rng = ChaCha8Rng::seed_from_u64(i.into());
            for _ in 0..20_000 {
                let x: Vec<f64> = l
                    .variables()
                    .iter()
                    .map(|v| v.lower + rng.random::<f64>() * (v.upper - v.lower))
                    .collect();
                assert!(l.eval(&x) <= opt.value + 1e-6, "#{i}: sample beats optimum");
            }
        }
        assert!(seen >= 2);
    }

    #[test]
    fn targets_are_not_trivial() {
        // The 95 % region covers a small part of the grid, so random search does not solve the
        // family by luck.
        for class in FamilyClass::ALL {
            for i in 0..6 {
                let l = generate_landscape(class, FamilySet::Tune, i).expect("generate");
                if l.variables().len() > 2 {
                    continue;
                }
                let pts = all_points(&l);
                let hit = pts
                    .iter()
                    .filter(|x| l.within_fraction_of_optimum(l.eval(x), 0.05))
                    .count();
                let share = hit as f64 / pts.len() as f64;
                assert!(
                    share < 0.05,
                    "{class} #{i}: 95 % region is {share:.3} of the grid"
                );
            }
        }
    }
}
