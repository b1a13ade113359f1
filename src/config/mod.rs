//! Configuration in two stages: what the operator wrote (a TOML file, environment variables,
//! flags — flags win, then the environment, then the file, then the embedded defaults) and
//! the validated [`Config`] the server runs with. Validation happens once, before anything is
//! created on disk, and every error names the setting.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

mod file;

use crate::identity::TrustDomain;

/// The default lifetime of the server certificate Tessera issues itself (90 days).
pub const SERVER_CERT_LIFETIME_SECS: u64 = 90 * 86_400;

/// Where the server's certificate comes from.
#[derive(Clone, Debug)]
pub enum ServerCertSource {
    /// Issued by Tessera into `certs/server.pem`, renewed when a third of its lifetime is left.
    Managed { lifetime_secs: u64 },
    /// Files the operator provides (and replaces; SIGHUP reloads them).
    Files { cert: PathBuf, key: PathBuf },
}

/// Embedded defaults.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA: &str = "data";
pub const DEFAULT_CERTS: &str = "certs";
pub const DEFAULT_TRUST_DOMAIN: &str = "tessera.local";
pub const DEFAULT_CERT_TTL_SECS: u64 = 24 * 3600;
pub const DEFAULT_CERT_MAX_TTL_SECS: u64 = 30 * 24 * 3600;
pub const DEFAULT_CERT_MAX_LINEAGE_SECS: u64 = 90 * 24 * 3600;
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// How many key records the verification cache holds by default (about 1 KiB each).
pub const DEFAULT_VERIFY_CACHE_KEYS: usize = 1 << 20;

/// A setting that could not be accepted.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

fn err(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        message: message.into(),
    }
}

pub use file::{
    FileAudit, FileCertificates, FileConfig, FileForwardAuth, FileLeaks, FileLimits, FileMetrics,
    FileServer, FileTidy, FileTls,
};

/// Values from flags and the environment (clap fills these in `main.rs`).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub certs: Option<PathBuf>,
    pub trust_domain: Option<String>,
    pub log_format: Option<String>,
    pub shutdown_timeout_seconds: Option<u64>,
    /// `--store` / `TESSERA_STORE_URL`: a PostgreSQL URL.
    pub store_url: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub trust_domain: TrustDomain,
    pub cert_default_ttl_secs: u64,
    pub cert_max_ttl_secs: u64,
    pub cert_max_lineage_secs: u64,
    pub body_limit: usize,
    pub shutdown_timeout_secs: u64,
    pub workers: usize,
    pub store_cache_bytes: u64,
    /// A shared PostgreSQL database, if not the embedded engine under `data/db`.
    pub store_url: Option<crate::store::postgres::PgTarget>,
    /// How stale this node's view of other nodes' changes may be before it stops answering
    /// from its caches.
    pub max_staleness: std::time::Duration,
    /// How often this node reads the change sequence.
    pub poll_interval: std::time::Duration,
    pub verify_cache_keys: usize,
    /// How many keys' usage counters stay in memory before those on disk are dropped.
    pub usage_cache_keys: usize,
    pub forward_auth: ForwardAuth,
    pub leaks: Leaks,
    pub log_format: LogFormat,
    pub server_cert: ServerCertSource,
    pub tidy_retention_secs: u64,
    pub tidy_interval_secs: u64,
    pub public_url: Option<String>,
    pub audit_file: Option<PathBuf>,
    pub audit_checkpoint_secs: u64,
    pub audit_refusal_window_secs: u64,
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub allow_tls12: bool,
}

impl Config {
    /// Where this server's database lives.
    pub fn store_location(&self) -> crate::store::Location {
        match &self.store_url {
            Some(t) => crate::store::Location::Postgres(Box::new(t.clone())),
            None => crate::store::Location::Embedded {
                dir: self.data_dir.join("db"),
                cache_bytes: self.store_cache_bytes,
            },
        }
    }
}

/// Leak reports (`[leaks]`).
#[derive(Clone, Debug, Default)]
pub struct Leaks {
    /// GitHub's public keys (JSON, GitHub's format); `None`: `POST /v1/leaks/github` is off.
    pub github_keys_file: Option<PathBuf>,
    pub github_feedback: bool,
}

/// Where the forward-auth endpoint reads the end client's credentials (lower-case names).
#[derive(Clone, Debug)]
pub struct ForwardAuth {
    pub key_header: actix_web::http::header::HeaderName,
    pub cert_header: actix_web::http::header::HeaderName,
}

/// A configured header name; `Authorization` only where `authorization` allows it.
fn header_name(
    value: Option<String>,
    default: &'static str,
    field: &'static str,
    authorization: bool,
) -> Result<actix_web::http::header::HeaderName, ConfigError> {
    use actix_web::http::header::HeaderName;
    let Some(v) = value else {
        return Ok(HeaderName::from_static(default));
    };
    let name = HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| err(field, format!("`{v}` is not a header name")))?;
    if name == actix_web::http::header::AUTHORIZATION && !authorization {
        return Err(err(
            field,
            "Authorization can carry the end client's key only (forward_auth.key_header)",
        ));
    }
    Ok(name)
}

/// Throttles, lockouts and connection limits.
#[derive(Clone, Debug)]
pub struct Limits {
    pub principal_rps: u32,
    pub principal_burst: u32,
    pub anonymous_rps: u32,
    pub anonymous_burst: u32,
    pub lockout_threshold: u32,
    pub lockout_window_secs: u64,
    pub lockout_secs: u64,
    pub lockout_max_secs: u64,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub max_connections: usize,
    pub keep_alive_secs: u64,
    pub client_request_timeout_ms: u64,
    pub tls_handshake_timeout_ms: u64,
    pub http2: bool,
    pub max_header_bytes: usize,
}

impl Config {
    /// Reads the file named by `--config` (if any), applies overrides, validates.
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let file = match &o.config_file {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        Self::resolve(file, o)
    }

    pub fn resolve(file: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let listen_s = o
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            err(
                "listen",
                format!("`{listen_s}` is not an address like 127.0.0.1:8443"),
            )
        })?;

        let data_dir = o
            .data
            .clone()
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
        check_dir("data", &data_dir)?;
        let certs_dir = o
            .certs
            .clone()
            .or(file.certs)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CERTS));
        check_dir("certs", &certs_dir)?;

        let td = o
            .trust_domain
            .clone()
            .or(file.trust_domain)
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        let trust_domain = TrustDomain::parse(&td).map_err(|m| err("trust_domain", m))?;

        let cert_default_ttl_secs = file
            .certificates
            .default_ttl_seconds
            .unwrap_or(DEFAULT_CERT_TTL_SECS);
        let cert_max_ttl_secs = file
            .certificates
            .max_ttl_seconds
            .unwrap_or(DEFAULT_CERT_MAX_TTL_SECS);
        if !(60..=5 * 365 * 86_400).contains(&cert_max_ttl_secs) {
            return Err(err(
                "certificates.max_ttl_seconds",
                "must be between 60 and 157680000 (5 years)",
            ));
        }
        if !(60..=cert_max_ttl_secs).contains(&cert_default_ttl_secs) {
            return Err(err(
                "certificates.default_ttl_seconds",
                "must be between 60 and certificates.max_ttl_seconds",
            ));
        }

        let cert_max_lineage_secs = file
            .certificates
            .max_lineage_seconds
            .unwrap_or(DEFAULT_CERT_MAX_LINEAGE_SECS);
        if !(1..=10 * 365 * 86_400).contains(&cert_max_lineage_secs) {
            return Err(err(
                "certificates.max_lineage_seconds",
                "must be between 1 and 315360000 (10 years)",
            ));
        }

        let body_limit = file.server.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT);
        if !(1024..=16 * 1024 * 1024).contains(&body_limit) {
            return Err(err(
                "server.body_limit_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        let shutdown_timeout_secs = o
            .shutdown_timeout_seconds
            .or(file.server.shutdown_timeout_seconds)
            .unwrap_or(10);
        if shutdown_timeout_secs > 300 {
            return Err(err(
                "server.shutdown_timeout_seconds",
                "must be at most 300",
            ));
        }
        let workers = file
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
        if !(1..=256).contains(&workers) {
            return Err(err("server.workers", "must be between 1 and 256"));
        }
        let store_cache_bytes = file.server.store_cache_bytes.unwrap_or(64 * 1024 * 1024);
        if store_cache_bytes < 1024 * 1024 {
            return Err(err("server.store_cache_bytes", "must be at least 1048576"));
        }
        let verify_cache_keys = file
            .server
            .verify_cache_keys
            .unwrap_or(DEFAULT_VERIFY_CACHE_KEYS);
        if verify_cache_keys == 0 {
            return Err(err("server.verify_cache_keys", "must be at least 1"));
        }
        let usage_cache_keys = file
            .server
            .usage_cache_keys
            .unwrap_or(crate::keys::usage::MAX_ENTRIES);
        if usage_cache_keys == 0 {
            return Err(err("server.usage_cache_keys", "must be at least 1"));
        }
        let forward_auth = ForwardAuth {
            key_header: header_name(
                file.forward_auth.key_header,
                "x-api-key",
                "forward_auth.key_header",
                true,
            )?,
            cert_header: header_name(
                file.forward_auth.cert_header,
                "x-client-cert",
                "forward_auth.cert_header",
                false,
            )?,
        };
        let log_format = match o.log_format.clone().or(file.log_format).as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(
                    "log_format",
                    format!("`{other}` is not one of human, json"),
                ));
            }
        };

        let server_cert = match (file.tls.cert_file, file.tls.key_file) {
            (Some(cert), Some(key)) => ServerCertSource::Files { cert, key },
            (None, None) => {
                let lifetime = file
                    .tls
                    .server_cert_lifetime_seconds
                    .unwrap_or(SERVER_CERT_LIFETIME_SECS);
                if !(5..=397 * 86_400).contains(&lifetime) {
                    return Err(err(
                        "tls.server_cert_lifetime_seconds",
                        "must be between 5 and 34300800 (397 days)",
                    ));
                }
                ServerCertSource::Managed {
                    lifetime_secs: lifetime,
                }
            }
            (Some(_), None) => return Err(err("tls.key_file", "must be set with tls.cert_file")),
            (None, Some(_)) => return Err(err("tls.cert_file", "must be set with tls.key_file")),
        };
        let tidy_retention_secs = file.tidy.retention_seconds.unwrap_or(30 * 86_400);
        let tidy_interval_secs = file.tidy.interval_seconds.unwrap_or(3600);
        if !(1..=7 * 86_400).contains(&tidy_interval_secs) {
            return Err(err("tidy.interval_seconds", "must be between 1 and 604800"));
        }
        let public_url = match file.public_url {
            Some(u) if (u.starts_with("https://") && u.len() <= 512 && !u.ends_with('/')) => {
                Some(u)
            }
            Some(_) => {
                return Err(err(
                    "public_url",
                    "must be an https:// URL without a trailing slash",
                ));
            }
            None => None,
        };

        let audit_checkpoint_secs = file.audit.checkpoint_interval_seconds.unwrap_or(600);
        if !(1..=86_400).contains(&audit_checkpoint_secs) {
            return Err(err(
                "audit.checkpoint_interval_seconds",
                "must be between 1 and 86400",
            ));
        }
        let store_url = o.store_url.clone().or(file.store.url);
        let max_staleness_ms = file.store.max_staleness_ms.unwrap_or(1_000);
        if !(50..=60_000).contains(&max_staleness_ms) {
            return Err(err("store.max_staleness_ms", "must be 50 to 60000"));
        }
        let poll_interval_ms = file.store.poll_interval_ms.unwrap_or(100);
        if !(10..=10_000).contains(&poll_interval_ms) || poll_interval_ms * 2 > max_staleness_ms {
            return Err(err(
                "store.poll_interval_ms",
                "must be 10 to 10000 and at most half of store.max_staleness_ms",
            ));
        }
        let store_url = match store_url {
            Some(u) => Some(
                crate::store::postgres::PgTarget::parse(&u)
                    .map_err(|m| err("store.url", m))?
                    .with_timing(
                        std::time::Duration::from_millis(max_staleness_ms),
                        std::time::Duration::from_millis(poll_interval_ms),
                    ),
            ),
            None => None,
        };
        let audit_refusal_window_secs = file.audit.refusal_window_seconds.unwrap_or(10);
        if !(1..=3_600).contains(&audit_refusal_window_secs) {
            return Err(err(
                "audit.refusal_window_seconds",
                "must be between 1 and 3600",
            ));
        }
        if let Some(f) = &file.audit.file
            && (f.as_os_str().is_empty() || f.is_dir())
        {
            return Err(err("audit.file", "must name a file"));
        }

        let metrics_listen = match file.metrics.listen {
            None => None,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => Some(a),
                _ => {
                    return Err(err(
                        "metrics.listen",
                        "must be a loopback address like 127.0.0.1:9464",
                    ));
                }
            },
        };

        let l = &file.limits;
        let nonzero = |v: Option<u32>, default: u32, setting: &str| match v {
            Some(0) => Err(err(setting, "must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let mut trusted_proxies = Vec::new();
        for p in l.trusted_proxies.iter().flatten() {
            trusted_proxies.push(p.parse().map_err(|_| {
                err(
                    "limits.trusted_proxies",
                    format!("`{p}` is not an IP address"),
                )
            })?);
        }
        let limits = Limits {
            principal_rps: nonzero(l.requests_per_second, 500, "limits.requests_per_second")?,
            principal_burst: nonzero(l.burst, 1000, "limits.burst")?,
            anonymous_rps: nonzero(
                l.unauthenticated_per_second,
                20,
                "limits.unauthenticated_per_second",
            )?,
            anonymous_burst: nonzero(l.unauthenticated_burst, 40, "limits.unauthenticated_burst")?,
            lockout_threshold: nonzero(l.lockout_threshold, 20, "limits.lockout_threshold")?,
            lockout_window_secs: l.lockout_window_seconds.unwrap_or(300).max(1),
            lockout_secs: l.lockout_seconds.unwrap_or(60).max(1),
            lockout_max_secs: l.lockout_max_seconds.unwrap_or(3600).max(1),
            trusted_proxies,
            max_connections: file.server.max_connections.unwrap_or(10_000).max(1),
            keep_alive_secs: file.server.keep_alive_seconds.unwrap_or(30).clamp(1, 3600),
            client_request_timeout_ms: file
                .server
                .client_request_timeout_ms
                .unwrap_or(5_000)
                .clamp(100, 120_000),
            tls_handshake_timeout_ms: file
                .server
                .tls_handshake_timeout_ms
                .unwrap_or(5_000)
                .clamp(100, 120_000),
            http2: file.server.http2.unwrap_or(false),
            max_header_bytes: file
                .server
                .max_header_bytes
                .unwrap_or(16 * 1024)
                .clamp(1024, 128 * 1024),
        };
        let allow_tls12 = match file.tls.min_version.as_deref() {
            None | Some("1.3") => false,
            Some("1.2") => true,
            Some(other) => {
                return Err(err(
                    "tls.min_version",
                    format!("`{other}` is not one of 1.2, 1.3"),
                ));
            }
        };

        let FileLeaks {
            github_keys_file,
            github_feedback,
        } = file.leaks;
        let leaks = Leaks {
            github_keys_file,
            github_feedback: github_feedback.unwrap_or(false),
        };
        Ok(Self {
            listen,
            data_dir,
            certs_dir,
            trust_domain,
            cert_default_ttl_secs,
            cert_max_ttl_secs,
            cert_max_lineage_secs,
            body_limit,
            shutdown_timeout_secs,
            workers,
            store_cache_bytes,
            verify_cache_keys,
            usage_cache_keys,
            forward_auth,
            leaks,
            log_format,
            server_cert,
            tidy_retention_secs,
            tidy_interval_secs,
            public_url,
            audit_file: file.audit.file,
            audit_checkpoint_secs,
            audit_refusal_window_secs,
            store_url,
            max_staleness: std::time::Duration::from_millis(max_staleness_ms),
            poll_interval: std::time::Duration::from_millis(poll_interval_ms),
            metrics_listen,
            limits,
            allow_tls12,
        })
    }
}

fn read_file(p: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| err("config", format!("cannot read {}: {e}", p.display())))?;
    toml::from_str(&text).map_err(|e| err("config", format!("{}: {}", p.display(), e.message())))
}

fn check_dir(setting: &str, p: &Path) -> Result<(), ConfigError> {
    if p.as_os_str().is_empty() {
        return Err(err(setting, "must not be empty"));
    }
    if p.exists() && !p.is_dir() {
        return Err(err(
            setting,
            format!("{} exists and is not a directory", p.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults() {
        let c = Config::resolve(FileConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.trust_domain.as_str(), DEFAULT_TRUST_DOMAIN);
        assert_eq!(c.cert_default_ttl_secs, 86_400);
        assert_eq!(c.cert_max_lineage_secs, 90 * 86_400);
        assert_eq!(c.usage_cache_keys, crate::keys::usage::MAX_ENTRIES);
        let file: FileConfig = toml::from_str("[server]\nusage_cache_keys = 1048576").unwrap();
        let c = Config::resolve(file, &Overrides::default()).unwrap();
        assert_eq!(c.usage_cache_keys, 1 << 20);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\ntrust_domain = \"a.b\"").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let c = Config::resolve(file, &o).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.trust_domain.as_str(), "a.b");
    }

    #[test]
    fn errors_name_the_setting() {
        let bad = |o: Overrides, f: &str| {
            let file: FileConfig = toml::from_str(f).unwrap();
            Config::resolve(file, &o).unwrap_err().setting
        };
        let listen = Overrides {
            listen: Some("nonsense".into()),
            ..Overrides::default()
        };
        assert_eq!(bad(listen, ""), "listen");
        assert_eq!(
            bad(Overrides::default(), "trust_domain = \"Bad Domain\""),
            "trust_domain"
        );
        assert_eq!(
            bad(
                Overrides::default(),
                "[certificates]\ndefault_ttl_seconds = 999999999"
            ),
            "certificates.default_ttl_seconds"
        );
        assert_eq!(
            bad(
                Overrides::default(),
                "[certificates]\nmax_lineage_seconds = 0"
            ),
            "certificates.max_lineage_seconds"
        );
        assert_eq!(
            bad(Overrides::default(), "[server]\nusage_cache_keys = 0"),
            "server.usage_cache_keys"
        );
        assert!(toml::from_str::<FileConfig>("unknown = 1").is_err());
    }
}
