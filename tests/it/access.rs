//! Tenants, roles, bindings and root keys: every route against every kind of caller, the
//! no-escalation rules, root keys as portal credentials, sender-constrained keys.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Api, Home, Server, client_config, service};

/// A client authenticating with a bearer root key (no client certificate).
pub(crate) fn bearer(server: &Server, key: &str) -> Api {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(client_config(&server.certs.join("ca.pem"), None))
        .default_headers(headers)
        .build()
        .unwrap();
    Api {
        http,
        ..server.anonymous()
    }
}

pub(crate) async fn put(api: &Api, path: &str, body: Value) -> crate::helpers::Resp {
    api.send(api.http.put(api.url(path)).json(&body)).await
}

/// A PEM CSR for a fresh P-256 key pair (its key is dropped: only the public part matters).
pub(crate) fn fresh_csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

/// Issues a certificate (`POST /v1/certs`, expecting 201) and returns its serial.
async fn issue_serial(api: &Api, body: Value) -> String {
    api.post("/v1/certs", body).await.expect(201)["serial"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn tenant(admin: &Api, name: &str) {
    admin
        .post("/v1/tenants", json!({"name": name}))
        .await
        .expect(201);
}

#[derive(Clone, Copy, Debug)]
enum Other {
    /// Another tenant's principal gets the same 404 as for a missing object.
    NotFound,
    /// The route acts in the caller's own tenant (creates, lists): it works there.
    Own,
    /// Answers 200 with a NOT_FOUND-style verdict (verification never leaks existence).
    Verdict,
}

struct Case {
    method: &'static str,
    path: String,
    body: Option<Value>,
    other: Other,
    /// Whether only the global admin may do it.
    global: bool,
}

fn case(method: &'static str, path: String, body: Option<Value>, other: Other) -> Case {
    Case {
        method,
        path,
        body,
        other,
        global: false,
    }
}

async fn call(api: &Api, c: &Case) -> crate::helpers::Resp {
    let mut rb = api
        .http
        .request(c.method.parse().unwrap(), api.url(&c.path));
    if let Some(b) = &c.body {
        rb = rb.json(b);
    }
    api.send(rb).await
}

#[tokio::test]
async fn every_route_against_every_kind_of_caller() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    tenant(&admin, "alpha").await;
    tenant(&admin, "beta").await;

    // Alpha's objects.
    let api = admin
        .post(
            "/v1/apis",
            json!({"tenant": "alpha", "name": "a1", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let spare = admin
        .post("/v1/apis", json!({"tenant": "alpha", "name": "spare", "purpose": "p", "owner": "o", "risk": "low"}))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (k1, k1_secret) = admin.issue(&api, json!({"name": "k1"})).await;
    let (k2, _) = admin.issue(&api, json!({"name": "k2"})).await;
    let cert = admin
        .post(
            "/v1/certs",
            json!({"identity": "worker", "tenant": "alpha", "generate": true}),
        )
        .await
        .expect(201);
    let serial = cert["serial"].as_str().unwrap().to_owned();
    let cert_pem = cert["certificate"].as_str().unwrap().to_owned();
    let rk = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "alpha", "name": "portal", "permissions": ["keys:read"]}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The callers.
    let none = server.anonymous();
    let other = service(
        &server,
        &admin,
        dir.path(),
        "beta",
        "boss",
        &["tenant-admin"],
    )
    .await;
    let weak = service(&server, &admin, dir.path(), "alpha", "nobody", &[]).await;
    let right = service(
        &server,
        &admin,
        dir.path(),
        "alpha",
        "boss",
        &["tenant-admin"],
    )
    .await;

    let snapshot = |admin: Api, api: String, k1: String, serial: String, rk: String| async move {
        (
            admin.get(&format!("/v1/apis/{api}")).await.expect(200),
            admin.get(&format!("/v1/keys/{k1}")).await.expect(200),
            admin.get(&format!("/v1/certs/{serial}")).await.expect(200),
            admin.get(&format!("/v1/root-keys/{rk}")).await.expect(200),
            admin.get("/v1/tenants/alpha/bindings").await.expect(200),
        )
    };
    let before = snapshot(
        admin.clone(),
        api.clone(),
        k1.clone(),
        serial.clone(),
        rk.clone(),
    )
    .await;

    let cases = vec![
        case("GET", "/v1/apis".into(), None, Other::Own),
        case(
            "POST",
            "/v1/apis".into(),
            Some(json!({"name": "n1", "purpose": "p", "owner": "o", "risk": "low"})),
            Other::Own,
        ),
        case("GET", format!("/v1/apis/{api}"), None, Other::NotFound),
        case(
            "PATCH",
            format!("/v1/apis/{api}"),
            Some(json!({"owner": "x"})),
            Other::NotFound,
        ),
        case("GET", format!("/v1/apis/{api}/keys"), None, Other::NotFound),
        case(
            "POST",
            format!("/v1/apis/{api}/keys"),
            Some(json!({})),
            Other::NotFound,
        ),
        case("GET", format!("/v1/keys/{k1}"), None, Other::NotFound),
        case(
            "PATCH",
            format!("/v1/keys/{k1}"),
            Some(json!({"name": "renamed"})),
            Other::NotFound,
        ),
        case(
            "POST",
            "/v1/keys/verify".into(),
            Some(json!({"key": k1_secret})),
            Other::Verdict,
        ),
        case(
            "POST",
            format!("/v1/keys/{k2}/revoke"),
            Some(json!({})),
            Other::NotFound,
        ),
        case(
            "POST",
            format!("/v1/keys/{k1}/rotate"),
            Some(json!({"grace_seconds": 3600})),
            Other::NotFound,
        ),
        case("DELETE", format!("/v1/apis/{spare}"), None, Other::NotFound),
        case("GET", "/v1/certs".into(), None, Other::Own),
        case(
            "POST",
            "/v1/certs".into(),
            Some(json!({"identity": "fresh", "generate": true})),
            Other::Own,
        ),
        case("GET", format!("/v1/certs/{serial}"), None, Other::NotFound),
        case(
            "POST",
            "/v1/certs/verify".into(),
            Some(json!({"certificate": cert_pem})),
            Other::Verdict,
        ),
        case(
            "POST",
            format!("/v1/certs/{serial}/revoke"),
            Some(json!({})),
            Other::NotFound,
        ),
        case("GET", "/v1/tenants".into(), None, Other::Own),
        case("GET", "/v1/tenants/alpha".into(), None, Other::NotFound),
        case(
            "GET",
            "/v1/tenants/alpha/roles".into(),
            None,
            Other::NotFound,
        ),
        case(
            "POST",
            "/v1/tenants/alpha/roles".into(),
            Some(json!({"name": "reader", "permissions": ["keys:read"]})),
            Other::NotFound,
        ),
        case(
            "GET",
            "/v1/tenants/alpha/roles/reader".into(),
            None,
            Other::NotFound,
        ),
        case(
            "PUT",
            "/v1/tenants/alpha/roles/reader".into(),
            Some(json!({"permissions": ["keys:read", "apis:read"]})),
            Other::NotFound,
        ),
        case(
            "GET",
            "/v1/tenants/alpha/bindings".into(),
            None,
            Other::NotFound,
        ),
        case(
            "PUT",
            "/v1/tenants/alpha/bindings/newbie".into(),
            Some(json!({"roles": ["verifier"]})),
            Other::NotFound,
        ),
        case(
            "GET",
            "/v1/tenants/alpha/bindings/newbie".into(),
            None,
            Other::NotFound,
        ),
        case(
            "DELETE",
            "/v1/tenants/alpha/bindings/newbie".into(),
            None,
            Other::NotFound,
        ),
        case(
            "DELETE",
            "/v1/tenants/alpha/roles/reader".into(),
            None,
            Other::NotFound,
        ),
        case("GET", "/v1/root-keys".into(), None, Other::Own),
        case(
            "POST",
            "/v1/root-keys".into(),
            Some(json!({"name": "p2", "permissions": ["keys:read"]})),
            Other::Own,
        ),
        case("GET", format!("/v1/root-keys/{rk}"), None, Other::NotFound),
        case(
            "POST",
            format!("/v1/root-keys/{rk}/rotate"),
            Some(json!({"grace_seconds": 60})),
            Other::NotFound,
        ),
        case("GET", "/v1/audit".into(), None, Other::Own),
        Case {
            global: true,
            ..case("GET", "/v1/audit/verify".into(), None, Other::Own)
        },
        Case {
            global: true,
            ..case(
                "POST",
                "/v1/tenants".into(),
                Some(json!({"name": "gamma"})),
                Other::Own,
            )
        },
        Case {
            global: true,
            ..case("POST", "/v1/pki/rotate".into(), Some(json!({})), Other::Own)
        },
        Case {
            global: true,
            ..case("GET", "/metrics".into(), None, Other::Own)
        },
    ];

    // Unauthenticated, another tenant's principal, same tenant without the permission: and
    // none of them changes anything of alpha's.
    for c in &cases {
        let r = call(&none, c).await;
        assert_eq!(r.status, 401, "none: {} {}: {}", c.method, c.path, r.text);
        let r = call(&weak, c).await;
        assert_eq!(r.status, 403, "weak: {} {}: {}", c.method, c.path, r.text);
        let r = call(&other, c).await;
        match (c.global, c.other) {
            (true, _) => assert_eq!(r.status, 403, "other: {} {}", c.method, c.path),
            (false, Other::NotFound) => {
                assert_eq!(r.status, 404, "other: {} {}: {}", c.method, c.path, r.text);
                assert_eq!(r.json()["error"]["code"], "not_found");
            }
            (false, Other::Verdict) => {
                assert_eq!(r.status, 200, "other: {} {}", c.method, c.path);
                let code = r.json()["code"].as_str().unwrap().to_owned();
                assert!(code == "NOT_FOUND" || code == "UNTRUSTED", "{}", r.text);
                assert!(!r.text.contains("alpha"), "{}", r.text);
            }
            (false, Other::Own) if c.path.starts_with("/v1/audit") => {
                // Its own entries only (they may name ids it sent itself), and there are
                // some (its binding and its refused attempts on alpha's objects), so the check
                // runs on something.
                assert_eq!(r.status, 200, "{}", r.text);
                let items = r.json()["items"].as_array().cloned().unwrap_or_default();
                assert!(!items.is_empty(), "beta sees its own entries: {}", r.text);
                assert!(items.iter().all(|e| e["tenant"] == "beta"), "{}", r.text);
            }
            (false, Other::Own) => {
                assert!(r.status < 300, "other: {} {}: {}", c.method, c.path, r.text);
                assert!(
                    !r.text.contains(&api) && !r.text.contains(&serial) && !r.text.contains(&rk),
                    "other tenant's view leaks alpha: {} {}: {}",
                    c.method,
                    c.path,
                    r.text
                );
            }
        }
    }
    let after = snapshot(
        admin.clone(),
        api.clone(),
        k1.clone(),
        serial.clone(),
        rk.clone(),
    )
    .await;
    assert_eq!(before.0, after.0);
    assert_eq!(before.1["name"], after.1["name"]);
    assert_eq!(before.1["state"], after.1["state"]);
    assert_eq!(before.2["state"], after.2["state"]);
    assert_eq!(before.3["state"], after.3["state"]);
    assert_eq!(before.4, after.4);

    // The right role: everything works (global-only routes need the global admin).
    for c in &cases {
        let who = if c.global { &admin } else { &right };
        let r = call(who, c).await;
        assert!(
            r.status < 300,
            "right: {} {}: {} {}",
            c.method,
            c.path,
            r.status,
            r.text
        );
    }
    // Objects created by alpha's tenant-admin landed in alpha.
    let apis = right.get("/v1/apis").await.expect(200);
    assert!(
        apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["tenant"] == "alpha")
    );
    // A tenant-scoped auditor sees only its tenant's audit entries.
    let log = right.get("/v1/audit?limit=100").await.expect(200);
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant"] == "alpha"),
        "{log}"
    );
}

#[tokio::test]
async fn root_keys_act_for_their_tenant_and_permissions_only() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    tenant(&admin, "acme").await;
    tenant(&admin, "other").await;
    let acme_api = admin
        .post(
            "/v1/apis",
            json!({"tenant": "acme", "name": "shop", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_api = admin
        .post(
            "/v1/apis",
            json!({"tenant": "other", "name": "x", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "acme", "name": "portal",
            "permissions": ["apis:read", "keys:create", "keys:read", "keys:verify"]}),
        )
        .await;
    assert_eq!(r.headers["cache-control"], "no-store");
    let rk = r.expect(201);
    let secret = rk["key"].as_str().unwrap().to_owned();
    let rk_id = rk["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tsr_"));
    assert_eq!(rk["tenant"], "acme");
    let portal = bearer(&server, &secret);

    let me = portal.get("/v1/whoami").await.expect(200);
    assert_eq!(me["kind"], "root_key");
    assert_eq!(me["tenant"], "acme");
    // Its tenant and permissions.
    let apis = portal.get("/v1/apis").await.expect(200);
    assert_eq!(apis["items"].as_array().unwrap().len(), 1);
    let (key_id, key) = portal.issue(&acme_api, json!({"name": "customer"})).await;
    assert_eq!(portal.verify(&key).await, "VALID");
    portal
        .post(&format!("/v1/keys/{key_id}/revoke"), json!({}))
        .await
        .expect(403);
    portal
        .post(&format!("/v1/apis/{other_api}/keys"), json!({}))
        .await
        .expect(404);
    // Naming a tenant is the global admin's privilege (no mass assignment of tenant).
    let r = portal
        .post(
            "/v1/apis",
            json!({"tenant": "other", "name": "y", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await;
    assert!(r.status == 400 || r.status == 403, "{}", r.text);

    // Root keys are not API keys: verify does not find them, and API keys are no bearer.
    assert_eq!(admin.verify(&secret).await, "NOT_FOUND");
    bearer(&server, &key).get("/v1/whoami").await.expect(401);
    bearer(&server, "tsr_malformed")
        .get("/v1/whoami")
        .await
        .expect(401);
    admin.get(&format!("/v1/keys/{rk_id}")).await.expect(404);

    // Rotation follows the grace rules; revocation is immediate.
    let rotated = admin
        .post(
            &format!("/v1/root-keys/{rk_id}/rotate"),
            json!({"grace_seconds": 1}),
        )
        .await
        .expect(201);
    let next = bearer(&server, rotated["key"].as_str().unwrap());
    portal.get("/v1/whoami").await.expect(200);
    next.get("/v1/whoami").await.expect(200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    portal.get("/v1/whoami").await.expect(401);
    next.get("/v1/whoami").await.expect(200);
    let next_id = rotated["id"].as_str().unwrap();
    admin
        .post(&format!("/v1/root-keys/{next_id}/revoke"), json!({}))
        .await
        .expect(200);
    next.get("/v1/whoami").await.expect(401);

    // No root key holds admin; nobody makes one with more than it holds.
    let r = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "acme", "permissions": ["admin"]}),
        )
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "permissions");
    let dir = tempfile::tempdir().unwrap();
    admin
        .post(
            "/v1/tenants/acme/roles",
            json!({"name": "keyadmin", "permissions": ["tenants:admin", "keys:read"]}),
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
    limited
        .post("/v1/root-keys", json!({"permissions": ["keys:read"]}))
        .await
        .expect(201);
    limited
        .post("/v1/root-keys", json!({"permissions": ["keys:create"]}))
        .await
        .expect(403);
    limited
        .post(
            "/v1/root-keys",
            json!({"tenant": "acme", "permissions": ["keys:read"]}),
        )
        .await
        .expect(400);
}

#[tokio::test]
async fn no_escalation_and_bindings_apply_on_the_next_request() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    tenant(&admin, "acme").await;
    let api = admin
        .post(
            "/v1/apis",
            json!({"tenant": "acme", "name": "a", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key_id, key) = admin.issue(&api, json!({})).await;

    // A verifier can verify but not issue, rotate or revoke.
    let verifier = service(
        &server,
        &admin,
        dir.path(),
        "acme",
        "gateway",
        &["verifier"],
    )
    .await;
    assert_eq!(verifier.verify(&key).await, "VALID");
    verifier
        .post(&format!("/v1/apis/{api}/keys"), json!({}))
        .await
        .expect(403);
    verifier
        .post(&format!("/v1/keys/{key_id}/rotate"), json!({}))
        .await
        .expect(403);
    verifier
        .post(&format!("/v1/keys/{key_id}/revoke"), json!({}))
        .await
        .expect(403);
    verifier
        .post("/v1/certs", json!({"identity": "x", "generate": true}))
        .await
        .expect(403);

    // An issuer cannot issue a certificate for an identity bound to more than it holds.
    let issuer = service(&server, &admin, dir.path(), "acme", "issuer", &["issuer"]).await;
    put(
        &admin,
        "/v1/tenants/acme/bindings/powerful",
        json!({"roles": ["tenant-admin"]}),
    )
    .await
    .expect(200);
    put(
        &admin,
        "/v1/tenants/acme/bindings/checker",
        json!({"roles": ["verifier"]}),
    )
    .await
    .expect(200);
    issuer
        .post(
            "/v1/certs",
            json!({"identity": "powerful", "generate": true}),
        )
        .await
        .expect(403);
    issuer
        .post(
            "/v1/certs",
            json!({"identity": "checker", "generate": true}),
        )
        .await
        .expect(403);
    issuer
        .post("/v1/certs", json!({"identity": "plain", "generate": true}))
        .await
        .expect(201);
    // ... and it cannot name a tenant.
    issuer
        .post(
            "/v1/certs",
            json!({"identity": "plain", "tenant": "acme", "generate": true}),
        )
        .await
        .expect(400);

    // A tenant-admin cannot bind admin, define a role with admin, or touch another tenant.
    let ta = service(&server, &admin, dir.path(), "acme", "ta", &["tenant-admin"]).await;
    put(
        &ta,
        "/v1/tenants/acme/bindings/x",
        json!({"roles": ["admin"]}),
    )
    .await
    .expect(403);
    ta.post(
        "/v1/tenants/acme/roles",
        json!({"name": "sneaky", "permissions": ["admin"]}),
    )
    .await
    .expect(403);
    put(
        &ta,
        "/v1/tenants/acme/bindings/x",
        json!({"roles": ["issuer"]}),
    )
    .await
    .expect(200);
    tenant(&admin, "rival").await;
    put(
        &ta,
        "/v1/tenants/rival/bindings/x",
        json!({"roles": ["issuer"]}),
    )
    .await
    .expect(404);
    ta.post("/v1/tenants", json!({"name": "mine"}))
        .await
        .expect(403);
    // An issuer cannot hand out a custom role with more than it holds either.
    let keyreader = service(&server, &admin, dir.path(), "acme", "kr", &["auditor"]).await;
    keyreader
        .post(
            "/v1/tenants/acme/roles",
            json!({"name": "r", "permissions": ["keys:read"]}),
        )
        .await
        .expect(403);

    // A binding change takes effect on the next request.
    let late = service(&server, &admin, dir.path(), "acme", "late", &[]).await;
    late.post("/v1/keys/verify", json!({"key": key}))
        .await
        .expect(403);
    put(
        &ta,
        "/v1/tenants/acme/bindings/late",
        json!({"roles": ["verifier"]}),
    )
    .await
    .expect(200);
    assert_eq!(late.verify(&key).await, "VALID");
    ta.delete("/v1/tenants/acme/bindings/late")
        .await
        .expect(204);
    late.post("/v1/keys/verify", json!({"key": key}))
        .await
        .expect(403);

    // Only the global admin grants admin; a service bound to it is a global admin.
    put(
        &admin,
        "/v1/tenants/acme/bindings/ops",
        json!({"roles": ["admin"]}),
    )
    .await
    .expect(200);
    let ops = service(&server, &admin, dir.path(), "acme", "ops", &[]).await;
    ops.post("/v1/tenants", json!({"name": "from-ops"}))
        .await
        .expect(201);
    let me = ops.get("/v1/whoami").await.expect(200);
    assert!(me["tenant"].is_null());

    // The admin identity is never issued through the API, whatever is asked.
    let r = admin
        .post("/v1/certs", json!({"identity": "admin", "generate": true}))
        .await
        .expect(201);
    assert_eq!(
        r["identity"],
        "spiffe://tessera.local/tenant/default/svc/admin"
    );
}

#[tokio::test]
async fn sender_constrained_keys() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("bound").await;
    let alice = "spiffe://tessera.local/tenant/default/svc/alice";
    let (_, key) = admin.issue(&api, json!({"bound_to": alice})).await;
    let v = admin
        .verify_with(json!({"key": key, "presented_identity": alice}))
        .await;
    assert_eq!(v["code"], "VALID");
    let v = admin
        .verify_with(json!({"key": key, "presented_identity": "spiffe://tessera.local/tenant/default/svc/mallory"}))
        .await;
    assert_eq!(v["code"], "IDENTITY_MISMATCH");
    assert_eq!(v["valid"], false);
    // Without a presented identity, the caller itself is the presenter.
    assert_eq!(admin.verify(&key).await, "IDENTITY_MISMATCH");
    let alice_client = service(
        &server,
        &admin,
        dir.path(),
        "default",
        "alice",
        &["verifier"],
    )
    .await;
    assert_eq!(alice_client.verify(&key).await, "VALID");

    // Bound to a certificate fingerprint.
    let bob_cert = admin
        .post("/v1/certs", json!({"identity": "bob", "generate": true}))
        .await
        .expect(201);
    let serial = bob_cert["serial"].as_str().unwrap();
    let fp = admin.get(&format!("/v1/certs/{serial}")).await.expect(200)["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, key2) = admin
        .issue(&api, json!({"bound_to": format!("sha256:{fp}")}))
        .await;
    let v = admin
        .verify_with(json!({"key": key2, "presented_identity": format!("sha256:{fp}")}))
        .await;
    assert_eq!(v["code"], "VALID");
    let v = admin
        .verify_with(json!({"key": key2, "presented_identity": alice}))
        .await;
    assert_eq!(v["code"], "IDENTITY_MISMATCH");
    let r = admin
        .post(&format!("/v1/apis/{api}/keys"), json!({"bound_to": "bob"}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "bound_to");
}

/// A client holding the certificate of an issue answer (`private_key` from `generate`, or the
/// key of a CSR).
fn holder(server: &Server, dir: &std::path::Path, name: &str, v: &Value, key_pem: &str) -> Api {
    let chain: String = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(
        &cert,
        format!("{}{chain}", v["certificate"].as_str().unwrap()),
    )
    .unwrap();
    std::fs::write(&key, key_pem).unwrap();
    server.client(&cert, &key)
}

/// What a late-bound credential may do: `tenant-admin` bound to its name, then `admin`. It
/// must hold only `certs:issue` (what its issuer held) and act in its own tenant.
async fn assert_capped(admin: &Api, late: &Api, name: &str) {
    put(
        admin,
        &format!("/v1/tenants/acme/bindings/{name}"),
        json!({"roles": ["tenant-admin"]}),
    )
    .await
    .expect(200);
    let me = late.get("/v1/whoami").await.expect(200);
    assert_eq!(me["tenant"], "acme", "{me}");
    assert_eq!(me["permissions"], json!(["certs:issue"]), "{me}");
    late.post(
        "/v1/root-keys",
        json!({"name": "mine", "permissions": ["keys:read"]}),
    )
    .await
    .expect(403);
    late.get("/v1/tenants/acme/bindings").await.expect(403);
    late.get("/v1/audit").await.expect(403);

    put(
        admin,
        &format!("/v1/tenants/acme/bindings/{name}"),
        json!({"roles": ["admin"]}),
    )
    .await
    .expect(200);
    let me = late.get("/v1/whoami").await.expect(200);
    assert_eq!(me["tenant"], "acme", "not a global admin: {me}");
    assert_eq!(me["permissions"], json!(["certs:issue"]), "{me}");
    late.post("/v1/tenants", json!({"name": "grabbed"}))
        .await
        .expect(403);
    let r = late.get("/v1/tenants").await;
    assert_eq!(r.status, 403, "{}", r.text);
    late.post(
        "/v1/root-keys",
        json!({"name": "mine", "permissions": ["keys:read"]}),
    )
    .await
    .expect(403);
    // What its issuer held still works.
    late.post("/v1/certs", json!({"identity": "leaf", "generate": true}))
        .await
        .expect(201);
}

#[tokio::test]
async fn a_late_binding_never_lifts_a_credential_above_its_issuer() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    tenant(&admin, "acme").await;
    admin
        .post(
            "/v1/tenants/acme/roles",
            json!({"name": "cert-issuer", "permissions": ["certs:issue"]}),
        )
        .await
        .expect(201);
    let issuer = service(
        &server,
        &admin,
        dir.path(),
        "acme",
        "issuer",
        &["cert-issuer"],
    )
    .await;

    // A certificate for a name with no binding yet: nothing to escalate to, so it passes.
    let v = issuer
        .post(
            "/v1/certs",
            json!({"identity": "newbie", "generate": true, "ttl_seconds": 3600}),
        )
        .await
        .expect(201);
    let newbie = holder(
        &server,
        dir.path(),
        "newbie",
        &v,
        v["private_key"].as_str().unwrap(),
    );
    assert_capped(&admin, &newbie, "newbie").await;

    // The same through an enrolment token the issuer made.
    let token = issuer
        .post("/v1/enrolment-tokens", json!({"identity": "enrolled"}))
        .await
        .expect(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let v = server
        .anonymous()
        .post(
            "/v1/enrol",
            json!({"token": token, "identity": "enrolled", "csr": csr}),
        )
        .await
        .expect(201);
    let enrolled = holder(&server, dir.path(), "enrolled", &v, &key.serialize_pem());
    assert_capped(&admin, &enrolled, "enrolled").await;

    // Renewal keeps the ceiling.
    let v = newbie.post("/v1/certs/renew", json!({})).await.expect(201);
    let renewed = holder(
        &server,
        dir.path(),
        "newbie-renewed",
        &v,
        &std::fs::read_to_string(dir.path().join("newbie.key")).unwrap(),
    );
    let me = renewed.get("/v1/whoami").await.expect(200);
    assert_eq!(me["tenant"], "acme", "{me}");
    assert_eq!(me["permissions"], json!(["certs:issue"]), "{me}");

    // A certificate the global admin issues holds what is bound, admin included.
    let v = admin
        .post(
            "/v1/certs",
            json!({"identity": "newbie", "tenant": "acme", "generate": true}),
        )
        .await
        .expect(201);
    let by_admin = holder(
        &server,
        dir.path(),
        "by-admin",
        &v,
        v["private_key"].as_str().unwrap(),
    );
    let me = by_admin.get("/v1/whoami").await.expect(200);
    assert!(me["tenant"].is_null(), "{me}");
    by_admin
        .post("/v1/tenants", json!({"name": "from-newbie"}))
        .await
        .expect(201);
}

/// A list cursor decoded (cursors are the hex of an index position).
fn decode_cursor(c: &str) -> String {
    let bytes: Vec<u8> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&c[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn certificate_lists_stay_inside_the_tenant() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    tenant(&admin, "acme").await;
    tenant(&admin, "rival").await;
    let reader = service(&server, &admin, dir.path(), "acme", "reader", &["auditor"]).await;
    // Interleaved in time, so a global index would alternate between the tenants.
    let mut rival = Vec::new();
    for _ in 0..3 {
        for (t, name) in [("acme", "orders"), ("rival", "db")] {
            let v = admin
                .post(
                    "/v1/certs",
                    json!({"tenant": t, "identity": name, "generate": true}),
                )
                .await
                .expect(201);
            if t == "rival" {
                rival.push(v["serial"].as_str().unwrap().to_owned());
            }
        }
    }

    // Page by page: only acme's certificates, and cursors that hold only acme positions.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let path = match &cursor {
            Some(c) => format!("/v1/certs?limit=1&cursor={c}"),
            None => "/v1/certs?limit=1".to_owned(),
        };
        let page = reader.get(&path).await.expect(200);
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{page}");
        assert_eq!(items[0]["tenant"], "acme", "{page}");
        seen.push(items[0]["serial"].as_str().unwrap().to_owned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                let decoded = decode_cursor(c);
                assert!(
                    decoded.ends_with(seen.last().unwrap().as_str()),
                    "the cursor points at the last item of the page: {decoded}"
                );
                for s in &rival {
                    assert!(!decoded.contains(s.as_str()), "{decoded}");
                }
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    // The reader's own certificate and acme's three.
    assert_eq!(seen.len(), 4, "{seen:?}");

    // Another tenant's identity answers exactly like one that does not exist.
    let existing = reader
        .get("/v1/certs?limit=1&identity=spiffe://tessera.local/tenant/rival/svc/db")
        .await
        .expect(200);
    let made_up = reader
        .get("/v1/certs?limit=1&identity=spiffe://tessera.local/tenant/rival/svc/nobody")
        .await
        .expect(200);
    assert_eq!(existing, made_up);
    assert_eq!(existing, json!({"items": [], "next_cursor": null}));
    let not_a_tenant = reader
        .get("/v1/certs?limit=1&identity=spiffe://tessera.local/tenant/nowhere/svc/db")
        .await
        .expect(200);
    assert_eq!(existing, not_a_tenant);

    // A bare service name is the caller's own tenant (the global admin's: default).
    let own = reader
        .get("/v1/certs?limit=10&identity=orders")
        .await
        .expect(200);
    assert_eq!(own["items"].as_array().unwrap().len(), 3, "{own}");
    let full = reader
        .get("/v1/certs?limit=10&identity=spiffe://tessera.local/tenant/acme/svc/orders")
        .await
        .expect(200);
    assert_eq!(own, full);
    let global = admin
        .get("/v1/certs?limit=10&identity=orders")
        .await
        .expect(200);
    assert_eq!(global["items"].as_array().unwrap().len(), 0, "{global}");
    let global_all = admin.get("/v1/certs?limit=100").await.expect(200);
    assert!(global_all["items"].as_array().unwrap().len() >= 7);
}

#[tokio::test]
async fn revoking_a_more_privileged_principal_is_refused() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    tenant(&admin, "acme").await;
    let issuer = service(&server, &admin, dir.path(), "acme", "issuer", &["issuer"]).await;
    let mut serials = std::collections::BTreeMap::new();
    for (name, roles) in [
        ("boss", &["tenant-admin"][..]),
        ("ops", &["admin"][..]),
        ("checker", &["verifier"][..]),
        ("worker", &[][..]),
        ("helper", &["issuer"][..]),
    ] {
        if !roles.is_empty() {
            crate::helpers::bind(&admin, "acme", name, roles).await;
        }
        let (_, _, serial) = crate::helpers::identity_files(&admin, dir.path(), "acme", name).await;
        serials.insert(name, serial);
    }
    // Bound to permissions the issuer lacks: refused, and nothing changes.
    for name in ["boss", "ops", "checker"] {
        let s = &serials[name];
        for reason in [json!({}), json!({"reason": "key_compromise"})] {
            issuer
                .post(&format!("/v1/certs/{s}/revoke"), reason)
                .await
                .expect(403);
        }
        let rec = admin.get(&format!("/v1/certs/{s}")).await.expect(200);
        assert_eq!(rec["state"], "valid", "{name}: {rec}");
    }
    // Within what it holds: allowed.
    for name in ["worker", "helper"] {
        let s = &serials[name];
        let r = issuer
            .post(&format!("/v1/certs/{s}/revoke"), json!({}))
            .await
            .expect(200);
        assert_eq!(r["state"], "revoked", "{name}");
    }
    // A key-compromise cascade stays inside the caller's tenant: a CSR is no secret, so a
    // certificate of another tenant's key pair proves nothing about who holds it.
    tenant(&admin, "rival").await;
    let csr = fresh_csr();
    let theirs = issue_serial(
        &admin,
        json!({"tenant": "rival", "identity": "db", "csr": csr}),
    )
    .await;
    let planted = issue_serial(&issuer, json!({"identity": "planted", "csr": csr})).await;
    issuer
        .post(
            &format!("/v1/certs/{planted}/revoke"),
            json!({"reason": "key_compromise"}),
        )
        .await
        .expect(200);
    let rec = admin.get(&format!("/v1/certs/{theirs}")).await.expect(200);
    assert_eq!(rec["state"], "valid", "{rec}");

    // Inside the tenant the same plant must not reach a wider service: the admin issues the
    // tenant admin's certificate from a CSR (public); the issuer plants one with that key for
    // a name it may handle, then claims the key compromised. The cascade would end the tenant
    // admin's certificate, so the revocation is refused and changes nothing.
    let boss_csr = fresh_csr();
    let boss2 = issue_serial(
        &admin,
        json!({"tenant": "acme", "identity": "boss", "csr": boss_csr}),
    )
    .await;
    let planted = issue_serial(&issuer, json!({"identity": "decoy", "csr": boss_csr})).await;
    issuer
        .post(
            &format!("/v1/certs/{planted}/revoke"),
            json!({"reason": "key_compromise"}),
        )
        .await
        .expect(403);
    for s in [&boss2, &planted] {
        let rec = admin.get(&format!("/v1/certs/{s}")).await.expect(200);
        assert_eq!(rec["state"], "valid", "{rec}");
    }
    // A plain revocation of its own certificate still works.
    issuer
        .post(&format!("/v1/certs/{planted}/revoke"), json!({}))
        .await
        .expect(200);

    // Unknown serials are still 404 before anything else; the global admin may revoke all.
    issuer
        .post("/v1/certs/abcdef/revoke", json!({}))
        .await
        .expect(404);
    admin
        .post(&format!("/v1/certs/{}/revoke", serials["boss"]), json!({}))
        .await
        .expect(200);
}
