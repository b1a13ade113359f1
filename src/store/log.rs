//! Hash-chained, append-only logs (the audit log is one).
//!
//! Entry `n` (from 1) is stored as a sealed record of the log's kind with id `n` written in 20
//! digits, whose plaintext is
//!
//! ```text
//! seq: u64 BE || prev_hash: 32 bytes || hash: 32 bytes || body
//! hash = SHA-256("tessera-log-v1" || prev_hash || seq as u64 BE || body)
//! ```
//!
//! with `prev_hash` of entry 1 all zeros. The hash covers the plaintext body, so re-sealing an
//! entry under a new data key does not change it. The head (last seq and hash) is kept
//! beside the entries and updated in the same transaction.

use ring::digest;

use super::StoreError;

pub const HASH_LEN: usize = 32;
const DOMAIN: &[u8] = b"tessera-log-v1";

/// The last entry of a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; HASH_LEN],
}

/// One entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub prev_hash: [u8; HASH_LEN],
    pub hash: [u8; HASH_LEN],
    pub body: Vec<u8>,
}

/// One entry as read: the seq its position says, and what opening it gave.
#[derive(Debug)]
pub struct Read {
    pub position: u64,
    pub entry: Result<Entry, StoreError>,
}

pub fn chain_hash(prev: &[u8; HASH_LEN], seq: u64, body: &[u8]) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(body);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub fn entry_id(seq: u64) -> String {
    format!("{seq:020}")
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 2 * HASH_LEN + self.body.len());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.prev_hash);
        v.extend_from_slice(&self.hash);
        v.extend_from_slice(&self.body);
        v
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 8 + 2 * HASH_LEN {
            return None;
        }
        let seq = u64::from_be_bytes(b[..8].try_into().ok()?);
        let prev_hash = b[8..8 + HASH_LEN].try_into().ok()?;
        let hash = b[8 + HASH_LEN..8 + 2 * HASH_LEN].try_into().ok()?;
        Some(Self {
            seq,
            prev_hash,
            hash,
            body: b[8 + 2 * HASH_LEN..].to_vec(),
        })
    }
}

impl Head {
    pub fn encode(&self) -> [u8; 8 + HASH_LEN] {
        let mut v = [0u8; 8 + HASH_LEN];
        v[..8].copy_from_slice(&self.seq.to_be_bytes());
        v[8..].copy_from_slice(&self.hash);
        v
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 8 + HASH_LEN {
            return None;
        }
        Some(Self {
            seq: u64::from_be_bytes(b[..8].try_into().ok()?),
            hash: b[8..].try_into().ok()?,
        })
    }
}
