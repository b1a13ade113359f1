//! Usage counters: `remaining` quota, `last_used_at`, VALID counts.
//!
//! These are the one documented exception to "acknowledged means durable": they are exact in
//! memory (every decrement happens under a lock, so N concurrent verifies of a key with
//! `remaining = k` give exactly `min(N, k)` VALID answers) and persisted in batches at most
//! about a second behind. A crash can therefore re-grant at most ~1 s of usage. Verify never
//! waits for a disk flush. An explicit change of `remaining` (PATCH) is flushed before it is
//! acknowledged.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use super::model::UsageRecord;
use crate::{
    clock::Timestamp,
    ids::KeyId,
    store::{self, Batch, Expect, Store, StoreError},
};

/// Outcome of spending one use of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Allowed; the quota left afterwards (`None`: unlimited).
    Ok(Option<u64>),
    /// The quota is used up.
    Exhausted,
}

#[derive(Default)]
struct Table {
    entries: HashMap<KeyId, UsageRecord>,
    dirty: HashSet<KeyId>,
}

/// The in-memory counters and their persistence.
pub struct Usage {
    store: Arc<dyn Store>,
    table: Mutex<Table>,
    /// Serialises flushes, so a later snapshot is never overwritten by an earlier one.
    flushing: tokio::sync::Mutex<()>,
}

impl Usage {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            table: Mutex::new(Table::default()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave a counter half-updated (every
        // mutation is a single assignment), so a poisoned lock is still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure the key's counters are in memory.
    async fn load(&self, id: &KeyId) -> Result<(), StoreError> {
        if self.table().entries.contains_key(id) {
            return Ok(());
        }
        let rec = store::record::get::<UsageRecord>(&*self.store, id.as_str())
            .await?
            .map(|(_, r)| r)
            .unwrap_or_default();
        self.table().entries.entry(id.clone()).or_insert(rec);
        Ok(())
    }

    /// Spends one use (called only for an answer that is otherwise VALID).
    pub async fn spend(&self, id: &KeyId, now: Timestamp) -> Result<Spend, StoreError> {
        self.load(id).await?;
        let mut t = self.table();
        let Table { entries, dirty } = &mut *t;
        let Some(e) = entries.get_mut(id) else {
            return Ok(Spend::Exhausted);
        };
        let left = match e.remaining {
            Some(0) => {
                *e.verify_counts
                    .entry("USAGE_EXCEEDED".to_owned())
                    .or_default() += 1;
                dirty.insert(id.clone());
                return Ok(Spend::Exhausted);
            }
            Some(n) => {
                e.remaining = Some(n - 1);
                Some(n - 1)
            }
            None => None,
        };
        e.last_used_at = Some(now);
        e.valid_count += 1;
        *e.verify_counts.entry("VALID".to_owned()).or_default() += 1;
        dirty.insert(id.clone());
        Ok(Spend::Ok(left))
    }

    /// Counts an answer other than VALID about the key; returns its quota left.
    pub async fn note(&self, id: &KeyId, code: &'static str) -> Result<Option<u64>, StoreError> {
        self.load(id).await?;
        let mut t = self.table();
        let Table { entries, dirty } = &mut *t;
        let Some(e) = entries.get_mut(id) else {
            return Ok(None);
        };
        *e.verify_counts.entry(code.to_owned()).or_default() += 1;
        dirty.insert(id.clone());
        Ok(e.remaining)
    }

    /// The key's current counters.
    pub async fn snapshot(&self, id: &KeyId) -> Result<UsageRecord, StoreError> {
        self.load(id).await?;
        Ok(self.table().entries.get(id).cloned().unwrap_or_default())
    }

    /// Sets the quota (`None`: unlimited) and returns once it is durable.
    pub async fn set_remaining(
        &self,
        id: &KeyId,
        remaining: Option<u64>,
    ) -> Result<(), StoreError> {
        self.load(id).await?;
        {
            let mut t = self.table();
            if let Some(e) = t.entries.get_mut(id) {
                e.remaining = remaining;
            }
            t.dirty.insert(id.clone());
        }
        self.flush().await
    }

    /// Drops a key's counters from memory (its records were removed).
    pub fn forget(&self, id: &KeyId) {
        let mut t = self.table();
        t.entries.remove(id);
        t.dirty.remove(id);
    }

    /// Persists every changed counter in one durable batch.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let snapshot: Vec<(KeyId, UsageRecord)> = {
            let mut t = self.table();
            let dirty = std::mem::take(&mut t.dirty);
            dirty
                .into_iter()
                .filter_map(|id| t.entries.get(&id).cloned().map(|r| (id, r)))
                .collect()
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        let mut b = Batch::new();
        for (id, r) in &snapshot {
            b.put_record(id.as_str(), r, Expect::Any)?;
        }
        if let Err(e) = self.store.commit(b).await {
            // Put them back so the next flush tries again.
            let mut t = self.table();
            t.dirty.extend(snapshot.into_iter().map(|(id, _)| id));
            return Err(e);
        }
        Ok(())
    }
}
