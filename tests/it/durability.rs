//! Durability: what was acknowledged survives restarts and SIGKILL; nothing secret is at rest.

use std::{fs, path::Path};

use serde_json::json;
use tessera::{
    crypto::{hex, keyring::MasterKey, secret::Key256},
    keys::model::Key,
    store::{self, Store, sled::SledStore},
};

use crate::helpers::{Api, Home, Server};

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

fn all_bytes_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn nothing_secret_at_rest() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("at-rest").await;
    let keys = issue_many(&admin, &api, 20).await;
    server.terminate();

    // The stored hashes, read through the store with the master key (server stopped).
    let master_hex = fs::read_to_string(home.data().join("master.key")).unwrap();
    let master =
        MasterKey::new(Key256::from_slice(&hex::decode(master_hex.trim()).unwrap()).unwrap())
            .unwrap();
    let (db, _) = SledStore::open(&home.data().join("db"), &master, &Default::default()).unwrap();
    let mut hashes = Vec::new();
    for (id, _) in &keys {
        let (_, k) = store::record::get::<Key>(&db as &dyn Store, id)
            .await
            .unwrap()
            .unwrap();
        hashes.push(k.hash);
    }
    drop(db);

    // The admin key's private bytes (DER) must not be anywhere in data/ either.
    let admin_key_pem = fs::read_to_string(home.certs().join("admin.key")).unwrap();
    let admin_key_der = pem::parse(&admin_key_pem).unwrap().into_contents();

    let files = all_bytes_under(&home.data());
    assert!(files.iter().any(|(p, _)| p.contains("db")));
    for (path, bytes) in &files {
        for (_, secret) in &keys {
            assert!(!contains(bytes, secret.as_bytes()), "secret in {path}");
            // The random part alone, too.
            assert!(
                !contains(bytes, &secret.as_bytes()[4..]),
                "secret body in {path}"
            );
        }
        for h in &hashes {
            assert!(
                !contains(bytes, hex::encode(h).as_bytes()),
                "hash hex in {path}"
            );
            assert!(!contains(bytes, h), "raw hash in {path}");
        }
        assert!(
            !contains(bytes, b"PRIVATE KEY"),
            "PEM private key in {path}"
        );
        assert!(!contains(bytes, &admin_key_der), "admin key DER in {path}");
    }
}
