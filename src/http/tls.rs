//! TLS: rustls on the ring provider, TLS 1.3 only, ECDSA P-256.
//!
//! - The server certificate comes from a resolver holding the current `CertifiedKey`, so a
//!   renewed certificate is swapped in without a restart or a re-bind.
//! - Client authentication is offered on every handshake and required per route (by the
//!   `Authenticated` extractor). A certificate that does not chain to Tessera's root fails the
//!   handshake itself. The verifier delegates to a `WebPkiClientVerifier` it can replace.
//! - No session resumption: no tickets and no session cache, so a client certificate is
//!   verified by a full handshake on every connection.

use crate::sync::Locked;
use std::sync::{Arc, RwLock};

use actix_web::{dev::Extensions, rt::net::TcpStream};
use rustls::{
    DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    server::{
        ClientHello, NoServerSessionStorage, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio_rustls::server::TlsStream;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::extract::PeerCert;
use crate::{
    identity::Serial,
    pki::{Pki, bootstrap::ServerCredential},
};

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the server key is not usable: {0}")]
    Key(rustls::Error),
    #[error("TLS configuration failed: {0}")]
    Config(rustls::Error),
    #[error("the public trust files are unusable: {0}")]
    Files(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified(cred: &ServerCredential) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = rustls::crypto::ring::sign::any_ecdsa_type(&cred.key).map_err(TlsError::Key)?;
    let ck = CertifiedKey::new(cred.chain.clone(), key);
    ck.keys_match().map_err(TlsError::Key)?;
    Ok(Arc::new(ck))
}

/// Serves the current server certificate; [`CertResolver::swap`] replaces it live.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(cred: &ServerCredential) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(certified(cred)?),
        })
    }

    pub fn swap(&self, cred: &ServerCredential) -> Result<(), TlsError> {
        let next = certified(cred)?;
        *self.current.write_locked() = next;
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read_locked().clone())
    }
}

/// A client certificate refused at the handshake: what the log line and the audit entry say
/// about it (never more than its serial: the rest is the client's unverified claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The leaf's serial, if it parses as a certificate.
    pub serial: Option<Serial>,
    /// Why, in a few words from a fixed set (so audit actions stay a bounded set).
    pub reason: &'static str,
}

impl Refused {
    fn new(leaf: &CertificateDer<'_>, e: &rustls::Error) -> Self {
        let serial = X509Certificate::from_der(leaf)
            .ok()
            .map(|(_, c)| Serial::from_bytes(c.raw_serial()));
        Self {
            serial,
            reason: refusal_reason(e),
        }
    }

    /// The log line, with the peer when it is known.
    pub fn log(&self, peer: Option<std::net::SocketAddr>) {
        let serial = self.serial.as_ref().map_or("(unreadable)", Serial::as_str);
        match peer {
            Some(peer) => tracing::info!(
                %peer, serial, reason = self.reason,
                "client certificate refused at the handshake"
            ),
            None => tracing::info!(
                serial,
                reason = self.reason,
                "client certificate refused at the handshake"
            ),
        }
    }
}

/// A refusal's reason, in words.
fn refusal_reason(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Revoked => "revoked",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not yet valid",
            C::UnknownIssuer => "unknown issuer",
            C::BadSignature | C::UnsupportedSignatureAlgorithmContext { .. } => "bad signature",
            C::UnknownRevocationStatus => "unknown revocation status",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "not for client authentication",
            C::BadEncoding => "malformed",
            _ => "invalid certificate",
        },
        rustls::Error::InvalidCertRevocationList(_) => "unusable CRL",
        _ => "refused",
    }
}

tokio::task_local! {
    /// Where [`ClientVerifier`] leaves the certificate it refused during the handshake the
    /// listener is driving (see [`handshake`]).
    static REFUSED: Arc<std::sync::Mutex<Option<Refused>>>;
}

/// Runs a handshake, and returns with its outcome the client certificate the verifier
/// refused during it, if any. The verifier runs inside the handshake's poll, on this task.
pub async fn handshake<F: std::future::Future>(f: F) -> (F::Output, Option<Refused>) {
    let slot = Arc::new(std::sync::Mutex::new(None));
    let out = REFUSED.scope(slot.clone(), f).await;
    let refused = slot.write_locked().take();
    (out, refused)
}

/// Verifies client certificates with the PKI's current verifier (root + every CA's CRL, which
/// the PKI replaces on every revocation and CA change), or, while sealed, with one built from
/// the public files in the certs directory.
#[derive(Debug)]
pub struct ClientVerifier {
    pki: RwLock<Option<Arc<Pki>>>,
    files: Arc<dyn ClientCertVerifier>,
    hints: Vec<DistinguishedName>,
}

impl ClientVerifier {
    /// `files` verifies from the public trust material (used while sealed).
    pub fn new(files: Arc<dyn ClientCertVerifier>) -> Self {
        // The root never changes, so the hints computed now stay right.
        let hints = files.root_hint_subjects().to_vec();
        Self {
            pki: RwLock::new(None),
            files,
            hints,
        }
    }

    pub fn set_pki(&self, pki: Option<Arc<Pki>>) {
        *self.pki.write_locked() = pki;
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        match &*self.pki.read_locked() {
            Some(p) => p.verifier(),
            None => self.files.clone(),
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .current()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &result {
            crate::metrics::TLS_CLIENT_REJECTED.inc();
            let refused = Refused::new(end_entity, e);
            // The listener, which knows the peer, logs and audits it; outside a listener's
            // handshake (there is none), log it here.
            if REFUSED
                .try_with(|slot| *slot.write_locked() = Some(refused.clone()))
                .is_err()
            {
                refused.log(None);
            }
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The server's rustls configuration.
/// A client verifier from the public files of the certs directory (the trust bundle's root
/// and every published CRL), used while sealed.
pub fn files_verifier(
    paths: &crate::pki::bootstrap::CertPaths,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bundle = std::fs::read_to_string(&paths.ca)
        .map_err(|e| TlsError::Files(format!("{}: {e}", paths.ca.display())))?;
    let root = ::pem::parse_many(&bundle)
        .ok()
        .and_then(|b| b.into_iter().next())
        .map(|b| CertificateDer::from(b.into_contents()))
        .ok_or_else(|| TlsError::Files(format!("{} holds no certificate", paths.ca.display())))?;
    let crls: Vec<Vec<u8>> = std::fs::read_to_string(paths.dir.join("crls.pem"))
        .ok()
        .and_then(|t| ::pem::parse_many(&t).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b.tag() == "X509 CRL")
        .map(|b| b.into_contents())
        .collect();
    crate::pki::verify::build_verifier(&root, &crls).map_err(|e| TlsError::Files(e.to_string()))
}

/// The server's rustls configuration: TLS 1.3 only unless `allow_tls12` (then TLS 1.2 with
/// rustls' suites, all ECDHE with AEAD); no compression (rustls has none); no 0-RTT.
pub fn server_config(
    resolver: Arc<CertResolver>,
    verifier: Arc<ClientVerifier>,
    allow_tls12: bool,
    http2: bool,
) -> Result<ServerConfig, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    // No resumption of any kind: every connection presents and verifies its certificate.
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.max_early_data_size = 0;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

/// Records the client certificate of a new connection. Never panics.
pub fn on_connect(tls: &TlsStream<TcpStream>, ext: &mut Extensions) {
    let (_, session) = tls.get_ref();
    if let Some(leaf) = session.peer_certificates().and_then(|c| c.first())
        && let Some(peer) = PeerCert::from_leaf(leaf)
    {
        ext.insert(peer);
    }
}
