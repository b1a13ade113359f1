//! Verification at the edge, measured: the real server in its own process, and a
//! `tessera-verify` verifier in this one following its feed over mTLS.
//!
//! ```text
//! cargo bench --bench edge                       # 1 000 000 local verifies, 200 revocations
//! cargo bench --bench edge -- --quick            # 100 000 and 30
//! ```
//!
//! It prints, from one run: local verify of a cached key (p50, p99, p99.9, per call, the
//! timer included) next to its baseline, `POST /v1/keys/verify` from the same process over a
//! kept mTLS connection; and revocation → refusal (from sending the revoke to the verifier's
//! first non-VALID answer, and from the revoke's acknowledgement).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tessera_verify::{Config, Decision, Local, Request, Source, Verifier};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Throttles raised for the run (the bench is one principal making thousands of calls).
const CONFIG: &str = "[limits]\nrequests_per_second = 100000000\nburst = 100000000\n";

fn start(home: &Path) -> (Server, String) {
    std::fs::write(home.join("tessera.toml"), CONFIG).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(home.join("tessera.toml"))
        .arg("--data")
        .arg(home.join("data"))
        .arg("--certs")
        .arg(home.join("certs"))
        .env("RUST_LOG", "warn")
        .env_remove("TESSERA_MASTER_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let server = Server(child);
    let addr = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(rest) = line.split("listening on https://").nth(1) {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let port = addr.rsplit(':').next().unwrap().to_owned();
    (server, format!("https://localhost:{port}"))
}

fn client(certs: &Path, cert: &Path, key: &Path) -> reqwest::Client {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
    .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Value) -> Value {
    let r = http.request(method, url).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64) {
    ns.sort_unstable();
    let at = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64;
    (at(0.50), at(0.99), at(0.999))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (local_calls, revocations, central_calls) = if quick {
        (100_000, 30, 500)
    } else {
        (1_000_000, 200, 2_000)
    };
    let home = tempfile::tempdir().unwrap();
    let (_server, url) = start(home.path());
    let certs = home.path().join("certs");
    let admin = client(&certs, &certs.join("admin.pem"), &certs.join("admin.key"));
    let post = reqwest::Method::POST;

    let api = call(
        &admin,
        post.clone(),
        format!("{url}/v1/apis"),
        json!({"name": "bench", "purpose": "bench", "owner": "bench", "risk": "low"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        &admin,
        reqwest::Method::PUT,
        format!("{url}/v1/tenants/default/bindings/edge"),
        json!({"roles": ["verifier"]}),
    )
    .await;
    let issued = call(
        &admin,
        post.clone(),
        format!("{url}/v1/certs"),
        json!({"identity": "edge", "generate": true}),
    )
    .await;
    let mut identity = issued["certificate"].as_str().unwrap().to_owned();
    for c in issued["chain"].as_array().unwrap() {
        identity.push_str(c.as_str().unwrap());
    }
    let (cert_path, key_path) = (home.path().join("edge.pem"), home.path().join("edge.key"));
    std::fs::write(&cert_path, &identity).unwrap();
    std::fs::write(&key_path, issued["private_key"].as_str().unwrap()).unwrap();
    identity.push_str(issued["private_key"].as_str().unwrap());
    let feed_key = admin
        .get(format!("{url}/v1/feed/key"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let verifier = Verifier::start(Config::new(
        url.clone(),
        std::fs::read(certs.join("ca.pem")).unwrap(),
        identity.into_bytes(),
        format!("api:{api}"),
        feed_key,
    ))
    .unwrap();
    let t = Instant::now();
    while !verifier.is_fresh() {
        assert!(t.elapsed() < Duration::from_secs(30), "never fresh");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Local verify of a cached key, and its baseline: the same question to Tessera.
    let key = call(
        &admin,
        post.clone(),
        format!("{url}/v1/apis/{api}/keys"),
        json!({"scopes": ["read"]}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let req = Request {
        key: &key,
        api_id: Some(&api),
        scopes: &["read"],
        presented_identity: None,
    };
    assert!(matches!(
        verifier.verify(&req).await,
        Decision::Answer {
            source: Source::Tessera,
            ..
        }
    ));
    let mut local = Vec::with_capacity(local_calls);
    for _ in 0..local_calls {
        let t = Instant::now();
        let answer = verifier.verify_local(&req);
        local.push(t.elapsed().as_nanos() as u64);
        assert!(matches!(answer, Local::Answer(ref v) if v.valid));
    }
    let edge = client(&certs, &cert_path, &key_path);
    let body = json!({"key": key, "api_id": api, "scopes": ["read"]});
    let mut central = Vec::with_capacity(central_calls);
    for _ in 0..central_calls {
        let t = Instant::now();
        let v = call(
            &edge,
            post.clone(),
            format!("{url}/v1/keys/verify"),
            body.clone(),
        )
        .await;
        central.push(t.elapsed().as_nanos() as u64);
        assert_eq!(v["code"], "VALID");
    }
    let (l50, l99, l999) = percentiles(local);
    let (c50, c99, c999) = percentiles(central);

    // Revocation → refusal.
    let mut from_send = Vec::with_capacity(revocations);
    let mut from_ack = Vec::with_capacity(revocations);
    for _ in 0..revocations {
        let issued = call(
            &admin,
            post.clone(),
            format!("{url}/v1/apis/{api}/keys"),
            json!({"scopes": ["read"]}),
        )
        .await;
        let (id, key) = (
            issued["id"].as_str().unwrap().to_owned(),
            issued["key"].as_str().unwrap().to_owned(),
        );
        let req = Request { key: &key, ..req };
        verifier.verify(&req).await;
        assert!(matches!(verifier.verify_local(&req), Local::Answer(ref v) if v.valid));
        let sent = Instant::now();
        call(
            &admin,
            post.clone(),
            format!("{url}/v1/keys/{id}/revoke"),
            json!({}),
        )
        .await;
        let acked = Instant::now();
        loop {
            match verifier.verify_local(&req) {
                Local::Answer(v) if v.valid => {}
                _ => break,
            }
            assert!(sent.elapsed() < Duration::from_secs(10), "never refused");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        from_send.push(sent.elapsed().as_nanos() as u64);
        from_ack.push(acked.elapsed().as_nanos() as u64);
    }
    let (s50, s99, _) = percentiles(from_send);
    let (a50, a99, _) = percentiles(from_ack);

    let us = |ns: f64| ns / 1000.0;
    let ms = |ns: f64| ns / 1e6;
    println!("| figure | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|");
    println!(
        "| local verify, cached key ({local_calls} calls) | {:.2} µs | {:.2} µs | {:.2} µs |",
        us(l50),
        us(l99),
        us(l999)
    );
    println!(
        "| baseline: POST /v1/keys/verify, kept mTLS connection ({central_calls} calls) | {:.0} µs | {:.0} µs | {:.0} µs |",
        us(c50),
        us(c99),
        us(c999)
    );
    println!(
        "| local / baseline | {:.4}x | {:.4}x | |",
        l50 / c50,
        l99 / c99
    );
    println!(
        "| revocation → refused, from sending the revoke ({revocations} keys) | {:.1} ms | {:.1} ms | |",
        ms(s50),
        ms(s99)
    );
    println!(
        "| revocation → refused, from its acknowledgement | {:.1} ms | {:.1} ms | |",
        ms(a50),
        ms(a99)
    );
}
