//! Usage counters on a shared database, exact across nodes.
//!
//! A key with a quota or a rate limit is spent in the database: one [`Store::update`] per
//! verification reads, changes and writes its counters under the record's lock, so N
//! verifications of a key with `remaining = k` over any number of nodes give exactly
//! `min(N, k)` VALID answers, and a rate limit of `l` per window admits exactly `l`. These
//! updates do not wait for the database's WAL flush (the documented exception: a crash of
//! the *database* may re-grant the last moments of use; a crash of a node loses nothing).
//!
//! A key with neither never touches the database on a cache hit: its statistics (answer
//! counts, `last_used_at`) are counted here and merged into the stored counters (added, not
//! overwritten, so every node's count survives), up to [`super::STATS_PER_FLUSH`] keys per
//! periodic flush like the embedded engine's (all of them at shutdown). Which keys have no
//! quota is learnt from the stored counters once; another node setting one is in the change
//! sequence, and [`Shared::forget`] drops what this node knew.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use super::{Limits, Spend, apply_refill, count, spend_one};
use crate::{
    clock::Timestamp,
    ids::KeyId,
    keys::model::UsageRecord,
    store::{self, Record, Store, StoreError},
    sync::Locked,
};

/// Keys merged per transaction.
const MERGE_CHUNK: usize = 500;

/// What this node counted of an unlimited key since the last flush.
#[derive(Default)]
struct Delta {
    valid: u64,
    counts: BTreeMap<String, u64>,
    last_used: Option<Timestamp>,
}

#[derive(Default)]
struct Table {
    /// Keys whose stored counters have no quota.
    unlimited: HashSet<KeyId>,
    deltas: HashMap<KeyId, Delta>,
}

pub(super) struct Shared {
    store: Arc<dyn Store>,
    table: Mutex<Table>,
}

fn decode(id: &KeyId, plain: Option<&[u8]>) -> Result<UsageRecord, StoreError> {
    match plain {
        Some(p) => serde_json::from_slice(p).map_err(|_| StoreError::Corrupt {
            kind: UsageRecord::KIND.0,
            id: id.to_string(),
        }),
        None => Ok(UsageRecord::default()),
    }
}

fn encode(e: &UsageRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(e).map_err(|_| StoreError::Corrupt {
        kind: UsageRecord::KIND.0,
        id: String::new(),
    })
}

impl Shared {
    pub(super) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            table: Mutex::new(Table::default()),
        }
    }

    /// Whether the key's budget has no quota: what its record says, else its stored
    /// counters (read once, then known).
    async fn unlimited(&self, id: &KeyId, limits: &Limits) -> Result<bool, StoreError> {
        if let Some(quota) = limits.quota {
            return Ok(!quota);
        }
        if self.table.read_locked().unlimited.contains(id) {
            return Ok(true);
        }
        let rec = store::record::get::<UsageRecord>(&*self.store, id.as_str())
            .await?
            .map(|(_, r)| r)
            .unwrap_or_default();
        let unlimited = rec.remaining.is_none();
        if unlimited {
            let mut t = self.table.write_locked();
            // Bounded like the embedded engine's table: past it, learnt again.
            if t.unlimited.len() >= super::MAX_ENTRIES {
                t.unlimited.clear();
            }
            t.unlimited.insert(id.clone());
        }
        Ok(unlimited)
    }

    fn count_here(&self, id: &KeyId, code: &str, used: Option<Timestamp>) {
        let mut t = self.table.write_locked();
        let d = t.deltas.entry(id.clone()).or_default();
        *d.counts.entry(code.to_owned()).or_default() += 1;
        if let Some(at) = used {
            d.valid += 1;
            d.last_used = d.last_used.max(Some(at));
        }
    }

    /// Changes the stored counters with `f` as one atomic step; returns what `f` returned.
    async fn update<T: Send + 'static>(
        &self,
        id: &KeyId,
        durable: bool,
        f: impl FnMut(&mut UsageRecord) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let out = Arc::new(Mutex::new(None));
        let (slot, key, mut f) = (out.clone(), id.clone(), f);
        let change: store::Change = Box::new(move |plain| {
            let mut e = decode(&key, plain)?;
            let r = f(&mut e);
            *slot.write_locked() = Some(r);
            encode(&e)
        });
        self.store
            .update(UsageRecord::KIND, id.as_str(), durable, change)
            .await?;
        let r = out.write_locked().take();
        r.ok_or(StoreError::Unavailable(
            "the counter update did not run".into(),
        ))
    }

    pub(super) async fn spend(
        &self,
        id: &KeyId,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        if limits.ratelimit.is_none() && self.unlimited(id, limits).await? {
            self.count_here(id, "VALID", Some(now));
            return Ok(Spend::Ok {
                remaining: None,
                ratelimit: None,
            });
        }
        let limits = *limits;
        self.update(id, false, move |e| spend_one(e, &limits, now).0)
            .await
    }

    pub(super) async fn note(
        &self,
        id: &KeyId,
        code: &'static str,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        if self.unlimited(id, limits).await? {
            self.count_here(id, code, None);
            return Ok(None);
        }
        let limits = *limits;
        self.update(id, false, move |e| {
            apply_refill(e, &limits, now);
            count(e, code);
            e.remaining
        })
        .await
    }

    /// The stored counters with what this node has not merged yet (a due refill shown).
    pub(super) async fn current(
        &self,
        id: &KeyId,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<UsageRecord, StoreError> {
        let mut e = store::record::get::<UsageRecord>(&*self.store, id.as_str())
            .await?
            .map(|(_, r)| r)
            .unwrap_or_default();
        apply_refill(&mut e, limits, now);
        if let Some(d) = self.table.read_locked().deltas.get(id) {
            add(&mut e, d);
        }
        Ok(e)
    }

    /// Sets the quota and/or restarts the refill period; durable, and in the change
    /// sequence (the other nodes forget that the key had none).
    pub(super) async fn set_quota(
        &self,
        id: &KeyId,
        remaining: Option<Option<u64>>,
        refill_from: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.update(id, true, move |e| {
            if let Some(r) = remaining {
                e.remaining = r;
            }
            if let Some(at) = refill_from {
                e.last_refill_at = Some(at);
            }
        })
        .await?;
        self.forget(id);
        Ok(())
    }

    /// Forgets what this node knew of a key's counters (another node changed them, or the
    /// key is gone); what it counted and has not merged is kept.
    pub(super) fn forget(&self, id: &KeyId) {
        self.table.write_locked().unlimited.remove(id);
    }

    /// Merges the counts of up to `budget` keys into the stored counters (more when the
    /// backlog would pass half of [`super::MAX_ENTRIES`]), a few hundred keys per
    /// transaction. What is not merged now is kept for the next flush.
    pub(super) async fn flush(&self, budget: usize) -> Result<(), StoreError> {
        let deltas: Vec<(KeyId, Delta)> = {
            let mut t = self.table.write_locked();
            let budget = budget.max(t.deltas.len().saturating_sub(super::MAX_ENTRIES / 2));
            if t.deltas.len() <= budget {
                std::mem::take(&mut t.deltas).into_iter().collect()
            } else {
                let ids: Vec<KeyId> = t.deltas.keys().take(budget).cloned().collect();
                ids.into_iter()
                    .filter_map(|id| t.deltas.remove(&id).map(|d| (id, d)))
                    .collect()
            }
        };
        let mut left = deltas.into_iter().peekable();
        while left.peek().is_some() {
            let chunk: Vec<(KeyId, Delta)> = left.by_ref().take(MERGE_CHUNK).collect();
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.as_str().to_owned()).collect();
            let merge: Arc<HashMap<String, Delta>> = Arc::new(
                chunk
                    .into_iter()
                    .map(|(id, d)| (id.as_str().to_owned(), d))
                    .collect(),
            );
            let m = merge.clone();
            let change: store::ChangeMany = Box::new(move |id, plain| {
                let key = KeyId::parse(id).map_err(|_| StoreError::Corrupt {
                    kind: UsageRecord::KIND.0,
                    id: id.to_owned(),
                })?;
                let mut e = decode(&key, plain)?;
                if let Some(d) = m.get(id) {
                    add(&mut e, d);
                }
                encode(&e)
            });
            if let Err(e) = self.store.update_many(UsageRecord::KIND, ids, change).await {
                let mut t = self.table.write_locked();
                let unmerged = Arc::try_unwrap(merge).unwrap_or_default();
                for (id, d) in unmerged
                    .into_iter()
                    .chain(left.map(|(id, d)| (id.as_str().to_owned(), d)))
                {
                    let Ok(id) = KeyId::parse(&id) else { continue };
                    let mine = t.deltas.entry(id).or_default();
                    mine.valid += d.valid;
                    for (code, n) in d.counts {
                        *mine.counts.entry(code).or_default() += n;
                    }
                    mine.last_used = mine.last_used.max(d.last_used);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        let t = self.table.read_locked();
        t.unlimited.len() + t.deltas.len()
    }
}

fn add(e: &mut UsageRecord, d: &Delta) {
    e.valid_count += d.valid;
    for (code, n) in &d.counts {
        *e.verify_counts.entry(code.clone()).or_default() += n;
    }
    e.last_used_at = e.last_used_at.max(d.last_used);
}
