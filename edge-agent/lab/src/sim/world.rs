//! The virtual lab's shared physical state, advanced in fixed steps of lab time: pumps, heater,
//! the plug-flow reactor (residence time from the flow rates), the cuvettes and where they are.
//! Pure: time is passed in, randomness comes from seeded streams.

use std::collections::{BTreeMap, VecDeque};

use maosic_landscape::Landscape;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::optics::Sample;
use super::pump::PumpSim;
use super::thermal::{HeaterSim, ThermalParams};

/// Fixed simulation step, s of lab time (= the controller period).
pub const STEP_S: f64 = 0.5;

/// Chemistry of the virtual lab.
#[derive(Debug, Clone)]
pub struct Chemistry {
    /// Cs+ content of each pump's reagent, mmol/ml (0 for Pb precursor and solvent). The stream's
    /// C is Σ rateᵢ·csᵢ / Σ rateᵢ.
    pub cs_mmol_per_ml: BTreeMap<String, f64>,
    /// Reactor coil volume, µL.
    pub reactor_volume_ul: f64,
}

#[derive(Debug, Clone, Copy)]
struct Parcel {
    t_s: f64,
    vol_ul: f64,
    c: f64,
    int_t: f64,
}

/// Independent random streams, so the order of unrelated events does not change each other.
#[derive(Debug, Clone)]
pub struct Rngs {
    pub thermal: ChaCha8Rng,
    pub handedness: ChaCha8Rng,
    pub spectra: ChaCha8Rng,
    pub laser: ChaCha8Rng,
}

impl Rngs {
    pub fn new(seed: u64) -> Self {
        let mk = |k: u64| ChaCha8Rng::seed_from_u64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Self {
            thermal: mk(1),
            handedness: mk(2),
            spectra: mk(3),
            laser: mk(4),
        }
    }
}

/// Everything physical in the virtual lab.
#[derive(Debug, Clone)]
pub struct World {
    pub t_s: f64,
    pub heater: HeaterSim,
    pub pumps: BTreeMap<String, PumpSim>,
    pub chemistry: Chemistry,
    pub landscape: Landscape,
    pub rng: Rngs,
    history: VecDeque<Parcel>,
    vol_cum_ul: f64,
    int_t: f64,
    last_c: f64,
    /// Cuvettes in sampler slots.
    pub slots: BTreeMap<u32, Sample>,
    /// Cuvettes at named places (`cd`, `laser`).
    pub places: BTreeMap<String, Sample>,
    pub syntheses: u64,
    /// Beam shutters by symbol: open (true) or closed.
    pub shutters: BTreeMap<String, bool>,
}

impl World {
    pub fn new(
        landscape: Landscape,
        chemistry: Chemistry,
        thermal: ThermalParams,
        seed: u64,
    ) -> Self {
        let heater = HeaterSim::new(thermal);
        let t0 = heater.t_c;
        let mut history = VecDeque::new();
        history.push_back(Parcel {
            t_s: 0.0,
            vol_ul: 0.0,
            c: 0.0,
            int_t: 0.0,
        });
        let _ = t0;
        Self {
            t_s: 0.0,
            heater,
            pumps: BTreeMap::new(),
            chemistry,
            landscape,
            rng: Rngs::new(seed),
            history,
            vol_cum_ul: 0.0,
            int_t: 0.0,
            last_c: 0.0,
            slots: BTreeMap::new(),
            places: BTreeMap::new(),
            syntheses: 0,
            shutters: BTreeMap::new(),
        }
    }

    /// Advance in fixed steps up to `now_s` (no-op if already there).
    pub fn advance_to(&mut self, now_s: f64) {
        while self.t_s + STEP_S <= now_s {
            self.t_s += STEP_S;
            self.heater.step(self.t_s, STEP_S, &mut self.rng.thermal);
            let mut flow = 0.0;
            let mut cs = 0.0;
            for (sym, p) in self.pumps.iter_mut() {
                p.advance(STEP_S);
                let v = p.last_infused_ul;
                flow += v;
                cs += v * self
                    .chemistry
                    .cs_mmol_per_ml
                    .get(sym)
                    .copied()
                    .unwrap_or(0.0);
            }
            if flow > 0.0 {
                self.last_c = cs / flow;
            }
            self.vol_cum_ul += flow;
            self.int_t += self.heater.t_c * STEP_S;
            if flow > 0.0 {
                self.history.push_back(Parcel {
                    t_s: self.t_s,
                    vol_ul: self.vol_cum_ul,
                    c: self.last_c,
                    int_t: self.int_t,
                });
            }
            // keep what can still be in the reactor (plus one older parcel)
            let keep_from = self.vol_cum_ul - 2.0 * self.chemistry.reactor_volume_ul;
            while self.history.len() > 2 && self.history[1].vol_ul < keep_from {
                self.history.pop_front();
            }
        }
    }

    /// Total flow out of the pumps now, µL/min.
    pub fn flow_ul_min(&self) -> f64 {
        self.pumps.values().map(PumpSim::outflow_ul_min).sum()
    }

    /// Residence time in the coil at the current flow, s (infinite without flow).
    pub fn residence_s(&self) -> f64 {
        let f = self.flow_ul_min();
        if f > 0.0 {
            self.chemistry.reactor_volume_ul / f * 60.0
        } else {
            f64::INFINITY
        }
    }

    /// (C, effective T) of the fluid at the reactor outlet now; C = 0 for plain solvent.
    pub fn outlet(&self) -> (f64, f64) {
        let want = self.vol_cum_ul - self.chemistry.reactor_volume_ul;
        if want <= 0.0 {
            return (0.0, self.heater.t_c);
        }
        // the newest parcel that entered at or before `want`
        let idx = self.history.partition_point(|p| p.vol_ul <= want);
        let p = if idx == 0 {
            self.history[0]
        } else {
            self.history[idx - 1]
        };
        let dt = self.t_s - p.t_s;
        let t_eff = if dt > 1e-9 {
            (self.int_t - p.int_t) / dt
        } else {
            self.heater.t_c
        };
        (p.c, t_eff)
    }

    /// The product at the outlet as a new synthesis (draws its handedness).
    pub fn synthesise_outlet(&mut self) -> Sample {
        let (c, t) = self.outlet();
        self.syntheses += 1;
        Sample::synthesise(self.syntheses, t, c, &mut self.rng.handedness)
    }

    /// The stream at the flow cell (no handedness draw).
    pub fn stream(&self) -> Sample {
        let (c, t) = self.outlet();
        Sample {
            id: 0,
            t_c: t,
            c,
            handedness: 1.0,
            cd_scale: 1.0,
            abs_scale: 1.0,
            dose_800_s: 0.0,
        }
    }
}
