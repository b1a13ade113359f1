//! Verification of client certificates: the handshake verifier (rustls' WebPKI verifier over
//! Tessera's root and every CA's CRL) and the `POST /v1/certs/verify` answer for downstream
//! APIs, which uses the same verifier so the two can never disagree.

use std::sync::Arc;

use rustls::{
    CertificateError, Error as TlsError, RootCertStore,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{
    Pki, PkiError,
    identity::{Identity, SpiffeId},
    parse_pem_certs,
    serial::Serial,
};
use crate::{
    clock::Timestamp,
    ids::{TenantName, TenantScope},
};

/// Longest chain accepted by the verify endpoint (leaf included).
pub const MAX_CHAIN: usize = 8;

/// Builds the client verifier: trust anchor `root`, every CA's CRL, certificate optional at
/// the handshake (required per route).
pub fn build_verifier(
    root: &CertificateDer<'static>,
    crls: &[Vec<u8>],
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(root.clone())
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(
        crls.iter()
            .map(|d| CertificateRevocationListDer::from(d.clone())),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Verifier(e.to_string()))
}

/// The answer's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertCode {
    Valid,
    Expired,
    NotYetValid,
    Revoked,
    Untrusted,
}

impl CertCode {
    pub fn as_str(self) -> &'static str {
        match self {
            CertCode::Valid => "VALID",
            CertCode::Expired => "EXPIRED",
            CertCode::NotYetValid => "NOT_YET_VALID",
            CertCode::Revoked => "REVOKED",
            CertCode::Untrusted => "UNTRUSTED",
        }
    }
}

/// The answer to a certificate verification.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CertVerdict {
    pub valid: bool,
    pub code: CertCode,
    pub identity: Option<String>,
    pub tenant: Option<TenantName>,
    pub serial: Option<Serial>,
    pub not_after: Option<Timestamp>,
}

impl CertVerdict {
    fn untrusted() -> Self {
        Self {
            valid: false,
            code: CertCode::Untrusted,
            identity: None,
            tenant: None,
            serial: None,
            not_after: None,
        }
    }
}

fn unix(t: Timestamp) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix()).unwrap_or(0),
    ))
}

enum Check {
    Ok,
    Time,
    Revoked,
    Untrusted,
}

fn classify(r: Result<(), TlsError>) -> Check {
    match r {
        Ok(()) => Check::Ok,
        Err(TlsError::InvalidCertificate(e)) => match e {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Check::Time,
            CertificateError::Revoked => Check::Revoked,
            _ => Check::Untrusted,
        },
        Err(_) => Check::Untrusted,
    }
}

impl Pki {
    /// Verifies a PEM leaf (optionally followed by its chain) as a client certificate of
    /// Tessera's. Precedence: UNTRUSTED > REVOKED > EXPIRED / NOT_YET_VALID > VALID.
    /// Garbage or an over-long chain is an `Invalid` error (a 400); a foreign or
    /// self-signed certificate copying a real identity is UNTRUSTED, and so is, for a caller
    /// limited to one tenant, a certificate of another tenant (no cross-tenant oracle).
    pub fn verify_certificate(
        &self,
        scope: &TenantScope,
        pem_text: &str,
        now: Timestamp,
    ) -> Result<CertVerdict, PkiError> {
        let certs = parse_pem_certs(pem_text, MAX_CHAIN).map_err(|m| PkiError::Invalid {
            field: "certificate",
            message: m,
        })?;
        let leaf = &certs[0];
        let Ok((_, parsed)) = X509Certificate::from_der(leaf) else {
            return Err(PkiError::Invalid {
                field: "certificate",
                message: "must be a PEM certificate",
            });
        };
        let not_before = Timestamp::from_unix(parsed.validity().not_before.timestamp());
        let not_after = Timestamp::from_unix(parsed.validity().not_after.timestamp());
        // Intermediates: what the caller sent, then our own issuing CAs, so a bare leaf works.
        let authority = self.authority();
        let mut intermediates: Vec<CertificateDer<'_>> = certs[1..].to_vec();
        intermediates.extend(authority.issuers().map(|c| c.cert.clone()));

        let verifier = self.verifier();
        let code = match classify(
            verifier
                .verify_client_cert(leaf, &intermediates, unix(now))
                .map(|_| ()),
        ) {
            Check::Ok => CertCode::Valid,
            Check::Revoked => CertCode::Revoked,
            Check::Untrusted => return Ok(CertVerdict::untrusted()),
            Check::Time => {
                // Outside its validity: is it ours at all? Check at an instant inside it.
                let inside = Timestamp::from_unix(not_before.unix() + 1).min(not_after);
                match classify(
                    verifier
                        .verify_client_cert(leaf, &intermediates, unix(inside))
                        .map(|_| ()),
                ) {
                    Check::Ok | Check::Time => {
                        if now < not_before {
                            CertCode::NotYetValid
                        } else {
                            CertCode::Expired
                        }
                    }
                    Check::Revoked => CertCode::Revoked,
                    Check::Untrusted => return Ok(CertVerdict::untrusted()),
                }
            }
        };
        // A chain that verifies is not yet an identity: map the leaf to one of ours.
        let uris: Vec<String> = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [uri] = uris.as_slice() else {
            return Ok(CertVerdict::untrusted());
        };
        let Ok(id) = SpiffeId::parse(uri, &self.trust_domain) else {
            return Ok(CertVerdict::untrusted());
        };
        let visible = match (&id.identity, scope) {
            (_, TenantScope::All) => true,
            (Identity::Service { tenant, .. }, TenantScope::One(t)) => tenant == t,
            (Identity::Admin, TenantScope::One(_)) => false,
        };
        if !visible {
            return Ok(CertVerdict::untrusted());
        }
        let serial = Serial::from_bytes(parsed.raw_serial());
        let code = if code == CertCode::Valid && self.is_revoked(&serial) {
            CertCode::Revoked
        } else {
            code
        };
        Ok(CertVerdict {
            valid: code == CertCode::Valid,
            code,
            identity: Some(id.uri()),
            tenant: match id.identity {
                Identity::Service { tenant, .. } => Some(tenant),
                Identity::Admin => None,
            },
            serial: Some(serial),
            not_after: Some(not_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crypto::keyring::MasterKey,
        pki::{
            KeySource, Policy, ceiling::Ceiling, identity::ServiceName, identity::TrustDomain,
            records::RevocationReason,
        },
        store::{NoRecord, Store, sled::SledStore},
        sync::Locked,
    };

    const HOUR: u64 = 3600;

    async fn pki(now: Timestamp) -> (tempfile::TempDir, Pki) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let (store, _) = SledStore::open(dir.path(), &master, &Default::default()).unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let policy = Policy {
            default_ttl_secs: HOUR,
            max_ttl_secs: 2 * HOUR,
            max_lineage_secs: 86_400,
        };
        let domain = TrustDomain::parse("t.local").unwrap();
        let (pki, _) = Pki::open(store, domain, policy, None, now).await.unwrap();
        (dir, pki)
    }

    /// A service certificate of tenant `default`, valid for an hour from `now` (backdated
    /// by the issuer's skew of a minute).
    async fn issue(pki: &Pki, name: &str, now: Timestamp) -> (Serial, String) {
        let (issued, _) = pki
            .issue_service(
                &NoRecord,
                TenantName::default_tenant(),
                ServiceName::parse(name).unwrap(),
                KeySource::Generate,
                HOUR,
                Ceiling::EMPTY,
                now,
            )
            .await
            .unwrap();
        let pem = issued.cert_pem();
        (issued.serial, pem)
    }

    fn code(pki: &Pki, scope: &TenantScope, pem: &str, now: Timestamp) -> CertCode {
        let v = pki.verify_certificate(scope, pem, now).unwrap();
        assert_eq!(v.valid, v.code == CertCode::Valid, "{v:?}");
        v.code
    }

    #[tokio::test]
    async fn a_certificate_is_valid_only_inside_its_validity_and_to_its_tenant() {
        let now = Timestamp::from_unix(2_000_000_000);
        let (_d, pki) = pki(now).await;
        let (serial, pem) = issue(&pki, "svc", now).await;
        let v = pki
            .verify_certificate(&TenantScope::All, &pem, now)
            .unwrap();
        assert!(v.valid);
        assert_eq!(v.code, CertCode::Valid);
        assert_eq!(
            v.identity.as_deref(),
            Some("spiffe://t.local/tenant/default/svc/svc")
        );
        assert_eq!(v.tenant, Some(TenantName::default_tenant()));
        assert_eq!(v.serial, Some(serial));

        let own = TenantScope::One(TenantName::default_tenant());
        assert_eq!(code(&pki, &own, &pem, now), CertCode::Valid);
        // Another tenant's caller learns nothing about it.
        let beta = TenantScope::One(TenantName::parse("beta").unwrap());
        assert_eq!(code(&pki, &beta, &pem, now), CertCode::Untrusted);

        let all = &TenantScope::All;
        assert_eq!(
            code(&pki, all, &pem, now.plus_secs(2 * HOUR)),
            CertCode::Expired
        );
        assert_eq!(
            code(&pki, all, &pem, Timestamp::from_unix(now.unix() - 3600)),
            CertCode::NotYetValid
        );
    }

    #[tokio::test]
    async fn revocation_outranks_expiry_and_a_valid_chain() {
        let now = Timestamp::from_unix(2_000_000_000);
        let (_d, pki) = pki(now).await;
        let all = &TenantScope::All;
        let (serial, pem) = issue(&pki, "svc", now).await;
        pki.revoke(
            &NoRecord,
            all,
            &serial,
            RevocationReason::Unspecified,
            &[],
            now,
        )
        .await
        .unwrap();
        assert_eq!(code(&pki, all, &pem, now), CertCode::Revoked);
        // Out of its validity, it is still ours and still revoked: checked inside it.
        assert_eq!(
            code(&pki, all, &pem, now.plus_secs(2 * HOUR)),
            CertCode::Revoked
        );

        // A revocation the verifier's CRLs do not list yet (its CRL signing failed) is
        // still answered REVOKED: the revoked set is checked after the chain.
        let (late, pem) = issue(&pki, "late", now).await;
        assert_eq!(code(&pki, all, &pem, now), CertCode::Valid);
        pki.revoked.write_locked().insert(late, now);
        assert_eq!(code(&pki, all, &pem, now), CertCode::Revoked);
    }

    /// What the current issuing CA's CRL lists: (serial, revocation time, reason code).
    fn crl_lists(pki: &Pki) -> Vec<(Serial, i64, u8)> {
        use crate::pki::{CrlFormat, CrlSelect};
        let der = pki.crl(&CrlSelect::Current, CrlFormat::Der).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let mut v: Vec<(Serial, i64, u8)> = crl
            .iter_revoked_certificates()
            .map(|r| {
                (
                    Serial::from_bytes(r.raw_serial()),
                    r.revocation_date.timestamp(),
                    r.reason_code().map_or(0, |(_, c)| c.0),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Each signing lists every certificate of the revocation index with what its record
    /// says, whether the entry was read from the record now or kept from an earlier signing,
    /// and nothing the index no longer lists or that has expired.
    #[tokio::test]
    async fn every_crl_lists_each_revocation_as_its_record_says() {
        let now = Timestamp::from_unix(2_000_000_000);
        let (_d, pki) = pki(now).await;
        let all = &TenantScope::All;
        let (a, _) = issue(&pki, "a", now).await;
        let (b, _) = issue(&pki, "b", now).await;
        let (c, _) = issue(&pki, "c", now).await;
        let (d, _) = issue(&pki, "d", now).await;
        let revoke = |serial: Serial, reason, at: Timestamp| {
            let pki = &pki;
            async move {
                pki.revoke(&NoRecord, all, &serial, reason, &[], at)
                    .await
                    .unwrap();
            }
        };
        revoke(a.clone(), RevocationReason::Superseded, now).await;
        revoke(
            b.clone(),
            RevocationReason::AffiliationChanged,
            now.plus_secs(5),
        )
        .await;
        // Revoking a revoked certificate changes nothing, also not its CRL entry.
        revoke(a.clone(), RevocationReason::KeyCompromise, now.plus_secs(7)).await;
        revoke(
            c.clone(),
            RevocationReason::CessationOfOperation,
            now.plus_secs(10),
        )
        .await;
        let t = now.unix();
        let mut want = vec![
            (a.clone(), t, 4),
            (b.clone(), t + 5, 3),
            (c.clone(), t + 10, 5),
        ];
        want.sort();
        assert_eq!(crl_lists(&pki), want);
        let ca = pki.authority().issuing.id.clone();
        assert!(
            [&a, &b, &c].iter().all(|s| pki.crl_entries.holds(&ca, s)),
            "the entries are kept for the next signing"
        );

        // A certificate the index no longer lists (tidied) leaves the CRL and the kept entries.
        let mut batch = crate::store::Batch::new();
        batch.index_delete(
            crate::pki::records::IDX_REVOKED_BY_CA,
            format!("{ca}/{b}").as_bytes(),
        );
        pki.store.commit(batch).await.unwrap();
        revoke(
            d.clone(),
            RevocationReason::PrivilegeWithdrawn,
            now.plus_secs(20),
        )
        .await;
        let mut want = vec![(a, t, 4), (c, t + 10, 5), (d, t + 20, 9)];
        want.sort();
        assert_eq!(crl_lists(&pki), want);
        assert!(
            !pki.crl_entries.holds(&ca, &b),
            "the tidied certificate's entry is not kept"
        );

        // Expired certificates drop out.
        pki.sign_crl(&ca, now.plus_secs(3 * HOUR)).await.unwrap();
        assert_eq!(crl_lists(&pki), vec![]);
    }

    #[tokio::test]
    async fn a_foreign_certificate_copying_an_identity_is_untrusted_even_expired() {
        let now = Timestamp::from_unix(2_000_000_000);
        let (_d, pki) = pki(now).await;
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://t.local/tenant/default/svc/svc"
                .try_into()
                .unwrap(),
        )];
        p.not_before = Timestamp::from_unix(now.unix() - 60).to_offset();
        p.not_after = now.plus_secs(HOUR).to_offset();
        let pem = p.self_signed(&key).unwrap().pem();
        let all = &TenantScope::All;
        assert_eq!(code(&pki, all, &pem, now), CertCode::Untrusted);
        // Expired or not yet valid, it is still not ours (not EXPIRED: no oracle on time).
        assert_eq!(
            code(&pki, all, &pem, now.plus_secs(2 * HOUR)),
            CertCode::Untrusted
        );
        assert_eq!(
            code(&pki, all, &pem, Timestamp::from_unix(now.unix() - 3600)),
            CertCode::Untrusted
        );
    }
}
