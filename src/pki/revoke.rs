//! Revocation. From the acknowledgement on, a revoked certificate authenticates nothing: the
//! revoked set (checked on every request, so keep-alive connections are covered) and the
//! CRL behind the handshake verifier are both updated before `revoke` returns. Session
//! resumption is off, so no handshake skips the verifier.
//!
//! A `key_compromise` revocation follows the key, not the serial: every live certificate
//! holding the same key pair (the key index) and every live certificate of the same lineage
//! (renewals made after a re-key were authorised with the compromised key) is revoked with
//! it, in one atomic batch. It reaches only certificates the caller can see: a CSR is no
//! secret, so a tenant could otherwise get a certificate for another tenant's key and
//! revoke it to end the other tenant's certificates. The global admin reaches them all.

use crate::sync::Locked;
use std::collections::BTreeSet;

use super::{
    Pki, PkiError,
    identity::{Identity, SpiffeId},
    issue::visible,
    records::{
        CertRecord, IDX_CERTS_BY_IDENTITY, IDX_CERTS_BY_KEY, IDX_CERTS_BY_LINEAGE,
        IDX_REVOKED_BY_CA, Profile, Revocation, RevocationReason, identity_prefix, key_prefix,
        lineage_prefix, revoked_position,
    },
    serial::Serial,
};
use crate::{
    clock::Timestamp,
    ids::{CaId, TenantScope},
    store::{self, Batch, Expect, IndexName, Recorder, Rev, StoreError},
};

impl Pki {
    /// A tenant's revoked, unexpired certificates as `(issuer, serial)`, read from the store
    /// (what the change feed's snapshot lists: every revocation committed before it).
    pub async fn revoked_of_tenant(
        &self,
        tenant: &crate::ids::TenantName,
        now: Timestamp,
    ) -> Result<Vec<(CaId, Serial)>, PkiError> {
        Ok(super::revoked_records(&*self.store, now)
            .await?
            .into_iter()
            .filter(|r| r.tenant.as_ref() == Some(tenant))
            .map(|r| (r.issuer, r.serial))
            .collect())
    }

    /// Revokes a certificate (with `key_compromise`, also every live certificate sharing its
    /// key pair or its lineage). Revoking a revoked certificate changes nothing and succeeds.
    /// `checked`: the certificates the caller was found allowed to end (see
    /// [`Pki::revocation_reach`]); a compromise revocation that would now reach another one
    /// (issued or renewed with the key meanwhile) is refused with a conflict, so the caller
    /// retries and is checked again.
    pub async fn revoke(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        serial: &Serial,
        reason: RevocationReason,
        checked: &[Serial],
        now: Timestamp,
    ) -> Result<CertRecord, PkiError> {
        let _one = self.changes.lock().await;
        let (rev, cert) =
            match store::record::get::<CertRecord>(&*self.store, serial.as_str()).await? {
                Some((rev, r)) if visible(scope, &r) => (rev, r),
                _ => return Err(PkiError::NotFound),
            };
        let mut targets: Vec<(Rev, CertRecord)> = Vec::new();
        if cert.revoked.is_none() {
            targets.push((rev, cert.clone()));
        }
        if reason == RevocationReason::KeyCompromise {
            targets.extend(self.compromised_with(scope, &cert, now).await?);
        }
        if targets
            .iter()
            .any(|(_, t)| t.serial != *serial && !checked.contains(&t.serial))
        {
            return Err(PkiError::Conflict(
                "a certificate with this key was issued meanwhile; retry",
            ));
        }
        if targets.is_empty() {
            // Revoked already: an earlier attempt may have been applied without being
            // acknowledged (its flush, or the CRL signing after it, failed); make sure it is
            // in force here too, and in the published CRL (re-signed even when the revoked
            // set already held it: a failed signing leaves the set ahead of the CRL).
            self.mark_revoked(std::slice::from_ref(&cert), now);
            if cert.not_after > now {
                self.resign(std::slice::from_ref(&cert.issuer), now).await?;
            }
            return Ok(cert);
        }
        let revoked = self.revoke_records(rec, targets, reason, now).await?;
        Ok(revoked
            .into_iter()
            .find(|c| c.serial == *serial)
            .unwrap_or(cert))
    }

    /// The other live certificates, visible in `scope`, that a `key_compromise` revocation of
    /// `cert` also ends: those with the same public key or of the same lineage.
    async fn compromised_with(
        &self,
        scope: &TenantScope,
        cert: &CertRecord,
        now: Timestamp,
    ) -> Result<Vec<(Rev, CertRecord)>, PkiError> {
        let mut out: Vec<(Rev, CertRecord)> = Vec::new();
        for s in self.sharing_key_or_lineage(cert).await? {
            if s == cert.serial || out.iter().any(|(_, t)| t.serial == s) {
                continue;
            }
            if let Some((r, c)) = store::record::get::<CertRecord>(&*self.store, s.as_str())
                .await?
                .filter(|(_, c)| visible(scope, c) && c.revoked.is_none() && c.not_after > now)
            {
                out.push((r, c));
            }
        }
        Ok(out)
    }

    /// Every certificate a revocation of `serial` for `reason` would end (itself first), so
    /// the caller can be checked against each before anything changes.
    pub async fn revocation_reach(
        &self,
        scope: &TenantScope,
        serial: &Serial,
        reason: RevocationReason,
        now: Timestamp,
    ) -> Result<Vec<CertRecord>, PkiError> {
        let cert = match store::record::get::<CertRecord>(&*self.store, serial.as_str()).await? {
            Some((_, r)) if visible(scope, &r) => r,
            _ => return Err(PkiError::NotFound),
        };
        let mut out = Vec::new();
        if reason == RevocationReason::KeyCompromise {
            out.extend(
                self.compromised_with(scope, &cert, now)
                    .await?
                    .into_iter()
                    .map(|(_, c)| c),
            );
        }
        out.insert(0, cert);
        Ok(out)
    }

    /// Revokes every live bootstrap admin certificate but `keep`, with reason `superseded`:
    /// the break-glass re-issue (`tessera admin-cert`) ends the credential it replaces.
    /// Returns the serials revoked.
    pub async fn revoke_admin_certs_except(
        &self,
        rec: &dyn Recorder,
        keep: &Serial,
        now: Timestamp,
    ) -> Result<Vec<Serial>, PkiError> {
        let _one = self.changes.lock().await;
        let admin = SpiffeId::new(self.trust_domain.clone(), Identity::Admin).uri();
        let prefix = identity_prefix(&admin);
        let mut targets = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan(IDX_CERTS_BY_IDENTITY, &prefix, after.as_deref(), 1000)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for e in &page {
                if let Some((r, c)) = store::record::get::<CertRecord>(&*self.store, &e.id)
                    .await?
                    .filter(|(_, c)| {
                        c.profile == Profile::Admin
                            && c.serial != *keep
                            && c.revoked.is_none()
                            && c.not_after > now
                    })
                {
                    targets.push((r, c));
                }
            }
        }
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let revoked = self
            .revoke_records(rec, targets, RevocationReason::Superseded, now)
            .await?;
        Ok(revoked.into_iter().map(|c| c.serial).collect())
    }

    /// Revokes `targets` (read at these revisions) in one batch, one audit entry each; then
    /// the revoked set, the CRLs and the verifier. The caller holds `changes`.
    async fn revoke_records(
        &self,
        rec: &dyn Recorder,
        mut targets: Vec<(Rev, CertRecord)>,
        reason: RevocationReason,
        now: Timestamp,
    ) -> Result<Vec<CertRecord>, PkiError> {
        let mut b = Batch::new();
        for (rev, c) in &mut targets {
            c.revoked = Some(Revocation { at: now, reason });
            b.put_record(c.serial.as_str(), &*c, Expect::Rev(*rev))?;
            b.index_put(
                IDX_REVOKED_BY_CA,
                revoked_position(c).as_bytes(),
                c.serial.as_str(),
                false,
            );
            rec.record(&mut b, c.serial.as_str(), c.tenant.as_ref())?;
            if let Some(tenant) = &c.tenant {
                let event = crate::feed::Event {
                    serial: Some(c.serial.clone()),
                    issuer: Some(c.issuer.to_string()),
                    ..crate::feed::Event::new("cert.revoked", tenant.clone(), now)
                };
                crate::feed::append(&mut b, &event)?;
            }
        }
        let revoked: Vec<CertRecord> = targets.into_iter().map(|(_, c)| c).collect();
        match self.store.commit(b).await {
            Ok(()) => {}
            // Only this function changes a certificate record after issuance, under the lock.
            Err(StoreError::Conflict) => return Err(PkiError::Inconsistent("concurrent revoke")),
            Err(e) => {
                // Fail closed: the write may be applied; refuse the certificates from now on,
                // and have the CRL task check whether the CRLs must list them.
                self.mark_revoked(&revoked, now);
                self.crl_needs_retry();
                return Err(e.into());
            }
        }
        self.mark_revoked(&revoked, now);
        let issuers: BTreeSet<CaId> = revoked.iter().map(|c| c.issuer.clone()).collect();
        self.resign(&issuers.into_iter().collect::<Vec<_>>(), now)
            .await?;
        Ok(revoked)
    }

    /// Adds unexpired certificates to the revoked set; whether any was missing from it.
    pub(super) fn mark_revoked(&self, certs: &[CertRecord], now: Timestamp) -> bool {
        let mut set = self.revoked.write_locked();
        let mut added = false;
        for c in certs.iter().filter(|c| c.not_after > now) {
            added |= set.insert(c.serial.clone(), c.not_after).is_none();
        }
        added
    }

    /// Re-signs the CRLs of these issuers (those still in use), then rebuilds the handshake
    /// verifier and publishes the CRLs.
    async fn resign(&self, issuers: &[CaId], now: Timestamp) -> Result<(), PkiError> {
        let known: Vec<CaId> = self.authority().issuers().map(|c| c.id.clone()).collect();
        let mut any = false;
        for id in issuers.iter().filter(|i| known.contains(i)) {
            if let Err(e) = self.sign_crl(id, now).await {
                // The revocation is stored; its CRL is not. The CRL task retries in seconds
                // (and any refresh finds the CRL behind the revocation index).
                self.crl_needs_retry();
                return Err(e);
            }
            any = true;
        }
        if any {
            self.rebuild_verifier()?;
            self.publish_crls()?;
        }
        Ok(())
    }

    /// Serials of the certificates holding `cert`'s key pair or belonging to its lineage.
    async fn sharing_key_or_lineage(&self, cert: &CertRecord) -> Result<Vec<Serial>, PkiError> {
        let mut out = Vec::new();
        if let Some(k) = &cert.key_sha256 {
            out.extend(self.scan_all(IDX_CERTS_BY_KEY, &key_prefix(k)).await?);
        }
        let lineage = self.lineage_of(cert).await?;
        out.extend(
            self.scan_all(IDX_CERTS_BY_LINEAGE, &lineage_prefix(&lineage.origin))
                .await?,
        );
        Ok(out)
    }

    /// Every serial an index holds under `prefix`.
    async fn scan_all(&self, index: IndexName, prefix: &str) -> Result<Vec<Serial>, PkiError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan(index, prefix.as_bytes(), after.as_deref(), 1000)
                .await?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = Some(last.key.clone());
            out.extend(page.iter().filter_map(|e| Serial::parse(&e.id).ok()));
        }
    }
}
