//! Fault injection for the test suite: a [`Database`] wrapper whose unsealed [`Store`] fails,
//! delays or crashes the process at the Nth write, and a pause inside the keyring rewrap
//! between a record's read and its compare-and-swap. It wraps whichever engine
//! [`open_database`](super::open_database) chose, so both engines are driven the same way.
//!
//! **Test-only, and compiled into debug builds only.** The integration tests run the binary
//! `cargo test` builds (debug assertions on); `TESSERA_TEST_FAULTS` names a rules file there.
//! A release build has none of this code: [`wrap`] refuses to open a database when the
//! variable is set, and [`rewrap_point`] is an empty function. A deployed server therefore
//! cannot be made to fail writes, or to stall its rewrap, by its environment.
//!
//! The rules file is read on every write, so a test changes the rule while the server runs.
//! Writes are counted from the moment the file's text last changed. One rule per file:
//!
//! - `fail N`: the Nth write answers [`StoreError::Unavailable`] and writes nothing;
//! - `fail-from N`: the Nth and every later write does;
//! - `delay N MS`: the Nth write waits MS milliseconds before it is applied;
//! - `crash-before N`: the process aborts at the Nth write, before it is applied;
//! - `crash-after N`: the process aborts once the Nth write is durable, before it returns
//!   (stored, never acknowledged);
//! - `pause-rewrap KIND`: the keyring rewrap, having read the first record of KIND under an
//!   old data key, writes `<rules file>.paused` (holding `KIND/ID`) and waits until
//!   `<rules file>.go` exists (at most 60 s) before its compare-and-swap.
//!
//! A "write" is a [`Store::commit`] or a durable [`Store::update`]. Short writes are not
//! modelled: a batch is one transaction in both engines, and cutting one in two here would
//! test this wrapper rather than Tessera (torn files are the engine's business, and the
//! full-disk test on a real tmpfs is where they happen).

use std::sync::Arc;

use super::{Database, StoreError};

/// The variable naming the rules file.
pub const FAULTS_ENV: &str = "TESSERA_TEST_FAULTS";

/// Wraps `db` when `TESSERA_TEST_FAULTS` is set (debug builds); refuses in a release build.
pub fn wrap(db: Arc<dyn Database>) -> Result<Arc<dyn Database>, StoreError> {
    let Some(path) = std::env::var_os(FAULTS_ENV) else {
        return Ok(db);
    };
    #[cfg(debug_assertions)]
    {
        tracing::warn!(
            file = %std::path::Path::new(&path).display(),
            "TEST FAULTS: storage writes follow the rules in this file; a debug build only"
        );
        Ok(Arc::new(imp::FaultyDb {
            inner: db,
            rules: Arc::new(imp::Rules::new(path.into())),
        }))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = (path, db);
        Err(StoreError::Unavailable(format!(
            "{FAULTS_ENV} is set, but a release build has no fault injection: unset it"
        )))
    }
}

/// Called by each engine's rewrap between reading a record sealed under an old data key and
/// its compare-and-swap (a blocking thread): where `pause-rewrap` holds it.
pub fn rewrap_point(kind: &str, id: &str) {
    #[cfg(debug_assertions)]
    imp::rewrap_point(kind, id);
    #[cfg(not(debug_assertions))]
    let _ = (kind, id);
}

#[cfg(debug_assertions)]
mod imp {
    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::super::{
        Batch, Change, Database, IndexEntry, IndexName, Kind, OnRemote, Store, StoreError,
        StoreFuture, Stored, Unsealed, log,
    };
    use crate::{
        crypto::{
            keyring::{MasterKey, WrappedKeyring},
            secret::SecretBytes,
        },
        store::RawEntry,
        sync::Locked,
    };

    /// What the rules file asks of the write being made.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Action {
        Pass,
        Fail,
        Delay(u64),
        CrashBefore,
        CrashAfter,
    }

    /// The rules file and the writes counted since its text last changed.
    pub(super) struct Rules {
        path: PathBuf,
        state: Mutex<(String, u64)>,
    }

    impl Rules {
        pub(super) fn new(path: PathBuf) -> Self {
            Self {
                path,
                state: Mutex::new((String::new(), 0)),
            }
        }

        /// Counts one write and says what to do with it.
        pub(super) fn next_write(&self) -> Action {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let mut state = self.state.write_locked();
            if state.0 != text {
                *state = (text.clone(), 0);
            }
            state.1 += 1;
            decide(&text, state.1)
        }
    }

    /// The rule in `text` applied to the `n`th write since it was written.
    pub(super) fn decide(text: &str, n: u64) -> Action {
        let words: Vec<&str> = text.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match (words.first().copied(), num(1)) {
            (Some("fail"), Some(at)) if n == at => Action::Fail,
            (Some("fail-from"), Some(at)) if n >= at => Action::Fail,
            (Some("delay"), Some(at)) if n == at => Action::Delay(num(2).unwrap_or(0)),
            (Some("crash-before"), Some(at)) if n == at => Action::CrashBefore,
            (Some("crash-after"), Some(at)) if n == at => Action::CrashAfter,
            _ => Action::Pass,
        }
    }

    fn injected() -> StoreError {
        StoreError::Unavailable("injected fault".into())
    }

    fn crash(when: &str) -> ! {
        eprintln!("TEST FAULTS: crashing the process {when} a write");
        std::process::abort()
    }

    pub(super) struct FaultyDb {
        pub(super) inner: Arc<dyn Database>,
        pub(super) rules: Arc<Rules>,
    }

    impl Database for FaultyDb {
        fn initialized(&self) -> Result<bool, StoreError> {
            self.inner.initialized()
        }
        fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.meta(name)
        }
        fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
            self.inner.put_meta(name, value)
        }
        fn delete_meta(&self, name: &str) -> Result<(), StoreError> {
            self.inner.delete_meta(name)
        }
        fn is_empty(&self) -> bool {
            self.inner.is_empty()
        }
        fn import(&self, entries: &[RawEntry]) -> Result<(), StoreError> {
            self.inner.import(entries)
        }
        fn wipe(&self) -> Result<(), StoreError> {
            self.inner.wipe()
        }
        fn wrapped_keyring(&self) -> Result<Option<WrappedKeyring>, StoreError> {
            self.inner.wrapped_keyring()
        }
        fn stage_keyring(&self, w: &WrappedKeyring) -> Result<(), StoreError> {
            self.inner.stage_keyring(w)
        }
        fn promote_keyring(&self, meta: Option<(&str, &[u8])>) -> Result<(), StoreError> {
            self.inner.promote_keyring(meta)
        }
        fn unseal(&self, master: &MasterKey) -> Result<Unsealed, StoreError> {
            let open = self.inner.unseal(master)?;
            Ok(Unsealed {
                store: Arc::new(FaultyStore {
                    inner: open.store,
                    rules: self.rules.clone(),
                }),
                admin: open.admin,
                keyring: open.keyring,
            })
        }
    }

    /// The engine's store with the rules applied to its writes; reads pass through.
    struct FaultyStore {
        inner: Arc<dyn Store>,
        rules: Arc<Rules>,
    }

    impl FaultyStore {
        /// Applies the rule to a write: `Ok(true)` when the process must crash once the write
        /// is durable.
        async fn before(&self) -> Result<bool, StoreError> {
            match self.rules.next_write() {
                Action::Pass => Ok(false),
                Action::Fail => Err(injected()),
                Action::Delay(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(false)
                }
                Action::CrashBefore => crash("before"),
                Action::CrashAfter => Ok(true),
            }
        }
    }

    impl Store for FaultyStore {
        fn get<'a>(&'a self, kind: Kind, id: &'a str) -> StoreFuture<'a, Option<Stored>> {
            self.inner.get(kind, id)
        }
        fn lookup<'a>(
            &'a self,
            index: IndexName,
            key: &'a [u8],
        ) -> StoreFuture<'a, Option<String>> {
            self.inner.lookup(index, key)
        }
        fn scan<'a>(
            &'a self,
            index: IndexName,
            prefix: &'a [u8],
            after: Option<&'a [u8]>,
            limit: usize,
        ) -> StoreFuture<'a, Vec<IndexEntry>> {
            self.inner.scan(index, prefix, after, limit)
        }
        fn scan_records<'a>(
            &'a self,
            kind: Kind,
            after: Option<&'a str>,
            limit: usize,
        ) -> StoreFuture<'a, Vec<(String, Stored)>> {
            self.inner.scan_records(kind, after, limit)
        }
        fn commit(&self, batch: Batch) -> StoreFuture<'_, ()> {
            Box::pin(async move {
                let crash_after = self.before().await?;
                self.inner.commit(batch).await?;
                if crash_after {
                    crash("after");
                }
                Ok(())
            })
        }
        fn log_head(&self, log: Kind) -> StoreFuture<'_, log::Head> {
            self.inner.log_head(log)
        }
        fn sync(&self) -> StoreFuture<'_, ()> {
            self.inner.sync()
        }
        fn read_log(&self, log: Kind, after: u64, limit: usize) -> StoreFuture<'_, Vec<log::Read>> {
            self.inner.read_log(log, after, limit)
        }
        fn healthy(&self) -> bool {
            self.inner.healthy()
        }
        fn update<'a>(
            &'a self,
            kind: Kind,
            id: &'a str,
            durable: bool,
            change: Change,
        ) -> StoreFuture<'a, SecretBytes> {
            Box::pin(async move {
                let crash_after = if durable { self.before().await? } else { false };
                let out = self.inner.update(kind, id, durable, change).await?;
                if crash_after {
                    crash("after");
                }
                Ok(out)
            })
        }
        fn lease<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, Option<u64>> {
            self.inner.lease(name, ttl)
        }
        fn update_many<'a>(
            &'a self,
            kind: Kind,
            ids: Vec<String>,
            change: super::super::ChangeMany,
        ) -> StoreFuture<'a, ()> {
            self.inner.update_many(kind, ids, change)
        }
        fn shared(&self) -> bool {
            self.inner.shared()
        }
        fn follow(&self, apply: OnRemote) {
            self.inner.follow(apply);
        }
        fn fresh(&self) -> bool {
            self.inner.fresh()
        }
    }

    /// The pause of `pause-rewrap KIND`: once per rules text, at the first record of KIND.
    pub(super) fn rewrap_point(kind: &str, id: &str) {
        static DONE: Mutex<Option<String>> = Mutex::new(None);
        let Some(path) = std::env::var_os(super::FAULTS_ENV).map(PathBuf::from) else {
            return;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut words = text.split_whitespace();
        if words.next() != Some("pause-rewrap") || words.next() != Some(kind) {
            return;
        }
        {
            let mut done = DONE.write_locked();
            if done.as_deref() == Some(text.as_str()) {
                return;
            }
            *done = Some(text.clone());
        }
        let with = |ext: &str| {
            let mut p = path.clone().into_os_string();
            p.push(ext);
            PathBuf::from(p)
        };
        // Written whole, then renamed into place: a test polling for the file never reads
        // it empty or half written.
        if std::fs::write(with(".paused.tmp"), format!("{kind}/{id}")).is_ok() {
            let _ = std::fs::rename(with(".paused.tmp"), with(".paused"));
        }
        for _ in 0..6000 {
            if with(".go").exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rules_pick_the_nth_write() {
            assert_eq!(decide("fail 2", 1), Action::Pass);
            assert_eq!(decide("fail 2", 2), Action::Fail);
            assert_eq!(decide("fail 2", 3), Action::Pass);
            assert_eq!(decide("fail-from 2", 1), Action::Pass);
            assert_eq!(decide("fail-from 2", 9), Action::Fail);
            assert_eq!(decide("delay 1 30", 1), Action::Delay(30));
            assert_eq!(decide("crash-after 3", 3), Action::CrashAfter);
            assert_eq!(decide("crash-before 1\n", 1), Action::CrashBefore);
            assert_eq!(decide("", 1), Action::Pass);
            assert_eq!(decide("pause-rewrap key", 1), Action::Pass);
        }

        #[test]
        fn the_count_restarts_when_the_rule_changes() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rules");
            let rules = Rules::new(path.clone());
            std::fs::write(&path, "fail 2").unwrap();
            assert_eq!(rules.next_write(), Action::Pass);
            assert_eq!(rules.next_write(), Action::Fail);
            assert_eq!(rules.next_write(), Action::Pass);
            std::fs::write(&path, "fail 1").unwrap();
            assert_eq!(rules.next_write(), Action::Fail);
        }
    }
}
