//! The verification cache: a bounded in-memory index of key records in front of the store,
//! keyed by the presented key's blind index, so the hot path does no B-tree look-up, no
//! decryption and no parsing.
//!
//! sled stays the durable copy. Every change to a key record (update, rotate, revoke, tidy)
//! invalidates its entry after the commit and before the change is acknowledged, and a global
//! epoch keeps a verify that read the record *before* such a change from putting the stale copy
//! back afterwards: a revoked key never verifies from the cache.
//!
//! Entries are evicted by quick_cache's S3-FIFO policy; an evicted (or invalidated) entry's
//! hash and blind index are zeroized when its last reader lets go of it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use zeroize::Zeroize;

use super::model::Key;
use crate::ids::ApiId;

/// How many key records the cache holds by default (about 1 KiB each).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

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

pub struct VerifyCache {
    entries: quick_cache::sync::Cache<[u8; 32], Arc<Cached>>,
    /// Bumped by every invalidation.
    epoch: AtomicU64,
}

impl VerifyCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn get(&self, blind: &[u8; 32]) -> Option<Arc<Cached>> {
        self.entries.get(blind)
    }

    /// Read before looking the record up in the store; hand it to [`VerifyCache::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Caches a record read from the store, unless a key changed since `epoch` was read (the
    /// record may then be the copy from before the change).
    pub fn insert(&self, epoch: u64, key: Key) -> Arc<Cached> {
        let blind = key.lookup;
        let entry = Arc::new(Cached(key));
        if self.epoch() != epoch {
            return entry;
        }
        self.entries.insert(blind, entry.clone());
        // An invalidation that bumped the epoch between the check and the insert may have run
        // its removal before the insert: take the entry back out. One that bumps it after this
        // check removes the entry itself.
        if self.epoch() != epoch {
            self.entries.remove(&blind);
        }
        entry
    }

    /// Forgets a key whose record changed. Call after the change is committed and before it
    /// is acknowledged.
    pub fn invalidate(&self, blind: &[u8; 32]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(blind);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// APIs' rotation policies (`max_key_age_seconds`) for verify, with the same epoch rule as
/// the key records: an update forgets the entry after its commit, and a look-up that raced it
/// does not put the old value back.
#[derive(Default)]
pub struct Policies {
    entries: std::sync::RwLock<std::collections::HashMap<ApiId, Option<u64>>>,
    epoch: AtomicU64,
}

impl Policies {
    pub fn get(&self, api: &ApiId) -> Option<Option<u64>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(api)
            .copied()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn insert(&self, epoch: u64, api: ApiId, max_age: Option<u64>) {
        let mut m = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.epoch() == epoch {
            m.insert(api, max_age);
        }
    }

    pub fn forget(&self, api: &ApiId) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(api);
    }
}

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
        cache.insert(e, key(1));
        assert!(cache.get(&[1; 32]).is_some());

        // A verify reads the record, then a revoke commits and invalidates, then the verify
        // tries to cache what it read.
        let before = cache.epoch();
        cache.invalidate(&[1; 32]);
        assert!(cache.get(&[1; 32]).is_none());
        let stale = cache.insert(before, key(1));
        assert!(cache.get(&[1; 32]).is_none());
        // The caller still gets its record for this one answer.
        assert_eq!(stale.key().lookup, [1; 32]);

        // A read after the change is cached.
        cache.insert(cache.epoch(), key(1));
        assert!(cache.get(&[1; 32]).is_some());
    }

    #[test]
    fn it_stays_bounded() {
        let cache = VerifyCache::new(64);
        for i in 0..=255u8 {
            cache.insert(cache.epoch(), key(i));
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(!cache.is_empty());
    }
}
