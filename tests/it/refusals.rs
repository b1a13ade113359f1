//! Issue 20: refusals an operator can act on. A certificate refused at the handshake is
//! audited (tallied, like every refusal without a usable credential) and logged with its
//! serial, its reason and the peer; a 401's log line says why, from where and which
//! certificate; an end client refused at forward auth is the end client's refusal; a 403 body
//! names the permission the caller lacks. Never a secret in any of it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    helpers::{Home, Server, bind, identity_files, service},
    trust::{entries_after, head, tally},
};

const CONFIG: &str = "[audit]\nrefusal_window_seconds = 1\n[limits]\nlockout_threshold = 1000\n";

/// The server log's lines that contain `what`.
fn lines_with(home: &Home, what: &str) -> Vec<String> {
    std::fs::read_to_string(home.log())
        .unwrap()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// A self-signed certificate (no chain to Tessera's root) and its key, in `dir`; returns the
/// paths and the serial.
fn foreign(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x7e, 0x57, 0xab, 0x1e]));
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (dir.join("foreign.pem"), dir.join("foreign.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, "7e57ab1e".to_owned())
}

#[tokio::test]
async fn issue_20_handshake_refusals_are_audited_and_logged_with_serial_and_peer() {
    let home = Home::new();
    let server = Server::start_with_config(&home, CONFIG);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, serial) = identity_files(&admin, dir.path(), "default", "gone").await;
    admin
        .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    let before = head(&admin).await;

    // A flood of new connections with the revoked certificate, and one from a foreign CA.
    for _ in 0..25 {
        let c = server.client(&cert, &key);
        assert!(c.http.get(c.url("/v1/whoami")).send().await.is_err());
    }
    let (fc, fk, foreign_serial) = foreign(dir.path());
    let c = server.client(&fc, &fk);
    assert!(c.http.get(c.url("/v1/whoami")).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let new = entries_after(&admin, before).await;
    let handshakes: Vec<&Value> = new
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("TLS handshake"))
        .collect();
    assert_eq!(
        handshakes.len(),
        2,
        "one tally each, not 26 entries: {new:?}"
    );
    let revoked = handshakes
        .iter()
        .find(|e| e["action"] == "TLS handshake (revoked)")
        .unwrap_or_else(|| panic!("{handshakes:?}"));
    assert_eq!(tally(revoked), 25, "{revoked}");
    assert_eq!(revoked["principal"], format!("cert:{serial}"));
    assert_eq!(revoked["object"], serial.as_str());
    assert_eq!(revoked["outcome"], "unauthenticated");
    assert_eq!(revoked["source"], "127.0.0.1");
    let unknown = handshakes
        .iter()
        .find(|e| e["action"] == "TLS handshake (unknown issuer)")
        .unwrap_or_else(|| panic!("{handshakes:?}"));
    assert_eq!(unknown["object"], foreign_serial.as_str());

    // Each refusal is logged with its serial, reason and peer.
    let lines = lines_with(&home, "client certificate refused at the handshake");
    assert_eq!(lines.len(), 26, "{lines:?}");
    let ours: Vec<_> = lines.iter().filter(|l| l.contains(&serial)).collect();
    assert_eq!(ours.len(), 25, "{lines:?}");
    assert!(ours[0].contains("peer=127.0.0.1:"), "{}", ours[0]);
    assert!(ours[0].contains("revoked"), "{}", ours[0]);
    let theirs = lines.iter().find(|l| l.contains(&foreign_serial)).unwrap();
    assert!(
        theirs.contains("unknown issuer") && theirs.contains("peer=127.0.0.1:"),
        "{theirs}"
    );
}

#[tokio::test]
async fn issue_20_a_401_log_line_says_why_from_where_and_which_certificate() {
    let home = Home::new();
    let server = Server::start_with_config(&home, CONFIG);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();

    server.anonymous().get("/v1/apis").await.expect(401);
    let garbage = "tsr_0000000000000000000000000000000000000000000";
    let r = server
        .anonymous()
        .send(
            server
                .anonymous()
                .http
                .get(server.url("/v1/apis"))
                .bearer_auth(garbage),
        )
        .await;
    assert_eq!(r.status, 401);
    // A keep-alive connection whose certificate is revoked after it opened.
    let (cert, key, serial) = identity_files(&admin, dir.path(), "default", "late").await;
    let late = server.client(&cert, &key);
    late.get("/v1/whoami").await.expect(200);
    admin
        .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    late.get("/v1/whoami").await.expect(401);

    let lines = lines_with(&home, "authentication refused");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains("reason=no credential"), "{}", lines[0]);
    assert!(
        lines[1].contains("reason=bearer root key refused"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("reason=client certificate revoked") && lines[2].contains(&serial),
        "{}",
        lines[2]
    );
    for l in &lines {
        assert!(l.contains("peer=127.0.0.1:"), "{l}");
        assert!(l.contains("request_id=req_"), "{l}");
    }
    let log = std::fs::read_to_string(home.log()).unwrap();
    assert!(!log.contains(garbage), "never the credential");
}

/// The README's gateway: a service of tenant `acme` with role `verifier`, checking keys of
/// its own tenant's API.
#[tokio::test]
async fn issue_20_an_end_clients_refused_key_is_the_end_clients_refusal() {
    let home = Home::new();
    let server = Server::start_with_config(&home, CONFIG);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    admin
        .post("/v1/tenants", json!({"name": "acme"}))
        .await
        .expect(201);
    let api = admin
        .post(
            "/v1/apis",
            json!({"tenant": "acme", "name": "orders", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key_id, key) = admin.issue(&api, json!({"scopes": ["read"]})).await;
    admin
        .post(&format!("/v1/keys/{key_id}/revoke"), json!({}))
        .await
        .expect(200);
    let gateway = service(
        &server,
        &admin,
        dir.path(),
        "acme",
        "gateway",
        &["verifier"],
    )
    .await;
    let before = head(&admin).await;
    for _ in 0..3 {
        let r = gateway
            .send(
                gateway
                    .http
                    .get(gateway.url(&format!("/v1/auth/check?api_id={api}&scopes=read")))
                    .header("x-api-key", &key),
            )
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.text, "", "the end client learns nothing");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let new = entries_after(&admin, before).await;
    assert!(
        new.iter().all(|e| e["outcome"] != "unauthenticated"),
        "the gateway was not refused: {new:?}"
    );
    let check = new
        .iter()
        .find(|e| e["action"] == "GET /v1/auth/check")
        .unwrap_or_else(|| panic!("{new:?}"));
    assert_eq!(check["outcome"], "end_client_unauthenticated", "{check}");
    assert_eq!(tally(check), 3);
    let lines = lines_with(&home, "authentication refused");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].contains("reason=end client's key: REVOKED"),
        "{}",
        lines[0]
    );
    let log = std::fs::read_to_string(home.log()).unwrap();
    assert!(!log.contains(&key), "never the key");
}

#[tokio::test]
async fn issue_20_a_403_body_names_the_missing_permission() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    bind(&admin, "default", "reader", &["verifier"]).await;
    let reader = service(&server, &admin, dir.path(), "default", "reader", &[]).await;
    let v = reader
        .post(
            "/v1/apis",
            json!({"name": "x", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await
        .expect(403);
    assert_eq!(v["error"]["code"], "forbidden");
    assert_eq!(v["error"]["permission"], "apis:write", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("apis:write"),
        "{v}"
    );
    let v = reader
        .post("/v1/tenants", json!({"name": "nope"}))
        .await
        .expect(403);
    assert_eq!(v["error"]["permission"], "admin", "{v}");
}
