//! The labs' side of the server: the registry of live agent connections and calls to them
//! ([`registry`]), the agent WebSocket gateway that stores records and keeps presence
//! ([`gateway`], its writes batched by [`presence`]), the SSH endpoint agents may tunnel through ([`ssh`]), the dispatcher of queued
//! lab commands ([`commands`]), and labs' live readings ([`readings`]).

pub mod commands;
pub mod gateway;
pub mod presence;
pub mod readings;
pub mod registry;
pub mod ssh;

use sha2::{Digest, Sha256};

/// Hex SHA-256 of a credential secret (secrets are 256-bit random, so a fast hash suffices).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random credential secret (256 bits, hex).
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}
