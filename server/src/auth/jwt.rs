//! Access tokens: JWT signed with HS256 only (the algorithm is pinned; `alg: none` and every
//! other algorithm are refused), with `exp`, `iss`, `aud` and `sub` required.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The one accepted algorithm.
pub const ALGORITHM: Algorithm = Algorithm::HS256;

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// The login session (refresh-token family) it belongs to.
    pub sid: String,
}

/// Why a token was refused (logged, never returned to a client in detail).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Signature, algorithm, claims or expiry are wrong.
    #[error("invalid access token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JwtKeys(HS256, iss={}, aud={})",
            self.issuer, self.audience
        )
    }
}

impl JwtKeys {
    /// Keys from a shared secret, with the issuer and audience to issue and require.
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        validation.validate_exp = true;
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// Issues a token for `user_id` in session `sid`, valid `ttl_secs` from `now_secs`.
    pub fn issue(
        &self,
        user_id: &str,
        sid: &str,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, JwtError> {
        let claims = Claims {
            sub: user_id.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now_secs.saturating_add(ttl_secs),
            iat: now_secs,
            sid: sid.to_owned(),
        };
        Ok(encode(&Header::new(ALGORITHM), &claims, &self.encoding)?)
    }

    /// Verifies signature, algorithm, issuer, audience and expiry; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        Ok(decode::<Claims>(token, &self.decoding, &self.validation)?.claims)
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn keys() -> JwtKeys {
        JwtKeys::new(SECRET, "maosic", "maosic-api")
    }

    fn raw(header: serde_json::Value, claims: serde_json::Value, key: &[u8]) -> String {
        use hmac_free::sign;
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{h}.{c}");
        format!("{signing_input}.{}", sign(key, signing_input.as_bytes()))
    }

    /// HMAC-SHA256 for crafting hostile tokens without a second JWT library.
    mod hmac_free {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        use sha2::{Digest, Sha256};

        pub fn sign(key: &[u8], msg: &[u8]) -> String {
            let mut k = [0u8; 64];
            k[..key.len()].copy_from_slice(key);
            let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            let inner = Sha256::new()
                .chain_update(&ipad)
                .chain_update(msg)
                .finalize();
            let outer = Sha256::new()
                .chain_update(&opad)
                .chain_update(inner)
                .finalize();
            URL_SAFE_NO_PAD.encode(outer)
        }
    }

    fn good_claims() -> serde_json::Value {
        let now = now_secs();
        json!({"sub": "u1", "iss": "maosic", "aud": "maosic-api", "exp": now + 600, "iat": now, "sid": "s1"})
    }

    #[test]
    fn a_well_formed_token_verifies_and_the_hand_signer_agrees() {
        let k = keys();
        let token = k.issue("u1", "s1", now_secs(), 600).unwrap();
        assert_eq!(k.verify(&token).unwrap().sub, "u1");
        let crafted = raw(json!({"alg": "HS256", "typ": "JWT"}), good_claims(), SECRET);
        assert_eq!(k.verify(&crafted).unwrap().sid, "s1");
    }

    #[test]
    fn the_negative_matrix_accepts_nothing() {
        let k = keys();
        let now = now_secs();
        let hs = json!({"alg": "HS256", "typ": "JWT"});
        let mut cases: Vec<(&str, String)> = Vec::new();
        // alg none, unsigned.
        let none_h = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
        let none_c = URL_SAFE_NO_PAD.encode(good_claims().to_string());
        cases.push(("alg none", format!("{none_h}.{none_c}.")));
        cases.push((
            "alg none, signed",
            raw(json!({"alg": "none"}), good_claims(), SECRET),
        ));
        cases.push((
            "alg HS512",
            raw(json!({"alg": "HS512"}), good_claims(), SECRET),
        ));
        cases.push((
            "wrong key",
            raw(
                hs.clone(),
                good_claims(),
                b"another-key-another-key-another!",
            ),
        ));
        let mut c = good_claims();
        c["exp"] = json!(now - 10);
        cases.push(("expired", raw(hs.clone(), c, SECRET)));
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        cases.push(("no exp", raw(hs.clone(), c, SECRET)));
        let mut c = good_claims();
        c["iss"] = json!("evil");
        cases.push(("wrong iss", raw(hs.clone(), c, SECRET)));
        let mut c = good_claims();
        c["aud"] = json!("other-api");
        cases.push(("wrong aud", raw(hs.clone(), c, SECRET)));
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("sub");
        cases.push(("no sub", raw(hs.clone(), c, SECRET)));
        // Tampered payload: a valid token with its claims swapped for another user's.
        let valid = k.issue("u1", "s1", now, 600).unwrap();
        let parts: Vec<&str> = valid.split('.').collect();
        let mut c = good_claims();
        c["sub"] = json!("u2");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(c.to_string()),
            parts[2]
        );
        cases.push(("tampered payload", tampered));
        cases.push(("garbage", "a.b.c".to_owned()));
        let mut accepted = 0;
        for (name, token) in &cases {
            let result = k.verify(token);
            println!(
                "jwt negative case {name:>18}: {}",
                if result.is_ok() {
                    "ACCEPTED"
                } else {
                    "refused"
                }
            );
            accepted += usize::from(result.is_ok());
        }
        println!(
            "jwt negative matrix: {} cases, {accepted} accepted",
            cases.len()
        );
        assert_eq!(accepted, 0);
    }
}
