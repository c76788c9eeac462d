//! Opaque secrets (refresh, API, enrollment, invitation and e-mail verification tokens): `<prefix><id>.<secret>`,
//! only the SHA-256 of the secret half is stored; comparison is constant-time.

use sha2::{Digest, Sha256};

/// Prefix of API tokens (so a bearer can be told apart from a JWT).
pub const API_TOKEN_PREFIX: &str = "mat_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "mrt_";
/// Prefix of enrollment tokens.
pub const ENROLL_PREFIX: &str = "met_";
/// Prefix of invitation tokens.
pub const INVITE_PREFIX: &str = "mit_";
/// Prefix of e-mail verification tokens (sign-up).
pub const VERIFY_PREFIX: &str = "mvt_";

/// A fresh 256-bit secret, hex.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Formats a token from its id and secret.
pub fn format_token(prefix: &str, id: &str, secret: &str) -> String {
    format!("{prefix}{id}.{secret}")
}

/// Splits `<prefix><id>.<secret>` into id and secret; `None` when malformed.
pub fn parse_token<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = token.trim().strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('.')?;
    if id.is_empty() || id.len() > 64 || secret.is_empty() || secret.len() > 128 {
        return None;
    }
    Some((id, secret))
}

/// Constant-time check of a secret against its stored hash.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    let computed = hash_secret(secret);
    let (a, b) = (computed.as_bytes(), stored_hash.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let secret = new_secret();
        let token = format_token(API_TOKEN_PREFIX, "abc", &secret);
        assert_eq!(
            parse_token(API_TOKEN_PREFIX, &token),
            Some(("abc", secret.as_str()))
        );
        assert_eq!(parse_token(REFRESH_PREFIX, &token), None);
        assert_eq!(parse_token(API_TOKEN_PREFIX, "mat_abc"), None);
        assert_eq!(parse_token(API_TOKEN_PREFIX, "mat_.x"), None);
        assert!(secret_matches(&secret, &hash_secret(&secret)));
        assert!(!secret_matches("other", &hash_secret(&secret)));
    }
}
