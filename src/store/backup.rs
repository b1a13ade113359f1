//! The backup file: every raw entry of the store, still sealed, with a checksum.
//!
//! ```text
//! "TESSERA-BACKUP\n"
//! header length: u32 BE, header (JSON, written by the caller: never a key)
//! entries: (key length: u32 BE, key, value length: u32 BE, value)*, until the trailer
//! SHA-256 of everything before it: 32 bytes
//! ```
//!
//! A backup never contains the master key (it is not in the store), so it is useless
//! without it, and everything in it is as sealed as on disk.

use ring::digest;

use super::sled::RawEntry;

pub const MAGIC: &[u8] = b"TESSERA-BACKUP\n";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a Tessera backup")]
    NotABackup,
    #[error("the backup is corrupt or truncated (checksum mismatch)")]
    Checksum,
    #[error("the backup is malformed")]
    Malformed,
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

pub fn encode(header: &[u8], entries: &[RawEntry]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + size + 32);
    out.extend_from_slice(MAGIC);
    put(&mut out, header);
    for (k, v) in entries {
        put(&mut out, k);
        put(&mut out, v);
    }
    let sum = digest::digest(&digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
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

/// Checks the magic and the checksum, then splits the header and the entries.
pub fn decode(bytes: &[u8]) -> Result<(Vec<u8>, Vec<RawEntry>), BackupError> {
    if !bytes.starts_with(MAGIC) {
        return Err(BackupError::NotABackup);
    }
    if bytes.len() < MAGIC.len() + 4 + 32 {
        return Err(BackupError::Checksum);
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    // A checksum, not a secret: an ordinary comparison is right.
    if digest::digest(&digest::SHA256, body).as_ref() != sum {
        return Err(BackupError::Checksum);
    }
    let mut rest = &body[MAGIC.len()..];
    let header = take(&mut rest)?.to_vec();
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest)?.to_vec();
        let v = take(&mut rest)?.to_vec();
        entries.push((k, v));
    }
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let entries = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), vec![0; 300]),
        ];
        let bytes = encode(b"{}", &entries);
        let (h, e) = decode(&bytes).unwrap();
        assert_eq!((h.as_slice(), e), (&b"{}"[..], entries));
        for i in [MAGIC.len() + 2, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
        assert!(matches!(
            decode(&bytes[..bytes.len() - 5]),
            Err(BackupError::Checksum)
        ));
        assert!(matches!(decode(b"hello"), Err(BackupError::NotABackup)));
    }
}
