//! The PKI: Tessera's own CA (a root and an issuing CA, ECDSA P-256, rcgen), issuance under
//! Tessera's policy, renewal, revocation with CRLs, verification for downstream APIs, CA
//! rotation and tidying. What a certificate says comes from policy only: identity, key
//! usages, validity and serial are Tessera's, never a requester's.

pub mod bootstrap;
pub mod ca;
pub mod ceiling;
mod crl;
pub mod enrol;
mod issue;
pub mod records;
mod reindex;
mod remote;
mod revoke;
mod rotate;
mod tidy;
pub mod verify;

use crate::sync::Locked;
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, RwLock},
};

use ring::digest;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateDer;

use crate::identity::{self, TrustDomain, serial};
use crate::{
    clock::Timestamp,
    crypto::{CryptoError, hex},
    files,
    ids::CaId,
    store::{self, Batch, Expect, Store, StoreError},
};
use ca::{Ca, CaRecord};
use records::{CertRecord, CrlRecord, IDX_REVOKED_BY_CA, PkiState, RetiredCa, STATE_ID};
use serial::Serial;

pub use crl::CrlFormat;
pub use issue::{Issued, KeySource, Leaf, Renewal, visible};
pub use verify::{CertCode, CertVerdict};

/// Errors of the PKI layer.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Randomness failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A certificate (ours, read back) could not be parsed.
    #[error("a certificate could not be parsed")]
    BadCertificate,
    /// The PKI state in the store is inconsistent (a referenced CA is missing).
    #[error("the PKI state in the store is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// A request field is not acceptable; nothing was changed.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
    /// No such certificate visible to the caller.
    #[error("not found")]
    NotFound,
    /// The caller may not do this with this certificate.
    #[error("{0}")]
    Refused(&'static str),
    /// The certificate's state forbids this (the message is safe to show the caller).
    #[error("{0}")]
    Conflict(&'static str),
    /// Writing public trust material to the certs directory failed.
    #[error("could not write {path}: {source}")]
    Publish {
        path: String,
        source: std::io::Error,
    },
    /// The client verifier could not be built from the current trust material.
    #[error("the certificate verifier could not be built: {0}")]
    Verifier(String),
}

/// Issuance policy.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// How long renewals may go on from a lineage's first issuance.
    pub max_lineage_secs: u64,
}

/// The CAs in use.
pub struct Authority {
    pub root: Ca,
    pub issuing: Ca,
    pub retired: Vec<(Ca, Timestamp)>,
}

impl Authority {
    /// Every issuing CA whose certificates may still be valid: current first.
    pub fn issuers(&self) -> impl Iterator<Item = &Ca> {
        std::iter::once(&self.issuing).chain(self.retired.iter().map(|(c, _)| c))
    }

    /// Every CA: root, current issuer, retired issuers.
    pub fn all(&self) -> impl Iterator<Item = &Ca> {
        std::iter::once(&self.root).chain(self.issuers())
    }
}

/// PEM-encodes DER.
pub fn pem(tag: &str, der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new(tag, der.to_vec()),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der).as_ref())
}

/// The PKI service.
pub struct Pki {
    trust_domain: TrustDomain,
    store: Arc<dyn Store>,
    policy: Policy,
    authority: RwLock<Arc<Authority>>,
    /// Revoked, unexpired serials -> their notAfter. Checked on every request.
    revoked: RwLock<HashMap<Serial, Timestamp>>,
    crls: RwLock<BTreeMap<CaId, CrlRecord>>,
    /// Per CA, what its CRL lists about each revoked certificate, by serial (see
    /// [`crl::CrlEntries`]): a revocation signs its CA's CRL without reading every revoked
    /// certificate's record again.
    crl_entries: crl::CrlEntries,
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
    /// Base of the CRL distribution point URL written into certificates.
    public_url: RwLock<Option<String>>,
    /// Where public trust material is written (the certs directory).
    publish_dir: Option<PathBuf>,
    /// Serialises changes to CAs and CRLs.
    changes: tokio::sync::Mutex<()>,
    /// Set when a revocation may be stored without its CRL re-signed; the CRL task retries.
    crl_retry: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CAs (creating the root and issuing CA on first start), the revoked set and
    /// fresh CRLs, and publishes the trust bundle and CRLs. Returns whether the CAs were
    /// created now.
    pub async fn open(
        store: Arc<dyn Store>,
        trust_domain: TrustDomain,
        policy: Policy,
        publish_dir: Option<PathBuf>,
        now: Timestamp,
    ) -> Result<(Self, bool), PkiError> {
        let (authority, created) = match store::record::get::<PkiState>(&*store, STATE_ID).await? {
            Some((_, state)) => (load_authority(&*store, &state).await?, false),
            None => (
                bootstrap_authority(&*store, &trust_domain, now).await?,
                true,
            ),
        };
        let revoked = load_revoked(&*store, now).await?;
        let verifier = verify::build_verifier(&authority.root.cert, &[])?;
        let pki = Self {
            trust_domain,
            store,
            policy,
            authority: RwLock::new(Arc::new(authority)),
            revoked: RwLock::new(revoked),
            crls: RwLock::new(BTreeMap::new()),
            crl_entries: crl::CrlEntries::default(),
            verifier: RwLock::new(verifier),
            public_url: RwLock::new(None),
            publish_dir,
            changes: tokio::sync::Mutex::new(()),
            crl_retry: std::sync::atomic::AtomicBool::new(false),
        };
        pki.reindex().await?;
        // Sign the CRLs that are missing, due, or behind the revocation index (a crash
        // between a revocation's commit and its CRL's leaves one behind); the others are
        // kept, so nodes starting together do not all re-sign them. Published either way.
        pki.refresh_crls(now, true).await?;
        pki.publish_bundle()?;
        Ok((pki, created))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn authority(&self) -> Arc<Authority> {
        self.authority.read_locked().clone()
    }

    /// Sets the base URL (`https://host:port`) written into CRL distribution points.
    pub fn set_public_url(&self, url: String) {
        *self.public_url.write_locked() = Some(url);
    }

    fn public_url(&self) -> Option<String> {
        self.public_url.read_locked().clone()
    }

    /// The client-certificate verifier for the current CAs and CRLs (used at every handshake
    /// and by the verify endpoint).
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.read_locked().clone()
    }

    /// Whether a serial is revoked (checked on every authenticated request, so a keep-alive
    /// connection opened before a revocation is refused on its next request).
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.revoked.read_locked().contains_key(serial)
    }

    /// The revoked, unexpired serials (public: the CRLs list them).
    pub fn revoked_serials(&self) -> Vec<Serial> {
        let mut v: Vec<Serial> = self.revoked.read_locked().keys().cloned().collect();
        v.sort();
        v
    }

    /// The trust bundle: the root, then every issuing CA whose certificates may be live.
    pub fn ca_bundle_pem(&self) -> String {
        let a = self.authority();
        a.all().map(Ca::pem).collect()
    }

    fn publish(&self, name: &str, contents: &[u8]) -> Result<(), PkiError> {
        let Some(dir) = &self.publish_dir else {
            return Ok(());
        };
        let path = dir.join(name);
        files::write_atomic(&path, contents, files::PUBLIC).map_err(|source| PkiError::Publish {
            path: path.display().to_string(),
            source,
        })
    }

    fn publish_bundle(&self) -> Result<(), PkiError> {
        self.publish("ca.pem", self.ca_bundle_pem().as_bytes())
    }

    /// Rebuilds the verifier from the current root and CRLs.
    fn rebuild_verifier(&self) -> Result<(), PkiError> {
        let a = self.authority();
        let crls: Vec<Vec<u8>> = self
            .crls
            .read_locked()
            .values()
            .map(|c| c.der.clone())
            .collect();
        let v = verify::build_verifier(&a.root.cert, &crls)?;
        *self.verifier.write_locked() = v;
        Ok(())
    }

    /// Reads one certificate record.
    pub async fn record(&self, serial: &Serial) -> Result<Option<CertRecord>, PkiError> {
        Ok(
            store::record::get::<CertRecord>(&*self.store, serial.as_str())
                .await?
                .map(|(_, r)| r),
        )
    }
}

async fn bootstrap_authority(
    store: &dyn Store,
    trust_domain: &TrustDomain,
    now: Timestamp,
) -> Result<Authority, PkiError> {
    let (root, root_rec) = Ca::generate_root(trust_domain.as_str(), now)?;
    let (issuing, issuing_rec) = Ca::generate_issuing(&root, trust_domain.as_str(), now)?;
    let state = PkiState {
        root: root.id.clone(),
        issuing: issuing.id.clone(),
        retired: Vec::new(),
        indexes: reindex::CURRENT,
    };
    let mut b = Batch::new();
    b.put_record(root.id.as_str(), &root_rec, Expect::Absent)?;
    b.put_record(issuing.id.as_str(), &issuing_rec, Expect::Absent)?;
    b.put_record(STATE_ID, &state, Expect::Absent)?;
    store.commit(b).await?;
    Ok(Authority {
        root,
        issuing,
        retired: Vec::new(),
    })
}

async fn load_ca(store: &dyn Store, id: &CaId) -> Result<Ca, PkiError> {
    let (_, rec) = store::record::get::<CaRecord>(store, id.as_str())
        .await?
        .ok_or(PkiError::Inconsistent(
            "a CA named by the PKI state is missing",
        ))?;
    Ca::from_record(&rec)
}

async fn load_authority(store: &dyn Store, state: &PkiState) -> Result<Authority, PkiError> {
    let mut retired = Vec::new();
    for RetiredCa { id, until } in &state.retired {
        retired.push((load_ca(store, id).await?, *until));
    }
    Ok(Authority {
        root: load_ca(store, &state.root).await?,
        issuing: load_ca(store, &state.issuing).await?,
        retired,
    })
}

/// The revoked, unexpired serials, from the revocation index.
async fn load_revoked(
    store: &dyn Store,
    now: Timestamp,
) -> Result<HashMap<Serial, Timestamp>, PkiError> {
    Ok(revoked_records(store, now)
        .await?
        .into_iter()
        .map(|r| (r.serial, r.not_after))
        .collect())
}

/// Every revoked, unexpired certificate, from the revocation index (read from the store,
/// so every revocation committed before the call is there).
pub(crate) async fn revoked_records(
    store: &dyn Store,
    now: Timestamp,
) -> Result<Vec<CertRecord>, PkiError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store
            .scan(IDX_REVOKED_BY_CA, b"", after.as_deref(), 1000)
            .await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = Some(last.key.clone());
        for e in page {
            if let Some((_, r)) = store::record::get::<CertRecord>(store, &e.id).await?
                && r.revoked.is_some()
                && r.not_after > now
            {
                out.push(r);
            }
        }
    }
}

/// Which CRLs `GET /v1/pki/crl` answers with.
#[derive(Clone, Debug)]
pub enum CrlSelect {
    /// The current issuing CA's.
    Current,
    One(CaId),
    /// Every CA's, root included (PEM only).
    All,
}

/// A CRL as last written to the certs directory (served while sealed): the current issuing
/// CA's (`crl.pem`), a named CA's (`crl-<id>.pem`) or all of them (`crls.pem`).
pub fn published_crl(
    certs_dir: &std::path::Path,
    which: &CrlSelect,
    format: CrlFormat,
) -> Option<Vec<u8>> {
    let name = match which {
        CrlSelect::One(id) => format!("crl-{id}.pem"),
        CrlSelect::Current => "crl.pem".to_owned(),
        CrlSelect::All => "crls.pem".to_owned(),
    };
    let text = std::fs::read_to_string(certs_dir.join(name)).ok()?;
    match (format, which) {
        (CrlFormat::Pem, _) => Some(text.into_bytes()),
        (CrlFormat::Der, CrlSelect::All) => None,
        (CrlFormat::Der, _) => ::pem::parse(&text).ok().map(|p| p.into_contents()),
    }
}

/// Certificates as DER from PEM text: at most `max` of them, each `CERTIFICATE` block.
pub fn parse_pem_certs(
    text: &str,
    max: usize,
) -> Result<Vec<CertificateDer<'static>>, &'static str> {
    let blocks = ::pem::parse_many(text).map_err(|_| "must be PEM certificates")?;
    if blocks.is_empty() {
        return Err("must be PEM certificates");
    }
    if blocks.len() > max {
        return Err("holds too many certificates");
    }
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(CertificateDer::from(b.into_contents()))
            } else {
                Err("must be PEM certificates")
            }
        })
        .collect()
}
