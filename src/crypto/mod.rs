//! Cryptographic building blocks: secrets in memory, randomness, the API-key format, keyed
//! hashes, the AEAD envelope and the keyring. Nothing here knows about storage or HTTP.

pub mod aead;
pub mod apikey;
pub mod base62;
pub mod hash;
pub mod hex;
pub mod keyring;
pub mod random;
pub mod secret;
pub mod serde_hex;

/// Errors of the crypto layer. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A ciphertext failed authentication: wrong key, wrong associated data, or tampering.
    #[error("ciphertext failed authentication")]
    Tampered,
    /// A stored blob is not in a format this version understands.
    #[error("malformed sealed data")]
    Malformed,
    /// A key of the wrong length or form was supplied.
    #[error("invalid key material")]
    InvalidKey,
}
