//! Health, readiness, the public CA bundle, and `whoami`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::{
    access::{Credential, Permission, authorize},
    http::{error::ApiError, extract::Authenticated, state::AppState},
    pki::identity::Identity,
};

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.try_core().is_some_and(|c| c.store.healthy()) {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable"}))
    }
}

/// `GET /metrics` for global `metrics:read` principals: the figures span every tenant, so a
/// tenant-scoped principal gets 403 (use the loopback listener for a local scraper).
pub async fn metrics(auth: Authenticated) -> Result<HttpResponse, ApiError> {
    match authorize(&auth.0, Permission::MetricsRead)? {
        crate::ids::TenantScope::All => Ok(metrics_response()),
        crate::ids::TenantScope::One(_) => Err(ApiError::Forbidden),
    }
}

pub fn metrics_response() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

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
    Ok(HttpResponse::Ok().json(json!({
        "identity": p.name(),
        "kind": kind,
        "tenant": p.tenant,
        "roles": p.roles,
        "permissions": p.permissions,
        "serial": serial,
    })))
}
