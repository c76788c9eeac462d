//! A portfolio of BO and SNOBFIT behind one ask/tell: both see every observation; the asks are
//! shared between them in a fixed rotation (every `snobfit_every`-th proposal is SNOBFIT's), so
//! SNOBFIT's local fits and global classes complement the GP (issue #16).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::bo::{Bo, BoSettings};
use crate::snobfit::{Snobfit, SnobfitSettings};
use crate::{OptimizerError, Proposal, Space};

/// Portfolio settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortfolioSettings {
    /// Every `snobfit_every`-th proposal comes from SNOBFIT (≥ 1; 1 = SNOBFIT only).
    pub snobfit_every: usize,
    /// Settings of the BO member.
    pub bo: BoSettings,
    /// Settings of the SNOBFIT member.
    pub snobfit: SnobfitSettings,
}

impl Default for PortfolioSettings {
    fn default() -> Self {
        Self {
            snobfit_every: 2,
            bo: BoSettings::default(),
            snobfit: SnobfitSettings::default(),
        }
    }
}

/// The portfolio state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Portfolio {
    space: Space,
    every: usize,
    bo: Bo,
    snobfit: Snobfit,
    proposed: u64,
}

impl Portfolio {
    /// New portfolio over `space`.
    pub fn new(space: &Space, s: &PortfolioSettings, seed: u64) -> Result<Self, OptimizerError> {
        if s.snobfit_every == 0 {
            return Err(OptimizerError::InvalidSettings(
                "snobfit_every must be ≥ 1".into(),
            ));
        }
        Ok(Self {
            space: space.clone(),
            every: s.snobfit_every,
            bo: Bo::new(space, &s.bo, seed)?,
            snobfit: Snobfit::new(space, &s.snobfit, seed ^ 0x5EED_F00D)?,
            proposed: 0,
        })
    }

    /// Record an observation with both members.
    pub fn tell(&mut self, x: Vec<f64>, loss: Option<f64>, sd: Option<f64>) {
        self.bo.tell(x.clone(), loss, sd);
        self.snobfit.tell(x, loss, sd);
    }

    /// Propose `n` points: the next `n` slots of the rotation, each member asked for its
    /// share; a point that coincides with one already in the batch is dropped and the members
    /// are asked again.
    pub fn ask(&mut self, n: usize) -> Vec<Proposal> {
        let every = self.every as u64;
        let ns = (0..n as u64)
            .filter(|k| (self.proposed + k).is_multiple_of(every))
            .count();
        self.proposed += n as u64;
        let mut out = if ns > 0 {
            self.snobfit.ask(ns)
        } else {
            Vec::new()
        };
        let mut seen: BTreeSet<Vec<i64>> =
            out.iter().map(|p| self.space.grid_index(&p.x)).collect();
        // Neither member knows the other's pending points: on a collision ask again, BO and
        // SNOBFIT in turn (each call proposes afresh), a few times.
        for round in 0..6 {
            if out.len() >= n {
                break;
            }
            let more = if round % 2 == 0 {
                self.bo.ask(n - out.len())
            } else {
                self.snobfit.ask(n - out.len())
            };
            for p in more {
                if seen.insert(self.space.grid_index(&p.x)) {
                    out.push(p);
                }
            }
        }
        out.truncate(n);
        out
    }
}
