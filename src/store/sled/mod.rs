//! The sled implementation of [`Store`].
//!
//! One tree, namespaced keys:
//!
//! ```text
//! m/format          u32 BE: the data format version (see MIGRATIONS)
//! m/keyring         the keyring, every key wrapped by the master key
//! r/<kind>/<id>     a sealed record (see envelope.rs)
//! i/<index>/<key>   an index entry: the id it points to
//! ```
//!
//! Durability: sled writes reach disk in the background unless flushed, so `commit` applies
//! its transaction and then waits for a flush that started after it. One flusher thread
//! serves every writer, so concurrent commits share one `fsync`-class flush (group commit).
//! sled flushes with `sync_file_range`: that survives a process crash, not a power loss.

use std::{
    ops::Bound,
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use super::{
    Batch, Expect, IndexEntry, IndexName, Kind, Op, Rev, Store, StoreError, StoreFuture, Stored,
    envelope, log,
};
use crate::crypto::{
    hex,
    keyring::{Keyring, MasterKey, WrappedKeyring},
};

/// The data format this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// Upgrades from older formats, in order: entry `(n, f)` turns format `n` into `n + 1`.
/// Each must be idempotent, since a crash may interrupt it before the version is bumped.
type Migration = fn(&sled::Db, &Keyring) -> Result<(), StoreError>;
const MIGRATIONS: &[(u32, Migration)] = &[];

const FORMAT_KEY: &[u8] = b"m/format";
const KEYRING_KEY: &[u8] = b"m/keyring";
/// A keyring wrapped by the next master key, during a master-key rotation.
const NEXT_KEYRING: &str = "keyring_next";

fn record_key(kind: Kind, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + kind.0.len() + id.len());
    k.extend_from_slice(b"r/");
    k.extend_from_slice(kind.0.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

fn head_key(log: Kind) -> Vec<u8> {
    let mut k = b"m/log/".to_vec();
    k.extend_from_slice(log.0.as_bytes());
    k
}

fn index_key(index: IndexName, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + index.0.len() + key.len());
    k.extend_from_slice(b"i/");
    k.extend_from_slice(index.0.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key);
    k
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// One raw key/value pair of the database (a sealed record, an index entry, metadata).
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// Options for opening the database.
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// Bytes of page cache sled may use.
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            cache_capacity: 64 * 1024 * 1024,
        }
    }
}

struct FlushState {
    /// Highest generation some writer waits for.
    wanted: u64,
    stop: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Flushed {
    generation: u64,
    failed: bool,
}

struct Shared {
    db: sled::Db,
    keyring: std::sync::RwLock<Arc<Keyring>>,
    /// Generations of applied batches; a batch's generation is taken after it is applied.
    applied: AtomicU64,
    requests: Mutex<FlushState>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
    healthy: AtomicBool,
    /// Commits hold it shared; a snapshot holds it alone, so it sees no half-applied batch.
    gate: std::sync::RwLock<()>,
}

/// The sled-backed store. Cloning shares the database.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
    _flusher: Arc<FlusherHandle>,
}

struct FlusherHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for FlusherHandle {
    fn drop(&mut self) {
        if let Ok(mut r) = self.shared.requests.lock() {
            r.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// The database opened without any key: it holds the one-process lock and reads and writes
/// plaintext metadata (the wrapped keyring, the seal configuration). Records need
/// [`SledDb::unseal`].
#[derive(Clone)]
pub struct SledDb {
    db: sled::Db,
}

impl SledDb {
    pub fn open(dir: &Path, opts: &SledOptions) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(ioe) if ioe.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked
                }
                _ if e.to_string().contains("lock") => StoreError::Locked,
                _ => io(e),
            })?;
        Ok(Self { db })
    }

    /// Whether the database holds a keyring (it was initialised).
    pub fn initialized(&self) -> Result<bool, StoreError> {
        Ok(self.db.get(KEYRING_KEY).map_err(io)?.is_some())
    }

    /// A metadata value (`m/<name>`), plaintext.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(meta_key(name)).map_err(io)?.map(|v| v.to_vec()))
    }

    /// Writes a metadata value durably.
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(meta_key(name), value).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Whether the database holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    /// Loads raw entries (a restore) into an empty database, durably.
    pub fn import(&self, entries: &[RawEntry]) -> Result<(), StoreError> {
        if !self.db.is_empty() {
            return Err(StoreError::Unavailable(
                "the target database is not empty".into(),
            ));
        }
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            batch.insert(k.as_slice(), v.as_slice());
        }
        self.db.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Removes a metadata value durably.
    pub fn delete_meta(&self, name: &str) -> Result<(), StoreError> {
        self.db.remove(meta_key(name)).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// The persisted (wrapped) keyring.
    pub fn wrapped_keyring(&self) -> Result<Option<WrappedKeyring>, StoreError> {
        match self.db.get(KEYRING_KEY).map_err(io)? {
            Some(bytes) => Ok(Some(decode_keyring(&bytes).ok_or(StoreError::Corrupt {
                kind: "keyring",
                id: String::new(),
            })?)),
            None => Ok(None),
        }
    }

    /// Replaces the persisted keyring (durably).
    pub fn put_wrapped_keyring(&self, w: &WrappedKeyring) -> Result<(), StoreError> {
        self.db.insert(KEYRING_KEY, encode_keyring(w)).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Stages the keyring wrapped by a new master key (master-key rotation, step one).
    pub fn stage_keyring(&self, w: &WrappedKeyring) -> Result<(), StoreError> {
        self.put_meta(NEXT_KEYRING, &encode_keyring(w))
    }

    /// Makes the staged keyring the keyring, with `meta` (e.g. a new seal configuration)
    /// in the same atomic, durable write.
    pub fn promote_keyring(&self, meta: Option<(&str, &[u8])>) -> Result<(), StoreError> {
        let staged = self.meta(NEXT_KEYRING)?.ok_or(StoreError::Corrupt {
            kind: "keyring",
            id: "no staged keyring".into(),
        })?;
        let mut b = sled::Batch::default();
        b.insert(KEYRING_KEY, staged);
        b.remove(meta_key(NEXT_KEYRING));
        if let Some((name, value)) = meta {
            b.insert(meta_key(name), value);
        }
        self.db.apply_batch(b).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Unwraps the keyring with `master`, finishing or abandoning an interrupted master-key
    /// rotation: if only the staged keyring opens with this key, the rotation got as far as
    /// switching keys and is completed; if the current one opens, a staged one is dropped.
    fn unwrap_keyring(&self, master: &MasterKey) -> Result<Option<Keyring>, StoreError> {
        let Some(wrapped) = self.wrapped_keyring()? else {
            return Ok(None);
        };
        let staged = self.meta(NEXT_KEYRING)?.and_then(|b| decode_keyring(&b));
        match Keyring::unwrap(master, &wrapped) {
            Ok(ring) => {
                if staged.is_some() {
                    self.delete_meta(NEXT_KEYRING)?;
                }
                Ok(Some(ring))
            }
            Err(crate::crypto::CryptoError::Tampered) => {
                let ring = staged
                    .and_then(|s| Keyring::unwrap(master, &s).ok())
                    .ok_or(StoreError::WrongMasterKey)?;
                self.promote_keyring(None)?;
                Ok(Some(ring))
            }
            Err(_) => Err(StoreError::Corrupt {
                kind: "keyring",
                id: String::new(),
            }),
        }
    }

    /// Unwraps the keyring with `master` (creating it in a fresh database) and returns the
    /// store that can read and write records.
    pub fn unseal(&self, master: &MasterKey) -> Result<(SledStore, Arc<Keyring>), StoreError> {
        let db = self.db.clone();
        let keyring = match self.unwrap_keyring(master)? {
            Some(ring) => ring,
            None => {
                let (ring, wrapped) = Keyring::generate(master).map_err(|_| StoreError::Crypto)?;
                db.insert(KEYRING_KEY, encode_keyring(&wrapped))
                    .map_err(io)?;
                if db.get(FORMAT_KEY).map_err(io)?.is_none() {
                    db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                        .map_err(io)?;
                }
                db.flush().map_err(io)?;
                ring
            }
        };
        migrate(&db, &keyring, MIGRATIONS)?;

        let keyring = Arc::new(keyring);
        let (flushed, _) = watch::channel(Flushed::default());
        let shared = Arc::new(Shared {
            db,
            keyring: std::sync::RwLock::new(keyring.clone()),
            applied: AtomicU64::new(0),
            requests: Mutex::new(FlushState {
                wanted: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            flushed,
            healthy: AtomicBool::new(true),
            gate: std::sync::RwLock::new(()),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-flush".into())
            .spawn(move || flush_loop(&worker))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let handle = Arc::new(FlusherHandle {
            shared: shared.clone(),
            thread: Mutex::new(Some(thread)),
        });
        Ok((
            SledStore {
                shared,
                _flusher: handle,
            },
            keyring,
        ))
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = b"m/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the database in `dir` and unwraps (or creates) its keyring.
    pub fn open(
        dir: &Path,
        master: &MasterKey,
        opts: &SledOptions,
    ) -> Result<(Self, Arc<Keyring>), StoreError> {
        SledDb::open(dir, opts)?.unseal(master)
    }

    /// The data-key versions in the keyring and the current one.
    pub fn key_versions(&self) -> (u32, Vec<u32>) {
        let k = self.keyring();
        (k.current_version(), k.versions())
    }

    /// Adds a data-key version (wrapped by `master`) and makes new writes use it. Durable
    /// when it returns. Old records are moved over by [`SledStore::rewrap_pass`].
    pub fn rotate_keyring(&self, master: &MasterKey) -> Result<u32, StoreError> {
        let db = SledDb {
            db: self.shared.db.clone(),
        };
        let _one = self
            .shared
            .requests
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))?;
        let wrapped = db.wrapped_keyring()?.ok_or(StoreError::Corrupt {
            kind: "keyring",
            id: String::new(),
        })?;
        let next = wrapped
            .with_new_version(master)
            .map_err(|_| StoreError::Crypto)?;
        let ring = Keyring::unwrap(master, &next).map_err(|_| StoreError::WrongMasterKey)?;
        db.put_wrapped_keyring(&next)?;
        *self
            .shared
            .keyring
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        Ok(next.current)
    }

    /// One pass over every record: those sealed under an older data key are re-sealed under
    /// the current one (compare-and-swap, so a concurrent write simply wins). Returns how many
    /// old-version records the pass found. Idempotent, so a crash mid-pass loses nothing:
    /// the next pass continues.
    pub fn rewrap_pass(&self) -> Result<usize, StoreError> {
        let keyring = self.keyring();
        let current = keyring.current_version();
        let mut found = 0;
        for item in self.shared.db.scan_prefix(b"r/") {
            let (k, v) = item.map_err(io)?;
            if envelope::version_of(&v) == Some(current) {
                continue;
            }
            found += 1;
            let key = String::from_utf8_lossy(&k[2..]).into_owned();
            let Some((kind, id)) = key.split_once('/') else {
                continue;
            };
            let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
            let Some(resealed) = envelope::reseal(&keyring, kind, id, &v, nonce) else {
                return Err(StoreError::Corrupt {
                    kind: "record",
                    id: key.clone(),
                });
            };
            let _ = self
                .shared
                .db
                .compare_and_swap(&k, Some(&v), Some(resealed))
                .map_err(io)?;
        }
        self.shared.db.flush().map_err(io)?;
        Ok(found)
    }

    /// Drops data-key versions other than the current one from the keyring (call only after
    /// a pass found no record sealed under them).
    pub fn retire_old_keys(&self, master: &MasterKey) -> Result<(), StoreError> {
        let db = SledDb {
            db: self.shared.db.clone(),
        };
        let wrapped = db.wrapped_keyring()?.ok_or(StoreError::Corrupt {
            kind: "keyring",
            id: String::new(),
        })?;
        let retired = wrapped.retire_old();
        let ring = Keyring::unwrap(master, &retired).map_err(|_| StoreError::WrongMasterKey)?;
        db.put_wrapped_keyring(&retired)?;
        *self
            .shared
            .keyring
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        Ok(())
    }

    /// A consistent copy of every entry (still sealed), taken while commits wait: reads go on.
    pub fn snapshot(&self) -> Result<Vec<RawEntry>, StoreError> {
        let _pause = self.shared.gate.write().unwrap_or_else(|e| e.into_inner());
        self.shared
            .db
            .iter()
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.shared
            .keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let keyring = &self.keyring();
        let result = self.shared.db.transaction(|tx| {
            for op in &batch.ops {
                match op {
                    Op::Put {
                        kind,
                        id,
                        plaintext,
                        expect,
                        nonce,
                    } => {
                        let key = record_key(*kind, id);
                        let current = tx.get(&key)?;
                        let rev = next_rev(current.as_deref(), *expect)
                            .ok_or(ConflictableTransactionError::Abort(()))?;
                        let sealed =
                            envelope::seal(keyring, *kind, id, rev, *nonce, plaintext.expose());
                        tx.insert(key, sealed)?;
                    }
                    Op::Delete { kind, id, expect } => {
                        let key = record_key(*kind, id);
                        if !holds(tx.get(&key)?.as_deref(), *expect) {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                        tx.remove(key)?;
                    }
                    Op::Check { kind, id, expect } => {
                        if !holds(tx.get(record_key(*kind, id))?.as_deref(), *expect) {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                    }
                    Op::Append {
                        log: kind,
                        body,
                        nonce,
                        index,
                    } => {
                        // Reading the head inside the transaction serialises appends: sled
                        // re-runs a transaction whose reads another one changed.
                        let hk = head_key(*kind);
                        let head = match tx.get(&hk)? {
                            Some(h) => log::Head::decode(&h)
                                .ok_or(ConflictableTransactionError::Abort(()))?,
                            None => log::Head::default(),
                        };
                        let seq = head.seq + 1;
                        let entry = log::Entry {
                            seq,
                            prev_hash: head.hash,
                            hash: log::chain_hash(&head.hash, seq, body.expose()),
                            body: body.expose().to_vec(),
                        };
                        let id = log::entry_id(seq);
                        let plain = crate::crypto::secret::SecretBytes::new(entry.encode());
                        let sealed =
                            envelope::seal(keyring, *kind, &id, Rev(1), *nonce, plain.expose());
                        tx.insert(record_key(*kind, &id), sealed)?;
                        if let Some((index, prefix)) = index {
                            let mut k = prefix.clone();
                            k.extend_from_slice(id.as_bytes());
                            tx.insert(index_key(*index, &k), id.as_bytes())?;
                        }
                        let new_head = log::Head {
                            seq,
                            hash: entry.hash,
                        };
                        tx.insert(hk, &new_head.encode()[..])?;
                    }
                    Op::IndexPut {
                        index,
                        key,
                        id,
                        unique,
                    } => {
                        let k = index_key(*index, key);
                        if *unique
                            && let Some(existing) = tx.get(&k)?
                            && existing.as_ref() != id.as_bytes()
                        {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                        tx.insert(k, id.as_bytes())?;
                    }
                    Op::IndexDelete { index, key } => {
                        tx.remove(index_key(*index, key))?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => Err(StoreError::Conflict),
            Err(TransactionError::Storage(e)) => {
                self.shared.healthy.store(false, Ordering::SeqCst);
                Err(io(e))
            }
        }
    }

    async fn durable(&self) -> Result<(), StoreError> {
        let generation = self.shared.applied.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.shared.flushed.subscribe();
        {
            let mut r = self
                .shared
                .requests
                .lock()
                .map_err(|_| StoreError::Unavailable("flusher poisoned".into()))?;
            r.wanted = r.wanted.max(generation);
        }
        self.shared.wake.notify_one();
        let state = rx
            .wait_for(|f| f.generation >= generation || f.failed)
            .await
            .map_err(|_| StoreError::Unavailable("flusher stopped".into()))?;
        if state.failed && state.generation < generation {
            return Err(StoreError::Unavailable("flush failed".into()));
        }
        Ok(())
    }
}

/// Whether a record's current sealed value satisfies `expect`.
fn holds(current: Option<&[u8]>, expect: Expect) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Rev(r) => current.and_then(envelope::rev_of) == Some(r),
    }
}

/// The revision a write gets, or `None` if its condition fails.
fn next_rev(current: Option<&[u8]>, expect: Expect) -> Option<Rev> {
    let current_rev = current.map(|c| envelope::rev_of(c).unwrap_or(Rev(0)));
    match (expect, current_rev) {
        (Expect::Absent, None) => Some(Rev(1)),
        (Expect::Absent, Some(_)) => None,
        (Expect::Rev(want), Some(have)) if want == have => Some(Rev(have.0 + 1)),
        (Expect::Rev(_), _) => None,
        (Expect::Any, None) => Some(Rev(1)),
        (Expect::Any, Some(have)) => Some(Rev(have.0 + 1)),
    }
}

fn flush_loop(shared: &Shared) {
    loop {
        {
            let Ok(mut r) = shared.requests.lock() else {
                return;
            };
            while !r.stop && r.wanted <= shared.flushed.borrow().generation {
                r = match shared.wake.wait(r) {
                    Ok(r) => r,
                    Err(_) => return,
                };
            }
            if r.stop {
                return;
            }
        }
        // Every batch with a generation <= target was applied before its generation was
        // taken, so this flush covers it.
        let target = shared.applied.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let result = shared.db.flush();
        crate::metrics::STORE_FLUSH.observe(started.elapsed().as_secs_f64());
        let failed = result.is_err();
        if let Err(e) = result {
            tracing::error!(error = %e, "store flush failed");
            shared.healthy.store(false, Ordering::SeqCst);
        }
        shared.flushed.send_modify(|f| {
            if failed {
                f.failed = true;
            } else {
                f.generation = f.generation.max(target);
            }
        });
        if failed {
            return;
        }
    }
}

fn migrate(db: &sled::Db, keyring: &Keyring, steps: &[(u32, Migration)]) -> Result<(), StoreError> {
    let found = match db.get(FORMAT_KEY).map_err(io)? {
        Some(v) => {
            let b: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                kind: "format",
                id: String::new(),
            })?;
            u32::from_be_bytes(b)
        }
        None => FORMAT_VERSION,
    };
    if found > FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            found,
            supported: FORMAT_VERSION,
        });
    }
    let mut version = found;
    for (from, step) in steps {
        if *from == version {
            tracing::info!(from = version, to = version + 1, "migrating data format");
            step(db, keyring)?;
            version += 1;
            db.insert(FORMAT_KEY, &version.to_be_bytes()).map_err(io)?;
            db.flush().map_err(io)?;
        }
    }
    if version != FORMAT_VERSION {
        return Err(StoreError::Corrupt {
            kind: "format",
            id: format!("no migration from {version}"),
        });
    }
    Ok(())
}

fn encode_keyring(w: &WrappedKeyring) -> Vec<u8> {
    let keys: serde_json::Map<String, serde_json::Value> = w
        .data_keys
        .iter()
        .map(|(v, k)| (v.to_string(), hex::encode(k).into()))
        .collect();
    serde_json::json!({"current": w.current, "data_keys": keys, "pepper": hex::encode(&w.pepper)})
        .to_string()
        .into_bytes()
}

fn decode_keyring(bytes: &[u8]) -> Option<WrappedKeyring> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let current = u32::try_from(v.get("current")?.as_u64()?).ok()?;
    let mut data_keys = std::collections::BTreeMap::new();
    for (k, w) in v.get("data_keys")?.as_object()? {
        data_keys.insert(k.parse().ok()?, hex::decode(w.as_str()?)?);
    }
    let pepper = hex::decode(v.get("pepper")?.as_str()?)?;
    Some(WrappedKeyring {
        current,
        data_keys,
        pepper,
    })
}

/// The one range scan: the entries whose keys start with `prefix`, in key order, strictly after
/// `prefix + after` when given, at most `limit` of them, each turned into a `T` by
/// `each(key without the prefix, value)`.
fn range<T>(
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

impl Store for SledStore {
    fn get<'a>(&'a self, kind: Kind, id: &'a str) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move {
            let Some(sealed) = self.shared.db.get(record_key(kind, id)).map_err(io)? else {
                return Ok(None);
            };
            let (rev, plaintext) = envelope::open(&self.keyring(), kind, id, &sealed)?;
            Ok(Some(Stored { rev, plaintext }))
        })
    }

    fn lookup<'a>(&'a self, index: IndexName, key: &'a [u8]) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.shared.db.get(index_key(index, key)).map_err(io)? {
                Some(v) => {
                    String::from_utf8(v.to_vec())
                        .map(Some)
                        .map_err(|_| StoreError::Corrupt {
                            kind: index.0,
                            id: String::new(),
                        })
                }
                None => Ok(None),
            }
        })
    }

    fn scan<'a>(
        &'a self,
        index: IndexName,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<IndexEntry>> {
        Box::pin(async move {
            let full_prefix = index_key(index, prefix);
            range(&self.shared.db, &full_prefix, after, limit, |key, id| {
                let id = String::from_utf8(id.to_vec()).map_err(|_| StoreError::Corrupt {
                    kind: index.0,
                    id: String::new(),
                })?;
                Ok(IndexEntry {
                    key: key.to_vec(),
                    id,
                })
            })
        })
    }

    fn scan_records<'a>(
        &'a self,
        kind: Kind,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Stored)>> {
        Box::pin(async move {
            let prefix = record_key(kind, "");
            let after = after.map(str::as_bytes);
            range(&self.shared.db, &prefix, after, limit, |id, sealed| {
                let id = String::from_utf8_lossy(id).into_owned();
                let (rev, plaintext) = envelope::open(&self.keyring(), kind, &id, sealed)?;
                Ok((id, Stored { rev, plaintext }))
            })
        })
    }

    fn commit(&self, batch: Batch) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            {
                let _shared = self.shared.gate.read().unwrap_or_else(|e| e.into_inner());
                self.apply(&batch)?;
            }
            self.durable().await
        })
    }

    fn log_head(&self, log: Kind) -> StoreFuture<'_, log::Head> {
        Box::pin(async move {
            match self.shared.db.get(head_key(log)).map_err(io)? {
                Some(h) => log::Head::decode(&h).ok_or(StoreError::Corrupt {
                    kind: log.0,
                    id: "head".into(),
                }),
                None => Ok(log::Head::default()),
            }
        })
    }

    fn read_log(&self, log: Kind, after: u64, limit: usize) -> StoreFuture<'_, Vec<log::Read>> {
        Box::pin(async move {
            let prefix = record_key(log, "");
            let after = log::entry_id(after);
            range(
                &self.shared.db,
                &prefix,
                Some(after.as_bytes()),
                limit,
                |id, sealed| {
                    let id = String::from_utf8_lossy(id).into_owned();
                    let position = id.parse::<u64>().unwrap_or(0);
                    let entry =
                        envelope::open(&self.keyring(), log, &id, sealed).and_then(|(_, p)| {
                            log::Entry::decode(p.expose()).ok_or(StoreError::Corrupt {
                                kind: log.0,
                                id: id.clone(),
                            })
                        });
                    Ok(log::Read { position, entry })
                },
            )
        })
    }

    fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::SecretBytes;

    const K: Kind = Kind("thing");
    const I: IndexName = IndexName("things_by_x");

    fn open(dir: &Path, master: &MasterKey) -> SledStore {
        SledStore::open(dir, master, &SledOptions::default())
            .unwrap()
            .0
    }

    fn put(b: &mut Batch, id: &str, v: &[u8], e: Expect) {
        b.put(K, id, SecretBytes::new(v.to_vec()), e).unwrap();
    }

    #[tokio::test]
    async fn conditional_writes_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        {
            let s = open(dir.path(), &master);
            let mut b = Batch::new();
            put(&mut b, "a", b"one", Expect::Absent);
            b.index_put(I, b"x/1", "a", true);
            s.commit(b).await.unwrap();

            let mut b = Batch::new();
            put(&mut b, "a", b"dup", Expect::Absent);
            assert!(matches!(s.commit(b).await, Err(StoreError::Conflict)));

            let got = s.get(K, "a").await.unwrap().unwrap();
            assert_eq!(got.rev, Rev(1));
            let mut b = Batch::new();
            put(&mut b, "a", b"two", Expect::Rev(Rev(1)));
            s.commit(b).await.unwrap();
            let mut b = Batch::new();
            put(&mut b, "a", b"stale", Expect::Rev(Rev(1)));
            assert!(matches!(s.commit(b).await, Err(StoreError::Conflict)));

            // A failed condition writes nothing, not even the other ops of the batch.
            let mut b = Batch::new();
            b.index_put(I, b"x/2", "b", true);
            b.index_put(I, b"x/1", "other", true);
            assert!(matches!(s.commit(b).await, Err(StoreError::Conflict)));
            assert_eq!(s.lookup(I, b"x/2").await.unwrap(), None);
        }
        let s = open(dir.path(), &master);
        let got = s.get(K, "a").await.unwrap().unwrap();
        assert_eq!((got.rev, got.plaintext.expose()), (Rev(2), &b"two"[..]));
        assert_eq!(s.lookup(I, b"x/1").await.unwrap().as_deref(), Some("a"));
        let all = s.scan(I, b"x/", None, 10).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].key, b"1");
    }

    #[tokio::test]
    async fn scans_page_by_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &MasterKey::generate().unwrap());
        let mut b = Batch::new();
        for i in 0..5u8 {
            b.index_put(I, &[b'p', b'/', b'0' + i], &format!("id{i}"), false);
            put(&mut b, &format!("id{i}"), &[i], Expect::Absent);
        }
        b.index_put(I, b"q/0", "other", false);
        s.commit(b).await.unwrap();
        let first = s.scan(I, b"p/", None, 2).await.unwrap();
        assert_eq!(
            first.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["id0", "id1"]
        );
        let rest = s.scan(I, b"p/", Some(&first[1].key), 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["id2", "id3", "id4"]
        );
        let recs = s.scan_records(K, Some("id2"), 10).await.unwrap();
        assert_eq!(
            recs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ["id3", "id4"]
        );
    }

    #[tokio::test]
    async fn wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &MasterKey::generate().unwrap());
        drop(s);
        let err = SledStore::open(
            dir.path(),
            &MasterKey::generate().unwrap(),
            &SledOptions::default(),
        );
        assert!(matches!(err, Err(StoreError::WrongMasterKey)));
    }

    #[tokio::test]
    async fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        drop(open(dir.path(), &master));
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(FORMAT_KEY, &99u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), &master, &SledOptions::default());
        assert!(matches!(
            err,
            Err(StoreError::NewerFormat { found: 99, .. })
        ));
    }

    #[test]
    fn migrations_run_in_order_and_bump_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let (ring, _) = Keyring::generate(&master).unwrap();
        let db = sled::open(dir.path()).unwrap();
        db.insert(FORMAT_KEY, &(FORMAT_VERSION - 1).to_be_bytes())
            .unwrap();
        fn step(db: &sled::Db, _: &Keyring) -> Result<(), StoreError> {
            db.insert(b"migrated", b"yes").map_err(io)?;
            Ok(())
        }
        migrate(&db, &ring, &[(FORMAT_VERSION - 1, step)]).unwrap();
        assert_eq!(db.get(b"migrated").unwrap().as_deref(), Some(&b"yes"[..]));
        let v = db.get(FORMAT_KEY).unwrap().unwrap();
        assert_eq!(v.as_ref(), FORMAT_VERSION.to_be_bytes());
        // No path from a version without a migration.
        db.insert(FORMAT_KEY, &0u32.to_be_bytes()).unwrap();
        assert!(migrate(&db, &ring, &[]).is_err());
    }

    #[tokio::test]
    async fn appends_are_chained_and_serialised() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &MasterKey::generate().unwrap());
        const L: Kind = Kind("testlog");
        let mut tasks = Vec::new();
        for i in 0..32u8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = Batch::new();
                b.append(L, SecretBytes::new(vec![i])).unwrap();
                s.commit(b).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let entries = s.read_log(L, 0, 100).await.unwrap();
        assert_eq!(entries.len(), 32);
        let mut prev = [0u8; 32];
        for (i, r) in entries.iter().enumerate() {
            let e = r.entry.as_ref().unwrap();
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(r.position, e.seq);
            assert_eq!(e.prev_hash, prev);
            assert_eq!(e.hash, log::chain_hash(&prev, e.seq, &e.body));
            prev = e.hash;
        }
        let head = s.log_head(L).await.unwrap();
        assert_eq!((head.seq, head.hash), (32, prev));
        assert_eq!(s.read_log(L, 30, 100).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_commits_share_flushes_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let s = open(dir.path(), &master);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = Batch::new();
                put(&mut b, &format!("c{i}"), b"v", Expect::Absent);
                s.commit(b).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.scan_records(K, None, 100).await.unwrap().len(), 64);
    }
}
