//! One secret inventory: every kind of secret Tessera handles, the forms each may leak in, and
//! the places searched for them. The hygiene tests (`audit::logs_and_audit_never_hold_a_secret`,
//! `durability::nothing_secret_at_rest` and `every_secret_kind_is_absent_from_every_place`
//! here) all build their lists with [`Secret`] and search with [`leaks`].
//!
//! The kinds, and where each comes from in a test:
//!
//! | kind | constructor |
//! |---|---|
//! | API keys (issued, rotated), root keys, enrolment tokens, made-up and malformed keys sent by callers | [`Secret::text`]: whole and without the prefix |
//! | bearer headers | [`Secret::text`] of the token (the header is `Bearer <token>`) |
//! | unseal shares | [`Secret::text`] of the hex, [`Secret::bytes`] of the bytes |
//! | the master key, data keys, the pepper, stored key and token hashes | [`Secret::bytes`] (learnt with [`at_rest`]) |
//! | CA private keys, generated private keys, the admin key, a CSR's key | [`Secret::pkcs8`]: the private scalar and the PEM lines |
//! | CSR bodies | [`Secret::pem_body`] |
//!
//! Every secret is searched raw, in hex (lower and upper case), in base64 (standard and
//! URL-safe alphabets), whole and by its first and last 24 bytes (for forms longer than that).

use std::{collections::BTreeSet, fs, path::Path};

use serde_json::{Value, json};
use tessera::{
    crypto::{hex, keyring::MasterKey, secret::Key256},
    store::{Kind, Store, sled::SledDb},
};

use crate::{
    audit::base64_like::encode as b64,
    helpers::{Home, Resp, Server},
};

/// One secret and the byte strings that would betray it.
pub struct Secret {
    pub what: String,
    pub needles: Vec<Vec<u8>>,
}

/// Raw, hex (both cases), base64 (both alphabets) of `core`; each whole and, when longer than
/// 24 bytes, its first and last 24 bytes.
pub fn forms(core: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let hex_lower = hex::encode(core);
    for f in [
        core.to_vec(),
        hex_lower.to_uppercase().into_bytes(),
        hex_lower.into_bytes(),
        b64(core, false).into_bytes(),
        b64(core, true).into_bytes(),
    ] {
        if f.len() > 24 {
            out.push(f[..24].to_vec());
            out.push(f[f.len() - 24..].to_vec());
        }
        out.push(f);
    }
    out
}

impl Secret {
    /// Bytes: the master key, a data key, the pepper, a stored hash, a share's bytes.
    pub fn bytes(what: impl Into<String>, core: &[u8]) -> Self {
        Self {
            what: what.into(),
            needles: forms(core),
        }
    }

    /// A key-shaped secret (`<prefix>_<body>`): the whole text and the body alone.
    pub fn text(what: impl Into<String>, secret: &str) -> Self {
        let body = secret.split_once('_').map_or(secret, |(_, b)| b);
        let mut needles = forms(secret.as_bytes());
        needles.extend(forms(body.as_bytes()));
        Self {
            what: what.into(),
            needles,
        }
    }

    /// A PKCS#8 P-256 private key (PEM): the private scalar in every form, and each line of
    /// the PEM body (the scalar straddles the first two). The DER's head is the same for every
    /// P-256 key and its tail is the public key, so neither identifies it.
    pub fn pkcs8(what: impl Into<String>, pem: &str) -> Self {
        let der = ::pem::parse(pem).unwrap().into_contents();
        let mut s = Self::bytes(what, &scalar(&der));
        s.needles.extend(pem_lines(pem));
        s
    }

    /// A PKCS#8 P-256 private key as DER (a CA key read from its sealed record): as
    /// [`Secret::pkcs8`] of its PEM encoding, so that the key written out as a PEM file is
    /// found too (its scalar alone is not, once base64 shifts it off a 3-byte boundary).
    pub fn pkcs8_der(what: impl Into<String>, der: &[u8]) -> Self {
        Self::pkcs8(
            what,
            &::pem::encode(&::pem::Pem::new("PRIVATE KEY", der.to_vec())),
        )
    }

    /// A PEM document that is not secret but must not be logged (a CSR): its DER in every
    /// form, and each line of its PEM body.
    pub fn pem_body(what: impl Into<String>, pem: &str) -> Self {
        let der = ::pem::parse(pem).unwrap().into_contents();
        let mut s = Self::bytes(what, &der);
        s.needles.extend(pem_lines(pem));
        s
    }
}

/// The private scalar of a PKCS#8 P-256 key (DER):
/// SEQUENCE { version, algorithm, OCTET STRING { ECPrivateKey { 1, OCTET STRING(32) } } }.
pub fn scalar(pkcs8: &[u8]) -> Vec<u8> {
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("a P-256 ECPrivateKey")
        + 5;
    pkcs8[at..at + 32].to_vec()
}

/// The full lines of a PEM body (the short last line could match anything).
fn pem_lines(pem: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() == 64)
        .map(|l| l.as_bytes().to_vec())
}

/// Every (secret, place) pair where a needle of the secret occurs, named.
pub fn leaks(secrets: &[Secret], places: &[(String, Vec<u8>)]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for s in secrets {
        for (place, hay) in places {
            if s.needles
                .iter()
                .any(|n| !n.is_empty() && hay.windows(n.len()).any(|w| w == n.as_slice()))
            {
                found.insert(format!("{} in {place}", s.what));
            }
        }
    }
    found
}

/// Every file under `dir`, with its path.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
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

/// Opens a key wrapped by the master key (nonce, then AES-256-GCM with the label as AAD), as
/// the documented envelope says.
fn unwrap(master: &[u8], label: &str, wrapped: &[u8]) -> Vec<u8> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, master).unwrap());
    let (nonce, ct) = wrapped.split_at(NONCE_LEN);
    let mut buf = ct.to_vec();
    key.open_in_place(
        Nonce::try_assume_unique_for_key(nonce).unwrap(),
        Aad::from(label.as_bytes()),
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

/// The secrets only the data directory knows, learnt with the master key while the server is
/// stopped: the pepper and every data key (unwrapped from the keyring), the stored hash of
/// every API key, root key and enrolment token, and every CA's private key (from the sealed
/// records). At least three CAs (a root and two issuing ones) are expected.
pub async fn at_rest(data: &Path, master_raw: &[u8]) -> Vec<Secret> {
    let mut out = Vec::new();
    let master = MasterKey::new(Key256::from_slice(master_raw).unwrap()).unwrap();
    let sled_db = SledDb::open(&data.join("db"), &Default::default()).unwrap();
    let wrapped = sled_db.wrapped_keyring().unwrap().unwrap();
    out.push(Secret::bytes(
        "the pepper",
        &unwrap(master_raw, "tessera/keyring/pepper", &wrapped.pepper),
    ));
    for (v, w) in &wrapped.data_keys {
        out.push(Secret::bytes(
            format!("data key {v}"),
            &unwrap(master_raw, &format!("tessera/keyring/data-key/{v}"), w),
        ));
    }
    let (db, _) = sled_db.unseal(&master).unwrap();
    for kind in ["key", "enrol_token"] {
        let records = db.scan_records(Kind(kind), None, 1000).await.unwrap();
        assert!(!records.is_empty(), "{kind} records");
        for (id, stored) in records {
            let v: Value = serde_json::from_slice(stored.plaintext.expose()).unwrap();
            let hash = hex::decode(v["hash"].as_str().unwrap()).unwrap();
            out.push(Secret::bytes(format!("the hash of {id}"), &hash));
        }
    }
    let cas = db.scan_records(Kind("ca"), None, 100).await.unwrap();
    assert!(cas.len() >= 3, "a root and two issuing CAs: {}", cas.len());
    for (id, stored) in cas {
        let v: Value = serde_json::from_slice(stored.plaintext.expose()).unwrap();
        let pkcs8 = hex::decode(v["key_pkcs8"].as_str().unwrap()).unwrap();
        out.push(Secret::pkcs8_der(
            format!("the private key of CA {id}"),
            &pkcs8,
        ));
    }
    out
}

/// The master key of a home whose key file holds it (hex).
pub fn master_key(home: &Home) -> Vec<u8> {
    let text = fs::read_to_string(home.data().join("master.key")).unwrap();
    hex::decode(text.trim()).unwrap()
}

/// An error answer, kept as a place to search: status line, headers and body.
fn error_place(r: &Resp) -> Vec<u8> {
    let mut out = format!("{}\n", r.status).into_bytes();
    for (k, v) in &r.headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(r.text.as_bytes());
    out
}

/// Every secret kind (but unseal shares: this server uses the key file, so that the master key
/// is known; `audit::logs_and_audit_never_hold_a_secret` covers shares) searched in every place:
/// `data/` (but the key file, which holds the master key by design), `certs/` (but
/// `admin.key` and `server.key`, each holding its own key by design), a backup, the server log at trace, the audit log and its JSON-lines copy, the
/// metrics, and the answers to calls that carried a secret and were refused.
#[tokio::test]
async fn every_secret_kind_is_absent_from_every_place() {
    let home = Home::new();
    let config = home.tmp.path().join("tessera.toml");
    let jsonl = home.tmp.path().join("audit.jsonl");
    fs::write(
        &config,
        format!(
            "[audit]\nfile = \"{}\"\ncheckpoint_interval_seconds = 1\n",
            jsonl.display()
        ),
    )
    .unwrap();
    let mut server = Server::start_with_env(
        &home,
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", "trace")],
    );
    let admin = server.admin();
    let anon = server.anonymous();
    let mut secrets: Vec<Secret> = Vec::new();
    let mut errors: Vec<(String, Vec<u8>)> = Vec::new();
    let mut refused = |what: &str, r: Resp, status: u16| {
        assert_eq!(r.status, status, "{what}: {}", r.text);
        errors.push((format!("the answer to {what}"), error_place(&r)));
    };

    let api = admin.create_api("inventory").await;
    let (kid, key) = admin.issue(&api, json!({"scopes": ["a"]})).await;
    secrets.push(Secret::text("an API key", &key));
    admin.verify(&key).await;
    let rotated = admin
        .post(&format!("/v1/keys/{kid}/rotate"), json!({}))
        .await
        .expect(201);
    secrets.push(Secret::text(
        "a rotated API key",
        rotated["key"].as_str().unwrap(),
    ));
    let malformed = "tsk_thisIsNotAValidKeyButStillSecret0000000";
    secrets.push(Secret::text("a malformed key", malformed));
    admin
        .post("/v1/keys/verify", json!({ "key": malformed }))
        .await
        .expect(200);
    // Bodies refused for their shape, each holding a key: the 400 names the field only.
    refused(
        "a verify with an unknown field",
        admin
            .post("/v1/keys/verify", json!({"key": key, "extra": key}))
            .await,
        400,
    );
    // A key too long is malformed: NOT_FOUND, a 200 that must not echo it either.
    refused(
        "a verify with a key too long",
        admin
            .post("/v1/keys/verify", json!({"key": format!("{key}{key}")}))
            .await,
        200,
    );
    let root = admin
        .post(
            "/v1/root-keys",
            json!({"name": "portal", "permissions": ["apis:read"]}),
        )
        .await
        .expect(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.push(Secret::text("a root key (a bearer header)", &root));
    let bearer = |token: &str, path: &str| {
        anon.http
            .get(anon.url(path))
            .header("authorization", format!("Bearer {token}"))
    };
    anon.send(bearer(&root, "/v1/apis")).await.expect(200);
    refused(
        "a root key used beyond its permissions",
        anon.send(bearer(&root, "/v1/root-keys")).await,
        403,
    );
    let made_up = tessera::crypto::apikey::ApiKey::generate(
        &tessera::crypto::apikey::KeyPrefix::parse("tsr").unwrap(),
    )
    .unwrap()
    .expose()
    .to_owned();
    secrets.push(Secret::text("a refused bearer key", &made_up));
    refused(
        "a made-up bearer key",
        anon.send(bearer(&made_up, "/v1/apis")).await,
        401,
    );
    let token = admin
        .post("/v1/enrolment-tokens", json!({"identity": "enrolled"}))
        .await
        .expect(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.push(Secret::text("an enrolment token", &token));
    let csr_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&csr_key)
        .unwrap()
        .pem()
        .unwrap();
    secrets.push(Secret::pem_body("a CSR", &csr));
    secrets.push(Secret::pkcs8(
        "a CSR's private key",
        &csr_key.serialize_pem(),
    ));
    refused(
        "an enrolment with the token for another identity",
        anon.post(
            "/v1/enrol",
            json!({"token": token, "identity": "someone-else", "csr": csr}),
        )
        .await,
        401,
    );
    anon.post(
        "/v1/enrol",
        json!({"token": token, "identity": "enrolled", "csr": csr}),
    )
    .await
    .expect(201);
    refused(
        "a spent enrolment token",
        anon.post(
            "/v1/enrol",
            json!({"token": token, "identity": "enrolled", "csr": csr}),
        )
        .await,
        401,
    );
    let cert = admin
        .post("/v1/certs", json!({"identity": "svc", "generate": true}))
        .await
        .expect(201);
    secrets.push(Secret::pkcs8(
        "a generated private key",
        cert["private_key"].as_str().unwrap(),
    ));
    let admin_key = fs::read_to_string(home.certs().join("admin.key")).unwrap();
    secrets.push(Secret::pkcs8("the admin key", &admin_key));
    let server_key = fs::read_to_string(home.certs().join("server.key")).unwrap();
    secrets.push(Secret::pkcs8("the server's TLS key", &server_key));
    admin.post("/v1/pki/rotate", json!({})).await.expect(201);
    admin
        .post("/v1/sys/rotate-keyring", json!({}))
        .await
        .expect(200);
    let backup = admin
        .http
        .get(admin.url("/v1/sys/backup"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    // Let the JSON-lines sink and a checkpoint catch up.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let audit = crate::helpers::audit_after(&admin, 0).await;
    let metrics = admin.get("/metrics").await.text.into_bytes();
    server.terminate();

    let master = master_key(&home);
    secrets.push(Secret::bytes("the master key", &master));
    secrets.extend(at_rest(&home.data(), &master).await);

    let mut places: Vec<(String, Vec<u8>)> = files_under(&home.data())
        .into_iter()
        .filter(|(p, _)| !p.ends_with("master.key"))
        .collect();
    places.extend(
        files_under(&home.certs())
            .into_iter()
            .filter(|(p, _)| !p.ends_with("admin.key") && !p.ends_with("server.key")),
    );
    let log = fs::read(home.log()).unwrap();
    assert!(log.len() > 10_000, "trace logging was on");
    let lines = fs::read(&jsonl).unwrap();
    assert!(String::from_utf8_lossy(&lines).lines().count() >= 10);
    places.push(("a backup".into(), backup));
    places.push(("the server log".into(), log));
    places.push(("the audit log".into(), serde_json::to_vec(&audit).unwrap()));
    places.push(("the JSON-lines audit file".into(), lines));
    places.push(("the metrics".into(), metrics));
    places.extend(errors);
    let kinds: BTreeSet<&str> = secrets.iter().map(|s| s.what.as_str()).collect();
    assert!(kinds.len() >= 15, "{kinds:?}");
    let found = leaks(&secrets, &places);
    assert!(found.is_empty(), "secrets leaked: {found:#?}");
}
