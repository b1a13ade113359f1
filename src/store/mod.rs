//! Persistence. The [`Store`] trait is all the domain sees: records sealed per type and id,
//! secondary indexes, atomic conditional batches that are durable when `commit` returns.
//! [`StoreAdmin`] is its admin half, for custody: keyring rotation and rewrap, backup
//! snapshots. No sled type appears in either, so a second implementation on a networked SQL
//! engine can serve the same domain and HTTP code; [`sled`] is the embedded one.

pub mod admin;
pub mod backup;
pub(crate) mod engine;
mod envelope;
pub mod faulty;
pub mod log;
pub mod postgres;
pub mod raw;
pub mod record;
pub mod sled;

use std::{future::Future, pin::Pin};

use crate::crypto::secret::SecretBytes;

pub use admin::{Database, Location, StoreAdmin, Unsealed, open_database};
pub use record::Record;

/// The name of a record type. It is part of every record's associated data, so a record
/// cannot be moved to another type or id without failing authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(pub &'static str);

/// The name of a secondary index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexName(pub &'static str);

/// A record's revision: 1 when created, +1 on every write. Used for compare-and-swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rev(pub u64);

/// A record as read: its revision and its decrypted bytes.
#[derive(Debug)]
pub struct Stored {
    pub rev: Rev,
    pub plaintext: SecretBytes,
}

/// One raw key/value pair of an engine's data (a sealed record, an index entry, metadata), as a
/// backup carries it: still sealed, meaningful only to the engine that wrote it.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// One index entry: the key suffix after the scanned prefix, and the id it points to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub key: Vec<u8>,
    pub id: String,
}

/// The first entries (at most `limit`) of a time-ordered index whose keys sort before `stop`:
/// what a tidying pass removes next.
pub async fn due(
    store: &dyn Store,
    index: IndexName,
    stop: &[u8],
    limit: usize,
) -> Result<Vec<IndexEntry>, StoreError> {
    let page = store.scan(index, b"", None, limit).await?;
    Ok(page
        .into_iter()
        .take_while(|e| e.key.as_slice() < stop)
        .collect())
}

/// The condition a write holds on the record's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The record must not exist.
    Absent,
    /// The record must exist at exactly this revision.
    Rev(Rev),
    /// No condition.
    Any,
}

#[derive(Debug)]
pub(crate) enum Op {
    Put {
        kind: Kind,
        id: String,
        plaintext: SecretBytes,
        expect: Expect,
        nonce: [u8; crate::crypto::aead::NONCE_BYTES],
    },
    Delete {
        kind: Kind,
        id: String,
        expect: Expect,
    },
    IndexPut {
        index: IndexName,
        key: Vec<u8>,
        id: String,
        unique: bool,
    },
    IndexDelete {
        index: IndexName,
        key: Vec<u8>,
    },
    Check {
        kind: Kind,
        id: String,
        expect: Expect,
    },
    Append {
        log: Kind,
        body: SecretBytes,
        nonce: [u8; crate::crypto::aead::NONCE_BYTES],
        /// Also points `prefix` + the entry's id (its seq in 20 digits) at the entry in this
        /// index (an entry's subject, so a reader of one subject scans its own entries only).
        index: Option<(IndexName, Vec<u8>)>,
    },
}

/// An atomic group of writes: all of them or none, and all conditions checked together.
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes a record's plaintext (sealed by the store).
    ///
    /// The nonce is drawn here, before any (possibly re-run) transaction closure.
    pub fn put(
        &mut self,
        kind: Kind,
        id: &str,
        plaintext: SecretBytes,
        expect: Expect,
    ) -> Result<(), StoreError> {
        let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
        self.ops.push(Op::Put {
            kind,
            id: id.to_owned(),
            plaintext,
            expect,
            nonce,
        });
        Ok(())
    }

    pub fn delete(&mut self, kind: Kind, id: &str, expect: Expect) {
        self.ops.push(Op::Delete {
            kind,
            id: id.to_owned(),
            expect,
        });
    }

    /// Points `key` in `index` at `id`. With `unique`, the batch fails with
    /// [`StoreError::Conflict`] if the key already points at another id.
    pub fn index_put(&mut self, index: IndexName, key: &[u8], id: &str, unique: bool) {
        self.ops.push(Op::IndexPut {
            index,
            key: key.to_vec(),
            id: id.to_owned(),
            unique,
        });
    }

    pub fn index_delete(&mut self, index: IndexName, key: &[u8]) {
        self.ops.push(Op::IndexDelete {
            index,
            key: key.to_vec(),
        });
    }

    /// Makes the batch conditional on a record's state without writing it.
    pub fn check(&mut self, kind: Kind, id: &str, expect: Expect) {
        self.ops.push(Op::Check {
            kind,
            id: id.to_owned(),
            expect,
        });
    }

    /// Appends `body` to the hash-chained log `log` (see [`log`]): the store assigns the next
    /// sequence number and chains the entry's hash, inside the same atomic batch. Concurrent
    /// appends are serialised by the store (one writer per log).
    pub fn append(&mut self, log: Kind, body: SecretBytes) -> Result<(), StoreError> {
        let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
        self.ops.push(Op::Append {
            log,
            body,
            nonce,
            index: None,
        });
        Ok(())
    }

    /// [`Batch::append`], and an entry in `index` under `prefix` + the entry's id
    /// ([`log::entry_id`]) pointing at it, written in the same transaction.
    pub fn append_indexed(
        &mut self,
        log: Kind,
        body: SecretBytes,
        index: IndexName,
        prefix: &[u8],
    ) -> Result<(), StoreError> {
        let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
        self.ops.push(Op::Append {
            log,
            body,
            nonce,
            index: Some((index, prefix.to_vec())),
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A batch's condition did not hold (a concurrent writer won); nothing was written.
    #[error("a concurrent change conflicted with this write")]
    Conflict,
    /// The database could not be read or written (disk full, I/O error, failed flush).
    /// Nothing acknowledged is lost; the write that saw this error may not be durable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Another process holds the database.
    #[error("the data directory is in use by another process (one process per database)")]
    Locked,
    /// A stored value failed authentication or decoding: tampering or corruption.
    #[error("stored data failed its integrity check ({kind} {id})")]
    Corrupt { kind: &'static str, id: String },
    /// The data was written by a newer, incompatible version of Tessera.
    #[error(
        "the data directory has format version {found}; this build understands up to {supported}"
    )]
    NewerFormat { found: u32, supported: u32 },
    /// The database's schema was migrated by a newer, incompatible version of Tessera.
    #[error("the database has schema version {found}; this build understands up to {supported}")]
    NewerSchema { found: u32, supported: u32 },
    /// The master key does not unwrap this database's keyring.
    #[error("the master key does not match this data directory")]
    WrongMasterKey,
    /// A cryptographic primitive failed (no randomness).
    #[error("a cryptographic operation failed")]
    Crypto,
}

/// The future every store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The storage engine seen by the domain.
pub trait Store: Send + Sync + 'static {
    /// Reads and opens one record.
    fn get<'a>(&'a self, kind: Kind, id: &'a str) -> StoreFuture<'a, Option<Stored>>;

    /// Looks one key up in an index.
    fn lookup<'a>(&'a self, index: IndexName, key: &'a [u8]) -> StoreFuture<'a, Option<String>>;

    /// Index entries whose key starts with `prefix`, in key order, strictly after
    /// `prefix + after` when given, at most `limit` of them.
    fn scan<'a>(
        &'a self,
        index: IndexName,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<IndexEntry>>;

    /// Records of one kind in id order, strictly after `after`, at most `limit`.
    fn scan_records<'a>(
        &'a self,
        kind: Kind,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Stored)>>;

    /// Applies a batch atomically; returns once it is durable. Concurrent commits share
    /// flushes (group commit).
    fn commit(&self, batch: Batch) -> StoreFuture<'_, ()>;

    /// The head of a hash-chained log: its last sequence number and hash (0 and zeros when
    /// empty).
    fn log_head(&self, log: Kind) -> StoreFuture<'_, log::Head>;

    /// Log entries with sequence numbers after `after`, at most `limit`, each read and opened
    /// on its own so one damaged entry does not hide the others.
    fn read_log(&self, log: Kind, after: u64, limit: usize) -> StoreFuture<'_, Vec<log::Read>>;

    /// Whether the last write and flush succeeded.
    fn healthy(&self) -> bool;

    /// Returns once every write applied before the call is durable: what a reader that
    /// publishes what it read (the change feed) waits for, so it never publishes a write a
    /// crash could still lose. An engine whose writes are visible only once durable has
    /// nothing to wait for.
    fn sync(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Reads, changes and writes one record as one atomic step that no other writer of the
    /// record, in this process or another, can interleave with: `change` gets the current
    /// plaintext (`None`: absent) and returns the new one. Returns the new plaintext. With
    /// `durable`, returns once it is on disk; without, it may be lost in a crash of the
    /// database (usage counters: the one documented exception) but never half-applied.
    fn update<'a>(
        &'a self,
        kind: Kind,
        id: &'a str,
        durable: bool,
        change: Change,
    ) -> StoreFuture<'a, SecretBytes>;

    /// Holds, or takes when free, the lease `name` for `ttl` on behalf of this process, for a
    /// job that one process at a time should run (CRL re-signing, tidy, checkpoints, the
    /// keyring rewrap). Returns the fencing token while this process holds it (it grows each
    /// time the lease changes hands), `None` while another live process does. An engine
    /// only this process writes always grants it.
    fn lease<'a>(
        &'a self,
        name: &'a str,
        ttl: std::time::Duration,
    ) -> StoreFuture<'a, Option<u64>> {
        let _ = (name, ttl);
        Box::pin(async { Ok(Some(0)) })
    }

    /// [`Store::update`] of many records of one kind in one atomic step (not durable):
    /// `change` gets each id and its current plaintext. For merging counters in bulk.
    fn update_many<'a>(
        &'a self,
        kind: Kind,
        ids: Vec<String>,
        change: ChangeMany,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            use crate::sync::Locked;
            let change = std::sync::Arc::new(std::sync::Mutex::new(change));
            for id in ids {
                let (c, name) = (change.clone(), id.clone());
                let step: Change = Box::new(move |plain| (c.write_locked())(&name, plain));
                self.update(kind, &id, false, step).await?;
            }
            Ok(())
        })
    }

    /// Whether other processes write to this store too (a shared database): what a process
    /// counts in memory alone would then not be exact.
    fn shared(&self) -> bool {
        false
    }

    /// Starts following the changes other processes commit to a shared database: `apply` is
    /// awaited for each group of them, in commit order, before the store counts itself caught
    /// up past them. An engine only this process writes has none to follow.
    fn follow(&self, apply: OnRemote) {
        let _ = apply;
    }

    /// Whether this process has applied every change committed elsewhere up to the
    /// configured staleness bound ago: when not, no answer may come from a cache. Always
    /// for an engine only this process writes.
    fn fresh(&self) -> bool {
        true
    }
}

/// What [`Store::update`] does to a record's plaintext.
pub type Change = Box<dyn FnMut(Option<&[u8]>) -> Result<Vec<u8>, StoreError> + Send + 'static>;

/// What [`Store::update_many`] does to each record: its id and current plaintext in, the new
/// plaintext out.
pub type ChangeMany =
    Box<dyn FnMut(&str, Option<&[u8]>) -> Result<Vec<u8>, StoreError> + Send + 'static>;

/// A record another process wrote or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    pub kind: String,
    pub id: String,
}

/// What a process does with changes other processes committed: drop what it cached of them.
pub type OnRemote =
    std::sync::Arc<dyn Fn(Vec<Changed>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Attaches a record of a change to the batch that makes it (the audit log implements this;
/// the domain calls it without knowing the format).
pub trait Recorder: Send + Sync {
    /// Adds the entry for a successful change of `object` (an id, never a secret).
    fn record(
        &self,
        batch: &mut Batch,
        object: &str,
        tenant: Option<&crate::ids::TenantName>,
    ) -> Result<(), StoreError>;
}

/// A recorder that records nothing (offline tools, bootstrap, tests).
pub struct NoRecord;

impl Recorder for NoRecord {
    fn record(
        &self,
        _: &mut Batch,
        _: &str,
        _: Option<&crate::ids::TenantName>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}
