//! `/v1/audit`: reading the audit log, checking its chain, signed checkpoints.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::{
    access::{Denied, Permission, authorize},
    audit::{Checkpoint, EntryView, Report},
    http::{
        error::ApiError,
        extract::{Authenticated, Query},
        state::AppState,
    },
    ids::TenantScope,
    page::{DEFAULT_LIMIT, MAX_LIMIT, Page},
};

/// `GET /v1/audit?after_seq=&cursor=&limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The global admin only: entries after this sequence number.
    #[serde(default)]
    after_seq: Option<u64>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
}

/// An audit entry as `GET /v1/audit` shows it. The global admin also sees its place in the
/// chain (`seq`, `hash`, `prev_hash`); a tenant-scoped reader does not (the global chain's
/// positions would tell one tenant how busy the others are).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The global admin only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// SHA-256 over the previous hash and the canonical event, hex (the global admin only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The global admin only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    pub time: crate::clock::Timestamp,
    pub request_id: String,
    pub principal: String,
    pub tenant: Option<String>,
    pub action: String,
    pub object: Option<String>,
    pub outcome: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEntry {
    /// The entry with (`chain`) or without its place in the chain.
    fn of(e: EntryView, chain: bool) -> Self {
        let (seq, hash, prev_hash) = if chain {
            (Some(e.seq), Some(e.hash), Some(e.prev_hash))
        } else {
            (None, None, None)
        };
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

#[utoipa::path(
    get, path = "/v1/audit", tag = "audit", operation_id = "listAudit",
    params(AuditQuery),
    responses((status = 200, description = "Entries oldest first. The global admin pages by sequence number (`after_seq`, or `cursor` = the last seq of a full page) and sees each entry's place in the chain; a tenant-scoped reader sees its tenant's entries only, without chain positions, and pages with the opaque `next_cursor`.", body = Page<AuditEntry>)),
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::AuditRead)?;
    let limit = match q.0.limit {
        None => DEFAULT_LIMIT,
        Some(l) if (1..=MAX_LIMIT as u64).contains(&l) => l as usize,
        Some(_) => return Err(ApiError::bad("limit", "must be between 1 and 100")),
    };
    match scope {
        TenantScope::All => {
            let after = match (q.0.after_seq, q.0.cursor.as_deref()) {
                (Some(s), _) => s,
                (None, Some(c)) => c
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad("cursor", "must be a next_cursor from this list"))?,
                (None, None) => 0,
            };
            let items = core.audit().list(after, limit).await?;
            let next = (items.len() == limit)
                .then(|| items.last().map(|e| e.seq.to_string()))
                .flatten();
            Ok(HttpResponse::Ok().json(Page {
                items: items
                    .into_iter()
                    .map(|e| AuditEntry::of(e, true))
                    .collect::<Vec<_>>(),
                next_cursor: next,
            }))
        }
        TenantScope::One(tenant) => {
            if q.0.after_seq.is_some() {
                return Err(ApiError::bad(
                    "after_seq",
                    "may only be used by the global admin; page with cursor",
                ));
            }
            let (items, last) = core
                .audit()
                .list_tenant(&tenant, q.0.cursor.as_deref(), limit)
                .await
                .map_err(|e| match e {
                    Some(e) => ApiError::from(e),
                    None => ApiError::bad("cursor", "must be a next_cursor from this list"),
                })?;
            let next = (items.len() == limit).then_some(last).flatten();
            Ok(HttpResponse::Ok().json(Page {
                items: items
                    .into_iter()
                    .map(|e| AuditEntry::of(e, false))
                    .collect::<Vec<_>>(),
                next_cursor: next,
            }))
        }
    }
}

/// The chain's checks and checkpoints describe the whole log (its length, its head): the
/// global admin's, never a tenant's.
fn global_auditor(auth: &Authenticated) -> Result<(), ApiError> {
    match authorize(&auth.0, Permission::AuditRead)? {
        TenantScope::All => Ok(()),
        TenantScope::One(_) => Err(Denied::Forbidden(Permission::Admin).into()),
    }
}

#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit", operation_id = "verifyAudit",
    responses((status = 200, description = "The whole chain checked.", body = Report)),
)]
pub async fn verify(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    global_auditor(&auth)?;
    let report = core.audit().verify(None).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// `GET /v1/audit/checkpoint?fresh=true` signs the current head now.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CheckpointQuery {
    #[serde(default)]
    fresh: bool,
}

#[utoipa::path(
    get, path = "/v1/audit/checkpoint", tag = "audit", operation_id = "auditCheckpoint",
    params(CheckpointQuery),
    responses((status = 200, description = "The latest signed checkpoint (or a fresh one) with the audit public key.", body = Checkpoint)),
)]
pub async fn checkpoint(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<CheckpointQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    global_auditor(&auth)?;
    let cp = match core.audit().latest_checkpoint().await? {
        Some(cp) if !q.0.fresh => cp,
        _ => core
            .audit()
            .checkpoint(state.clock.now())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "checkpoint failed");
                ApiError::Internal
            })?,
    };
    Ok(HttpResponse::Ok().json(cp))
}
