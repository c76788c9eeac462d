//! Standard closed-form test functions that the TOML term kinds cannot express compactly.

use serde::{Deserialize, Serialize};

/// A built-in test function, applied to the variables listed in its term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// Branin–Hoo on (x1 ∈ [−5, 10], x2 ∈ [0, 15]); global minimum 0.397887 at three points.
    Branin,
    /// Hartmann 3-D on [0, 1]³; global minimum −3.86278 at (0.114614, 0.555649, 0.852547).
    Hartmann3,
}

impl Builtin {
    /// Parse the `function` field of a `builtin` term.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "branin" => Some(Self::Branin),
            "hartmann3" => Some(Self::Hartmann3),
            _ => None,
        }
    }

    /// Number of arguments the function takes.
    pub fn arity(self) -> usize {
        match self {
            Self::Branin => 2,
            Self::Hartmann3 => 3,
        }
    }

    /// Evaluate on exactly `arity()` arguments (caller guarantees the length).
    pub fn eval(self, x: &[f64]) -> f64 {
        match self {
            Self::Branin => branin(x[0], x[1]),
            Self::Hartmann3 => hartmann3([x[0], x[1], x[2]]),
        }
    }
}

fn branin(x1: f64, x2: f64) -> f64 {
    use std::f64::consts::PI;
    let a = 1.0;
    let b = 5.1 / (4.0 * PI * PI);
    let c = 5.0 / PI;
    let r = 6.0;
    let s = 10.0;
    let t = 1.0 / (8.0 * PI);
    let u = x2 - b * x1 * x1 + c * x1 - r;
    a * u * u + s * (1.0 - t) * x1.cos() + s
}

fn hartmann3(x: [f64; 3]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 3]; 4] = [
        [3.0, 10.0, 30.0],
        [0.1, 10.0, 35.0],
        [3.0, 10.0, 30.0],
        [0.1, 10.0, 35.0],
    ];
    const P: [[f64; 3]; 4] = [
        [0.3689, 0.1170, 0.2673],
        [0.4699, 0.4387, 0.7470],
        [0.1091, 0.8732, 0.5547],
        [0.0381, 0.5743, 0.8828],
    ];
    -(0..4)
        .map(|i| {
            let q: f64 = (0..3).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum();
            ALPHA[i] * (-q).exp()
        })
        .sum::<f64>()
}
