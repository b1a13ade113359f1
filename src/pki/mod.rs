//! The PKI: Tessera's own CA (root + issuing, rcgen), issuance of leaf certificates under
//! Tessera's policy, and identities. What a certificate says comes from policy only: the
//! identity, key usages, validity and serial are Tessera's, never a requester's.

pub mod bootstrap;
pub mod ca;
pub mod identity;
pub mod serial;

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use ring::digest;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    crypto::{CryptoError, hex, secret::SecretString},
    ids::{CaId, TenantName},
    store::{self, Batch, Expect, Kind, Record, Store, StoreError},
};
use ca::{Ca, CaRecord};
use identity::{Identity, SpiffeId, TrustDomain};
use serial::Serial;

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
}

/// Which CAs are in use; one record, id `state`.
#[derive(Serialize, Deserialize)]
struct PkiState {
    root: CaId,
    issuing: CaId,
    /// Issuing CAs replaced by a rotation whose certificates may still be live.
    #[serde(default)]
    retired: Vec<CaId>,
}

impl Record for PkiState {
    const KIND: Kind = Kind("pki");
}
const STATE_ID: &str = "state";

/// What a certificate was issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The bootstrap administrator's client certificate.
    Admin,
    /// A TLS server certificate for Tessera itself.
    Server,
    /// A service's client certificate.
    Client,
}

/// The record of an issued certificate (metadata only: never the private key).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: Serial,
    pub tenant: Option<TenantName>,
    pub identity: String,
    pub profile: Profile,
    pub issuer: CaId,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
    pub created_at: Timestamp,
}

impl Record for CertRecord {
    const KIND: Kind = Kind("cert");
}

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub enum Leaf {
    /// A client certificate naming a SPIFFE id.
    Client(SpiffeId),
    /// A TLS server certificate for these names and addresses.
    Server { dns: Vec<String>, ips: Vec<IpAddr> },
}

/// An issued certificate and the chain that goes with it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub serial: Serial,
    pub cert: CertificateDer<'static>,
    /// The issuing CA's certificate (the root is the trust anchor and is not sent).
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl Issued {
    /// The leaf followed by its chain, PEM.
    pub fn full_chain_pem(&self) -> String {
        let mut s = pem("CERTIFICATE", &self.cert);
        for c in &self.chain {
            s.push_str(&pem("CERTIFICATE", c));
        }
        s
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

/// The CAs in use.
pub struct Authority {
    pub root: Ca,
    pub issuing: Ca,
    pub retired: Vec<Ca>,
}

/// The PKI service.
pub struct Pki {
    trust_domain: TrustDomain,
    store: Arc<dyn Store>,
    authority: RwLock<Arc<Authority>>,
}

impl Pki {
    /// Loads the CAs from the store, creating the root and issuing CA on first start.
    /// Returns whether they were created now.
    pub async fn load_or_bootstrap(
        store: Arc<dyn Store>,
        trust_domain: TrustDomain,
        now: Timestamp,
    ) -> Result<(Self, bool), PkiError> {
        let (authority, created) = match store::record::get::<PkiState>(&*store, STATE_ID).await? {
            Some((_, state)) => (load_authority(&*store, &state).await?, false),
            None => {
                let (root, root_rec) = Ca::generate_root(trust_domain.as_str(), now)?;
                let (issuing, issuing_rec) =
                    Ca::generate_issuing(&root, trust_domain.as_str(), now)?;
                let state = PkiState {
                    root: root.id.clone(),
                    issuing: issuing.id.clone(),
                    retired: Vec::new(),
                };
                let mut b = Batch::new();
                b.put_record(root.id.as_str(), &root_rec, Expect::Absent)?;
                b.put_record(issuing.id.as_str(), &issuing_rec, Expect::Absent)?;
                b.put_record(STATE_ID, &state, Expect::Absent)?;
                store.commit(b).await?;
                (
                    Authority {
                        root,
                        issuing,
                        retired: Vec::new(),
                    },
                    true,
                )
            }
        };
        Ok((
            Self {
                trust_domain,
                store,
                authority: RwLock::new(Arc::new(authority)),
            },
            created,
        ))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn authority(&self) -> Arc<Authority> {
        self.authority
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The trust bundle: the root, then every issuing CA whose certificates may be live.
    pub fn ca_bundle_pem(&self) -> String {
        let a = self.authority();
        let mut s = a.root.pem();
        s.push_str(&a.issuing.pem());
        for r in &a.retired {
            s.push_str(&r.pem());
        }
        s
    }

    /// Issues a certificate for a fresh P-256 key pair; returns the key as PKCS#8 PEM.
    pub async fn issue_with_new_key(
        &self,
        leaf: &Leaf,
        tenant: Option<TenantName>,
        ttl_secs: u64,
        now: Timestamp,
    ) -> Result<(Issued, SecretString), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issued = self.issue(leaf, &key, tenant, ttl_secs, now).await?;
        Ok((issued, SecretString::new(key.serialize_pem())))
    }

    /// Issues a certificate for `public_key` under Tessera's policy for `leaf`, and records
    /// it durably before returning.
    pub async fn issue(
        &self,
        leaf: &Leaf,
        public_key: &impl PublicKeyData,
        tenant: Option<TenantName>,
        ttl_secs: u64,
        now: Timestamp,
    ) -> Result<Issued, PkiError> {
        let authority = self.authority();
        let ca = &authority.issuing;
        let (serial, serial_bytes) = Serial::generate()?;
        let not_before = Timestamp::from_unix(now.unix() - 60);
        let not_after = now.plus_secs(ttl_secs).min(ca.not_after);

        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tessera");
        let (profile, identity) = match leaf {
            Leaf::Client(id) => {
                let uri = id.uri();
                dn.push(
                    DnType::CommonName,
                    match &id.identity {
                        Identity::Admin => "tessera admin".to_owned(),
                        Identity::Service { name, .. } => name.as_str().to_owned(),
                    },
                );
                p.subject_alt_names = vec![SanType::URI(uri.clone().try_into()?)];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let profile = match id.identity {
                    Identity::Admin => Profile::Admin,
                    Identity::Service { .. } => Profile::Client,
                };
                (profile, uri)
            }
            Leaf::Server { dns, ips } => {
                dn.push(
                    DnType::CommonName,
                    dns.first().map_or("tessera", String::as_str),
                );
                let mut sans = Vec::new();
                for d in dns {
                    sans.push(SanType::DnsName(d.clone().try_into()?));
                }
                sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
                p.subject_alt_names = sans;
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                (Profile::Server, format!("server:{}", dns.join(",")))
            }
        };
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        p.not_before = not_before.to_offset();
        p.not_after = not_after.to_offset();
        p.use_authority_key_identifier_extension = true;

        let cert = ca.sign(&p, public_key)?;
        let record = CertRecord {
            serial: serial.clone(),
            tenant,
            identity,
            profile,
            issuer: ca.id.clone(),
            not_before,
            not_after,
            fingerprint: fingerprint(&cert),
            created_at: now,
        };
        let mut b = Batch::new();
        b.put_record(serial.as_str(), &record, Expect::Absent)?;
        self.store.commit(b).await?;
        Ok(Issued {
            serial,
            cert,
            chain: vec![ca.cert.clone()],
            not_before,
            not_after,
        })
    }
}

async fn load_authority(store: &dyn Store, state: &PkiState) -> Result<Authority, PkiError> {
    async fn load(store: &dyn Store, id: &CaId) -> Result<Ca, PkiError> {
        let (_, rec) = store::record::get::<CaRecord>(store, id.as_str())
            .await?
            .ok_or(PkiError::Inconsistent(
                "a CA named by the PKI state is missing",
            ))?;
        Ca::from_record(&rec)
    }
    let mut retired = Vec::new();
    for id in &state.retired {
        retired.push(load(store, id).await?);
    }
    Ok(Authority {
        root: load(store, &state.root).await?,
        issuing: load(store, &state.issuing).await?,
        retired,
    })
}
