//! The API-key format: `<prefix>_<33 base62 random chars><6 base62 chars of CRC32>`.
//!
//! 33 base62 characters carry 196 bits of entropy (>= 192). The checksum is the CRC32 (IEEE)
//! of everything before it, so a typo or random garbage is rejected without touching the
//! store, and secret scanners can recognise a leaked key with the published pattern
//! `\b[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{39}\b` plus the checksum.

use std::fmt;

use super::{CryptoError, base62, random, secret::SecretString};

/// Random characters in a key (after the prefix and underscore).
pub const RANDOM_CHARS: usize = 33;
/// Checksum characters at the end of a key.
pub const CHECKSUM_CHARS: usize = 6;
/// Longest prefix accepted.
pub const MAX_PREFIX: usize = 16;
/// Longest string that could possibly be a key; anything longer is rejected unread.
pub const MAX_KEY_LEN: usize = MAX_PREFIX + 1 + RANDOM_CHARS + CHECKSUM_CHARS;
/// Characters of the random part shown in the non-secret hint `start`.
pub const HINT_CHARS: usize = 4;

/// The prefix root keys carry.
pub const ROOT_KEY_PREFIX: &str = "tsr";
/// The prefix of API keys when the API sets none.
pub const DEFAULT_PREFIX: &str = "tsk";

/// A key prefix: `[a-z][a-z0-9]{0,15}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_PREFIX
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1 to 16 characters of [a-z0-9], starting with a letter")
        }
    }

    pub fn default_prefix() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyPrefix {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl<'de> serde::Deserialize<'de> for KeyPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a well-formed key. Deliberately coarse: callers answer `NOT_FOUND`
/// for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not in the key format")]
    Shape,
    #[error("checksum mismatch")]
    Checksum,
}

/// A well-formed API key (shape and checksum checked). The secret itself. No `PartialEq`
/// outside tests (a derived comparison is not constant-time).
#[derive(Clone)]
#[cfg_attr(test, derive(PartialEq, Eq))]
pub struct ApiKey(SecretString);

impl ApiKey {
    /// Generates a fresh key under `prefix`.
    pub fn generate(prefix: &KeyPrefix) -> Result<Self, CryptoError> {
        let mut s = String::with_capacity(MAX_KEY_LEN);
        s.push_str(prefix.as_str());
        s.push('_');
        random::push_base62(&mut s, RANDOM_CHARS)?;
        let sum = base62::encode_u32_fixed6(crc32fast::hash(s.as_bytes()));
        // The checksum digits are ASCII by construction.
        s.extend(sum.iter().map(|&b| b as char));
        Ok(Self(SecretString::new(s)))
    }

    /// Checks shape and checksum without any look-up.
    pub fn parse(s: &str) -> Result<Self, KeyFormatError> {
        if s.len() > MAX_KEY_LEN {
            return Err(KeyFormatError::Shape);
        }
        let (prefix, body) = s.rsplit_once('_').ok_or(KeyFormatError::Shape)?;
        KeyPrefix::parse(prefix).map_err(|_| KeyFormatError::Shape)?;
        if body.len() != RANDOM_CHARS + CHECKSUM_CHARS || !base62::is_base62(body) {
            return Err(KeyFormatError::Shape);
        }
        let split = s.len() - CHECKSUM_CHARS;
        let expected = base62::encode_u32_fixed6(crc32fast::hash(&s.as_bytes()[..split]));
        if expected != s.as_bytes()[split..] {
            return Err(KeyFormatError::Checksum);
        }
        Ok(Self(SecretString::new(s.to_owned())))
    }

    /// The key's prefix (not secret).
    pub fn prefix(&self) -> &str {
        self.0.expose().rsplit_once('_').map_or("", |(p, _)| p)
    }

    /// The non-secret hint shown in lists: the prefix, the underscore and 4 characters
    /// (24 of the key's 196 random bits; the rest stays secret).
    pub fn start(&self) -> String {
        let s = self.0.expose();
        let end = self.prefix().len() + 1 + HINT_CHARS;
        s[..end].to_owned()
    }

    /// The secret, for hashing and for the one response that hands it out.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}_[redacted])", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_have_the_documented_shape() {
        let p = KeyPrefix::parse("acme").unwrap();
        let k = ApiKey::generate(&p).unwrap();
        let s = k.expose();
        assert!(s.starts_with("acme_"));
        assert_eq!(s.len(), 5 + RANDOM_CHARS + CHECKSUM_CHARS);
        assert_eq!(ApiKey::parse(s).unwrap(), k);
        assert_eq!(k.prefix(), "acme");
        assert_eq!(k.start().len(), 5 + HINT_CHARS);
        assert!(!format!("{k:?}").contains(&s[5..]));
    }

    #[test]
    fn a_single_typo_is_caught_by_the_checksum() {
        let k = ApiKey::generate(&KeyPrefix::default_prefix()).unwrap();
        let s = k.expose();
        for i in 4..s.len() {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(b).unwrap();
            assert_eq!(
                ApiKey::parse(&typo),
                Err(KeyFormatError::Checksum),
                "position {i}"
            );
        }
    }

    #[test]
    fn garbage_is_rejected_by_shape() {
        for bad in [
            "",
            "tsk",
            "tsk_",
            "_abc",
            "TSK_000000000000000000000000000000000000000",
            "tsk_00000000000000000000000000000000000000",
            "tsk_0000000000000000000000000000000000000-0",
            "this_prefix_is_much_too_long_000000000000000000000000000000000000000",
            "tsk_0000000000000000000000000000000000000000",
        ] {
            assert_eq!(ApiKey::parse(bad), Err(KeyFormatError::Shape), "{bad:?}");
        }
    }

    #[test]
    fn the_longest_prefix_makes_a_key_that_parses() {
        let p = KeyPrefix::parse("abcdefghijklmnop").unwrap();
        let k = ApiKey::generate(&p).unwrap();
        assert_eq!(k.expose().len(), 16 + 1 + 33 + 6);
        assert_eq!(ApiKey::parse(k.expose()).unwrap(), k);
        // One character more is refused unread, checksum right or not.
        let longer = format!("q{}", k.expose());
        assert_eq!(ApiKey::parse(&longer), Err(KeyFormatError::Shape));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(KeyPrefix::parse("tsk").is_ok());
        assert!(KeyPrefix::parse("a1").is_ok());
        assert!(KeyPrefix::parse("1a").is_err());
        assert!(KeyPrefix::parse("a_b").is_err());
        assert!(KeyPrefix::parse("Abc").is_err());
        assert!(KeyPrefix::parse("abcdefghijklmnopq").is_err());
    }
}
