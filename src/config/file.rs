//! The configuration file's shape (TOML): every section and setting, all optional, unknown
//! ones refused. [`super::Config::load`] validates them into a [`super::Config`].

use std::path::PathBuf;

use serde::Deserialize;

/// The optional TOML file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub certs: Option<PathBuf>,
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub certificates: FileCertificates,
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub tls: FileTls,
    #[serde(default)]
    pub tidy: FileTidy,
    #[serde(default)]
    pub audit: FileAudit,
    #[serde(default)]
    pub metrics: FileMetrics,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub forward_auth: FileForwardAuth,
    #[serde(default)]
    pub store: FileStore,
    #[serde(default)]
    pub leaks: FileLeaks,
    /// Base URL clients reach this server at (written into CRL distribution points).
    pub public_url: Option<String>,
    pub log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Operator-provided server certificate chain (PEM); with `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Lifetime of the server certificate Tessera issues itself.
    pub server_cert_lifetime_seconds: Option<u64>,
    /// `"1.3"` (default) or `"1.2"` to also accept TLS 1.2 (ECDHE + AEAD suites only).
    pub min_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub unauthenticated_per_second: Option<u32>,
    pub unauthenticated_burst: Option<u32>,
    pub lockout_threshold: Option<u32>,
    pub lockout_window_seconds: Option<u64>,
    pub lockout_seconds: Option<u64>,
    pub lockout_max_seconds: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
}

/// `GET /v1/auth/check`, the gateway forward-auth endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    /// The header the gateway passes the end client's API key in (default `X-Api-Key`). It
    /// may be `Authorization` (a bare key or `Bearer <key>`); otherwise Tessera never reads
    /// `Authorization` on forward auth, where it is the end client's and not the gateway's.
    pub key_header: Option<String>,
    /// The header the gateway passes the end client's URL-escaped PEM certificate in
    /// (nginx `$ssl_client_escaped_cert`; default `X-Client-Cert`).
    pub cert_header: Option<String>,
}

/// Leak reports from GitHub's secret scanning (`POST /v1/leaks/github`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLeaks {
    /// GitHub's secret-scanning public keys, in the format of
    /// `https://api.github.com/meta/public_keys/secret_scanning`; read at every report, so a
    /// job that refreshes the file needs no restart. Unset: the route is off (404).
    pub github_keys_file: Option<PathBuf>,
    /// Answer each report with the labels GitHub's feedback expects (`true_positive`,
    /// `false_positive`) instead of `204`.
    pub github_feedback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    /// A plain-HTTP listener serving only `/metrics`; must be a loopback address.
    pub listen: Option<String>,
}

/// Where the records live (default: the embedded engine under `data/db`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    /// `postgres://user@host:port/db[?sslmode=verify-full&sslrootcert=ca.pem]`: several
    /// nodes share this PostgreSQL database.
    pub url: Option<String>,
    /// How stale a node's view of changes made by other nodes may be before it stops
    /// answering from its caches (milliseconds, default 1000).
    pub max_staleness_ms: Option<u64>,
    /// How often a node reads the change sequence (milliseconds, default 100).
    pub poll_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    /// A JSON-lines copy of the audit log, for shipping to a log system.
    pub file: Option<PathBuf>,
    pub checkpoint_interval_seconds: Option<u64>,
    /// Refusals without a credential are tallied and written once per this many seconds.
    pub refusal_window_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTidy {
    pub retention_seconds: Option<u64>,
    pub interval_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificates {
    pub default_ttl_seconds: Option<u64>,
    pub max_ttl_seconds: Option<u64>,
    /// How long a certificate's renewals may go on from its first issuance (default 90
    /// days); then a new issuance or enrolment is needed.
    pub max_lineage_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub body_limit_bytes: Option<usize>,
    pub shutdown_timeout_seconds: Option<u64>,
    pub workers: Option<usize>,
    pub store_cache_bytes: Option<u64>,
    /// How many key records the verification cache holds (default 1048576).
    pub verify_cache_keys: Option<usize>,
    /// How many keys' usage counters stay in memory (default 262144).
    pub usage_cache_keys: Option<usize>,
    pub max_connections: Option<usize>,
    pub keep_alive_seconds: Option<u64>,
    pub client_request_timeout_ms: Option<u64>,
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Offer HTTP/2 (off by default: actix-http cannot bound HTTP/2 header lists below
    /// 16 MiB; HTTP/1.1 heads are bounded at 128 KiB and 96 headers).
    pub http2: Option<bool>,
    pub max_header_bytes: Option<usize>,
}
