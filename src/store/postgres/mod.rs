//! The PostgreSQL implementation of [`Store`]: several Tessera nodes on one database.
//!
//! Records stay sealed by Tessera (PostgreSQL sees what the embedded engine's files hold:
//! ciphertext, blind indexes, opaque ids; see schema.rs). A commit is one READ COMMITTED
//! transaction that first takes a transaction-scoped advisory lock on every record, unique
//! index key and log the batch touches (sorted, so two batches never wait on each other in
//! a cycle), then checks its conditions and writes: the same all-or-nothing, as-if-alone
//! batch the embedded engine's transaction gives, across processes. It is durable when
//! `commit` returns (`synchronous_commit = on` for every session).
//!
//! Every commit that writes a record also takes the next number of the gap-free change
//! sequence and lists the records it wrote (`tessera_changes`); other nodes follow that
//! sequence to drop what they cached (feed.rs). Reading the keyring row (shared lock) in
//! every commit means no node seals a record under a data key another node retired.
//!
//! All database I/O runs on a small runtime of the store's own, whatever runtime the caller
//! is on (actix's per-worker runtimes, a blocking thread for the admin half): connections
//! are driven by the runtime that owns them.

mod feed;
mod schema;
mod target;

use std::{
    future::Future,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

pub use schema::SCHEMA_VERSION;
pub use target::{PgTarget, is_postgres};

use super::{
    Batch, Database, IndexEntry, IndexName, Kind, Op, RawEntry, Rev, Store, StoreAdmin, StoreError,
    StoreFuture, Stored, Unsealed,
    engine::{
        FORMAT, FORMAT_VERSION, KEYRING, NEXT_KEYRING, decode_keyring, encode_keyring, head_meta,
        holds, next_rev, unwrap_keyring,
    },
    envelope, log, raw,
};
use crate::{
    crypto::keyring::{Keyring, MasterKey, WrappedKeyring},
    sync::Locked,
};

/// How many times a commit is re-run after a deadlock or serialisation failure.
const ATTEMPTS: usize = 8;
/// Rows per statement when importing or copying.
const CHUNK: usize = 1000;

pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// A commit attempt's failure: run it again, or give up with this error.
enum Failed {
    Retry,
    Stop(StoreError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => Failed::Retry,
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => Failed::Retry,
            _ => Failed::Stop(pg_error(e)),
        }
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Stop(e)
    }
}

impl From<deadpool_postgres::PoolError> for Failed {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Failed::Stop(pool_error(e))
    }
}

/// The store's own runtime. Dropped without waiting (it may be dropped on an async thread).
struct Bridge(Option<tokio::runtime::Runtime>);

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Bridge {
    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle())
    }
}

/// What every handle on one database shares: the runtime, the pool, this node's name.
struct Conn {
    bridge: Bridge,
    pool: Pool,
    /// This process's name in the change sequence and leases (random per start).
    node: String,
    target: PgTarget,
}

impl Conn {
    fn open(target: &PgTarget) -> Result<Arc<Self>, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start a runtime: {e}")))?;
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &target.tls {
            Some(tls) => Manager::from_config(
                target.config.clone(),
                tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone()),
                mgr_config,
            ),
            None => Manager::from_config(target.config.clone(), tokio_postgres::NoTls, mgr_config),
        };
        let pool = Pool::builder(mgr)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let mut id = [0u8; 8];
        crate::crypto::random::fill(&mut id).map_err(|_| StoreError::Crypto)?;
        Ok(Arc::new(Self {
            bridge: Bridge(Some(rt)),
            pool,
            node: crate::crypto::hex::encode(&id),
            target: target.clone(),
        }))
    }

    /// Runs `f` on the store's runtime and awaits it from any runtime.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let handle = self.bridge.handle().ok_or(closed())?;
        handle.spawn(f).await.map_err(|_| closed())?
    }

    /// Runs `f` on the store's runtime and blocks the calling thread until it is done (the
    /// admin half and the keyless database are synchronous, like the embedded engine's).
    fn block<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let handle = self.bridge.handle().ok_or(closed())?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the PostgreSQL connection was closed".into())
}

/// The database opened without any key: metadata and the wrapped keyring. Several nodes
/// open the same database at once (there is no one-process lock).
#[derive(Clone)]
pub struct PgDb {
    conn: Arc<Conn>,
}

impl PgDb {
    /// Connects and brings the schema up to date (refusing a newer one).
    pub fn open(target: &PgTarget) -> Result<Self, StoreError> {
        let conn = Conn::open(target)?;
        let pool = conn.pool.clone();
        conn.block(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await
        })?;
        Ok(Self { conn })
    }

    /// Where this database is (no password).
    pub fn target(&self) -> &PgTarget {
        &self.conn.target
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let pool = self.conn.pool.clone();
        let name = name.to_owned();
        self.conn.block(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached("SELECT value FROM tessera_meta WHERE name = $1")
                .await
                .map_err(pg_error)?;
            Ok(c.query_opt(&st, &[&name])
                .await
                .map_err(pg_error)?
                .map(|r| r.get(0)))
        })
    }

    /// Writes (`Some`) and removes (`None`) metadata values in one durable transaction.
    fn write_meta(&self, writes: Vec<(String, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let pool = self.conn.pool.clone();
        self.conn.block(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            for (name, value) in &writes {
                match value {
                    Some(v) => tx
                        .execute(
                            "INSERT INTO tessera_meta (name, value) VALUES ($1, $2) \
                             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                            &[name, v],
                        )
                        .await
                        .map_err(pg_error)?,
                    None => tx
                        .execute("DELETE FROM tessera_meta WHERE name = $1", &[name])
                        .await
                        .map_err(pg_error)?,
                };
            }
            tx.commit().await.map_err(pg_error)
        })
    }

    /// Writes a metadata value only if it is absent; returns whether it wrote.
    fn create_meta(&self, name: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let pool = self.conn.pool.clone();
        let name = name.to_owned();
        self.conn.block(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let n = c
                .execute(
                    "INSERT INTO tessera_meta (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &value],
                )
                .await
                .map_err(pg_error)?;
            Ok(n == 1)
        })
    }

    /// Every entry, still sealed, in the raw layout ([`raw`]), from one consistent snapshot.
    pub fn raw_entries(&self) -> Result<Vec<RawEntry>, StoreError> {
        let pool = self.conn.pool.clone();
        self.conn.block(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_error)?;
            let mut out = Vec::new();
            for r in tx
                .query("SELECT name, value FROM tessera_meta", &[])
                .await
                .map_err(pg_error)?
            {
                out.push((raw::meta_key(r.get::<_, &str>(0)), r.get::<_, Vec<u8>>(1)));
            }
            for r in tx
                .query("SELECT kind, id, sealed FROM tessera_records", &[])
                .await
                .map_err(pg_error)?
            {
                let key = [
                    b"r/",
                    r.get::<_, &str>(0).as_bytes(),
                    b"/",
                    r.get::<_, &str>(1).as_bytes(),
                ]
                .concat();
                out.push((key, r.get::<_, Vec<u8>>(2)));
            }
            for r in tx
                .query("SELECT name, key, id FROM tessera_index", &[])
                .await
                .map_err(pg_error)?
            {
                let key = [
                    b"i/",
                    r.get::<_, &str>(0).as_bytes(),
                    b"/",
                    r.get::<_, &[u8]>(1),
                ]
                .concat();
                out.push((key, r.get::<_, String>(2).into_bytes()));
            }
            tx.commit().await.map_err(pg_error)?;
            out.sort();
            Ok(out)
        })
    }

    fn unseal_inner(&self, master: &MasterKey) -> Result<PgStore, StoreError> {
        let keyring = match unwrap_keyring(self, master)? {
            Some(ring) => ring,
            None => {
                // A fresh database: create the keyring unless another node just did (then
                // this node must open that one, with the same master key, or be refused).
                let (_, wrapped) = Keyring::generate(master).map_err(|_| StoreError::Crypto)?;
                self.create_meta(KEYRING, encode_keyring(&wrapped)?)?;
                self.create_meta(FORMAT, FORMAT_VERSION.to_be_bytes().to_vec())?;
                unwrap_keyring(self, master)?.ok_or(StoreError::Corrupt {
                    kind: "keyring",
                    id: String::new(),
                })?
            }
        };
        let found = match self.get_meta(FORMAT)? {
            Some(v) => {
                u32::from_be_bytes(v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    kind: "format",
                    id: String::new(),
                })?)
            }
            None => FORMAT_VERSION,
        };
        if found > FORMAT_VERSION {
            return Err(StoreError::NewerFormat {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let wrapped = self.get_meta(KEYRING)?.unwrap_or_default();
        // Where following begins: everything committed before is in what the services load
        // after this (their caches start empty).
        let pool = self.conn.pool.clone();
        let seen = self.conn.block(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let row = c
                .query_one("SELECT seq FROM tessera_change_head", &[])
                .await
                .map_err(pg_error)?;
            Ok(row.get::<_, i64>(0))
        })?;
        let (commits, queue) = tokio::sync::mpsc::unbounded_channel();
        let store = PgStore {
            shared: Arc::new(Shared {
                conn: self.conn.clone(),
                keyring: RwLock::new((Arc::new(keyring), wrapped)),
                master: master.duplicate().map_err(|_| StoreError::Crypto)?,
                healthy: AtomicBool::new(true),
                rotation: Mutex::new(()),
                seen: AtomicI64::new(seen),
                opened: Instant::now(),
                caught_up_ms: AtomicU64::new(0),
                staleness: self.conn.target.max_staleness,
                poll: self.conn.target.poll_interval,
                stop: Arc::new(tokio::sync::Notify::new()),
                commits,
            }),
        };
        if let Some(handle) = self.conn.bridge.handle() {
            handle.spawn(commit_groups(Arc::downgrade(&store.shared), queue));
        }
        Ok(store)
    }
}

/// What the handles on one unsealed store share.
struct Shared {
    conn: Arc<Conn>,
    /// The keyring in use, and the stored (wrapped) form it came from: when a commit reads a
    /// different stored form, another node rotated or retired data keys and this one reloads.
    keyring: RwLock<(Arc<Keyring>, Vec<u8>)>,
    /// Kept to unwrap a keyring another node changed; zeroized when the store is dropped.
    master: MasterKey,
    healthy: AtomicBool,
    /// Serialises this node's keyring rotations and retirements (the database serialises
    /// them across nodes).
    rotation: Mutex<()>,
    /// The last number of the change sequence this node has applied.
    seen: AtomicI64,
    /// When the last complete read of the change sequence began, in milliseconds after `opened`.
    caught_up_ms: AtomicU64,
    /// The origin of `caught_up_ms`.
    opened: Instant,
    /// How old `caught_up` may be while caches are used.
    staleness: Duration,
    /// How often the change sequence is read.
    poll: Duration,
    /// Tells the LISTEN connection to close when the store is dropped.
    stop: Arc<tokio::sync::Notify>,
    /// The group committer's queue (see [`commit_groups`]).
    commits: tokio::sync::mpsc::UnboundedSender<Queued>,
}

/// The same error again, for every batch of a group that failed as a whole.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict => StoreError::Conflict,
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Locked => StoreError::Locked,
        StoreError::Corrupt { kind, id } => StoreError::Corrupt {
            kind,
            id: id.clone(),
        },
        StoreError::NewerFormat { found, supported } => StoreError::NewerFormat {
            found: *found,
            supported: *supported,
        },
        StoreError::NewerSchema { found, supported } => StoreError::NewerSchema {
            found: *found,
            supported: *supported,
        },
        StoreError::WrongMasterKey => StoreError::WrongMasterKey,
        StoreError::Crypto => StoreError::Crypto,
    }
}

/// A batch waiting for the group committer, and where its outcome goes.
type Queued = (Batch, tokio::sync::oneshot::Sender<Result<(), StoreError>>);

/// The group committer: takes every batch waiting (up to [`GROUP_MAX`]) and commits them in
/// one transaction. Ends when the store is dropped (its queue closes).
async fn commit_groups(
    weak: std::sync::Weak<Shared>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Queued>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(q) => group.push(q),
                Err(_) => break,
            }
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let batches: Vec<&Batch> = group.iter().map(|(b, _)| b).collect();
        let mut outcome = Err(StoreError::Conflict);
        for _ in 0..ATTEMPTS {
            match apply_group(&shared, &batches).await {
                Ok(each) => {
                    outcome = Ok(each);
                    break;
                }
                Err(Failed::Retry) => continue,
                Err(Failed::Stop(e)) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        drop(batches);
        match outcome {
            Ok(each) => {
                for ((_, reply), r) in group.into_iter().zip(each) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for (_, reply) in group {
                    let _ = reply.send(Err(copy_error(&e)));
                }
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.notify_waiters();
    }
}

impl Shared {
    /// Records a complete read of the change sequence that began at `started`.
    fn caught_up(&self, started: Instant) {
        let ms = u64::try_from(started.saturating_duration_since(self.opened).as_millis())
            .unwrap_or(u64::MAX);
        self.caught_up_ms.fetch_max(ms, Ordering::SeqCst);
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read_locked().0.clone()
    }

    /// Makes the stored keyring `wrapped` the one in use, if it is not already.
    fn adopt(&self, wrapped: &[u8]) -> Result<Arc<Keyring>, StoreError> {
        {
            let current = self.keyring.read_locked();
            if current.1 == wrapped {
                return Ok(current.0.clone());
            }
        }
        let w = decode_keyring(wrapped).ok_or(StoreError::Corrupt {
            kind: "keyring",
            id: String::new(),
        })?;
        let ring =
            Arc::new(Keyring::unwrap(&self.master, &w).map_err(|_| StoreError::WrongMasterKey)?);
        *self.keyring.write_locked() = (ring.clone(), wrapped.to_vec());
        tracing::info!(
            current = w.current,
            "keyring changed by another node: reloaded"
        );
        Ok(ring)
    }

    /// Opens a sealed value; if another node sealed it under a data key this node has not
    /// loaded yet, reloads the keyring once first.
    async fn open(
        &self,
        kind: Kind,
        id: &str,
        sealed: &[u8],
    ) -> Result<(Rev, crate::crypto::secret::SecretBytes), StoreError> {
        let keyring = self.keyring();
        let known = envelope::version_of(sealed).is_some_and(|v| keyring.versions().contains(&v));
        if !known {
            let pool = self.conn.pool.clone();
            let wrapped = self
                .conn
                .run(async move {
                    let c = pool.get().await.map_err(pool_error)?;
                    let row = c
                        .query_opt(
                            "SELECT value FROM tessera_meta WHERE name = $1",
                            &[&KEYRING],
                        )
                        .await
                        .map_err(pg_error)?;
                    Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
                })
                .await?;
            if let Some(w) = wrapped {
                self.adopt(&w)?;
            }
        }
        envelope::open(&self.keyring(), kind, id, sealed)
    }

    fn note<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Err(StoreError::Unavailable(_)) => self.healthy.store(false, Ordering::SeqCst),
            _ => self.healthy.store(true, Ordering::SeqCst),
        }
        r
    }
}

/// The PostgreSQL-backed store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

/// The advisory lock key of one thing a batch touches: the first 8 bytes of a SHA-256 over
/// its kind of thing and name, the same in every build and on every node.
fn lock_key(parts: &[&[u8]]) -> i64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(b)
}

/// Every lock a batch takes, sorted and without repeats.
fn locks_of(batch: &Batch) -> Vec<i64> {
    let mut keys: Vec<i64> = batch
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { kind, id, .. } | Op::Delete { kind, id, .. } | Op::Check { kind, id, .. } => {
                lock_key(&[b"r", kind.0.as_bytes(), id.as_bytes()])
            }
            Op::IndexPut { index, key, .. } | Op::IndexDelete { index, key } => {
                lock_key(&[b"i", index.0.as_bytes(), key])
            }
            Op::Append { log, .. } => lock_key(&[b"l", log.0.as_bytes()]),
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The keyring, read share-locked in the caller's transaction: a rotation or retirement on
/// another node waits for it, and the caller seals under the keyring current when it runs
/// (reloaded here if another node changed it).
async fn keyring_in(
    tx: &deadpool_postgres::Transaction<'_>,
    shared: &Shared,
) -> Result<Arc<Keyring>, Failed> {
    let st = tx
        .prepare_cached("SELECT value FROM tessera_meta WHERE name = 'keyring' FOR SHARE")
        .await?;
    let wrapped: Vec<u8> =
        tx.query_opt(&st, &[])
            .await?
            .map(|r| r.get(0))
            .ok_or(StoreError::Corrupt {
                kind: "keyring",
                id: "missing".into(),
            })?;
    Ok(shared.adopt(&wrapped)?)
}

/// Batches per group transaction, at most.
const GROUP_MAX: usize = 64;

/// One attempt at a group of batches, in one transaction (group commit: one WAL flush, one
/// hold of the audit log's head and of the change sequence for them all). Every lock of
/// every batch is taken first, sorted, so groups on different nodes never wait in a cycle;
/// each batch runs under a savepoint, so one whose condition fails, or whose statements
/// fail, is rolled back alone. Returns each batch's outcome; an error of the transaction
/// itself (a lost connection, a failed commit) fails them all, and a deadlock or
/// serialisation failure retries the group.
async fn apply_group(
    shared: &Shared,
    batches: &[&Batch],
) -> Result<Vec<Result<(), StoreError>>, Failed> {
    let mut client = shared.conn.pool.get().await?;
    let tx = client.transaction().await?;
    // The keyring, share-locked: a rotation or retirement on another node waits for this
    // commit, and this commit seals under the keyring that is current when it runs.
    let keyring = keyring_in(&tx, shared).await?;
    let mut locks: Vec<i64> = batches.iter().flat_map(|b| locks_of(b)).collect();
    locks.sort_unstable();
    locks.dedup();
    let st = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k")
        .await?;
    tx.execute(&st, &[&locks]).await?;

    let alone = batches.len() == 1;
    let mut outcomes = Vec::with_capacity(batches.len());
    let (mut kinds, mut ids): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for batch in batches {
        if !alone {
            tx.batch_execute("SAVEPOINT batch").await?;
        }
        match apply_ops(&tx, &keyring, batch).await {
            Ok((k, i)) => {
                if !alone {
                    tx.batch_execute("RELEASE SAVEPOINT batch").await?;
                }
                kinds.extend(k);
                ids.extend(i);
                outcomes.push(Ok(()));
            }
            Err(Failed::Stop(StoreError::Conflict)) => {
                if !alone {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT batch").await?;
                }
                outcomes.push(Err(StoreError::Conflict));
            }
            // An error of this batch's own statements: it alone is rolled back and fails; the
            // others commit. (If the rollback fails too, the transaction is gone and the
            // whole group fails, as a lost connection does.)
            Err(Failed::Stop(e)) if !alone => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT batch").await?;
                outcomes.push(Err(e));
            }
            Err(e) => return Err(e),
        }
    }
    if outcomes.iter().all(Result::is_err) {
        return Ok(outcomes);
    }
    if !kinds.is_empty() {
        record_change(&tx, &shared.conn.node, &kinds, &ids).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// A record's sealed value, read in the caller's transaction (under the batch's lock).
async fn sealed_of(
    tx: &deadpool_postgres::Transaction<'_>,
    get_record: &tokio_postgres::Statement,
    kind: Kind,
    id: &str,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    Ok(tx
        .query_opt(get_record, &[&kind.0, &id])
        .await?
        .map(|r| r.get(0)))
}

/// One batch's operations inside the group's transaction; the kinds and ids of the records
/// it wrote. A failed condition is `Failed::Stop(StoreError::Conflict)`.
async fn apply_ops<'b>(
    tx: &deadpool_postgres::Transaction<'_>,
    keyring: &Keyring,
    batch: &'b Batch,
) -> Result<(Vec<&'b str>, Vec<&'b str>), Failed> {
    let get_record = tx
        .prepare_cached("SELECT sealed FROM tessera_records WHERE kind = $1 AND id = $2")
        .await?;
    let put_record = tx
        .prepare_cached(
            "INSERT INTO tessera_records (kind, id, sealed) VALUES ($1, $2, $3) \
             ON CONFLICT (kind, id) DO UPDATE SET sealed = EXCLUDED.sealed",
        )
        .await?;
    let put_index = tx
        .prepare_cached(
            "INSERT INTO tessera_index (name, key, id) VALUES ($1, $2, $3) \
             ON CONFLICT (name, key) DO UPDATE SET id = EXCLUDED.id",
        )
        .await?;
    let get_meta = tx
        .prepare_cached("SELECT value FROM tessera_meta WHERE name = $1")
        .await?;
    let put_meta = tx
        .prepare_cached(
            "INSERT INTO tessera_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        )
        .await?;
    let conflict = || Failed::Stop(StoreError::Conflict);
    let mut kinds: Vec<&str> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for op in &batch.ops {
        match op {
            Op::Put {
                kind,
                id,
                plaintext,
                expect,
                nonce,
            } => {
                let current = sealed_of(tx, &get_record, *kind, id).await?;
                let rev = next_rev(current.as_deref(), *expect).ok_or_else(conflict)?;
                let sealed = envelope::seal(keyring, *kind, id, rev, *nonce, plaintext.expose());
                tx.execute(&put_record, &[&kind.0, id, &sealed]).await?;
                kinds.push(kind.0);
                ids.push(id);
            }
            Op::Delete { kind, id, expect } => {
                let current = sealed_of(tx, &get_record, *kind, id).await?;
                if !holds(current.as_deref(), *expect) {
                    return Err(conflict());
                }
                tx.execute(
                    "DELETE FROM tessera_records WHERE kind = $1 AND id = $2",
                    &[&kind.0, id],
                )
                .await?;
                kinds.push(kind.0);
                ids.push(id);
            }
            Op::Check { kind, id, expect } => {
                let current = sealed_of(tx, &get_record, *kind, id).await?;
                if !holds(current.as_deref(), *expect) {
                    return Err(conflict());
                }
            }
            Op::IndexPut {
                index,
                key,
                id,
                unique,
            } => {
                if *unique {
                    let existing: Option<String> = tx
                        .query_opt(
                            "SELECT id FROM tessera_index WHERE name = $1 AND key = $2",
                            &[&index.0, key],
                        )
                        .await?
                        .map(|r| r.get(0));
                    if existing.is_some_and(|e| e != *id) {
                        return Err(conflict());
                    }
                }
                tx.execute(&put_index, &[&index.0, key, id]).await?;
            }
            Op::IndexDelete { index, key } => {
                tx.execute(
                    "DELETE FROM tessera_index WHERE name = $1 AND key = $2",
                    &[&index.0, key],
                )
                .await?;
            }
            Op::Append {
                log: kind,
                body,
                nonce,
                index,
            } => {
                let name = head_meta(*kind);
                let head = match tx.query_opt(&get_meta, &[&name]).await? {
                    Some(r) => {
                        log::Head::decode(r.get::<_, &[u8]>(0)).ok_or(StoreError::Corrupt {
                            kind: kind.0,
                            id: "head".into(),
                        })?
                    }
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
                let sealed = envelope::seal(keyring, *kind, &id, Rev(1), *nonce, plain.expose());
                tx.execute(&put_record, &[&kind.0, &id, &sealed]).await?;
                if let Some((index, prefix)) = index {
                    let mut k = prefix.clone();
                    k.extend_from_slice(id.as_bytes());
                    tx.execute(&put_index, &[&index.0, &k, &id]).await?;
                }
                let new_head = log::Head {
                    seq,
                    hash: entry.hash,
                };
                tx.execute(&put_meta, &[&name, &&new_head.encode()[..]])
                    .await?;
            }
        }
    }
    Ok((kinds, ids))
}

/// One attempt at [`Store::update`]: the record's lock, read, change, write, in one
/// transaction (not waiting for the WAL flush unless `durable`). Counters ticking are not
/// listed in the change sequence (no node caches them); a durable update is.
async fn update_once(
    shared: &Shared,
    kind: Kind,
    id: &str,
    durable: bool,
    change: &mut super::Change,
) -> Result<crate::crypto::secret::SecretBytes, Failed> {
    let mut client = shared.conn.pool.get().await?;
    let tx = client.transaction().await?;
    if !durable {
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
    }
    let keyring = keyring_in(&tx, shared).await?;
    let st = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    tx.execute(&st, &[&lock_key(&[b"r", kind.0.as_bytes(), id.as_bytes()])])
        .await?;
    let st = tx
        .prepare_cached("SELECT sealed FROM tessera_records WHERE kind = $1 AND id = $2")
        .await?;
    let current: Option<Vec<u8>> = tx.query_opt(&st, &[&kind.0, &id]).await?.map(|r| r.get(0));
    let (rev, plain) = match &current {
        Some(sealed) => {
            let (rev, p) = envelope::open(&keyring, kind, id, sealed)?;
            (Rev(rev.0 + 1), Some(p))
        }
        None => (Rev(1), None),
    };
    let next = change(plain.as_ref().map(|p| p.expose()))?;
    let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
    let sealed = envelope::seal(&keyring, kind, id, rev, nonce, &next);
    let st = tx
        .prepare_cached(
            "INSERT INTO tessera_records (kind, id, sealed) VALUES ($1, $2, $3) \
             ON CONFLICT (kind, id) DO UPDATE SET sealed = EXCLUDED.sealed",
        )
        .await?;
    tx.execute(&st, &[&kind.0, &id, &sealed]).await?;
    if durable {
        // A deliberate change (a quota set), not a counter ticking: other nodes hear of it.
        record_change(&tx, &shared.conn.node, &[kind.0], &[id]).await?;
    }
    tx.commit().await?;
    Ok(crate::crypto::secret::SecretBytes::new(next))
}

/// One attempt at [`Store::update_many`]: every record's lock (sorted), one read of them
/// all, one write of them all, in one transaction that does not wait for the WAL flush.
async fn update_many_once(
    shared: &Shared,
    kind: Kind,
    ids: &[String],
    change: &mut super::ChangeMany,
) -> Result<(), Failed> {
    let mut client = shared.conn.pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let keyring = keyring_in(&tx, shared).await?;
    let mut locks: Vec<i64> = ids
        .iter()
        .map(|id| lock_key(&[b"r", kind.0.as_bytes(), id.as_bytes()]))
        .collect();
    locks.sort_unstable();
    locks.dedup();
    let st = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k")
        .await?;
    tx.execute(&st, &[&locks]).await?;
    let st = tx
        .prepare_cached(
            "SELECT id, sealed FROM tessera_records WHERE kind = $1 AND id = ANY($2::text[])",
        )
        .await?;
    let mut current: std::collections::HashMap<String, Vec<u8>> = tx
        .query(&st, &[&kind.0, &ids])
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (mut out_ids, mut out_sealed) =
        (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
    for id in ids {
        let (rev, plain) = match current.remove(id) {
            Some(sealed) => {
                let (rev, p) = envelope::open(&keyring, kind, id, &sealed)?;
                (Rev(rev.0 + 1), Some(p))
            }
            None => (Rev(1), None),
        };
        let next = change(id, plain.as_ref().map(|p| p.expose()))?;
        let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
        out_sealed.push(envelope::seal(&keyring, kind, id, rev, nonce, &next));
        out_ids.push(id.as_str());
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO tessera_records (kind, id, sealed) \
             SELECT $1, i, s FROM unnest($2::text[], $3::bytea[]) AS t(i, s) \
             ON CONFLICT (kind, id) DO UPDATE SET sealed = EXCLUDED.sealed",
        )
        .await?;
    tx.execute(&st, &[&kind.0, &out_ids, &out_sealed]).await?;
    tx.commit().await?;
    Ok(())
}

/// Takes the next number of the change sequence and writes what changed under it, in the
/// caller's transaction (the head row's lock makes the sequence gap-free: numbers become
/// visible in order).
async fn record_change(
    tx: &deadpool_postgres::Transaction<'_>,
    node: &str,
    kinds: &[&str],
    ids: &[&str],
) -> Result<(), tokio_postgres::Error> {
    let st = tx
        .prepare_cached("UPDATE tessera_change_head SET seq = seq + 1 RETURNING seq")
        .await?;
    let seq: i64 = tx.query_one(&st, &[]).await?.get(0);
    let st = tx
        .prepare_cached(
            "INSERT INTO tessera_changes (seq, node, kinds, ids) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    tx.execute(&st, &[&seq, &node, &kinds, &ids]).await?;
    tx.execute(
        "SELECT pg_notify('tessera_changes', $1)",
        &[&seq.to_string()],
    )
    .await?;
    Ok(())
}

/// The smallest byte string greater than every string starting with `prefix` (`None`: there
/// is none, the prefix is all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgStore {
    async fn rows(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let pool = self.shared.conn.pool.clone();
        let r = self
            .shared
            .conn
            .run(async move {
                let c = pool.get().await.map_err(pool_error)?;
                let st = c.prepare_cached(sql).await.map_err(pg_error)?;
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p.as_ref() as _).collect();
                c.query(&st, &refs).await.map_err(pg_error)
            })
            .await;
        self.shared.note(r)
    }
}

impl Store for PgStore {
    fn get<'a>(&'a self, kind: Kind, id: &'a str) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT sealed FROM tessera_records WHERE kind = $1 AND id = $2",
                    vec![Box::new(kind.0), Box::new(id.to_owned())],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let (rev, plaintext) = self.shared.open(kind, id, row.get::<_, &[u8]>(0)).await?;
            Ok(Some(Stored { rev, plaintext }))
        })
    }

    fn lookup<'a>(&'a self, index: IndexName, key: &'a [u8]) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT id FROM tessera_index WHERE name = $1 AND key = $2",
                    vec![Box::new(index.0), Box::new(key.to_vec())],
                )
                .await?;
            Ok(rows.first().map(|r| r.get(0)))
        })
    }

    fn scan<'a>(
        &'a self,
        index: IndexName,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
        limit_n: usize,
    ) -> StoreFuture<'a, Vec<IndexEntry>> {
        Box::pin(async move {
            let start: Option<Vec<u8>> = after.map(|a| [prefix, a].concat());
            let rows = self
                .rows(
                    "SELECT key, id FROM tessera_index WHERE name = $1 AND key >= $2 \
                     AND ($3::bytea IS NULL OR key < $3) AND ($4::bytea IS NULL OR key > $4) \
                     ORDER BY key LIMIT $5",
                    vec![
                        Box::new(index.0),
                        Box::new(prefix.to_vec()),
                        Box::new(prefix_end(prefix)),
                        Box::new(start),
                        Box::new(limit(limit_n)),
                    ],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| IndexEntry {
                    key: r.get::<_, &[u8]>(0)[prefix.len()..].to_vec(),
                    id: r.get(1),
                })
                .collect())
        })
    }

    fn scan_records<'a>(
        &'a self,
        kind: Kind,
        after: Option<&'a str>,
        limit_n: usize,
    ) -> StoreFuture<'a, Vec<(String, Stored)>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT id, sealed FROM tessera_records WHERE kind = $1 \
                     AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
                    vec![
                        Box::new(kind.0),
                        Box::new(after.map(str::to_owned)),
                        Box::new(limit(limit_n)),
                    ],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: String = r.get(0);
                let (rev, plaintext) = self.shared.open(kind, &id, r.get::<_, &[u8]>(1)).await?;
                out.push((id, Stored { rev, plaintext }));
            }
            Ok(out)
        })
    }

    fn commit(&self, batch: Batch) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.shared
                .commits
                .send((batch, tx))
                .map_err(|_| closed())?;
            let r = rx.await.unwrap_or_else(|_| Err(closed()));
            self.shared.note(r)
        })
    }

    fn log_head(&self, log: Kind) -> StoreFuture<'_, log::Head> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT value FROM tessera_meta WHERE name = $1",
                    vec![Box::new(head_meta(log))],
                )
                .await?;
            match rows.first() {
                Some(r) => log::Head::decode(r.get::<_, &[u8]>(0)).ok_or(StoreError::Corrupt {
                    kind: log.0,
                    id: "head".into(),
                }),
                None => Ok(log::Head::default()),
            }
        })
    }

    fn read_log(&self, log: Kind, after: u64, limit_n: usize) -> StoreFuture<'_, Vec<log::Read>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT id, sealed FROM tessera_records WHERE kind = $1 AND id > $2 \
                     ORDER BY id LIMIT $3",
                    vec![
                        Box::new(log.0),
                        Box::new(log::entry_id(after)),
                        Box::new(limit(limit_n)),
                    ],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: String = r.get(0);
                let position = id.parse::<u64>().unwrap_or(0);
                let entry = self
                    .shared
                    .open(log, &id, r.get::<_, &[u8]>(1))
                    .await
                    .and_then(|(_, p)| {
                        log::Entry::decode(p.expose()).ok_or(StoreError::Corrupt {
                            kind: log.0,
                            id: id.clone(),
                        })
                    });
                out.push(log::Read { position, entry });
            }
            Ok(out)
        })
    }

    fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }

    fn update<'a>(
        &'a self,
        kind: Kind,
        id: &'a str,
        durable: bool,
        change: super::Change,
    ) -> StoreFuture<'a, crate::crypto::secret::SecretBytes> {
        Box::pin(async move {
            let shared = self.shared.clone();
            let id = id.to_owned();
            let mut change = change;
            let r = self
                .shared
                .conn
                .run(async move {
                    for _ in 0..ATTEMPTS {
                        match update_once(&shared, kind, &id, durable, &mut change).await {
                            Ok(next) => return Ok(next),
                            Err(Failed::Retry) => continue,
                            Err(Failed::Stop(e)) => return Err(e),
                        }
                    }
                    Err(StoreError::Conflict)
                })
                .await;
            self.shared.note(r)
        })
    }

    fn update_many<'a>(
        &'a self,
        kind: Kind,
        ids: Vec<String>,
        change: super::ChangeMany,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let shared = self.shared.clone();
            let mut change = change;
            let r = self
                .shared
                .conn
                .run(async move {
                    for _ in 0..ATTEMPTS {
                        match update_many_once(&shared, kind, &ids, &mut change).await {
                            Ok(()) => return Ok(()),
                            Err(Failed::Retry) => continue,
                            Err(Failed::Stop(e)) => return Err(e),
                        }
                    }
                    Err(StoreError::Conflict)
                })
                .await;
            self.shared.note(r)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    /// Expiry is judged by the database's clock, the one clock every node shares.
    fn lease<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let rows = self
                .rows(
                    "INSERT INTO tessera_leases (name, holder, fence, expires_at) \
                     VALUES ($1, $2, 1, now() + $3::text::interval) \
                     ON CONFLICT (name) DO UPDATE SET \
                       fence = CASE WHEN tessera_leases.holder = EXCLUDED.holder \
                               THEN tessera_leases.fence ELSE tessera_leases.fence + 1 END, \
                       holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                     WHERE tessera_leases.holder = EXCLUDED.holder \
                        OR tessera_leases.expires_at < now() \
                     RETURNING fence",
                    vec![
                        Box::new(name.to_owned()),
                        Box::new(self.shared.conn.node.clone()),
                        Box::new(format!("{ttl_ms} milliseconds")),
                    ],
                )
                .await?;
            Ok(rows
                .first()
                .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
        })
    }

    fn follow(&self, apply: super::OnRemote) {
        feed::start(&self.shared, apply);
    }

    fn fresh(&self) -> bool {
        // Checked on every verification: one atomic load, no lock.
        let since = Duration::from_millis(self.shared.caught_up_ms.load(Ordering::Relaxed));
        self.shared.opened.elapsed().saturating_sub(since) <= self.shared.staleness
    }
}

impl PgStore {
    /// Changes the stored keyring with `change` (given the current one; `None`: leave it),
    /// in one transaction that holds the keyring row, and records the change for the other
    /// nodes. Returns the new keyring's current version, if it changed.
    fn change_keyring(
        &self,
        change: impl FnOnce(WrappedKeyring) -> Result<Option<WrappedKeyring>, StoreError>
        + Send
        + 'static,
    ) -> Result<Option<u32>, StoreError> {
        let _one = self.shared.rotation.write_locked();
        let shared = self.shared.clone();
        let pool = self.shared.conn.pool.clone();
        let written = self.shared.conn.block(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            let row = tx
                .query_one(
                    "SELECT value FROM tessera_meta WHERE name = 'keyring' FOR UPDATE",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            let current = decode_keyring(row.get::<_, &[u8]>(0)).ok_or(StoreError::Corrupt {
                kind: "keyring",
                id: String::new(),
            })?;
            let Some(next) = change(current)? else {
                return Ok(None);
            };
            let bytes = encode_keyring(&next)?;
            tx.execute(
                "UPDATE tessera_meta SET value = $1 WHERE name = 'keyring'",
                &[&bytes],
            )
            .await
            .map_err(pg_error)?;
            record_change(&tx, &shared.conn.node, &["#keyring"], &[""])
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(Some((next.current, bytes)))
        })?;
        match written {
            Some((current, bytes)) => {
                self.shared.adopt(&bytes)?;
                Ok(Some(current))
            }
            None => Ok(None),
        }
    }
}

impl StoreAdmin for PgStore {
    fn key_versions(&self) -> (u32, Vec<u32>) {
        let k = self.shared.keyring();
        (k.current_version(), k.versions())
    }

    fn rotate_keyring(&self, master: &MasterKey) -> Result<u32, StoreError> {
        let master = master.duplicate().map_err(|_| StoreError::Crypto)?;
        self.change_keyring(move |w| {
            let next = w
                .with_new_version(&master)
                .map_err(|_| StoreError::Crypto)?;
            Keyring::unwrap(&master, &next).map_err(|_| StoreError::WrongMasterKey)?;
            Ok(Some(next))
        })?
        .ok_or(StoreError::Conflict)
    }

    fn rewrap_pass(&self) -> Result<usize, StoreError> {
        let shared = self.shared.clone();
        let pool = self.shared.conn.pool.clone();
        self.shared.conn.block(async move {
            let keyring = shared.keyring();
            let current = keyring.current_version();
            let c = pool.get().await.map_err(pool_error)?;
            let (mut kind, mut id) = (String::new(), String::new());
            let mut found = 0;
            loop {
                let rows = c
                    .query(
                        "SELECT kind, id, sealed FROM tessera_records WHERE (kind, id) > ($1, $2) \
                         ORDER BY kind, id LIMIT $3",
                        &[&kind, &id, &limit(CHUNK)],
                    )
                    .await
                    .map_err(pg_error)?;
                let Some(last) = rows.last() else { break };
                (kind, id) = (last.get(0), last.get(1));
                for r in &rows {
                    let sealed: &[u8] = r.get(2);
                    if envelope::version_of(sealed) == Some(current) {
                        continue;
                    }
                    found += 1;
                    let (k, i): (&str, &str) = (r.get(0), r.get(1));
                    let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
                    let resealed = envelope::reseal(&keyring, k, i, sealed, nonce).ok_or(
                        StoreError::Corrupt {
                            kind: "record",
                            id: format!("{k}/{i}"),
                        },
                    )?;
                    tokio::task::block_in_place(|| crate::store::faulty::rewrap_point(k, i));
                    // Compare-and-swap on the exact bytes: a concurrent write wins.
                    c.execute(
                        "UPDATE tessera_records SET sealed = $4 \
                         WHERE kind = $1 AND id = $2 AND sealed = $3",
                        &[&k, &i, &sealed, &resealed],
                    )
                    .await
                    .map_err(pg_error)?;
                }
            }
            Ok(found)
        })
    }

    fn retire_old_keys(&self, master: &MasterKey, current: u32) -> Result<bool, StoreError> {
        let master = master.duplicate().map_err(|_| StoreError::Crypto)?;
        Ok(self
            .change_keyring(move |w| {
                if w.current != current {
                    return Ok(None);
                }
                let retired = w.retire_old();
                Keyring::unwrap(&master, &retired).map_err(|_| StoreError::WrongMasterKey)?;
                Ok(Some(retired))
            })?
            .is_some())
    }

    fn snapshot(&self) -> Result<Vec<RawEntry>, StoreError> {
        PgDb {
            conn: self.shared.conn.clone(),
        }
        .raw_entries()
    }

    fn format_version(&self) -> u32 {
        FORMAT_VERSION
    }
}

impl Database for PgDb {
    fn initialized(&self) -> Result<bool, StoreError> {
        Ok(self.get_meta(KEYRING)?.is_some())
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_meta(name)
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write_meta(vec![(name.to_owned(), Some(value.to_vec()))])
    }

    fn delete_meta(&self, name: &str) -> Result<(), StoreError> {
        self.write_meta(vec![(name.to_owned(), None)])
    }

    fn is_empty(&self) -> bool {
        let pool = self.conn.pool.clone();
        self.conn
            .block(async move {
                let c = pool.get().await.map_err(pool_error)?;
                let row = c
                    .query_one(
                        "SELECT NOT EXISTS (SELECT 1 FROM tessera_meta) \
                         AND NOT EXISTS (SELECT 1 FROM tessera_records) \
                         AND NOT EXISTS (SELECT 1 FROM tessera_index)",
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(row.get::<_, bool>(0))
            })
            // An unreachable database is not known to be empty: nothing is written into it.
            .unwrap_or(false)
    }

    fn import(&self, entries: &[RawEntry]) -> Result<(), StoreError> {
        let (mut meta, mut records, mut index) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in entries {
            match raw::parse(k) {
                Some(raw::RawKey::Meta(name)) => meta.push((name.to_owned(), v.clone())),
                Some(raw::RawKey::Record { kind, id }) => {
                    records.push((kind.to_owned(), id.to_owned(), v.clone()))
                }
                Some(raw::RawKey::Index { index: name, key }) => {
                    let id = String::from_utf8(v.clone()).map_err(|_| StoreError::Corrupt {
                        kind: "index",
                        id: name.to_owned(),
                    })?;
                    index.push((name.to_owned(), key.to_vec(), id))
                }
                None => {
                    return Err(StoreError::Corrupt {
                        kind: "backup",
                        id: "an entry outside the raw layout".into(),
                    });
                }
            }
        }
        let pool = self.conn.pool.clone();
        self.conn.block(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            let empty: bool = tx
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM tessera_meta) \
                     AND NOT EXISTS (SELECT 1 FROM tessera_records) \
                     AND NOT EXISTS (SELECT 1 FROM tessera_index)",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if !empty {
                return Err(StoreError::Unavailable(
                    "the target database is not empty".into(),
                ));
            }
            for chunk in meta.chunks(CHUNK) {
                let (n, v): (Vec<&str>, Vec<&[u8]>) =
                    chunk.iter().map(|(n, v)| (n.as_str(), v.as_slice())).unzip();
                tx.execute(
                    "INSERT INTO tessera_meta (name, value) SELECT * FROM unnest($1::text[], $2::bytea[])",
                    &[&n, &v],
                )
                .await
                .map_err(pg_error)?;
            }
            for chunk in records.chunks(CHUNK) {
                let k: Vec<&str> = chunk.iter().map(|r| r.0.as_str()).collect();
                let i: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
                let s: Vec<&[u8]> = chunk.iter().map(|r| r.2.as_slice()).collect();
                tx.execute(
                    "INSERT INTO tessera_records (kind, id, sealed) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
                    &[&k, &i, &s],
                )
                .await
                .map_err(pg_error)?;
            }
            for chunk in index.chunks(CHUNK) {
                let n: Vec<&str> = chunk.iter().map(|r| r.0.as_str()).collect();
                let k: Vec<&[u8]> = chunk.iter().map(|r| r.1.as_slice()).collect();
                let i: Vec<&str> = chunk.iter().map(|r| r.2.as_str()).collect();
                tx.execute(
                    "INSERT INTO tessera_index (name, key, id) \
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[])",
                    &[&n, &k, &i],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)
        })
    }

    fn wipe(&self) -> Result<(), StoreError> {
        let pool = self.conn.pool.clone();
        self.conn.block(async move {
            let c = pool.get().await.map_err(pool_error)?;
            c.batch_execute(
                "BEGIN; DELETE FROM tessera_meta; DELETE FROM tessera_records; \
                 DELETE FROM tessera_index; DELETE FROM tessera_changes; \
                 DELETE FROM tessera_leases; COMMIT",
            )
            .await
            .map_err(pg_error)
        })
    }

    fn wrapped_keyring(&self) -> Result<Option<WrappedKeyring>, StoreError> {
        match self.get_meta(KEYRING)? {
            Some(bytes) => Ok(Some(decode_keyring(&bytes).ok_or(StoreError::Corrupt {
                kind: "keyring",
                id: String::new(),
            })?)),
            None => Ok(None),
        }
    }

    fn stage_keyring(&self, w: &WrappedKeyring) -> Result<(), StoreError> {
        self.put_meta(NEXT_KEYRING, &encode_keyring(w)?)
    }

    fn promote_keyring(&self, meta: Option<(&str, &[u8])>) -> Result<(), StoreError> {
        let staged = self.get_meta(NEXT_KEYRING)?.ok_or(StoreError::Corrupt {
            kind: "keyring",
            id: "no staged keyring".into(),
        })?;
        let mut writes = vec![
            (KEYRING.to_owned(), Some(staged)),
            (NEXT_KEYRING.to_owned(), None),
        ];
        if let Some((name, value)) = meta {
            writes.push((name.to_owned(), Some(value.to_vec())));
        }
        self.write_meta(writes)
    }

    fn unseal(&self, master: &MasterKey) -> Result<Unsealed, StoreError> {
        let store = self.unseal_inner(master)?;
        let keyring = store.shared.keyring();
        Ok(Unsealed {
            store: Arc::new(store.clone()),
            admin: Arc::new(store),
            keyring,
        })
    }
}
