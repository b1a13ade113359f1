//! `tessera agent`: keeps a service's certificate renewed, with no downtime.
//!
//! What users of step-ca's and Vault's agents run into, and what this one does instead:
//! - renewal at a fraction of the lifetime (2/3 by default), measured from the certificate's
//!   own validity, minus up to 5 % of the lifetime of jitter so a fleet does not renew in step;
//! - failures retried with capped exponential back-off and full jitter, never hammering the
//!   server and never sleeping past the certificate's expiry;
//! - a certificate that has expired (or been revoked) cannot renew itself: the agent says so and
//!   exits non-zero instead of looping; one that is not due yet is checked with the server
//!   (at start, and on each `--once`), so a revoked certificate is reported at once;
//! - files replaced atomically (temp file, fsync, rename; the key 0600), the key before the
//!   certificate, then the reload hook: a command run without a shell, and/or SIGHUP to the
//!   process in a pid file;
//! - `SIGHUP` renews at once; `--once` renews if due and exits (for cron).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::{
    client::{Client, ClientError, Target},
    files,
};

/// Jitter: up to this fraction of the lifetime earlier than the nominal renewal time.
const JITTER: f64 = 0.05;
/// First retry delay, and the cap of the back-off.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);
/// The shortest wait between two renewals (unless SIGHUP asks for one).
const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// With `--once`, attempts before giving up (cron will try again).
const ONCE_ATTEMPTS: u32 = 4;

pub struct Options {
    pub server: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The reload command, split like a shell would split it but run without one.
    pub exec: Option<Vec<String>>,
    /// A pid file whose process gets SIGHUP after each renewal.
    pub signal_pid: Option<PathBuf>,
    /// When to renew, as a fraction of the lifetime (0 < f < 1).
    pub renew_at: f64,
    /// A fresh key pair (and CSR) at each renewal.
    pub rekey: bool,
    /// The lifetime to ask for (the server's default if `None`).
    pub ttl_seconds: Option<u64>,
    pub once: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The certificate has expired: it can no longer authenticate its own renewal.
    #[error(
        "the certificate {path} expired at {at}: it can no longer renew itself; have an \
         issuer issue a new one (POST /v1/certs) and start the agent again"
    )]
    Expired {
        path: String,
        at: crate::clock::Timestamp,
    },
    /// The server refused the renewal itself (a 4xx, or an alert at the handshake).
    #[error(
        "the server refused the renewal ({0}); the certificate may be revoked: issue a new one"
    )]
    Refused(String),
    /// The server refuses the certificate itself (revoked, or no longer trusted), found by
    /// the check made when it is not yet due for renewal.
    #[error(
        "the server refuses the certificate {path} ({why}): it is revoked or no longer \
         trusted, and cannot renew itself; issue a new one (POST /v1/certs, or an enrolment \
         token)"
    )]
    Rejected { path: String, why: String },
    /// `agent bootstrap`: the token was refused.
    #[error(
        "the server refused the enrolment token: it is unknown, used, expired or for another \
         identity"
    )]
    Enrolment,
    /// A file (certificate, key) cannot be read or parsed.
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    /// A file cannot be written.
    #[error("cannot write {0}: {1}")]
    Write(String, String),
    /// `--once`: every attempt failed for a reason worth retrying (cron will try again).
    #[error("renewal failed after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    /// The options or the local set-up are wrong.
    #[error("{0}")]
    Setup(String),
}

/// A certificate's validity, unix seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl AgentError {
    /// Whether this is a verdict on the certificate (expired, revoked, refused) rather than a
    /// failure to reach a verdict: the certificate needs replacing, retrying will not help.
    pub fn is_verdict(&self) -> bool {
        matches!(
            self,
            Self::Expired { .. } | Self::Refused(_) | Self::Rejected { .. }
        )
    }
}

impl Validity {
    /// When to renew: `fraction` of the lifetime after not-before, minus `jitter` (0..1) of
    /// the jitter window.
    pub fn due(&self, fraction: f64, jitter: f64) -> f64 {
        let life = (self.not_after - self.not_before) as f64;
        self.not_before as f64 + life * fraction - life * JITTER * jitter
    }
}

/// The validity of the first certificate in a PEM file.
pub fn validity(path: &Path) -> Result<Validity, AgentError> {
    let read = |e: String| AgentError::Read(path.display().to_string(), e);
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    let certs = crate::pki::parse_pem_certs(&text, 16).map_err(|e| read(e.to_owned()))?;
    let first = certs.first().ok_or_else(|| read("no certificate".into()))?;
    let (_, c) = X509Certificate::from_der(first).map_err(|_| read("not a certificate".into()))?;
    Ok(Validity {
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
    })
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A uniform fraction in [0, 1).
fn unit() -> f64 {
    let b = crate::crypto::random::bytes::<8>().unwrap_or([0; 8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Splits a reload command like a POSIX shell would (quotes, escapes), without running one.
pub fn split_command(cmd: &str) -> Result<Vec<String>, AgentError> {
    match shlex::split(cmd) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(AgentError::Setup(format!(
            "--exec `{cmd}`: not a command (unbalanced quotes?)"
        ))),
    }
}

pub async fn run(opts: Options) -> Result<(), AgentError> {
    if !(opts.renew_at > 0.0 && opts.renew_at < 1.0) {
        return Err(AgentError::Setup(
            "--renew-at must be between 0 and 1 (a fraction of the lifetime)".into(),
        ));
    }
    let mut hup = signal(SignalKind::hangup()).map_err(|e| AgentError::Setup(e.to_string()))?;
    let mut first = true;
    loop {
        let v = validity(&opts.cert)?;
        let expired = || AgentError::Expired {
            path: opts.cert.display().to_string(),
            at: crate::clock::Timestamp::from_unix(v.not_after),
        };
        if now() >= v.not_after as f64 {
            return Err(expired());
        }
        let due = v.due(opts.renew_at, unit());
        let wait = due - now();
        if wait > 0.0 {
            // Not due, but possibly revoked: a cron job (or a service manager) must learn that
            // now, not when the renewal fails hours later.
            if opts.once || first {
                check(&opts).await?;
            }
            first = false;
            if opts.once {
                tracing::info!(due = %crate::clock::Timestamp::from_unix(due as i64), "not due yet");
                return Ok(());
            }
            tracing::info!(
                due = %crate::clock::Timestamp::from_unix(due as i64),
                in_seconds = wait as i64,
                "next renewal"
            );
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                _ = hup.recv() => tracing::info!("SIGHUP: renewing now"),
            }
        }
        renew_with_retry(&opts, v).await?;
        if opts.once {
            return Ok(());
        }
        // Never renew in a loop: when a renewed certificate is due at once (a lifetime too
        // short for --renew-at, or one cut short by the CA's own expiry), wait a little.
        let next = validity(&opts.cert)?;
        if next.due(opts.renew_at, 0.0) <= now() {
            let wait = MIN_INTERVAL
                .as_secs_f64()
                .min((next.not_after as f64 - now()) / 2.0)
                .max(0.0);
            tracing::warn!(
                wait_seconds = wait,
                "the renewed certificate is already due: its lifetime is too short for --renew-at"
            );
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                _ = hup.recv() => tracing::info!("SIGHUP: renewing now"),
            }
        }
    }
}

/// The alerts with which a server refuses a client certificate at the handshake.
const REFUSAL_ALERTS: [&str; 4] = [
    "CertificateRevoked",
    "CertificateExpired",
    "BadCertificate",
    "UnknownCA",
];

/// Asks the server whether it still takes the certificate (`GET /v1/whoami` with it). A
/// refusal is an error; a server that cannot be reached is only a warning (the certificate is
/// not due, and nothing needs the server yet).
async fn check(opts: &Options) -> Result<(), AgentError> {
    let client = Client::new(&own_target(opts)).map_err(|e| AgentError::Setup(e.to_string()))?;
    let rejected = |why: String| AgentError::Rejected {
        path: opts.cert.display().to_string(),
        why,
    };
    match client
        .call(reqwest::Method::GET, "/v1/whoami", None)
        .await
        .and_then(|a| a.ok())
    {
        Ok(_) => Ok(()),
        Err(ClientError::Server { status: 401, .. }) => Err(rejected("401".into())),
        Err(ClientError::Connect(m)) if REFUSAL_ALERTS.iter().any(|a| m.contains(a)) => {
            Err(rejected(m))
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check the certificate with the server");
            Ok(())
        }
    }
}

/// The server, authenticated with the certificate being kept.
fn own_target(opts: &Options) -> Target {
    Target {
        addr: opts.server.clone(),
        ca: opts.ca.clone(),
        cert: Some(opts.cert.clone()),
        key: Some(opts.key.clone()),
        token: None,
    }
}

/// Renews, retrying transient failures with capped exponential back-off and full jitter.
async fn renew_with_retry(opts: &Options, v: Validity) -> Result<(), AgentError> {
    let mut delay = RETRY_FIRST;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match renew_once(opts).await {
            Ok(new) => {
                tracing::info!(
                    not_after = %crate::clock::Timestamp::from_unix(new.not_after),
                    "certificate renewed"
                );
                reload(opts);
                return Ok(());
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Transient(e)) => {
                let left = v.not_after as f64 - now();
                if left <= 0.0 {
                    return Err(AgentError::Expired {
                        path: opts.cert.display().to_string(),
                        at: crate::clock::Timestamp::from_unix(v.not_after),
                    });
                }
                if opts.once && attempts >= ONCE_ATTEMPTS {
                    return Err(AgentError::GaveUp { attempts, last: e });
                }
                let wait = delay.as_secs_f64().min(left) * (0.5 + unit() / 2.0);
                tracing::warn!(error = %e, retry_in_seconds = wait, "renewal failed; will retry");
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                delay = (delay * 2).min(RETRY_CAP);
            }
        }
    }
}

enum Attempt {
    /// Worth trying again (server down, 5xx, throttled).
    Transient(String),
    /// Not: the certificate is refused, or the files cannot be written.
    Fatal(AgentError),
}

async fn renew_once(opts: &Options) -> Result<Validity, Attempt> {
    let client = Client::new(&own_target(opts))
        .map_err(|e| Attempt::Fatal(AgentError::Setup(e.to_string())))?;
    let (mut body, new_key) = if opts.rekey {
        let pair = rcgen::KeyPair::generate()
            .map_err(|e| Attempt::Fatal(AgentError::Setup(e.to_string())))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&pair)
            .and_then(|c| c.pem())
            .map_err(|e| Attempt::Fatal(AgentError::Setup(e.to_string())))?;
        (
            json!({ "csr": csr }),
            Some(Zeroizing::new(pair.serialize_pem())),
        )
    } else {
        (json!({}), None)
    };
    if let Some(t) = opts.ttl_seconds {
        body["ttl_seconds"] = json!(t);
    }
    let answer = match client
        .call(reqwest::Method::POST, "/v1/certs/renew", Some(&body))
        .await
        .and_then(|a| a.ok())
    {
        Ok(a) => a,
        Err(ClientError::Server { status, message })
            if matches!(status, 400..=499) && status != 429 =>
        {
            return Err(Attempt::Fatal(AgentError::Refused(format!(
                "{status}: {message}"
            ))));
        }
        // The server refused the certificate itself at the handshake.
        Err(ClientError::Connect(m)) if REFUSAL_ALERTS.iter().any(|a| m.contains(a)) => {
            return Err(Attempt::Fatal(AgentError::Refused(m)));
        }
        Err(e) => return Err(Attempt::Transient(e.to_string())),
    };
    let pem = chain_pem(&answer.json());
    if pem.is_empty() {
        return Err(Attempt::Transient("the answer held no certificate".into()));
    }
    write_files(
        &opts.cert,
        &opts.key,
        &pem,
        new_key.as_deref().map(String::as_str),
    )
    .map_err(Attempt::Fatal)?;
    validity(&opts.cert).map_err(Attempt::Fatal)
}

/// The certificate and its chain from an issuing answer, as one PEM file.
/// The leaf and its chain, PEM, from an issuing answer (`certificate`, `chain`).
pub fn chain_pem(v: &serde_json::Value) -> String {
    let mut pem = v["certificate"].as_str().unwrap_or_default().to_owned();
    for c in v["chain"].as_array().into_iter().flatten() {
        pem.push_str(c.as_str().unwrap_or_default());
    }
    pem
}

/// Replaces the files atomically: the key first (0600), so a reader that sees the new
/// certificate finds its key already there.
fn write_files(
    cert: &Path,
    key: &Path,
    pem: &str,
    new_key: Option<&str>,
) -> Result<(), AgentError> {
    let write = |path: &Path, bytes: &[u8], mode| {
        files::write_atomic(path, bytes, mode)
            .map_err(|e| AgentError::Write(path.display().to_string(), e.to_string()))
    };
    let Some(k) = new_key else {
        return write(cert, pem.as_bytes(), files::PUBLIC);
    };
    // If the certificate cannot be written, put the old key back: a new key next to the old
    // certificate would leave the service unable to authenticate.
    let old = std::fs::read(key).ok().map(Zeroizing::new);
    write(key, k.as_bytes(), files::PRIVATE)?;
    if let Err(e) = write(cert, pem.as_bytes(), files::PUBLIC) {
        if let Some(old) = &old {
            let _ = files::write_atomic(key, old, files::PRIVATE);
        }
        return Err(e);
    }
    Ok(())
}

/// `tessera agent bootstrap`: the first certificate, from a single-use enrolment token.
pub struct Bootstrap {
    pub server: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub identity: String,
    pub token: crate::crypto::secret::SecretString,
    pub ttl_seconds: Option<u64>,
}

/// A new key pair made here, a CSR, and the token traded for the certificate; returns its
/// validity. Both files are created (empty) before the token is spent, so a path that cannot
/// be written fails with the token still good.
pub async fn bootstrap(b: Bootstrap) -> Result<Validity, AgentError> {
    let setup = |e: String| AgentError::Setup(e);
    let client = Client::new(&Target {
        addr: b.server,
        ca: b.ca,
        cert: None,
        key: None,
        token: None,
    })
    .map_err(|e| setup(e.to_string()))?;
    // The token is single-use: make sure both files can be written before spending it.
    if b.cert == b.key {
        return Err(setup("--cert and --key must be different files".into()));
    }
    let stage = |path: &Path, mode| {
        files::Staged::create(path, mode)
            .map_err(|e| AgentError::Write(path.display().to_string(), e.to_string()))
    };
    let key_file = stage(&b.key, files::PRIVATE)?;
    let cert_file = stage(&b.cert, files::PUBLIC)?;
    let pair = rcgen::KeyPair::generate().map_err(|e| setup(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&pair)
        .and_then(|c| c.pem())
        .map_err(|e| setup(e.to_string()))?;
    let key = Zeroizing::new(pair.serialize_pem());
    let mut body = json!({ "token": b.token.expose(), "identity": b.identity, "csr": csr });
    if let Some(t) = b.ttl_seconds {
        body["ttl_seconds"] = json!(t);
    }
    let answer = match client
        .call(reqwest::Method::POST, "/v1/enrol", Some(&body))
        .await
        .and_then(|a| a.ok())
    {
        Ok(a) => a,
        Err(ClientError::Server { status: 401, .. }) => return Err(AgentError::Enrolment),
        Err(e) => return Err(setup(e.to_string())),
    };
    let pem = chain_pem(&answer.json());
    if pem.is_empty() {
        return Err(setup("the answer held no certificate".into()));
    }
    // The key first, so that a reader that sees the certificate finds its key.
    let commit = |f: files::Staged, path: &Path, bytes: &[u8]| {
        f.commit(bytes)
            .map_err(|e| AgentError::Write(path.display().to_string(), e.to_string()))
    };
    commit(key_file, &b.key, key.as_bytes())?;
    commit(cert_file, &b.cert, pem.as_bytes())?;
    validity(&b.cert)
}

/// Runs the reload hooks; a failing hook is logged, not fatal (the files are in place).
fn reload(opts: &Options) {
    if let Some(argv) = &opts.exec
        && let Some((program, args)) = argv.split_first()
    {
        match Command::new(program).args(args).status() {
            Ok(s) if s.success() => tracing::info!(command = %program, "reload command ran"),
            Ok(s) => tracing::warn!(command = %program, status = %s, "reload command failed"),
            Err(e) => {
                tracing::warn!(command = %program, error = %e, "reload command did not start")
            }
        }
    }
    if let Some(pid_file) = &opts.signal_pid {
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        match pid {
            // `--` first: `kill` reads a lone negative number as an option.
            Some(pid) if pid > 1 => {
                let sent = Command::new("kill")
                    .args(["-s", "HUP", "--", &pid.to_string()])
                    .status();
                match sent {
                    Ok(s) if s.success() => tracing::info!(pid, "sent SIGHUP"),
                    _ => tracing::warn!(pid, "could not send SIGHUP"),
                }
            }
            _ => tracing::warn!(file = %pid_file.display(), "no pid in the pid file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_the_fraction_minus_jitter() {
        let v = Validity {
            not_before: 1000,
            not_after: 1300,
        };
        assert_eq!(v.due(2.0 / 3.0, 0.0), 1200.0);
        assert_eq!(v.due(0.5, 0.0), 1150.0);
        // At most 5 % of the lifetime earlier.
        assert_eq!(v.due(0.5, 1.0), 1135.0);
        let j = unit();
        assert!((0.0..1.0).contains(&j));
    }

    #[test]
    fn commands_are_split_without_a_shell() {
        assert_eq!(
            split_command("systemctl reload 'my service'").unwrap(),
            ["systemctl", "reload", "my service"]
        );
        assert_eq!(
            split_command(r#"sh -c "echo \"a b\"; exit 0""#).unwrap(),
            ["sh", "-c", "echo \"a b\"; exit 0"]
        );
        assert!(split_command("unbalanced 'quote").is_err());
        assert!(split_command("   ").is_err());
    }
}
