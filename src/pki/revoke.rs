//! Revocation. From the acknowledgement on, a revoked certificate authenticates nothing: the
//! revoked set (checked on every request, so keep-alive connections are covered) and the
//! CRL behind the handshake verifier are both updated before `revoke` returns. Session
//! resumption is off, so no handshake skips the verifier.

use super::{
    Pki, PkiError,
    issue::visible,
    records::{CertRecord, IDX_REVOKED_BY_CA, Revocation, RevocationReason, revoked_position},
    serial::Serial,
};
use crate::{
    clock::Timestamp,
    ids::TenantScope,
    store::{self, Batch, Expect, StoreError},
};

impl Pki {
    /// Revokes a certificate. Revoking a revoked certificate changes nothing and succeeds.
    pub async fn revoke(
        &self,
        scope: &TenantScope,
        serial: &Serial,
        reason: RevocationReason,
        now: Timestamp,
    ) -> Result<CertRecord, PkiError> {
        let _one = self.changes.lock().await;
        let (rev, mut rec) =
            match store::record::get::<CertRecord>(&*self.store, serial.as_str()).await? {
                Some((rev, r)) if visible(scope, &r) => (rev, r),
                _ => return Err(PkiError::NotFound),
            };
        if rec.revoked.is_some() {
            return Ok(rec);
        }
        rec.revoked = Some(Revocation { at: now, reason });
        let mut b = Batch::new();
        b.put_record(serial.as_str(), &rec, Expect::Rev(rev))?;
        b.index_put(
            IDX_REVOKED_BY_CA,
            revoked_position(&rec).as_bytes(),
            serial.as_str(),
            false,
        );
        match self.store.commit(b).await {
            Ok(()) => {}
            // Only this function changes a certificate record after issuance, under the lock.
            Err(StoreError::Conflict) => return Err(PkiError::Inconsistent("concurrent revoke")),
            Err(e) => return Err(e.into()),
        }
        if rec.not_after > now {
            self.revoked
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(serial.clone(), rec.not_after);
        }
        let issuer_known = self.authority().issuers().any(|c| c.id == rec.issuer);
        if issuer_known {
            self.sign_crl(&rec.issuer, now).await?;
            self.rebuild_verifier()?;
            self.publish_crls()?;
        }
        Ok(rec)
    }
}
