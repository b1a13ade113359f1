//! Time boundaries, tested at the exact millisecond (or second, where the format has no
//! finer unit) with the test clock: the server started with `TESSERA_TEST_CLOCK` reads `now`
//! from a file (debug builds only; see `src/clock.rs`), so a test moves time by writing it.
//! No sleeps: each boundary is checked one unit before and at the instant it falls.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use serde_json::json;

use crate::helpers::{Api, Home, Server};

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
