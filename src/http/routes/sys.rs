//! Health, readiness, the public CA bundle, and `whoami`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::{
    access::{Permission, authorize},
    http::{error::ApiError, extract::Authenticated, state::AppState},
    pki::identity::Identity,
};

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.store.healthy() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable"}))
    }
}

/// `GET /metrics` for `metrics:read` principals.
pub async fn metrics(auth: Authenticated) -> Result<HttpResponse, ApiError> {
    authorize(&auth.0, Permission::MetricsRead)?;
    Ok(metrics_response())
}

pub fn metrics_response() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

pub async fn whoami(auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let p = auth.0;
    let (kind, tenant, roles) = match &p.id.identity {
        Identity::Admin => ("admin", None, vec!["admin"]),
        Identity::Service { tenant, .. } => ("service", Some(tenant.as_str().to_owned()), vec![]),
    };
    Ok(HttpResponse::Ok().json(json!({
        "identity": p.id.uri(),
        "kind": kind,
        "tenant": tenant,
        "roles": roles,
        "serial": p.serial,
    })))
}
