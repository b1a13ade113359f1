//! Time boundaries, tested at the exact millisecond (or second, where the format has no
//! finer unit) with the test clock: the server started with `TESSERA_TEST_CLOCK` reads `now`
//! from a file (debug builds only; see `src/clock.rs`), so a test moves time by writing it.
//! No sleeps: each boundary is checked one unit before and at the instant it falls.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use crate::{
    helpers::{Api, Home, Server, client_config},
    raw::RawConn,
};

/// The test clock's file for a home, and a server started on it.
fn start(home: &Home) -> (Server, PathBuf) {
    let file = home.tmp.path().join("now");
    let server =
        Server::start_with_env(home, &[], &[("TESSERA_TEST_CLOCK", file.to_str().unwrap())]);
    (server, file)
}

fn set(file: &Path, ms: i64) {
    std::fs::write(file, ms.to_string()).unwrap();
}

fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn code(admin: &Api, key: &str) -> String {
    admin.verify(key).await
}

/// Key expiry, the end of a rotation grace, a rate-limit window and a quota refill interval,
/// each one millisecond before and at its boundary.
#[tokio::test]
async fn key_time_boundaries_hold_to_the_millisecond() {
    let home = Home::new();
    let (server, file) = start(&home);
    let admin = server.admin();
    // T0: the start of a 10 s rate-limit window (windows are aligned to the epoch), a little
    // ahead of the real time so that certificates issued at start are valid at it.
    let real = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let t0 = (real / 10_000 + 2) * 10_000;
    set(&file, t0);

    let api = admin.create_api("clock").await;
    let (_, expiring) = admin
        .issue(&api, json!({"expires_at": rfc3339(t0 + 30_000)}))
        .await;
    let (_, limited) = admin
        .issue(
            &api,
            json!({"ratelimit": {"limit": 1, "window_seconds": 10}}),
        )
        .await;
    let (_, refilled) = admin
        .issue(
            &api,
            json!({"remaining": 1, "refill": {"amount": 1, "interval_seconds": 60}}),
        )
        .await;
    let (rotated_id, rotated) = admin.issue(&api, json!({})).await;
    admin
        .post(
            &format!("/v1/keys/{rotated_id}/rotate"),
            json!({"grace_seconds": 20}),
        )
        .await
        .expect(201);

    assert_eq!(code(&admin, &expiring).await, "VALID");
    assert_eq!(code(&admin, &limited).await, "VALID");
    assert_eq!(code(&admin, &limited).await, "RATE_LIMITED");
    assert_eq!(code(&admin, &refilled).await, "VALID");
    assert_eq!(code(&admin, &refilled).await, "USAGE_EXCEEDED");
    assert_eq!(code(&admin, &rotated).await, "VALID");

    // The rate-limit window ends at T0 + 10 s.
    set(&file, t0 + 10_000 - 1);
    assert_eq!(
        code(&admin, &limited).await,
        "RATE_LIMITED",
        "1 ms before the window ends"
    );
    set(&file, t0 + 10_000);
    assert_eq!(
        code(&admin, &limited).await,
        "VALID",
        "the new window begins at T0 + 10 s"
    );

    // The rotation grace ends at T0 + 20 s.
    set(&file, t0 + 20_000 - 1);
    let v = admin.verify_with(json!({"key": rotated})).await;
    assert_eq!(v["code"], "VALID", "1 ms before the grace ends: {v}");
    assert_eq!(v["rotation"]["stops_at"], rfc3339_ms(t0 + 20_000), "{v}");
    set(&file, t0 + 20_000);
    assert_eq!(code(&admin, &rotated).await, "EXPIRED", "the grace is over");

    // `expires_at` is T0 + 30 s.
    set(&file, t0 + 30_000 - 1);
    assert_eq!(code(&admin, &expiring).await, "VALID", "1 ms before expiry");
    set(&file, t0 + 30_000);
    assert_eq!(code(&admin, &expiring).await, "EXPIRED", "at expires_at");

    // The quota refills once a whole interval (60 s) has passed since the key was made.
    set(&file, t0 + 60_000 - 1);
    assert_eq!(
        code(&admin, &refilled).await,
        "USAGE_EXCEEDED",
        "1 ms before the refill"
    );
    set(&file, t0 + 60_000);
    assert_eq!(
        code(&admin, &refilled).await,
        "VALID",
        "refilled at T0 + 60 s"
    );
    assert_eq!(code(&admin, &refilled).await, "USAGE_EXCEEDED");
}

/// The server's own timestamp format: RFC 3339 with milliseconds, UTC `Z`.
fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `POST /v1/certs/verify` at a client certificate's `notAfter` (X.509 validity is inclusive,
/// to the second): VALID through the last millisecond of that second, EXPIRED one second
/// after; NOT_YET_VALID one second before `notBefore`.
#[tokio::test]
async fn certificate_validity_ends_at_its_not_after_second() {
    let home = Home::new();
    let (server, file) = start(&home);
    let admin = server.admin();
    let issued = admin
        .post(
            "/v1/certs",
            json!({"identity": "clocked", "generate": true, "ttl_seconds": 3600}),
        )
        .await
        .expect(201);
    let pem = issued["certificate"].as_str().unwrap().to_owned();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let not_after = cert.validity().not_after.timestamp() * 1000;
    let not_before = cert.validity().not_before.timestamp() * 1000;
    let check = |at: i64| {
        set(&file, at);
        let admin = &admin;
        let pem = pem.clone();
        async move {
            let v = admin
                .post("/v1/certs/verify", json!({"certificate": pem}))
                .await
                .expect(200);
            v["code"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        check(not_after + 999).await,
        "VALID",
        "within notAfter's second"
    );
    assert_eq!(
        check(not_after + 1000).await,
        "EXPIRED",
        "one second past notAfter"
    );
    assert_eq!(check(not_before).await, "VALID", "at notBefore");
    assert_eq!(
        check(not_before - 1000).await,
        "NOT_YET_VALID",
        "one second before notBefore"
    );
}

/// The current CRL's number, thisUpdate and nextUpdate (unix seconds).
async fn crl_now(admin: &Api) -> (String, i64, i64) {
    let text = admin.get("/v1/pki/crl?format=pem").await.expect_text(200);
    let der = pem::parse(text.as_bytes()).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(der.contents()).unwrap();
    (
        crl.crl_number().unwrap().to_string(),
        crl.last_update().timestamp(),
        crl.next_update().unwrap().timestamp(),
    )
}

/// Wall-clock waits here are only for the CRL task's ticks (every 2 s); the boundary itself is
/// set on the test clock. A CRL lives 24 h and is re-signed once less than 12 h are left: with
/// exactly 12 h left it stands (through several ticks), one millisecond later it is re-signed.
#[tokio::test]
async fn a_crl_is_resigned_once_less_than_twelve_hours_are_left() {
    let home = Home::new();
    let (server, file) = start(&home);
    let admin = server.admin();
    let (n0, this0, next0) = crl_now(&admin).await;
    assert_eq!(next0 - this0, 24 * 3600, "a CRL lives 24 h");
    let due = (next0 - 12 * 3600) * 1000;

    set(&file, due);
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    assert_eq!(
        crl_now(&admin).await.0,
        n0,
        "re-signed with exactly 12 h left"
    );

    set(&file, due + 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (n1, this1, next1) = loop {
        let now = crl_now(&admin).await;
        if now.0 != n0 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "not re-signed 15 s after less than 12 h were left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        n1.parse::<u128>().unwrap() > n0.parse::<u128>().unwrap(),
        "{n0} -> {n1}"
    );
    assert_eq!(this1, due / 1000, "signed at the test clock's time");
    assert_eq!(next1 - this1, 24 * 3600);
}

/// Verifies the server's certificate at the test clock's time (the server issues its
/// certificates at that time, which may be ahead of the real one), and otherwise as usual.
#[derive(Debug)]
struct AtTestTime {
    inner: Arc<WebPkiServerVerifier>,
    file: PathBuf,
}

impl ServerCertVerifier for AtTestTime {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ms: u64 = std::fs::read_to_string(&self.file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let at = UnixTime::since_unix_epoch(Duration::from_millis(ms));
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, at)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The serial, notBefore and notAfter (unix seconds) of the certificate a new connection gets.
async fn served(server: &Server, config: &Arc<ClientConfig>) -> (String, i64, i64) {
    let conn = RawConn::connect(server.addr, config.clone()).await.unwrap();
    let serial = conn.server_serial();
    let der = conn.server_certificate();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        serial,
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    )
}

/// The managed server certificate (here living 30 s) is renewed once less than a third of its
/// lifetime is left: with exactly 10 s left it is still served (through several of the
/// renewal loop's 1 s checks), one millisecond later a new one is, issued at the test clock's
/// time (backdated a tenth of its lifetime) for another 30 s.
#[tokio::test]
async fn the_server_certificate_renews_once_a_third_of_its_life_is_left() {
    let home = Home::new();
    let file = home.tmp.path().join("now");
    let real = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    set(&file, (real / 1000 + 2) * 1000);
    let config_file = home.tmp.path().join("tessera.toml");
    std::fs::write(&config_file, "[tls]\nserver_cert_lifetime_seconds = 30\n").unwrap();
    let server = Server::start_with_env(
        &home,
        &["--config", config_file.to_str().unwrap()],
        &[("TESSERA_TEST_CLOCK", file.to_str().unwrap())],
    );
    let roots = Arc::new({
        let mut r = RootCertStore::empty();
        for c in crate::helpers::certs_from(&home.certs().join("ca.pem")) {
            r.add(c).unwrap();
        }
        r
    });
    let verifier = AtTestTime {
        inner: WebPkiServerVerifier::builder(roots).build().unwrap(),
        file: file.clone(),
    };
    let mut config = client_config(
        &home.certs().join("ca.pem"),
        Some((
            &home.certs().join("admin.pem"),
            &home.certs().join("admin.key"),
        )),
    );
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(verifier));
    let config = Arc::new(config);

    let (s0, _, after0) = served(&server, &config).await;
    let due = (after0 - 10) * 1000;
    set(&file, due);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        served(&server, &config).await.0,
        s0,
        "renewed with exactly a third of its life left"
    );

    set(&file, due + 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (_, before1, after1) = loop {
        let now = served(&server, &config).await;
        if now.0 != s0 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed 15 s after less than a third of its life was left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(before1, due / 1000 - 3, "notBefore: now, backdated 3 s");
    assert_eq!(after1, due / 1000 + 30, "notAfter: now + 30 s");
}
