//! The sled implementation of [`Store`].
//!
//! One tree, namespaced keys (`m/` metadata, `r/` sealed records, `i/` index entries; see
//! layout.rs).
//!
//! [`SledDb`] is the database opened without a key (the one-process lock, metadata, the
//! wrapped keyring); [`SledDb::unseal`] turns it into a [`SledStore`], which seals and opens
//! records. A commit applies its batch in one sled transaction (`apply`) and
//! returns once a flush covers it (group commit, see flush.rs).

mod flush;
mod keyring;
mod layout;
mod migrate;

use crate::sync::Locked;
use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    Batch, IndexEntry, IndexName, Kind, Op, Rev, Store, StoreAdmin, StoreError, StoreFuture,
    Stored, envelope, log,
};
use crate::crypto::keyring::{Keyring, MasterKey, WrappedKeyring};
use crate::store::engine::{holds, next_rev};

pub use super::RawEntry;
use layout::{head_key, index_key, meta_key, range, record_key};
pub use migrate::FORMAT_VERSION;

fn io(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

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

struct Shared {
    db: sled::Db,
    keyring: std::sync::RwLock<Arc<Keyring>>,
    flush: flush::Queue,
    healthy: AtomicBool,
    /// Commits hold it shared; a snapshot holds it alone, so it sees no half-applied batch.
    gate: std::sync::RwLock<()>,
}

/// The sled-backed store. Cloning shares the database.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
    _flusher: Arc<flush::FlusherHandle>,
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

    /// Unwraps the keyring with `master` (creating it in a fresh database) and returns the
    /// store that can read and write records.
    pub fn unseal(&self, master: &MasterKey) -> Result<(SledStore, Arc<Keyring>), StoreError> {
        let db = self.db.clone();
        let keyring = match crate::store::engine::unwrap_keyring(self, master)? {
            Some(ring) => ring,
            None => {
                let ring = self.create_keyring(master)?;
                migrate::stamp(&db)?;
                db.flush().map_err(io)?;
                ring
            }
        };
        migrate::run(&db, &keyring)?;

        let keyring = Arc::new(keyring);
        let shared = Arc::new(Shared {
            db,
            keyring: std::sync::RwLock::new(keyring.clone()),
            flush: flush::Queue::new(),
            healthy: AtomicBool::new(true),
            gate: std::sync::RwLock::new(()),
        });
        let handle = Arc::new(flush::FlusherHandle::start(&shared)?);
        Ok((
            SledStore {
                shared,
                _flusher: handle,
            },
            keyring,
        ))
    }
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

    fn keyring(&self) -> Arc<Keyring> {
        self.shared.keyring.read_locked().clone()
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

    fn sync(&self) -> StoreFuture<'_, ()> {
        // A write is readable once applied, before its flush: wait for a flush after it.
        Box::pin(self.durable())
    }

    fn commit(&self, batch: Batch) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            {
                let _shared = self.shared.gate.read_locked();
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

    fn update<'a>(
        &'a self,
        kind: Kind,
        id: &'a str,
        durable: bool,
        change: super::Change,
    ) -> StoreFuture<'a, crate::crypto::secret::SecretBytes> {
        Box::pin(async move {
            // sled may re-run the transaction closure (a `Fn`): the change is called again then.
            let change = std::sync::Mutex::new(change);
            let key = record_key(kind, id);
            let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
            let result = {
                let _shared = self.shared.gate.read_locked();
                let keyring = self.keyring();
                self.shared.db.transaction(|tx| {
                    let current = tx.get(&key)?;
                    let (rev, plain) = match &current {
                        Some(sealed) => {
                            let (rev, p) = envelope::open(&keyring, kind, id, sealed)
                                .map_err(ConflictableTransactionError::Abort)?;
                            (Rev(rev.0 + 1), Some(p))
                        }
                        None => (Rev(1), None),
                    };
                    let next = (change.write_locked())(plain.as_ref().map(|p| p.expose()))
                        .map_err(ConflictableTransactionError::Abort)?;
                    let sealed = envelope::seal(&keyring, kind, id, rev, nonce, &next);
                    tx.insert(key.as_slice(), sealed)?;
                    Ok(crate::crypto::secret::SecretBytes::new(next))
                })
            };
            let next = match result {
                Ok(next) => next,
                Err(TransactionError::Abort(e)) => return Err(e),
                Err(TransactionError::Storage(e)) => {
                    self.shared.healthy.store(false, Ordering::SeqCst);
                    return Err(io(e));
                }
            };
            if durable {
                self.durable().await?;
            }
            Ok(next)
        })
    }
}

impl StoreAdmin for SledStore {
    fn key_versions(&self) -> (u32, Vec<u32>) {
        let k = self.keyring();
        (k.current_version(), k.versions())
    }

    fn rotate_keyring(&self, master: &MasterKey) -> Result<u32, StoreError> {
        keyring::rotate(self, master)
    }

    fn rewrap_pass(&self) -> Result<usize, StoreError> {
        keyring::rewrap_pass(self)
    }

    fn retire_old_keys(&self, master: &MasterKey, current: u32) -> Result<bool, StoreError> {
        keyring::retire_old(self, master, current)
    }

    /// Taken under the commit gate held alone, so no batch is half-applied in it.
    fn snapshot(&self) -> Result<Vec<RawEntry>, StoreError> {
        let _pause = self.shared.gate.write_locked();
        self.shared
            .db
            .iter()
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    fn format_version(&self) -> u32 {
        FORMAT_VERSION
    }
}

impl super::Database for SledDb {
    fn initialized(&self) -> Result<bool, StoreError> {
        SledDb::initialized(self)
    }
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        SledDb::meta(self, name)
    }
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        SledDb::put_meta(self, name, value)
    }
    fn delete_meta(&self, name: &str) -> Result<(), StoreError> {
        SledDb::delete_meta(self, name)
    }
    fn is_empty(&self) -> bool {
        SledDb::is_empty(self)
    }
    fn import(&self, entries: &[RawEntry]) -> Result<(), StoreError> {
        SledDb::import(self, entries)
    }
    fn wipe(&self) -> Result<(), StoreError> {
        self.db.clear().map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }
    fn wrapped_keyring(&self) -> Result<Option<WrappedKeyring>, StoreError> {
        SledDb::wrapped_keyring(self)
    }
    fn stage_keyring(&self, w: &WrappedKeyring) -> Result<(), StoreError> {
        SledDb::stage_keyring(self, w)
    }
    fn promote_keyring(&self, meta: Option<(&str, &[u8])>) -> Result<(), StoreError> {
        SledDb::promote_keyring(self, meta)
    }
    fn unseal(&self, master: &MasterKey) -> Result<super::Unsealed, StoreError> {
        let (store, keyring) = SledDb::unseal(self, master)?;
        Ok(super::Unsealed {
            store: Arc::new(store.clone()),
            admin: Arc::new(store),
            keyring,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::SecretBytes;
    use crate::store::Expect;

    pub(super) const K: Kind = Kind("thing");
    const I: IndexName = IndexName("things_by_x");

    /// Opens the store in `dir`. A handle dropped just before still holds sled's file lock
    /// for a moment (its flusher thread lets go after the drop): a reopen waits for it, up
    /// to 5 s, rather than failing with `Locked` (it did, about once in 190 runs).
    pub(super) fn open(dir: &Path, master: &MasterKey) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(dir, master, &SledOptions::default()) {
                Err(StoreError::Locked) => std::thread::sleep(std::time::Duration::from_millis(50)),
                r => return r.unwrap().0,
            }
        }
        panic!("the store in {} stayed locked for 5 s", dir.display())
    }

    pub(super) fn put(b: &mut Batch, id: &str, v: &[u8], e: Expect) {
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

    // Several worker threads and a barrier, so that the appends really race.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn appends_are_chained_and_serialised() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &MasterKey::generate().unwrap());
        const L: Kind = Kind("testlog");
        let mut tasks = Vec::new();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(32));
        for i in 0..32u8 {
            let s = s.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
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
}
