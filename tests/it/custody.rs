//! Key custody: Shamir init, unseal and seal; keyring rotation with rewrap (also across a
//! kill -9); backup and restore; tampered records detected, never served.

use crate::proc::{CHILD_LIMIT, Timed, wait_output_within};
use std::{process::Command, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{BIN, Home, Server};

fn run(home: &Home, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--data")
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .env_remove("TESSERA_MASTER_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = wait_output_within(child, "tessera", CHILD_LIMIT).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn init(home: &Home) -> Vec<String> {
    let (ok, out, err) = run(home, &["init", "--shares", "5", "--threshold", "3"], None);
    assert!(ok, "{out}{err}");
    let shares: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("share-"))
        .map(str::to_owned)
        .collect();
    assert_eq!(shares.len(), 5, "{out}");
    assert!(!home.data().join("master.key").exists(), "no key file");
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "admin.pem",
        "admin.key",
        "crls.pem",
    ] {
        assert!(home.certs().join(f).exists(), "{f}");
    }
    shares
}

#[tokio::test]
async fn init_unseal_seal_cycle() {
    let home = Home::new();
    let shares = init(&home);
    // A second init refuses.
    let (ok, _, _) = run(&home, &["init", "--shares", "5", "--threshold", "3"], None);
    assert!(!ok);

    let server = Server::start(&home);
    let admin = server.admin();
    let anon = server.anonymous();
    // Sealed: only the public routes answer.
    anon.get("/healthz").await.expect(200);
    anon.get("/readyz").await.expect(503);
    let status = anon.get("/v1/sys/status").await.expect(200);
    assert_eq!(status["sealed"], true);
    assert_eq!(status["threshold"], 3);
    assert_eq!(status["key_source"], "shares");
    assert!(
        anon.get("/v1/pki/ca")
            .await
            .expect_text(200)
            .contains("BEGIN CERTIFICATE")
    );
    anon.get("/v1/pki/crl").await.expect(200);
    for path in [
        "/v1/apis",
        "/v1/whoami",
        "/v1/certs",
        "/metrics",
        "/v1/audit",
    ] {
        let r = admin.get(path).await;
        assert_eq!(r.status, 503, "{path}: {}", r.text);
        assert_eq!(r.json()["error"]["code"], "sealed");
        anon.get(path).await.expect(503);
    }
    admin
        .post("/v1/keys/verify", json!({"key": "x"}))
        .await
        .expect(503);

    let unseal = |s: &str| json!({ "share": s });
    // A wrong share is refused and resets nothing.
    let wrong = format!("share-1: {}", "ab".repeat(33));
    let r = anon
        .post("/v1/sys/unseal", unseal(&wrong))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "share");
    let r = anon
        .post("/v1/sys/unseal", unseal(&shares[0]))
        .await
        .expect(200);
    assert_eq!(
        (r["sealed"].clone(), r["progress"].clone()),
        (json!(true), json!(1))
    );
    anon.post("/v1/sys/unseal", unseal(&shares[0]))
        .await
        .expect(400);
    anon.post("/v1/sys/unseal", unseal(&wrong))
        .await
        .expect(400);
    let r = anon
        .post("/v1/sys/unseal", unseal(&shares[3]))
        .await
        .expect(200);
    assert_eq!(r["progress"], 2);
    assert_eq!(anon.get("/v1/sys/status").await.expect(200)["sealed"], true);
    let r = anon
        .post("/v1/sys/unseal", unseal(&shares[4]))
        .await
        .expect(200);
    assert_eq!(r["sealed"], false);

    // Unsealed: everything works.
    anon.get("/readyz").await.expect(200);
    let api = admin.create_api("custody").await;
    let (_, key) = admin.issue(&api, json!({})).await;
    assert_eq!(admin.verify(&key).await, "VALID");

    // Seal: at once, everything but the public routes is 503 again.
    admin.post("/v1/sys/seal", json!({})).await.expect(200);
    admin
        .post("/v1/keys/verify", json!({"key": key}))
        .await
        .expect(503);
    assert_eq!(anon.get("/v1/sys/status").await.expect(200)["sealed"], true);
    // Any three shares unseal it again; the data is intact.
    for s in [&shares[1], &shares[2], &shares[3]] {
        anon.post("/v1/sys/unseal", unseal(s)).await.expect(200);
    }
    assert_eq!(admin.verify(&key).await, "VALID");
    // Sealing needs the admin.
    server
        .anonymous()
        .post("/v1/sys/seal", json!({}))
        .await
        .expect(401);
    drop(server);

    // A restart comes up sealed (there is no key file).
    let server = Server::start(&home);
    assert_eq!(
        server.anonymous().get("/v1/sys/status").await.expect(200)["sealed"],
        true
    );
    // The CLI unseals with shares on standard input.
    for s in &shares[..3] {
        let out = Command::new(BIN)
            .args(["unseal", "--server", &server.url(""), "--ca"])
            .arg(home.certs().join("ca.pem"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{s}\n").as_bytes())?;
                wait_output_within(c, "tessera unseal", CHILD_LIMIT)
            })
            .unwrap();
        assert!(out.status.success());
    }
    assert_eq!(server.admin().verify(&key).await, "VALID");
    // Unseal and seal are in the audit log.
    let log = server.admin().get("/v1/audit?limit=100").await.expect(200);
    let actions: Vec<String> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(actions.iter().any(|a| a == "unseal"), "{actions:?}");
    assert!(
        actions.iter().any(|a| a == "POST /v1/sys/seal"),
        "{actions:?}"
    );
}

async fn wait_versions(admin: &crate::helpers::Api, want: usize) -> Value {
    for _ in 0..100 {
        let s = admin.get("/v1/sys/status").await.expect(200);
        if s["keyring"]["versions"].as_array().map(Vec::len) == Some(want) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("keyring never reached {want} versions");
}

#[tokio::test]
async fn keyring_rotation_rewraps_under_load_and_after_kill9() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("rotation").await;
    let mut keys = Vec::new();
    for i in 0..60 {
        keys.push(admin.issue(&api, json!({"name": format!("k{i}")})).await.1);
    }
    let r = admin
        .post("/v1/sys/rotate-keyring", json!({}))
        .await
        .expect(200);
    assert_eq!(r["current"], 2);
    // Reads and writes go on during the rewrap.
    for i in 0..20 {
        keys.push(
            admin
                .issue(&api, json!({"name": format!("during{i}")}))
                .await
                .1,
        );
        assert_eq!(admin.verify(&keys[i]).await, "VALID");
    }
    let s = wait_versions(&admin, 1).await;
    assert_eq!(s["keyring"]["current"], 2);
    for k in &keys {
        assert_eq!(admin.verify(k).await, "VALID");
    }

    // Rotate again and die at once: the rewrap resumes after the restart.
    admin
        .post("/v1/sys/rotate-keyring", json!({}))
        .await
        .expect(200);
    server.kill9();
    let server = Server::start(&home);
    let admin = server.admin();
    let s = wait_versions(&admin, 1).await;
    assert_eq!(s["keyring"]["current"], 3);
    for k in &keys {
        assert_eq!(admin.verify(k).await, "VALID");
    }
    assert_eq!(
        admin.get("/v1/audit/verify").await.expect(200)["valid"],
        true
    );
}

/// Data-key versions of the stored key records, read offline from sled (the envelope's
/// version is the big-endian u32 after its format byte).
fn key_record_versions(home: &Home) -> std::collections::BTreeMap<u32, usize> {
    let db = sled::open(home.data().join("db")).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for item in db.scan_prefix(b"r/key/") {
        let (_, v) = item.unwrap();
        let version = u32::from_be_bytes(v[1..5].try_into().unwrap());
        *out.entry(version).or_insert(0) += 1;
    }
    out
}

/// Renames keys (each worker its own share of them) until the server goes away; per key, the
/// names in the order sent and how many of them were acknowledged.
type Renames =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (Vec<String>, usize)>>>;

async fn rename_until_gone(
    admin: crate::helpers::Api,
    ids: Vec<String>,
    tag: String,
    log: Renames,
    rounds: usize,
) {
    for round in 0..rounds {
        for id in &ids {
            let name = format!("{tag}-{round}");
            log.lock()
                .unwrap()
                .entry(id.clone())
                .or_default()
                .0
                .push(name.clone());
            let Ok(r) = admin
                .http
                .patch(admin.url(&format!("/v1/keys/{id}")))
                .json(&json!({ "name": name }))
                .send()
                .await
            else {
                return;
            };
            match r.status().as_u16() {
                200 => {
                    let mut l = log.lock().unwrap();
                    let e = l.get_mut(id).unwrap();
                    e.1 = e.0.len();
                }
                other => panic!("a rename during the rewrap answered {other}"),
            }
        }
    }
}

#[tokio::test]
async fn keyring_rotation_killed_before_the_rewrap_ends_keeps_concurrent_updates() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("rewrap").await;
    let mut ids = Vec::new();
    let mut secrets = Vec::new();
    for chunk in 0..6 {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let admin = admin.clone();
                let api = api.clone();
                tokio::spawn(async move {
                    admin
                        .issue(&api, json!({"name": format!("k{chunk}-{i}")}))
                        .await
                })
            })
            .collect();
        for t in tasks {
            let (id, key) = t.await.unwrap();
            ids.push(id);
            secrets.push(key);
        }
    }
    let renames: Renames = Default::default();
    // Rotate while existing records are being updated, and die before the rewrap is done:
    // the data directory must then hold records under the old data key (the kill landed
    // before the rewrap finished) next to records rewritten under the new one. The rewrap
    // runs on a one-second tick, so a kill right after the rotation nearly always lands in
    // time; if it did not, rotate and kill again.
    let mut landed = false;
    for attempt in 0..4 {
        let admin = server.admin();
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let mine: Vec<String> = ids.iter().skip(w).step_by(4).cloned().collect();
                tokio::spawn(rename_until_gone(
                    admin.clone(),
                    mine,
                    format!("a{attempt}w{w}"),
                    renames.clone(),
                    usize::MAX,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let current = admin
            .post("/v1/sys/rotate-keyring", json!({}))
            .await
            .expect(200)["current"]
            .as_u64()
            .unwrap() as u32;
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.kill9();
        for w in workers {
            w.await.unwrap();
        }
        let versions = key_record_versions(&home);
        let old: usize = versions
            .iter()
            .filter(|(v, _)| **v < current)
            .map(|(_, n)| n)
            .sum();
        let new = versions.get(&current).copied().unwrap_or(0);
        server = Server::start(&home);
        if old > 0 && new > 0 {
            landed = true;
            break;
        }
    }
    assert!(landed, "no kill landed before the rewrap finished");

    // After the restart the rewrap resumes at once; every key is renamed once meanwhile (once
    // only: a later rename would hide a rewrap that overwrote an earlier one). The rewrap then
    // ends with one data key.
    let admin = server.admin();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let mine: Vec<String> = ids.iter().skip(w).step_by(8).cloned().collect();
            tokio::spawn(rename_until_gone(
                admin.clone(),
                mine,
                format!("after-w{w}"),
                renames.clone(),
                1,
            ))
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    wait_versions(&admin, 1).await;
    assert_eq!(key_record_versions_live(&admin).await, 1);
    // Every key is readable and valid, and holds its last acknowledged name or one sent after
    // it (an unacknowledged write may have landed); never an older one, which is what a rewrap
    // that overwrote a concurrent update would leave.
    let log = renames.lock().unwrap().clone();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(admin.verify(&secrets[i]).await, "VALID", "key {id}");
        let got = admin.get(&format!("/v1/keys/{id}")).await.expect(200)["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let (sent, acked) = &log[id];
        // The rename after the restart was acknowledged, and it was the last one sent.
        assert_eq!(*acked, sent.len(), "key {id}: {sent:?}");
        assert_eq!(&got, sent.last().unwrap(), "key {id} lost its last rename");
    }
    assert_eq!(
        admin.get("/v1/audit/verify").await.expect(200)["valid"],
        true
    );
}

/// How many data-key versions the running server's keyring holds.
async fn key_record_versions_live(admin: &crate::helpers::Api) -> usize {
    admin.get("/v1/sys/status").await.expect(200)["keyring"]["versions"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn backup_while_writing_then_restore() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("backup").await;
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(admin.issue(&api, json!({"name": format!("k{i}")})).await);
    }
    let cert = admin
        .post("/v1/certs", json!({"identity": "svc", "generate": true}))
        .await
        .expect(201);
    let serial = cert["serial"].as_str().unwrap().to_owned();
    admin
        .post(&format!("/v1/keys/{}/revoke", keys[0].0), json!({}))
        .await
        .expect(200);

    // Writes go on while the backup is taken.
    let writer = {
        let admin = admin.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let mut more = Vec::new();
            for i in 0..15 {
                more.push(admin.issue(&api, json!({"name": format!("w{i}")})).await);
            }
            more
        })
    };
    let backup = home.tmp.path().join("t.backup");
    let (ok, out, err) = {
        let out = Command::new(BIN)
            .args(["backup", "--server", &server.url(""), "--ca"])
            .arg(home.certs().join("ca.pem"))
            .arg("--out")
            .arg(&backup)
            .output_timed()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "{out}{err}");
    writer.await.unwrap();
    let bytes = std::fs::read(&backup).unwrap();
    // No plaintext secret and no master key in the backup.
    let master = std::fs::read_to_string(home.data().join("master.key")).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(master.trim().as_bytes()));
    let master_raw = tessera::crypto::hex::decode(master.trim()).unwrap();
    assert!(
        !contains(&master_raw),
        "the raw master key is in the backup"
    );
    for (_, k) in &keys {
        assert!(!contains(&k.as_bytes()[4..]));
    }
    assert!(!contains(b"PRIVATE KEY"));

    // A revocation after the backup: the restore must say it is lost.
    admin
        .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    drop(server);

    // Restore into a fresh directory, with the master key brought separately.
    let target = Home::new();
    std::fs::create_dir_all(target.data()).unwrap();
    std::fs::copy(
        home.data().join("master.key"),
        target.data().join("master.key"),
    )
    .unwrap();
    std::fs::create_dir_all(target.certs()).unwrap();
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "admin.pem",
        "admin.key",
        "crls.pem",
    ] {
        std::fs::copy(home.certs().join(f), target.certs().join(f)).unwrap();
    }
    let (ok, out, err) = run(&target, &["restore", backup.to_str().unwrap()], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("LOST"), "{out}");
    assert!(out.contains(&serial), "{out}");
    // Restoring over a database refuses.
    let (ok, _, _) = run(&target, &["restore", backup.to_str().unwrap()], None);
    assert!(!ok);

    let restored = Server::start(&target);
    let admin = restored.admin();
    assert_eq!(admin.verify(&keys[0].1).await, "REVOKED");
    for (_, k) in &keys[1..] {
        assert_eq!(admin.verify(k).await, "VALID");
    }
    let log = admin
        .get("/v1/audit?limit=100&after_seq=0")
        .await
        .expect(200);
    let all = admin.get("/v1/audit/verify").await.expect(200);
    assert_eq!(all["valid"], true, "{all}");
    let mut found = false;
    let mut after = 0;
    loop {
        let page = admin
            .get(&format!("/v1/audit?limit=100&after_seq={after}"))
            .await
            .expect(200);
        let items = page["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        found |= items
            .iter()
            .any(|e| e["action"] == "restore: new audit epoch");
        after = items.last().unwrap()["seq"].as_u64().unwrap();
    }
    assert!(found, "{log}");

    // A forged backup is refused, and nothing of it stays in the target. The attack: drop the
    // revocation index entries (and the header's list), so the restore reports nothing lost
    // and the revoked certificate comes back; then "fix" the integrity trailer without the
    // master key.
    let parsed = tessera::store::backup::parse(&bytes).unwrap();
    // (This backup holds no certificate revocation yet: any dropped entry is the same attack.)
    let kept: Vec<_> = parsed
        .entries
        .iter()
        .filter(|(k, _)| !k.windows(13).any(|w| w == b"revoked_by_ca"))
        .skip(1)
        .cloned()
        .collect();
    let mut header = parsed.header.clone();
    header.revoked_serials.clear();
    header.entries = kept.len() as u64;
    let forger = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x42; 32]);
    let mut bad_bytes = vec![
        tessera::store::backup::encode(&header, &kept, &forger),
        bytes[..bytes.len() - 9].to_vec(),
    ];
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    bad_bytes.push(flipped);
    // Truncated backups: by one byte, by the whole trailer, in the middle, right after the
    // magic, and the cleanest cut of all (the last entry dropped, the original trailer kept).
    let n = bytes.len();
    for cut in [n - 1, n - 32, n / 2, 20] {
        bad_bytes.push(bytes[..cut].to_vec());
    }
    let (last_k, last_v) = parsed.entries.last().unwrap();
    let last_len = 4 + last_k.len() + 4 + last_v.len();
    let mut clean_cut = bytes[..n - 32 - last_len].to_vec();
    clean_cut.extend_from_slice(&bytes[n - 32..]);
    bad_bytes.push(clean_cut);
    // Every variant is tried; those that were not refused cleanly are named together.
    let mut accepted = Vec::new();
    for (i, bad) in bad_bytes.iter().enumerate() {
        std::fs::write(&backup, bad).unwrap();
        let other = Home::new();
        std::fs::create_dir_all(other.data()).unwrap();
        std::fs::copy(
            home.data().join("master.key"),
            other.data().join("master.key"),
        )
        .unwrap();
        let (ok, out, err) = run(&other, &["restore", backup.to_str().unwrap()], None);
        let said = format!("{out}{err}");
        let named = said.contains("authentication")
            || said.contains("malformed")
            || said.contains("not a backup");
        let left_db = other.data().join("db").exists()
            && std::fs::read_dir(other.data().join("db"))
                .unwrap()
                .next()
                .is_some();
        if ok || !named || left_db {
            accepted.push(format!(
                "variant {i} ({} bytes of {}): restored {ok}, left a database {left_db}: {said}",
                bad.len(),
                bytes.len()
            ));
        }
    }
    assert!(
        accepted.is_empty(),
        "bad backups not refused: {accepted:#?}"
    );
    // Without the master key nothing is restored either.
    std::fs::write(&backup, &bytes).unwrap();
    let keyless = Home::new();
    let (ok, out, err) = run(&keyless, &["restore", backup.to_str().unwrap()], None);
    assert!(!ok, "{out}{err}");
    assert!(format!("{out}{err}").contains("master key"), "{out}{err}");
    assert!(!keyless.data().join("db").exists());
}

#[tokio::test]
async fn tampered_records_are_detected_not_served() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("tamper").await;
    let (id_a, key_a) = admin.issue(&api, json!({})).await;
    let (id_b, key_b) = admin.issue(&api, json!({})).await;
    let (_, key_c) = admin.issue(&api, json!({})).await;
    server.terminate();
    {
        let db = sled::open(home.data().join("db")).unwrap();
        let ka = format!("r/key/{id_a}").into_bytes();
        let kb = format!("r/key/{id_b}").into_bytes();
        // Flip a byte of A; swap B with A's original.
        let a = db.get(&ka).unwrap().unwrap().to_vec();
        let b = db.get(&kb).unwrap().unwrap().to_vec();
        let mut flipped = a.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        db.insert(&ka, flipped).unwrap();
        db.insert(&kb, a).unwrap();
        db.flush().unwrap();
        let _ = b;
    }
    let server = Server::start(&home);
    let admin = server.admin();
    for key in [&key_a, &key_b] {
        let r = admin.post("/v1/keys/verify", json!({"key": key})).await;
        assert_eq!(r.status, 500, "{}", r.text);
        assert_eq!(r.json()["error"]["code"], "internal");
        assert!(!r.text.contains("key_"), "no detail leaks: {}", r.text);
    }
    assert_eq!(admin.verify(&key_c).await, "VALID");
    let log = std::fs::read_to_string(home.log()).unwrap();
    assert!(
        log.contains("integrity"),
        "the corruption is reported in the log"
    );
}

#[tokio::test]
async fn master_key_rotation_key_file_shares_and_interrupted() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("remaster").await;
    let (_, key) = admin.issue(&api, json!({})).await;
    server.terminate();

    // Key-file mode: a new key file; everything opens with it.
    let before = std::fs::read_to_string(home.data().join("master.key")).unwrap();
    let (ok, out, err) = run(&home, &["rotate-master"], None);
    assert!(ok, "{out}{err}");
    let after = std::fs::read_to_string(home.data().join("master.key")).unwrap();
    assert_ne!(before, after);
    let mut server = Server::start(&home);
    assert_eq!(server.admin().verify(&key).await, "VALID");
    server.terminate();

    // Move to shares: the key file goes, shares come.
    let (ok, out, err) = run(
        &home,
        &["rotate-master", "--shares", "3", "--threshold", "2"],
        None,
    );
    assert!(ok, "{out}{err}");
    let shares: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("share-"))
        .map(str::to_owned)
        .collect();
    assert_eq!(shares.len(), 3);
    assert!(!home.data().join("master.key").exists());
    // Shares to new shares, the old ones given on stdin; the old ones stop working.
    let (ok, out, err) = run(
        &home,
        &["rotate-master", "--shares", "3", "--threshold", "2"],
        Some(&format!("{}\n{}\n", shares[0], shares[2])),
    );
    assert!(ok, "{out}{err}");
    let fresh: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("share-"))
        .map(str::to_owned)
        .collect();
    let server = Server::start(&home);
    let anon = server.anonymous();
    anon.post("/v1/sys/unseal", json!({"share": shares[0]}))
        .await
        .expect(400);
    anon.post("/v1/sys/unseal", json!({"share": fresh[1]}))
        .await
        .expect(200);
    anon.post("/v1/sys/unseal", json!({"share": fresh[2]}))
        .await
        .expect(200);
    assert_eq!(server.admin().verify(&key).await, "VALID");
    drop(server);

    // A rotation interrupted after the key switched but before the keyring was promoted is
    // finished by the next unseal.
    let home = Home::new();
    let mut server = Server::start(&home);
    let api = server.admin().create_api("interrupted").await;
    let (_, key) = server.admin().issue(&api, json!({})).await;
    server.terminate();
    {
        use tessera::{
            crypto::{hex, keyring::MasterKey, secret::Key256},
            store::sled::{SledDb, SledOptions},
        };
        let old_hex = std::fs::read_to_string(home.data().join("master.key")).unwrap();
        let old =
            MasterKey::new(Key256::from_slice(&hex::decode(old_hex.trim()).unwrap()).unwrap())
                .unwrap();
        let new = MasterKey::generate().unwrap();
        let db = SledDb::open(&home.data().join("db"), &SledOptions::default()).unwrap();
        let staged = db
            .wrapped_keyring()
            .unwrap()
            .unwrap()
            .rewrapped(&old, &new)
            .unwrap();
        db.stage_keyring(&staged).unwrap();
        drop(db);
        tessera::app::write_key_file(&home.data().join("master.key"), &new).unwrap();
    }
    let server = Server::start(&home);
    assert_eq!(server.admin().verify(&key).await, "VALID");
}
