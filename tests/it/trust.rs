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
