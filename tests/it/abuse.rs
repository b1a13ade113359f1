//! Abuse resistance: throttles, per-key limits and quotas, lockout, slowloris, connection
//! limits, and a clean TLS scan.

use crate::proc::Timed;
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::helpers::{Api, Home, Server, client_config};

fn with_xff(api: &Api, path: &str, ip: &str, bearer: Option<&str>) -> reqwest::RequestBuilder {
    let mut rb = api.http.get(api.url(path)).header("x-forwarded-for", ip);
    if let Some(b) = bearer {
        rb = rb.header("authorization", format!("Bearer {b}"));
    }
    rb
}

#[tokio::test]
async fn principals_and_anonymous_sources_are_throttled_then_recover() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\nrequests_per_second = 1\nburst = 5\nunauthenticated_per_second = 1\nunauthenticated_burst = 3\n",
    );
    let admin = server.admin();
    for left in (0..5).rev() {
        let r = admin.get("/v1/whoami").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit-limit"], "5");
        assert_eq!(r.headers["ratelimit-remaining"], left.to_string().as_str());
    }
    let r = admin.get("/v1/whoami").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    // Anonymous requests have their own, per-source budget.
    let anon = server.anonymous();
    for _ in 0..3 {
        anon.get("/healthz").await.expect(200);
    }
    anon.get("/healthz").await.expect(429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    admin.get("/v1/whoami").await.expect(200);
    anon.get("/healthz").await.expect(200);
    // A forward-auth call without a certificate but with an end client's `Authorization`
    // (no credential of the caller's) is throttled by its source like any anonymous one.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let rb = anon
            .http
            .get(anon.url("/v1/auth/check"))
            .header("authorization", "Basic dXNlcjpwYXNz");
        statuses.push(anon.send(rb).await.status);
    }
    assert!(
        statuses.contains(&429) && statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn per_key_rate_limits_and_quotas_with_refill_are_exact() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin
        .post(
            "/v1/apis",
            json!({"name": "rl", "purpose": "p", "owner": "o", "risk": "low",
                   "key_defaults": {"ratelimit": {"limit": 5, "window_seconds": 3600}}}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, key) = admin.issue(&api, json!({})).await;
    let run = |admin: Api, key: String, n: usize| async move {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let admin = admin.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                admin.verify_with(json!({"key": key})).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    };
    let answers = run(admin.clone(), key.clone(), 20).await;
    let valid = answers.iter().filter(|a| a["code"] == "VALID").count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|a| a["code"] == "RATE_LIMITED")
        .collect();
    // Exactly the limit within one window (an hour: the 20 calls cannot straddle two).
    assert_eq!(valid, 5);
    assert_eq!(valid + limited.len(), 20);
    let rl = &limited[0]["ratelimit"];
    assert_eq!(rl["limit"], 5);
    assert_eq!(rl["remaining"], 0);
    assert!(rl["reset"].as_i64().unwrap() > 0);
    // Exactly the limit in every window, window after window: a key with a limit of 3 per
    // second, verified one call after another. Each answer names its window (`reset`); within
    // one window the first three are VALID (remaining 2, 1, 0) and every later one is
    // RATE_LIMITED. Calls go on until several windows were seen and at least two were used up,
    // so the check does not depend on how fast the calls are.
    let (_, short) = admin
        .issue(
            &api,
            json!({"ratelimit": {"limit": 3, "window_seconds": 1}}),
        )
        .await;
    let mut windows: std::collections::BTreeMap<i64, Vec<(String, i64)>> = Default::default();
    for _ in 0..5000 {
        let a = admin.verify_with(json!({"key": short})).await;
        let reset = a["ratelimit"]["reset"].as_i64().unwrap();
        windows.entry(reset).or_default().push((
            a["code"].as_str().unwrap().to_owned(),
            a["ratelimit"]["remaining"].as_i64().unwrap(),
        ));
        let used_up = windows.values().filter(|w| w.len() > 3).count();
        if windows.len() >= 3 && used_up >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        windows.values().filter(|w| w.len() > 3).count() >= 2,
        "windows used up: {windows:?}"
    );
    for (reset, answers) in &windows {
        assert_eq!(reset % 1000, 0, "one-second windows start on the second");
        for (i, (code, remaining)) in answers.iter().enumerate() {
            if i < 3 {
                assert_eq!(code, "VALID", "call {i} of window {reset}: {answers:?}");
                assert_eq!(*remaining, 2 - i as i64, "window {reset}: {answers:?}");
            } else {
                assert_eq!(
                    code, "RATE_LIMITED",
                    "call {i} of window {reset}: {answers:?}"
                );
                assert_eq!(*remaining, 0, "window {reset}: {answers:?}");
            }
        }
    }

    // A quota of 100 under 150 parallel verifies: exactly 100 VALID.
    let (kid, key) = admin
        .issue(
            &api,
            json!({"remaining": 100, "ratelimit": {"limit": 1000, "window_seconds": 60}}),
        )
        .await;
    let answers = run(admin.clone(), key.clone(), 150).await;
    assert_eq!(answers.iter().filter(|a| a["code"] == "VALID").count(), 100);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a["code"] == "USAGE_EXCEEDED")
            .count(),
        50
    );
    // A refill brings it back each interval.
    admin
        .patch(
            &format!("/v1/keys/{kid}"),
            json!({"remaining": 0, "refill": {"amount": 2, "interval_seconds": 1}}),
        )
        .await
        .expect(200);
    assert_eq!(admin.verify(&key).await, "USAGE_EXCEEDED");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(admin.verify(&key).await, "VALID");
    assert_eq!(admin.verify(&key).await, "VALID");
    assert_eq!(admin.verify(&key).await, "USAGE_EXCEEDED");
}

#[tokio::test]
async fn lockout_spares_other_sources_and_valid_certificates() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\ntrusted_proxies = [\"127.0.0.1\"]\nlockout_threshold = 50\nlockout_seconds = 2\nunauthenticated_burst = 1000\n",
    );
    let admin = server.admin();
    let anon = server.anonymous();
    let bad = "tsr_000000000000000000000000000000000000000";
    let wrong = {
        // A well-formed root key that does not exist.
        let k = tessera::crypto::apikey::ApiKey::generate(
            &tessera::crypto::apikey::KeyPrefix::parse("tsr").unwrap(),
        )
        .unwrap();
        k.expose().to_owned()
    };
    for i in 0..50 {
        let key = if i % 2 == 0 { bad } else { wrong.as_str() };
        let r = anon
            .send(with_xff(&anon, "/v1/whoami", "10.0.0.1", Some(key)))
            .await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = anon
        .send(with_xff(&anon, "/v1/whoami", "10.0.0.1", Some(bad)))
        .await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    // Another source is unaffected.
    let r = anon
        .send(with_xff(&anon, "/v1/whoami", "10.0.0.2", Some(bad)))
        .await;
    assert_eq!(r.status, 401);
    // A valid client certificate from the locked-out address still works.
    let r = admin
        .send(with_xff(&admin, "/v1/whoami", "10.0.0.1", None))
        .await;
    assert_eq!(r.status, 200);
    // The lockout is in the audit log.
    let log = admin.get("/v1/audit?limit=100").await.expect(200);
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "lockout" && e["principal"] == "source:10.0.0.1"),
        "{log}"
    );
    // After the lockout period the source may try again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = anon
        .send(with_xff(&anon, "/v1/whoami", "10.0.0.1", Some(bad)))
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn refused_handshakes_count_against_their_source() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\nlockout_threshold = 5\nlockout_seconds = 60\n",
    );
    // A certificate from a foreign CA, refused at the handshake, five times.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://tessera.local/system/admin".try_into().unwrap(),
    )];
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("c.key"), key.serialize_pem()).unwrap();
    let forged = server.client(&dir.path().join("c.pem"), &dir.path().join("c.key"));
    for _ in 0..5 {
        assert!(
            forged
                .http
                .get(forged.url("/v1/whoami"))
                .send()
                .await
                .is_err()
        );
    }
    let r = server
        .anonymous()
        .send(
            server
                .anonymous()
                .http
                .get(server.url("/v1/whoami"))
                .header("authorization", "Bearer tsr_x"),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    server.admin().get("/v1/whoami").await.expect(200);
}

/// A raw TLS connection (std, blocking) for byte-level control.
fn tls_stream(server: &Server) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = Arc::new(client_config(&server.certs.join("ca.pem"), None));
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let home = Home::new();
    // One worker: the slow client and the normal one share it.
    let server = Server::start_with_config(
        &home,
        "[server]\nclient_request_timeout_ms = 3000\nworkers = 1\n",
    );
    // The slow client sends a byte every 200 ms and never finishes its head. `sent` counts its
    // bytes; `cut` is set once the server has dropped it.
    let sent = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let slow = {
        let cfg = Arc::new(client_config(&server.certs.join("ca.pem"), None));
        let addr = server.addr;
        let (sent, cut) = (sent.clone(), cut.clone());
        std::thread::spawn(move || {
            let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
            let tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let started = Instant::now();
            let head = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-slow: ";
            for b in head.iter().chain([b'a'; 64].iter()) {
                if tls.write_all(&[*b]).and_then(|_| tls.flush()).is_err() {
                    cut.store(true, Ordering::SeqCst);
                    return started.elapsed();
                }
                sent.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
                if started.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            let mut buf = [0u8; 1024];
            let dropped = matches!(tls.read(&mut buf), Ok(0) | Err(_))
                || String::from_utf8_lossy(&buf).contains("408");
            cut.store(dropped, Ordering::SeqCst);
            started.elapsed()
        })
    };
    // Once the slow client is connected and part-way through its head, a normal client is
    // served, several times, while the slow one is still there. "Still there" is counted in
    // the slow client's bytes: once the server drops it, at most a byte or two more can be
    // written before the writes fail, so a normal answer that came only after the drop would
    // leave the slow client's final count within two bytes of the count at that answer.
    while sent.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = server.admin();
    let mut served_at = Vec::new();
    for _ in 0..3 {
        let before = sent.load(Ordering::SeqCst);
        admin.get("/v1/whoami").await.expect(200);
        served_at.push(sent.load(Ordering::SeqCst));
        // The slow client sends on between the normal requests.
        while sent.load(Ordering::SeqCst) == before && !cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(cut.load(Ordering::SeqCst), "the slow client was dropped");
    assert!(
        took < Duration::from_secs(8),
        "dropped within the timeout: {took:?}"
    );
    let total = sent.load(Ordering::SeqCst);
    assert!(
        served_at.iter().all(|&at| at + 2 < total),
        "the normal client was served only once the slow one was dropped: served at slow \
         byte {served_at:?}, the slow client sent {total}"
    );
    // And after.
    admin.get("/v1/whoami").await.expect(200);
}

#[tokio::test]
async fn connection_and_header_limits_hold() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[server]\nmax_connections = 2\nworkers = 1\ntls_handshake_timeout_ms = 1000\n",
    );
    let a = tls_stream(&server);
    let b = tls_stream(&server);
    let mut a = a;
    let mut b = b;
    a.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    b.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(a.read(&mut buf).unwrap() > 0);
    assert!(b.read(&mut buf).unwrap() > 0);
    // A third connection is not served while two are open.
    let mut c = tls_stream(&server);
    c.sock
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let third = c
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .and_then(|_| c.read(&mut buf));
    assert!(
        !matches!(third, Ok(n) if n > 0),
        "the third connection was served: {:?}",
        third.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    drop((a, b, c));
    std::thread::sleep(Duration::from_millis(300));
    server.anonymous().get("/healthz").await.expect(200);

    // An oversized request head is refused without a 5xx.
    let r = server
        .anonymous()
        .send(
            server
                .anonymous()
                .http
                .get(server.url("/healthz"))
                .header("x-big", "a".repeat(64 * 1024)),
        )
        .await;
    assert_eq!(r.status, 431, "{}", r.text);
    // Just under the limit (16 KiB for names and values together) is served.
    server
        .anonymous()
        .send(
            server
                .anonymous()
                .http
                .get(server.url("/healthz"))
                .header("x-big", "a".repeat(12 * 1024)),
        )
        .await
        .expect(200);
}

#[tokio::test]
async fn only_tls13_by_default_and_tls12_only_when_configured() {
    let home = Home::new();
    let server = Server::start(&home);
    let s_client = |port: u16, version: &str| {
        // Under `timeout`: a server that never answers must not hang the test.
        let out = Command::new("timeout")
            .args([
                "10",
                "openssl",
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                version,
                "-brief",
            ])
            .stdin(std::process::Stdio::null())
            .output_timed()
            .expect("openssl must be installed");
        let mut t = String::from_utf8_lossy(&out.stdout).into_owned();
        t.push_str(&String::from_utf8_lossy(&out.stderr));
        t
    };
    let t13 = s_client(server.addr.port(), "-tls1_3");
    assert!(t13.contains("TLSv1.3"), "{t13}");
    let t12 = s_client(server.addr.port(), "-tls1_2");
    assert!(!t12.contains("Protocol version: TLSv1.2"), "{t12}");
    drop(server);
    let home = Home::new();
    let server = Server::start_with_config(&home, "[tls]\nmin_version = \"1.2\"\n");
    let t12 = s_client(server.addr.port(), "-tls1_2");
    assert!(t12.contains("TLSv1.2"), "{t12}");
    // Every TLS 1.2 suite openssl knows, offered alone: exactly the ECDHE AEAD suites for the
    // server's ECDSA key are accepted, every other one is refused.
    let all = Command::new("openssl")
        .args(["ciphers", "-tls1_2", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"])
        .output_timed()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout).trim().to_owned();
    let suites: Vec<&str> = all
        .split(':')
        .filter(|c| !c.starts_with("TLS_")) // the TLS 1.3 suites, set apart by openssl
        .collect();
    assert!(suites.len() > 30, "openssl knows the TLS 1.2 suites: {all}");
    let mut accepted: Vec<&str> = suites
        .iter()
        .copied()
        .filter(|suite| {
            let out = Command::new("timeout")
                .args([
                    "10",
                    "openssl",
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{}", server.addr.port()),
                    "-tls1_2",
                    "-cipher",
                    &format!("{suite}:@SECLEVEL=0"),
                    "-brief",
                ])
                .stdin(std::process::Stdio::null())
                .output_timed()
                .unwrap();
            let t = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            t.contains(&format!("Ciphersuite: {suite}"))
        })
        .collect();
    accepted.sort_unstable();
    assert_eq!(
        accepted,
        [
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ],
        "the TLS 1.2 suites accepted, out of {suites:?}"
    );
    // Plain HTTP to the TLS port gets nothing useful.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
}

/// Findings of severity MEDIUM or above that only say the private CA is not publicly
/// trusted: Tessera's own CA is the trust anchor by design.
const PRIVATE_CA_FINDINGS: &[(&str, &str)] = &[
    (
        "cert_chain_of_trust",
        "a private CA is not in public trust stores",
    ),
    (
        "cert_trust",
        "the certificate names localhost, which public trust would not accept",
    ),
];

#[tokio::test]
async fn testssl_finds_nothing_medium_or_worse() {
    let testssl = ["testssl", "testssl.sh"]
        .into_iter()
        .find(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output_timed()
                .is_ok_and(|o| o.status.success())
        })
        .expect("testssl.sh must be installed (.ci/run installs it)");
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[limits]\nunauthenticated_per_second = 10000\nunauthenticated_burst = 10000\nlockout_threshold = 100000\n",
    );
    let json = home.tmp.path().join("testssl.json");
    let out = Command::new("timeout")
        .args([
            "300",
            testssl,
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "batch",
            "--openssl-timeout",
            "5",
            "--add-ca",
        ])
        .arg(home.certs().join("ca.pem"))
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("127.0.0.1:{}", server.addr.port()))
        .output_timed()
        .unwrap();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "testssl wrote no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let bad: Vec<_> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .filter(|f| !PRIVATE_CA_FINDINGS.iter().any(|(id, _)| f["id"] == *id))
        .collect();
    assert!(bad.is_empty(), "testssl findings: {bad:#?}");
    let offered = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
        assert!(
            offered(old).starts_with("not offered"),
            "{old}: {}",
            offered(old)
        );
    }
    assert!(
        offered("TLS1_3").starts_with("offered"),
        "TLS1_3: {}",
        offered("TLS1_3")
    );
}

#[tokio::test]
async fn silent_handshakes_and_idle_connections_are_closed() {
    let home = Home::new();
    let server = Server::start_with_config(
        &home,
        "[server]\ntls_handshake_timeout_ms = 1000\nkeep_alive_seconds = 1\n",
    );
    // A client that opens TCP and never says hello.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    // A kept-alive connection left idle past the keep-alive time is closed.
    let mut tls = tls_stream(&server);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(tls.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(2500));
    let again = tls
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .and_then(|_| tls.read(&mut buf));
    assert!(
        !matches!(again, Ok(n) if n > 0),
        "an idle connection was kept: {again:?}"
    );
    // An oversized CSR is refused by its size: a real, well-signed CSR (many SANs, which
    // Tessera would ignore) of more than 16 KiB, which would be issued were it not for its size.
    let admin = server.admin();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = (0..400)
        .map(|i| format!("name-{i:04}.a-rather-long-domain-name.example.org"))
        .collect();
    let big = rcgen::CertificateParams::new(names)
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    assert!(
        big.len() > 16 * 1024 && big.len() < 32 * 1024,
        "{}",
        big.len()
    );
    let r = admin
        .post("/v1/certs", json!({"identity": "x", "csr": big}))
        .await
        .expect(400);
    assert_eq!(r["error"]["field"], "csr", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("16384"),
        "refused for its size: {r}"
    );
    // The same key in a small CSR is issued: only the size was wrong.
    let small = rcgen::CertificateParams::new(vec!["x.example.org".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    admin
        .post("/v1/certs", json!({"identity": "x", "csr": small}))
        .await
        .expect(201);
}
