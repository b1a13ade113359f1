//! A bounded cache of what the store says, whose entries never outlive a change to it: the
//! verification cache, API policies, and resolved role bindings all use it.

use std::sync::atomic::{AtomicU64, Ordering};

/// A bounded cache in front of the store whose entries never outlive a change: a writer calls
/// [`EpochCache::invalidate`] after its commit, and a reader that looked the value up before
/// that commit cannot put the old copy back ([`EpochCache::insert`] with the epoch it read
/// first).
pub struct EpochCache<K, V> {
    entries: quick_cache::sync::Cache<K, V>,
    /// Bumped by every invalidation.
    epoch: AtomicU64,
}

impl<K: Eq + std::hash::Hash + Clone, V: Clone> EpochCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.entries.get(k)
    }

    /// Read before looking the value up in the store; hand it to [`EpochCache::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Caches a value read from the store, unless something changed since `epoch` was read
    /// (the value may then be the copy from before the change).
    pub fn insert(&self, epoch: u64, k: K, v: V) {
        if self.epoch() != epoch {
            return;
        }
        self.entries.insert(k.clone(), v);
        // An invalidation that bumped the epoch between the check and the insert may have run
        // its removal before the insert: take the entry back out. One that bumps it after this
        // check removes the entry itself.
        if self.epoch() != epoch {
            self.entries.remove(&k);
        }
    }

    /// Forgets a changed value. Call after the change is committed and before it is
    /// acknowledged.
    pub fn invalidate(&self, k: &K) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(k);
    }

    /// Forgets everything (a change whose reach is not one key: a role or a binding).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_everything_keeps_a_stale_read_out() {
        let cache: EpochCache<u8, u32> = EpochCache::new(8);
        let before = cache.epoch();
        cache.insert(before, 1, 10);
        assert_eq!(cache.get(&1), Some(10));
        // A resolution reads the store (wide permissions), then a binding change forgets
        // everything, then the resolution tries to cache what it read.
        let stale = cache.epoch();
        cache.invalidate_all();
        assert_eq!(cache.get(&1), None);
        cache.insert(stale, 2, 99);
        assert_eq!(cache.get(&2), None, "a stale answer was cached");
        cache.insert(cache.epoch(), 2, 5);
        assert_eq!(cache.get(&2), Some(5));
    }
}
