//! `/v1/audit`: reading the audit log, checking its chain, signed checkpoints.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::{
    access::{Permission, authorize},
    audit::{Checkpoint, EntryView, Report},
    http::{
        error::ApiError,
        extract::{Authenticated, Query},
        state::AppState,
    },
    page::{DEFAULT_LIMIT, MAX_LIMIT, Page},
};

/// `GET /v1/audit?after_seq=&limit=` (`cursor` is accepted as a synonym of `after_seq`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    after_seq: Option<u64>,
    #[serde(default)]
    cursor: Option<u64>,
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
}

#[utoipa::path(
    get, path = "/v1/audit", tag = "audit", operation_id = "listAudit",
    params(AuditQuery),
    responses((status = 200, description = "Entries after `after_seq`, oldest first; `next_cursor` is the last seq of a full page.", body = Page<EntryView>)),
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
    let after = q.0.after_seq.or(q.0.cursor).unwrap_or(0);
    let (items, last) = core.audit.list_scoped(&scope, after, limit).await?;
    let next = (items.len() == limit)
        .then(|| last.map(|s| s.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(Page {
        items,
        next_cursor: next,
    }))
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
    authorize(&auth.0, Permission::AuditRead)?;
    let report = core.audit.verify(None).await?;
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
    authorize(&auth.0, Permission::AuditRead)?;
    let cp = match core.audit.latest_checkpoint().await? {
        Some(cp) if !q.0.fresh => cp,
        _ => core
            .audit
            .checkpoint(state.clock.now())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "checkpoint failed");
                ApiError::Internal
            })?,
    };
    Ok(HttpResponse::Ok().json(cp))
}
