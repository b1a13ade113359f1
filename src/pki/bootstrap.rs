//! The `certs/` directory: the public trust bundle, the server's own TLS credential, and the
//! bootstrap admin credential. Private keys here are 0600 files; CA keys never are.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::{Leaf, Pki, PkiError, identity::Identity, identity::SpiffeId};
use crate::{clock::Timestamp, files};

/// Lifetime of the server's own certificate.
pub const SERVER_CERT_LIFETIME_SECS: u64 = 90 * 86_400;
/// The server renews its certificate when less than this is left.
pub const SERVER_CERT_RENEW_BEFORE_SECS: u64 = 30 * 86_400;
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

/// Writes the public trust bundle.
pub fn write_ca_bundle(pki: &Pki, paths: &CertPaths) -> std::io::Result<()> {
    files::write_atomic(&paths.ca, pki.ca_bundle_pem().as_bytes(), files::PUBLIC)
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

/// Loads the server credential from `certs/`, or issues a new one when it is missing,
/// unreadable, not ours, or due for renewal.
pub async fn ensure_server_cert(
    pki: &Pki,
    paths: &CertPaths,
    now: Timestamp,
) -> Result<ServerCredential, PkiError> {
    if let Some(cred) = load_server_cert(pki, paths)
        && cred.not_after.unix() - now.unix() > SERVER_CERT_RENEW_BEFORE_SECS as i64
    {
        return Ok(cred);
    }
    renew_server_cert(pki, paths, now).await
}

/// Issues a new server certificate and writes it (key first, so a crash in between leaves a
/// mismatch that the next start detects and repairs).
pub async fn renew_server_cert(
    pki: &Pki,
    paths: &CertPaths,
    now: Timestamp,
) -> Result<ServerCredential, PkiError> {
    let (dns, ips) = default_server_names();
    let (issued, key_pem) = pki
        .issue_with_new_key(
            &Leaf::Server { dns, ips },
            None,
            SERVER_CERT_LIFETIME_SECS,
            now,
        )
        .await?;
    write_pair(
        &paths.server_cert,
        &paths.server_key,
        &issued.full_chain_pem(),
        key_pem.expose(),
    )?;
    tracing::info!(serial = %issued.serial, not_after = %issued.not_after, "issued the server certificate");
    load_server_cert(pki, paths).ok_or(PkiError::BadCertificate)
}

/// Issues a fresh bootstrap admin credential and writes `admin.pem` / `admin.key`.
pub async fn issue_admin_cert(
    pki: &Pki,
    paths: &CertPaths,
    now: Timestamp,
) -> Result<super::Issued, PkiError> {
    let id = SpiffeId::new(pki.trust_domain().clone(), Identity::Admin);
    let (issued, key_pem) = pki
        .issue_with_new_key(&Leaf::Client(id), None, ADMIN_CERT_LIFETIME_SECS, now)
        .await?;
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

/// Reads the server credential; `None` unless it parses, its key matches, and its leaf was
/// signed by one of our issuing CAs.
fn load_server_cert(pki: &Pki, paths: &CertPaths) -> Option<ServerCredential> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.server_cert)
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let key = Zeroizing::new(PrivateKeyDer::from_pem_file(&paths.server_key).ok()?);
    let leaf = chain.first()?;
    let (_, parsed) = X509Certificate::from_der(leaf).ok()?;
    let authority = pki.authority();
    let ours = std::iter::once(&authority.issuing)
        .chain(authority.retired.iter())
        .any(|ca| {
            X509Certificate::from_der(&ca.cert)
                .ok()
                .is_some_and(|(_, c)| parsed.verify_signature(Some(c.public_key())).is_ok())
        });
    if !ours {
        return None;
    }
    let signer = rustls::crypto::ring::sign::any_ecdsa_type(&key).ok()?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signer);
    certified.keys_match().ok()?;
    Some(ServerCredential {
        not_after: Timestamp::from_unix(parsed.validity().not_after.timestamp()),
        chain,
        key,
    })
}
