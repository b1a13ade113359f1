//! Tessera on PostgreSQL: the real binary against a real PostgreSQL the test starts itself,
//! one node and several on one database.

use crate::proc::Timed;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera::{
    crypto::{hex, keyring::MasterKey, secret::Key256},
    keys::model::Key,
    store::{self, Location, Store, open_database, postgres::PgTarget},
};

use crate::{
    helpers::{Api, Home, Server, client_config},
    pg::Postgres,
};

fn master_of(home: &Home) -> (String, MasterKey) {
    let text = std::fs::read_to_string(home.data().join("master.key")).unwrap();
    let key =
        MasterKey::new(Key256::from_slice(&hex::decode(text.trim()).unwrap()).unwrap()).unwrap();
    (text.trim().to_owned(), key)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What PostgreSQL holds is ciphertext, blind indexes and opaque ids: a `pg_dump` of the
/// database after issuing keys shows no key, no part of one, no stored hash, no private key,
/// no master key, in raw or hex form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sees_nothing_secret() {
    let pg = Postgres::start();
    let url = pg.create_db("atrest");
    let home = Home::new();
    // A password in the URL (trust authentication ignores it): never printed or logged.
    let url = url.replace("tessera@", "tessera:pw-n0t-sh0wn@");
    let mut server = Server::start_with(&home, &["--store", &url]);
    let banner = server.stdout.lock().unwrap().join("\n");
    assert!(
        banner.contains("store:") && banner.contains("127.0.0.1"),
        "{banner}"
    );
    let admin = server.admin();
    let api = admin.create_api("at-rest").await;
    let mut keys = Vec::new();
    for i in 0..10 {
        keys.push(admin.issue(&api, json!({"name": format!("k{i}")})).await);
    }
    // An idempotent create: its answer (holding the key) is kept in the database to replay.
    let v = admin
        .send(
            admin
                .http
                .post(admin.url(&format!("/v1/apis/{api}/keys")))
                .header("Idempotency-Key", "at-rest-1")
                .json(&json!({"name": "idem"})),
        )
        .await
        .expect(201);
    keys.push((
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    ));
    assert_eq!(
        pg.sql(
            "atrest",
            "SELECT count(*) FROM tessera_records WHERE kind = 'idempotency'"
        ),
        "1"
    );
    assert_eq!(admin.verify(&keys[0].1).await, "VALID");
    server.terminate();
    let printed = format!(
        "{}{}",
        server.stdout.lock().unwrap().join("\n"),
        std::fs::read_to_string(home.log()).unwrap()
    );
    assert!(
        !printed.contains("pw-n0t-sh0wn"),
        "the database password was printed"
    );

    let (master_hex, master) = master_of(&home);
    let db = open_database(&Location::Postgres(Box::new(
        PgTarget::parse(&url).unwrap(),
    )))
    .unwrap();
    let store = db.unseal(&master).unwrap().store;
    let mut hashes = Vec::new();
    for (id, _) in &keys {
        let (_, k) = store::record::get::<Key>(&*store as &dyn Store, id)
            .await
            .unwrap()
            .unwrap();
        hashes.push(k.hash);
    }
    let admin_der = pem::parse(std::fs::read_to_string(home.certs().join("admin.key")).unwrap())
        .unwrap()
        .into_contents();

    let dump = pg.dump("atrest");
    assert!(
        dump.contains("tessera_records"),
        "the dump holds the tables"
    );
    assert!(dump.len() > 10_000, "the dump holds the records");
    let d = dump.as_bytes();
    for (_, secret) in &keys {
        for form in [
            secret.as_bytes().to_vec(),
            secret.as_bytes()[4..].to_vec(),
            hex::encode(secret.as_bytes()).into_bytes(),
            hex::encode(&secret.as_bytes()[4..]).into_bytes(),
        ] {
            assert!(!contains(d, &form), "a key in the dump");
        }
    }
    for h in &hashes {
        assert!(
            !contains(d, hex::encode(h).as_bytes()),
            "a stored hash in the dump"
        );
    }
    assert!(!contains(d, b"PRIVATE KEY"));
    assert!(!contains(
        d,
        hex::encode(&admin_der[admin_der.len() - 48..]).as_bytes()
    ));
    assert!(!contains(d, master_hex.as_bytes()));
    // The same tables seen through SQL: every sealed value is ciphertext of the record
    // format (version byte 1), never JSON.
    let plain = pg.sql(
        "atrest",
        "SELECT count(*) FROM tessera_records WHERE position('\\x7b22'::bytea in sealed) = 1",
    );
    assert_eq!(plain, "0", "no record is stored as JSON");
}

/// A node reading its configuration: `TESSERA_STORE_URL` works like `--store`, and a URL
/// that asks for weak TLS is refused at start with the field named.
#[test]
fn store_url_from_the_environment_and_weak_tls_refused() {
    let home = Home::new();
    let out = std::process::Command::new(crate::helpers::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .env(
            "TESSERA_STORE_URL",
            "postgres://u@127.0.0.1:1/db?sslmode=require",
        )
        .output_timed()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store.url") && err.contains("verify-full"),
        "{err}"
    );
}

/// Three Tessera nodes on one PostgreSQL database. Node A starts first (it creates the
/// keyring, the CA and the admin credential); B and C get the same master key from
/// `TESSERA_MASTER_KEY`, as an operator would give it to them.
///
/// The staleness bound is 5 s here, five times the propagation these tests require: what
/// they see within 1 s the change follower brought, not a node too stale to use its cache.
struct Cluster {
    pg: Postgres,
    url: String,
    master_hex: String,
    homes: Vec<Home>,
    nodes: Vec<Server>,
}

const NODE_CONFIG: &str = "[store]\nmax_staleness_ms = 5000\npoll_interval_ms = 100\n";

impl Cluster {
    fn start(n: usize, db: &str) -> Self {
        let pg = Postgres::start();
        let url = pg.create_db(db);
        let first = Home::new();
        let config = first.tmp.path().join("tessera.toml");
        std::fs::write(&config, NODE_CONFIG).unwrap();
        let a = Server::start_with(
            &first,
            &["--store", &url, "--config", config.to_str().unwrap()],
        );
        let (master_hex, _) = master_of(&first);
        let mut c = Self {
            pg,
            url,
            master_hex,
            homes: vec![first],
            nodes: vec![a],
        };
        for _ in 1..n {
            let home = Home::new();
            let node = c.start_node(&home);
            c.homes.push(home);
            c.nodes.push(node);
        }
        c
    }

    fn start_node(&self, home: &Home) -> Server {
        let config = home.tmp.path().join("tessera.toml");
        std::fs::write(&config, NODE_CONFIG).unwrap();
        Server::start_with_env(
            home,
            &["--store", &self.url, "--config", config.to_str().unwrap()],
            &[("TESSERA_MASTER_KEY", &self.master_hex)],
        )
    }

    /// Node `i`'s client holding the admin credential node A wrote.
    fn admin(&self, i: usize) -> Api {
        let certs = self.homes[0].certs();
        Api::new(
            &self.nodes[i],
            client_config(
                &certs.join("ca.pem"),
                Some((&certs.join("admin.pem"), &certs.join("admin.key"))),
            ),
        )
    }
}

/// How long until `check` holds, polling every 5 ms; panics past `limit`.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The bound: a key created on one node verifies on the others; revoked on B, every other
/// node answers REVOKED within 1 s (the default `store.max_staleness_ms`), although each
/// had the key in its verification cache. The delays' p50 and p99 are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_keys_and_see_revocations_within_the_bound() {
    let c = Cluster::start(3, "shared");
    let (a, b, cc) = (c.admin(0), c.admin(1), c.admin(2));
    let api = a.create_api("cluster").await;
    let mut delays = Vec::new();
    for i in 0..12 {
        let (id, secret) = a.issue(&api, json!({ "name": format!("k{i}") })).await;
        for n in [&a, &b, &cc] {
            assert_eq!(
                n.verify(&secret).await,
                "VALID",
                "created on A, cached everywhere"
            );
        }
        let writer = if i % 2 == 0 { &b } else { &cc };
        writer
            .post(&format!("/v1/keys/{id}/revoke"), json!({}))
            .await
            .expect(200);
        let start = Instant::now();
        for n in [&a, &b, &cc] {
            within(Duration::from_secs(1), || async {
                n.verify(&secret).await == "REVOKED"
            })
            .await;
            delays.push(start.elapsed());
        }
    }
    delays.sort();
    println!(
        "revocation propagation over 3 nodes: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}

/// A certificate revoked on A is refused on B and C within the bound: on a connection kept
/// open from before the revocation, at a new handshake, and in every node's CRL, whose
/// numbers only grow whichever node signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_revoked_on_one_node_is_refused_by_all() {
    let c = Cluster::start(3, "certs");
    let a = c.admin(0);
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::bind(&a, "default", "svc", &["tenant-admin"]).await;
    let (cert, key, serial) =
        crate::helpers::identity_files(&a, dir.path(), "default", "svc").await;
    let ca = c.homes[0].certs().join("ca.pem");
    let config = std::sync::Arc::new(client_config(&ca, Some((&cert, &key))));
    let mut kept = Vec::new();
    for node in &c.nodes[1..] {
        let mut conn = crate::raw::RawConn::connect(node.addr, config.clone())
            .await
            .unwrap();
        assert_eq!(
            conn.request("GET", "/v1/whoami", None).await.unwrap().0,
            200
        );
        kept.push(conn);
    }
    let crl_number = |api: Api| async move {
        let pem = api.get("/v1/pki/crl?format=pem").await.text;
        let p = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(p.path(), pem).unwrap();
        crate::certs::crl_number(
            &crate::certs::openssl(&["crl", "-noout", "-text", "-in", p.path().to_str().unwrap()])
                .1,
        )
    };
    let before = crl_number(c.admin(1)).await;
    a.post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    for (i, conn) in kept.iter_mut().enumerate() {
        let node = &c.nodes[i + 1];
        let start = Instant::now();
        while conn.request("GET", "/v1/whoami", None).await.unwrap().0 != 401 {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "kept connection on node {}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let fresh = crate::raw::RawConn::connect(node.addr, config.clone()).await;
        let refused = match fresh {
            Err(_) => true,
            Ok(mut f) => !matches!(f.request("GET", "/v1/whoami", None).await, Ok((200, _))),
        };
        assert!(
            refused,
            "a new handshake with the revoked certificate on node {}",
            i + 1
        );
    }
    for i in 0..3 {
        let n = crl_number(c.admin(i)).await;
        assert!(n > before, "node {i}: CRL number {before} -> {n}");
        let text = {
            let pem = c.admin(i).get("/v1/pki/crl?format=pem").await.text;
            let p = dir.path().join(format!("crl{i}.pem"));
            std::fs::write(&p, pem).unwrap();
            crate::certs::openssl(&["crl", "-noout", "-text", "-in", p.to_str().unwrap()]).1
        };
        assert!(
            text.to_uppercase().contains(&serial.to_uppercase()),
            "node {i}'s CRL lists the serial"
        );
    }
}

/// Thirty rotations of one key race over three nodes: exactly one wins, the others are
/// told of the conflict, and every node then verifies the winner's new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_thirty_parallel_rotations_wins() {
    let c = Cluster::start(3, "rotate");
    let a = c.admin(0);
    let api = a.create_api("rot").await;
    let (id, _) = a.issue(&api, json!({"name": "r"})).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let n = c.admin(i % 3);
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            n.post(
                &format!("/v1/keys/{id}/rotate"),
                json!({"grace_seconds": 60}),
            )
            .await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => won.push(r.json()["key"].as_str().unwrap().to_owned()),
            409 => {}
            s => panic!("rotation answered {s}: {}", r.text),
        }
    }
    assert_eq!(won.len(), 1, "exactly one rotation wins");
    for i in 0..3 {
        assert_eq!(c.admin(i).verify(&won[0]).await, "VALID");
    }
    // Concurrent writes on all nodes, refusals included, made one audit chain. A refused
    // write's entry is written just after its answer, so the count may trail by a moment.
    within(Duration::from_secs(10), || async {
        let v = c.admin(0).get("/v1/audit/verify").await.expect(200);
        v["head_seq"].as_u64().unwrap() > 30
    })
    .await;
    for i in 0..3 {
        let v = c.admin(i).get("/v1/audit/verify").await.expect(200);
        assert_eq!(v["valid"], true, "node {i}: {v}");
        assert!(v["head_seq"].as_u64().unwrap() > 30, "node {i}: {v}");
    }
}

/// PostgreSQL stops under load: writes answer 503 and never a 2xx that was not stored,
/// `/readyz` turns 503, a key every node had cached is not answered VALID once the
/// staleness bound has passed (the node reads the database, which fails: 503), and
/// everything comes back by itself when the database does. Every key acknowledged before,
/// during or after verifies on every node at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_fails_closed_and_heals() {
    let mut c = Cluster::start(2, "outage");
    let (a, b) = (c.admin(0), c.admin(1));
    let api = a.create_api("outage").await;
    let (_, cached) = a.issue(&api, json!({"name": "cached"})).await;
    for n in [&a, &b] {
        assert_eq!(n.verify(&cached).await, "VALID");
    }
    // Writers on both nodes, recording what was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, n) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (stop, api) = (stop.clone(), api.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut statuses) = (Vec::new(), std::collections::BTreeSet::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let r = n
                    .try_post(
                        &format!("/v1/apis/{api}/keys"),
                        json!({"name": format!("w{w}-{i}")}),
                    )
                    .await;
                if let Some(r) = r {
                    statuses.insert(r.status);
                    if r.status == 201 {
                        acked.push(r.json()["key"].as_str().unwrap().to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, statuses)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.pg.stop();
    // Past the bound (5 s here), a cached key is no longer answered from the cache.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    for n in [&a, &b] {
        let r = n.post("/v1/keys/verify", json!({"key": cached})).await;
        assert_eq!(
            r.status, 503,
            "a stale node answers from the database or not at all"
        );
        assert_eq!(n.get("/readyz").await.status, 503);
    }
    c.pg.resume();
    for n in [&a, &b] {
        within(Duration::from_secs(10), || async {
            n.get("/readyz").await.status == 200
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut all = Vec::new();
    for w in writers {
        let (acked, statuses) = w.await.unwrap();
        assert!(
            statuses.iter().all(|s| [201, 503].contains(s)),
            "only 201 or 503: {statuses:?}"
        );
        assert!(statuses.contains(&503), "the outage was seen");
        all.extend(acked);
    }
    assert!(!all.is_empty());
    for key in all.iter().chain([&cached]) {
        for n in [&a, &b] {
            assert_eq!(
                n.verify(key).await,
                "VALID",
                "an acknowledged key is stored"
            );
        }
    }
}

/// A node killed with SIGKILL under writes: the others keep serving, and every write it
/// acknowledged is there (on the other nodes, and on the node when it comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_loses_nothing_it_acknowledged() {
    let mut c = Cluster::start(3, "kill");
    let api = c.admin(0).create_api("kill").await;
    let victim = c.admin(1);
    let writer = tokio::spawn({
        let api = api.clone();
        async move {
            let mut acked = Vec::new();
            for i in 0..400 {
                match victim
                    .try_post(
                        &format!("/v1/apis/{api}/keys"),
                        json!({"name": format!("v{i}")}),
                    )
                    .await
                {
                    Some(r) if r.status == 201 => {
                        acked.push(r.json()["key"].as_str().unwrap().to_owned())
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.nodes[1].kill9();
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    for i in [0, 2] {
        let n = c.admin(i);
        assert_eq!(n.get("/readyz").await.status, 200, "node {i} keeps serving");
        for key in &acked {
            assert_eq!(n.verify(key).await, "VALID");
        }
    }
    let home = Home::new();
    c.nodes[1] = c.start_node(&home);
    c.homes[1] = home;
    let n = c.admin(1);
    for key in &acked {
        assert_eq!(n.verify(key).await, "VALID");
    }
}

/// Verifies of one key spread over three nodes, all at once: a quota of 100 gives exactly
/// 100 VALID answers, and a rate limit of 20 a day exactly 20, whichever node answers. A
/// quota set on one node is the quota on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_and_rate_limits_are_exact_across_nodes() {
    let c = Cluster::start(3, "quota");
    let a = c.admin(0);
    let api = a.create_api("quota").await;
    let (_, quota_key) = a.issue(&api, json!({"name": "q", "remaining": 100})).await;
    let (_, rated_key) = a
        .issue(
            &api,
            json!({"name": "r", "ratelimit": {"limit": 20, "window_seconds": 86400}}),
        )
        .await;
    let count = |key: String, n: usize| {
        let nodes: Vec<Api> = (0..3).map(|i| c.admin(i)).collect();
        async move {
            let mut tasks = Vec::new();
            for i in 0..n {
                let (node, key) = (nodes[i % 3].clone(), key.clone());
                tasks.push(tokio::spawn(async move { node.verify(&key).await }));
            }
            let mut codes = std::collections::BTreeMap::new();
            for t in tasks {
                *codes.entry(t.await.unwrap()).or_insert(0) += 1;
            }
            codes
        }
    };
    let codes = count(quota_key.clone(), 300).await;
    assert_eq!(codes.get("VALID"), Some(&100), "{codes:?}");
    assert_eq!(codes.get("USAGE_EXCEEDED"), Some(&200), "{codes:?}");
    let codes = count(rated_key, 90).await;
    assert_eq!(codes.get("VALID"), Some(&20), "{codes:?}");
    assert_eq!(codes.get("RATE_LIMITED"), Some(&70), "{codes:?}");

    // A new quota set on B holds on A and C at once.
    let id = a.get(&format!("/v1/apis/{api}/keys")).await.expect(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "q")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    c.admin(1)
        .patch(&format!("/v1/keys/{id}"), json!({"remaining": 2}))
        .await
        .expect(200);
    let codes = count(quota_key, 9).await;
    assert_eq!(codes.get("VALID"), Some(&2), "{codes:?}");

    // A key without a quota, verified everywhere (every node knows it unlimited), then
    // given one on C: exactly that many VALID over all nodes.
    let v = a
        .post(&format!("/v1/apis/{api}/keys"), json!({"name": "later"}))
        .await
        .expect(201);
    let (later_id, later) = (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    );
    let codes = count(later.clone(), 30).await;
    assert_eq!(codes.get("VALID"), Some(&30), "{codes:?}");
    c.admin(2)
        .patch(&format!("/v1/keys/{later_id}"), json!({"remaining": 4}))
        .await
        .expect(200);
    let codes = count(later, 30).await;
    assert_eq!(codes.get("VALID"), Some(&4), "{codes:?}");
}

/// Runs the binary; its success and everything it printed.
fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(crate::helpers::BIN)
        .args(args)
        .env_remove("TESSERA_MASTER_KEY")
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::null())
        .output_timed()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Moving up: a data directory with keys (one revoked) and a certificate is copied into
/// PostgreSQL by `tessera migrate`; a node on the copy answers as the old server did and its
/// audit chain verifies. A second migrate into the now non-empty database is refused. Then
/// backup and restore on the cluster engine: a backup of the node restores into a fresh
/// database, and a node there answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_from_sled_then_backup_and_restore_on_postgres() {
    let pg = Postgres::start();
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("moving").await;
    let mut keys = Vec::new();
    for i in 0..8 {
        keys.push(admin.issue(&api, json!({"name": format!("k{i}")})).await);
    }
    admin
        .post(&format!("/v1/keys/{}/revoke", keys[0].0), json!({}))
        .await
        .expect(200);
    let serial = admin
        .post("/v1/certs", json!({"identity": "svc", "generate": true}))
        .await
        .expect(201)["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    server.terminate();

    let url = pg.create_db("moved");
    let data = home.data();
    let (ok, out) = run(
        &["migrate", "--from", data.to_str().unwrap(), "--to", &url],
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("audit chain valid") && out.contains("Next:"),
        "{out}"
    );
    let (ok, out) = run(
        &["migrate", "--from", data.to_str().unwrap(), "--to", &url],
        &[],
    );
    assert!(!ok && out.contains("already holds Tessera data"), "{out}");

    // The same data directory (its master key file) and certs, now on PostgreSQL.
    let mut node = Server::start_with(&home, &["--store", &url]);
    let admin = node.admin();
    assert_eq!(admin.verify(&keys[0].1).await, "REVOKED");
    for (_, secret) in &keys[1..] {
        assert_eq!(admin.verify(secret).await, "VALID");
    }
    admin.get(&format!("/v1/certs/{serial}")).await.expect(200);
    let audit = admin.get("/v1/audit/verify").await.expect(200);
    assert_eq!(audit["valid"], true, "{audit}");
    let (_, late) = admin.issue(&api, json!({"name": "late"})).await;

    // Backup of the PostgreSQL-backed node, restored into a fresh database.
    let backup = home.tmp.path().join("pg.backup");
    let (ok, out) = run(
        &[
            "backup",
            "--server",
            &node.url(""),
            "--ca",
            home.certs().join("ca.pem").to_str().unwrap(),
            "--cert",
            home.certs().join("admin.pem").to_str().unwrap(),
            "--key",
            home.certs().join("admin.key").to_str().unwrap(),
            "--out",
            backup.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{out}");
    node.terminate();
    let restored_url = pg.create_db("restored");
    let (ok, out) = run(
        &[
            "restore",
            backup.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--certs",
            home.certs().to_str().unwrap(),
            "--store",
            &restored_url,
        ],
        &[],
    );
    assert!(ok, "{out}");
    let node = Server::start_with(&home, &["--store", &restored_url]);
    let admin = node.admin();
    assert_eq!(admin.verify(&keys[0].1).await, "REVOKED");
    assert_eq!(admin.verify(&late).await, "VALID");
    assert_eq!(admin.verify(&keys[3].1).await, "VALID");
}

/// The node leading a singleton job (here tidy) is killed: another takes the job's lease
/// within its lifetime (10 s) and a renewal (2 s), with a higher fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_within_the_lease() {
    let mut c = Cluster::start(3, "leader");
    let lease = |pg: &Postgres| {
        pg.sql(
            "leader",
            "SELECT fence FROM tessera_leases WHERE name = 'tidy'",
        )
    };
    let leading = |c: &Cluster| -> Vec<usize> {
        (0..c.homes.len())
            .filter(|i| {
                let log = std::fs::read_to_string(c.homes[*i].log()).unwrap_or_default();
                log.lines()
                    .rfind(|l| l.contains("tidy"))
                    .is_some_and(|l| l.contains("leading this job") && !l.contains("no longer"))
            })
            .collect()
    };
    within(Duration::from_secs(10), || async { leading(&c).len() == 1 }).await;
    let leader = leading(&c)[0];
    let fence: u64 = lease(&c.pg).parse().unwrap();
    c.nodes[leader].kill9();
    let killed = Instant::now();
    loop {
        let now: u64 = lease(&c.pg).parse().unwrap();
        if now > fence {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no successor took the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    let successors: Vec<usize> = leading(&c).into_iter().filter(|i| *i != leader).collect();
    assert_eq!(successors.len(), 1, "one successor: {successors:?}");
    println!("tidy leader replaced {took:?} after a kill");
}

/// A create retried with the same Idempotency-Key replays the first answer on another node
/// (the same key, not a second one); with another body it is a conflict; another caller
/// with the same header value gets an object of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_retry_replays_on_another_node() {
    let c = Cluster::start(2, "idem");
    let (a, b) = (c.admin(0), c.admin(1));
    let api = a.create_api("idem").await;
    let create = |n: &Api, name: &str| {
        n.http
            .post(n.url(&format!("/v1/apis/{api}/keys")))
            .header("Idempotency-Key", "retry-7")
            .json(&json!({ "name": name }))
    };
    let first = a.send(create(&a, "one")).await;
    assert_eq!(first.status, 201);
    let again = b.send(create(&b, "one")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.json()["key"], first.json()["key"]);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(b.send(create(&b, "two")).await.status, 409);
    let listed = a.get(&format!("/v1/apis/{api}/keys")).await.expect(200);
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "one key, not two"
    );

    // Another principal, same header value: its own create.
    crate::helpers::bind(&a, "default", "other", &["tenant-admin"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = crate::helpers::identity_files(&a, dir.path(), "default", "other").await;
    let other = Api::new(
        &c.nodes[1],
        client_config(&c.homes[0].certs().join("ca.pem"), Some((&cert, &key))),
    );
    let theirs = other.send(create(&other, "one")).await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    assert!(theirs.headers.get("idempotent-replayed").is_none());
    assert_ne!(theirs.json()["key"], first.json()["key"]);
}

/// docs/cluster.md's nginx configuration, run as written (its ports replaced by free ones)
/// in front of three nodes: every verification through it answers, also after one node is
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_balancer_in_front_of_three_nodes() {
    let mut c = Cluster::start(3, "balanced");
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cluster.md")).unwrap();
    let conf = doc
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/cluster.md has an nginx block")
        .to_owned();
    let a = c.admin(0);
    let api = a.create_api("lb").await;
    let (_, secret) = a.issue(&api, json!({"name": "lb"})).await;
    let dir = tempfile::tempdir().unwrap();
    let mut lb = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = conf.replace("127.0.0.1:18440", &format!("127.0.0.1:{port}"));
        for (i, node) in c.nodes.iter().enumerate() {
            conf = conf.replace(&format!("127.0.0.1:1844{}", i + 1), &node.addr.to_string());
        }
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if let Some(n) = crate::gateway::Nginx::start(dir.path(), &conf, addr) {
            lb = Some((n, port));
            break;
        }
    }
    let (_nginx, port) = lb.expect("nginx started");
    let certs = c.homes[0].certs();
    let through = Api::with_base(
        format!("https://localhost:{port}"),
        client_config(
            &certs.join("ca.pem"),
            Some((&certs.join("admin.pem"), &certs.join("admin.key"))),
        ),
    );
    for _ in 0..9 {
        assert_eq!(through.verify(&secret).await, "VALID");
    }
    c.nodes[1].kill9();
    for _ in 0..9 {
        // A fresh connection each time: the balancer skips the dead node at connect.
        let fresh = Api::with_base(
            format!("https://localhost:{port}"),
            client_config(
                &certs.join("ca.pem"),
                Some((&certs.join("admin.pem"), &certs.join("admin.key"))),
            ),
        );
        assert_eq!(fresh.verify(&secret).await, "VALID");
    }
}

/// A CA and a certificate it signs for `localhost`, as PEM (certificate, key, CA).
fn tls_material() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (leaf.pem(), key.serialize_pem(), ca_cert.pem())
}

/// TLS to the database: with `sslmode=verify-full` and the database's CA, a node serves
/// over an encrypted connection; with another CA it refuses to start (it never falls back
/// to plaintext), and so does a URL naming a CA file that does not exist.
#[test]
fn tls_to_the_database_is_verified() {
    let (cert, key, ca) = tls_material();
    let pg = Postgres::start_with_tls(Some((&cert, &key)));
    pg.create_db("tls");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("db-ca.pem");
    std::fs::write(&good, &ca).unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, tls_material().2).unwrap();
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://tessera@localhost:{}/tls?sslmode=verify-full&sslrootcert={}",
            pg.port,
            ca.display()
        )
    };
    let home = Home::new();
    let server = Server::start_with(&home, &["--store", &url(&good)]);
    let count = |ssl: bool| -> u32 {
        pg.sql(
            "tls",
            &format!(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'tessera' AND s.ssl = {ssl}"
            ),
        )
        .parse()
        .unwrap()
    };
    assert!(count(true) > 0, "the node's connections are TLS");
    assert_eq!(count(false), 0, "and none is plaintext");
    drop(server);
    let (ok, out) = run(
        &[
            "audit",
            "verify",
            "--data",
            home.data().to_str().unwrap(),
            "--store",
            &url(&other),
        ],
        &[],
    );
    assert!(
        !ok,
        "a database whose certificate the CA did not sign: {out}"
    );
    assert!(
        out.contains("certificate") || out.contains("PostgreSQL"),
        "{out}"
    );
    let (ok, out) = run(
        &[
            "audit",
            "verify",
            "--data",
            home.data().to_str().unwrap(),
            "--store",
            &url(&dir.path().join("missing.pem")),
        ],
        &[],
    );
    assert!(!ok && out.contains("sslrootcert"), "{out}");
    let (ok, out) = run(
        &[
            "audit",
            "verify",
            "--data",
            home.data().to_str().unwrap(),
            "--store",
            &url(&good),
        ],
        &[],
    );
    assert!(ok, "the right CA: {out}");
}

/// Three nodes started at the same moment on an empty database, each given the same master
/// key (as an orchestrator starts replicas): every one comes up (the losers of the race to
/// create the keyring, the tenant and the CA open again and find the winner's), they publish
/// one CA, exactly one wrote the bootstrap admin credential, and a key issued on any node
/// verifies on every other.
#[tokio::test]
async fn nodes_started_together_on_an_empty_database_all_serve() {
    let pg = Postgres::start();
    let url = pg.create_db("together");
    let master_hex = hex::encode(&[7u8; 32]);
    let homes: Vec<Home> = (0..3).map(|_| Home::new()).collect();
    let started: Vec<Result<Server, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = homes
            .iter()
            .map(|home| {
                let (url, master_hex) = (&url, &master_hex);
                s.spawn(move || {
                    let config = home.tmp.path().join("tessera.toml");
                    std::fs::write(&config, NODE_CONFIG).unwrap();
                    Server::try_start_with_env(
                        home,
                        &["--store", url, "--config", config.to_str().unwrap()],
                        &[("TESSERA_MASTER_KEY", master_hex)],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut nodes = Vec::new();
    for (i, r) in started.into_iter().enumerate() {
        match r {
            Ok(n) => nodes.push(n),
            Err(log) => panic!("node {i} did not start:\n{log}"),
        }
    }
    let bundles: Vec<String> = homes
        .iter()
        .map(|h| std::fs::read_to_string(h.certs().join("ca.pem")).unwrap())
        .collect();
    assert!(bundles.iter().all(|b| *b == bundles[0]), "one CA for all");
    let with_admin: Vec<&Home> = homes
        .iter()
        .filter(|h| h.certs().join("admin.pem").exists())
        .collect();
    assert_eq!(with_admin.len(), 1, "one bootstrap admin credential");
    let certs = with_admin[0].certs();
    let admin_of = |node: &Server| {
        Api::new(
            node,
            client_config(
                &certs.join("ca.pem"),
                Some((&certs.join("admin.pem"), &certs.join("admin.key"))),
            ),
        )
    };
    for (i, node) in nodes.iter().enumerate() {
        let admin = admin_of(node);
        let api = admin.create_api(&format!("from-{i}")).await;
        let (_, key) = admin.issue(&api, json!({})).await;
        for other in &nodes {
            assert_eq!(admin_of(other).verify(&key).await, "VALID");
        }
    }
    assert_eq!(
        admin_of(&nodes[2])
            .get("/v1/audit/verify")
            .await
            .expect(200)["valid"],
        true
    );
}

/// The stored-object gauges count whole indexes, so one node of a cluster counts and reports
/// them: exactly one node exports `tessera_keys`, the one leading the `gauges` job. When it
/// is killed, its successor counts afresh (the two keys issued meanwhile) and reports.
#[tokio::test]
async fn one_node_counts_and_reports_the_stored_object_gauges() {
    let mut c = Cluster::start(3, "gauges");
    within(Duration::from_secs(10), || async {
        gauge_reporters(&c).await.len() == 1
    })
    .await;
    // Several rounds of lease renewal later, still one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = gauge_reporters(&c).await;
    assert_eq!(first.len(), 1, "one node reports: {first:?}");
    let leader = first[0].0;
    let log = std::fs::read_to_string(c.homes[leader].log()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("leading this job") && l.contains("gauges")),
        "the reporting node leads the gauges job"
    );
    let other = (leader + 1) % 3;
    let api = c.admin(other).create_api("counted").await;
    c.admin(other).issue(&api, json!({})).await;
    c.admin(other).issue(&api, json!({})).await;
    c.nodes[leader].kill9();
    within(Duration::from_secs(20), || async {
        let now = gauge_reporters(&c).await;
        now.len() == 1 && now[0].0 != leader && now[0].1 == "2"
    })
    .await;
}

/// The nodes exporting `tessera_keys{state="active"}`, with its value.
async fn gauge_reporters(c: &Cluster) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        if node.is_running() {
            let m = c.admin(i).get("/metrics").await.text;
            if let Some(line) = m
                .lines()
                .find(|l| l.starts_with("tessera_keys{state=\"active\"}"))
            {
                out.push((i, line.rsplit(' ').next().unwrap().to_owned()));
            }
        }
    }
    out
}

/// A binding narrowed on one node holds on the others at once: node B resolved (and cached)
/// a service's wide binding; narrowed on node A, the next call on B that needs the wide role is
/// refused within 2 s (the staleness bound is 5 s, so it is the change follower that brought
/// it, not a node too stale to use its cache).
#[tokio::test]
async fn a_binding_narrowed_on_one_node_is_narrowed_on_every_node() {
    let c = Cluster::start(2, "narrow");
    let dir = tempfile::tempdir().unwrap();
    let a = c.admin(0);
    crate::helpers::bind(&a, "default", "boss", &["tenant-admin"]).await;
    let (cert, key, _) = crate::helpers::identity_files(&a, dir.path(), "default", "boss").await;
    let boss_on_b = c.nodes[1].client(&cert, &key);
    let create =
        |i: usize| json!({"name": format!("x{i}"), "purpose": "p", "owner": "o", "risk": "low"});
    for i in 0..3 {
        boss_on_b.post("/v1/apis", create(i)).await.expect(201);
    }
    crate::helpers::bind(&a, "default", "boss", &["verifier"]).await;
    let mut i = 10;
    let took = within(Duration::from_secs(2), || {
        i += 1;
        let r = boss_on_b.post("/v1/apis", create(i));
        async move {
            let r = r.await;
            assert!(matches!(r.status, 201 | 403), "{}: {}", r.status, r.text);
            r.status == 403
        }
    })
    .await;
    println!("a narrowed binding held on the other node after {took:?}");
}

/// Every node computes the same per-scope sequence and chain from the shared log, whichever
/// node made the change, and signs with the same feed key: a verifier may follow any node.
#[tokio::test]
async fn every_node_serves_the_same_feed() {
    let c = Cluster::start(2, "feed");
    let (a, b) = (c.admin(0), c.admin(1));
    let api = a.create_api("edge").await;
    let (k1, _) = a.issue(&api, json!({})).await;
    b.post(&format!("/v1/keys/{k1}/revoke"), json!({}))
        .await
        .expect(200);
    let (k2, _) = b.issue(&api, json!({})).await;
    a.patch(&format!("/v1/keys/{k2}"), json!({"enabled": false}))
        .await
        .expect(200);
    let mut seen = Vec::new();
    for n in [&a, &b] {
        let mut events: Vec<Value> = Vec::new();
        let t = Instant::now();
        while events.len() < 4 {
            assert!(t.elapsed() < Duration::from_secs(10), "{events:?}");
            let page = n
                .get(&format!(
                    "/v1/feed/changes?scope=api:{api}&after={}&wait=2",
                    events.len()
                ))
                .await
                .expect(200);
            events.extend(page["events"].as_array().unwrap().iter().cloned());
        }
        let key = n.get("/v1/feed/key").await.expect(200)["public_key"].clone();
        seen.push((events, key));
    }
    assert_eq!(seen[0], seen[1]);
    let types: Vec<String> = seen[0]
        .0
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e["body"].as_str().unwrap()).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        ["key.created", "key.revoked", "key.created", "key.disabled"]
    );
}
