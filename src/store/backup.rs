//! The backup file: every raw entry of the store, still sealed, authenticated as a whole.
//!
//! ```text
//! "TESSERA-BACKUP-2\n"
//! header length: u32 BE, header (JSON, [`Header`]: never a key)
//! entries: (key length: u32 BE, key, value length: u32 BE, value)*, until the trailer
//! HMAC-SHA256 of everything before it: 32 bytes
//! ```
//!
//! The MAC key is derived from the pepper (`Pepper::backup_key`), which is in the backup only
//! wrapped by the master key: whoever lacks the master key can neither read a backup nor
//! change one without `tessera restore` refusing it. Dropping an index entry, a revocation or
//! a binding, or editing the header's list of revoked serials, breaks the MAC. A backup never
//! contains the master key, so it is useless without it, and everything in it is as sealed as
//! on disk.
//!
//! Version 1 backups (`TESSERA-BACKUP\n`, an unkeyed SHA-256 checksum) are refused: anyone
//! could recompute that checksum after editing one.

use ring::hmac;
use serde::{Deserialize, Serialize};

use super::RawEntry;
use crate::clock::Timestamp;

pub const MAGIC: &[u8] = b"TESSERA-BACKUP-2\n";
/// The first version's magic, recognised only to refuse it with a clear message.
const MAGIC_V1: &[u8] = b"TESSERA-BACKUP\n";
const TAG_LEN: usize = 32;

/// What a backup says about itself. Authenticated with the rest of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The backup format (2).
    pub version: u32,
    pub created_at: Timestamp,
    /// The store's data format version.
    pub data_format: u32,
    pub trust_domain: String,
    /// How many entries follow.
    pub entries: u64,
    /// The audit log's last sequence number when the backup was taken.
    pub audit_head_seq: u64,
    /// Certificates revoked when the backup was taken (to name revocations a restore loses).
    pub revoked_serials: Vec<String>,
}

pub const VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a Tessera backup")]
    NotABackup,
    #[error(
        "this is a version 1 backup, which is not authenticated: restore it with the Tessera \
         version that made it, then take a new backup"
    )]
    Unauthenticated,
    #[error("the backup is truncated or malformed")]
    Malformed,
    #[error(
        "the backup failed its authentication: it was changed, or it belongs to another master \
         key"
    )]
    Forged,
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Writes a backup, authenticated with `key`.
pub fn encode(header: &Header, entries: &[RawEntry], key: &hmac::Key) -> Vec<u8> {
    let header = serde_json::to_vec(header).unwrap_or_default();
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + size + TAG_LEN);
    out.extend_from_slice(MAGIC);
    put(&mut out, &header);
    for (k, v) in entries {
        put(&mut out, k);
        put(&mut out, v);
    }
    let tag = hmac::sign(key, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

fn take<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], BackupError> {
    if rest.len() < 4 {
        return Err(BackupError::Malformed);
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if rest.len() < 4 + len {
        return Err(BackupError::Malformed);
    }
    let (v, r) = rest[4..].split_at(len);
    *rest = r;
    Ok(v)
}

/// A backup whose structure was read but whose authenticity is not yet known: its entries
/// may be imported into an empty, locked directory only to find the keyring that unlocks the
/// MAC key, and must be discarded unless [`Unverified::verify`] succeeds.
#[derive(Debug)]
pub struct Unverified<'a> {
    body: &'a [u8],
    tag: &'a [u8],
    pub header: Header,
    pub entries: Vec<RawEntry>,
}

/// Reads a backup's structure (no key needed, nothing trusted yet).
pub fn parse(bytes: &[u8]) -> Result<Unverified<'_>, BackupError> {
    if !bytes.starts_with(MAGIC) {
        return Err(if bytes.starts_with(MAGIC_V1) {
            BackupError::Unauthenticated
        } else {
            BackupError::NotABackup
        });
    }
    if bytes.len() < MAGIC.len() + 4 + TAG_LEN {
        return Err(BackupError::Malformed);
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let mut rest = &body[MAGIC.len()..];
    let header: Header =
        serde_json::from_slice(take(&mut rest)?).map_err(|_| BackupError::Malformed)?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest)?.to_vec();
        let v = take(&mut rest)?.to_vec();
        entries.push((k, v));
    }
    if header.version != VERSION || header.entries != entries.len() as u64 {
        return Err(BackupError::Malformed);
    }
    Ok(Unverified {
        body,
        tag,
        header,
        entries,
    })
}

impl Unverified<'_> {
    /// Checks the MAC (in constant time) with the key of the keyring the backup holds.
    pub fn verify(&self, key: &hmac::Key) -> Result<(), BackupError> {
        hmac::verify(key, self.body, self.tag).map_err(|_| BackupError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n: u64) -> Header {
        Header {
            version: VERSION,
            created_at: Timestamp::from_unix(1_700_000_000),
            data_format: 1,
            trust_domain: "t.local".into(),
            entries: n,
            audit_head_seq: 7,
            revoked_serials: vec!["1a".into()],
        }
    }

    #[test]
    fn round_trip_and_every_change_is_caught() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        let entries = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), vec![0; 300]),
        ];
        let bytes = encode(&header(2), &entries, &key);
        let b = parse(&bytes).unwrap();
        b.verify(&key).unwrap();
        assert_eq!(
            (b.header.clone(), b.entries.clone()),
            (header(2), entries.clone())
        );
        for i in [MAGIC.len() + 2, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                parse(&bad).and_then(|b| b.verify(&key)).is_err(),
                "flip at {i}"
            );
        }
        // Another key (another master key, or a forger's) is refused.
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8; 32]);
        assert!(matches!(
            parse(&bytes).unwrap().verify(&other),
            Err(BackupError::Forged)
        ));
        // Dropping an entry and re-encoding without the key cannot pass.
        let forged = encode(&header(1), &entries[..1], &other);
        assert!(matches!(
            parse(&forged).unwrap().verify(&key),
            Err(BackupError::Forged)
        ));
        // Truncated anywhere: refused.
        for cut in [1, 5, TAG_LEN, bytes.len() / 2] {
            assert!(
                parse(&bytes[..bytes.len() - cut])
                    .and_then(|b| b.verify(&key))
                    .is_err(),
                "cut {cut}"
            );
        }
        assert!(matches!(parse(b"hello"), Err(BackupError::NotABackup)));
        assert!(matches!(
            parse(b"TESSERA-BACKUP\nrest"),
            Err(BackupError::Unauthenticated)
        ));
    }
}
