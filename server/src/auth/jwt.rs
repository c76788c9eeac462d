//! Access tokens: JWT signed with HS256 only (the algorithm is pinned; `alg: none` and every
//! other algorithm are refused), with `exp`, `iss`, `aud` and `sub` required.
//!
//! A key set for rotation: tokens are signed with the current key and carry its `kid` (the
//! first 8 bytes of the key's SHA-256, in hex: it names the key without revealing it); they are
//! verified with the key their `kid` names, the current one or one of the previous keys still
//! accepted. A token without `kid` (issued before key sets) is checked against the current key.

use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// The token names a key this server does not hold (retired, or another deployment's).
    #[error("access token signed with an unknown key {0:?}")]
    UnknownKey(String),
}

/// The `kid` of a secret: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(secret: &[u8]) -> String {
    hex::encode(&Sha256::digest(secret)[..8])
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    kid: String,
    encoding: EncodingKey,
    /// Current key first, then the previous keys still accepted.
    decoding: Vec<(String, DecodingKey)>,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JwtKeys(HS256, kid={}, {} key(s), iss={}, aud={})",
            self.kid,
            self.decoding.len(),
            self.issuer,
            self.audience
        )
    }
}

impl JwtKeys {
    /// Keys from a shared secret, with the issuer and audience to issue and require.
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Self::with_previous(secret, &[], issuer, audience)
    }

    /// Keys that sign with `secret` and also accept tokens signed with any of `previous`.
    pub fn with_previous(secret: &[u8], previous: &[&[u8]], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        validation.validate_exp = true;
        let decoding = std::iter::once(secret)
            .chain(previous.iter().copied())
            .map(|key| (key_id(key), DecodingKey::from_secret(key)))
            .collect();
        JwtKeys {
            kid: key_id(secret),
            encoding: EncodingKey::from_secret(secret),
            decoding,
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
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(self.kid.clone());
        Ok(encode(&header, &claims, &self.encoding)?)
    }

    /// The `kid` tokens are signed with now.
    pub fn current_kid(&self) -> &str {
        &self.kid
    }

    /// Verifies signature (with the key the token's `kid` names), algorithm, issuer, audience
    /// and expiry; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = decode_header(token)?;
        let key = match header.kid {
            None => self.decoding.first().map(|(_, k)| k),
            Some(kid) => match self.decoding.iter().find(|(id, _)| *id == kid) {
                Some((_, k)) => Some(k),
                None => return Err(JwtError::UnknownKey(kid)),
            },
        };
        let key = key.ok_or_else(|| JwtError::UnknownKey(String::new()))?;
        Ok(decode::<Claims>(token, key, &self.validation)?.claims)
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
    fn a_rotated_key_set_accepts_tokens_of_the_previous_key_and_signs_with_the_new_one() {
        const NEW: &[u8] = b"fedcba9876543210fedcba9876543210";
        let old = keys();
        let old_token = old.issue("u1", "s1", now_secs(), 600).unwrap();
        let rotated = JwtKeys::with_previous(NEW, &[SECRET], "maosic", "maosic-api");
        assert_eq!(rotated.verify(&old_token).unwrap().sub, "u1");
        let new_token = rotated.issue("u2", "s2", now_secs(), 600).unwrap();
        assert_eq!(
            decode_header(&new_token).unwrap().kid.as_deref(),
            Some(key_id(NEW).as_str())
        );
        assert_ne!(key_id(NEW), key_id(SECRET));
        // The old key alone does not know the new one; once retired, old tokens are refused.
        assert!(matches!(
            old.verify(&new_token),
            Err(JwtError::UnknownKey(_))
        ));
        let retired = JwtKeys::new(NEW, "maosic", "maosic-api");
        assert!(matches!(
            retired.verify(&old_token),
            Err(JwtError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_kid_naming_one_key_with_the_signature_of_another_is_refused() {
        const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";
        let k = JwtKeys::with_previous(SECRET, &[OTHER], "maosic", "maosic-api");
        let lying = raw(
            json!({"alg": "HS256", "typ": "JWT", "kid": key_id(SECRET)}),
            good_claims(),
            OTHER,
        );
        assert!(k.verify(&lying).is_err());
        let unknown = raw(
            json!({"alg": "HS256", "typ": "JWT", "kid": "0011223344556677"}),
            good_claims(),
            SECRET,
        );
        assert!(matches!(k.verify(&unknown), Err(JwtError::UnknownKey(_))));
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
