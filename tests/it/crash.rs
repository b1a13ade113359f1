//! The crash harness: a mixed load (key issue, rotate, revoke, rename; certificate issue and
//! revoke; root keys, tenants and role bindings)
//! is SIGKILLed at random moments; after each restart every acknowledged write must be there
//! and every acknowledged revocation must hold. 50 kill points by default
//! (`TESSERA_CRASH_POINTS` for more). The seed is printed; `TESSERA_CRASH_SEED=<seed>` replays
//! the same operations, kill delays and samples (the interleaving of the workers with the kill
//! is up to the machine). A worker that gets any answer but the expected 2xx fails the test
//! with it; only a connection cut by the kill ends a worker quietly. After each restart every
//! write acknowledged before the kill must also have its audit entry. Custom roles and
//! enrolment tokens (redeemed with a CSR) are in the load too, and every fifth kill lands
//! inside a keyring rewrap pass (held by the fault-injecting store between a record's read
//! and its compare-and-swap); after the last restart the rewrap finishes.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use crate::helpers::{Api, Home, Server};

#[derive(Clone, Debug)]
enum Acked {
    Key {
        secret: String,
        revoked: bool,
    },
    Cert {
        serial: String,
        pem: String,
        revoked: bool,
    },
    /// A revocation was sent; if it was not acknowledged it may or may not have landed.
    Attempt(String),
    /// An acknowledged write's audit entry: (action, object).
    Audited(&'static str, String),
    /// A key renamed (its only rename).
    Named {
        id: String,
        name: String,
    },
    /// A root key created.
    RootKey(String),
    /// A tenant created.
    Tenant(String),
    /// A service bound to `verifier` in the default tenant.
    Binding(String),
    /// A custom role of the default tenant granting `keys:read`.
    Role(String),
}

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One worker's share of the load, until the server goes away. Its operations come from its
/// own generator (seeded from the run's seed). An answer other than the expected 2xx is put
/// in `errors` and ends the worker; a transport failure (the kill) ends it quietly.
async fn load(
    admin: Api,
    api: String,
    acked: Arc<Mutex<Vec<Acked>>>,
    errors: Arc<Mutex<Vec<String>>>,
    seed: u64,
) {
    // Scrambled, so that the workers' sequences do not run along the run's own (a worker
    // seeded with the next output of the same xorshift would repeat the others' choices).
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut rng = Rng((z ^ (z >> 31)) | 1);
    // `Some(resp)` with the expected status; `None` ends the worker (an error is recorded
    // unless the connection was cut).
    macro_rules! call {
        ($what:expr, $path:expr, $body:expr, $status:expr) => {
            call!($what, reqwest::Method::POST, $path, $body, $status)
        };
        ($what:expr, $method:expr, $path:expr, $body:expr, $status:expr) => {{
            match admin
                .try_call($method, AsRef::<str>::as_ref(&$path), $body)
                .await
            {
                None => return,
                Some(r) if r.status == $status => r,
                Some(r) => {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("{} answered {}: {}", $what, r.status, r.text));
                    return;
                }
            }
        }};
    }
    loop {
        let op = rng.next() % 16;
        let tag = rng.next() % 1_000_000_000;
        match op {
            10 => {
                let r = call!(
                    "issuing a key",
                    format!("/v1/apis/{api}/keys"),
                    json!({}),
                    201
                );
                let id = r.json()["id"].as_str().unwrap().to_owned();
                let name = format!("renamed-{tag}");
                call!(
                    "renaming a key",
                    reqwest::Method::PATCH,
                    format!("/v1/keys/{id}"),
                    json!({ "name": name }),
                    200
                );
                acked.lock().unwrap().extend([
                    Acked::Audited("PATCH /v1/keys/{id}", id.clone()),
                    Acked::Named { id, name },
                ]);
            }
            11 => {
                let r = call!(
                    "creating a root key",
                    "/v1/root-keys",
                    json!({"name": format!("rk-{tag}"), "permissions": ["apis:read"]}),
                    201
                );
                let v = r.json();
                acked.lock().unwrap().extend([
                    Acked::Audited("POST /v1/root-keys", v["id"].as_str().unwrap().to_owned()),
                    Acked::RootKey(v["key"].as_str().unwrap().to_owned()),
                ]);
            }
            12 => {
                let name = format!("t-{tag}");
                let r = call!(
                    "creating a tenant",
                    "/v1/tenants",
                    json!({ "name": name }),
                    201
                );
                acked.lock().unwrap().extend([
                    Acked::Audited(
                        "POST /v1/tenants",
                        r.json()["id"].as_str().unwrap().to_owned(),
                    ),
                    Acked::Tenant(name),
                ]);
            }
            13 => {
                let name = format!("svc-{tag}");
                call!(
                    "binding a role",
                    reqwest::Method::PUT,
                    format!("/v1/tenants/default/bindings/{name}"),
                    json!({"roles": ["verifier"]}),
                    200
                );
                acked.lock().unwrap().extend([
                    Acked::Audited(
                        "PUT /v1/tenants/{t}/bindings/{identity}",
                        format!("default/{name}"),
                    ),
                    Acked::Binding(name),
                ]);
            }
            14 => {
                let name = format!("r-{tag}");
                call!(
                    "creating a custom role",
                    "/v1/tenants/default/roles",
                    json!({"name": name, "permissions": ["keys:read"]}),
                    201
                );
                acked.lock().unwrap().extend([
                    Acked::Audited("POST /v1/tenants/{t}/roles", format!("default/{name}")),
                    Acked::Role(name),
                ]);
            }
            15 => {
                let identity = format!("enrolled-{tag}");
                let r = call!(
                    "creating an enrolment token",
                    "/v1/enrolment-tokens",
                    json!({ "identity": identity }),
                    201
                );
                let v = r.json();
                let token = v["token"].as_str().unwrap().to_owned();
                acked.lock().unwrap().push(Acked::Audited(
                    "POST /v1/enrolment-tokens",
                    v["id"].as_str().unwrap().to_owned(),
                ));
                let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                    .unwrap()
                    .serialize_request(&rcgen::KeyPair::generate().unwrap())
                    .unwrap()
                    .pem()
                    .unwrap();
                let r = call!(
                    "enrolling with a token",
                    "/v1/enrol",
                    json!({"token": token, "identity": identity, "csr": csr}),
                    201
                );
                let v = r.json();
                acked.lock().unwrap().push(Acked::Cert {
                    serial: v["serial"].as_str().unwrap().to_owned(),
                    pem: v["certificate"].as_str().unwrap().to_owned(),
                    revoked: false,
                });
            }
            0..=3 => {
                let r = call!(
                    "issuing a key",
                    format!("/v1/apis/{api}/keys"),
                    json!({}),
                    201
                );
                let v = r.json();
                let secret = v["key"].as_str().unwrap().to_owned();
                let id = v["id"].as_str().unwrap().to_owned();
                acked.lock().unwrap().extend([
                    Acked::Key {
                        secret: secret.clone(),
                        revoked: false,
                    },
                    Acked::Audited("POST /v1/apis/{id}/keys", id.clone()),
                ]);
                if op % 2 == 0 {
                    acked.lock().unwrap().push(Acked::Attempt(secret.clone()));
                    call!(
                        "revoking a key",
                        format!("/v1/keys/{id}/revoke"),
                        json!({}),
                        200
                    );
                    acked.lock().unwrap().extend([
                        Acked::Key {
                            secret,
                            revoked: true,
                        },
                        Acked::Audited("POST /v1/keys/{id}/revoke", id),
                    ]);
                } else {
                    let r = call!(
                        "rotating a key",
                        format!("/v1/keys/{id}/rotate"),
                        json!({"grace_seconds": 86400}),
                        201
                    );
                    let v = r.json();
                    let secret = v["key"].as_str().unwrap().to_owned();
                    let new_id = v["id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().extend([
                        Acked::Key {
                            secret,
                            revoked: false,
                        },
                        Acked::Audited("POST /v1/keys/{id}/rotate", new_id),
                    ]);
                }
            }
            _ => {
                let r = call!(
                    "issuing a certificate",
                    "/v1/certs",
                    json!({"identity": "crash", "generate": true}),
                    201
                );
                let v = r.json();
                let serial = v["serial"].as_str().unwrap().to_owned();
                let pem = v["certificate"].as_str().unwrap().to_owned();
                acked.lock().unwrap().extend([
                    Acked::Cert {
                        serial: serial.clone(),
                        pem: pem.clone(),
                        revoked: false,
                    },
                    Acked::Audited("POST /v1/certs", serial.clone()),
                ]);
                if op >= 8 {
                    acked.lock().unwrap().push(Acked::Attempt(serial.clone()));
                    call!(
                        "revoking a certificate",
                        format!("/v1/certs/{serial}/revoke"),
                        json!({}),
                        200
                    );
                    acked.lock().unwrap().extend([
                        Acked::Cert {
                            serial: serial.clone(),
                            pem,
                            revoked: true,
                        },
                        Acked::Audited("POST /v1/certs/{serial}/revoke", serial),
                    ]);
                }
            }
        }
    }
}

/// The ids whose revocation was acknowledged, and those whose revocation was sent.
fn outcomes(all: &[Acked]) -> (Vec<String>, Vec<String>) {
    let revoked = all
        .iter()
        .filter_map(|a| match a {
            Acked::Key {
                secret,
                revoked: true,
            } => Some(secret.clone()),
            Acked::Cert {
                serial,
                revoked: true,
                ..
            } => Some(serial.clone()),
            _ => None,
        })
        .collect();
    let attempted = all
        .iter()
        .filter_map(|a| match a {
            Acked::Attempt(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    (revoked, attempted)
}

/// What the acknowledged history allows for one object after a crash.
fn allowed(id: &str, revoked: &[String], attempted: &[String]) -> &'static [&'static str] {
    if revoked.iter().any(|r| r == id) {
        &["REVOKED"]
    } else if attempted.iter().any(|r| r == id) {
        &["VALID", "REVOKED"]
    } else {
        &["VALID"]
    }
}

async fn check(admin: &Api, a: &Acked, revoked: &[String], attempted: &[String]) {
    match a {
        Acked::Key { secret, .. } => {
            let got = admin.verify(secret).await;
            assert!(
                allowed(secret, revoked, attempted).contains(&got.as_str()),
                "key after a crash: {got}"
            );
        }
        Acked::Cert { serial, pem, .. } => {
            admin.get(&format!("/v1/certs/{serial}")).await.expect(200);
            let v = admin
                .post("/v1/certs/verify", json!({"certificate": pem}))
                .await
                .expect(200);
            let got = v["code"].as_str().unwrap();
            assert!(
                allowed(serial, revoked, attempted).contains(&got),
                "certificate {serial} after a crash: {got}"
            );
        }
        Acked::Named { id, name } => {
            let k = admin.get(&format!("/v1/keys/{id}")).await.expect(200);
            assert_eq!(k["name"], name.as_str(), "an acknowledged rename was lost");
        }
        Acked::RootKey(secret) => {
            let r = admin
                .send(
                    admin
                        .http
                        .get(admin.url("/v1/apis"))
                        .header("authorization", format!("Bearer {secret}")),
                )
                .await;
            assert_eq!(
                r.status, 200,
                "an acknowledged root key was lost: {}",
                r.text
            );
        }
        Acked::Tenant(name) => {
            admin.get(&format!("/v1/tenants/{name}")).await.expect(200);
        }
        Acked::Binding(name) => {
            let b = admin
                .get(&format!("/v1/tenants/default/bindings/{name}"))
                .await
                .expect(200);
            assert_eq!(b["roles"], json!(["verifier"]), "{b}");
        }
        Acked::Role(name) => {
            let r = admin
                .get(&format!("/v1/tenants/default/roles/{name}"))
                .await
                .expect(200);
            assert_eq!(r["permissions"], json!(["keys:read"]), "{r}");
        }
        Acked::Attempt(_) | Acked::Audited(..) => {}
    }
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    crash_harness(None, 50).await;
}

/// The same harness with the node on PostgreSQL: a kill -9 of the node (the database keeps
/// running) loses nothing it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_on_postgres_loses_nothing_acknowledged() {
    let pg = crate::pg::Postgres::start();
    let url = pg.create_db("crash");
    crash_harness(Some(&url), 20).await;
}

/// Kills the server at random moments under a mixed write load, `points` times (or
/// `TESSERA_CRASH_POINTS`), on the embedded store or on the PostgreSQL database `store`.
async fn crash_harness(store: Option<&str>, default_points: usize) {
    let points: usize = std::env::var("TESSERA_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_points);
    let seed = match std::env::var("TESSERA_CRASH_SEED") {
        Ok(v) => v.parse::<u64>().expect("TESSERA_CRASH_SEED is a number"),
        Err(_) => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
    };
    eprintln!(
        "crash harness seed {seed}, {points} kill points (replay: TESSERA_CRASH_SEED={seed} \
         TESSERA_CRASH_POINTS={points})"
    );
    let mut rng = Rng(seed);
    let home = Home::new();
    // The load runs as fast as it can: the per-principal throttle is out of its way, so that any
    // refusal is a finding.
    let config = home.tmp.path().join("tessera.toml");
    std::fs::write(
        &config,
        "[limits]\nrequests_per_second = 100000\nburst = 100000\n",
    )
    .unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    if let Some(url) = store {
        args.extend(["--store", url]);
    }
    // Every fifth kill point lands inside a keyring rewrap pass: the fault-injecting store
    // (debug builds) holds the rewrap right after it read a key record under the old data key,
    // and the kill comes while it is held, i.e. between a record's read and its swap.
    let rules = home.tmp.path().join("faults");
    std::fs::write(&rules, "").unwrap();
    let envs = [("TESSERA_TEST_FAULTS", rules.to_str().unwrap())];
    let paused = home.tmp.path().join("faults.paused");
    let mut server = Server::start_with_env(&home, &args, &envs);
    let api = server.admin().create_api("crash").await;
    let mut rewraps_killed = 0;
    let mut all: Vec<Acked> = Vec::new();
    // The audit entries read so far, as (action, object), and the last sequence number read.
    let mut audited = std::collections::HashSet::new();
    let mut audit_seq = 0u64;
    for point in 0..points {
        let admin = server.admin();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(load(
                    admin.clone(),
                    api.clone(),
                    acked.clone(),
                    errors.clone(),
                    rng.next(),
                ))
            })
            .collect();
        let delay = Duration::from_millis(30 + rng.next() % 300);
        if point % 5 == 4 {
            let _ = std::fs::remove_file(&paused);
            // Held at the first record of a kind: an API (the start of the pass), a
            // certificate, a key (further in: the audit entries come before it).
            let kind = ["api", "cert", "key"][(point / 5) % 3];
            std::fs::write(&rules, format!("pause-rewrap {kind}")).unwrap();
            admin
                .post("/v1/sys/rotate-keyring", json!({}))
                .await
                .expect(200);
            // The rewrap job runs every second (on PostgreSQL, once the killed node's lease
            // has lapsed); wait (bounded) for it to be held.
            for _ in 0..300 {
                if paused.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(delay).await;
            rewraps_killed += usize::from(paused.exists());
        } else {
            tokio::time::sleep(delay).await;
        }
        server.kill9();
        std::fs::write(&rules, "").unwrap();
        for w in workers {
            w.await.unwrap();
        }
        let errors = errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "kill point {point} (seed {seed}): the load got refusals: {errors:#?}"
        );
        let fresh = acked.lock().unwrap().clone();
        all.extend(fresh.iter().cloned());
        let (revoked, attempted) = outcomes(&all);

        server = Server::start_with_env(&home, &args, &envs);
        let admin = server.admin();
        // Everything acknowledged just before this kill, and a sample of what came before.
        for a in &fresh {
            check(&admin, a, &revoked, &attempted).await;
        }
        // Every acknowledged write of this round has its audit entry (written in the same
        // batch as the change, so a kill right after the answer cannot lose it).
        loop {
            let page = admin
                .get(&format!("/v1/audit?after_seq={audit_seq}&limit=100"))
                .await
                .expect(200);
            let items = page["items"].as_array().unwrap();
            let Some(last) = items.last() else { break };
            audit_seq = last["seq"].as_u64().unwrap();
            for e in items {
                if e["outcome"] == "success" {
                    audited.insert((
                        e["action"].as_str().unwrap().to_owned(),
                        e["object"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
        for a in &fresh {
            if let Acked::Audited(action, object) = a {
                assert!(
                    audited.contains(&((*action).to_owned(), object.clone())),
                    "kill point {point} (seed {seed}): no audit entry for the acknowledged \
                     {action} of {object}"
                );
            }
        }
        for _ in 0..10.min(all.len()) {
            let a = &all[(rng.next() as usize) % all.len()];
            check(&admin, a, &revoked, &attempted).await;
        }
    }
    assert!(
        all.len() > points,
        "the load made progress: {} acknowledged writes",
        all.len()
    );
    eprintln!("{rewraps_killed} kills landed inside a rewrap pass");
    assert!(
        rewraps_killed >= points / 10,
        "only {rewraps_killed} kills landed inside a rewrap"
    );
    // The interrupted rewraps are finished: one data-key version is left.
    let admin = server.admin();
    for _ in 0..600 {
        let s = admin.get("/v1/sys/status").await.expect(200);
        if s["keyring"]["versions"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        admin.get("/v1/sys/status").await.expect(200)["keyring"]["versions"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the rewrap never finished after the kills"
    );
    // Every acknowledged write, now all under the new data key.
    let (revoked, attempted) = outcomes(&all);
    for a in &all {
        check(&admin, a, &revoked, &attempted).await;
    }
    // The audit chain survived every kill.
    assert_eq!(
        server.admin().get("/v1/audit/verify").await.expect(200)["valid"],
        true
    );
}
