//! The key format, checked before anyone is asked: `<prefix>_<33 base62><6 base62 CRC32>`,
//! as Tessera checks it (its `crypto/apikey.rs`; the two are tested against each other by
//! the multi-process test, which verifies real keys locally).

/// Whether a string can be a Tessera key at all: `<prefix>_<33 base62><6 base62 CRC32>`
/// (answered `NOT_FOUND` without asking anyone, as Tessera would).
pub fn well_formed(key: &str) -> bool {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let Some((prefix, body)) = key.rsplit_once('_') else {
        return false;
    };
    let p = prefix.as_bytes();
    let prefix_ok = !p.is_empty()
        && p.len() <= 16
        && p[0].is_ascii_lowercase()
        && p.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !prefix_ok || body.len() != 39 || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let split = key.len() - 6;
    let mut v = crc32(&key.as_bytes()[..split]);
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    sum == key.as_bytes()[split..]
}

/// CRC-32 (IEEE), bitwise: run once per unseen key, never on the cached path.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_format_is_checked_as_tessera_checks_it() {
        // A key in Tessera's format, its checksum computed independently (crc32 of
        // "tsk_" + 33 chars, as 6 base62 digits).
        let body = "0123456789abcdefghijABCDEFGHIJklm";
        let head = format!("tsk_{body}");
        let mut v = crc32(head.as_bytes());
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut sum = String::new();
        for _ in 0..6 {
            sum.insert(0, alphabet[(v % 62) as usize] as char);
            v /= 62;
        }
        let key = format!("{head}{sum}");
        assert!(well_formed(&key));
        assert!(!well_formed(&key.replace("tsk_0", "tsk_1")));
        assert!(!well_formed("tsk_short"));
        assert!(!well_formed(&format!("Tsk_{body}{sum}")));
        assert!(!well_formed(""));
        // The CRC is the IEEE one.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
