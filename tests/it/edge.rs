//! Verification at the edge: the signed change feed as a reader sees it (chains recomputed,
//! checkpoints checked with the published key, scopes kept apart), and the `tessera-verify`
//! examples as real downstream services in their own processes, following a real Tessera.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use ring::signature;
use serde_json::{Value, json};

use crate::{
    access::tenant,
    helpers::{Api, BIN, Home, Server, identity_files, service},
    vectors::{hex, unhex},
};

/// The chain hash as docs/edge.md defines it, computed here independently of the server.
fn chain(scope: &str, prev: &[u8], seq: u64, body: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"tessera-feed-v1");
    ctx.update(scope.as_bytes());
    ctx.update(&[0]);
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(body.as_bytes());
    ctx.finish().as_ref().to_vec()
}

/// Checks a checkpoint's signature with the published key, and that it names `scope`.
fn check_checkpoint(cp: &Value, public_key: &str, scope: &str) {
    let msg = format!(
        "tessera-feed-checkpoint-v1\n{}\n{}\n{}\n{}\n",
        cp["scope"].as_str().unwrap(),
        cp["seq"],
        cp["hash"].as_str().unwrap(),
        cp["time_ms"]
    );
    signature::UnparsedPublicKey::new(&signature::ED25519, unhex(public_key))
        .verify(msg.as_bytes(), &unhex(cp["signature"].as_str().unwrap()))
        .expect("the checkpoint verifies with the published feed key");
    assert_eq!(cp["scope"], scope);
    assert_eq!(cp["public_key"], public_key);
}

/// The first `want` events of `scope` after `after` (waiting for them: the node follows the
/// store's log a few milliseconds behind the commits), each checked against the chain from
/// `prev`, and then no more; returns the bodies and the checked head.
async fn read_all(
    api: &Api,
    scope: &str,
    public_key: &str,
    (mut after, mut prev): (u64, Vec<u8>),
    want: usize,
) -> (Vec<Value>, u64, Vec<u8>) {
    let mut bodies = Vec::new();
    loop {
        let wait = if bodies.len() < want { 10 } else { 0 };
        let page = api
            .get(&format!(
                "/v1/feed/changes?scope={scope}&after={after}&wait={wait}"
            ))
            .await
            .expect(200);
        assert_eq!(page["reset"], false);
        check_checkpoint(&page["checkpoint"], public_key, scope);
        let events = page["events"].as_array().unwrap();
        for e in events {
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(seq, after + 1, "gap-free");
            let body = e["body"].as_str().unwrap();
            prev = chain(scope, &prev, seq, body);
            assert_eq!(e["hash"].as_str().unwrap(), hex(&prev));
            bodies.push(serde_json::from_str::<Value>(body).unwrap());
            after = seq;
        }
        if events.is_empty() {
            assert_eq!(bodies.len(), want, "{scope}: {bodies:?}");
            assert_eq!(page["checkpoint"]["seq"].as_u64().unwrap(), after);
            assert_eq!(page["checkpoint"]["hash"].as_str().unwrap(), hex(&prev));
            return (bodies, after, prev);
        }
    }
}

fn types(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_feed_is_chained_signed_scoped_and_carries_nothing_secret() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    tenant(&admin, "acme").await;
    tenant(&admin, "other").await;
    let dir = home.tmp.path();

    // The feed key is public; its checkpoints are what a verifier pins.
    let key = server.anonymous().get("/v1/feed/key").await.expect(200);
    assert_eq!(key["algorithm"], "ed25519");
    let pk = key["public_key"].as_str().unwrap().to_owned();
    assert_eq!(pk.len(), 64);

    let edge = service(&server, &admin, dir, "acme", "edge", &["verifier"]).await;
    let issuer = service(&server, &admin, dir, "acme", "portal", &["tenant-admin"]).await;
    let api = issuer.create_api("orders").await;
    let other_api = {
        let v = admin
            .post(
                "/v1/apis",
                json!({"name": "theirs", "purpose": "t", "owner": "o", "risk": "low", "tenant": "other"}),
            )
            .await
            .expect(201);
        v["id"].as_str().unwrap().to_owned()
    };

    let tscope = "tenant:acme";
    let ascope = format!("api:{api}");
    let snap = edge
        .get(&format!("/v1/feed/snapshot?scope={tscope}"))
        .await
        .expect(200);
    check_checkpoint(&snap["checkpoint"], &pk, tscope);
    assert_eq!(snap["retention_seconds"], 3600);
    assert_eq!(snap["revoked_certificates"], json!([]));
    let start = snap["checkpoint"]["seq"].as_u64().unwrap();
    let start_hash = unhex(snap["checkpoint"]["hash"].as_str().unwrap());

    // Every kind of key change, and a certificate revocation.
    let (k1, secret) = issuer.issue(&api, json!({"scopes": ["orders:read"]})).await;
    issuer
        .patch(&format!("/v1/keys/{k1}"), json!({"enabled": false}))
        .await
        .expect(200);
    issuer
        .patch(&format!("/v1/keys/{k1}"), json!({"enabled": true}))
        .await
        .expect(200);
    issuer
        .patch(
            &format!("/v1/keys/{k1}"),
            json!({"scopes": ["orders:write"]}),
        )
        .await
        .expect(200);
    let rotated = issuer
        .post(
            &format!("/v1/keys/{k1}/rotate"),
            json!({"grace_seconds": 60}),
        )
        .await
        .expect(201);
    let k2 = rotated["id"].as_str().unwrap().to_owned();
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    issuer
        .post(&format!("/v1/keys/{k2}/revoke"), json!({}))
        .await
        .expect(200);
    let (_, _, serial) = identity_files(&admin, dir, "acme", "doomed").await;
    issuer
        .post(
            &format!("/v1/certs/{serial}/revoke"),
            json!({"reason": "key_compromise"}),
        )
        .await
        .expect(200);
    // Another tenant's changes.
    admin.issue(&other_api, json!({})).await;
    let (_, _, theirs_serial) = identity_files(&admin, dir, "other", "doomed").await;
    admin
        .post(&format!("/v1/certs/{theirs_serial}/revoke"), json!({}))
        .await
        .expect(200);

    let (bodies, head, _) = read_all(&edge, tscope, &pk, (start, start_hash), 8).await;
    assert_eq!(
        types(&bodies),
        [
            "key.created",
            "key.disabled",
            "key.enabled",
            "key.changed",
            "key.rotated",
            "key.created",
            "key.revoked",
            "cert.revoked"
        ]
    );
    assert_eq!(bodies[0]["key_id"], k1.as_str());
    assert_eq!(bodies[4]["superseded_by"], k2.as_str());
    assert!(bodies[4]["stops_at"].is_string());
    assert_eq!(bodies[7]["serial"], serial.as_str());
    assert!(bodies.iter().all(|b| b["tenant"] == "acme"));

    // Nothing secret: only ids, types and times; neither key's secret nor any hash of it.
    let allowed = [
        "type",
        "time",
        "tenant",
        "key_id",
        "api_id",
        "superseded_by",
        "stops_at",
        "serial",
        "issuer",
    ];
    for b in &bodies {
        for field in b.as_object().unwrap().keys() {
            assert!(allowed.contains(&field.as_str()), "{field} in the feed");
        }
        let text = b.to_string();
        assert!(!text.contains(&secret) && !text.contains(&new_secret));
    }

    // A snapshot of the tenant lists its revoked certificates (not another tenant's); an
    // API's lists none (certificates are not an API's).
    let snap = edge
        .get(&format!("/v1/feed/snapshot?scope={tscope}"))
        .await
        .expect(200);
    assert_eq!(
        snap["revoked_certificates"],
        json!([{"issuer": bodies[7]["issuer"], "serial": serial}])
    );
    let api_snap = edge
        .get(&format!("/v1/feed/snapshot?scope={ascope}"))
        .await
        .expect(200);
    assert!(api_snap.get("revoked_certificates").is_none());

    // The API's scope has its own numbering and chain, and only the key events.
    let (api_bodies, _, _) = read_all(&edge, &ascope, &pk, (0, vec![0; 32]), 7).await;
    assert_eq!(types(&api_bodies), types(&bodies[..7]));

    // Another tenant's scopes do not exist for this reader; neither does a feed without
    // the permission.
    edge.get("/v1/feed/snapshot?scope=tenant:other")
        .await
        .expect(404);
    edge.get(&format!("/v1/feed/changes?scope=api:{other_api}&after=0"))
        .await
        .expect(404);
    let reader = service(&server, &admin, dir, "acme", "reader", &["auditor"]).await;
    reader
        .get(&format!("/v1/feed/snapshot?scope={tscope}"))
        .await
        .expect(403);
    // The global admin reads any tenant's; the other tenant's chain holds its own change.
    let (theirs, _, _) = read_all(&admin, "tenant:other", &pk, (0, vec![0; 32]), 2).await;
    assert_eq!(types(&theirs), ["key.created", "cert.revoked"]);

    // Bad input is named; a cursor beyond the head is a reset, not a guess.
    for (path, field) in [
        ("/v1/feed/snapshot?scope=acme".to_owned(), "scope"),
        (
            format!("/v1/feed/changes?scope={tscope}&after=0&wait=31"),
            "wait",
        ),
        (format!("/v1/feed/changes?scope={tscope}&after=x"), "after"),
    ] {
        let v = edge.get(&path).await.expect(400);
        assert_eq!(v["error"]["field"], field, "{path}");
    }
    let page = edge
        .get(&format!(
            "/v1/feed/changes?scope={tscope}&after={}",
            head + 5
        ))
        .await
        .expect(200);
    assert_eq!(page["reset"], true);
    assert!(page["events"].as_array().unwrap().is_empty());

    // A long poll returns when an event arrives, not at its timeout.
    let waiting = {
        let edge = edge.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let page = edge
                .get(&format!(
                    "/v1/feed/changes?scope={tscope}&after={head}&wait=30"
                ))
                .await
                .expect(200);
            (page, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (k3, _) = issuer.issue(&api, json!({})).await;
    let (page, took) = waiting.await.unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert!(page["events"][0]["body"].as_str().unwrap().contains(&k3));
    assert!(took < Duration::from_secs(20), "the poll waited {took:?}");

    // Server-Sent Events, resumed with Last-Event-ID: the events after it, then a checkpoint.
    let mut stream = edge
        .http
        .get(edge.url(&format!("/v1/feed/stream?scope={tscope}")))
        .header("Last-Event-ID", (head - 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    while !text.contains("event: checkpoint") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.chunk())
            .await
            .expect("the stream sends within its heartbeat")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ids, [head, head + 1]);
    let cp_line = text
        .lines()
        .skip_while(|l| *l != "event: checkpoint")
        .nth(1)
        .unwrap();
    let cp: Value = serde_json::from_str(cp_line.strip_prefix("data: ").unwrap()).unwrap();
    check_checkpoint(&cp, &pk, tscope);
    assert_eq!(cp["seq"], head + 1);
    // Another tenant's changes send this stream nothing (not even a checkpoint): a reader
    // learns nothing of when other tenants change things. The heartbeat is 2 s away.
    let sent = Instant::now();
    for _ in 0..3 {
        admin.issue(&other_api, json!({})).await;
    }
    let quiet = Duration::from_millis(1700).saturating_sub(sent.elapsed());
    assert!(
        tokio::time::timeout(quiet, stream.chunk()).await.is_err(),
        "the stream spoke of another tenant's change"
    );
    // An idle stream keeps sending checkpoints (the heartbeat), each newer or as new.
    let mut beats = 0;
    let mut last_time = cp["time_ms"].as_i64().unwrap();
    let mut rest = String::new();
    while beats < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.chunk())
            .await
            .expect("a heartbeat within its interval")
            .unwrap()
            .unwrap();
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(i) = rest.find("\n\n") {
            let ev: String = rest.drain(..i + 2).collect();
            if let Some(data) = ev.strip_prefix("event: checkpoint\ndata: ") {
                let cp: Value = serde_json::from_str(data.trim()).unwrap();
                check_checkpoint(&cp, &pk, tscope);
                assert!(cp["time_ms"].as_i64().unwrap() >= last_time);
                last_time = cp["time_ms"].as_i64().unwrap();
                beats += 1;
            }
        }
    }
    let bad = edge
        .send(
            edge.http
                .get(edge.url(&format!("/v1/feed/stream?scope={tscope}")))
                .header("Last-Event-ID", "abc"),
        )
        .await
        .expect(400);
    assert_eq!(bad["error"]["field"], "Last-Event-ID");
}

/// A downstream example in its own process; killed when dropped.
struct Downstream {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Downstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example(name: &str) -> PathBuf {
    let path = Path::new(BIN).parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is built by `cargo test` (or `cargo build --examples`)",
        path.display()
    );
    path
}

impl Downstream {
    /// Starts example `name`; what it logs goes to `log`. (It serves plain HTTP on loopback;
    /// the client is given Tessera's CA only because it needs some TLS configuration.)
    fn start(name: &str, env: &[(&str, String)], ca: &Path, log: &Path) -> Self {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(crate::helpers::client_config(ca, None))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(example(name))
            .env("LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        // Owned (and so killed) from here on, whatever fails next.
        let mut me = Self {
            child,
            base: String::new(),
            http,
        };
        let out = me.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        me.base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} did not start"));
        me
    }

    async fn health(&self) -> Value {
        self.http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_fresh(&self) {
        let t = Instant::now();
        while self.health().await["fresh"] != true {
            assert!(t.elapsed() < Duration::from_secs(30), "never fresh");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /orders` with `key`: the status and, when 200, where the answer came from.
    async fn orders(&self, key: &str) -> (u16, Option<String>) {
        let r = self
            .http
            .get(format!("{}/orders", self.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        eprintln!("{status} {v}");
        (status, v["source"].as_str().map(str::to_owned))
    }
}

/// What a downstream needs to follow `scope` as the `verifier` identity `name` of `tenant`.
async fn downstream_env(
    server: &Server,
    admin: &Api,
    dir: &Path,
    name: &str,
    scope: &str,
    feed_key: &str,
) -> Vec<(&'static str, String)> {
    crate::helpers::bind(admin, "default", name, &["verifier"]).await;
    let (cert, key, _) = identity_files(admin, dir, "default", name).await;
    vec![
        ("TESSERA_URL", server.url("")),
        (
            "TESSERA_CA",
            server.certs.join("ca.pem").display().to_string(),
        ),
        ("TESSERA_CERT", cert.display().to_string()),
        ("TESSERA_KEY", key.display().to_string()),
        ("TESSERA_SCOPE", scope.to_owned()),
        ("TESSERA_FEED_KEY", feed_key.to_owned()),
        ("TESSERA_MAX_STALENESS_MS", "3000".to_owned()),
    ]
}

#[tokio::test]
async fn a_verifier_in_another_process_follows_revocations_and_fails_closed_when_tessera_is_gone() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let dir = home.tmp.path();
    let api = admin.create_api("orders").await;
    let scope = format!("api:{api}");
    let feed_key = server.anonymous().get("/v1/feed/key").await.expect(200)["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let env = downstream_env(&server, &admin, dir, "orders", &scope, &feed_key).await;
    let ca = server.certs.join("ca.pem");
    let log = dir.join("downstream.log");
    let actix = Downstream::start("verify_actix", &env, &ca, &log);
    let axum = Downstream::start("verify_axum", &env, &ca, &log);
    actix.wait_fresh().await;
    axum.wait_fresh().await;

    // Issued → verified by Tessera once, then locally, in both ecosystems.
    let (k1, key1) = admin.issue(&api, json!({"scopes": ["orders:read"]})).await;
    for d in [&actix, &axum] {
        assert_eq!(d.orders(&key1).await, (200, Some("tessera".into())));
        assert_eq!(d.orders(&key1).await, (200, Some("local".into())));
    }
    // Refusals are uniform 401s: a key without the scope (its refusal cached too), garbage, a
    // key of another API.
    let (_, narrow) = admin.issue(&api, json!({"scopes": ["orders:write"]})).await;
    let other_api = admin.create_api("billing").await;
    let (_, foreign) = admin
        .issue(&other_api, json!({"scopes": ["orders:read"]}))
        .await;
    for k in [narrow.as_str(), "tsk_garbage", foreign.as_str()] {
        assert_eq!(actix.orders(k).await.0, 401, "{k}");
    }
    // A key with a quota is verified by Tessera every time (a local answer would spend
    // nothing).
    let (_, quota) = admin
        .issue(&api, json!({"scopes": ["orders:read"], "remaining": 3}))
        .await;
    for _ in 0..3 {
        assert_eq!(actix.orders(&quota).await, (200, Some("tessera".into())));
    }
    assert_eq!(actix.orders(&quota).await.0, 401);
    // A sender-constrained key: the example's middleware knows no end-client identity, so the
    // key is refused, even one bound to the downstream's own identity (which Tessera would
    // otherwise compare with the verifier's certificate, accepting it from anyone).
    let (_, bound) = admin
        .issue(
            &api,
            json!({"scopes": ["orders:read"],
                   "bound_to": "spiffe://tessera.local/tenant/default/svc/orders"}),
        )
        .await;
    for d in [&actix, &axum] {
        assert_eq!(d.orders(&bound).await.0, 401);
    }

    // Revoked in Tessera → refused by both verifiers, within the staleness bound (3 s).
    let revoked_at = Instant::now();
    admin
        .post(&format!("/v1/keys/{k1}/revoke"), json!({}))
        .await
        .expect(200);
    for d in [&actix, &axum] {
        loop {
            if d.orders(&key1).await.0 == 401 {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(3),
                "a revoked key was still accepted after the staleness bound"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eprintln!(
        "revocation → refused by both downstreams in {:?}",
        revoked_at.elapsed()
    );

    // A verifier pinned to another key never trusts the feed: it refuses (and with
    // `TESSERA_WHEN_STALE=ask` it only ever asks Tessera).
    let (_, key2) = admin.issue(&api, json!({"scopes": ["orders:read"]})).await;
    let mut forged_env = env.clone();
    for (k, v) in forged_env.iter_mut() {
        if *k == "TESSERA_FEED_KEY" {
            *v = "ab".repeat(32);
        }
    }
    let forged = Downstream::start("verify_actix", &forged_env, &ca, &log);
    forged_env.push(("TESSERA_WHEN_STALE", "ask".into()));
    let asking = Downstream::start("verify_actix", &forged_env, &ca, &log);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(forged.health().await["fresh"], false);
    assert_eq!(forged.orders(&key2).await.0, 503);
    for _ in 0..2 {
        assert_eq!(asking.orders(&key2).await, (200, Some("tessera".into())));
    }

    // Tessera killed: the cached key keeps working until the bound, then is refused.
    assert_eq!(actix.orders(&key2).await, (200, Some("tessera".into())));
    assert_eq!(actix.orders(&key2).await, (200, Some("local".into())));
    server.kill9();
    let killed_at = Instant::now();
    assert_eq!(actix.orders(&key2).await, (200, Some("local".into())));
    let refused_after = loop {
        let (status, _) = actix.orders(&key2).await;
        if status != 200 {
            assert_eq!(status, 503);
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(6),
            "still answering from a feed that stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("Tessera killed → cached key refused after {refused_after:?} (bound 3 s)");
    assert!(refused_after >= Duration::from_millis(500));
    assert_eq!(actix.health().await["fresh"], false);
    // And a key it never saw cannot be verified at all.
    assert_eq!(asking.orders(&key2).await.0, 503);
}
