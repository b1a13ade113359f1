//! Changes other nodes committed to a shared database: the revoked set, the CRLs (and with
//! them the handshake verifier) and the CAs follow them here.

use std::collections::BTreeSet;

use super::records::{CertRecord, CrlRecord, PkiState, STATE_ID};
use super::{Pki, PkiError, load_authority, load_revoked};
use crate::{
    clock::Timestamp,
    identity::Serial,
    store::{self, Changed},
    sync::Locked,
};

impl Pki {
    /// Applies other nodes' changes: a revoked certificate joins the revoked set, new CRLs
    /// replace the verifier's, a CA change reloads the authority. On any failure the revoked
    /// set and CRLs are read whole.
    pub async fn apply_remote(&self, changes: &[Changed], now: Timestamp) {
        if let Err(e) = self.apply_remote_inner(changes, now).await {
            tracing::warn!(error = %e, "applying another node's PKI change failed; reloading");
            if let Err(e) = self.reload_all(now).await {
                tracing::error!(error = %e, "reloading the PKI state failed");
            }
        }
    }

    async fn apply_remote_inner(
        &self,
        changes: &[Changed],
        now: Timestamp,
    ) -> Result<(), PkiError> {
        let kinds: BTreeSet<&str> = changes.iter().map(|c| c.kind.as_str()).collect();
        if kinds.contains("*") {
            return self.reload_all(now).await;
        }
        for c in changes.iter().filter(|c| c.kind == "cert") {
            let Ok(serial) = Serial::parse(&c.id) else {
                continue;
            };
            if let Some((_, rec)) =
                store::record::get::<CertRecord>(&*self.store, serial.as_str()).await?
                && rec.revoked.is_some()
            {
                self.mark_revoked(std::slice::from_ref(&rec), now);
            }
        }
        let authority_changed = kinds.contains("pki") || kinds.contains("ca");
        if authority_changed {
            self.reload_authority().await?;
        }
        if authority_changed || kinds.contains("crl") {
            self.reload_crls().await?;
        }
        Ok(())
    }

    /// Reads the CAs, the revoked set and the CRLs again.
    async fn reload_all(&self, now: Timestamp) -> Result<(), PkiError> {
        self.reload_authority().await?;
        let revoked = load_revoked(&*self.store, now).await?;
        *self.revoked.write_locked() = revoked;
        self.reload_crls().await
    }

    async fn reload_authority(&self) -> Result<(), PkiError> {
        let _one = self.changes.lock().await;
        if let Some((_, state)) = store::record::get::<PkiState>(&*self.store, STATE_ID).await? {
            let authority = load_authority(&*self.store, &state).await?;
            *self.authority.write_locked() = std::sync::Arc::new(authority);
            self.publish_bundle()?;
        }
        Ok(())
    }

    /// Takes the CRLs as stored (another node signed them), rebuilds the handshake verifier
    /// and publishes them.
    async fn reload_crls(&self) -> Result<(), PkiError> {
        let _one = self.changes.lock().await;
        let authority = self.authority();
        for ca in authority.all() {
            if let Some((_, c)) =
                store::record::get::<CrlRecord>(&*self.store, ca.id.as_str()).await?
            {
                self.crls.write_locked().insert(ca.id.clone(), c);
            }
        }
        let ids: Vec<_> = authority.all().map(|c| c.id.clone()).collect();
        self.crls.write_locked().retain(|id, _| ids.contains(id));
        self.rebuild_verifier()?;
        self.publish_crls()
    }

    /// Whether a serial is revoked as of now: from memory while this node is caught up with
    /// other nodes' changes, else from the store (an error when it cannot be read: the
    /// caller refuses, fail closed).
    pub async fn is_revoked_now(&self, serial: &Serial) -> Result<bool, PkiError> {
        if self.is_revoked(serial) {
            return Ok(true);
        }
        if self.store.fresh() {
            return Ok(false);
        }
        Ok(self
            .record(serial)
            .await?
            .is_some_and(|r| r.revoked.is_some()))
    }

    /// [`Pki::verify_certificate`], with revocation read from the store when this node is not
    /// caught up with other nodes' changes.
    pub async fn verify_certificate_now(
        &self,
        scope: &crate::ids::TenantScope,
        pem_text: &str,
        now: Timestamp,
    ) -> Result<super::verify::CertVerdict, PkiError> {
        let mut verdict = self.verify_certificate(scope, pem_text, now)?;
        if verdict.valid
            && let Some(serial) = verdict.serial.clone()
            && self.is_revoked_now(&serial).await?
        {
            verdict.valid = false;
            verdict.code = super::verify::CertCode::Revoked;
        }
        Ok(verdict)
    }
}
