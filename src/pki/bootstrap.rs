//! The `certs/` directory: the public trust bundle, the server's own TLS credential, and the
//! bootstrap admin credential. Private keys here are 0600 files; CA keys never are.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::{KeySource, Leaf, Pki, PkiError, identity::Identity, identity::SpiffeId};
pub use crate::config::{SERVER_CERT_LIFETIME_SECS, ServerCertSource};
use crate::{
    clock::Timestamp,
    files,
    store::{NoRecord, Recorder},
};

/// Lifetime of the bootstrap admin certificate.
pub const ADMIN_CERT_LIFETIME_SECS: u64 = 365 * 86_400;

/// Where the files of `certs/` live.
#[derive(Clone, Debug)]
pub struct CertPaths {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

impl CertPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            admin_cert: dir.join("admin.pem"),
            admin_key: dir.join("admin.key"),
        }
    }
}

/// The server's TLS credential: its chain (leaf first) and private key.
pub struct ServerCredential {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Zeroizing<PrivateKeyDer<'static>>,
    pub not_after: Timestamp,
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredential")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The names the server certificate covers by default.
pub fn default_server_names() -> (Vec<String>, Vec<IpAddr>) {
    (
        vec!["localhost".to_owned()],
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    )
}

/// Whether a managed server certificate with this much time left should be renewed now.
pub fn due(source: &ServerCertSource, cred: &ServerCredential, now: Timestamp) -> bool {
    match source {
        ServerCertSource::Managed { lifetime_secs } => {
            cred.not_after.unix() - now.unix() < (*lifetime_secs / 3) as i64
        }
        ServerCertSource::Files { .. } => false,
    }
}

/// Loads the server credential, issuing a new managed one when it is missing, unreadable,
/// not ours, or due for renewal.
pub async fn ensure_server_cert(
    pki: &Pki,
    paths: &CertPaths,
    source: &ServerCertSource,
    now: Timestamp,
) -> Result<ServerCredential, PkiError> {
    match source {
        ServerCertSource::Files { cert, key } => load_pair(cert, key).ok_or(PkiError::Invalid {
            field: "tls.cert_file",
            message: "must name a readable PEM chain whose first certificate matches tls.key_file",
        }),
        ServerCertSource::Managed { .. } => {
            if let Some(cred) =
                load_pair(&paths.server_cert, &paths.server_key).filter(|c| issued_by_us(pki, c))
                && !due(source, &cred, now)
            {
                return Ok(cred);
            }
            renew_server_cert(pki, paths, source, now).await
        }
    }
}

/// Issues a new managed server certificate and writes it (key first, so a crash in between
/// leaves a mismatch that the next start detects and repairs).
pub async fn renew_server_cert(
    pki: &Pki,
    paths: &CertPaths,
    source: &ServerCertSource,
    now: Timestamp,
) -> Result<ServerCredential, PkiError> {
    let lifetime = match source {
        ServerCertSource::Managed { lifetime_secs } => *lifetime_secs,
        ServerCertSource::Files { cert, key } => {
            return load_pair(cert, key).ok_or(PkiError::Invalid {
                field: "tls.cert_file",
                message: "must name a readable PEM chain whose first certificate matches tls.key_file",
            });
        }
    };
    let (dns, ips) = default_server_names();
    let (issued, key_pem) = pki
        .issue_from(
            &NoRecord,
            &Leaf::Server { dns, ips },
            KeySource::Generate,
            lifetime,
            None,
            now,
        )
        .await?;
    let key_pem = key_pem.ok_or(PkiError::Inconsistent("a generated key is missing"))?;
    write_pair(
        &paths.server_cert,
        &paths.server_key,
        &issued.full_chain_pem(),
        key_pem.expose(),
    )?;
    tracing::info!(serial = %issued.serial, not_after = %issued.not_after, "issued the server certificate");
    load_pair(&paths.server_cert, &paths.server_key).ok_or(PkiError::BadCertificate)
}

/// Issues a fresh bootstrap admin credential and writes `admin.pem` / `admin.key`.
pub async fn issue_admin_cert(
    rec: &dyn Recorder,
    pki: &Pki,
    paths: &CertPaths,
    now: Timestamp,
) -> Result<super::Issued, PkiError> {
    let id = SpiffeId::new(pki.trust_domain().clone(), Identity::Admin);
    let (issued, key_pem) = pki
        .issue_from(
            rec,
            &Leaf::Client { id, ceiling: None },
            KeySource::Generate,
            ADMIN_CERT_LIFETIME_SECS,
            None,
            now,
        )
        .await?;
    let key_pem = key_pem.ok_or(PkiError::Inconsistent("a generated key is missing"))?;
    write_pair(
        &paths.admin_cert,
        &paths.admin_key,
        &issued.full_chain_pem(),
        key_pem.expose(),
    )?;
    Ok(issued)
}

fn write_pair(cert: &Path, key: &Path, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    let io = |_| PkiError::Inconsistent("could not write to the certs directory");
    files::write_atomic(key, key_pem.as_bytes(), files::PRIVATE).map_err(io)?;
    files::write_atomic(cert, cert_pem.as_bytes(), files::PUBLIC).map_err(io)?;
    Ok(())
}

/// The server credential from its files alone (while sealed, no CA is at hand to check or
/// renew it; renewal happens after unsealing).
pub fn server_cert_from_files(
    paths: &CertPaths,
    source: &ServerCertSource,
) -> Result<ServerCredential, PkiError> {
    let (cert, key) = match source {
        ServerCertSource::Files { cert, key } => (cert.as_path(), key.as_path()),
        ServerCertSource::Managed { .. } => {
            (paths.server_cert.as_path(), paths.server_key.as_path())
        }
    };
    load_pair(cert, key).ok_or(PkiError::Invalid {
        field: "tls.cert_file",
        message: "no usable server certificate and key: run `tessera init` (or start unsealed once)",
    })
}

/// Reads a certificate chain and its key; `None` unless both parse and the key matches.
pub fn load_pair(cert: &Path, key: &Path) -> Option<ServerCredential> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let key = Zeroizing::new(PrivateKeyDer::from_pem_file(key).ok()?);
    let (_, parsed) = X509Certificate::from_der(chain.first()?).ok()?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signer);
    certified.keys_match().ok()?;
    Some(ServerCredential {
        not_after: Timestamp::from_unix(parsed.validity().not_after.timestamp()),
        chain,
        key,
    })
}

/// Whether a credential's leaf was signed by one of our issuing CAs.
fn issued_by_us(pki: &Pki, cred: &ServerCredential) -> bool {
    let Some(Ok((_, leaf))) = cred.chain.first().map(|c| X509Certificate::from_der(c)) else {
        return false;
    };
    pki.authority().issuers().any(|ca| {
        X509Certificate::from_der(&ca.cert)
            .ok()
            .is_some_and(|(_, c)| leaf.verify_signature(Some(c.public_key())).is_ok())
    })
}
