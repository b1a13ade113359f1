//! Issuance under Tessera's policy: from a CSR (only its public key and its proof of
//! possession are used), from a key pair generated here, or by renewal. Also the read side:
//! listing and fetching certificate records.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, CrlDistributionPoint, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use x509_parser::{
    certification_request::X509CertificationRequest, oid_registry, prelude::FromDer,
};

use super::{
    Pki, PkiError,
    ceiling::Ceiling,
    fingerprint,
    identity::{Identity, ServiceName, SpiffeId},
    pem,
    records::{
        CertRecord, CertView, IDX_CERTS, IDX_CERTS_BY_EXPIRY, IDX_CERTS_BY_IDENTITY,
        IDX_CERTS_BY_KEY, IDX_CERTS_BY_LINEAGE, IDX_CERTS_BY_TENANT, Lineage, Profile,
        cert_position, expiry_position, identity_position, identity_prefix, key_position,
        lineage_position, tenant_position, tenant_prefix,
    },
    serial::Serial,
};
use crate::{
    clock::Timestamp,
    crypto::secret::SecretString,
    ids::{TenantName, TenantScope},
    page::{Page, PageRequest},
    store::{self, Batch, Expect, Record, Recorder, Rev},
};

/// Largest CSR accepted (PEM text).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub enum Leaf {
    /// A client certificate naming a SPIFFE id, with the permission ceiling it carries (see
    /// [`super::ceiling`]; `None` writes no ceiling extension: the admin's certificate, or the
    /// renewal of a certificate that had none).
    Client {
        id: SpiffeId,
        ceiling: Option<Ceiling>,
    },
    /// A TLS server certificate for these names and addresses.
    Server { dns: Vec<String>, ips: Vec<IpAddr> },
}

/// Where the certificate's key pair comes from.
pub enum KeySource {
    /// A PEM CSR: its signature is checked, then only its public key is used.
    Csr(String),
    /// A fresh P-256 key pair made here and returned once.
    Generate,
    /// A public key Tessera already holds (renewal without a new key).
    PublicKey(Vec<u8>),
}

/// What a renewal carries over from the certificate it renews.
#[derive(Clone, Debug)]
pub struct Renewal {
    /// The renewed certificate and the revision its record was read at: the renewal is
    /// written only if that record is unchanged (not revoked meanwhile).
    pub from: Serial,
    pub rev: Rev,
    pub lineage: Lineage,
    /// The renewed certificate's own lifetime (notAfter - notBefore), seconds: the most the
    /// renewal gets.
    pub max_lifetime_secs: u64,
    /// No renewal outlives its lineage's cap.
    pub lineage_ends: Timestamp,
}

/// An issued certificate and the chain that goes with it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub serial: Serial,
    pub identity: String,
    pub tenant: Option<TenantName>,
    pub cert: CertificateDer<'static>,
    /// The issuing CA's certificate (the root is the trust anchor and is not sent).
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl Issued {
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert)
    }

    pub fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    /// The leaf followed by its chain, PEM.
    pub fn full_chain_pem(&self) -> String {
        let mut s = self.cert_pem();
        s.extend(self.chain_pem());
        s
    }
}

fn invalid(field: &'static str, message: &'static str) -> PkiError {
    PkiError::Invalid { field, message }
}

/// Parses a PEM CSR, checks its self-signature, and keeps only its public key. Everything
/// else the CSR asks for (subject, SANs, key usages, basic constraints) is ignored.
pub fn csr_public_key(pem_text: &str) -> Result<SubjectPublicKeyInfo, PkiError> {
    if pem_text.len() > MAX_CSR_BYTES {
        return Err(invalid("csr", "must be at most 16384 bytes"));
    }
    let block = ::pem::parse(pem_text).map_err(|_| invalid("csr", "must be a PEM CSR"))?;
    if !matches!(
        block.tag(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(invalid("csr", "must be a PEM CSR"));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|_| invalid("csr", "must be a PEM CSR"))?;
    if !rest.is_empty() {
        return Err(invalid("csr", "must be a PEM CSR"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    check_key_type(spki)?;
    csr.verify_signature()
        .map_err(|_| invalid("csr", "must carry a valid self-signature"))?;
    SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|_| invalid("csr", "must use an ECDSA P-256 or P-384 or an Ed25519 key"))
}

/// Accepts ECDSA P-256, ECDSA P-384 and Ed25519 keys only.
fn check_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), PkiError> {
    let alg = &spki.algorithm;
    let ok = if alg.algorithm == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        alg.parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| {
                curve == oid_registry::OID_EC_P256 || curve == oid_registry::OID_NIST_EC_P384
            })
    } else {
        alg.algorithm == oid_registry::OID_SIG_ED25519
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "csr",
            "must use an ECDSA P-256 or P-384 or an Ed25519 key",
        ))
    }
}

impl Pki {
    /// Resolves a requested lifetime against the policy.
    pub fn ttl(&self, requested: Option<u64>) -> Result<u64, PkiError> {
        match requested {
            None => Ok(self.policy.default_ttl_secs),
            Some(t) if (1..=self.policy.max_ttl_secs).contains(&t) => Ok(t),
            Some(_) => Err(invalid(
                "ttl_seconds",
                "must be at least 1 and at most the configured maximum",
            )),
        }
    }

    /// Issues a service certificate `spiffe://<td>/tenant/<tenant>/svc/<name>` carrying
    /// `ceiling`: what its issuer held (the most it will ever be allowed, whatever is bound
    /// to the name later).
    #[allow(clippy::too_many_arguments)]
    pub async fn issue_service(
        &self,
        rec: &dyn Recorder,
        tenant: TenantName,
        name: ServiceName,
        key: KeySource,
        ttl_secs: u64,
        ceiling: Ceiling,
        now: Timestamp,
    ) -> Result<(Issued, Option<SecretString>), PkiError> {
        let id = SpiffeId::new(
            self.trust_domain.clone(),
            Identity::Service { tenant, name },
        );
        let leaf = Leaf::Client {
            id,
            ceiling: Some(ceiling),
        };
        self.issue_from(rec, &leaf, key, ttl_secs, None, now).await
    }

    /// Issues a certificate for `leaf` with the key from `key`, under Tessera's policy, and
    /// records it durably before returning. The CPU work (CSR check, key generation,
    /// signing) runs on a blocking thread, off the async workers.
    pub async fn issue_from(
        &self,
        rec: &dyn Recorder,
        leaf: &Leaf,
        key: KeySource,
        ttl_secs: u64,
        renewal: Option<Renewal>,
        now: Timestamp,
    ) -> Result<(Issued, Option<SecretString>), PkiError> {
        let authority = self.authority();
        let ca = &authority.issuing;
        let (serial, serial_bytes) = Serial::generate()?;
        // Backdated for clock skew: a minute, or a tenth of a short lifetime (so an agent
        // renewing at a fraction of the lifetime is not thrown off); never outliving the
        // issuing CA.
        let skew = i64::try_from((ttl_secs / 10).min(60)).unwrap_or(60);
        let not_before = Timestamp::from_unix(now.unix() - skew);
        let mut not_after = Timestamp::from_unix(now.plus_secs(ttl_secs).unix()).min(ca.not_after);
        if let Some(r) = &renewal {
            // A renewal never lives longer than what it renews, nor past its lineage's end.
            let longest = i64::try_from(r.max_lifetime_secs).unwrap_or(i64::MAX);
            not_after = not_after
                .min(Timestamp::from_unix(
                    not_before.unix().saturating_add(longest),
                ))
                .min(Timestamp::from_unix(r.lineage_ends.unix()));
        }

        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tessera");
        let (profile, identity, tenant) = match leaf {
            Leaf::Client { id, ceiling } => {
                let uri = id.uri();
                p.custom_extensions = ceiling.iter().map(|c| c.extension()).collect();
                let (cn, profile, tenant) = match &id.identity {
                    Identity::Admin => ("tessera admin".to_owned(), Profile::Admin, None),
                    Identity::Service { tenant, name } => (
                        name.as_str().to_owned(),
                        Profile::Client,
                        Some(tenant.clone()),
                    ),
                };
                dn.push(DnType::CommonName, cn);
                // Exactly one URI SAN (X.509-SVID).
                p.subject_alt_names = vec![SanType::URI(uri.clone().try_into()?)];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                (profile, uri, tenant)
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
                (Profile::Server, format!("server:{}", dns.join(",")), None)
            }
        };
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        // rcgen marks key usage critical.
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        p.not_before = not_before.to_offset();
        p.not_after = not_after.to_offset();
        p.use_authority_key_identifier_extension = true;
        if let Some(base) = self.public_url() {
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![format!("{base}/v1/pki/crl?issuer={}", ca.id)],
            }];
        }

        let signer = authority.clone();
        let (cert, private_key, key_sha256) = tokio::task::spawn_blocking(move || {
            let (cert, private_key) = sign_leaf(&signer.issuing, &p, key)?;
            let key_sha256 = spki_sha256(&cert)?;
            Ok::<_, PkiError>((cert, private_key, key_sha256))
        })
        .await
        .map_err(|_| PkiError::Inconsistent("the signing task failed"))??;
        let record = CertRecord {
            serial: serial.clone(),
            tenant: tenant.clone(),
            identity: identity.clone(),
            profile,
            issuer: ca.id.clone(),
            not_before,
            not_after,
            fingerprint: fingerprint(&cert),
            created_at: now,
            revoked: None,
            renewed_from: renewal.as_ref().map(|r| r.from.clone()),
            lineage: Some(renewal.as_ref().map_or_else(
                || Lineage {
                    origin: serial.clone(),
                    started_at: now,
                },
                |r| r.lineage.clone(),
            )),
            key_sha256: Some(key_sha256),
        };
        let mut b = Batch::new();
        b.put_record(serial.as_str(), &record, Expect::Absent)?;
        if let Some(r) = &renewal {
            b.check(CertRecord::KIND, r.from.as_str(), Expect::Rev(r.rev));
        }
        b.index_put(
            IDX_CERTS,
            cert_position(&record).as_bytes(),
            serial.as_str(),
            false,
        );
        b.index_put(
            IDX_CERTS_BY_IDENTITY,
            &identity_position(&record),
            serial.as_str(),
            false,
        );
        b.index_put(
            IDX_CERTS_BY_EXPIRY,
            expiry_position(&record).as_bytes(),
            serial.as_str(),
            false,
        );
        for (index, pos) in [
            (IDX_CERTS_BY_KEY, key_position(&record)),
            (IDX_CERTS_BY_LINEAGE, lineage_position(&record)),
            (IDX_CERTS_BY_TENANT, tenant_position(&record)),
        ] {
            if let Some(pos) = pos {
                b.index_put(index, pos.as_bytes(), serial.as_str(), false);
            }
        }
        rec.record(&mut b, serial.as_str(), tenant.as_ref())?;
        self.store.commit(b).await?;
        let issued = Issued {
            serial,
            identity,
            tenant,
            cert,
            chain: vec![ca.cert.clone()],
            not_before,
            not_after,
        };
        Ok((issued, private_key))
    }

    /// Renews the certificate `serial` (the caller's own, checked by the caller): same
    /// identity and the same ceiling (`ceiling`, read from the presented certificate), fresh
    /// validity; a new key from `csr`, or the same public key.
    #[allow(clippy::too_many_arguments)]
    pub async fn renew(
        &self,
        rec: &dyn Recorder,
        serial: &Serial,
        current_public_key: Vec<u8>,
        ceiling: Option<Ceiling>,
        csr: Option<String>,
        ttl: Option<u64>,
        now: Timestamp,
    ) -> Result<Issued, PkiError> {
        let (rev, cert) = store::record::get::<CertRecord>(&*self.store, serial.as_str())
            .await?
            .ok_or(PkiError::NotFound)?;
        if cert.revoked.is_some() || cert.not_after <= now {
            return Err(PkiError::Refused("the certificate is revoked or expired"));
        }
        if cert.profile != Profile::Client {
            return Err(PkiError::Refused(
                "only service certificates are renewed through the API",
            ));
        }
        let id = SpiffeId::parse(&cert.identity, &self.trust_domain)
            .map_err(|_| PkiError::Refused("the certificate's identity is not renewable"))?;
        let key = match csr {
            Some(c) => KeySource::Csr(c),
            None => KeySource::PublicKey(current_public_key),
        };
        let ttl = self.ttl(ttl)?;
        let lineage = self.lineage_of(&cert).await?;
        let lineage_ends = lineage.started_at.plus_secs(self.policy.max_lineage_secs);
        if now >= lineage_ends {
            return Err(PkiError::Conflict(
                "the certificate's lineage has reached certificates.max_lineage_seconds since \
                 its first issuance: issue a new certificate (or enrol again) instead",
            ));
        }
        let renewal = Renewal {
            from: serial.clone(),
            rev,
            lineage,
            max_lifetime_secs: u64::try_from(cert.not_after.unix() - cert.not_before.unix())
                .unwrap_or(0),
            lineage_ends,
        };
        let (issued, _) = self
            .issue_from(
                rec,
                &Leaf::Client { id, ceiling },
                key,
                ttl,
                Some(renewal),
                now,
            )
            .await?;
        Ok(issued)
    }

    /// Where a certificate's chain of renewals started. Records from before lineages were
    /// recorded are followed back through `renewed_from` as far as records remain.
    pub async fn lineage_of(&self, cert: &CertRecord) -> Result<Lineage, PkiError> {
        let mut cur = cert.clone();
        // Bounded: a lineage past its cap stops renewing, so chains stay short.
        for _ in 0..10_000 {
            if let Some(l) = &cur.lineage {
                return Ok(l.clone());
            }
            match &cur.renewed_from {
                Some(parent) => match self.record(parent).await? {
                    Some(p) => cur = p,
                    None => break,
                },
                None => break,
            }
        }
        Ok(Lineage {
            origin: cur.serial.clone(),
            started_at: cur.created_at,
        })
    }

    /// One certificate's record, if the caller may see it.
    pub async fn get(&self, scope: &TenantScope, serial: &Serial) -> Result<CertRecord, PkiError> {
        match self.record(serial).await? {
            Some(r) if visible(scope, &r) => Ok(r),
            _ => Err(PkiError::NotFound),
        }
    }

    /// Certificates, oldest first, optionally of one identity. A tenant's listing scans only
    /// its own index (so a cursor only ever holds a position of its own), and another
    /// tenant's identity answers exactly like one that does not exist: an empty page.
    pub async fn list(
        &self,
        scope: &TenantScope,
        identity: Option<&SpiffeId>,
        page: &PageRequest,
        now: Timestamp,
    ) -> Result<Page<CertView>, PkiError> {
        let (index, prefix) = match (scope, identity) {
            (TenantScope::One(own), Some(id)) => match &id.identity {
                Identity::Service { tenant, .. } if tenant == own => {
                    (IDX_CERTS_BY_IDENTITY, identity_prefix(&id.uri()))
                }
                _ => {
                    return Ok(Page {
                        items: Vec::new(),
                        next_cursor: None,
                    });
                }
            },
            (TenantScope::All, Some(id)) => (IDX_CERTS_BY_IDENTITY, identity_prefix(&id.uri())),
            (TenantScope::One(own), None) => (IDX_CERTS_BY_TENANT, tenant_prefix(own).into_bytes()),
            (TenantScope::All, None) => (IDX_CERTS, Vec::new()),
        };
        crate::page::from_index(&*self.store, index, &prefix, page, |id| async move {
            Ok::<_, PkiError>(
                store::record::get::<CertRecord>(&*self.store, &id)
                    .await?
                    .filter(|(_, r)| visible(scope, r))
                    .map(|(_, r)| CertView::new(&r, now)),
            )
        })
        .await
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, lowercase hex: what identifies its key
/// pair across certificates.
pub fn spki_sha256(cert: &[u8]) -> Result<String, PkiError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| PkiError::BadCertificate)?;
    Ok(crate::crypto::hex::encode(
        ring::digest::digest(&ring::digest::SHA256, parsed.public_key().raw).as_ref(),
    ))
}

/// Signs `params` for the key from `key` (CPU only: called on a blocking thread).
fn sign_leaf(
    ca: &super::ca::Ca,
    params: &CertificateParams,
    key: KeySource,
) -> Result<(CertificateDer<'static>, Option<SecretString>), PkiError> {
    match key {
        KeySource::Csr(text) => {
            let spki = csr_public_key(&text)?;
            Ok((ca.sign(params, &spki)?, None))
        }
        KeySource::PublicKey(der) => {
            let spki =
                SubjectPublicKeyInfo::from_der(&der).map_err(|_| PkiError::BadCertificate)?;
            Ok((ca.sign(params, &spki)?, None))
        }
        KeySource::Generate => {
            let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let cert = ca.sign(params, &pair)?;
            Ok((cert, Some(SecretString::new(pair.serialize_pem()))))
        }
    }
}

/// Whether a caller limited to `scope` may see a certificate. Certificates outside any
/// tenant (the server's, the admin's) are visible only to the global scope.
pub fn visible(scope: &TenantScope, r: &CertRecord) -> bool {
    match (scope, &r.tenant) {
        (TenantScope::All, _) => true,
        (TenantScope::One(t), Some(owner)) => t == owner,
        (TenantScope::One(_), None) => false,
    }
}
