//! Tessera on PostgreSQL: the real binary against a real PostgreSQL the test starts itself,
//! one node and several on one database.

use serde_json::json;
use tessera::{
    crypto::{hex, keyring::MasterKey, secret::Key256},
    keys::model::Key,
    store::{self, Location, Store, open_database, pg::PgTarget},
};

use crate::{
    helpers::{Home, Server},
    pg::Postgres,
};

fn master_of(home: &Home) -> (String, MasterKey) {
    let text = std::fs::read_to_string(home.data().join("master.key")).unwrap();
    let key =
        MasterKey::new(Key256::from_slice(&hex::decode(text.trim()).unwrap()).unwrap()).unwrap();
    (text.trim().to_owned(), key)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What PostgreSQL holds is ciphertext, blind indexes and opaque ids: a `pg_dump` of the
/// database after issuing keys shows no key, no part of one, no stored hash, no private key,
/// no master key, in raw or hex form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sees_nothing_secret() {
    let pg = Postgres::start();
    let url = pg.create_db("atrest");
    let home = Home::new();
    let mut server = Server::start_with(&home, &["--store", &url]);
    let admin = server.admin();
    let api = admin.create_api("at-rest").await;
    let mut keys = Vec::new();
    for i in 0..10 {
        keys.push(admin.issue(&api, json!({"name": format!("k{i}")})).await);
    }
    assert_eq!(admin.verify(&keys[0].1).await, "VALID");
    server.terminate();

    let (master_hex, master) = master_of(&home);
    let db = open_database(&Location::Postgres(Box::new(
        PgTarget::parse(&url).unwrap(),
    )))
    .unwrap();
    let store = db.unseal(&master).unwrap().store;
    let mut hashes = Vec::new();
    for (id, _) in &keys {
        let (_, k) = store::record::get::<Key>(&*store as &dyn Store, id)
            .await
            .unwrap()
            .unwrap();
        hashes.push(k.hash);
    }
    let admin_der = pem::parse(std::fs::read_to_string(home.certs().join("admin.key")).unwrap())
        .unwrap()
        .into_contents();

    let dump = pg.dump("atrest");
    assert!(
        dump.contains("tessera_records"),
        "the dump holds the tables"
    );
    assert!(dump.len() > 10_000, "the dump holds the records");
    let d = dump.as_bytes();
    for (_, secret) in &keys {
        for form in [
            secret.as_bytes().to_vec(),
            secret.as_bytes()[4..].to_vec(),
            hex::encode(secret.as_bytes()).into_bytes(),
            hex::encode(&secret.as_bytes()[4..]).into_bytes(),
        ] {
            assert!(!contains(d, &form), "a key in the dump");
        }
    }
    for h in &hashes {
        assert!(
            !contains(d, hex::encode(h).as_bytes()),
            "a stored hash in the dump"
        );
    }
    assert!(!contains(d, b"PRIVATE KEY"));
    assert!(!contains(
        d,
        hex::encode(&admin_der[admin_der.len() - 48..]).as_bytes()
    ));
    assert!(!contains(d, master_hex.as_bytes()));
    // The same tables seen through SQL: every sealed value is ciphertext of the record
    // format (version byte 1), never JSON.
    let plain = pg.sql(
        "atrest",
        "SELECT count(*) FROM tessera_records WHERE position('\\x7b22'::bytea in sealed) = 1",
    );
    assert_eq!(plain, "0", "no record is stored as JSON");
}

/// A node reading its configuration: `TESSERA_STORE_URL` works like `--store`, and a URL
/// that asks for weak TLS is refused at start with the field named.
#[test]
fn store_url_from_the_environment_and_weak_tls_refused() {
    let home = Home::new();
    let out = std::process::Command::new(crate::helpers::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .env(
            "TESSERA_STORE_URL",
            "postgres://u@127.0.0.1:1/db?sslmode=require",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store.url") && err.contains("verify-full"),
        "{err}"
    );
}
