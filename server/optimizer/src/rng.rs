//! A seeded ChaCha8 generator whose exact position serialises to JSON (seed, stream and word
//! position as strings: JSON has no 128-bit integers), so a resumed optimizer continues the
//! very same random stream.

use std::ops::{Deref, DerefMut};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serialisable ChaCha8 generator.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRng(ChaCha8Rng);

impl StateRng {
    /// Seeded generator.
    pub fn seed_from_u64(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
}

impl Deref for StateRng {
    type Target = ChaCha8Rng;
    fn deref(&self) -> &ChaCha8Rng {
        &self.0
    }
}

impl DerefMut for StateRng {
    fn deref_mut(&mut self) -> &mut ChaCha8Rng {
        &mut self.0
    }
}

#[derive(Serialize, Deserialize)]
struct Repr {
    seed: String,
    stream: String,
    word_pos: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Serialize for StateRng {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Repr {
            seed: hex(&self.0.get_seed()),
            stream: self.0.get_stream().to_string(),
            word_pos: self.0.get_word_pos().to_string(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StateRng {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = Repr::deserialize(d)?;
        if r.seed.len() != 64 || !r.seed.is_ascii() {
            return Err(D::Error::custom("rng seed must be 64 hex digits"));
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&r.seed[2 * i..2 * i + 2], 16).map_err(D::Error::custom)?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(r.stream.parse().map_err(D::Error::custom)?);
        rng.set_word_pos(r.word_pos.parse().map_err(D::Error::custom)?);
        Ok(Self(rng))
    }
}
