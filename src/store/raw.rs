//! The raw layout: one ordered key/value space that every engine's data maps onto. The
//! embedded engine stores it as it is; the PostgreSQL engine keeps each prefix in a table of
//! its own and converts at the edges (backups, restores, `tessera migrate`), so a backup of
//! either engine restores into either.
//!
//! ```text
//! m/format          u32 BE: the data format version
//! m/keyring         the keyring, every key wrapped by the master key (see engine.rs)
//! m/log/<log>       the head of a hash-chained log: its last sequence number and hash
//! m/<name>          other plaintext metadata (the seal configuration, a staged keyring)
//! r/<kind>/<id>     a sealed record (see envelope.rs); log entries are records too
//! i/<index>/<key>   an index entry: the id it points to
//! ```

use super::{IndexName, Kind};

/// `r/<kind>/<id>`: a sealed record.
pub fn record_key(kind: Kind, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + kind.0.len() + id.len());
    k.extend_from_slice(b"r/");
    k.extend_from_slice(kind.0.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

/// `m/log/<log>`: a log's head.
pub fn head_key(log: Kind) -> Vec<u8> {
    let mut k = b"m/log/".to_vec();
    k.extend_from_slice(log.0.as_bytes());
    k
}

/// `i/<index>/<key>`: an index entry.
pub fn index_key(index: IndexName, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + index.0.len() + key.len());
    k.extend_from_slice(b"i/");
    k.extend_from_slice(index.0.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key);
    k
}

/// `m/<name>`: plaintext metadata.
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = b"m/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// One raw key taken apart.
#[derive(Debug, PartialEq, Eq)]
pub enum RawKey<'a> {
    Meta(&'a str),
    Record { kind: &'a str, id: &'a str },
    Index { index: &'a str, key: &'a [u8] },
}

/// `<name>/<rest>` split at the first slash.
fn split(rest: &[u8]) -> Option<(&str, &[u8])> {
    let slash = rest.iter().position(|b| *b == b'/')?;
    Some((
        std::str::from_utf8(&rest[..slash]).ok()?,
        &rest[slash + 1..],
    ))
}

/// Takes a raw key apart; `None` for a key outside the layout.
pub fn parse(key: &[u8]) -> Option<RawKey<'_>> {
    let (tag, rest) = (key.get(..2)?, key.get(2..)?);
    match tag {
        b"m/" => Some(RawKey::Meta(std::str::from_utf8(rest).ok()?)),
        b"r/" => {
            let (kind, id) = split(rest)?;
            Some(RawKey::Record {
                kind,
                id: std::str::from_utf8(id).ok()?,
            })
        }
        b"i/" => {
            let (index, key) = split(rest)?;
            Some(RawKey::Index { index, key })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            parse(&meta_key("log/audit")),
            Some(RawKey::Meta("log/audit"))
        );
        assert_eq!(head_key(Kind("audit")), meta_key("log/audit"));
        assert_eq!(
            parse(&record_key(Kind("key"), "k_1/2")),
            Some(RawKey::Record {
                kind: "key",
                id: "k_1/2"
            })
        );
        assert_eq!(
            parse(&index_key(IndexName("by"), b"a/\xff")),
            Some(RawKey::Index {
                index: "by",
                key: b"a/\xff"
            })
        );
        assert_eq!(parse(b"x/1"), None);
        assert_eq!(parse(b"r/nokind"), None);
    }
}
