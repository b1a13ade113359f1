//! Durability: what was acknowledged survives restarts and SIGKILL; nothing secret is at rest.

use std::{fs, path::Path};

use serde_json::json;
use tessera::{
    crypto::{hex, keyring::MasterKey, secret::Key256},
    store::{Kind, Store, sled::SledDb},
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

/// The private scalar of a PKCS#8 P-256 key (DER): what identifies the key. (Its head is the
/// same for every P-256 key and its tail is the public key, which certificates carry.)
fn scalar(pkcs8: &[u8]) -> Vec<u8> {
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("a P-256 ECPrivateKey")
        + 5;
    pkcs8[at..at + 32].to_vec()
}

/// Raw, hex and base64 (standard alphabet, as PEM and most encoders write it) of `secret`.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        crate::audit::base64_like::encode(secret, false).into_bytes(),
    ]
}

/// Opens a key wrapped by the master key (`MasterKey::wrap`: nonce, then AES-256-GCM with the
/// label as AAD), as the documented envelope says, to learn what must not be at rest.
fn unwrap(master: &[u8], label: &str, wrapped: &[u8]) -> Vec<u8> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, master).unwrap());
    let (nonce, ct) = wrapped.split_at(NONCE_LEN);
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).unwrap(),
            Aad::from(label.as_bytes()),
            &mut buf,
        )
        .unwrap();
    plain.to_vec()
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
    let generated = pem::parse(&generated_pem).unwrap().into_contents();
    // A CA rotation, so that two issuing CA keys exist.
    admin.post("/v1/pki/rotate", json!({})).await.expect(201);
    server.terminate();

    // What must not be at rest, learnt with the master key (server stopped): the pepper and
    // the data keys from the wrapped keyring; the stored hashes of keys and tokens and the CA
    // private keys from the sealed records.
    let master_hex = fs::read_to_string(home.data().join("master.key")).unwrap();
    let master_raw = hex::decode(master_hex.trim()).unwrap();
    let master = MasterKey::new(Key256::from_slice(&master_raw).unwrap()).unwrap();
    let mut binary: Vec<(String, Vec<u8>)> = Vec::new();
    let (db, _) = {
        let sled_db = SledDb::open(&home.data().join("db"), &Default::default()).unwrap();
        let wrapped = sled_db.wrapped_keyring().unwrap().unwrap();
        binary.push((
            "the pepper".into(),
            unwrap(&master_raw, "tessera/keyring/pepper", &wrapped.pepper),
        ));
        for (v, w) in &wrapped.data_keys {
            binary.push((
                format!("data key {v}"),
                unwrap(&master_raw, &format!("tessera/keyring/data-key/{v}"), w),
            ));
        }
        sled_db.unseal(&master).unwrap()
    };
    for kind in ["key", "enrol_token"] {
        let records = db.scan_records(Kind(kind), None, 1000).await.unwrap();
        assert!(!records.is_empty(), "{kind} records");
        for (id, stored) in records {
            let v: serde_json::Value = serde_json::from_slice(stored.plaintext.expose()).unwrap();
            let hash = v["hash"].as_str().unwrap();
            binary.push((format!("the hash of {id}"), hex::decode(hash).unwrap()));
        }
    }
    let cas = db.scan_records(Kind("ca"), None, 100).await.unwrap();
    assert!(cas.len() >= 3, "a root and two issuing CAs: {}", cas.len());
    for (id, stored) in cas {
        let v: serde_json::Value = serde_json::from_slice(stored.plaintext.expose()).unwrap();
        let pkcs8 = hex::decode(v["key_pkcs8"].as_str().unwrap()).unwrap();
        binary.push((format!("the private key of CA {id}"), scalar(&pkcs8)));
    }
    drop(db);
    binary.push(("a generated private key".into(), scalar(&generated)));
    // The admin key's private scalar belongs in certs/admin.key only.
    let admin_key_pem = fs::read_to_string(home.certs().join("admin.key")).unwrap();
    binary.push((
        "the admin key".into(),
        scalar(&pem::parse(&admin_key_pem).unwrap().into_contents()),
    ));

    let mut files = all_bytes_under(&home.data());
    assert!(files.iter().any(|(p, _)| p.contains("db")));
    // CA keys are never written as files: certs/ holds no CA or generated key either (the admin
    // key is there by design, and the server's own key).
    files.extend(
        all_bytes_under(&home.certs())
            .into_iter()
            .filter(|(p, _)| !p.ends_with("admin.key")),
    );
    let mut found = std::collections::BTreeSet::new();
    for (path, bytes) in &files {
        for (what, secret) in &texts {
            // The whole key, and its body without the prefix.
            let body = secret.split_once('_').unwrap().1;
            if contains(bytes, secret.as_bytes()) || contains(bytes, body.as_bytes()) {
                found.insert(format!("{what} in {path}"));
            }
        }
        for (what, secret) in &binary {
            if forms(secret).iter().any(|f| contains(bytes, f)) {
                found.insert(format!("{what} in {path}"));
            }
        }
        // The generated key's PEM lines (the scalar straddles the first two, so its base64
        // alone would not be found in a PEM copy).
        if generated_pem
            .lines()
            .filter(|l| l.len() == 64)
            .any(|l| contains(bytes, l.as_bytes()))
        {
            found.insert(format!("a generated private key (PEM) in {path}"));
        }
        if contains(bytes, b"PRIVATE KEY") && !path.ends_with("server.key") {
            found.insert(format!("a PEM private key in {path}"));
        }
    }
    assert!(found.is_empty(), "secrets at rest: {found:#?}");
}
