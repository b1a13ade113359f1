//! Documented guarantees that had no test of their own (issue 21): each test here names the
//! promise it holds, and each was seen to fail once with the code it guards broken (see
//! docs/TESTING.md).

use crate::proc::Timed;
use std::{process::Command, sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{Api, BIN, Home, Server, audit_after, client_config, identity_files, service};

/// A mutation's audit entry is written in the same atomic batch as the change: the moment the
/// 2xx arrives, the entry is durable too. Each write is followed at once by a SIGKILL, with no
/// wait and no poll; after the restart the change and its entry are both there.
#[tokio::test]
async fn the_audit_entry_is_in_the_same_batch_as_its_change() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let api = server.admin().create_api("same-batch").await;
    for round in 0..6 {
        let admin = server.admin();
        let (kid, key) = admin
            .issue(&api, json!({"name": format!("r{round}")}))
            .await;
        // Read back at once, still without any wait: the entry is already readable.
        let now = audit_after(&admin, 0).await;
        assert!(
            now.iter()
                .any(|e| e["object"] == kid.as_str() && e["outcome"] == "success"),
            "round {round}: the entry of {kid} was not there when its 201 arrived"
        );
        let (_, key2) = admin.issue(&api, json!({})).await;
        let serial = admin
            .post("/v1/certs", json!({"identity": "batch", "generate": true}))
            .await
            .expect(201)["serial"]
            .as_str()
            .unwrap()
            .to_owned();
        admin
            .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
            .await
            .expect(200);
        server.kill9();
        server = Server::start(&home);
        let admin = server.admin();
        assert_eq!(admin.verify(&key).await, "VALID");
        assert_eq!(admin.verify(&key2).await, "VALID");
        let log = audit_after(&admin, 0).await;
        for (action, object) in [
            ("POST /v1/apis/{id}/keys", kid.as_str()),
            ("POST /v1/certs", serial.as_str()),
            ("POST /v1/certs/{serial}/revoke", serial.as_str()),
        ] {
            assert!(
                log.iter().any(|e| e["action"] == action
                    && e["object"] == object
                    && e["outcome"] == "success"),
                "round {round}: no {action} entry for {object} after a kill -9 right after its \
                 answer"
            );
        }
        assert_eq!(
            admin.get("/v1/audit/verify").await.expect(200)["valid"],
            true
        );
    }
}

/// Usage counters are the documented exception to "acknowledged means durable": a quota
/// change is persisted at most about a second behind, so a crash re-grants at most ~1 s of
/// usage. Both sides of that bound: after the bound has passed a SIGKILL loses no usage; right
/// after use it may re-grant, but never more than was used, and never takes more.
#[tokio::test]
async fn quota_usage_survives_a_crash_within_the_documented_bound() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("quota").await;
    let (kid, key) = admin.issue(&api, json!({"remaining": 20})).await;
    for _ in 0..7 {
        assert_eq!(admin.verify(&key).await, "VALID");
    }
    // Past the documented bound (about a second), with margin.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill9();
    server = Server::start(&home);
    let admin = server.admin();
    let k = admin.get(&format!("/v1/keys/{kid}")).await.expect(200);
    assert_eq!(
        k["remaining"], 13,
        "usage older than the bound was lost: {k}"
    );

    // Used, then killed at once: at most the usage of that last second comes back.
    for _ in 0..5 {
        assert_eq!(admin.verify(&key).await, "VALID");
    }
    server.kill9();
    server = Server::start(&home);
    let admin = server.admin();
    let left = admin.get(&format!("/v1/keys/{kid}")).await.expect(200)["remaining"]
        .as_u64()
        .unwrap();
    assert!(
        (8..=13).contains(&left),
        "remaining {left} after 5 of 13 used"
    );
    // And the quota is still exact from there.
    let mut valid = 0;
    for _ in 0..(left + 3) {
        if admin.verify(&key).await == "VALID" {
            valid += 1;
        }
    }
    assert_eq!(valid, left);
    drop(server);
}

/// Keys a gateway sends to forward auth for its end clients are the end clients' credentials:
/// however many are refused, the gateway's source is not locked out.
#[tokio::test]
async fn end_client_keys_at_forward_auth_never_lock_the_gateway_out() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\nlockout_threshold = 3\nlockout_seconds = 60\nunauthenticated_burst = 1000\n",
    );
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("edge").await;
    let (_, good) = admin.issue(&api, json!({})).await;
    let gw = service(&server, &admin, dir.path(), "default", "gw", &["verifier"]).await;
    let unknown = tessera::crypto::apikey::ApiKey::generate(
        &tessera::crypto::apikey::KeyPrefix::parse("tsk").unwrap(),
    )
    .unwrap()
    .expose()
    .to_owned();
    let unknown_root = tessera::crypto::apikey::ApiKey::generate(
        &tessera::crypto::apikey::KeyPrefix::parse("tsr").unwrap(),
    )
    .unwrap()
    .expose()
    .to_owned();
    // Ten times the threshold of refused end-client credentials: unknown, malformed, and an
    // end client's own `Authorization` header.
    for i in 0..30 {
        let mut rb = gw.http.get(gw.url("/v1/auth/check"));
        rb = match i % 3 {
            0 => rb.header("x-api-key", &unknown),
            1 => rb.header("x-api-key", "tsk_garbage"),
            _ => rb
                .header("x-api-key", &unknown)
                .header("authorization", format!("Bearer {unknown_root}")),
        };
        let r = gw.send(rb).await;
        assert_eq!(r.status, 401, "end-client refusal {i}: {}", r.text);
    }
    // The gateway still gets answers, and nothing else from its address is locked out: a
    // credential-less request and a (wrong) bearer of its own are treated as usual.
    let r = gw
        .send(
            gw.http
                .get(gw.url("/v1/auth/check"))
                .header("x-api-key", &good),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    server.anonymous().get("/healthz").await.expect(200);
    let anon = server.anonymous();
    let r = anon
        .send(
            anon.http
                .get(anon.url("/v1/whoami"))
                .header("authorization", format!("Bearer {unknown_root}")),
        )
        .await;
    assert_eq!(r.status, 401, "the source was locked out: {}", r.text);
    assert!(
        !audit_after(&admin, 0)
            .await
            .iter()
            .any(|e| e["action"] == "lockout"),
        "a lockout was recorded"
    );
}

/// Without a configured trusted proxy, `X-Forwarded-For` names nothing: refusals count against
/// the TCP peer whatever the header says, so a client cannot spread its failures over made-up
/// addresses, nor escape a lockout by changing the header.
#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\nlockout_threshold = 3\nlockout_seconds = 60\nunauthenticated_burst = 1000\n",
    );
    let anon = server.anonymous();
    let bad = |xff: &str| {
        anon.http
            .get(anon.url("/v1/whoami"))
            .header("x-forwarded-for", xff)
            .header(
                "authorization",
                "Bearer tsr_000000000000000000000000000000000000000",
            )
    };
    for (i, xff) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
        let r = anon.send(bad(xff)).await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    // Three failures from one peer: locked out, whatever address the header claims next.
    let r = anon.send(bad("10.9.9.9")).await;
    assert_eq!(r.status, 429, "{}", r.text);
    let log = audit_after(&server.admin(), 0).await;
    assert!(
        log.iter()
            .any(|e| e["action"] == "lockout" && e["principal"] == "source:127.0.0.1"),
        "the lockout names the peer"
    );
    assert!(
        !log.iter()
            .any(|e| e["principal"].as_str().is_some_and(|p| p.contains("10."))),
        "an address from the header reached the audit log"
    );
}

/// A locked-out source gets 429 with `Retry-After` for bearer and for credential-less requests
/// (README, "Limits and abuse resistance"), on routes that need a credential and on public
/// ones; a valid client certificate from the same address is still served.
#[tokio::test]
async fn a_locked_out_source_gets_429_without_a_credential_too() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\nlockout_threshold = 3\nlockout_seconds = 60\nunauthenticated_burst = 1000\n",
    );
    let anon = server.anonymous();
    let bearer = || {
        anon.http.get(anon.url("/v1/whoami")).header(
            "authorization",
            "Bearer tsr_000000000000000000000000000000000000000",
        )
    };
    for _ in 0..3 {
        anon.send(bearer()).await.expect(401);
    }
    let r = anon.send(bearer()).await;
    assert_eq!(r.status, 429);
    for path in ["/v1/whoami", "/healthz", "/v1/pki/ca", "/openapi.json"] {
        let r = anon.get(path).await;
        assert_eq!(r.status, 429, "{path} without a credential: {}", r.text);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{path}: retry-after {retry}");
    }
    server.admin().get("/v1/whoami").await.expect(200);
}

/// An `Idempotency-Key` belongs to its caller: another principal sending the same key and
/// body gets its own answer (or a refusal), never the first caller's secret.
#[tokio::test]
async fn an_idempotent_replay_is_never_served_to_another_principal() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("idem").await;
    let other = service(
        &server,
        &admin,
        dir.path(),
        "default",
        "portal",
        &["issuer"],
    )
    .await;
    let path = format!("/v1/apis/{api}/keys");
    let body = json!({"name": "once"});
    let post = |who: &Api| {
        who.http
            .post(who.url(&path))
            .header("Idempotency-Key", "shared-1")
            .json(&body)
    };
    let first = admin.send(post(&admin)).await.expect(201);
    let secret = first["key"].as_str().unwrap();
    let r = other.send(post(&other)).await;
    assert!(!r.text.contains(secret), "another principal got the secret");
    assert!(
        !r.headers.contains_key("idempotent-replayed"),
        "replayed to another principal: {}",
        r.text
    );
    if r.status == 201 {
        assert_ne!(r.json()["id"], first["id"], "the same key: {}", r.text);
    } else {
        assert_eq!(r.status, 409, "{}", r.text);
    }
    // The first caller's retry still gets its own answer.
    let again = admin.send(post(&admin)).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.expect(201)["key"], first["key"]);
}

/// Narrowing what a principal may do takes effect on its very next request: a custom role's
/// permissions reduced, then the binding itself narrowed (no cache serves the old grant).
#[tokio::test]
async fn narrowing_a_role_or_binding_takes_effect_at_once() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    admin
        .post(
            "/v1/tenants/default/roles",
            json!({"name": "ops", "permissions": ["apis:read", "keys:read"]}),
        )
        .await
        .expect(201);
    let svc = service(&server, &admin, dir.path(), "default", "ops-bot", &["ops"]).await;
    // Warm whatever is cached: several reads that are allowed.
    for _ in 0..3 {
        svc.get("/v1/apis").await.expect(200);
    }
    admin
        .send(
            admin
                .http
                .put(admin.url("/v1/tenants/default/roles/ops"))
                .json(&json!({"permissions": ["keys:read"]})),
        )
        .await
        .expect(200);
    let r = svc.get("/v1/apis").await;
    assert_eq!(r.status, 403, "the narrowed role still granted: {}", r.text);

    // A binding narrowed from a wide role to a narrow one.
    let boss = service(
        &server,
        &admin,
        dir.path(),
        "default",
        "boss",
        &["tenant-admin"],
    )
    .await;
    for _ in 0..3 {
        boss.get("/v1/apis").await.expect(200);
    }
    crate::helpers::bind(&admin, "default", "boss", &["verifier"]).await;
    let r = boss
        .post(
            "/v1/apis",
            json!({"name": "x", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await;
    assert_eq!(
        r.status, 403,
        "the narrowed binding still granted: {}",
        r.text
    );
}

/// Revocation holds on a kept HTTP/2 connection: the next stream after the revocation is
/// refused, on the same connection that was served before it.
#[tokio::test]
async fn revocation_holds_on_a_kept_http2_connection() {
    let home = Home::new();
    let server = Server::start_with_config(&home, "[server]\nhttp2 = true\n");
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::bind(&admin, "default", "h2", &["auditor"]).await;
    let (cert, key, serial) = identity_files(&admin, dir.path(), "default", "h2").await;
    let mut cfg = client_config(&server.certs.join("ca.pem"), Some((&cert, &key)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    let get = |path: &str| {
        let send = send.clone();
        let uri = format!("https://localhost:{}{path}", server.addr.port());
        async move {
            let mut send = send.ready().await.unwrap();
            let req = http02::Request::get(uri).body(()).unwrap();
            let (resp, _) = send.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
            }
            (status, String::from_utf8_lossy(&text).into_owned())
        }
    };
    for _ in 0..3 {
        let (status, body) = get("/v1/whoami").await;
        assert_eq!(status, 200, "{body}");
    }
    admin
        .post(
            &format!("/v1/certs/{serial}/revoke"),
            json!({"reason": "key_compromise"}),
        )
        .await
        .expect(200);
    let (status, body) = get("/v1/whoami").await;
    assert_eq!(
        status, 401,
        "a revoked certificate's kept HTTP/2 connection was served: {body}"
    );
    assert!(!driver.is_finished(), "the same connection carried it");
    driver.abort();
}

/// Flags win over the environment, which wins over the configuration file: the trust domain
/// and log format set in all the places they can be.
#[tokio::test]
async fn the_environment_wins_over_the_file_and_flags_over_both() {
    let home = Home::new();
    let config = home.tmp.path().join("tessera.toml");
    std::fs::write(
        &config,
        "trust_domain = \"file.example\"\nlog_format = \"human\"\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let server = Server::start_with_env(
        &home,
        &["--config", config.to_str().unwrap()],
        &[
            ("TESSERA_TRUST_DOMAIN", "env.example"),
            ("TESSERA_LOG_FORMAT", "json"),
            // The helper's `--listen 127.0.0.1:0` flag must win over this.
            ("TESSERA_LISTEN", "127.0.0.1:1"),
        ],
    );
    assert_ne!(server.addr.port(), 1, "the flag's address was bound");
    let who = server.admin().get("/v1/whoami").await.expect(200);
    assert_eq!(
        who["identity"], "spiffe://env.example/system/admin",
        "{who}"
    );
    let log = std::fs::read_to_string(home.log()).unwrap();
    let line = log
        .lines()
        .find(|l| !l.trim().is_empty())
        .expect("a log line");
    assert!(
        serde_json::from_str::<Value>(line).is_ok(),
        "the environment's JSON log format: {line}"
    );
}

/// A master-key file readable by group or others is refused at start, with the fix named;
/// mode 0600 starts.
#[tokio::test]
async fn a_group_or_world_readable_master_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let mut server = Server::start(&home);
    server.terminate();
    let file = home.data().join("master.key");
    for mode in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new("timeout")
            .args(["20", BIN, "serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(home.data())
            .arg("--certs")
            .arg(home.certs())
            .env_remove("TESSERA_MASTER_KEY")
            .output_timed()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(
            out.status.code(),
            Some(124),
            "mode {mode:o}: the server started: {said}"
        );
        assert!(!out.status.success(), "mode {mode:o}: {said}");
        assert!(
            said.contains("readable by group or others") && said.contains("chmod 600"),
            "mode {mode:o}: {said}"
        );
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&home);
    server.admin().get("/v1/whoami").await.expect(200);
}
