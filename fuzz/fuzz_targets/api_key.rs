//! `ApiKey::parse` on any string (the input as lossy UTF-8), checked against the documented
//! pattern `[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{39}` plus the CRC32 checksum. A CRC is out of a
//! mutator's reach, so every input is also tried with its last 6 characters replaced by the
//! right checksum: that one must parse exactly when it has the shape, and then round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::crypto::{
    apikey::{ApiKey, CHECKSUM_CHARS, HINT_CHARS, KeyFormatError, KeyPrefix, MAX_PREFIX},
    base62,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s: &str = &text;
    let parsed = ApiKey::parse(s);
    if let Ok(key) = &parsed {
        check_key(s, key);
    }
    let _ = KeyPrefix::parse(s);

    // The same characters with the right checksum.
    if s.len() < CHECKSUM_CHARS || !s.is_char_boundary(s.len() - CHECKSUM_CHARS) {
        return;
    }
    let head = &s[..s.len() - CHECKSUM_CHARS];
    let sum = base62::encode_u32_fixed6(crc32fast::hash(head.as_bytes()));
    let mut fixed = head.to_owned();
    fixed.extend(sum.iter().map(|&b| char::from(b)));
    let shaped = has_key_shape(&fixed);
    match ApiKey::parse(&fixed) {
        Ok(key) => {
            assert!(shaped, "accepted a key outside the pattern: {fixed:?}");
            check_key(&fixed, &key);
            if fixed != s {
                // Same head, other last 6 characters: a checksum mismatch if they are still
                // base62, else not in the key format at all.
                let base62_tail = s.as_bytes()[head.len()..]
                    .iter()
                    .all(u8::is_ascii_alphanumeric);
                let want = if base62_tail {
                    KeyFormatError::Checksum
                } else {
                    KeyFormatError::Shape
                };
                assert_eq!(parsed.err(), Some(want), "{s:?}");
            }
        }
        Err(e) => {
            assert!(!shaped, "refused a well-formed key ({e}): {fixed:?}");
            assert_eq!(e, KeyFormatError::Shape, "{fixed:?}");
        }
    }
});

/// What a parsed key must satisfy.
fn check_key(s: &str, key: &ApiKey) {
    assert_eq!(key.expose(), s);
    // Its string form parses again, to an equal key.
    let again = ApiKey::parse(key.expose());
    assert_eq!(again.as_ref().map(ApiKey::expose).ok(), Some(key.expose()));
    let prefix = key.prefix();
    assert!(KeyPrefix::parse(prefix).is_ok(), "prefix {prefix:?}");
    let start = key.start();
    assert_eq!(start.len(), prefix.len() + 1 + HINT_CHARS);
    assert!(s.starts_with(&start));
    // The secret part never shows in Debug output.
    let debug = format!("{key:?}");
    assert!(!debug.contains(&s[prefix.len() + 1..]), "{debug}");
}

/// The published pattern, written out independently of the parser.
fn has_key_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(us) = b.iter().position(|&c| c == b'_') else {
        return false;
    };
    let (prefix, body) = (&b[..us], &b[us + 1..]);
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix[0].is_ascii_lowercase()
        && prefix
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && body.len() == 39
        && body.iter().all(u8::is_ascii_alphanumeric)
}
