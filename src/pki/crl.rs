//! CRLs: one per CA (the root's covers the issuing CAs), signed by that CA, numbered so the
//! number only grows (max(last + 1, unix milliseconds), so also across restarts and
//! restores), re-signed at once on a revocation and well before nextUpdate. Expired
//! certificates drop out. Each CRL is also written to the certs directory
//! (`crl-<ca id>.pem`, and all of them in `crls.pem` for verifiers such as nginx that check
//! the whole chain).

use std::{
    collections::{HashMap, HashSet},
    sync::{RwLock, atomic::Ordering},
};

use crate::sync::Locked;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};

use super::{
    CrlSelect, Pki, PkiError, pem,
    records::{CertRecord, CrlRecord, IDX_REVOKED_BY_CA, Revocation},
};
use crate::{
    clock::Timestamp,
    identity::serial::Serial,
    ids::CaId,
    store::{self, Batch, Expect},
};

/// How long a CRL is valid (its nextUpdate).
pub const CRL_LIFETIME_SECS: u64 = 24 * 3600;
/// A CRL is re-signed when less than this is left before its nextUpdate.
pub const CRL_REFRESH_BEFORE_SECS: u64 = 12 * 3600;

/// Whether a CRL is due: less than [`CRL_REFRESH_BEFORE_SECS`] left before its nextUpdate,
/// to the millisecond.
fn due_at(crl: &CrlRecord, now: Timestamp) -> bool {
    crl.next_update.unix_millis() - now.unix_millis() < CRL_REFRESH_BEFORE_SECS as i64 * 1000
}

/// What a CRL lists about one revoked certificate. A certificate's revocation never changes
/// once written (revoking a revoked certificate changes nothing), nor does its expiry, so an
/// entry read once stays true for as long as its certificate is in the revocation index.
#[derive(Clone, Debug)]
pub(super) struct CrlEntry {
    serial: Serial,
    /// The serial's DER content bytes.
    serial_bytes: Vec<u8>,
    revocation: Revocation,
    not_after: Timestamp,
}

/// [`CrlEntry`]s per CA, by serial. The revocation index stays the truth of which
/// certificates a CRL lists (every signing scans it, so other nodes' revocations and tidied
/// certificates count at once); this only saves decrypting and parsing each listed
/// certificate's record on every signing, which made a revocation cost time in proportion to
/// the revoked certificates of its CA.
#[derive(Debug, Default)]
pub(super) struct CrlEntries(RwLock<HashMap<CaId, HashMap<String, CrlEntry>>>);

#[cfg(test)]
impl CrlEntries {
    /// Whether an entry of this certificate is kept for this CA.
    pub(super) fn holds(&self, ca: &CaId, serial: &Serial) -> bool {
        self.0
            .read_locked()
            .get(ca)
            .is_some_and(|m| m.contains_key(serial.as_str()))
    }
}

/// The encodings a CRL is served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlFormat {
    Der,
    Pem,
}

impl Pki {
    /// Re-signs every CRL that is missing, due or behind the revocation index, then rebuilds
    /// the verifier and publishes the files (when one was signed, or always with `publish`:
    /// at start, where the files may be missing).
    pub async fn refresh_crls(&self, now: Timestamp, publish: bool) -> Result<(), PkiError> {
        let _one = self.changes.lock().await;
        self.refresh_crls_locked(now, publish).await
    }

    pub(super) async fn refresh_crls_locked(
        &self,
        now: Timestamp,
        publish: bool,
    ) -> Result<(), PkiError> {
        let authority = self.authority();
        let mut changed = false;
        for ca in authority.all() {
            let stored = store::record::get::<CrlRecord>(&*self.store, ca.id.as_str()).await?;
            let due = match &stored {
                None => true,
                Some((_, c)) => due_at(c, now) || self.crl_is_behind(c, now).await?,
            };
            if due {
                self.sign_crl(&ca.id, now).await?;
                changed = true;
            } else if let Some((_, c)) = stored {
                self.crls.write_locked().insert(ca.id.clone(), c);
            }
        }
        // Forget CRLs of CAs no longer in use.
        let ids: Vec<CaId> = authority.all().map(|c| c.id.clone()).collect();
        self.crls.write_locked().retain(|id, _| ids.contains(id));
        self.rebuild_verifier()?;
        if changed || publish {
            self.publish_crls()?;
        }
        Ok(())
    }

    /// Whether a CA in use has no CRL in memory, or one due for re-signing by the clock (no
    /// store read: the CRL task asks every few seconds, so a CRL is re-signed within seconds
    /// of becoming due; the refresh then reads the store, where another node may have
    /// re-signed it already).
    pub fn crls_due(&self, now: Timestamp) -> bool {
        let authority = self.authority();
        let crls = self.crls.read_locked();
        authority
            .all()
            .any(|ca| crls.get(&ca.id).is_none_or(|c| due_at(c, now)))
    }

    /// The revoked, unexpired certificates a CA issued, from the revocation index; each
    /// certificate's record is read only the first time it is listed (see [`CrlEntries`]).
    async fn revoked_by(&self, ca_id: &CaId, now: Timestamp) -> Result<Vec<CrlEntry>, PkiError> {
        let mut known = self
            .crl_entries
            .0
            .write_locked()
            .remove(ca_id)
            .unwrap_or_default();
        let mut listed: HashMap<String, CrlEntry> = HashMap::with_capacity(known.len());
        let prefix = format!("{ca_id}/");
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan(IDX_REVOKED_BY_CA, prefix.as_bytes(), after.as_deref(), 1000)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for e in page {
                if let Some(entry) = known.remove(&e.id) {
                    listed.insert(e.id, entry);
                    continue;
                }
                let Some((_, r)) = store::record::get::<CertRecord>(&*self.store, &e.id).await?
                else {
                    continue;
                };
                if let Some(revocation) = r.revoked {
                    let entry = CrlEntry {
                        serial_bytes: r.serial.to_bytes(),
                        serial: r.serial,
                        revocation,
                        not_after: r.not_after,
                    };
                    listed.insert(e.id, entry);
                }
            }
        }
        let out = listed
            .values()
            .filter(|e| e.not_after > now)
            .cloned()
            .collect();
        // Only what the index lists now is kept: tidied certificates leave with it.
        self.crl_entries
            .0
            .write_locked()
            .insert(ca_id.clone(), listed);
        Ok(out)
    }

    /// Whether a stored CRL lacks a certificate its CA has revoked: a revocation was stored
    /// but its CRL signing failed (here or on another node) and was never retried. A CRL that
    /// cannot be parsed is behind too, so it is signed again.
    async fn crl_is_behind(&self, crl: &CrlRecord, now: Timestamp) -> Result<bool, PkiError> {
        let Ok((_, parsed)) = x509_parser::parse_x509_crl(&crl.der) else {
            return Ok(true);
        };
        let listed: HashSet<Serial> = parsed
            .iter_revoked_certificates()
            .map(|r| Serial::from_bytes(r.raw_serial()))
            .collect();
        Ok(self
            .revoked_by(&crl.ca, now)
            .await?
            .iter()
            .any(|r| !listed.contains(&r.serial)))
    }

    /// Asks the CRL task to re-sign soon: a revocation may be stored without its CRL (its
    /// signing, or the revocation's own acknowledgement, failed).
    pub fn crl_needs_retry(&self) {
        self.crl_retry.store(true, Ordering::Release);
    }

    /// Whether a CRL signing failed since the last call (the CRL task's signal, taken once).
    pub fn take_crl_retry(&self) -> bool {
        self.crl_retry.swap(false, Ordering::AcqRel)
    }

    /// Signs a fresh CRL for one CA from the revocation index and stores it (durably).
    pub(super) async fn sign_crl(&self, ca_id: &CaId, now: Timestamp) -> Result<(), PkiError> {
        let authority = self.authority();
        let ca = authority
            .all()
            .find(|c| c.id == *ca_id)
            .ok_or(PkiError::Inconsistent("CRL for an unknown CA"))?;

        let mut listed = self.revoked_by(ca_id, now).await?;
        // The index's order, whatever order the entries were kept in.
        listed.sort_by(|a, b| a.serial.cmp(&b.serial));
        let revoked = listed
            .into_iter()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&e.serial_bytes),
                revocation_time: e.revocation.at.to_offset(),
                reason_code: Some(e.revocation.reason.to_rcgen()),
                invalidity_date: None,
            })
            .collect();

        let previous = store::record::get::<CrlRecord>(&*self.store, ca_id.as_str()).await?;
        let last = previous.as_ref().map_or(0, |(_, c)| c.number);
        let number = (last + 1).max(u64::try_from(now.unix_millis()).unwrap_or(0));
        let this_update = Timestamp::from_unix(now.unix());
        let next_update = this_update.plus_secs(CRL_LIFETIME_SECS);
        let params = CertificateRevocationListParams {
            this_update: this_update.to_offset(),
            next_update: next_update.to_offset(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = ca.sign_crl(&params)?;
        let record = CrlRecord {
            ca: ca_id.clone(),
            number,
            this_update,
            next_update,
            der: crl,
        };
        let mut b = Batch::new();
        let expect = previous.map_or(Expect::Absent, |(rev, _)| Expect::Rev(rev));
        b.put_record(ca_id.as_str(), &record, expect)?;
        self.store.commit(b).await?;
        self.crls.write_locked().insert(ca_id.clone(), record);
        Ok(())
    }

    /// The current CRL of a CA (default: the current issuing CA).
    pub fn crl(&self, which: &CrlSelect, format: CrlFormat) -> Option<Vec<u8>> {
        let crls = self.crls.read_locked();
        let id = match which {
            CrlSelect::One(i) => i.clone(),
            CrlSelect::Current => self.authority().issuing.id.clone(),
            // Every CA's CRL, root included, as one PEM file (nginx's `ssl_crl`).
            CrlSelect::All => {
                return match format {
                    CrlFormat::Pem => Some(
                        crls.values()
                            .map(|c| pem("X509 CRL", &c.der))
                            .collect::<String>()
                            .into_bytes(),
                    ),
                    CrlFormat::Der => None,
                };
            }
        };
        let der = &crls.get(&id)?.der;
        Some(match format {
            CrlFormat::Der => der.clone(),
            CrlFormat::Pem => pem("X509 CRL", der).into_bytes(),
        })
    }

    /// Writes every CRL to the certs directory.
    pub(super) fn publish_crls(&self) -> Result<(), PkiError> {
        let crls: Vec<(CaId, String)> = self
            .crls
            .read_locked()
            .iter()
            .map(|(id, c)| (id.clone(), pem("X509 CRL", &c.der)))
            .collect();
        let current = self.authority().issuing.id.clone();
        let mut all = String::new();
        for (id, text) in &crls {
            self.publish(&format!("crl-{id}.pem"), text.as_bytes())?;
            if *id == current {
                self.publish("crl.pem", text.as_bytes())?;
            }
            all.push_str(text);
        }
        self.publish("crls.pem", all.as_bytes())
    }
}
