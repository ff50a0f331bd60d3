//! Keyed digests of (login, password): the lookup tag that finds a user's one candidate
//! app password without trying them all, and the cache key that never holds the password.
//!
//! The tag is the first 24 bits of HMAC-SHA256(store key, login NUL password). It is
//! unique among a user's live app passwords (the store enforces it; creation draws a new
//! password on a clash), so a login costs at most one argon2 verification however many
//! app passwords the user has. What it gives away is small: without the store key it is
//! noise; with the key and the database, it rules out 24 of the password's 75 bits, and
//! the remaining 2^51 candidates still each cost an argon2id hash.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Hex characters of the lookup tag (24 bits).
const TAG_HEX_LEN: usize = 6;

/// A secret key for keyed digests.
#[derive(Clone)]
pub struct DigestKey([u8; 32]);

impl DigestKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key that lives only as long as this process: right for the in-memory cache.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    fn digest(&self, login: &str, password: &Secret<String>) -> [u8; 32] {
        // Unwrap: HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("any key length");
        mac.update(login.as_bytes());
        mac.update(&[0]);
        mac.update(password.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The store lookup tag for a canonical (login, password).
    pub fn tag(&self, login: &str, password: &Secret<String>) -> String {
        let digest = self.digest(login, password);
        let mut tag = String::with_capacity(TAG_HEX_LEN);
        for byte in &digest[..TAG_HEX_LEN / 2] {
            tag.push_str(&format!("{byte:02x}"));
        }
        tag
    }

    /// The cache key for a (login, password) as the client typed them.
    pub fn cache_key(&self, login: &str, password: &Secret<String>) -> [u8; 32] {
        self.digest(login, password)
    }
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_stable_and_depend_on_every_input() {
        let key = DigestKey::new([7; 32]);
        let password = Secret::new("abcdefghijklmnop".to_string());
        let tag = key.tag("alice", &password);
        assert_eq!(tag.len(), 6);
        assert_eq!(tag, key.tag("alice", &password));
        assert_ne!(tag, key.tag("bob", &password));
        assert_ne!(
            tag,
            key.tag("alice", &Secret::new("abcdefghijklmnoq".into()))
        );
        assert_ne!(tag, DigestKey::new([8; 32]).tag("alice", &password));
        // The separator keeps ("ab", "c…") and ("a", "bc…") apart.
        assert_ne!(
            key.cache_key("ab", &Secret::new("c".into())),
            key.cache_key("a", &Secret::new("bc".into()))
        );
    }
}
