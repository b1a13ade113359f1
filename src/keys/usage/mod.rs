//! Usage counters: `remaining` quota, `last_used_at`, VALID counts.
//!
//! These are the one documented exception to "acknowledged means durable": they are exact in
//! memory (every decrement happens under a lock, so N concurrent verifies of a key with
//! `remaining = k` give exactly `min(N, k)` VALID answers) and persisted in batches. A change
//! to a quota is at most about a second behind, so a crash can re-grant at most ~1 s of usage;
//! statistics alone (`last_used_at`, answer counts, the rate-limit window) are written at most
//! [`STATS_PER_FLUSH`] keys per flush, so a verifier seeing a million different keys does not
//! turn each verify into a disk write (they may lag further behind, and are all written at a
//! graceful shutdown). Writes go in batches of at most [`CHUNK`] records. Verify never waits
//! for a disk flush. An explicit change of `remaining` (PATCH) is flushed before it is
//! acknowledged.
//!
//! The table is bounded: past its bound (`server.usage_cache_keys`, [`MAX_ENTRIES`] by
//! default) keys, counters already on disk are dropped from memory and read back on the key's
//! next use.

mod shared;

use crate::sync::Locked;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use serde::Serialize;

use super::model::{Key, RateLimit, Refill, UsageRecord};
use crate::{
    clock::Timestamp,
    ids::KeyId,
    store::{self, Batch, Expect, Store, StoreError},
};

/// What governs a key's use, from its record.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub ratelimit: Option<RateLimit>,
    pub refill: Option<Refill>,
    /// When the key was created (the first refill period starts then).
    pub since: Timestamp,
    /// Whether the budget has a quota, when the key record can say ([`Key::has_quota`]).
    pub quota: Option<bool>,
}

impl Limits {
    pub fn of(key: &Key) -> Self {
        Self {
            ratelimit: key.ratelimit,
            refill: key.refill,
            since: key.budget_since.unwrap_or(key.created_at),
            quota: key.has_quota(),
        }
    }
}

/// A rate limit's state as verify reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RateLimitState {
    pub limit: u32,
    pub remaining: u32,
    /// When the current window ends, unix milliseconds.
    pub reset: i64,
}

/// Outcome of spending one use of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Allowed; the quota left afterwards (`None`: unlimited).
    Ok {
        remaining: Option<u64>,
        ratelimit: Option<RateLimitState>,
    },
    /// The key's rate limit is reached for this window.
    RateLimited(RateLimitState),
    /// The quota is used up.
    Exhausted { ratelimit: Option<RateLimitState> },
}

/// Ids taken for a flush and not yet written: marked dirty again when dropped.
struct Unwritten<'a> {
    usage: &'a Usage,
    ids: Vec<KeyId>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut t = self.usage.table();
            t.dirty.extend(self.ids.drain(..));
        }
    }
}

/// Counts one answer with `code` (no allocation once the code has been seen).
fn count(e: &mut UsageRecord, code: &str) {
    match e.verify_counts.get_mut(code) {
        Some(n) => *n += 1,
        None => {
            e.verify_counts.insert(code.to_owned(), 1);
        }
    }
}

/// Marks a key's counters for the next flush (no allocation if already marked).
fn mark(dirty: &mut HashSet<KeyId>, id: &KeyId) {
    if !dirty.contains(id) {
        dirty.insert(id.clone());
    }
}

/// Resets `remaining` to the refill amount for every whole interval elapsed.
fn apply_refill(e: &mut UsageRecord, limits: &Limits, now: Timestamp) -> bool {
    let (Some(refill), Some(_)) = (limits.refill, e.remaining) else {
        return false;
    };
    let base = e.last_refill_at.unwrap_or(limits.since);
    let interval = i64::try_from(refill.interval_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let elapsed = now.unix_millis() - base.unix_millis();
    if elapsed < interval {
        return false;
    }
    let periods = elapsed / interval;
    e.remaining = Some(refill.amount);
    e.last_refill_at = Some(Timestamp::from_unix_millis(
        base.unix_millis()
            .saturating_add(periods.saturating_mul(interval)),
    ));
    true
}

/// Takes one request from the key's fixed rate-limit window, if it has a limit.
fn take_rate(
    e: &mut UsageRecord,
    limits: &Limits,
    now: Timestamp,
) -> Result<Option<RateLimitState>, RateLimitState> {
    let Some(rl) = limits.ratelimit else {
        return Ok(None);
    };
    let window = i64::from(rl.window_seconds) * 1000;
    let now = now.unix_millis();
    let start = now - now.rem_euclid(window);
    let count = match e.window {
        Some((s, c)) if s == start => c,
        _ => 0,
    };
    let reset = start + window;
    if count >= rl.limit {
        e.window = Some((start, count));
        return Err(RateLimitState {
            limit: rl.limit,
            remaining: 0,
            reset,
        });
    }
    e.window = Some((start, count + 1));
    Ok(Some(RateLimitState {
        limit: rl.limit,
        remaining: rl.limit - count - 1,
        reset,
    }))
}

/// Spends one use of the counters `e`: the rate limit first (RATE_LIMITED outranks
/// USAGE_EXCEEDED), then the quota, refilled when due; the answer is counted. Returns the
/// outcome and whether the quota changed (statistics always do).
fn spend_one(e: &mut UsageRecord, limits: &Limits, now: Timestamp) -> (Spend, bool) {
    let mut quota_changed = apply_refill(e, limits, now);
    let ratelimit = match take_rate(e, limits, now) {
        Ok(r) => r,
        Err(state) => {
            count(e, "RATE_LIMITED");
            return (Spend::RateLimited(state), quota_changed);
        }
    };
    let remaining = match e.remaining {
        Some(0) => {
            count(e, "USAGE_EXCEEDED");
            return (Spend::Exhausted { ratelimit }, quota_changed);
        }
        Some(n) => {
            e.remaining = Some(n - 1);
            quota_changed = true;
            Some(n - 1)
        }
        None => None,
    };
    e.last_used_at = Some(now);
    e.valid_count += 1;
    count(e, "VALID");
    (
        Spend::Ok {
            remaining,
            ratelimit,
        },
        quota_changed,
    )
}

/// Statistics-only changes written per periodic flush, at most.
pub const STATS_PER_FLUSH: usize = 2000;
/// Records per durable batch.
pub const CHUNK: usize = 2000;
/// Keys whose counters are kept in memory, at most (counters not yet written stay).
pub const MAX_ENTRIES: usize = 1 << 18;

#[derive(Default)]
struct Table {
    entries: HashMap<KeyId, UsageRecord>,
    /// Keys whose quota changed: written by the next flush.
    dirty: HashSet<KeyId>,
    /// Keys whose statistics alone changed: written by the next full flush.
    stats: HashSet<KeyId>,
    /// How many trims have run: a look-up that spans one reads again.
    trims: u64,
}

/// The in-memory counters and their persistence; on a shared database, the counters in the
/// database (see shared.rs).
pub struct Usage {
    store: Arc<dyn Store>,
    table: Mutex<Table>,
    /// Serialises flushes, so a later snapshot is never overwritten by an earlier one.
    flushing: tokio::sync::Mutex<()>,
    /// Set when other processes write the store too: the counters live in the database.
    shared: Option<shared::Shared>,
    /// How many keys' counters the table holds before trimming.
    max_entries: usize,
}

impl Usage {
    /// `max_entries`: how many keys' counters stay in memory (at least 1).
    pub fn new(store: Arc<dyn Store>, max_entries: usize) -> Self {
        Self {
            shared: store.shared().then(|| shared::Shared::new(store.clone())),
            max_entries: max_entries.max(1),
            store,
            table: Mutex::new(Table::default()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave a counter half-updated (every
        // mutation is a single assignment), so a poisoned lock is still consistent.
        self.table.write_locked()
    }

    /// The table, locked, with the key's counters in it (read from the store if need be).
    /// Returned locked so a trim cannot drop them before the caller uses them.
    async fn loaded(&self, id: &KeyId) -> Result<std::sync::MutexGuard<'_, Table>, StoreError> {
        loop {
            let trims = {
                let t = self.table();
                if t.entries.contains_key(id) {
                    return Ok(t);
                }
                t.trims
            };
            let rec = store::record::get::<UsageRecord>(&*self.store, id.as_str())
                .await?
                .map(|(_, r)| r)
                .unwrap_or_default();
            let mut t = self.table();
            // A trim while reading may have dropped newer counters of this key after writing
            // them: what was read may be older than the disk. Read again.
            if t.trims != trims && !t.entries.contains_key(id) {
                continue;
            }
            t.entries.entry(id.clone()).or_insert(rec);
            return Ok(t);
        }
    }

    /// Spends one use (called only for an answer that is otherwise VALID): the rate limit
    /// first (RATE_LIMITED outranks USAGE_EXCEEDED), then the quota, refilled when due.
    pub async fn spend(
        &self,
        id: &KeyId,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        if let Some(shared) = &self.shared {
            return shared.spend(id, limits, now).await;
        }
        let mut t = self.loaded(id).await?;
        let Table {
            entries,
            dirty,
            stats,
            ..
        } = &mut *t;
        let Some(e) = entries.get_mut(id) else {
            return Ok(Spend::Exhausted { ratelimit: None });
        };
        let (spend, quota_changed) = spend_one(e, limits, now);
        if quota_changed {
            mark(dirty, id);
        }
        mark(stats, id);
        Ok(spend)
    }

    /// Counts an answer other than VALID about the key; returns its quota left.
    pub async fn note(
        &self,
        id: &KeyId,
        code: &'static str,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(shared) = &self.shared {
            return shared.note(id, code, limits, now).await;
        }
        let mut t = self.loaded(id).await?;
        let Table {
            entries,
            dirty,
            stats,
            ..
        } = &mut *t;
        let Some(e) = entries.get_mut(id) else {
            return Ok(None);
        };
        if apply_refill(e, limits, now) {
            mark(dirty, id);
        }
        count(e, code);
        mark(stats, id);
        Ok(e.remaining)
    }

    /// The key's counters now (a due refill applied).
    /// The counters are the key's rotation chain's ([`Key::budget_id`]).
    pub async fn current(&self, key: &Key, now: Timestamp) -> Result<UsageRecord, StoreError> {
        let id = key.budget_id();
        if let Some(shared) = &self.shared {
            return shared.current(id, &Limits::of(key), now).await;
        }
        let mut t = self.loaded(id).await?;
        let Table { entries, dirty, .. } = &mut *t;
        let Some(e) = entries.get_mut(id) else {
            return Ok(UsageRecord::default());
        };
        if apply_refill(e, &Limits::of(key), now) {
            dirty.insert(id.clone());
        }
        Ok(e.clone())
    }

    /// Sets the quota (`Some(None)`: unlimited) and/or starts the refill period afresh at
    /// `refill_from` (a refill set now first refills one interval from now, not from the
    /// key's creation); returns once it is durable.
    pub async fn set_quota(
        &self,
        id: &KeyId,
        remaining: Option<Option<u64>>,
        refill_from: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        if let Some(shared) = &self.shared {
            return shared.set_quota(id, remaining, refill_from).await;
        }
        {
            let mut t = self.loaded(id).await?;
            if let Some(e) = t.entries.get_mut(id) {
                if let Some(r) = remaining {
                    e.remaining = r;
                }
                if let Some(at) = refill_from {
                    e.last_refill_at = Some(at);
                }
            }
            t.dirty.insert(id.clone());
        }
        // The quotas only: the statistics backlog keeps to its periodic budget.
        let _one_at_a_time = self.flushing.lock().await;
        self.flush_locked(0).await
    }

    /// Drops a key's counters from memory (its records were removed, or another node
    /// changed them).
    pub fn forget(&self, id: &KeyId) {
        if let Some(shared) = &self.shared {
            shared.forget(id);
        }
        let mut t = self.table();
        t.entries.remove(id);
        t.dirty.remove(id);
        t.stats.remove(id);
    }

    /// Persists every changed counter, statistics included (at shutdown or sealing).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        if let Some(shared) = &self.shared {
            return shared.flush(usize::MAX).await;
        }
        self.flush_locked(usize::MAX).await
    }

    /// The periodic flush: every changed quota, and statistics up to [`STATS_PER_FLUSH`] keys
    /// (more when the backlog would keep the table from its bound); then trims the table to
    /// its bound.
    pub async fn flush_quotas(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        if let Some(shared) = &self.shared {
            return shared.flush(STATS_PER_FLUSH).await;
        }
        let backlog = self.table().stats.len();
        let budget = STATS_PER_FLUSH.max(backlog.saturating_sub(self.max_entries / 2));
        self.flush_locked(budget).await?;
        // Under the flush lock: no flush has counters in flight that a trim could drop.
        self.trim(self.max_entries);
        Ok(())
    }

    /// Writes the changed quotas and up to `stats_budget` statistics. The caller holds
    /// `flushing`. Whatever is not written (an error, or this future dropped at shutdown) is
    /// marked dirty again.
    async fn flush_locked(&self, stats_budget: usize) -> Result<(), StoreError> {
        let snapshot: Vec<(KeyId, UsageRecord)> = {
            let mut t = self.table();
            let mut ids: Vec<KeyId> = std::mem::take(&mut t.dirty).into_iter().collect();
            for id in &ids {
                t.stats.remove(id);
            }
            if t.stats.len() <= stats_budget {
                ids.extend(std::mem::take(&mut t.stats));
            } else {
                let some: Vec<KeyId> = t.stats.iter().take(stats_budget).cloned().collect();
                for id in &some {
                    t.stats.remove(id);
                }
                ids.extend(some);
            }
            ids.into_iter()
                .filter_map(|id| t.entries.get(&id).cloned().map(|r| (id, r)))
                .collect()
        };
        let mut unwritten = Unwritten {
            usage: self,
            ids: snapshot.iter().map(|(id, _)| id.clone()).collect(),
        };
        for chunk in snapshot.chunks(CHUNK) {
            let mut b = Batch::new();
            for (id, r) in chunk {
                b.put_record(id.as_str(), r, Expect::Any)?;
            }
            self.store.commit(b).await?;
            unwritten.ids.drain(..chunk.len());
        }
        Ok(())
    }

    /// Drops counters that are already on disk until at most `max` keys are in memory.
    fn trim(&self, max: usize) {
        let mut t = self.table();
        let Table {
            entries,
            dirty,
            stats,
            trims,
        } = &mut *t;
        if entries.len() <= max {
            return;
        }
        *trims += 1;
        let mut excess = entries.len() - max * 3 / 4;
        entries.retain(|id, _| {
            if excess == 0 || dirty.contains(id) || stats.contains(id) {
                return true;
            }
            excess -= 1;
            false
        });
    }

    pub fn len(&self) -> usize {
        if let Some(shared) = &self.shared {
            return shared.len();
        }
        self.table().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::keyring::MasterKey, store::sled::SledStore};

    fn usage() -> (tempfile::TempDir, Arc<Usage>) {
        usage_with(MAX_ENTRIES)
    }

    fn usage_with(max_entries: usize) -> (tempfile::TempDir, Arc<Usage>) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = SledStore::open(
            dir.path(),
            &MasterKey::generate().unwrap(),
            &Default::default(),
        )
        .unwrap();
        (dir, Arc::new(Usage::new(Arc::new(store), max_entries)))
    }

    fn limits(rl: Option<(u32, u32)>, refill: Option<(u64, u64)>) -> Limits {
        Limits {
            ratelimit: rl.map(|(limit, window_seconds)| RateLimit {
                limit,
                window_seconds,
            }),
            refill: refill.map(|(amount, interval_seconds)| Refill {
                amount,
                interval_seconds,
            }),
            since: Timestamp::from_unix(1_000),
            quota: None,
        }
    }

    #[tokio::test]
    async fn rate_limit_windows_reset_on_time() {
        let (_d, u) = usage();
        let id = KeyId::generate().unwrap();
        let l = limits(Some((2, 10)), None);
        let t = Timestamp::from_unix(1_000);
        assert!(matches!(
            u.spend(&id, &l, t).await.unwrap(),
            Spend::Ok {
                ratelimit: Some(RateLimitState { remaining: 1, .. }),
                ..
            }
        ));
        assert!(matches!(
            u.spend(&id, &l, t).await.unwrap(),
            Spend::Ok {
                ratelimit: Some(RateLimitState { remaining: 0, .. }),
                ..
            }
        ));
        match u.spend(&id, &l, t.plus_secs(9)).await.unwrap() {
            Spend::RateLimited(s) => assert_eq!(s.reset, Timestamp::from_unix(1_010).unix_millis()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            u.spend(&id, &l, t.plus_secs(10)).await.unwrap(),
            Spend::Ok { .. }
        ));
    }

    #[tokio::test]
    async fn refills_restore_the_quota_each_interval() {
        let (_d, u) = usage();
        let id = KeyId::generate().unwrap();
        u.set_quota(&id, Some(Some(1)), None).await.unwrap();
        let l = limits(None, Some((3, 60)));
        let t = Timestamp::from_unix(1_000);
        assert!(matches!(
            u.spend(&id, &l, t).await.unwrap(),
            Spend::Ok {
                remaining: Some(0),
                ..
            }
        ));
        assert!(matches!(
            u.spend(&id, &l, t.plus_secs(59)).await.unwrap(),
            Spend::Exhausted { .. }
        ));
        // Two intervals later: refilled once to the amount, not twice.
        for left in [2, 1, 0] {
            assert_eq!(
                u.spend(&id, &l, t.plus_secs(130)).await.unwrap(),
                Spend::Ok {
                    remaining: Some(left),
                    ratelimit: None
                }
            );
        }
        assert!(matches!(
            u.spend(&id, &l, t.plus_secs(170)).await.unwrap(),
            Spend::Exhausted { .. }
        ));
        assert!(matches!(
            u.spend(&id, &l, t.plus_secs(180)).await.unwrap(),
            Spend::Ok { .. }
        ));
    }

    #[tokio::test]
    async fn the_table_is_bounded_and_trimmed_counters_come_back_from_disk() {
        let (_d, u) = usage();
        let l = limits(None, None);
        let t = Timestamp::from_unix(1_000);
        let ids: Vec<KeyId> = (0..20).map(|_| KeyId::generate().unwrap()).collect();
        let quota = &ids[0];
        u.set_quota(quota, Some(Some(5)), None).await.unwrap();
        for id in &ids {
            u.spend(id, &l, t).await.unwrap();
        }
        // Nothing unwritten is dropped.
        u.trim(4);
        assert_eq!(u.len(), 20);
        u.flush().await.unwrap();
        u.trim(8);
        assert!(u.len() <= 6, "{}", u.len());
        // A dropped key's counters are read back: its quota and counts go on.
        for id in &ids {
            u.spend(id, &l, t).await.unwrap();
        }
        let k = u.table().entries.get(quota).cloned().unwrap();
        assert_eq!(k.remaining, Some(3));
        assert_eq!(k.valid_count, 2);
    }

    #[tokio::test]
    async fn the_periodic_flush_trims_to_the_configured_bound() {
        let l = limits(None, None);
        let t = Timestamp::from_unix(1_000);
        let ids: Vec<KeyId> = (0..20).map(|_| KeyId::generate().unwrap()).collect();
        for (bound, most) in [(8, 8), (MAX_ENTRIES, 20)] {
            let (_d, u) = usage_with(bound);
            for id in &ids {
                u.spend(id, &l, t).await.unwrap();
            }
            u.flush_quotas().await.unwrap();
            assert!(u.len() <= most, "bound {bound}: {}", u.len());
            if bound == MAX_ENTRIES {
                assert_eq!(u.len(), 20, "under the bound nothing is dropped");
            }
        }
    }

    // On several threads: on a current-thread runtime the spawned tasks never run at the same
    // time, and a spend that read and wrote under two separate locks would still pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_spends_are_exact() {
        let (_d, u) = usage();
        let id = KeyId::generate().unwrap();
        u.set_quota(&id, Some(Some(100)), None).await.unwrap();
        let l = limits(Some((150, 3600)), None);
        let t = Timestamp::from_unix(3_600);
        let mut tasks = Vec::new();
        // All start together, so that spends really overlap.
        let start = Arc::new(tokio::sync::Barrier::new(400));
        for _ in 0..400 {
            let u = u.clone();
            let id = id.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                u.spend(&id, &l, t).await.unwrap()
            }));
        }
        let (mut ok, mut limited, mut exhausted) = (0, 0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Spend::Ok { .. } => ok += 1,
                Spend::RateLimited(_) => limited += 1,
                Spend::Exhausted { .. } => exhausted += 1,
            }
        }
        assert_eq!((ok, exhausted, limited), (100, 50, 250));
    }
}
