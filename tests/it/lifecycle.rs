//! The API registry and the key lifecycle through the real server.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Home, Server};

#[tokio::test]
async fn whole_key_lifecycle() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("billing").await;

    // Issue: the secret once, never cacheable.
    let r = admin
        .post(
            &format!("/v1/apis/{api}/keys"),
            json!({"name": "acme", "scopes": ["read", "write"], "metadata": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(r.headers["cache-control"], "no-store");
    let v = r.expect(201);
    let (id, key) = (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    );
    assert!(key.starts_with("tsk_"));
    assert_eq!(v["start"], key[..8]);

    let ok = admin
        .verify_with(json!({"key": key, "api_id": api, "scopes": ["read"]}))
        .await;
    assert_eq!(ok["code"], "VALID");
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["key_id"], id.as_str());
    assert_eq!(ok["metadata"]["plan"], "pro");
    assert_eq!(ok["tenant"], "default");

    // Reads never return the secret.
    let got = admin.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert!(!got.to_string().contains(&key[4..]));
    let listed = admin.get(&format!("/v1/apis/{api}/keys")).await.expect(200);
    assert!(!listed.to_string().contains(&key[4..]));
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Narrow the scopes: a request needing `write` is now refused.
    admin
        .patch(&format!("/v1/keys/{id}"), json!({"scopes": ["read"]}))
        .await
        .expect(200);
    let v = admin
        .verify_with(json!({"key": key, "scopes": ["write"]}))
        .await;
    assert_eq!(v["code"], "INSUFFICIENT_SCOPES");
    assert_eq!(v["valid"], false);

    // Disable and re-enable.
    admin
        .patch(&format!("/v1/keys/{id}"), json!({"enabled": false}))
        .await
        .expect(200);
    assert_eq!(admin.verify(&key).await, "DISABLED");
    admin
        .patch(&format!("/v1/keys/{id}"), json!({"enabled": true}))
        .await
        .expect(200);
    assert_eq!(admin.verify(&key).await, "VALID");

    // Rotate with a grace: both work, then only the new one.
    let rotated = admin
        .post(
            &format!("/v1/keys/{id}/rotate"),
            json!({"grace_seconds": 2}),
        )
        .await
        .expect(201);
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    assert_eq!(rotated["rotation"]["replaces"], id.as_str());
    assert_eq!(rotated["scopes"], json!(["read"]));
    assert_eq!(admin.verify(&key).await, "VALID");
    assert_eq!(admin.verify(&new_key).await, "VALID");
    let old = admin.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(old["rotation"]["superseded_by"], new_id.as_str());
    // Rotating a superseded key again is a conflict.
    admin
        .post(&format!("/v1/keys/{id}/rotate"), json!({}))
        .await
        .expect(409);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(admin.verify(&key).await, "EXPIRED");
    assert_eq!(admin.verify(&new_key).await, "VALID");

    // Revoke: REVOKED from the acknowledgement on.
    let revoked = admin
        .post(&format!("/v1/keys/{new_id}/revoke"), json!({}))
        .await
        .expect(200);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(admin.verify(&new_key).await, "REVOKED");
    // An empty body works too, and revoking again is harmless.
    admin
        .send(
            admin
                .http
                .post(admin.url(&format!("/v1/keys/{new_id}/revoke"))),
        )
        .await
        .expect(200);
    assert_eq!(admin.verify(&new_key).await, "REVOKED");
}

#[tokio::test]
async fn expiry_wrong_api_and_garbage() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("expiry").await;
    let other = admin.create_api("other").await;
    let (_, short) = admin.issue(&api, json!({"ttl_seconds": 1})).await;
    let (_, long) = admin.issue(&api, json!({})).await;
    assert_eq!(admin.verify(&short).await, "VALID");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(admin.verify(&short).await, "EXPIRED");

    // A key checked against another API is not found there.
    let v = admin
        .verify_with(json!({"key": long, "api_id": other}))
        .await;
    assert_eq!(v["code"], "NOT_FOUND");
    assert!(v["key_id"].is_null());

    // A typo (bad checksum), garbage, and an unknown well-formed key: all NOT_FOUND.
    let mut typo = long.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    for k in [
        String::from_utf8(typo).unwrap(),
        "garbage".into(),
        "".into(),
    ] {
        assert_eq!(admin.verify(&k).await, "NOT_FOUND");
    }
    // expires_at in the past is refused, naming the field.
    let r = admin
        .post(
            &format!("/v1/apis/{api}/keys"),
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "expires_at");
}

#[tokio::test]
async fn remaining_counts_down_exactly_under_concurrency() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("quota").await;
    let (id, key) = admin.issue(&api, json!({"remaining": 10})).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let admin = admin.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move { admin.verify(&key).await }));
    }
    let mut valid = 0;
    let mut exceeded = 0;
    for t in tasks {
        match t.await.unwrap().as_str() {
            "VALID" => valid += 1,
            "USAGE_EXCEEDED" => exceeded += 1,
            other => panic!("unexpected code {other}"),
        }
    }
    assert_eq!((valid, exceeded), (10, 90));
    let k = admin.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(k["remaining"], 0);
    assert!(k["last_used_at"].is_string());

    // A refused answer spends nothing: a new quota is honoured exactly.
    admin
        .patch(&format!("/v1/keys/{id}"), json!({"remaining": 1}))
        .await
        .expect(200);
    assert_eq!(admin.verify(&key).await, "VALID");
    assert_eq!(admin.verify(&key).await, "USAGE_EXCEEDED");
    admin
        .patch(&format!("/v1/keys/{id}"), json!({"remaining": null}))
        .await
        .expect(200);
    assert_eq!(admin.verify(&key).await, "VALID");
}

/// The verification cache never answers from a copy older than an acknowledged change:
/// keys verified in a tight loop (so they are cached, and some look-ups race the change) are
/// REVOKED by every verify that starts after the revocation's acknowledgement.
#[tokio::test]
async fn a_revoked_key_never_verifies_from_the_cache() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\nrequests_per_second = 100000\nburst = 100000\n",
    );
    let admin = server.admin();
    let api = admin.create_api("cache").await;
    let mut keys = Vec::new();
    for _ in 0..5 {
        keys.push(admin.issue(&api, json!({})).await);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hammers = Vec::new();
    for (_, key) in &keys {
        for _ in 0..2 {
            let (admin, key, stop) = (admin.clone(), key.clone(), stop.clone());
            hammers.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    admin.verify(&key).await;
                }
            }));
        }
    }
    for (id, key) in &keys {
        assert_eq!(admin.verify(key).await, "VALID");
        admin
            .post(&format!("/v1/keys/{id}/revoke"), json!({}))
            .await
            .expect(200);
        for _ in 0..20 {
            assert_eq!(admin.verify(key).await, "REVOKED");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hammers {
        h.await.unwrap();
    }
}

/// An API's rotation policy: verify says when to move to a new key, and where a key is in
/// a rotation.
#[tokio::test]
async fn verify_reports_expiring_keys_and_rotation_stages() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin
        .post(
            "/v1/apis",
            json!({"name": "aging", "purpose": "tests", "owner": "qa", "risk": "low",
                   "max_key_age_seconds": 2}),
        )
        .await
        .expect(201);
    assert_eq!(api["max_key_age_seconds"], 2);
    let api = api["id"].as_str().unwrap().to_owned();
    let (id, key) = admin.issue(&api, json!({})).await;
    let v = admin.verify_with(json!({ "key": key })).await;
    assert_eq!(
        (v["code"].as_str(), v["expiring"].as_bool()),
        (Some("VALID"), Some(false))
    );
    assert!(v["rotation"].is_null());
    // Past 80 % of two seconds.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let v = admin.verify_with(json!({ "key": key })).await;
    assert_eq!(v["expiring"], true);
    // The policy can be lifted (and verify sees it at once).
    admin
        .patch(
            &format!("/v1/apis/{api}"),
            json!({"max_key_age_seconds": null}),
        )
        .await
        .expect(200);
    assert_eq!(
        admin.verify_with(json!({ "key": key })).await["expiring"],
        false
    );
    admin
        .patch(
            &format!("/v1/apis/{api}"),
            json!({"max_key_age_seconds": 0}),
        )
        .await
        .expect(400);

    let rotated = admin
        .post(
            &format!("/v1/keys/{id}/rotate"),
            json!({"grace_seconds": 60}),
        )
        .await
        .expect(201);
    let new_id = rotated["id"].as_str().unwrap();
    let old = admin.verify_with(json!({ "key": key })).await;
    assert_eq!(old["code"], "VALID");
    assert_eq!(old["expiring"], true);
    assert_eq!(old["rotation"]["stage"], "previous");
    assert_eq!(old["rotation"]["superseded_by"], new_id);
    assert!(old["rotation"]["stops_at"].is_string());
    let new = admin
        .verify_with(json!({ "key": rotated["key"].as_str().unwrap() }))
        .await;
    assert_eq!(new["rotation"]["stage"], "current");
    assert_eq!(new["expiring"], false);
}

#[tokio::test]
async fn concurrent_rotations_have_exactly_one_winner() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("rot").await;
    let (id, _) = admin.issue(&api, json!({})).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let admin = admin.clone();
        let path = format!("/v1/keys/{id}/rotate");
        tasks.push(tokio::spawn(async move {
            admin.post(&path, json!({"grace_seconds": 60})).await.status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&s| s == 201 || s == 409),
        "{statuses:?}"
    );
    let keys = admin.get(&format!("/v1/apis/{api}/keys")).await.expect(200);
    assert_eq!(keys["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn registry_crud_pagination_and_delete_rules() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin
        .post(
            "/v1/apis",
            json!({"name": "orders", "purpose": "Orders", "owner": "team-a", "risk": "medium",
                   "live_date": "2026-01-15", "key_prefix": "ord",
                   "key_defaults": {"ttl_seconds": 3600, "scopes": ["orders:read"]}}),
        )
        .await
        .expect(201);
    let id = api["id"].as_str().unwrap();
    assert_eq!(api["risk"], "medium");
    assert!(api["review_by"].is_string());
    // Duplicate names conflict.
    admin
        .post(
            "/v1/apis",
            json!({"name": "orders", "purpose": "x", "owner": "y", "risk": "low"}),
        )
        .await
        .expect(409);
    // Keys take the API's prefix and defaults.
    let (key_id, key) = admin.issue(id, json!({})).await;
    assert!(key.starts_with("ord_"));
    let k = admin.get(&format!("/v1/keys/{key_id}")).await.expect(200);
    assert_eq!(k["scopes"], json!(["orders:read"]));
    assert!(k["expires_at"].is_string());

    let patched = admin
        .patch(
            &format!("/v1/apis/{id}"),
            json!({"owner": "team-b", "live_date": null}),
        )
        .await
        .expect(200);
    assert_eq!(patched["owner"], "team-b");
    assert!(patched["live_date"].is_null());
    assert_eq!(
        admin.get(&format!("/v1/apis/{id}")).await.expect(200)["owner"],
        "team-b"
    );

    // An API with an active key cannot be deleted; once the key is revoked it can.
    admin.delete(&format!("/v1/apis/{id}")).await.expect(409);
    admin
        .post(&format!("/v1/keys/{key_id}/revoke"), json!({}))
        .await
        .expect(200);
    assert_eq!(admin.delete(&format!("/v1/apis/{id}")).await.status, 204);
    admin.get(&format!("/v1/apis/{id}")).await.expect(404);

    // Pagination: 5 APIs, pages of 2, no duplicates, a final page without a cursor.
    for i in 0..5 {
        admin.create_api(&format!("page-{i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/apis?limit=2&cursor={c}"),
            None => "/v1/apis?limit=2".to_owned(),
        };
        let page = admin.get(&path).await.expect(200);
        for item in page["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
    let r = admin.get("/v1/apis?limit=101").await.expect(400);
    assert_eq!(r["error"]["field"], "limit");
    let r = admin.get("/v1/apis?cursor=zz").await.expect(400);
    assert_eq!(r["error"]["field"], "cursor");
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("idem").await;
    let path = admin.url(&format!("/v1/apis/{api}/keys"));
    let body = json!({"name": "once"});
    let first = admin
        .send(
            admin
                .http
                .post(&path)
                .header("Idempotency-Key", "abc-1")
                .json(&body),
        )
        .await
        .expect(201);
    let again = admin
        .send(
            admin
                .http
                .post(&path)
                .header("Idempotency-Key", "abc-1")
                .json(&body),
        )
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let again = again.expect(201);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["key"], again["key"]);
    let keys = admin.get(&format!("/v1/apis/{api}/keys")).await.expect(200);
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);
    // The same key with another body is refused.
    admin
        .send(
            admin
                .http
                .post(&path)
                .header("Idempotency-Key", "abc-1")
                .json(&json!({"name": "twice"})),
        )
        .await
        .expect(409);
}
