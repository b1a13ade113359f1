//! Trust invariants (docs/THREATS.md): privilege never grows by delegation on any path, a
//! tenant principal never acts on a wider one, and limits belong to a key's whole rotation
//! chain. Each test here failed on the code before its fix.

use serde_json::json;

use crate::{
    access::{bearer, put, tenant},
    helpers::{Home, Server, service},
};

/// A root key holding only `tenants:admin` may not rotate (and so obtain) or revoke a wider
/// root key of its tenant; it may rotate one within its own permissions.
#[tokio::test]
async fn root_key_rotation_and_revocation_never_reach_a_wider_key() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    tenant(&admin, "acme").await;
    let wide = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "acme", "name": "portal",
                "permissions": ["apis:read", "keys:create", "keys:read", "tenants:admin"]}),
        )
        .await
        .expect(201);
    let wide_id = wide["id"].as_str().unwrap();
    let narrow = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "acme", "name": "ops", "permissions": ["tenants:admin"]}),
        )
        .await
        .expect(201);
    let narrow_client = bearer(&server, narrow["key"].as_str().unwrap());

    let r = narrow_client
        .post(
            &format!("/v1/root-keys/{wide_id}/rotate"),
            json!({"grace_seconds": 3600}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(!r.text.contains("tsr_"), "no secret in a refusal");
    narrow_client
        .post(&format!("/v1/root-keys/{wide_id}/revoke"), json!({}))
        .await
        .expect(403);
    // The wide key is untouched: not superseded, not revoked.
    let w = admin
        .get(&format!("/v1/root-keys/{wide_id}"))
        .await
        .expect(200);
    assert_eq!(w["state"], "active", "{w}");
    assert!(w["rotation"].is_null(), "{w}");

    // Within its own permissions it may act: a root key it could have created itself.
    let peer = narrow_client
        .post("/v1/root-keys", json!({"permissions": ["tenants:admin"]}))
        .await
        .expect(201);
    let peer_id = peer["id"].as_str().unwrap();
    narrow_client
        .post(&format!("/v1/root-keys/{peer_id}/rotate"), json!({}))
        .await
        .expect(201);
}

/// A tenant principal never re-binds, unbinds, or rewrites the role of a principal wider than
/// itself.
#[tokio::test]
async fn a_tenant_principal_never_rebinds_or_unbinds_a_wider_one() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    tenant(&admin, "acme").await;
    admin
        .post(
            "/v1/tenants/acme/roles",
            json!({"name": "keyadmin", "permissions": ["tenants:admin", "keys:read"]}),
        )
        .await
        .expect(201);
    admin
        .post(
            "/v1/tenants/acme/roles",
            json!({"name": "wider", "permissions": ["keys:read", "keys:revoke", "certs:revoke"]}),
        )
        .await
        .expect(201);
    let limited = service(
        &server,
        &admin,
        dir.path(),
        "acme",
        "limited",
        &["keyadmin"],
    )
    .await;
    crate::helpers::bind(&admin, "acme", "boss", &["tenant-admin"]).await;
    crate::helpers::bind(&admin, "acme", "revoker", &["wider"]).await;

    // Re-binding the tenant admin to something small would strip it; unbinding likewise.
    put(
        &limited,
        "/v1/tenants/acme/bindings/boss",
        json!({"roles": ["keyadmin"]}),
    )
    .await
    .expect(403);
    limited
        .delete("/v1/tenants/acme/bindings/boss")
        .await
        .expect(403);
    limited
        .delete("/v1/tenants/acme/bindings/revoker")
        .await
        .expect(403);
    // Rewriting or deleting a role wider than the caller changes what others hold.
    put(
        &limited,
        "/v1/tenants/acme/roles/wider",
        json!({"permissions": ["keys:read"]}),
    )
    .await
    .expect(403);
    limited
        .delete("/v1/tenants/acme/roles/wider")
        .await
        .expect(403);
    // Nothing changed.
    let b = admin
        .get("/v1/tenants/acme/bindings/boss")
        .await
        .expect(200);
    assert_eq!(b["roles"], json!(["tenant-admin"]));
    let r = admin.get("/v1/tenants/acme/roles/wider").await.expect(200);
    assert_eq!(
        r["permissions"],
        json!(["keys:read", "keys:revoke", "certs:revoke"])
    );
    // Within its own reach it still works: a service bound to a role it holds.
    crate::helpers::bind(&admin, "acme", "reader", &["keyadmin"]).await;
    limited
        .delete("/v1/tenants/acme/bindings/reader")
        .await
        .expect(204);
}

/// Rotation with grace shares the old key's quota with its replacement: three keys of one
/// chain with `remaining = 3` give three VALID answers in all, not nine.
#[tokio::test]
async fn a_rotation_chain_shares_one_quota() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("quota").await;
    let (first_id, first) = admin.issue(&api, json!({"remaining": 3})).await;
    let second = admin
        .post(
            &format!("/v1/keys/{first_id}/rotate"),
            json!({"grace_seconds": 3600}),
        )
        .await
        .expect(201);
    assert_eq!(second["remaining"], 3, "{second}");
    let second_id = second["id"].as_str().unwrap();
    let third = admin
        .post(
            &format!("/v1/keys/{second_id}/rotate"),
            json!({"grace_seconds": 3600}),
        )
        .await
        .expect(201);
    let keys = [
        first,
        second["key"].as_str().unwrap().to_owned(),
        third["key"].as_str().unwrap().to_owned(),
    ];
    let mut valid = 0;
    for _ in 0..4 {
        for k in &keys {
            match admin.verify(k).await.as_str() {
                "VALID" => valid += 1,
                "USAGE_EXCEEDED" => {}
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(valid, 3, "the chain's quota was multiplied");
    // Every key of the chain reports the one budget.
    let v = admin.get(&format!("/v1/keys/{first_id}")).await.expect(200);
    assert_eq!(v["remaining"], 0, "{v}");
    // Setting the quota on the newest key sets it for the chain.
    let third_id = third["id"].as_str().unwrap();
    admin
        .patch(&format!("/v1/keys/{third_id}"), json!({"remaining": 1}))
        .await
        .expect(200);
    let mut valid = 0;
    for k in &keys {
        if admin.verify(k).await == "VALID" {
            valid += 1;
        }
    }
    assert_eq!(valid, 1);
}

/// The same for a per-key rate limit: two rotations with grace do not triple the window.
#[tokio::test]
async fn a_rotation_chain_shares_one_rate_limit() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("rate").await;
    let (first_id, first) = admin
        .issue(
            &api,
            json!({"ratelimit": {"limit": 2, "window_seconds": 3600}}),
        )
        .await;
    let mut keys = vec![first];
    let mut id = first_id;
    for _ in 0..2 {
        let next = admin
            .post(
                &format!("/v1/keys/{id}/rotate"),
                json!({"grace_seconds": 3600}),
            )
            .await
            .expect(201);
        id = next["id"].as_str().unwrap().to_owned();
        keys.push(next["key"].as_str().unwrap().to_owned());
    }
    let mut valid = 0;
    let mut limited = 0;
    for _ in 0..3 {
        for k in &keys {
            match admin.verify(k).await.as_str() {
                "VALID" => valid += 1,
                "RATE_LIMITED" => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(
        (valid, limited),
        (2, 7),
        "the chain's rate limit was multiplied"
    );
}

pub use crate::helpers::audit_after as entries_after;

pub async fn head(admin: &crate::helpers::Api) -> u64 {
    entries_after(admin, 0)
        .await
        .last()
        .map_or(0, |e| e["seq"].as_u64().unwrap())
}

/// The count a tally entry carries in its detail (`refused N times ...`).
pub fn tally(e: &serde_json::Value) -> u64 {
    e["detail"]
        .as_str()
        .and_then(|d| d.strip_prefix("refused "))
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tally: {e}"))
}

/// Nobody without a credential makes Tessera write per request: 300 refused requests from one
/// source become a handful of entries whose counts add up to 300.
#[tokio::test]
async fn refusals_without_a_credential_are_tallied_not_written_one_by_one() {
    let home = Home::new();
    let server = Server::start_with_config(&home, "[audit]\nrefusal_window_seconds = 1\n");
    let admin = server.admin();
    let before = head(&admin).await;
    let anonymous = server.anonymous();
    let garbage = bearer(&server, "tsr_notarealkeyatall");
    for i in 0..300 {
        let who = if i % 2 == 0 { &anonymous } else { &garbage };
        let r = who
            .post(
                "/v1/apis",
                json!({"name": "x", "purpose": "p", "owner": "o", "risk": "low"}),
            )
            .await;
        assert!(
            r.status == 401 || r.status == 429,
            "{} {}",
            r.status,
            r.text
        );
    }
    // Methods are the client's to choose: made-up ones are one name, not one tally each.
    for i in 0..40 {
        let method = reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let r = garbage
            .send(garbage.http.request(method, garbage.url("/v1/apis")))
            .await;
        assert!(r.status >= 400, "{}", r.status);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let new = entries_after(&admin, before).await;
    let odd: Vec<_> = new
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("OTHER "))
        })
        .collect();
    assert!(
        !odd.is_empty() && odd.len() <= 4,
        "{} entries for made-up methods: {odd:?}",
        odd.len()
    );
    assert!(
        new.iter()
            .all(|e| !e["action"].as_str().unwrap_or("").starts_with('X')),
        "a made-up method named an action"
    );
    let refusals: Vec<_> = new
        .iter()
        .filter(|e| e["action"] == "POST /v1/apis")
        .collect();
    assert!(
        refusals.len() <= 8,
        "{} entries for 300 refusals: {new:?}",
        refusals.len()
    );
    assert_eq!(refusals.iter().map(|e| tally(e)).sum::<u64>(), 300);
    let metrics = admin.get("/metrics").await.expect_text(200);
    assert!(
        metrics.contains("tessera_audit_refusals_total{outcome=\"unauthenticated\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tessera_audit_head_seq"));
}

/// Forward-auth answers are verification: neither the gateway's 204s nor the end clients'
/// refusals are written one by one, whatever method the gateway passes on.
#[tokio::test]
async fn forward_auth_answers_are_not_written_one_by_one() {
    let home = Home::new();
    let server = Server::start_with_config(&home, "[audit]\nrefusal_window_seconds = 1\n");
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("gw").await;
    let (_, key) = admin.issue(&api, json!({})).await;
    let gateway = service(
        &server,
        &admin,
        dir.path(),
        "default",
        "gateway",
        &["verifier"],
    )
    .await;
    let before = head(&admin).await;
    for i in 0..40 {
        let k = if i % 2 == 0 {
            key.as_str()
        } else {
            "tsk_garbage"
        };
        let r = gateway
            .send(
                gateway
                    .http
                    .post(gateway.url("/v1/auth/check"))
                    .header("x-api-key", k),
            )
            .await;
        assert_eq!(r.status, if i % 2 == 0 { 204 } else { 401 }, "{}", r.text);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let new = entries_after(&admin, before).await;
    let checks: Vec<_> = new
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.contains("/v1/auth/check"))
        })
        .collect();
    assert_eq!(checks.len(), 1, "{new:?}");
    assert_eq!(checks[0]["outcome"], "end_client_unauthenticated");
    assert_eq!(tally(checks[0]), 20);

    // The Envoy form carries the end client's original path, which may hold a capability
    // token of that API: it never reaches the log.
    let capability = "share-token-Zk3qv9Lm2";
    let r = gateway
        .send(
            gateway
                .http
                .get(gateway.url(&format!("/v1/auth/check/files/{capability}")))
                .header("x-api-key", &key),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(home.log()).unwrap();
    assert!(
        log.contains("/v1/auth/check/{path}"),
        "the request was not logged"
    );
    assert!(!log.contains(capability), "an end client's path was logged");
}

/// An `Authorization` header authenticates nothing on a public route, so it does not switch
/// the per-source throttle off; a locked-out source is refused on public routes too.
#[tokio::test]
async fn a_header_does_not_switch_the_public_throttle_off() {
    let home = Home::new();
    let server = Server::start(&home);
    let garbage = bearer(&server, "tsr_notarealkeyatall");
    let mut limited = 0;
    for _ in 0..120 {
        if garbage.get("/openapi.json").await.status == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "120 requests at once were never throttled");

    // Lock the source out with refused bearer keys on a protected route...
    let home = Home::new();
    let server = Server::start(&home);
    let garbage = bearer(&server, "tsr_notarealkeyatall");
    let mut locked = false;
    for _ in 0..40 {
        if garbage.get("/v1/whoami").await.status == 429 {
            locked = true;
            break;
        }
    }
    assert!(locked, "the source was never locked out");
    // ...then even a credential-less request to a public route waits.
    let r = server.anonymous().get("/v1/pki/ca").await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    // A valid client certificate is never refused for others' failures.
    server.admin().get("/v1/whoami").await.expect(200);

    // A real credential in the header still counts as one on the routes that read it: a
    // root key's requests are throttled per principal (burst 1000), not per source (40).
    let home = Home::new();
    let server = Server::start(&home);
    let rk = server
        .admin()
        .post("/v1/root-keys", json!({"permissions": ["keys:read"]}))
        .await
        .expect(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let portal = bearer(&server, &rk);
    for i in 0..80 {
        let r = portal.get("/v1/whoami").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
    }
}

/// A tenant's auditor reads its own entries through its own index: no global sequence
/// numbers or hashes (the chain's length), an opaque cursor, and no chain-wide operations.
#[tokio::test]
async fn a_tenant_auditor_never_sees_the_global_chain() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    tenant(&admin, "acme").await;
    tenant(&admin, "other").await;
    for (t, n) in [("acme", 3), ("other", 5)] {
        for i in 0..n {
            admin
                .post(
                    "/v1/apis",
                    json!({"tenant": t, "name": format!("a{i}"), "purpose": "p", "owner": "o", "risk": "low"}),
                )
                .await
                .expect(201);
        }
    }
    let auditor = service(&server, &admin, dir.path(), "acme", "aud", &["auditor"]).await;
    let mut seen = Vec::new();
    let mut cursors = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/audit?limit=2&cursor={c}"),
            None => "/v1/audit?limit=2".to_owned(),
        };
        let page = auditor.get(&path).await.expect(200);
        for e in page["items"].as_array().unwrap() {
            assert_eq!(e["tenant"], "acme", "{e}");
            for field in ["seq", "hash", "prev_hash"] {
                assert!(e.get(field).is_none(), "{field} shown to a tenant: {e}");
            }
            seen.push(e.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                cursors.push(c.to_owned());
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    // The cursors are opaque: no entry's global sequence number can be read from them (they
    // are sealed), and another tenant cannot use one.
    let seqs: Vec<u64> = entries_after(&admin, 0)
        .await
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(!cursors.is_empty());
    for c in &cursors {
        let raw = tessera::crypto::hex::decode(c).unwrap_or_else(|| c.as_bytes().to_vec());
        let hay = String::from_utf8_lossy(&raw);
        for seq in &seqs {
            assert!(
                !hay.contains(&format!("{seq:020}")),
                "cursor {c} shows seq {seq}"
            );
        }
    }
    let other = service(&server, &admin, dir.path(), "other", "aud", &["auditor"]).await;
    other
        .get(&format!("/v1/audit?limit=2&cursor={}", cursors[0]))
        .await
        .expect(400);
    let acme_entries = entries_after(&admin, 0)
        .await
        .into_iter()
        .filter(|e| e["tenant"] == "acme")
        .count();
    assert_eq!(seen.len(), acme_entries);
    assert!(seen.len() >= 4, "{seen:?}");
    auditor.get("/v1/audit?after_seq=0").await.expect(400);
    auditor.get("/v1/audit/verify").await.expect(403);
    auditor.get("/v1/audit/checkpoint").await.expect(403);
    auditor
        .get("/v1/audit/checkpoint?fresh=true")
        .await
        .expect(403);
    admin.get("/v1/audit/verify").await.expect(200);
}

/// Guessing unseal shares is a credential attack like any other: refused shares lock the source
/// out (even from valid shares), and every attempt made while sealed is in the audit log once
/// the server is unsealed, tallied.
#[tokio::test]
async fn unseal_honours_lockouts_and_is_audited_once_unsealed() {
    let home = Home::new();
    let shares = crate::custody::init(&home);
    let server = Server::start_with_config(
        &home,
        "[audit]\nrefusal_window_seconds = 1\n\
         [limits]\nlockout_threshold = 5\nlockout_seconds = 2\n",
    );
    let anon = server.anonymous();
    let wrong = json!({"share": format!("share-1: {}", "ab".repeat(33))});
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(anon.post("/v1/sys/unseal", wrong.clone()).await.status);
    }
    assert_eq!(&statuses[..5], &[400; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Locked out: even a valid share waits.
    let r = anon
        .post("/v1/sys/unseal", json!({"share": shares[0]}))
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    // A locked-out source waits on every public route, status included.
    anon.get("/v1/sys/status").await.expect(429);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let status = anon.get("/v1/sys/status").await.expect(200);
    assert!(
        status["progress"].is_null() || status["progress"] == 0,
        "a refused request made progress: {status}"
    );
    for s in &shares[..3] {
        anon.post("/v1/sys/unseal", json!({ "share": s }))
            .await
            .expect(200);
    }
    let admin = server.admin();
    admin.get("/v1/whoami").await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let entries = entries_after(&admin, 0).await;
    let unseal: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "POST /v1/sys/unseal")
        .collect();
    let refused: u64 = unseal
        .iter()
        .filter(|e| e["outcome"] == "invalid")
        .map(|e| tally(e))
        .sum();
    let limited: u64 = unseal
        .iter()
        .filter(|e| e["outcome"] == "rate_limited")
        .map(|e| tally(e))
        .sum();
    assert_eq!((refused, limited), (5, 4), "{unseal:?}");
}

/// A client certificate in a browser is sent with every request the browser makes to
/// Tessera, whichever page asks: a page of another site must not get the certificate's
/// authority through a form post or a body-less `no-cors` fetch (neither needs a preflight).
#[tokio::test]
async fn a_page_of_another_site_cannot_act_with_a_certificate_the_browser_holds() {
    let home = Home::new();
    let server = Server::start_with_config(&home, "[audit]\nrefusal_window_seconds = 1\n");
    let admin = server.admin();
    let api = admin.create_api("shop").await;
    let (key_id, key) = admin.issue(&api, json!({})).await;
    let before = head(&admin).await;
    let own_origin = format!("https://localhost:{}", server.addr.port());
    let send = |headers: &'static [(&'static str, &'static str)], path: String| {
        let mut req = admin.http.post(admin.url(&path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        admin.send(req)
    };
    // What a cross-site form post looks like, and a `fetch(.., {mode: "no-cors"})` from an
    // older browser that says only its Origin.
    let form: &[(&str, &str)] = &[
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
        ("origin", "https://evil.example"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let same_site: &[(&str, &str)] = &[("sec-fetch-site", "same-site")];
    let origin_only: &[(&str, &str)] = &[("origin", "https://evil.example")];
    let null_origin: &[(&str, &str)] = &[("origin", "null")];
    for headers in [form, same_site, origin_only, null_origin] {
        let r = send(headers, format!("/v1/keys/{key_id}/revoke")).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text);
        assert!(r.text.contains("another site"), "{}", r.text);
        let r = send(headers, "/v1/sys/seal".into()).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text);
    }
    assert_eq!(admin.verify(&key).await, "VALID");
    let status = server.anonymous().get("/v1/sys/status").await.expect(200);
    assert_eq!(status["sealed"], false);
    // Every method: a cross-site PATCH, PUT or DELETE changes nothing either.
    let cross = |req: reqwest::RequestBuilder| {
        admin.send(
            req.header("sec-fetch-site", "cross-site")
                .header("origin", "https://evil.example"),
        )
    };
    let r = cross(
        admin
            .http
            .patch(admin.url(&format!("/v1/keys/{key_id}")))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = cross(
        admin
            .http
            .put(admin.url("/v1/tenants/default/bindings/orders"))
            .json(&json!({"roles": ["verifier"]})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = cross(admin.http.delete(admin.url(&format!("/v1/apis/{api}")))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(admin.verify(&key).await, "VALID");
    admin.get(&format!("/v1/apis/{api}")).await.expect(200);
    admin
        .get("/v1/tenants/default/bindings/orders")
        .await
        .expect(404);
    // A GET on an authenticated route too (an `<img>` can send one): a fresh audit checkpoint
    // is written on a GET, and a whole-chain check is expensive. Refused before any handler.
    for path in [
        "/v1/audit/checkpoint?fresh=true",
        "/v1/audit/verify",
        "/v1/whoami",
    ] {
        let r = cross(admin.http.get(admin.url(path))).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        assert!(r.text.contains("another site"), "{}", r.text);
    }
    // Public routes may be fetched or linked from anywhere: the CA bundle, the console.
    for path in ["/v1/pki/ca", "/ui/", "/healthz"] {
        let r = cross(admin.http.get(admin.url(path))).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    // Forward auth is exempt: those headers are the end client's, relayed by the gateway.
    let r = cross(
        admin
            .http
            .get(admin.url(&format!("/v1/auth/check?api_id={api}")))
            .header("x-api-key", &key),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    // No other origin may load any answer as a resource.
    let r = admin.get("/v1/whoami").await;
    assert_eq!(r.headers["cross-origin-resource-policy"], "same-origin");
    // The 14 refusals above are tallied, not written one by one (refused before anyone is
    // authenticated: a page elsewhere cannot make Tessera write per request either).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let denied: Vec<serde_json::Value> = entries_after(&admin, before)
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.iter().map(tally).sum::<u64>(), 14, "{denied:?}");
    assert!(denied.len() < 14, "written one by one: {denied:?}");
    // The console's own calls (same origin), and clients that are not browsers, act.
    let console = admin
        .send(
            admin
                .http
                .post(admin.url(&format!("/v1/keys/{key_id}")))
                .header("sec-fetch-site", "same-origin")
                .header("origin", &own_origin)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(console.status, 405, "routing reached: {}", console.text);
    let r = admin
        .send(
            admin
                .http
                .post(admin.url(&format!("/v1/keys/{key_id}/revoke")))
                .header("origin", &own_origin),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(admin.verify(&key).await, "REVOKED");
}
