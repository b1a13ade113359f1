//! Where the PostgreSQL database is and how to reach it: a `postgres://` URL (or libpq
//! key/value string), with TLS to the database when the URL asks for it.
//!
//! `sslmode` takes libpq's two safe answers only: `disable` (the default: for a database on
//! loopback or a private link) and `verify-full` (TLS, the server's chain checked against
//! `sslrootcert` and its name against the host). `require`, `verify-ca` and `prefer` would
//! encrypt without knowing to whom, so they are refused rather than quietly weakened.
//! `sslrootcert` is read by Tessera (tokio-postgres does not know it).

use std::{sync::Arc, time::Duration};

use tokio_postgres::config::SslMode;

/// A parsed database address, ready to connect. Its `Debug` shows no password.
#[derive(Clone)]
pub struct PgTarget {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    shown: String,
    /// How stale a node's view of other nodes' changes may be while it uses its caches.
    pub(super) max_staleness: Duration,
    /// How often a node reads the change sequence.
    pub(super) poll_interval: Duration,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether a store address names PostgreSQL (anything else is a directory).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgTarget {
    /// Parses `url`. The error names what is wrong, never the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        if !is_postgres(url) {
            return Err("must start with postgres:// or postgresql://".into());
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut keep = Vec::new();
        let (mut mode, mut root) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| format!("`{k}` is not UTF-8"))?
                .into_owned();
            match k {
                "sslmode" => mode = Some(v),
                "sslrootcert" => root = Some(v),
                _ => keep.push(pair),
            }
        }
        let rebuilt = if keep.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", keep.join("&"))
        };
        let mut config: tokio_postgres::Config = rebuilt
            .parse()
            .map_err(|e: tokio_postgres::Error| format!("not a PostgreSQL URL ({e})"))?;
        let tls = match mode.as_deref() {
            None | Some("disable") => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            Some("verify-full") => {
                let root = root.ok_or("sslmode=verify-full needs sslrootcert=<CA file>")?;
                config.ssl_mode(SslMode::Require);
                Some(Arc::new(client_tls(&root)?))
            }
            Some(other) => {
                return Err(format!(
                    "sslmode={other} is not supported: use verify-full (TLS, server checked) or \
                     disable"
                ));
            }
        };
        // Durable at commit, whatever the server's default; bounded waits, so a stalled
        // database turns into 503s rather than hung requests.
        config.options(
            "-c synchronous_commit=on -c statement_timeout=15000 -c lock_timeout=10000 \
             -c idle_in_transaction_session_timeout=30000",
        );
        config.application_name("tessera");
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let shown = shown(&config, tls.is_some());
        Ok(Self {
            config,
            tls,
            shown,
            max_staleness: Duration::from_secs(1),
            poll_interval: Duration::from_millis(100),
        })
    }

    /// Sets the staleness bound and the polling interval of the change follower.
    pub fn with_timing(mut self, max_staleness: Duration, poll_interval: Duration) -> Self {
        self.max_staleness = max_staleness;
        self.poll_interval = poll_interval;
        self
    }
}

/// `postgres://user@host:port/db (tls)`, without the password.
fn shown(c: &tokio_postgres::Config, tls: bool) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or(""),
        if tls { " (TLS, verify-full)" } else { "" }
    )
}

/// A rustls client that trusts the CA certificates in `path` only.
fn client_tls(path: &str) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for item in pem::parse_many(&pem).map_err(|e| format!("sslrootcert {path}: {e}"))? {
        if item.tag() == "CERTIFICATE" {
            roots
                .add(rustls_pki_types::CertificateDer::from(item.into_contents()))
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            found += 1;
        }
    }
    if found == 0 {
        return Err(format!("sslrootcert {path} holds no certificate"));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_the_password() {
        let t = PgTarget::parse("postgres://tessera:s3cret@db.internal:6432/tessera").unwrap();
        let shown = format!("{t:?} {t}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.internal:6432/tessera"), "{shown}");
        assert!(t.tls.is_none());
    }

    #[test]
    fn refuses_weak_or_unknown_tls_modes() {
        for mode in ["require", "prefer", "verify-ca", "allow"] {
            let e = PgTarget::parse(&format!("postgres://u@h/db?sslmode={mode}")).unwrap_err();
            assert!(e.contains("verify-full"), "{e}");
        }
        let e = PgTarget::parse("postgres://u@h/db?sslmode=verify-full").unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        assert!(PgTarget::parse("mysql://u@h/db").is_err());
        assert!(PgTarget::parse("data/db").is_err());
    }
}
