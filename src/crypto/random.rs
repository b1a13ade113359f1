//! Randomness from the operating system (ring's `SystemRandom`), and the random ids of
//! DESIGN.md's "Formats and rules".

use ring::rand::{SecureRandom, SystemRandom};

use super::{CryptoError, base62};

/// Fills `buf` from the system CSPRNG.
pub fn fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Random)
}

/// A new Ed25519 key pair as PKCS#8 (the form the signing keys are sealed in).
pub fn ed25519_pkcs8() -> Result<super::secret::SecretBytes, CryptoError> {
    ring::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| super::secret::SecretBytes::new(doc.as_ref().to_vec()))
        .map_err(|_| CryptoError::Random)
}

/// Returns `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    fill(&mut b)?;
    Ok(b)
}

/// Appends `len` uniformly random base62 characters to `out`.
///
/// Rejection sampling: bytes >= 248 (= 4 * 62) are discarded so that every character is
/// equally likely. Each kept byte carries log2(62) ~ 5.95 bits.
pub fn push_base62(out: &mut String, len: usize) -> Result<(), CryptoError> {
    let mut pool = [0u8; 64];
    let mut pushed = 0;
    while pushed < len {
        fill(&mut pool)?;
        for &b in pool.iter() {
            if pushed == len {
                break;
            }
            if b < 248 {
                out.push(base62::ALPHABET[usize::from(b % 62)] as char);
                pushed += 1;
            }
        }
    }
    pool.iter_mut().for_each(|b| *b = 0);
    Ok(())
}

/// Number of base62 characters in an object id: 17 characters carry 101 bits (>= 96).
pub const ID_CHARS: usize = 17;

/// A fresh opaque id `<type>_<base62>`, e.g. `key_3kTMd9...`.
pub fn id(type_prefix: &str) -> Result<String, CryptoError> {
    let mut s = String::with_capacity(type_prefix.len() + 1 + ID_CHARS);
    s.push_str(type_prefix);
    s.push('_');
    push_base62(&mut s, ID_CHARS)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shape_and_do_not_repeat() {
        let a = id("key").unwrap();
        let b = id("key").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("key_"));
        assert_eq!(a.len(), 4 + ID_CHARS);
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn base62_output_uses_the_whole_alphabet() {
        let mut s = String::new();
        push_base62(&mut s, 20_000).unwrap();
        let distinct: std::collections::HashSet<char> = s.chars().collect();
        assert_eq!(distinct.len(), 62);
    }
}
