//! Certificate indexes added after certificates were already stored: built once, at
//! `Pki::open`, from the certificate records, when the PKI state says the store predates them.
//!
//! Generation 1: records get their lineage (followed back through `renewed_from`), and the
//! lineage index is written for every record. Records from before the key hash was recorded
//! stay out of the key index (the key of a certificate is not stored, only its fingerprint):
//! a key-compromise revocation still reaches them through their lineage.
//! Generation 2: the per-tenant index (tenants' listings scan only it).
//!
//! Each batch is idempotent, and the generation is written last: a crash in between means the
//! next start does it again.

use super::{
    Pki, PkiError,
    records::{
        CertRecord, IDX_CERTS, IDX_CERTS_BY_LINEAGE, IDX_CERTS_BY_TENANT, PkiState, STATE_ID,
        lineage_position, tenant_position,
    },
};
use crate::store::{self, Batch, Expect};

/// The index generation this build writes at issuance.
pub const CURRENT: u32 = 2;

/// Records re-indexed per batch.
const BATCH: usize = 200;

impl Pki {
    /// Brings the certificate indexes up to [`CURRENT`] if the store is older. Runs before
    /// the PKI serves anything, so nothing writes certificate records meanwhile.
    pub(super) async fn reindex(&self) -> Result<(), PkiError> {
        let Some((rev, mut state)) = store::record::get::<PkiState>(&*self.store, STATE_ID).await?
        else {
            return Ok(());
        };
        if state.indexes >= CURRENT {
            return Ok(());
        }
        let mut after: Option<Vec<u8>> = None;
        let mut done = 0usize;
        loop {
            let page = self
                .store
                .scan(IDX_CERTS, b"", after.as_deref(), BATCH)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            let mut b = Batch::new();
            for e in &page {
                let Some((rec_rev, mut r)) =
                    store::record::get::<CertRecord>(&*self.store, &e.id).await?
                else {
                    continue;
                };
                if r.lineage.is_none() {
                    r.lineage = Some(self.lineage_of(&r).await?);
                    b.put_record(r.serial.as_str(), &r, Expect::Rev(rec_rev))?;
                }
                for (index, pos) in [
                    (IDX_CERTS_BY_LINEAGE, lineage_position(&r)),
                    (IDX_CERTS_BY_TENANT, tenant_position(&r)),
                ] {
                    if let Some(pos) = pos {
                        b.index_put(index, pos.as_bytes(), r.serial.as_str(), false);
                    }
                }
                done += 1;
            }
            if !b.is_empty() {
                self.store.commit(b).await?;
            }
        }
        state.indexes = CURRENT;
        let mut b = Batch::new();
        b.put_record(STATE_ID, &state, Expect::Rev(rev))?;
        self.store.commit(b).await?;
        tracing::info!(
            certificates = done,
            generation = CURRENT,
            "built the certificate indexes"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        clock::Timestamp,
        crypto::keyring::MasterKey,
        ids::TenantName,
        pki::{
            KeySource, Policy,
            ceiling::Ceiling,
            identity::ServiceName,
            records::{lineage_prefix, tenant_prefix},
        },
        store::{NoRecord, Store, sled::SledStore},
    };

    async fn open(store: &Arc<dyn Store>, now: Timestamp) -> Pki {
        let policy = Policy {
            default_ttl_secs: 3600,
            max_ttl_secs: 7200,
            max_lineage_secs: 86_400,
        };
        let td = crate::identity::TrustDomain::parse("t.local").unwrap();
        Pki::open(store.clone(), td, policy, None, now)
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn records_from_before_the_new_indexes_get_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let (db, _) = SledStore::open(dir.path(), &master, &Default::default()).unwrap();
        let store: Arc<dyn Store> = Arc::new(db);
        let now = Timestamp::from_unix(2_000_000_000);
        let pki = open(&store, now).await;
        let mut serials = Vec::new();
        for _ in 0..2 {
            let (issued, _) = pki
                .issue_service(
                    &NoRecord,
                    TenantName::default_tenant(),
                    ServiceName::parse("svc").unwrap(),
                    KeySource::Generate,
                    600,
                    Ceiling::EMPTY,
                    now,
                )
                .await
                .unwrap();
            serials.push(issued.serial);
        }
        // Make them look like an old store: the second renewed the first, no lineages, no
        // lineage index, generation 0.
        let mut b = Batch::new();
        for (i, s) in serials.iter().enumerate() {
            let (rev, mut r) = store::record::get::<CertRecord>(&*store, s.as_str())
                .await
                .unwrap()
                .unwrap();
            b.index_delete(
                IDX_CERTS_BY_LINEAGE,
                lineage_position(&r).unwrap().as_bytes(),
            );
            b.index_delete(IDX_CERTS_BY_TENANT, tenant_position(&r).unwrap().as_bytes());
            r.lineage = None;
            r.renewed_from = (i == 1).then(|| serials[0].clone());
            b.put_record(s.as_str(), &r, Expect::Rev(rev)).unwrap();
        }
        let (rev, mut state) = store::record::get::<PkiState>(&*store, STATE_ID)
            .await
            .unwrap()
            .unwrap();
        state.indexes = 0;
        b.put_record(STATE_ID, &state, Expect::Rev(rev)).unwrap();
        store.commit(b).await.unwrap();

        let pki = open(&store, now).await;
        let second = pki.record(&serials[1]).await.unwrap().unwrap();
        assert_eq!(second.lineage.unwrap().origin, serials[0]);
        let indexed = store
            .scan(
                IDX_CERTS_BY_LINEAGE,
                lineage_prefix(&serials[0]).as_bytes(),
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(indexed.len(), 2);
        let own = store
            .scan(
                IDX_CERTS_BY_TENANT,
                tenant_prefix(&TenantName::default_tenant()).as_bytes(),
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(own.len(), 2);
        let (_, state) = store::record::get::<PkiState>(&*store, STATE_ID)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.indexes, CURRENT);
    }
}
