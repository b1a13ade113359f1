//! The key layout of the one sled tree, and the one range scan over it.
//!
//! ```text
//! m/format          u32 BE: the data format version (see migrate.rs)
//! m/keyring         the keyring, every key wrapped by the master key (see keyring.rs)
//! m/log/<log>       the head of a hash-chained log: its last sequence number and hash
//! m/<name>          other plaintext metadata (the seal configuration, a staged keyring)
//! r/<kind>/<id>     a sealed record (see envelope.rs); log entries are records too
//! i/<index>/<key>   an index entry: the id it points to
//! ```

use std::ops::Bound;

use super::io;
use crate::store::{IndexName, Kind, StoreError};

/// `r/<kind>/<id>`: a sealed record.
pub(super) fn record_key(kind: Kind, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + kind.0.len() + id.len());
    k.extend_from_slice(b"r/");
    k.extend_from_slice(kind.0.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

/// `m/log/<log>`: a log's head.
pub(super) fn head_key(log: Kind) -> Vec<u8> {
    let mut k = b"m/log/".to_vec();
    k.extend_from_slice(log.0.as_bytes());
    k
}

/// `i/<index>/<key>`: an index entry.
pub(super) fn index_key(index: IndexName, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + index.0.len() + key.len());
    k.extend_from_slice(b"i/");
    k.extend_from_slice(index.0.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key);
    k
}

/// `m/<name>`: plaintext metadata.
pub(super) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = b"m/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The one range scan: the entries whose keys start with `prefix`, in key order, strictly after
/// `prefix + after` when given, at most `limit` of them, each turned into a `T` by
/// `each(key without the prefix, value)`.
pub(super) fn range<T>(
    db: &sled::Db,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let start = match after {
        Some(a) => Bound::Excluded([prefix, a].concat()),
        None => Bound::Included(prefix.to_vec()),
    };
    let mut out = Vec::new();
    for item in db.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
        let (k, v) = item.map_err(io)?;
        if !k.starts_with(prefix) || out.len() >= limit {
            break;
        }
        out.push(each(&k[prefix.len()..], &v)?);
    }
    Ok(out)
}
