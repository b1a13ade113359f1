//! The tamper-evident audit log.
//!
//! Every mutation, every authentication or authorisation failure and every admin operation
//! writes one entry `{seq, time, request_id, principal, tenant, action, object, outcome,
//! source}`. A successful change writes its entry in the same atomic batch as the change
//! (through [`Recorder`]), so there is no change without its entry; refusals and failures are
//! written on their own. Entries are hash-chained by the store's log primitive
//! (`store::log`): each entry's hash covers the previous one and the entry's canonical body.
//!
//! **Canonical body**: the entry as compact JSON (no whitespace), with exactly the fields of
//! [`Event`] in declaration order (`time, request_id, principal, tenant, action, object,
//! outcome, source`, then `detail` when present), strings escaped as JSON requires. The hash is
//! `SHA-256("tessera-log-v1" || prev_hash || seq as u64 big-endian || body)`.
//!
//! Secrets never appear: objects are ids; a credential that failed is named by its
//! certificate serial or by an HMAC, never by its value.

mod checkpoint;
pub mod refusals;
pub mod sink;
mod verify;

use crate::sync::Locked;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    crypto::{hex, secret::SecretBytes},
    ids::TenantName,
    store::{self, Batch, Expect, IndexName, Kind, Record, Recorder, Store, StoreError},
};

pub use checkpoint::{Checkpoint, CheckpointError, stored_public_key};
pub use verify::{Report, check};

/// The audit log's kind in the store.
pub const LOG: Kind = Kind("audit");

/// `<tenant>/<seq, 20 digits>` -> seq: each tenant's entries, written with the entry, so a
/// tenant's reader scans its own entries only and never learns the global chain's length.
pub const IDX_BY_TENANT: IndexName = IndexName("audit_by_tenant");

/// How far the tenant index was built from entries written before it existed.
#[derive(Debug, Serialize, Deserialize)]
struct TenantIndexBuilt {
    upto: u64,
}

impl Record for TenantIndexBuilt {
    const KIND: Kind = Kind("audit_meta");
}

const TENANT_INDEX_BUILT: &str = "tenant_index";

fn tenant_prefix(tenant: &str) -> Vec<u8> {
    format!("{tenant}/").into_bytes()
}

/// Appends an event to the log in `batch`, indexed under its tenant when it has one.
pub fn append(batch: &mut Batch, event: &Event) -> Result<(), StoreError> {
    let body = event.canonical()?;
    match &event.tenant {
        Some(t) => batch.append_indexed(LOG, body, IDX_BY_TENANT, &tenant_prefix(t)),
        None => batch.append(LOG, body),
    }
}

/// One audit entry's content (its canonical body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub time: Timestamp,
    pub request_id: String,
    /// The SPIFFE id of the caller, `cert:<serial>` for a certificate that was refused, or
    /// `anonymous`.
    pub principal: String,
    pub tenant: Option<String>,
    /// `<METHOD> <route pattern>`, e.g. `POST /v1/apis/{id}/keys`, or a system action.
    pub action: String,
    /// The id of the object acted on, when there is one.
    pub object: Option<String>,
    /// `success`, `unauthenticated`, `denied`, `invalid`, `not_found`, `conflict`,
    /// `rate_limited`, `unavailable`, `error`.
    pub outcome: String,
    /// The source address.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// The canonical body that is hashed and stored.
    pub fn canonical(&self) -> Result<SecretBytes, StoreError> {
        let mut buf = SecretBytes::with_capacity(512);
        serde_json::to_writer(buf.expose_mut(), self).map_err(|_| StoreError::Crypto)?;
        Ok(buf)
    }
}

/// An entry as `GET /v1/audit` shows it: its place in the chain and its event's fields.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    pub seq: u64,
    /// SHA-256 over the previous hash and the canonical event, hex.
    pub hash: String,
    pub prev_hash: String,
    pub time: Timestamp,
    pub request_id: String,
    /// The SPIFFE id of the caller, `cert:<serial>` for a refused certificate, a root key's
    /// id, `system` or `anonymous`.
    pub principal: String,
    pub tenant: Option<String>,
    pub action: String,
    pub object: Option<String>,
    pub outcome: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EntryView {
    fn new(seq: u64, hash: String, prev_hash: String, e: Event) -> Self {
        Self {
            seq,
            hash,
            prev_hash,
            time: e.time,
            request_id: e.request_id,
            principal: e.principal,
            tenant: e.tenant,
            action: e.action,
            object: e.object,
            outcome: e.outcome,
            source: e.source,
            detail: e.detail,
        }
    }
}

/// The outcome name for an HTTP status.
pub fn outcome_of(status: u16) -> &'static str {
    match status {
        200..=299 => "success",
        401 => "unauthenticated",
        403 => "denied",
        404 => "not_found",
        409 => "conflict",
        429 => "rate_limited",
        503 => "unavailable",
        400..=499 => "invalid",
        _ => "error",
    }
}

/// The audit context of one request: who, from where, doing what. Domain services record the
/// entry for a successful change through it, in the change's own batch.
pub struct AuditContext {
    base: std::sync::RwLock<Event>,
    recorded: AtomicBool,
}

impl AuditContext {
    pub fn new(base: Event) -> Arc<Self> {
        Arc::new(Self {
            base: std::sync::RwLock::new(base),
            recorded: AtomicBool::new(false),
        })
    }

    /// A context for an action of Tessera itself (start-up, offline commands, timers).
    pub fn system(action: &str, now: Timestamp) -> Arc<Self> {
        Self::new(Event {
            time: now,
            request_id: String::new(),
            principal: "system".into(),
            tenant: None,
            action: action.to_owned(),
            object: None,
            outcome: "success".into(),
            source: "local".into(),
            detail: None,
        })
    }

    /// Names the authenticated principal (authentication may finish after the context was
    /// created).
    pub fn set_principal(&self, name: String, tenant: Option<String>) {
        let mut b = self.base.write_locked();
        b.principal = name;
        if b.tenant.is_none() {
            b.tenant = tenant;
        }
    }

    /// Sets the detail of the entries recorded from now on (never a secret).
    pub fn set_detail(&self, detail: Option<String>) {
        self.base.write_locked().detail = detail;
    }

    /// Whether a change was recorded through this context.
    pub fn recorded(&self) -> bool {
        self.recorded.load(Ordering::SeqCst)
    }

    /// The entry for this request with another outcome.
    pub fn event(&self, outcome: &str, object: Option<String>) -> Event {
        let base = self.base.read_locked().clone();
        Event {
            outcome: outcome.to_owned(),
            object: object.or_else(|| base.object.clone()),
            ..base
        }
    }
}

impl AuditContext {
    /// [`Recorder::record`], with the principal named as `principal` instead of the
    /// request's (an entry written into another tenant's log, which must not name this one's
    /// principals).
    pub fn record_as(
        &self,
        batch: &mut Batch,
        object: &str,
        tenant: Option<&TenantName>,
        principal: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut e = self.event("success", Some(object.to_owned()));
        if let Some(t) = tenant {
            e.tenant = Some(t.as_str().to_owned());
        }
        if let Some(p) = principal {
            p.clone_into(&mut e.principal);
        }
        append(batch, &e)?;
        self.recorded.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl Recorder for AuditContext {
    fn record(
        &self,
        batch: &mut Batch,
        object: &str,
        tenant: Option<&TenantName>,
    ) -> Result<(), StoreError> {
        self.record_as(batch, object, tenant, None)
    }
}

/// The audit service: standalone entries, reading, verification, checkpoints.
pub struct Audit {
    store: Arc<dyn Store>,
    signer: checkpoint::Signer,
    /// Seals tenant cursors: a position in the tenant index holds the global sequence number,
    /// which a tenant must not learn.
    keyring: Arc<crate::crypto::keyring::Keyring>,
}

/// Associated data of a sealed tenant cursor: it opens only for the tenant it was made for.
fn cursor_aad(tenant: &TenantName) -> Vec<u8> {
    format!("tessera/audit-cursor/v1/{}", tenant.as_str()).into_bytes()
}

impl Audit {
    /// Opens the audit log, creating its checkpoint-signing key on first use.
    pub async fn open(
        store: Arc<dyn Store>,
        keyring: Arc<crate::crypto::keyring::Keyring>,
    ) -> Result<Self, CheckpointError> {
        let signer = checkpoint::Signer::load_or_create(&*store).await?;
        let audit = Self {
            store,
            signer,
            keyring,
        };
        audit.build_tenant_index().await?;
        Ok(audit)
    }

    /// Indexes by tenant the entries written before the tenant index existed (once; new
    /// entries are indexed as they are written).
    async fn build_tenant_index(&self) -> Result<(), StoreError> {
        let found =
            store::record::get::<TenantIndexBuilt>(&*self.store, TENANT_INDEX_BUILT).await?;
        if found.is_some() {
            return Ok(());
        }
        let head = self.store.log_head(LOG).await?;
        let mut after = 0;
        while after < head.seq {
            let page = self.list(after, 1000).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            let mut b = Batch::new();
            for e in page.iter().filter(|e| e.seq <= head.seq) {
                if let Some(t) = &e.tenant {
                    let mut k = tenant_prefix(t);
                    let id = store::log::entry_id(e.seq);
                    k.extend_from_slice(id.as_bytes());
                    b.index_put(IDX_BY_TENANT, &k, &id, false);
                }
            }
            if !b.is_empty() {
                self.store.commit(b).await?;
            }
            after = last;
        }
        let mut b = Batch::new();
        b.put_record(
            TENANT_INDEX_BUILT,
            &TenantIndexBuilt { upto: head.seq },
            Expect::Absent,
        )?;
        match self.store.commit(b).await {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes one entry on its own (refusals, failures, system events).
    pub async fn write(&self, event: &Event) -> Result<(), StoreError> {
        let mut b = Batch::new();
        append(&mut b, event)?;
        self.store.commit(b).await?;
        crate::metrics::AUDIT_ENTRIES.inc();
        Ok(())
    }

    /// Writes several entries in one durable batch (the refusal tallies of a window).
    pub async fn write_all(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut b = Batch::new();
        for e in events {
            append(&mut b, e)?;
        }
        if b.is_empty() {
            return Ok(());
        }
        self.store.commit(b).await?;
        crate::metrics::AUDIT_ENTRIES.inc_by(events.len() as u64);
        Ok(())
    }

    /// One tenant's entries, oldest first, after `cursor` (a `next_cursor` this gave the same
    /// tenant), at most `limit`; returns them and the cursor of the last one. Reads only that
    /// tenant's entries, whatever the others wrote. The cursor is sealed (AEAD under the
    /// current data key, bound to the tenant): it is opaque, so it tells nothing of the global
    /// chain. `Err(None)` for a cursor that does not open.
    pub async fn list_tenant(
        &self,
        tenant: &TenantName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<EntryView>, Option<String>), Option<StoreError>> {
        let after = match cursor {
            Some(c) => Some(self.open_cursor(tenant, c).ok_or(None)?),
            None => None,
        };
        let prefix = tenant_prefix(tenant.as_str());
        let entries = self
            .store
            .scan(IDX_BY_TENANT, &prefix, after.as_deref(), limit)
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        let mut last = None;
        for e in entries {
            let seq: u64 = e.id.parse().map_err(|_| StoreError::Corrupt {
                kind: LOG.0,
                id: e.id.clone(),
            })?;
            if let Some(v) = self
                .list(seq.saturating_sub(1), 1)
                .await?
                .into_iter()
                .next()
                && v.seq == seq
                && v.tenant.as_deref() == Some(tenant.as_str())
            {
                out.push(v);
            }
            last = Some(e.key);
        }
        let next = match last {
            Some(k) => Some(self.seal_cursor(tenant, &k)?),
            None => None,
        };
        Ok((out, next))
    }

    fn seal_cursor(&self, tenant: &TenantName, position: &[u8]) -> Result<String, StoreError> {
        let nonce = crate::crypto::random::bytes::<{ crate::crypto::aead::NONCE_BYTES }>()
            .map_err(|_| StoreError::Crypto)?;
        let (version, sealed) = self.keyring.seal(nonce, &cursor_aad(tenant), position);
        let mut out = version.to_be_bytes().to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(hex::encode(&out))
    }

    fn open_cursor(&self, tenant: &TenantName, cursor: &str) -> Option<Vec<u8>> {
        const N: usize = crate::crypto::aead::NONCE_BYTES;
        if cursor.len() > 512 {
            return None;
        }
        let raw = hex::decode(cursor)?;
        if raw.len() < 4 + N + crate::crypto::aead::TAG_BYTES {
            return None;
        }
        let version = u32::from_be_bytes(raw[..4].try_into().ok()?);
        let nonce: [u8; N] = raw[4..4 + N].try_into().ok()?;
        let position = self
            .keyring
            .open(version, nonce, &cursor_aad(tenant), &raw[4 + N..])
            .ok()?;
        // A position inside this tenant's part of the index (the AAD binds the tenant).
        Some(position.expose().to_vec())
    }

    /// Entries after `after`, at most `limit`.
    pub async fn list(&self, after: u64, limit: usize) -> Result<Vec<EntryView>, StoreError> {
        let mut out = Vec::new();
        for r in self.store.read_log(LOG, after, limit).await? {
            let e = r.entry?;
            let event: Event =
                serde_json::from_slice(&e.body).map_err(|_| StoreError::Corrupt {
                    kind: LOG.0,
                    id: e.seq.to_string(),
                })?;
            out.push(EntryView::new(
                e.seq,
                hex::encode(&e.hash),
                hex::encode(&e.prev_hash),
                event,
            ));
        }
        Ok(out)
    }

    /// The audit public key (hex), for pinning checkpoints.
    pub fn public_key_hex(&self) -> String {
        self.signer.public_key_hex()
    }
}
