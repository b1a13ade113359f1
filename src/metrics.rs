//! Prometheus metrics, in one registry. Layers record into these; `GET /metrics` (for
//! `metrics:read`) and the optional loopback listener render them in the text format.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name, which would be a bug caught by the tests;
    // the metric still works unregistered.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

// Metric constructors fail only for invalid names or labels, which are static here and
// exercised by every test run; aborting is the honest answer to such a bug.
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| std::process::abort()),
    )
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).unwrap_or_else(|_| std::process::abort()))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).unwrap_or_else(|_| std::process::abort()))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| std::process::abort()),
    )
}

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tessera_http_requests_total",
        "HTTP requests by route, method and status",
        &["route", "method", "status"],
    )
});

pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "tessera_http_request_duration_seconds",
                "HTTP request latency by route and method",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["route", "method"],
        )
        .unwrap_or_else(|_| std::process::abort()),
    )
});

pub static KEY_VERIFY: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tessera_key_verifications_total",
        "API-key verifications by answer code",
        &["code"],
    )
});

pub static LEAKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tessera_leak_reports_total",
        "Reported tokens by source (github, holder) and what they were (malformed, unknown, revoked, already_revoked)",
        &["source", "result"],
    )
});

pub static CERT_VERIFY: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tessera_cert_verifications_total",
        "Certificate verifications by answer code",
        &["code"],
    )
});

pub static KEYS_ISSUED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tessera_keys_issued_total",
        "API keys issued (incl. rotations)",
    )
});

pub static CERTS_ISSUED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tessera_certs_issued_total",
        "Client certificates issued (incl. renewals)",
    )
});

pub static KEYS_BY_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "tessera_keys",
        "Stored API keys by state (active: no end reached; ended: revoked, expired or past grace)",
        &["state"],
    )
});

pub static CERTS_BY_STATE: LazyLock<IntGaugeVec> =
    LazyLock::new(|| gauge_vec("tessera_certs", "Stored certificates by state", &["state"]));

pub static CERTS_EXPIRING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "tessera_certs_expiring_7d",
        "Unrevoked certificates expiring within 7 days",
    )
});

pub static TLS_CLIENT_REJECTED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tessera_tls_client_cert_rejections_total",
        "Client certificates refused at the TLS handshake",
    )
});

pub static LOCKOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tessera_lockouts_total",
        "Sources locked out after repeated authentication failures",
    )
});

pub static AUDIT_ENTRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tessera_audit_standalone_entries_total",
        "Audit entries written on their own (refusals, failures), not with a change",
    )
});

pub static AUDIT_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tessera_audit_refusals_total",
        "Refusals without a usable credential, tallied into one audit entry per source and window",
        &["outcome"],
    )
});

pub static AUDIT_HEAD: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "tessera_audit_head_seq",
        "Sequence number of the last audit entry (the log's length)",
    )
});

pub static SEALED: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("tessera_sealed", "1 while the server is sealed"));

pub static STORE_FLUSH: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new("tessera_store_flush_seconds", "Duration of store flushes").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            ),
        )
        .unwrap_or_else(|_| std::process::abort()),
    )
});

/// Touches every metric so each appears (at zero) from the first scrape on.
pub fn init() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&KEY_VERIFY);
    LazyLock::force(&CERT_VERIFY);
    LazyLock::force(&LEAKS);
    LazyLock::force(&KEYS_ISSUED);
    LazyLock::force(&CERTS_ISSUED);
    LazyLock::force(&KEYS_BY_STATE);
    LazyLock::force(&CERTS_BY_STATE);
    LazyLock::force(&CERTS_EXPIRING);
    LazyLock::force(&TLS_CLIENT_REJECTED);
    LazyLock::force(&LOCKOUTS);
    LazyLock::force(&SEALED);
    LazyLock::force(&AUDIT_ENTRIES);
    LazyLock::force(&AUDIT_REFUSALS);
    LazyLock::force(&AUDIT_HEAD);
    LazyLock::force(&STORE_FLUSH);
}

/// The registry in the Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    out
}
