//! Rotation of the issuing CA. The new CA signs from now on; the old one stays trusted and
//! keeps its CRL served until every certificate it signed has expired.

use super::{
    Pki, PkiError,
    bootstrap::{ADMIN_CERT_LIFETIME_SECS, SERVER_CERT_LIFETIME_SECS},
    ca::Ca,
    records::{PkiState, RetiredCa, STATE_ID},
};
use crate::sync::Locked;
use crate::{
    clock::Timestamp,
    ids::CaId,
    store::{self, Batch, Expect, Recorder},
};

impl Pki {
    /// Makes a new issuing CA, signed by the root. Returns its id.
    pub async fn rotate_issuing(
        &self,
        rec: &dyn Recorder,
        now: Timestamp,
    ) -> Result<CaId, PkiError> {
        let _one = self.changes.lock().await;
        let (rev, mut state) = store::record::get::<PkiState>(&*self.store, STATE_ID)
            .await?
            .ok_or(PkiError::Inconsistent("no PKI state"))?;
        let old = self.authority();
        let (issuing, record) = Ca::generate_issuing(&old.root, self.trust_domain.as_str(), now)?;
        // No certificate the old CA signed outlives the longest lifetime it could have given.
        let longest = self
            .policy
            .max_ttl_secs
            .max(ADMIN_CERT_LIFETIME_SECS)
            .max(SERVER_CERT_LIFETIME_SECS);
        let until = now.plus_secs(longest).min(old.issuing.not_after);
        state.retired.push(RetiredCa {
            id: state.issuing.clone(),
            until,
        });
        state.issuing = issuing.id.clone();
        let mut b = Batch::new();
        b.put_record(issuing.id.as_str(), &record, Expect::Absent)?;
        b.put_record(STATE_ID, &state, Expect::Rev(rev))?;
        rec.record(&mut b, issuing.id.as_str(), None)?;
        self.store.commit(b).await?;

        // Reload from the store so memory matches exactly what was committed.
        let authority = super::load_authority(&*self.store, &state).await?;
        *self.authority.write_locked() = std::sync::Arc::new(authority);
        self.refresh_crls_locked(now, false).await?;
        self.publish_bundle()?;
        Ok(issuing.id)
    }
}
