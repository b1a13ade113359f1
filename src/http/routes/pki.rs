//! `/v1/pki`: the public CA bundle and CRLs, and CA rotation.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::{
    access::{Permission, authorize},
    http::{
        error::ApiError,
        extract::{Audited, Authenticated, Query, path_param},
        state::AppState,
    },
    ids::CaId,
    pki::{CrlFormat, CrlSelect},
};

/// The trust bundle; while sealed, from the public file in the certs directory.
pub async fn ca_bundle(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let pem = match state.try_core() {
        Some(core) => core.pki.ca_bundle_pem(),
        None => std::fs::read_to_string(&state.vault.paths.ca).map_err(|_| ApiError::Sealed)?,
    };
    Ok(HttpResponse::Ok()
        .content_type("application/pem-certificate-chain")
        .insert_header(("cache-control", "no-cache"))
        .body(pem))
}

/// `GET /v1/pki/crl?issuer=&format=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlQuery {
    /// A CA id, or `all` for every CA's CRL in one PEM file.
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    format: Option<Format>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Der,
    Pem,
}

pub async fn crl(state: web::Data<AppState>, q: Query<CrlQuery>) -> Result<HttpResponse, ApiError> {
    let format = match q.0.format {
        None | Some(Format::Der) => CrlFormat::Der,
        Some(Format::Pem) => CrlFormat::Pem,
    };
    let which = match q.0.issuer.as_deref() {
        None => CrlSelect::Current,
        Some("all") => {
            if matches!(format, CrlFormat::Der) {
                return Err(ApiError::bad(
                    "format",
                    "issuer=all needs format=pem (DER holds one CRL)",
                ));
            }
            CrlSelect::All
        }
        Some(id) => CrlSelect::One(path_param(id, "issuer", CaId::parse)?),
    };
    let body = match state.try_core() {
        Some(core) => core.pki.crl(&which, format).ok_or(ApiError::NotFound)?,
        // Sealed: the CRLs as last published to the certs directory.
        None => crate::pki::published_crl(&state.config.certs_dir, &which, format)
            .ok_or(ApiError::NotFound)?,
    };
    let ctype = match format {
        CrlFormat::Der => "application/pkix-crl",
        CrlFormat::Pem => "application/x-pem-file",
    };
    Ok(HttpResponse::Ok()
        .content_type(ctype)
        .insert_header(("cache-control", "no-cache"))
        .body(body))
}

/// `POST /v1/pki/rotate`: a new issuing CA.
pub async fn rotate(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::Admin)?;
    let id = core.pki.rotate_issuing(&*audit, state.clock.now()).await?;
    let a = core.pki.authority();
    Ok(HttpResponse::Created().json(json!({
        "issuing": id,
        "retired": a.retired.iter().map(|(c, until)| json!({"id": c.id, "until": until})).collect::<Vec<_>>(),
        "root": a.root.id,
    })))
}
