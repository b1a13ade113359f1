//! Certificate serial numbers: random, 158 bits, written as minimal lowercase hex.

use std::fmt;

use crate::crypto::{CryptoError, hex, random};

/// Bytes in a serial we issue (RFC 5280's maximum is 20 octets).
const SERIAL_BYTES: usize = 20;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Serial(String);

impl Serial {
    /// A fresh random serial. The first byte is forced into 0x40..=0x7f: positive as a DER
    /// INTEGER, and never a leading zero, so the hex form is minimal and always 40 digits.
    pub fn generate() -> Result<(Self, [u8; SERIAL_BYTES]), CryptoError> {
        let mut b = random::bytes::<SERIAL_BYTES>()?;
        b[0] = (b[0] & 0x3f) | 0x40;
        Ok((Self(hex::encode(&b)), b))
    }

    /// From the big-endian bytes of a certificate's serial.
    pub fn from_bytes(b: &[u8]) -> Self {
        let s = hex::encode(b);
        let trimmed = s.trim_start_matches('0');
        Self(if trimmed.is_empty() {
            "0".into()
        } else {
            trimmed.into()
        })
    }

    /// Parses the API form: 1 to 40 lowercase hex digits, no leading zero.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let ok = (1..=2 * SERIAL_BYTES).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && (s == "0" || !s.starts_with('0'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be a serial in lowercase hex without leading zeros")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The serial's big-endian bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let padded = if self.0.len() % 2 == 1 {
            format!("0{}", self.0)
        } else {
            self.0.clone()
        };
        hex::decode(&padded).unwrap_or_default()
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_serials_are_minimal_and_round_trip() {
        let (s, b) = Serial::generate().unwrap();
        assert_eq!(s.as_str().len(), 40);
        assert!(Serial::parse(s.as_str()).is_ok());
        assert_eq!(Serial::from_bytes(&b), s);
        assert_eq!(s.to_bytes(), b.to_vec());
        assert_eq!(Serial::from_bytes(&[0, 0x0a, 0xbc]).as_str(), "abc");
        assert_eq!(Serial::parse("abc").unwrap().to_bytes(), vec![0x0a, 0xbc]);
        assert!(Serial::parse("0abc").is_err());
        assert!(Serial::parse("ABC").is_err());
    }
}
