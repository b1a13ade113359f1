//! Keyed hashes: the verification hash HMAC-SHA256(pepper, key) that records keep, and the
//! blind index used to find a record without storing that hash in the clear.
//!
//! API keys carry >= 192 bits of entropy, so a fast keyed hash is the right tool (NIST
//! 800-63B, ASVS 6.5.2); a password KDF on the verify path would only hand attackers a CPU
//! lever.

use ring::hmac;

use super::secret::Key256;

/// Length of a verification hash and of a blind index.
pub const HASH_LEN: usize = 32;

/// The pepper and the index key derived from it. Never rotated with the data keys: a change
/// would invalidate every stored hash.
pub struct Pepper {
    verify: hmac::Key,
    index: hmac::Key,
}

impl Pepper {
    pub fn new(pepper: &Key256) -> Self {
        let verify = hmac::Key::new(hmac::HMAC_SHA256, pepper.expose());
        // The index key is a PRF output of the pepper under a fixed label, so one stored
        // secret serves both and the two can never be confused.
        let derived = hmac::sign(&verify, b"tessera/blind-index/v1");
        let index = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        Self { verify, index }
    }

    /// HMAC-SHA256(pepper, secret): what a record stores to verify a presented key.
    pub fn verification_hash(&self, secret: &[u8]) -> [u8; HASH_LEN] {
        let tag = hmac::sign(&self.verify, secret);
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of `secret` against a stored verification hash.
    pub fn verify(&self, secret: &[u8], stored: &[u8]) -> bool {
        hmac::verify(&self.verify, secret, stored).is_ok()
    }

    /// The key that authenticates backups: a PRF output of the pepper under its own label,
    /// so only a holder of the master key (which unwraps the pepper) can make or check one.
    pub fn backup_key(&self) -> hmac::Key {
        let derived = hmac::sign(&self.verify, b"tessera/backup-mac/v1");
        hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
    }

    /// A blind index: a keyed hash under a second key, used as the look-up key in the store's
    /// indexes. `domain` separates uses (key look-up, name uniqueness, ...).
    pub fn blind_index(&self, domain: &str, value: &[u8]) -> [u8; HASH_LEN] {
        let mut ctx = hmac::Context::with_key(&self.index);
        ctx.update(&(domain.len() as u32).to_be_bytes());
        ctx.update(domain.as_bytes());
        ctx.update(value);
        let tag = ctx.sign();
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_and_index_are_distinct_and_keyed() {
        let p1 = Pepper::new(&Key256::from_bytes([1; 32]));
        let p2 = Pepper::new(&Key256::from_bytes([2; 32]));
        let h = p1.verification_hash(b"tsk_x");
        assert!(p1.verify(b"tsk_x", &h));
        assert!(!p1.verify(b"tsk_y", &h));
        assert!(!p2.verify(b"tsk_x", &h));
        assert_ne!(h, p1.blind_index("key", b"tsk_x"));
        assert_ne!(
            p1.blind_index("key", b"tsk_x"),
            p1.blind_index("api", b"tsk_x")
        );
        assert_ne!(
            p1.blind_index("key", b"tsk_x"),
            p2.blind_index("key", b"tsk_x")
        );
    }
}
