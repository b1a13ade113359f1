//! Tidying: records of certificates expired for longer than the retention period are
//! removed (with their index entries), retired CAs whose certificates have all expired are
//! dropped, and the in-memory revoked set forgets expired serials. The store, the CRLs and
//! start-up time stay bounded by what is live.

use super::{
    Pki, PkiError,
    records::{
        CertRecord, IDX_CERTS, IDX_CERTS_BY_EXPIRY, IDX_CERTS_BY_IDENTITY, IDX_CERTS_BY_KEY,
        IDX_CERTS_BY_LINEAGE, IDX_CERTS_BY_TENANT, IDX_REVOKED_BY_CA, PkiState, STATE_ID,
        cert_position, identity_position, key_position, lineage_position, millis20,
        revoked_position, tenant_position,
    },
};
use crate::sync::Locked;
use crate::{
    clock::Timestamp,
    store::{self, Batch, Expect, Record},
};

/// Records removed per batch.
const BATCH: usize = 500;

impl Pki {
    /// Removes certificate records that expired before `now - retention_secs`. Returns how
    /// many were removed.
    pub async fn tidy(&self, now: Timestamp, retention_secs: u64) -> Result<usize, PkiError> {
        let cutoff = Timestamp::from_unix_millis(
            now.unix_millis().saturating_sub(
                i64::try_from(retention_secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            ),
        );
        let stop = millis20(cutoff);
        let mut removed = 0;
        let mut crls_to_resign = std::collections::BTreeSet::new();
        loop {
            let due = store::due(&*self.store, IDX_CERTS_BY_EXPIRY, stop.as_bytes(), BATCH).await?;
            if due.is_empty() {
                break;
            }
            let mut b = Batch::new();
            for e in &due {
                b.index_delete(IDX_CERTS_BY_EXPIRY, &e.key);
                if let Some((_, r)) = store::record::get::<CertRecord>(&*self.store, &e.id).await? {
                    b.delete(CertRecord::KIND, r.serial.as_str(), Expect::Any);
                    b.index_delete(IDX_CERTS, cert_position(&r).as_bytes());
                    b.index_delete(IDX_CERTS_BY_IDENTITY, &identity_position(&r));
                    for (index, pos) in [
                        (IDX_CERTS_BY_KEY, key_position(&r)),
                        (IDX_CERTS_BY_LINEAGE, lineage_position(&r)),
                        (IDX_CERTS_BY_TENANT, tenant_position(&r)),
                    ] {
                        if let Some(pos) = pos {
                            b.index_delete(index, pos.as_bytes());
                        }
                    }
                    if r.revoked.is_some() {
                        b.index_delete(IDX_REVOKED_BY_CA, revoked_position(&r).as_bytes());
                        crls_to_resign.insert(r.issuer.clone());
                    }
                }
            }
            self.store.commit(b).await?;
            removed += due.len();
        }
        self.revoked
            .write_locked()
            .retain(|_, not_after| *not_after > now);
        if !crls_to_resign.is_empty() {
            let _one = self.changes.lock().await;
            let live: Vec<_> = self.authority().all().map(|c| c.id.clone()).collect();
            for ca in crls_to_resign.iter().filter(|c| live.contains(c)) {
                self.sign_crl(ca, now).await?;
            }
            self.rebuild_verifier()?;
            self.publish_crls()?;
        }
        self.drop_retired_cas(now).await?;
        if removed > 0 {
            tracing::info!(removed, "tidied expired certificate records");
        }
        Ok(removed)
    }

    async fn drop_retired_cas(&self, now: Timestamp) -> Result<(), PkiError> {
        let _one = self.changes.lock().await;
        let Some((rev, mut state)) = store::record::get::<PkiState>(&*self.store, STATE_ID).await?
        else {
            return Ok(());
        };
        let before = state.retired.len();
        state.retired.retain(|r| r.until > now);
        if state.retired.len() == before {
            return Ok(());
        }
        let mut b = Batch::new();
        b.put_record(STATE_ID, &state, Expect::Rev(rev))?;
        self.store.commit(b).await?;
        let authority = super::load_authority(&*self.store, &state).await?;
        *self.authority.write_locked() = std::sync::Arc::new(authority);
        self.refresh_crls_locked(now, false).await?;
        self.publish_bundle()?;
        Ok(())
    }
}

/// Stored certificates by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CertCounts {
    pub valid: u64,
    pub expired: u64,
    pub revoked: u64,
    pub expiring_7d: u64,
}

impl Pki {
    /// Counts certificates by state from the expiry index and the revoked set (for metrics).
    pub async fn count_states(&self, now: Timestamp) -> Result<CertCounts, PkiError> {
        let revoked: std::collections::HashSet<_> =
            self.revoked.read_locked().keys().cloned().collect();
        let soon = millis20(now.plus_secs(7 * 86_400));
        let now_key = millis20(now);
        let mut c = CertCounts::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan(IDX_CERTS_BY_EXPIRY, b"", after.as_deref(), 4096)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for e in &page {
                let key = e.key.as_slice();
                let serial = super::serial::Serial::parse(&e.id).ok();
                if key < now_key.as_bytes() {
                    c.expired += 1;
                } else if serial.is_some_and(|s| revoked.contains(&s)) {
                    c.revoked += 1;
                } else {
                    c.valid += 1;
                    if key < soon.as_bytes() {
                        c.expiring_7d += 1;
                    }
                }
            }
        }
        Ok(c)
    }
}
