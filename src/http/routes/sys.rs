//! Health, readiness, the public CA bundle, and `whoami`.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::{
    access::PermSet,
    access::{Credential, Permission, authorize},
    http::{error::ApiError, extract::Authenticated, state::AppState},
    identity::{Identity, Serial},
    ids::TenantName,
};

/// `/healthz` and `/readyz`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    status: &'static str,
}

/// The caller as Tessera sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Whoami {
    /// The SPIFFE id, or the root key's id.
    identity: String,
    /// `admin`, `service` or `root_key`.
    kind: &'static str,
    /// The tenant it acts in; `null` for the global admin.
    tenant: Option<TenantName>,
    roles: Vec<String>,
    permissions: PermSet,
    /// The serial of the client certificate it presented.
    serial: Option<Serial>,
}

#[utoipa::path(
    get, path = "/healthz", tag = "health", operation_id = "healthz",
    responses((status = 200, description = "The process is up.", body = Health)),
    security(()),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[utoipa::path(
    get, path = "/readyz", tag = "health", operation_id = "readyz",
    responses(
        (status = 200, description = "Unsealed, and the store takes writes.", body = Health),
        (status = 503, description = "Sealed, or the store cannot take writes.", body = Health),
    ),
    security(()),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.try_core().is_some_and(|c| c.store().healthy()) {
        HttpResponse::Ok().json(Health { status: "ready" })
    } else {
        HttpResponse::ServiceUnavailable().json(Health {
            status: "unavailable",
        })
    }
}

/// `GET /metrics` for global `metrics:read` principals: the figures span every tenant, so a
/// tenant-scoped principal gets 403 (use the loopback listener for a local scraper).
#[utoipa::path(
    get, path = "/metrics", tag = "health", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format (global `metrics:read`).", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
)]
pub async fn metrics(auth: Authenticated) -> Result<HttpResponse, ApiError> {
    match authorize(&auth.0, Permission::MetricsRead)? {
        crate::ids::TenantScope::All => Ok(metrics_response()),
        // Metrics span every tenant: a tenant's metrics:read does not open them.
        crate::ids::TenantScope::One(_) => Err(ApiError::Forbidden {
            message: "not allowed: this needs the permission metrics:read in the global scope"
                .into(),
            permission: Some(crate::access::Permission::MetricsRead.as_str()),
        }),
    }
}

pub fn metrics_response() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

#[utoipa::path(
    get, path = "/v1/whoami", tag = "health", operation_id = "whoami",
    responses((status = 200, description = "Who the caller is and what it may do.", body = Whoami)),
)]
pub async fn whoami(auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let p = auth.0;
    let (kind, serial) = match &p.credential {
        Credential::Cert { id, serial, .. } => (
            if id.identity == Identity::Admin {
                "admin"
            } else {
                "service"
            },
            Some(serial.clone()),
        ),
        Credential::RootKey { .. } => ("root_key", None),
    };
    Ok(HttpResponse::Ok().json(Whoami {
        identity: p.name(),
        kind,
        tenant: p.tenant,
        roles: p.roles,
        permissions: p.permissions,
        serial,
    }))
}
