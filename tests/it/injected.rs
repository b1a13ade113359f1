//! Storage faults injected at the store's edge (`src/store/faulty.rs`, debug builds only): the
//! server started with `TESSERA_TEST_FAULTS` reads a rule from a file before every write
//! (fail, delay or crash at the Nth write; pause the keyring rewrap between its read and its
//! compare-and-swap). Both engines: the embedded one and PostgreSQL (started by the test).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    helpers::{Api, Home, Server},
    pg::Postgres,
};

/// A server whose store follows the rules in `<home>/faults`; `store` adds `--store <url>`.
fn start(home: &Home, store: Option<&str>) -> (Server, PathBuf) {
    let rules = home.tmp.path().join("faults");
    std::fs::write(&rules, "").unwrap();
    let extra: Vec<&str> = store.map(|u| vec!["--store", u]).unwrap_or_default();
    let server = Server::start_with_env(
        home,
        &extra,
        &[("TESSERA_TEST_FAULTS", rules.to_str().unwrap())],
    );
    (server, rules)
}

fn sibling(rules: &Path, ext: &str) -> PathBuf {
    let mut p = rules.as_os_str().to_owned();
    p.push(ext);
    PathBuf::from(p)
}

async fn wait_versions(admin: &Api, want: usize) {
    for _ in 0..600 {
        let s = admin.get("/v1/sys/status").await.expect(200);
        if s["keyring"]["versions"].as_array().map(Vec::len) == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the keyring never reached {want} versions");
}

/// The keyring rewrap re-seals each record by compare-and-swap, so a write that lands between
/// the rewrap's read of a record and its swap wins. Deterministically: the rewrap is held
/// right after reading a key record under the old data key, the key is renamed (acknowledged),
/// the rewrap goes on; after the rewrap and a restart (nothing from memory) the key holds the
/// new name and verifies. A plain write in place of the swap puts the old name back.
async fn rewrap_race(store: Option<&str>) {
    let home = Home::new();
    let (mut server, rules) = start(&home, store);
    let admin = server.admin();
    let api = admin.create_api("rewrap-race").await;
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(admin.issue(&api, json!({"name": format!("k{i}")})).await);
    }
    std::fs::write(&rules, "pause-rewrap key").unwrap();
    admin
        .post("/v1/sys/rotate-keyring", json!({}))
        .await
        .expect(200);
    let paused = sibling(&rules, ".paused");
    let mut held = None;
    for _ in 0..600 {
        if let Ok(t) = std::fs::read_to_string(&paused) {
            held = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = held.expect("the rewrap never reached a key record");
    let id = held.strip_prefix("key/").unwrap().to_owned();
    let secret = keys
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| panic!("the rewrap held {held}, not one of our keys"));
    admin
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"name": "renamed-mid-rewrap"}),
        )
        .await
        .expect(200);
    std::fs::write(sibling(&rules, ".go"), "").unwrap();
    std::fs::write(&rules, "").unwrap();
    wait_versions(&admin, 1).await;
    server.kill9();
    let server = Server::start_with_env(
        &home,
        &store.map(|u| vec!["--store", u]).unwrap_or_default(),
        &[],
    );
    let admin = server.admin();
    let got = admin.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(
        got["name"], "renamed-mid-rewrap",
        "the rewrap overwrote a write made between its read and its swap: {got}"
    );
    assert_eq!(admin.verify(&secret).await, "VALID");
    for (_, s) in &keys {
        assert_eq!(admin.verify(s).await, "VALID");
    }
}

#[tokio::test]
async fn the_rewrap_never_overwrites_a_concurrent_write_embedded() {
    rewrap_race(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rewrap_never_overwrites_a_concurrent_write_postgres() {
    let pg = Postgres::start();
    let url = pg.create_db("rewrap");
    rewrap_race(Some(&url)).await;
}

/// Everything a failed write must leave as it was, read through the API (memory and store).
async fn state(admin: &Api, c: &Ctx) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/v1/apis?limit=100".to_owned(),
        format!("/v1/apis/{}/keys?limit=100", c.api),
        format!("/v1/keys/{}", c.key),
        "/v1/certs?limit=100".to_owned(),
        "/v1/tenants?limit=100".to_owned(),
        "/v1/tenants/base/bindings?limit=100".to_owned(),
        "/v1/tenants/base/roles?limit=100".to_owned(),
        "/v1/root-keys?limit=100".to_owned(),
    ] {
        let r = admin.get(&path).await;
        out.insert(path, json!({"status": r.status, "body": r.json()}));
    }
    Value::Object(out)
}

/// Objects the write routes act on.
struct Ctx {
    api: String,
    key: String,
}

/// One write: method, path and body, with any object it needs made beforehand (no faults).
async fn write_route(
    admin: &Api,
    c: &Ctx,
    route: usize,
    i: usize,
) -> (&'static str, String, Value) {
    match route {
        0 => (
            "POST",
            "/v1/apis".into(),
            json!({"name": format!("f-api-{i}"), "purpose": "t", "owner": "qa", "risk": "low"}),
        ),
        1 => (
            "POST",
            format!("/v1/apis/{}/keys", c.api),
            json!({"name": format!("f-key-{i}")}),
        ),
        2 => (
            "PATCH",
            format!("/v1/keys/{}", c.key),
            json!({"name": format!("renamed-{i}")}),
        ),
        3 => {
            let (id, _) = admin.issue(&c.api, json!({})).await;
            ("POST", format!("/v1/keys/{id}/rotate"), json!({}))
        }
        4 => {
            let (id, _) = admin.issue(&c.api, json!({})).await;
            ("POST", format!("/v1/keys/{id}/revoke"), json!({}))
        }
        5 => (
            "POST",
            "/v1/certs".into(),
            json!({"identity": format!("f-cert-{i}"), "generate": true}),
        ),
        6 => {
            let serial = admin
                .post("/v1/certs", json!({"identity": "victim", "generate": true}))
                .await
                .expect(201)["serial"]
                .as_str()
                .unwrap()
                .to_owned();
            ("POST", format!("/v1/certs/{serial}/revoke"), json!({}))
        }
        7 => (
            "POST",
            "/v1/tenants".into(),
            json!({"name": format!("f-ten-{i}")}),
        ),
        8 => (
            "PUT",
            format!("/v1/tenants/base/bindings/f-svc-{i}"),
            json!({"roles": ["verifier"]}),
        ),
        9 => (
            "POST",
            "/v1/tenants/base/roles".into(),
            json!({"name": format!("f-role-{i}"), "permissions": ["keys:read"]}),
        ),
        10 => (
            "POST",
            "/v1/root-keys".into(),
            json!({"tenant": "base", "name": format!("f-rk-{i}"), "permissions": ["keys:read"]}),
        ),
        11 => (
            "POST",
            "/v1/enrolment-tokens".into(),
            json!({"identity": format!("f-enrol-{i}")}),
        ),
        12 => {
            let api = admin.create_api(&format!("f-doomed-{i}")).await;
            ("DELETE", format!("/v1/apis/{api}"), Value::Null)
        }
        _ => unreachable!(),
    }
}

const ROUTES: usize = 13;

async fn send(admin: &Api, method: &str, path: &str, body: &Value) -> crate::helpers::Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = admin.http.request(m, admin.url(path));
    if !body.is_null() {
        req = req.json(body);
    }
    admin.send(req).await
}

/// The serials (lowercase hex) the current CRL lists.
async fn crl_serials(admin: &Api) -> Vec<String> {
    serials_in(&admin.get("/v1/pki/crl?format=pem").await.expect_text(200))
}

/// The serials (lowercase hex) listed by the PEM CRLs in `text`.
fn serials_in(text: &str) -> Vec<String> {
    pem::parse_many(text.as_bytes())
        .unwrap()
        .iter()
        .flat_map(|p| {
            let (_, crl) = x509_parser::parse_x509_crl(p.contents()).unwrap();
            crl.iter_revoked_certificates()
                .map(|r| {
                    r.raw_serial()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                        .trim_start_matches('0')
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The audit entries written for one request id.
async fn entries_of(admin: &Api, request_id: &str) -> Vec<Value> {
    crate::helpers::audit_after(admin, 0)
        .await
        .into_iter()
        .filter(|e| e["request_id"] == request_id)
        .collect()
}

/// Every write route, with the first write it makes failing, then the second, then every
/// write: a failure answers 503 and leaves the visible state exactly as it was, with no audit
/// entry of success; a 2xx has its entry. After a SIGKILL and a restart, the state is what
/// was visible before it (nothing acknowledged lost, nothing unacknowledged appeared).
async fn every_write_route_through_failing_writes(store: Option<&str>) {
    let home = Home::new();
    let (mut server, rules) = start(&home, store);
    let admin = server.admin();
    let c = Ctx {
        api: admin.create_api("faulty").await,
        key: String::new(),
    };
    let c = Ctx {
        key: admin.issue(&c.api, json!({"name": "patched"})).await.0,
        ..c
    };
    admin
        .post("/v1/tenants", json!({"name": "base"}))
        .await
        .expect(201);
    let mut i = 0;
    let mut failed = [0usize; ROUTES];
    let mut served = [0usize; ROUTES];
    for route in 0..ROUTES {
        for rule in ["", "fail 1", "fail 2", "fail-from 1"] {
            i += 1;
            let (method, path, body) = write_route(&admin, &c, route, i).await;
            let before = state(&admin, &c).await;
            std::fs::write(&rules, rule).unwrap();
            let r = send(&admin, method, &path, &body).await;
            std::fs::write(&rules, "").unwrap();
            let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
            let entries = entries_of(&admin, &rid).await;
            let success = entries.iter().any(|e| e["outcome"] == "success");
            let what = format!("{method} {path} under {rule:?}");
            if (200..300).contains(&r.status) {
                served[route] += 1;
                assert!(success, "{what}: {} without its audit entry", r.status);
                assert!(
                    rule != "fail-from 1",
                    "{what}: {} with every write failing",
                    r.status
                );
                if route == 6 {
                    let serial = path.split('/').nth(3).unwrap();
                    assert!(
                        crl_serials(&admin).await.contains(&serial.to_owned()),
                        "{what}: revoked, not in the CRL"
                    );
                }
            } else {
                failed[route] += 1;
                assert_eq!(r.status, 503, "{what}: {}", r.text);
                let after = state(&admin, &c).await;
                if route == 6 && success {
                    // Revoking a certificate is two writes: the revocation (with its entry),
                    // then the CRL re-signed. When the second fails the revocation is in
                    // force but the answer is 503 (a 5xx may have been applied; a 2xx never
                    // is unapplied). The server re-signs on its own within seconds (the CRL
                    // task's retry), with no help from the client; a retry by the client
                    // then succeeds and changes nothing.
                    let serial = path.split('/').nth(3).unwrap();
                    let deadline = std::time::Instant::now() + Duration::from_secs(15);
                    while !crl_serials(&admin).await.contains(&serial.to_owned()) {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "{what}: the CRL still lacks the serial 15 s after its signing failed"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let retry = send(&admin, method, &path, &body).await;
                    assert_eq!(retry.status, 200, "{what}: the retry: {}", retry.text);
                    assert!(
                        crl_serials(&admin).await.contains(&serial.to_owned()),
                        "{what}: not in the CRL after the retry"
                    );
                    continue;
                }
                assert!(!success, "{what}: refused but audited as done: {entries:?}");
                assert_eq!(before, after, "{what}: refused but (half-)applied");
            }
            assert!(
                !rule.is_empty() || (200..300).contains(&r.status),
                "{what}: {}",
                r.text
            );
        }
    }
    for route in 0..ROUTES {
        assert!(
            failed[route] >= 1 && served[route] >= 1,
            "route {route}: failed {}, served {}",
            failed[route],
            served[route]
        );
    }
    let before = state(&admin, &c).await;
    server.kill9();
    let server = Server::start_with_env(
        &home,
        &store.map(|u| vec!["--store", u]).unwrap_or_default(),
        &[],
    );
    let after = state(&server.admin(), &c).await;
    assert_eq!(
        before, after,
        "what was visible before the SIGKILL is not what was stored"
    );
    let chain = server.admin().get("/v1/audit/verify").await.expect(200);
    assert_eq!(chain["valid"], true, "{chain}");
}

#[tokio::test]
async fn every_write_route_through_failing_writes_embedded() {
    every_write_route_through_failing_writes(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_route_through_failing_writes_postgres() {
    let pg = Postgres::start();
    let url = pg.create_db("faulty");
    every_write_route_through_failing_writes(Some(&url)).await;
}

/// A crash in the middle of a write: the process aborts once a key's batch is durable but
/// before the answer (the client sees the connection drop), or before it is applied. After a
/// restart the key is there with its audit entry, or absent with none; never one without the
/// other.
#[tokio::test]
async fn a_crash_at_a_write_leaves_the_change_and_its_entry_together() {
    for rule in ["crash-after 1", "crash-before 1"] {
        let home = Home::new();
        let (mut server, rules) = start(&home, None);
        let admin = server.admin();
        let api = admin.create_api("crashing").await;
        std::fs::write(&rules, rule).unwrap();
        let r = admin
            .try_post(
                &format!("/v1/apis/{api}/keys"),
                json!({"name": "mid-crash"}),
            )
            .await;
        assert!(r.is_none(), "{rule}: the write was answered: {r:?}");
        std::fs::write(&rules, "").unwrap();
        server.kill9();
        let server = Server::start(&home);
        let admin = server.admin();
        let keys = admin.get(&format!("/v1/apis/{api}/keys")).await.expect(200)["items"]
            .as_array()
            .unwrap()
            .clone();
        let all = crate::helpers::audit_after(&admin, 0).await;
        let audited = all
            .iter()
            .filter(|e| {
                e["action"].as_str().unwrap_or("").contains("/keys") && e["outcome"] == "success"
            })
            .count();
        match rule {
            "crash-after 1" => {
                assert_eq!(keys.len(), 1, "{rule}: the durable key is gone");
                assert_eq!(audited, 1, "{rule}: the stored key has no entry: {all:?}");
            }
            _ => {
                assert!(keys.is_empty(), "{rule}: a key never written is there");
                assert_eq!(audited, 0, "{rule}: an entry for a key never written");
            }
        }
        assert_eq!(
            admin.get("/v1/audit/verify").await.expect(200)["valid"],
            true
        );
    }
}

/// A crash between a revocation's commit and its CRL's: the process aborts at the CRL write
/// (the revocation durable, its CRL not). The next start finds the stored CRL behind the
/// revocation index and signs it again, so the published CRL lists the serial although
/// nobody retries the revocation.
#[tokio::test]
async fn a_crash_between_a_revocation_and_its_crl_is_repaired_at_the_next_start() {
    let home = Home::new();
    let (mut server, rules) = start(&home, None);
    let admin = server.admin();
    let serial = admin
        .post("/v1/certs", json!({"identity": "victim", "generate": true}))
        .await
        .expect(201)["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&rules, "crash-before 2").unwrap();
    let r = admin
        .try_post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await;
    assert!(r.is_none(), "the revocation was answered: {r:?}");
    std::fs::write(&rules, "").unwrap();
    server.kill9();
    let server = Server::start(&home);
    let admin = server.admin();
    let cert = admin.get(&format!("/v1/certs/{serial}")).await.expect(200);
    assert_eq!(
        cert["state"], "revoked",
        "the revocation was not durable: {cert}"
    );
    assert!(
        crl_serials(&admin).await.contains(&serial),
        "the CRL published after the restart does not list the revoked serial"
    );
    let on_disk = std::fs::read_to_string(home.certs().join("crls.pem")).unwrap();
    let listed = serials_in(&on_disk);
    assert!(
        listed.contains(&serial),
        "certs/crls.pem (for nginx) does not list the revoked serial: {listed:?}"
    );
}
