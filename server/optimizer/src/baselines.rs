//! Baselines: uniform random, scrambled Sobol and full-factorial grid (in random order) search.
//! None of them proposes a point that was already told or proposed.

use std::collections::BTreeSet;

use crate::rng::StateRng;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{OptimizerError, Proposal, ProposalKind, Space};

const MAX_TRIES: usize = 1000;

/// A point of the scrambled Sobol sequence in the unit cube (`index`, `seed` select it).
pub fn sobol_point(index: u32, dim: usize, seed: u32) -> Vec<f64> {
    (0..dim)
        .map(|d| f64::from(sobol_burley::sample(index, d as u32, seed)))
        .collect()
}

/// A uniform random grid point.
pub(crate) fn random_point(space: &Space, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let u: Vec<f64> = (0..space.dim()).map(|_| rng.random::<f64>()).collect();
    space.snap(&space.from_unit(&u))
}

/// Uniform random search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RandomSearch {
    space: Space,
    rng: StateRng,
    seen: BTreeSet<Vec<i64>>,
}

impl RandomSearch {
    /// New search.
    pub fn new(space: &Space, seed: u64) -> Self {
        Self {
            space: space.clone(),
            rng: StateRng::seed_from_u64(seed),
            seen: BTreeSet::new(),
        }
    }

    /// Propose `n` new grid points.
    pub fn ask(&mut self, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            for _ in 0..MAX_TRIES {
                let x = random_point(&self.space, &mut self.rng);
                if self.seen.insert(self.space.grid_index(&x)) {
                    out.push(Proposal {
                        x,
                        kind: ProposalKind::Baseline,
                        predicted: None,
                    });
                    break;
                }
            }
        }
        out
    }

    /// Record a measured point.
    pub fn tell(&mut self, x: Vec<f64>) {
        self.seen.insert(self.space.grid_index(&x));
    }
}

/// Scrambled (Owen, Burley 2020) Sobol sequence search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SobolSearch {
    space: Space,
    seed: u32,
    next: u32,
    seen: BTreeSet<Vec<i64>>,
    fallback: StateRng,
}

impl SobolSearch {
    /// New search.
    pub fn new(space: &Space, seed: u64) -> Self {
        Self {
            space: space.clone(),
            seed: (seed ^ (seed >> 32)) as u32,
            next: 0,
            seen: BTreeSet::new(),
            fallback: StateRng::seed_from_u64(seed),
        }
    }

    /// Next `n` Sobol points (rounded; rounding duplicates are skipped).
    pub fn ask(&mut self, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        let mut tries = 0;
        while out.len() < n && tries < MAX_TRIES * n {
            tries += 1;
            let u = sobol_point(self.next, self.space.dim(), self.seed);
            self.next = self.next.wrapping_add(1);
            let x = self.space.snap(&self.space.from_unit(&u));
            if self.seen.insert(self.space.grid_index(&x)) {
                out.push(Proposal {
                    x,
                    kind: ProposalKind::Baseline,
                    predicted: None,
                });
            }
        }
        while out.len() < n {
            let x = random_point(&self.space, &mut self.fallback);
            if self.seen.insert(self.space.grid_index(&x)) {
                out.push(Proposal {
                    x,
                    kind: ProposalKind::Baseline,
                    predicted: None,
                });
            } else if tries > 2 * MAX_TRIES * n {
                break;
            }
            tries += 1;
        }
        out
    }

    /// Record a measured point.
    pub fn tell(&mut self, x: Vec<f64>) {
        self.seen.insert(self.space.grid_index(&x));
    }
}

/// Grid settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GridSettings {
    /// Levels per parameter (cell centres of an even split of each range, snapped to the
    /// resolution grid). `None` → ⌊256^(1/n)⌋ (16 × 16 in 2-D, 6³ in 3-D).
    #[serde(default)]
    pub levels: Option<u32>,
}

/// Full-factorial grid, visited in a seeded random order; random points once exhausted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridSearch {
    space: Space,
    levels: u32,
    order: Vec<u64>,
    next: usize,
    seen: BTreeSet<Vec<i64>>,
    rng: StateRng,
}

impl GridSearch {
    /// New grid search.
    pub fn new(space: &Space, settings: &GridSettings, seed: u64) -> Result<Self, OptimizerError> {
        let n = space.dim() as f64;
        let levels = settings
            .levels
            .unwrap_or_else(|| (256f64.powf(1.0 / n) + 1e-9).floor().max(2.0) as u32);
        let total = (levels as u64)
            .checked_pow(space.dim() as u32)
            .filter(|t| *t <= 1_000_000)
            .ok_or_else(|| OptimizerError::InvalidSettings("grid too large".into()))?;
        if levels < 1 {
            return Err(OptimizerError::InvalidSettings("levels must be ≥ 1".into()));
        }
        let mut rng = StateRng::seed_from_u64(seed);
        let mut order: Vec<u64> = (0..total).collect();
        // Fisher–Yates with the seeded generator.
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        Ok(Self {
            space: space.clone(),
            levels,
            order,
            next: 0,
            seen: BTreeSet::new(),
            rng,
        })
    }

    fn cell(&self, mut k: u64) -> Vec<f64> {
        let l = u64::from(self.levels);
        let u: Vec<f64> = (0..self.space.dim())
            .map(|_| {
                let i = k % l;
                k /= l;
                (i as f64 + 0.5) / l as f64
            })
            .collect();
        self.space.snap(&self.space.from_unit(&u))
    }

    /// Next `n` grid cells.
    pub fn ask(&mut self, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.next < self.order.len() {
            let x = self.cell(self.order[self.next]);
            self.next += 1;
            if self.seen.insert(self.space.grid_index(&x)) {
                out.push(Proposal {
                    x,
                    kind: ProposalKind::Baseline,
                    predicted: None,
                });
            }
        }
        let mut tries = 0;
        while out.len() < n && tries < MAX_TRIES * n {
            tries += 1;
            let x = random_point(&self.space, &mut self.rng);
            if self.seen.insert(self.space.grid_index(&x)) {
                out.push(Proposal {
                    x,
                    kind: ProposalKind::Baseline,
                    predicted: None,
                });
            }
        }
        out
    }

    /// Record a measured point.
    pub fn tell(&mut self, x: Vec<f64>) {
        self.seen.insert(self.space.grid_index(&x));
    }
}
