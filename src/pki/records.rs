//! What the PKI stores: issued-certificate records, the CA state, CRLs, and their indexes.

use serde::{Deserialize, Serialize};

use super::serial::Serial;
use crate::{
    clock::Timestamp,
    ids::{CaId, TenantName},
    store::{IndexName, Kind, Record},
};

/// Which CAs are in use; one record, id [`STATE_ID`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PkiState {
    pub root: CaId,
    pub issuing: CaId,
    /// Issuing CAs replaced by a rotation, kept (trusted, their CRLs served) until every
    /// certificate they signed has expired.
    #[serde(default)]
    pub retired: Vec<RetiredCa>,
    /// Which generation of certificate indexes the records have been indexed for (see
    /// `reindex`): 0 in stores from before the key and lineage indexes.
    #[serde(default)]
    pub indexes: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetiredCa {
    pub id: CaId,
    /// No certificate signed by this CA is valid after this time.
    pub until: Timestamp,
}

impl Record for PkiState {
    const KIND: Kind = Kind("pki");
}
pub const STATE_ID: &str = "state";

/// What a certificate was issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The bootstrap administrator's client certificate.
    Admin,
    /// A TLS server certificate for Tessera itself.
    Server,
    /// A service's client certificate.
    Client,
}

/// RFC 5280 revocation reasons, as the API spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl RevocationReason {
    pub fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => R::Unspecified,
            Self::KeyCompromise => R::KeyCompromise,
            Self::CaCompromise => R::CaCompromise,
            Self::AffiliationChanged => R::AffiliationChanged,
            Self::Superseded => R::Superseded,
            Self::CessationOfOperation => R::CessationOfOperation,
            Self::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            Self::AaCompromise => R::AaCompromise,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revocation {
    pub at: Timestamp,
    pub reason: RevocationReason,
}

/// The record of an issued certificate: metadata only, never a private key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: Serial,
    pub tenant: Option<TenantName>,
    /// The SPIFFE id (client certificates) or `server:<names>`.
    pub identity: String,
    pub profile: Profile,
    pub issuer: CaId,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub revoked: Option<Revocation>,
    /// The certificate this one renewed.
    #[serde(default)]
    pub renewed_from: Option<Serial>,
    /// The first issuance of the chain of renewals this certificate belongs to (`None` in
    /// records from before lineages were recorded: see `Pki::lineage_of`).
    #[serde(default)]
    pub lineage: Option<Lineage>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, lowercase hex (`None` in records
    /// from before it was recorded).
    #[serde(default)]
    pub key_sha256: Option<String>,
}

/// Where a chain of renewals started: renewals go on at most `certificates.max_lineage_seconds`
/// from `started_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The serial of the first certificate.
    pub origin: Serial,
    /// When the first certificate was issued.
    pub started_at: Timestamp,
}

impl Record for CertRecord {
    const KIND: Kind = Kind("cert");
}

impl CertRecord {
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if self.not_after <= now {
            "expired"
        } else {
            "valid"
        }
    }
}

/// A certificate's public metadata as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CertView {
    pub serial: Serial,
    pub identity: String,
    pub tenant: Option<TenantName>,
    pub profile: Profile,
    pub issuer: CaId,
    pub state: &'static str,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub fingerprint: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub revocation_reason: Option<RevocationReason>,
    pub renewed_from: Option<Serial>,
}

impl CertView {
    pub fn new(r: &CertRecord, now: Timestamp) -> Self {
        Self {
            serial: r.serial.clone(),
            identity: r.identity.clone(),
            tenant: r.tenant.clone(),
            profile: r.profile,
            issuer: r.issuer.clone(),
            state: r.state(now),
            not_before: r.not_before,
            not_after: r.not_after,
            fingerprint: r.fingerprint.clone(),
            created_at: r.created_at,
            revoked_at: r.revoked.as_ref().map(|v| v.at),
            revocation_reason: r.revoked.as_ref().map(|v| v.reason),
            renewed_from: r.renewed_from.clone(),
        }
    }
}

/// The latest CRL of one CA.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CrlRecord {
    pub ca: CaId,
    pub number: u64,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
    #[serde(with = "crate::crypto::serde_hex::bytes")]
    pub der: Vec<u8>,
}

impl Record for CrlRecord {
    const KIND: Kind = Kind("crl");
}

/// `<created ms, 20 digits>/<serial>` -> serial: every certificate, oldest first.
pub const IDX_CERTS: IndexName = IndexName("certs");
/// `<identity>\0<created ms>/<serial>` -> serial.
pub const IDX_CERTS_BY_IDENTITY: IndexName = IndexName("certs_by_identity");
/// `<not_after ms, 20 digits>/<serial>` -> serial: for tidying expired certificates.
pub const IDX_CERTS_BY_EXPIRY: IndexName = IndexName("certs_by_expiry");
/// `<ca id>/<serial>` -> serial: the revoked certificates a CA's CRL lists.
pub const IDX_REVOKED_BY_CA: IndexName = IndexName("revoked_by_ca");
/// `<SHA-256 of the SPKI, hex>/<serial>` -> serial: the certificates holding one key pair.
pub const IDX_CERTS_BY_KEY: IndexName = IndexName("certs_by_key");
/// `<lineage origin serial>/<serial>` -> serial: a chain of renewals.
pub const IDX_CERTS_BY_LINEAGE: IndexName = IndexName("certs_by_lineage");
/// `<tenant>/<created ms, 20 digits>/<serial>` -> serial: one tenant's certificates, oldest
/// first (a tenant's listing scans only this, so its cursors hold only its own positions).
pub const IDX_CERTS_BY_TENANT: IndexName = IndexName("certs_by_tenant");

pub fn millis20(t: Timestamp) -> String {
    format!("{:020}", t.unix_millis().max(0))
}

pub fn cert_position(r: &CertRecord) -> String {
    format!("{}/{}", millis20(r.created_at), r.serial)
}

pub fn identity_prefix(identity: &str) -> Vec<u8> {
    let mut v = identity.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn identity_position(r: &CertRecord) -> Vec<u8> {
    let mut v = identity_prefix(&r.identity);
    v.extend_from_slice(cert_position(r).as_bytes());
    v
}

pub fn expiry_position(r: &CertRecord) -> String {
    format!("{}/{}", millis20(r.not_after), r.serial)
}

pub fn tenant_prefix(tenant: &TenantName) -> String {
    format!("{}/", tenant.as_str())
}

pub fn tenant_position(r: &CertRecord) -> Option<String> {
    r.tenant
        .as_ref()
        .map(|t| format!("{}{}", tenant_prefix(t), cert_position(r)))
}

pub fn key_prefix(key_sha256: &str) -> String {
    format!("{key_sha256}/")
}

pub fn key_position(r: &CertRecord) -> Option<String> {
    r.key_sha256
        .as_deref()
        .map(|k| format!("{}{}", key_prefix(k), r.serial))
}

pub fn lineage_prefix(origin: &Serial) -> String {
    format!("{origin}/")
}

pub fn lineage_position(r: &CertRecord) -> Option<String> {
    r.lineage
        .as_ref()
        .map(|l| format!("{}{}", lineage_prefix(&l.origin), r.serial))
}

pub fn revoked_position(r: &CertRecord) -> String {
    format!("{}/{}", r.issuer, r.serial)
}
