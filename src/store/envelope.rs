//! The sealed form of a record on disk:
//!
//! ```text
//! [format: u8 = 1][data-key version: u32 BE][rev: u64 BE][nonce: 12][AES-256-GCM ct || tag]
//! ```
//!
//! The associated data is `"tessera/record/" kind "/" id "/" header`, so a record's bytes
//! are bound to its type, its id, its revision and the key version that sealed it.

use super::{Kind, Rev, StoreError};
use crate::crypto::{aead::NONCE_BYTES, keyring::Keyring, secret::SecretBytes};

const FORMAT: u8 = 1;
pub const HEADER_LEN: usize = 1 + 4 + 8 + NONCE_BYTES;

fn aad(kind: &str, id: &str, header: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + kind.len() + id.len() + header.len() + 2);
    a.extend_from_slice(b"tessera/record/");
    a.extend_from_slice(kind.as_bytes());
    a.push(b'/');
    a.extend_from_slice(id.as_bytes());
    a.push(b'/');
    a.extend_from_slice(header);
    a
}

pub fn seal(
    keyring: &Keyring,
    kind: Kind,
    id: &str,
    rev: Rev,
    nonce: [u8; NONCE_BYTES],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT;
    header[1..5].copy_from_slice(&keyring.current_version().to_be_bytes());
    header[5..13].copy_from_slice(&rev.0.to_be_bytes());
    header[13..].copy_from_slice(&nonce);
    let (_, ct) = keyring.seal(nonce, &aad(kind.0, id, &header), plaintext);
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&ct);
    out
}

/// The revision in a sealed value's header (not authenticated until opened).
pub fn rev_of(sealed: &[u8]) -> Option<Rev> {
    let b: [u8; 8] = sealed.get(5..13)?.try_into().ok()?;
    Some(Rev(u64::from_be_bytes(b)))
}

pub fn open(
    keyring: &Keyring,
    kind: Kind,
    id: &str,
    sealed: &[u8],
) -> Result<(Rev, SecretBytes), StoreError> {
    let corrupt = || StoreError::Corrupt {
        kind: kind.0,
        id: id.to_owned(),
    };
    if sealed.len() < HEADER_LEN || sealed[0] != FORMAT {
        return Err(corrupt());
    }
    let (header, ct) = sealed.split_at(HEADER_LEN);
    let version = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let rev = rev_of(sealed).ok_or_else(corrupt)?;
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&header[13..]);
    let plain = keyring
        .open(version, nonce, &aad(kind.0, id, header), ct)
        .map_err(|_| corrupt())?;
    Ok((rev, plain))
}

/// The data-key version that sealed a value.
pub fn version_of(sealed: &[u8]) -> Option<u32> {
    let b: [u8; 4] = sealed.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// Re-seals a record under the keyring's current data key, keeping its revision (a rewrap
/// changes no content). `kind` and `id` are read from the record's key.
pub fn reseal(
    keyring: &Keyring,
    kind: &str,
    id: &str,
    sealed: &[u8],
    nonce: [u8; NONCE_BYTES],
) -> Option<Vec<u8>> {
    if sealed.len() < HEADER_LEN || sealed[0] != FORMAT {
        return None;
    }
    let (header, ct) = sealed.split_at(HEADER_LEN);
    let version = version_of(sealed)?;
    let rev = rev_of(sealed)?;
    let mut old_nonce = [0u8; NONCE_BYTES];
    old_nonce.copy_from_slice(&header[13..]);
    let plain = keyring
        .open(version, old_nonce, &aad(kind, id, header), ct)
        .ok()?;
    let mut new_header = [0u8; HEADER_LEN];
    new_header[0] = FORMAT;
    new_header[1..5].copy_from_slice(&keyring.current_version().to_be_bytes());
    new_header[5..13].copy_from_slice(&rev.0.to_be_bytes());
    new_header[13..].copy_from_slice(&nonce);
    let (_, ct) = keyring.seal(nonce, &aad(kind, id, &new_header), plain.expose());
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    out.extend_from_slice(&new_header);
    out.extend_from_slice(&ct);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::MasterKey;

    #[test]
    fn records_are_bound_to_kind_id_and_revision() {
        let (ring, _) = Keyring::generate(&MasterKey::generate().unwrap()).unwrap();
        let k = Kind("key");
        let sealed = seal(&ring, k, "key_a", Rev(3), [1; NONCE_BYTES], b"{}");
        let (rev, plain) = open(&ring, k, "key_a", &sealed).unwrap();
        assert_eq!((rev, plain.expose()), (Rev(3), &b"{}"[..]));
        assert!(open(&ring, k, "key_b", &sealed).is_err());
        assert!(open(&ring, Kind("api"), "key_a", &sealed).is_err());
        let mut bumped = sealed.clone();
        bumped[12] ^= 1; // the revision's last byte
        assert!(open(&ring, k, "key_a", &bumped).is_err());
        let mut flipped = sealed;
        let last = flipped.len() - 1;
        flipped[last] ^= 0x80;
        assert!(open(&ring, k, "key_a", &flipped).is_err());
    }
}
