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
    store::{self, Batch, Expect, Recorder, StoreError},
};

impl Pki {
    /// Revokes a certificate. Revoking a revoked certificate changes nothing and succeeds.
    pub async fn revoke(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        serial: &Serial,
        reason: RevocationReason,
        now: Timestamp,
    ) -> Result<CertRecord, PkiError> {
        let _one = self.changes.lock().await;
        let (rev, mut cert) =
            match store::record::get::<CertRecord>(&*self.store, serial.as_str()).await? {
                Some((rev, r)) if visible(scope, &r) => (rev, r),
                _ => return Err(PkiError::NotFound),
            };
        if cert.revoked.is_some() {
            // An earlier attempt may have been applied without being acknowledged (its flush
            // failed): make sure it is in force here too.
            let missing = cert.not_after > now
                && self
                    .revoked
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(serial.clone(), cert.not_after)
                    .is_none();
            if missing && self.authority().issuers().any(|c| c.id == cert.issuer) {
                self.sign_crl(&cert.issuer, now).await?;
                self.rebuild_verifier()?;
                self.publish_crls()?;
            }
            return Ok(cert);
        }
        cert.revoked = Some(Revocation { at: now, reason });
        let mut b = Batch::new();
        b.put_record(serial.as_str(), &cert, Expect::Rev(rev))?;
        b.index_put(
            IDX_REVOKED_BY_CA,
            revoked_position(&cert).as_bytes(),
            serial.as_str(),
            false,
        );
        rec.record(&mut b, serial.as_str(), cert.tenant.as_ref())?;
        match self.store.commit(b).await {
            Ok(()) => {}
            // Only this function changes a certificate record after issuance, under the lock.
            Err(StoreError::Conflict) => return Err(PkiError::Inconsistent("concurrent revoke")),
            Err(e) => {
                // Fail closed: the write may be applied; refuse the certificate from now on.
                if cert.not_after > now {
                    self.revoked
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(serial.clone(), cert.not_after);
                }
                return Err(e.into());
            }
        }
        if cert.not_after > now {
            self.revoked
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(serial.clone(), cert.not_after);
        }
        let issuer_known = self.authority().issuers().any(|c| c.id == cert.issuer);
        if issuer_known {
            self.sign_crl(&cert.issuer, now).await?;
            self.rebuild_verifier()?;
            self.publish_crls()?;
        }
        Ok(cert)
    }
}
