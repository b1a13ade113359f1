//! Strict input: 400 naming the field, 413, 415, 405 with Allow; nothing stored on refusal.

use serde_json::json;

use crate::helpers::{Home, Server};

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("input").await;
    let keys_path = format!("/v1/apis/{api}/keys");
    let raw = |path: &str, body: &str, ctype: Option<&str>| {
        let mut rb = admin.http.post(admin.url(path)).body(body.to_owned());
        if let Some(c) = ctype {
            rb = rb.header("content-type", c);
        }
        rb
    };

    // Malformed JSON.
    let r = admin
        .send(raw("/v1/apis", "{\"name\": ", Some("application/json")))
        .await
        .expect(400);
    assert_eq!(r["error"]["code"], "invalid_request");
    assert!(!r.to_string().contains("line"), "no parser text: {r}");
    // Unknown fields, named.
    let r = admin
        .post(&keys_path, json!({"name": "k", "is_admin": true}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "is_admin");
    // Mass assignment of server-side fields is an unknown field too.
    for field in ["id", "hash", "created_at", "tenant", "start"] {
        let r = admin
            .post(&keys_path, json!({ field: "x" }))
            .await
            .expect(400);
        assert_eq!(r["error"]["field"], field);
    }
    // A body is an object, at every depth (serde would take an array as a struct), and says
    // each key once.
    let r = admin
        .send(raw(&keys_path, "[null, null]", Some("application/json")))
        .await
        .expect(400);
    assert_eq!(r["error"]["code"], "invalid_request");
    let r = admin
        .post(&keys_path, json!({"ratelimit": [10, 60]}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "ratelimit");
    let r = admin
        .send(raw(
            &keys_path,
            r#"{"name": "a", "name": "b"}"#,
            Some("application/json"),
        ))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "name");
    let r = admin
        .send(raw(
            &keys_path,
            r#"{"metadata": {"plan": "free", "plan": "pro"}}"#,
            Some("application/json"),
        ))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "metadata.plan");
    // Wrong types and bounds, named.
    let r = admin
        .post(&keys_path, json!({"scopes": "read"}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "scopes");
    let r = admin
        .post(&keys_path, json!({"scopes": ["ok", "not ok"]}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "scopes[1]");
    let r = admin
        .post(&keys_path, json!({"name": "x".repeat(201)}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "name");
    let r = admin
        .post(
            "/v1/apis",
            json!({"name": "n", "purpose": "p", "owner": "o", "risk": "extreme"}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "risk");
    let r = admin
        .post(
            "/v1/apis",
            json!({"name": "n", "purpose": "p", "risk": "low"}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "owner");
    // Rate limits and refills are validated, named.
    let r = admin
        .post(
            &keys_path,
            json!({"ratelimit": {"limit": 0, "window_seconds": 1}}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "ratelimit.limit");
    let r = admin
        .post(
            &keys_path,
            json!({"refill": {"amount": 5, "interval_seconds": 60}}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "refill");
    // Oversized body: 413.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(70 * 1024));
    admin
        .send(raw(&keys_path, &big, Some("application/json")))
        .await
        .expect(413);
    // Deep nesting.
    let deep = format!(
        "{{\"metadata\": {}1{}}}",
        "{\"a\":".repeat(40),
        "}".repeat(40)
    );
    admin
        .send(raw(&keys_path, &deep, Some("application/json")))
        .await
        .expect(400);
    // Wrong content type: 415.
    admin
        .send(raw(&keys_path, "{}", Some("text/plain")))
        .await
        .expect(415);
    admin.send(raw(&keys_path, "{}", None)).await.expect(415);

    // Nothing of the above was stored.
    let listed = admin.get(&keys_path).await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);
    let apis = admin.get("/v1/apis").await.expect(200);
    assert_eq!(apis["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn methods_paths_and_ids() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let r = admin.get("/v1/keys/verify").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = admin.send(admin.http.put(admin.url("/v1/apis"))).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, POST");
    let r = admin.get("/v1/nothing-here").await.expect(404);
    assert_eq!(r["error"]["code"], "not_found");
    // Ids are checked against their format before any look-up.
    let r = admin.get("/v1/keys/not-an-id").await.expect(400);
    assert_eq!(r["error"]["field"], "id");
    let r = admin
        .get("/v1/keys/api_00000000000000000")
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "id");
    // A well-formed unknown id is a 404.
    admin
        .get("/v1/keys/key_00000000000000000")
        .await
        .expect(404);
    admin
        .get("/v1/apis/api_00000000000000000")
        .await
        .expect(404);
    admin
        .post("/v1/keys/key_00000000000000000/rotate", json!({}))
        .await
        .expect(404);
    // Security headers on every response.
    let r = admin.get("/healthz").await;
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert!(r.headers.contains_key("strict-transport-security"));
    assert!(
        r.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    assert!(!r.headers.contains_key("server"));
}

/// A binding is given at most 32 roles (names repeat freely; they are stored once): exactly
/// 32 are accepted, 33 are a 400 naming `roles` that changes nothing.
#[tokio::test]
async fn a_binding_holds_at_most_32_roles() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let put = |roles: Vec<&'static str>| {
        admin.send(
            admin
                .http
                .put(admin.url("/v1/tenants/default/bindings/many"))
                .json(&json!({ "roles": roles })),
        )
    };
    let b = put(vec!["verifier"; 32]).await.expect(200);
    assert_eq!(b["roles"], json!(["verifier"]), "{b}");
    put(vec!["tenant-admin"]).await.expect(200);
    let r = put(vec!["verifier"; 33]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"]["field"], "roles", "{}", r.text);
    let b = admin
        .get("/v1/tenants/default/bindings/many")
        .await
        .expect(200);
    assert_eq!(b["roles"], json!(["tenant-admin"]), "{b}");
}
