//! The Store contract, once, against both engines: random sequences of batches (puts,
//! deletes, checks, unique and plain index entries, log appends, each with a condition)
//! applied to the real engine and to a model a few lines long; after every batch the
//! outcome and the whole visible state (records with revisions, index lookups and scans
//! paged by cursor, log heads and entries) must match. proptest shrinks a failure to the
//! shortest sequence. Then what a model cannot show: concurrent writers (exactly one
//! compare-and-swap winner, appends serialised into one chain) and durability across a
//! reopen.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicUsize},
};

use proptest::{prelude::*, test_runner::TestRunner};
use tessera::{
    crypto::{keyring::MasterKey, secret::SecretBytes},
    store::{
        Batch, Database, Expect, IndexName, Kind, Location, Rev, Store, StoreError, log,
        open_database, postgres::PgTarget,
    },
};

use crate::pg::Postgres;

const KINDS: [Kind; 2] = [Kind("ka"), Kind("kb")];
const IDS: [&str; 3] = ["a", "b", "c"];
const INDEX: IndexName = IndexName("ix");
const IKEYS: [&[u8]; 4] = [b"x/1", b"x/2", b"x/\xff", b"y/1"];
const LOG: Kind = Kind("lg");

#[derive(Clone, Debug)]
enum Cond {
    Absent,
    Any,
    Rev(u64),
}

impl Cond {
    fn expect(&self) -> Expect {
        match self {
            Cond::Absent => Expect::Absent,
            Cond::Any => Expect::Any,
            Cond::Rev(r) => Expect::Rev(Rev(*r)),
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Put(usize, usize, Vec<u8>, Cond),
    Delete(usize, usize, Cond),
    Check(usize, usize, Cond),
    IndexPut(usize, usize, bool),
    IndexDelete(usize),
    Append(Vec<u8>, bool),
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![
        Just(Cond::Absent),
        Just(Cond::Any),
        (0u64..4).prop_map(Cond::Rev)
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let value = prop::collection::vec(any::<u8>(), 0..6);
    prop_oneof![
        4 => (0..2usize, 0..3usize, value.clone(), cond()).prop_map(|(k, i, v, c)| Step::Put(k, i, v, c)),
        1 => (0..2usize, 0..3usize, cond()).prop_map(|(k, i, c)| Step::Delete(k, i, c)),
        1 => (0..2usize, 0..3usize, cond()).prop_map(|(k, i, c)| Step::Check(k, i, c)),
        2 => (0..4usize, 0..3usize, any::<bool>()).prop_map(|(k, i, u)| Step::IndexPut(k, i, u)),
        1 => (0..4usize).prop_map(Step::IndexDelete),
        1 => (value, any::<bool>()).prop_map(|(v, ix)| Step::Append(v, ix)),
    ]
}

/// The contract, as plainly as it can be said.
#[derive(Clone, Default, Debug)]
struct Model {
    records: BTreeMap<(&'static str, &'static str), (u64, Vec<u8>)>,
    index: BTreeMap<Vec<u8>, String>,
    log: Vec<Vec<u8>>,
}

impl Model {
    fn holds(&self, key: (&'static str, &'static str), c: &Cond) -> bool {
        let cur = self.records.get(&key).map(|r| r.0);
        match c {
            Cond::Any => true,
            Cond::Absent => cur.is_none(),
            Cond::Rev(r) => cur == Some(*r),
        }
    }

    /// Applies a batch: all or nothing; `false` when a condition fails.
    fn apply(&mut self, steps: &[Step]) -> bool {
        let mut next = self.clone();
        for s in steps {
            match s {
                Step::Put(k, i, v, c) => {
                    let key = (KINDS[*k].0, IDS[*i]);
                    if !next.holds(key, c) {
                        return false;
                    }
                    let rev = next.records.get(&key).map_or(1, |r| r.0 + 1);
                    next.records.insert(key, (rev, v.clone()));
                }
                Step::Delete(k, i, c) => {
                    let key = (KINDS[*k].0, IDS[*i]);
                    if !next.holds(key, c) {
                        return false;
                    }
                    next.records.remove(&key);
                }
                Step::Check(k, i, c) => {
                    if !next.holds((KINDS[*k].0, IDS[*i]), c) {
                        return false;
                    }
                }
                Step::IndexPut(k, i, unique) => {
                    let key = IKEYS[*k].to_vec();
                    if *unique && next.index.get(&key).is_some_and(|e| e != IDS[*i]) {
                        return false;
                    }
                    next.index.insert(key, IDS[*i].to_owned());
                }
                Step::IndexDelete(k) => {
                    next.index.remove(IKEYS[*k]);
                }
                Step::Append(v, indexed) => {
                    next.log.push(v.clone());
                    if *indexed {
                        let id = log::entry_id(next.log.len() as u64);
                        next.index
                            .insert([b"l/".as_slice(), id.as_bytes()].concat(), id);
                    }
                }
            }
        }
        *self = next;
        true
    }
}

fn batch_of(steps: &[Step]) -> Batch {
    let mut b = Batch::new();
    for s in steps {
        match s {
            Step::Put(k, i, v, c) => b
                .put(KINDS[*k], IDS[*i], SecretBytes::new(v.clone()), c.expect())
                .unwrap(),
            Step::Delete(k, i, c) => b.delete(KINDS[*k], IDS[*i], c.expect()),
            Step::Check(k, i, c) => b.check(KINDS[*k], IDS[*i], c.expect()),
            Step::IndexPut(k, i, u) => b.index_put(INDEX, IKEYS[*k], IDS[*i], *u),
            Step::IndexDelete(k) => b.index_delete(INDEX, IKEYS[*k]),
            Step::Append(v, false) => b.append(LOG, SecretBytes::new(v.clone())).unwrap(),
            Step::Append(v, true) => b
                .append_indexed(LOG, SecretBytes::new(v.clone()), INDEX, b"l/")
                .unwrap(),
        }
    }
    b
}

/// Everything the store shows, read through every read method (scans paged by 2).
async fn visible(s: &dyn Store) -> Model {
    let mut m = Model::default();
    for kind in KINDS {
        let mut after: Option<String> = None;
        loop {
            let page = s.scan_records(kind, after.as_deref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (id, st) in page {
                let id: &'static str = IDS.iter().find(|i| **i == id).expect("unknown id");
                let got = s.get(kind, id).await.unwrap().unwrap();
                assert_eq!(
                    (got.rev, got.plaintext.expose()),
                    (st.rev, st.plaintext.expose())
                );
                m.records
                    .insert((kind.0, id), (st.rev.0, st.plaintext.expose().to_vec()));
            }
        }
        for id in IDS {
            if !m.records.contains_key(&(kind.0, id)) {
                assert!(s.get(kind, id).await.unwrap().is_none());
            }
        }
    }
    for prefix in [&b""[..], b"x/", b"l/"] {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = s.scan(INDEX, prefix, after.as_deref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for e in page {
                let key = [prefix, &e.key].concat();
                assert_eq!(
                    s.lookup(INDEX, &key).await.unwrap().as_deref(),
                    Some(&*e.id)
                );
                if prefix.is_empty() {
                    m.index.insert(key, e.id);
                } else {
                    assert_eq!(m.index.get(&key), Some(&e.id), "scan by prefix");
                }
            }
        }
    }
    let head = s.log_head(LOG).await.unwrap();
    let entries = s.read_log(LOG, 0, 10_000).await.unwrap();
    assert_eq!(entries.len() as u64, head.seq);
    let mut prev = [0u8; log::HASH_LEN];
    for r in entries {
        let e = r.entry.unwrap();
        assert_eq!((r.position, e.prev_hash), (e.seq, prev));
        assert_eq!(e.hash, log::chain_hash(&prev, e.seq, &e.body));
        prev = e.hash;
        m.log.push(e.body);
    }
    assert_eq!(head.hash, prev);
    m
}

fn same(a: &Model, b: &Model) -> bool {
    a.records == b.records && a.index == b.index && a.log == b.log
}

/// Runs `cases` random sequences, each against a fresh store from `fresh`.
fn model_check(name: &str, cases: u32, fresh: impl Fn() -> Arc<dyn Store>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let seq = prop::collection::vec(prop::collection::vec(step(), 1..5), 1..20);
    let result = runner.run(&seq, |batches| {
        let store = fresh();
        rt.block_on(async {
            let mut model = Model::default();
            for steps in &batches {
                let expected = model.apply(steps);
                match store.commit(batch_of(steps)).await {
                    Ok(()) => prop_assert!(expected, "{name}: committed, the model refuses"),
                    Err(StoreError::Conflict) => {
                        prop_assert!(!expected, "{name}: conflict, the model commits")
                    }
                    Err(e) => prop_assert!(false, "{name}: {e}"),
                }
                let seen = visible(&*store).await;
                prop_assert!(
                    same(&seen, &model),
                    "{name}: store {seen:?}\nmodel {model:?}"
                );
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn sled_store(master: &MasterKey) -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(&Location::Embedded {
        dir: dir.path().join("db"),
        cache_bytes: 1 << 20,
    })
    .unwrap();
    let store = db.unseal(master).unwrap().store;
    (dir, store)
}

fn pg_db(pg: &Postgres, name: &str) -> Arc<dyn Database> {
    let url = pg.create_db(name);
    open_database(&Location::Postgres(Box::new(
        PgTarget::parse(&url).unwrap(),
    )))
    .unwrap()
}

#[test]
fn the_embedded_engine_keeps_the_contract() {
    let master = MasterKey::generate().unwrap();
    let dirs = std::sync::Mutex::new(Vec::new());
    model_check("sled", 64, || {
        let (dir, store) = sled_store(&master);
        dirs.lock().unwrap().push(dir);
        store
    });
}

#[test]
fn the_postgres_engine_keeps_the_contract() {
    let pg = Postgres::start();
    let master = MasterKey::generate().unwrap();
    let n = AtomicUsize::new(0);
    model_check("postgres", 32, || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        pg_db(&pg, &format!("contract{i}"))
            .unseal(&master)
            .unwrap()
            .store
    });
}

/// What a sequential model cannot show, on any engine: 24 writers racing for one record at
/// one revision (exactly one wins, the rest see Conflict), 32 concurrent appends forming one
/// chain, and everything acknowledged there after a reopen.
async fn concurrent_writers(open: impl Fn() -> Arc<dyn Store>) {
    let store = open();
    let mut b = Batch::new();
    b.put(
        KINDS[0],
        "a",
        SecretBytes::new(b"0".to_vec()),
        Expect::Absent,
    )
    .unwrap();
    store.commit(b).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..24u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = Batch::new();
            b.put(
                KINDS[0],
                "a",
                SecretBytes::new(vec![i]),
                Expect::Rev(Rev(1)),
            )
            .unwrap();
            b.append(LOG, SecretBytes::new(vec![i])).unwrap();
            s.commit(b).await
        }));
    }
    for i in 0..32u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = Batch::new();
            b.append(LOG, SecretBytes::new(vec![100 + i])).unwrap();
            s.commit(b).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        won,
        1 + 32,
        "exactly one compare-and-swap wins, every append lands"
    );
    drop(store);
    let store = open();
    let got = store.get(KINDS[0], "a").await.unwrap().unwrap();
    assert_eq!(got.rev, Rev(2));
    let seen = visible(&*store).await;
    assert_eq!(seen.log.len(), 33);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_the_embedded_engine() {
    let master = MasterKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    concurrent_writers(|| {
        // The previous handle's lock is released a moment after it is dropped.
        for _ in 0..100 {
            if let Ok(db) = open_database(&Location::Embedded {
                dir: path.clone(),
                cache_bytes: 1 << 20,
            }) {
                return db.unseal(&master).unwrap().store;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the database did not reopen")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_postgres_across_processes_handles() {
    let pg = Postgres::start();
    let master = MasterKey::generate().unwrap();
    let url = pg.create_db("concurrent");
    // Each open is a separate pool, as a separate node would have.
    concurrent_writers(|| {
        open_database(&Location::Postgres(Box::new(
            PgTarget::parse(&url).unwrap(),
        )))
        .unwrap()
        .unseal(&master)
        .unwrap()
        .store
    })
    .await;
}

/// Group commit (PostgreSQL): a batch whose own statement fails with something other than a
/// conflict (here an id PostgreSQL's text type cannot hold, a NUL byte) fails alone; every
/// batch committed in the same group transaction beside it is stored. 48 writers start
/// together, so the group committer takes many batches at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_batch_fails_alone_in_its_group_on_postgres() {
    let pg = Postgres::start();
    let master = MasterKey::generate().unwrap();
    let store = pg_db(&pg, "grouped").unseal(&master).unwrap().store;
    let start = Arc::new(tokio::sync::Barrier::new(48));
    let mut tasks = Vec::new();
    for i in 0..48usize {
        let (s, start) = (store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let bad = i % 6 == 3;
            let id = if bad {
                format!("bad\0{i}")
            } else {
                format!("good-{i}")
            };
            let mut b = Batch::new();
            b.put(KINDS[0], &id, SecretBytes::new(vec![1]), Expect::Absent)
                .unwrap();
            start.wait().await;
            (i, bad, s.commit(b).await)
        }));
    }
    let mut failed_bad = 0;
    for t in tasks {
        let (i, bad, r) = t.await.unwrap();
        if bad {
            assert!(
                matches!(r, Err(StoreError::Unavailable(_))),
                "batch {i} (NUL in its id): {r:?}"
            );
            failed_bad += 1;
        } else {
            assert!(r.is_ok(), "batch {i} failed beside a failing batch: {r:?}");
        }
    }
    assert_eq!(failed_bad, 8);
    for i in (0..48).filter(|i| i % 6 != 3) {
        assert!(
            store
                .get(KINDS[0], &format!("good-{i}"))
                .await
                .unwrap()
                .is_some(),
            "good-{i} acknowledged but not stored"
        );
    }
}
