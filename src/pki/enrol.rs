//! Enrolment tokens: how a new workload gets its first certificate without a long-lived
//! secret. An issuer makes a token for one identity (`POST /v1/enrolment-tokens`); the
//! workload trades it, once, with a CSR for its certificate (`POST /v1/enrol`), then renews
//! with the certificate itself (`tessera agent`).
//!
//! Tokens are stored like API keys: only an HMAC under the pepper, found through a blind
//! index, compared in constant time. Single use is a conditional write: of two concurrent
//! enrolments with one token, exactly one consumes it.

use serde::{Deserialize, Serialize};

use super::{KeySource, Pki, PkiError, ceiling::Ceiling, identity::ServiceName, issue::Issued};
use crate::{
    clock::Timestamp,
    crypto::{
        apikey::{ApiKey, KeyPrefix},
        hash::Pepper,
    },
    ids::TenantName,
    store::{self, Batch, Expect, IndexName, Kind, Recorder, record::Record},
};

/// Prefix of enrolment tokens.
pub const TOKEN_PREFIX: &str = "tse";
/// Lifetime of a token unless asked otherwise, and the longest allowed.
pub const DEFAULT_TTL_SECS: u64 = 600;
pub const MAX_TTL_SECS: u64 = 86_400;

/// Index: blind(token) -> token id.
const IDX_ENROL: IndexName = IndexName("enrol_token");
/// Index: `<expires millis, 20 digits>/<id>` -> token id (tidying).
const IDX_ENROL_BY_EXPIRY: IndexName = IndexName("enrol_token_expiry");
/// Tokens removed per batch.
const TIDY_BATCH: usize = 500;

fn expiry_position(t: &EnrolmentToken) -> String {
    format!("{}/{}", super::records::millis20(t.expires_at), t.id)
}
/// Blind-index domain of enrolment tokens.
const BLIND_ENROL: &str = "enrol";

#[derive(Clone, Serialize, Deserialize)]
pub struct EnrolmentToken {
    pub id: String,
    pub tenant: TenantName,
    pub identity: ServiceName,
    /// HMAC-SHA256(pepper, token).
    #[serde(with = "crate::crypto::serde_hex::array32")]
    pub hash: [u8; 32],
    #[serde(with = "crate::crypto::serde_hex::array32")]
    pub lookup: [u8; 32],
    pub created_by: String,
    /// What the creator held: the ceiling of the certificate the token is traded for. A
    /// token made before ceilings existed has the empty one.
    #[serde(default)]
    pub ceiling: Ceiling,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
}

impl Record for EnrolmentToken {
    const KIND: Kind = Kind("enrol_token");
}

impl std::fmt::Debug for EnrolmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolmentToken")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A token's lifetime from a request.
pub fn token_ttl(requested: Option<u64>) -> Result<u64, PkiError> {
    match requested {
        None => Ok(DEFAULT_TTL_SECS),
        Some(t) if (1..=MAX_TTL_SECS).contains(&t) => Ok(t),
        Some(_) => Err(PkiError::Invalid {
            field: "ttl_seconds",
            message: "must be between 1 and 86400",
        }),
    }
}

impl Pki {
    /// Makes a single-use token for `identity` in `tenant`; returns it with its secret (shown
    /// once). The caller has checked the creator may issue that identity; `ceiling` is what
    /// the creator holds, and what the certificate traded for the token will carry.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_enrolment_token(
        &self,
        rec: &dyn Recorder,
        pepper: &Pepper,
        tenant: TenantName,
        identity: ServiceName,
        ttl_secs: u64,
        created_by: String,
        ceiling: Ceiling,
        now: Timestamp,
    ) -> Result<(EnrolmentToken, ApiKey), PkiError> {
        let prefix =
            KeyPrefix::parse(TOKEN_PREFIX).map_err(|_| PkiError::Inconsistent("prefix"))?;
        let secret = ApiKey::generate(&prefix).map_err(|_| PkiError::Inconsistent("randomness"))?;
        let bytes = secret.expose().as_bytes();
        let token = EnrolmentToken {
            id: crate::crypto::random::id("enr")
                .map_err(|_| PkiError::Inconsistent("randomness"))?,
            tenant,
            identity,
            hash: pepper.verification_hash(bytes),
            lookup: pepper.blind_index(BLIND_ENROL, bytes),
            created_by,
            ceiling,
            created_at: now,
            expires_at: now.plus_secs(ttl_secs),
            used_at: None,
        };
        let mut b = Batch::new();
        b.put_record(&token.id, &token, Expect::Absent)?;
        b.index_put(IDX_ENROL, &token.lookup, &token.id, true);
        b.index_put(
            IDX_ENROL_BY_EXPIRY,
            expiry_position(&token).as_bytes(),
            &token.id,
            false,
        );
        rec.record(&mut b, &token.id, Some(&token.tenant))?;
        self.store.commit(b).await?;
        Ok((token, secret))
    }

    /// Trades a token and a CSR for a certificate. `None`: the token is unknown, used,
    /// expired or for another identity (the caller answers with the uniform 401).
    #[allow(clippy::too_many_arguments)]
    pub async fn enrol(
        &self,
        rec: &dyn Recorder,
        pepper: &Pepper,
        presented: &str,
        identity: &ServiceName,
        csr: String,
        ttl: Option<u64>,
        now: Timestamp,
    ) -> Result<Option<Issued>, PkiError> {
        let Ok(secret) = ApiKey::parse(presented) else {
            return Ok(None);
        };
        if secret.prefix() != TOKEN_PREFIX {
            return Ok(None);
        }
        let bytes = secret.expose().as_bytes();
        let blind = pepper.blind_index(BLIND_ENROL, bytes);
        let Some(id) = self.store.lookup(IDX_ENROL, &blind).await? else {
            return Ok(None);
        };
        let Some((rev, mut token)) =
            store::record::get::<EnrolmentToken>(&*self.store, &id).await?
        else {
            return Ok(None);
        };
        if !pepper.verify(bytes, &token.hash)
            || token.used_at.is_some()
            || now >= token.expires_at
            || token.identity != *identity
        {
            return Ok(None);
        }
        // Check the request before spending the token on it.
        let ttl = self.ttl(ttl)?;
        super::issue::csr_public_key(&csr)?;
        token.used_at = Some(now);
        let mut b = Batch::new();
        b.put_record(&token.id, &token, Expect::Rev(rev))?;
        match self.store.commit(b).await {
            Ok(()) => {}
            // Someone else used it first.
            Err(store::StoreError::Conflict) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let (issued, _) = self
            .issue_service(
                rec,
                token.tenant.clone(),
                token.identity.clone(),
                KeySource::Csr(csr),
                ttl,
                token.ceiling,
                now,
            )
            .await?;
        Ok(Some(issued))
    }

    /// Removes tokens that have expired (used or not: either way they can do nothing more;
    /// their creation and use stay in the audit log). Returns how many were removed.
    pub async fn tidy_enrolment_tokens(&self, now: Timestamp) -> Result<usize, PkiError> {
        let stop = super::records::millis20(now);
        let mut removed = 0;
        loop {
            let due = store::due(
                &*self.store,
                IDX_ENROL_BY_EXPIRY,
                stop.as_bytes(),
                TIDY_BATCH,
            )
            .await?;
            if due.is_empty() {
                break;
            }
            let mut b = Batch::new();
            for e in &due {
                b.index_delete(IDX_ENROL_BY_EXPIRY, &e.key);
                if let Some((_, t)) =
                    store::record::get::<EnrolmentToken>(&*self.store, &e.id).await?
                {
                    b.delete(EnrolmentToken::KIND, &t.id, Expect::Any);
                    b.index_delete(IDX_ENROL, &t.lookup);
                }
            }
            self.store.commit(b).await?;
            removed += due.len();
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crypto::keyring::{Keyring, MasterKey},
        store::{NoRecord, Store, sled::SledStore},
    };

    #[tokio::test]
    async fn expired_tokens_are_tidied_away() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let (store, _) = SledStore::open(dir.path(), &master, &Default::default()).unwrap();
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
        let (keyring, _) = Keyring::generate(&master).unwrap();
        let now = Timestamp::from_unix(2_000_000_000);
        let (pki, _) = Pki::open(
            store.clone(),
            super::super::identity::TrustDomain::parse("t.local").unwrap(),
            super::super::Policy {
                default_ttl_secs: 3600,
                max_ttl_secs: 7200,
                max_lineage_secs: 86_400,
            },
            None,
            now,
        )
        .await
        .unwrap();
        let name = ServiceName::parse("svc").unwrap();
        let (short, _) = pki
            .create_enrolment_token(
                &NoRecord,
                keyring.pepper(),
                TenantName::default_tenant(),
                name.clone(),
                10,
                "t".into(),
                Ceiling::EMPTY,
                now,
            )
            .await
            .unwrap();
        let (long, _) = pki
            .create_enrolment_token(
                &NoRecord,
                keyring.pepper(),
                TenantName::default_tenant(),
                name,
                100,
                "t".into(),
                Ceiling::EMPTY,
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            pki.tidy_enrolment_tokens(now.plus_secs(5)).await.unwrap(),
            0
        );
        assert_eq!(
            pki.tidy_enrolment_tokens(now.plus_secs(50)).await.unwrap(),
            1
        );
        assert!(
            store::record::get::<EnrolmentToken>(&*store, &short.id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store::record::get::<EnrolmentToken>(&*store, &long.id)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .lookup(IDX_ENROL, &short.lookup)
                .await
                .unwrap()
                .is_none()
        );
    }
}
