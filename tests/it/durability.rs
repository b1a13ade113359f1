//! Durability: what was acknowledged survives restarts and SIGKILL; nothing secret is at rest.

use std::fs;

use serde_json::json;

use crate::{
    helpers::{Api, Home, Server},
    secrets::{Secret, at_rest, files_under, leaks, master_key},
};

async fn issue_many(admin: &Api, api: &str, n: usize) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let admin = admin.clone();
        let api = api.to_owned();
        tasks.push(tokio::spawn(async move {
            admin.issue(&api, json!({"name": format!("k{i}")})).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn restart_keeps_every_key() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("restart").await;
    let keys = issue_many(&admin, &api, 10).await;
    let (qid, quota) = admin.issue(&api, json!({"remaining": 5})).await;
    assert_eq!(admin.verify(&quota).await, "VALID");
    let status = server.terminate();
    assert!(status.success(), "graceful exit: {status:?}");

    let server = Server::start(&home);
    let admin = server.admin();
    for (_, k) in &keys {
        assert_eq!(admin.verify(k).await, "VALID");
    }
    // Usage counters are flushed at a graceful shutdown.
    let k = admin.get(&format!("/v1/keys/{qid}")).await.expect(200);
    assert_eq!(k["remaining"], 4);
}

#[tokio::test]
async fn kill9_loses_no_acknowledged_write() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("crash").await;
    let keys = issue_many(&admin, &api, 40).await;
    // Revoke every other key, concurrently, then die at once.
    let mut tasks = Vec::new();
    for (id, _) in keys.iter().step_by(2) {
        let admin = admin.clone();
        let path = format!("/v1/keys/{id}/revoke");
        tasks.push(tokio::spawn(async move {
            admin.post(&path, json!({})).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    server.kill9();

    let server = Server::start(&home);
    let admin = server.admin();
    for (i, (_, k)) in keys.iter().enumerate() {
        let want = if i % 2 == 0 { "REVOKED" } else { "VALID" };
        assert_eq!(admin.verify(k).await, want, "key {i}");
    }
}

#[tokio::test]
async fn nothing_secret_at_rest() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("at-rest").await;
    let keys = issue_many(&admin, &api, 20).await;
    // Every other kind of secret Tessera hands out.
    let mut texts: Vec<(&str, String)> = keys
        .iter()
        .map(|(_, k)| ("an API key", k.clone()))
        .collect();
    let root = admin
        .post(
            "/v1/root-keys",
            json!({"name": "portal", "permissions": ["apis:read"]}),
        )
        .await
        .expect(201);
    texts.push(("a root key", root["key"].as_str().unwrap().to_owned()));
    let token = admin
        .post("/v1/enrolment-tokens", json!({"identity": "later"}))
        .await
        .expect(201);
    texts.push((
        "an enrolment token",
        token["token"].as_str().unwrap().to_owned(),
    ));
    let cert = admin
        .post("/v1/certs", json!({"identity": "svc", "generate": true}))
        .await
        .expect(201);
    let generated_pem = cert["private_key"].as_str().unwrap().to_owned();
    // A CA rotation, so that two issuing CA keys exist.
    admin.post("/v1/pki/rotate", json!({})).await.expect(201);
    server.terminate();

    // What must not be at rest, learnt with the master key (server stopped): the pepper and
    // the data keys from the wrapped keyring; the stored hashes of keys and tokens and the CA
    // private keys from the sealed records (`secrets::at_rest`, the one inventory).
    let mut secrets: Vec<Secret> = at_rest(&home.data(), &master_key(&home)).await;
    secrets.push(Secret::pkcs8("a generated private key", &generated_pem));
    // The admin key's private scalar belongs in certs/admin.key only.
    let admin_key_pem = fs::read_to_string(home.certs().join("admin.key")).unwrap();
    secrets.push(Secret::pkcs8("the admin key", &admin_key_pem));
    for (what, text) in &texts {
        secrets.push(Secret::text(*what, text));
    }

    let mut files = files_under(&home.data());
    assert!(files.iter().any(|(p, _)| p.contains("db")));
    // CA keys are never written as files: certs/ holds no CA or generated key either (the admin
    // key is there by design, and the server's own key).
    files.extend(
        files_under(&home.certs())
            .into_iter()
            .filter(|(p, _)| !p.ends_with("admin.key")),
    );
    let mut found = leaks(&secrets, &files);
    for (path, bytes) in &files {
        if bytes.windows(11).any(|w| w == b"PRIVATE KEY") && !path.ends_with("server.key") {
            found.insert(format!("a PEM private key in {path}"));
        }
    }
    assert!(found.is_empty(), "secrets at rest: {found:#?}");
}
