//! Secret values in memory. Every type here zeroizes on drop, and its `Debug` prints no secret.
//! The only ways to read a secret are the explicit `expose*` methods, so each use is visible.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Arbitrary secret bytes (a decrypted record, a private key, a wrapped key's plaintext).
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// An empty buffer with room for `n` bytes, so that writers do not reallocate (and leave
    /// unzeroized copies behind) while they fill it.
    pub fn with_capacity(n: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(n)))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn expose_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// A secret string: a plaintext API key, a PEM private key. No `PartialEq` outside tests: a
/// derived comparison is not constant-time (compare hashes with `ring::hmac::verify`).
#[derive(Clone, Default)]
#[cfg_attr(test, derive(PartialEq, Eq))]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

/// A 256-bit symmetric key (master key, data key, pepper).
#[derive(Clone)]
pub struct Key256(Zeroizing<[u8; 32]>);

impl Key256 {
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let key = Self(Zeroizing::new(bytes));
        bytes.zeroize();
        key
    }

    /// Takes a key from a slice, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut raw = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return None;
        }
        raw.copy_from_slice(bytes);
        Some(Self(raw))
    }

    pub fn generate() -> Result<Self, super::CryptoError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        super::random::fill(&mut raw[..])?;
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let s = SecretString::new("tsk_supersecretvalue".into());
        let b = SecretBytes::new(b"hunter2".to_vec());
        let k = Key256::from_bytes([7u8; 32]);
        let printed = format!("{s:?} {b:?} {k:?}");
        assert!(!printed.contains("supersecret"));
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("7, 7"));
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn a_buffer_made_with_room_is_filled_without_moving() {
        let mut b = SecretBytes::with_capacity(64);
        assert!(b.is_empty());
        let before = b.expose().as_ptr();
        assert!(b.expose_mut().capacity() >= 64);
        b.expose_mut().extend_from_slice(&[7u8; 64]);
        // A reallocation would have left an unzeroized copy of the first bytes behind.
        assert_eq!(b.expose().as_ptr(), before);
        assert_eq!((b.len(), b.is_empty()), (64, false));
    }

    #[test]
    fn a_secret_string_deserializes_to_its_value() {
        let s: SecretString = serde_json::from_str(r#""tsk_value""#).unwrap();
        assert_eq!(s.expose(), "tsk_value");
        assert!(serde_json::from_str::<SecretString>("7").is_err());
    }

    #[test]
    fn key_from_slice_checks_length() {
        assert!(Key256::from_slice(&[1u8; 31]).is_none());
        assert!(Key256::from_slice(&[1u8; 32]).is_some());
    }
}
