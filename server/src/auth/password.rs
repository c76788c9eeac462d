//! Password hashing with argon2id (docs/reliability.md rule 8: m ≥ 19 MiB, t ≥ 2, p = 1), and a dummy
//! hash so that a login for an unknown account costs the same time as a wrong password.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Errors of the password module.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The cost parameters are out of range.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// Hashing failed.
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// An argon2id hasher with fixed cost.
#[derive(Clone)]
pub struct PasswordHasherConfig {
    params: Params,
}

impl std::fmt::Debug for PasswordHasherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "argon2id(m={} KiB, t={}, p={})",
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost()
        )
    }
}

impl PasswordHasherConfig {
    /// argon2id with `memory_kib` KiB and `iterations` passes, one lane.
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Self, PasswordError> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(PasswordHasherConfig { params })
    }

    /// argon2id with the crate's defaults (m = 19 MiB, t = 2, p = 1).
    pub fn default_cost() -> Self {
        PasswordHasherConfig {
            params: Params::DEFAULT,
        }
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes a password into a PHC string with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let salt_bytes: [u8; 16] = rand::random();
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| PasswordError::Hash(e.to_string()))?;
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    /// Whether `password` matches the PHC string `stored` (false for unparsable hashes).
    pub fn verify(&self, password: &str, stored: &str) -> bool {
        match PasswordHash::new(stored) {
            Ok(parsed) => self
                .argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_carry_the_argon2id_cost() {
        let hasher = PasswordHasherConfig::new(19_456, 2).unwrap();
        let stored = hasher.hash("correct horse battery").unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(hasher.verify("correct horse battery", &stored));
        assert!(!hasher.verify("correct horse batterY", &stored));
        assert!(!hasher.verify("x", "not a hash"));
        let again = hasher.hash("correct horse battery").unwrap();
        assert_ne!(stored, again, "fresh salt each time");
    }
}
