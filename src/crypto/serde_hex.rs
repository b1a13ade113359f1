//! Serde helpers: byte fields as lowercase hex strings inside (sealed) record plaintext.

use serde::{Deserialize, Deserializer, Serializer};
use zeroize::Zeroize;

use super::{hex, secret::SecretBytes};

/// `#[serde(with = "crate::crypto::serde_hex::bytes")]` for `Vec<u8>`.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s).ok_or_else(|| serde::de::Error::custom("must be hex"))
    }
}

/// `#[serde(with = "crate::crypto::serde_hex::array32")]` for `[u8; 32]`.
pub mod array32 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| serde::de::Error::custom("must be 32 bytes of hex"))
    }
}

/// `#[serde(with = "crate::crypto::serde_hex::secret")]` for [`SecretBytes`]. Only ever
/// used inside sealed records: the hex text lives in the record's zeroizing plaintext.
pub mod secret {
    use super::*;

    pub fn serialize<S: Serializer>(v: &SecretBytes, s: S) -> Result<S::Ok, S::Error> {
        let mut h = hex::encode(v.expose());
        let r = s.serialize_str(&h);
        h.zeroize();
        r
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretBytes, D::Error> {
        let mut s = String::deserialize(d)?;
        let out = hex::decode(&s).map(SecretBytes::new);
        s.zeroize();
        out.ok_or_else(|| serde::de::Error::custom("must be hex"))
    }
}
