//! AES-256-GCM (ring) with explicit nonces and associated data.
//!
//! Nonces are 96 random bits drawn by the caller before any retried closure runs (a store may
//! re-run a transaction), which keeps the birthday bound far away for the message counts one
//! data key sees; rotating the keyring starts a fresh key.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::{CryptoError, secret::Key256, secret::SecretBytes};

pub use ring::aead::NONCE_LEN as NONCE_BYTES;
/// Length of the authentication tag appended to every ciphertext.
pub const TAG_BYTES: usize = 16;

/// An AES-256-GCM key.
///
/// ring's expanded key schedule inside `LessSafeKey` is not zeroized by ring on drop; the raw
/// key bytes it came from are (they live in a [`Key256`]). See the README's security notes.
pub struct AeadKey(LessSafeKey);

impl AeadKey {
    pub fn new(key: &Key256) -> Result<Self, CryptoError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Encrypts `plaintext`; returns ciphertext || tag.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_BYTES);
        out.extend_from_slice(plaintext);
        // AES-GCM sealing fails only for inputs beyond 2^36 bytes, which no record reaches;
        // an empty output then fails authentication when opened rather than panicking here.
        if self
            .0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out,
            )
            .is_err()
        {
            out.clear();
        }
        out
    }

    /// Decrypts and authenticates ciphertext || tag.
    pub fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        let mut buf = SecretBytes::new(ciphertext.to_vec());
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                buf.expose_mut(),
            )
            .map_err(|_| CryptoError::Tampered)?
            .len();
        buf.expose_mut().truncate(len);
        Ok(buf)
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let k = AeadKey::new(&Key256::from_bytes([9; 32])).unwrap();
        let n = [3u8; NONCE_LEN];
        let ct = k.seal(n, b"kind/id", b"hello");
        assert_eq!(k.open(n, b"kind/id", &ct).unwrap().expose(), b"hello");
        assert!(k.open(n, b"kind/other", &ct).is_err());
        let mut flipped = ct.clone();
        flipped[0] ^= 1;
        assert!(k.open(n, b"kind/id", &flipped).is_err());
        let other = AeadKey::new(&Key256::from_bytes([8; 32])).unwrap();
        assert!(other.open(n, b"kind/id", &ct).is_err());
    }
}
