//! The verification cache: a bounded in-memory index of key records in front of the store,
//! keyed by the presented key's blind index, so the hot path does no B-tree look-up, no
//! decryption and no parsing.
//!
//! The store stays the durable copy. Every change to a key record (update, rotate, revoke, tidy)
//! invalidates its entry after the commit and before the change is acknowledged, and a global
//! epoch keeps a verify that read the record *before* such a change from putting the stale copy
//! back afterwards: a revoked key never verifies from the cache.
//!
//! Entries are evicted by quick_cache's S3-FIFO policy; an evicted (or invalidated) entry's
//! hash and blind index are zeroized when its last reader lets go of it.

use std::sync::Arc;

use zeroize::Zeroize;

use super::model::Key;
use crate::ids::ApiId;

/// A cached key record.
pub struct Cached(Key);

impl Cached {
    pub fn key(&self) -> &Key {
        &self.0
    }
}

impl Drop for Cached {
    fn drop(&mut self) {
        self.0.hash.zeroize();
        self.0.lookup.zeroize();
    }
}

pub use crate::cache::EpochCache;

/// Key records by blind index.
pub type VerifyCache = EpochCache<[u8; 32], Arc<Cached>>;

impl VerifyCache {
    /// Caches a key record read from the store (see [`EpochCache::insert`]); returns it for
    /// the answer at hand either way.
    pub fn insert_key(&self, epoch: u64, key: Key) -> Arc<Cached> {
        let blind = key.lookup;
        let entry = Arc::new(Cached(key));
        self.insert(epoch, blind, entry.clone());
        entry
    }
}

/// APIs' rotation policies (`max_key_age_seconds`) for verify.
pub type Policies = EpochCache<ApiId, Option<u64>>;

/// How many APIs' policies are held.
pub const POLICY_CAPACITY: usize = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    fn key(lookup: u8) -> Key {
        let mut k = crate::keys::model::sample_key(Timestamp::from_unix(1_000_000));
        k.hash = [9; 32];
        k.lookup = [lookup; 32];
        k
    }

    #[test]
    fn a_change_after_the_read_keeps_the_stale_copy_out() {
        let cache = VerifyCache::new(16);
        let e = cache.epoch();
        cache.insert_key(e, key(1));
        assert!(cache.get(&[1; 32]).is_some());

        // A verify reads the record, then a revoke commits and invalidates, then the verify
        // tries to cache what it read.
        let before = cache.epoch();
        cache.invalidate(&[1; 32]);
        assert!(cache.get(&[1; 32]).is_none());
        let stale = cache.insert_key(before, key(1));
        assert!(cache.get(&[1; 32]).is_none());
        // The caller still gets its record for this one answer.
        assert_eq!(stale.key().lookup, [1; 32]);

        // A read after the change is cached.
        cache.insert_key(cache.epoch(), key(1));
        assert!(cache.get(&[1; 32]).is_some());
    }

    #[test]
    fn it_stays_bounded() {
        let cache = VerifyCache::new(64);
        for i in 0..=255u8 {
            cache.insert_key(cache.epoch(), key(i));
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(!cache.is_empty());
    }
}
