//! Tidying: records of keys that stopped working (revoked, expired, or past their rotation
//! grace) longer ago than the retention period are removed, with their index entries and
//! usage counters, so the store stays bounded by what is live.

use super::{
    IDX_KEY_ENDS, IDX_KEY_HASH, IDX_KEYS_BY_API, Keys, KeysError,
    lifecycle::{end_position, key_position, root_position},
    model::{Key, UsageRecord},
};
use crate::{
    clock::Timestamp,
    store::{self, Batch, Expect, Record},
};

/// Records removed per batch.
const BATCH: usize = 500;

impl Keys {
    /// Removes keys whose end is before `now - retention_secs`. Returns how many.
    pub async fn tidy(&self, now: Timestamp, retention_secs: u64) -> Result<usize, KeysError> {
        let retention_ms = i64::try_from(retention_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let cutoff = Timestamp::from_unix_millis(now.unix_millis().saturating_sub(retention_ms));
        let stop = super::ordered(cutoff, "");
        let mut removed = 0;
        loop {
            let due = store::due(&*self.store, IDX_KEY_ENDS, stop.as_bytes(), BATCH).await?;
            if due.is_empty() {
                break;
            }
            let mut b = Batch::new();
            let mut dead = Vec::new();
            for e in &due {
                b.index_delete(IDX_KEY_ENDS, &e.key);
                let Some((rev, k)) = store::record::get::<Key>(&*self.store, &e.id).await? else {
                    continue;
                };
                // The end may have moved (a PATCH of expires_at) since the entry was read.
                if end_position(&k).is_some_and(|p| p.as_bytes() != e.key.as_slice()) {
                    continue;
                }
                b.delete(Key::KIND, k.id.as_str(), Expect::Rev(rev));
                // A chain's counters go with its last key (the one nothing replaced).
                if k.superseded_by.is_none() {
                    b.delete(UsageRecord::KIND, k.budget_id().as_str(), Expect::Any);
                }
                b.index_delete(IDX_KEY_HASH, &k.lookup);
                b.index_delete(IDX_KEYS_BY_API, key_position(&k).as_bytes());
                if k.root {
                    b.index_delete(super::IDX_ROOT_KEYS, root_position(&k).as_bytes());
                }
                dead.push(k);
            }
            let committed = self.store.commit(b).await;
            // Even a failed flush may have applied the deletions: drop the cached copies.
            dead.iter().for_each(|k| self.changed(k));
            match committed {
                Ok(()) => {}
                // A concurrent change to one of these keys: try again on the next run.
                Err(store::StoreError::Conflict) => break,
                Err(e) => return Err(e.into()),
            }
            for k in dead.iter().filter(|k| k.superseded_by.is_none()) {
                self.usage.forget(k.budget_id());
            }
            removed += dead.len();
        }
        if removed > 0 {
            tracing::info!(removed, "tidied dead key records");
        }
        Ok(removed)
    }
}

/// How many stored keys are live and how many have ended, from the indexes alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCounts {
    pub active: u64,
    pub ended: u64,
}

impl Keys {
    /// Counts keys by state without opening records (for metrics).
    pub async fn count_states(&self, now: Timestamp) -> Result<KeyCounts, KeysError> {
        let total = count(&*self.store, super::IDX_KEYS_BY_API, None).await?;
        let stop = super::ordered(now, "");
        let ended = count(&*self.store, IDX_KEY_ENDS, Some(stop.as_bytes())).await?;
        Ok(KeyCounts {
            active: total.saturating_sub(ended),
            ended,
        })
    }
}

/// Entries of an index, all of them or those with keys below `below`.
pub(crate) async fn count(
    store: &dyn store::Store,
    index: store::IndexName,
    below: Option<&[u8]>,
) -> Result<u64, store::StoreError> {
    let mut n = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(index, b"", after.as_deref(), 4096).await?;
        let Some(last) = page.last() else {
            return Ok(n);
        };
        after = Some(last.key.clone());
        for e in &page {
            if below.is_some_and(|b| e.key.as_slice() >= b) {
                return Ok(n);
            }
            n += 1;
        }
    }
}
