//! Base62 (`0-9A-Za-z`), used by ids and the API-key format.

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Encodes `v` as exactly 6 base62 digits, most significant first (62^6 > 2^32).
pub fn encode_u32_fixed6(mut v: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    out
}

pub fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_encoding() {
        assert_eq!(&encode_u32_fixed6(0), b"000000");
        assert_eq!(&encode_u32_fixed6(61), b"00000z");
        assert_eq!(&encode_u32_fixed6(62), b"000010");
        assert_eq!(&encode_u32_fixed6(u32::MAX), b"4gfFC3");
    }
}
