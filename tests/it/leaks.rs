//! Leak reports: GitHub's secret scanning partner format, signed with a key pair the test makes
//! with openssl (as GitHub's would be), and reports from a key's holder.

use crate::proc::Timed;
use std::{fs, path::Path, process::Command};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::{Api, Home, Server};

/// A P-256 key pair made by openssl: (private key file, public key PEM).
fn key_pair(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let ok = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&key)
        .status_timed()
        .unwrap();
    assert!(ok.success());
    let public = Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&key)
        .output_timed()
        .unwrap();
    assert!(public.status.success());
    (key, String::from_utf8(public.stdout).unwrap())
}

/// The base64 DER ECDSA-SHA256 signature of `body`, made by openssl.
fn sign(dir: &Path, key: &Path, body: &[u8]) -> String {
    let file = dir.join("body.json");
    fs::write(&file, body).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&file)
        .output_timed()
        .unwrap();
    assert!(out.status.success());
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

async fn post_report(
    server: &Server,
    body: &[u8],
    id: Option<&str>,
    sig: Option<&str>,
) -> (u16, String) {
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(crate::helpers::client_config(
            &server.certs.join("ca.pem"),
            None,
        ))
        .build()
        .unwrap();
    let mut req = http
        .post(server.url("/v1/leaks/github"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(id) = id {
        req = req.header("Github-Public-Key-Identifier", id);
    }
    if let Some(sig) = sig {
        req = req.header("Github-Public-Key-Signature", sig);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn metric(admin: &Api, result: &str) -> f64 {
    let text = admin.get("/metrics").await.expect_text(200);
    let line = format!("tessera_leak_reports_total{{result=\"{result}\",source=\"github\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn github_reports_revoke_live_keys_and_forgeries_change_nothing() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let (github_key, github_pub) = key_pair(dir.path(), "github");
    let (forger_key, forger_pub) = key_pair(dir.path(), "forger");
    let keys_file = dir.path().join("github-keys.json");
    fs::write(
        &keys_file,
        json!({"public_keys": [
            {"key_identifier": "gh-current", "key": github_pub, "is_current": true},
            {"key_identifier": "gh-other", "key": forger_pub, "is_current": false},
        ]})
        .to_string(),
    )
    .unwrap();
    // gh-other is a well-formed key too, but not the one that signs below in its name.
    let server = Server::start_with_config(
        &home,
        &format!(
            "[leaks]\ngithub_keys_file = \"{}\"\ngithub_feedback = true\n",
            keys_file.display()
        ),
    );
    let admin = server.admin();
    let api = admin.create_api("leaky").await;
    let (k1, leaked) = admin.issue(&api, json!({})).await;
    let (k2, revoked_before) = admin.issue(&api, json!({})).await;
    admin
        .post(&format!("/v1/keys/{k2}/revoke"), json!({}))
        .await
        .expect(200);
    let (_, bystander) = admin.issue(&api, json!({})).await;
    admin
        .post("/v1/tenants", json!({"name": "acme"}))
        .await
        .expect(201);
    let root = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "acme", "name": "portal", "permissions": ["apis:read"]}),
        )
        .await
        .expect(201);
    let root_secret = root["key"].as_str().unwrap().to_owned();
    // A well-formed key of another server: its checksum holds, it is not ours.
    let other_home = Home::new();
    let other = Server::start(&other_home);
    let other_api = other.admin().create_api("elsewhere").await;
    let (_, foreign) = other.admin().issue(&other_api, json!({})).await;
    // That server has no [leaks] configured: the route is off.
    let (status, _) = post_report(&other, b"[]", Some("gh-current"), Some("AAAA")).await;
    assert_eq!(status, 404);
    drop(other);
    let mut garbage = leaked.clone();
    garbage.pop();
    garbage.push(if leaked.ends_with('A') { 'B' } else { 'A' });

    // Forgeries and mistakes: 401, and nothing revoked.
    let body = json!([{"token": bystander, "type": "tessera_key", "url": "https://github.com/o/r/blob/x/a.txt", "source": "content"}])
        .to_string();
    let good = sign(dir.path(), &github_key, body.as_bytes());
    let forged = sign(dir.path(), &forger_key, body.as_bytes());
    let other_body = sign(dir.path(), &github_key, b"[]");
    let tampered = body.replace("a.txt", "b.txt");
    for (what, b, id, sig) in [
        ("no headers", body.as_str(), None, None),
        ("no signature", body.as_str(), Some("gh-current"), None),
        (
            "another key",
            body.as_str(),
            Some("gh-current"),
            Some(forged.as_str()),
        ),
        (
            "unknown key id",
            body.as_str(),
            Some("gh-unknown"),
            Some(good.as_str()),
        ),
        (
            "a known key id whose key did not sign",
            body.as_str(),
            Some("gh-other"),
            Some(good.as_str()),
        ),
        (
            "another body's signature",
            body.as_str(),
            Some("gh-current"),
            Some(other_body.as_str()),
        ),
        (
            "a body changed after signing",
            tampered.as_str(),
            Some("gh-current"),
            Some(good.as_str()),
        ),
        ("not base64", body.as_str(), Some("gh-current"), Some("%%%")),
    ] {
        let (status, text) = post_report(&server, b.as_bytes(), id, sig).await;
        assert_eq!(status, 401, "{what}: {text}");
        assert!(!text.contains(&bystander), "{what}");
    }
    assert_eq!(admin.verify(&bystander).await, "VALID");
    // A signed body of the wrong shape is a 400 that never quotes what it holds.
    let wrong = json!([bystander]).to_string();
    let sig = sign(dir.path(), &github_key, wrong.as_bytes());
    let (status, text) =
        post_report(&server, wrong.as_bytes(), Some("gh-current"), Some(&sig)).await;
    assert_eq!(status, 400, "{text}");
    assert!(!text.contains(&bystander), "{text}");

    // A signed report: ours are revoked (reason `leaked`), the rest labelled false positives.
    let url = "https://github.com/octo/repo/blob/0123abc/config/prod.env";
    let report = json!([
        {"token": leaked, "type": "tessera_api_key", "url": url, "source": "content"},
        {"token": root_secret, "type": "tessera_root_key", "url": url, "source": "commit"},
        {"token": revoked_before, "type": "tessera_api_key", "url": url, "source": "content"},
        {"token": foreign, "type": "tessera_api_key", "url": url, "source": "content"},
        {"token": garbage, "type": "tessera_api_key", "url": url, "source": "content"},
    ])
    .to_string();
    let sig = sign(dir.path(), &github_key, report.as_bytes());
    let (status, text) =
        post_report(&server, report.as_bytes(), Some("gh-current"), Some(&sig)).await;
    assert_eq!(status, 200, "{text}");
    for secret in [&leaked, &root_secret, &revoked_before, &foreign, &garbage] {
        assert!(
            !text.contains(secret.as_str()),
            "a token in the answer: {text}"
        );
    }
    let labels: Value = serde_json::from_str(&text).unwrap();
    let label_of = |secret: &str| {
        labels
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["token_hash"] == sha256_hex(secret))
            .map(|l| l["label"].as_str().unwrap().to_owned())
    };
    assert_eq!(label_of(&leaked).as_deref(), Some("true_positive"));
    assert_eq!(label_of(&root_secret).as_deref(), Some("true_positive"));
    assert_eq!(label_of(&revoked_before).as_deref(), Some("true_positive"));
    assert_eq!(label_of(&foreign).as_deref(), Some("false_positive"));
    assert_eq!(label_of(&garbage).as_deref(), Some("false_positive"));

    assert_eq!(admin.verify(&leaked).await, "REVOKED");
    assert_eq!(admin.verify(&bystander).await, "VALID");
    let k = admin.get(&format!("/v1/keys/{k1}")).await.expect(200);
    assert_eq!(
        (k["state"].as_str(), k["revocation_reason"].as_str()),
        (Some("revoked"), Some("leaked"))
    );
    let k = admin.get(&format!("/v1/keys/{k2}")).await.expect(200);
    assert!(
        k["revocation_reason"].is_null(),
        "revoked before, by request: {k}"
    );
    // The leaked root key no longer authenticates.
    let portal = Api::with_base(
        server.url(""),
        crate::helpers::client_config(&server.certs.join("ca.pem"), None),
    );
    let r = portal
        .send(
            portal
                .http
                .get(server.url("/v1/apis"))
                .bearer_auth(&root_secret),
        )
        .await;
    assert_eq!(r.status, 401);

    // Audited: who reported, where it was found, which key; never the token.
    let log = admin.get("/v1/audit?limit=100").await.expect(200);
    let entries: Vec<&Value> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "POST /v1/leaks/github" && e["outcome"] == "success")
        .collect();
    assert_eq!(entries.len(), 2, "one entry per revoked key: {log}");
    let k1_entry = entries.iter().find(|e| e["object"] == k1.as_str()).unwrap();
    assert_eq!(k1_entry["principal"], "github-secret-scanning");
    let detail = k1_entry["detail"].as_str().unwrap();
    assert!(
        detail.contains(url) && detail.contains("content"),
        "{detail}"
    );
    assert!(
        entries.iter().any(|e| e["tenant"] == "acme"),
        "the root key's tenant"
    );
    let all = log.to_string();
    for secret in [&leaked, &root_secret, &garbage] {
        assert!(!all.contains(secret.as_str()));
    }
    // Garbage was refused by its checksum, before any look-up; the foreign key was looked up.
    assert_eq!(metric(&admin, "malformed").await, 1.0);
    assert_eq!(metric(&admin, "unknown").await, 1.0);
    assert_eq!(metric(&admin, "revoked").await, 2.0);
    assert_eq!(metric(&admin, "already_revoked").await, 1.0);
}

fn count_reports(log: &Value) -> usize {
    log["items"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|e| e["action"] == "POST /v1/keys/report-leak")
            .count()
    })
}

#[tokio::test]
async fn a_holder_reports_a_leaked_key_and_learns_nothing_about_it() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("orders").await;
    let (kid, key) = admin.issue(&api, json!({})).await;
    // A verifier of another tenant found it: it may report it (it holds it), and gets the same
    // empty answer for a live key, a garbage string and a key that is already gone.
    admin
        .post("/v1/tenants", json!({"name": "acme"}))
        .await
        .expect(201);
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::bind(&admin, "acme", "scanner", &["verifier"]).await;
    let (cert, cert_key, _) =
        crate::helpers::identity_files(&admin, dir.path(), "acme", "scanner").await;
    let scanner = server.client(&cert, &cert_key);
    let mut answers = Vec::new();
    for body in [
        json!({"key": key}),
        json!({"key": "tsk_garbage"}),
        json!({"key": key}),
    ] {
        let r = scanner.post("/v1/keys/report-leak", body).await;
        answers.push((r.status, r.text.clone()));
    }
    assert!(
        answers.iter().all(|a| a.0 == 202 && a.1.is_empty()),
        "{answers:?}"
    );
    assert_eq!(admin.verify(&key).await, "REVOKED");
    let k = admin.get(&format!("/v1/keys/{kid}")).await.expect(200);
    assert_eq!(k["revocation_reason"], "leaked");
    // One entry per report, in the key's tenant, and it does not name the other tenant's
    // principal.
    // (The two that changed nothing are written just after their answers.)
    for _ in 0..50 {
        if count_reports(&admin.get("/v1/audit?limit=100").await.expect(200)) >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = admin.get("/v1/audit?limit=100").await.expect(200);
    assert_eq!(
        count_reports(&log),
        3,
        "exactly one entry per report: {log}"
    );
    let reports: Vec<&Value> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "POST /v1/keys/report-leak")
        .collect();
    let revocation = reports
        .iter()
        .find(|e| e["object"] == kid.as_str())
        .unwrap();
    assert_eq!(revocation["tenant"], "default");
    assert_eq!(revocation["principal"], "a principal of another tenant");
    assert!(!log.to_string().contains(&key));
    // Without a credential: the uniform 401.
    let r = server
        .anonymous()
        .post("/v1/keys/report-leak", json!({"key": key}))
        .await;
    assert_eq!(r.status, 401);
    // A bad body is a 400 naming the field, and changes nothing.
    let r = scanner
        .post("/v1/keys/report-leak", json!({"token": key}))
        .await;
    assert_eq!(r.status, 400);
}
