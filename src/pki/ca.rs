//! Certificate authorities: the root and the issuing (intermediate) CA, ECDSA P-256. Their
//! private keys live only in sealed store records, never in files. In memory the PKCS#8 bytes
//! are held in `SecretBytes` (zeroized on drop), but rcgen's `KeyPair` (and ring's expanded
//! signing key inside it) is not wiped when dropped: it lives only while the server is
//! unsealed, like ring's AEAD key schedules (see `crypto::aead`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use super::{PkiError, serial::Serial};
use crate::{
    clock::Timestamp,
    crypto::secret::SecretBytes,
    ids::CaId,
    store::{Kind, Record},
};

/// Lifetime of the root CA.
pub const ROOT_LIFETIME_SECS: u64 = 10 * 365 * 86_400;
/// Lifetime of an issuing CA.
pub const ISSUING_LIFETIME_SECS: u64 = 5 * 365 * 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaRole {
    Root,
    Issuing,
}

/// A CA as stored (sealed).
#[derive(Serialize, Deserialize)]
pub struct CaRecord {
    pub id: CaId,
    pub role: CaRole,
    #[serde(with = "crate::crypto::serde_hex::bytes")]
    pub cert_der: Vec<u8>,
    #[serde(with = "crate::crypto::serde_hex::secret")]
    pub key_pkcs8: SecretBytes,
    pub created_at: Timestamp,
    pub not_after: Timestamp,
}

impl Record for CaRecord {
    const KIND: Kind = Kind("ca");
}

/// A CA in memory, ready to sign.
pub struct Ca {
    pub id: CaId,
    pub role: CaRole,
    pub cert: CertificateDer<'static>,
    pub not_after: Timestamp,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn ca_params(
    common_name: &str,
    path_len: u8,
    now: Timestamp,
    lifetime: u64,
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (_, serial) = Serial::generate()?;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.not_before = now.plus_secs(0).to_offset() - time::Duration::minutes(5);
    p.not_after = now.plus_secs(lifetime).to_offset();
    p.use_authority_key_identifier_extension = path_len == 0;
    Ok(p)
}

impl Ca {
    /// A new self-signed root CA.
    pub fn generate_root(trust_domain: &str, now: Timestamp) -> Result<(Self, CaRecord), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(
            &format!("Tessera Root CA ({trust_domain})"),
            1,
            now,
            ROOT_LIFETIME_SECS,
        )?;
        let cert = params.self_signed(&key)?;
        Self::finish(CaRole::Root, cert.der().clone(), key, now)
    }

    /// A new issuing CA signed by `root`, never outliving it.
    pub fn generate_issuing(
        root: &Ca,
        trust_domain: &str,
        now: Timestamp,
    ) -> Result<(Self, CaRecord), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let lifetime = ISSUING_LIFETIME_SECS
            .min(u64::try_from(root.not_after.unix() - now.unix()).unwrap_or(0));
        let params = ca_params(
            &format!("Tessera Issuing CA ({trust_domain}, {now})"),
            0,
            now,
            lifetime,
        )?;
        let cert = params.signed_by(&key, &root.issuer)?;
        Self::finish(CaRole::Issuing, cert.der().clone(), key, now)
    }

    fn finish(
        role: CaRole,
        der: CertificateDer<'static>,
        key: KeyPair,
        now: Timestamp,
    ) -> Result<(Self, CaRecord), PkiError> {
        let record = CaRecord {
            id: CaId::generate()?,
            role,
            cert_der: der.to_vec(),
            key_pkcs8: SecretBytes::new(key.serialize_der()),
            created_at: now,
            not_after: not_after_of(&der)?,
        };
        let ca = Self::from_record(&record)?;
        Ok((ca, record))
    }

    pub fn from_record(r: &CaRecord) -> Result<Self, PkiError> {
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(r.key_pkcs8.expose()),
            &PKCS_ECDSA_P256_SHA256,
        )?;
        let cert = CertificateDer::from(r.cert_der.clone());
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Self {
            id: r.id.clone(),
            role: r.role,
            cert,
            not_after: r.not_after,
            issuer,
        })
    }

    /// Signs a certificate for `public_key` with exactly the given parameters.
    pub fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>, PkiError> {
        Ok(params.signed_by(public_key, &self.issuer)?.der().clone())
    }

    /// Signs a CRL with this CA's key.
    pub fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<Vec<u8>, PkiError> {
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    pub fn pem(&self) -> String {
        super::pem("CERTIFICATE", &self.cert)
    }
}

/// The notAfter of a DER certificate.
pub fn not_after_of(der: &[u8]) -> Result<Timestamp, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::BadCertificate)?;
    Ok(Timestamp::from_unix(cert.validity().not_after.timestamp()))
}
