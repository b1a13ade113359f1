//! `/v1/pki`: the public CA bundle and CRLs, and CA rotation.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::{
    access::{Permission, authorize},
    clock::Timestamp,
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, Query, path_param},
        state::AppState,
    },
    ids::CaId,
    pki::{CrlFormat, CrlSelect},
};

/// The trust bundle; while sealed, from the public file in the certs directory.
#[utoipa::path(
    get, path = "/v1/pki/ca", tag = "pki", operation_id = "caBundle",
    responses((status = 200, description = "The trust bundle: the root and the issuing CAs, PEM.", body = String, content_type = "application/pem-certificate-chain")),
    security(()),
)]
pub async fn ca_bundle(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let pem = match state.try_core() {
        Some(core) => core.pki().ca_bundle_pem(),
        None => std::fs::read_to_string(&state.vault().paths.ca).map_err(|_| ApiError::Sealed)?,
    };
    Ok(HttpResponse::Ok()
        .content_type("application/pem-certificate-chain")
        .insert_header(("cache-control", "no-cache"))
        .body(pem))
}

/// `GET /v1/pki/crl?issuer=&format=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CrlQuery {
    /// A CA id, or `all` for every CA's CRL in one PEM file.
    #[serde(default)]
    #[param(pattern = "^(all|ca_[0-9A-Za-z]{17,32})$")]
    issuer: Option<String>,
    #[serde(default)]
    #[param(inline)]
    format: Option<Format>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    Der,
    Pem,
}

#[utoipa::path(
    get, path = "/v1/pki/crl", tag = "pki", operation_id = "crl",
    params(CrlQuery),
    responses(
        (status = 200, description = "The CRL: DER (`application/pkix-crl`) by default, PEM with `format=pem`; `issuer=all` gives every CA's CRL in one PEM file (nginx's `ssl_crl` needs the whole chain's). Refresh before `nextUpdate`.",
            content(
                (Vec<u8> = "application/pkix-crl"),
                (String = "application/x-pem-file"),
            )),
        (status = 404, description = "No CA has this id.", body = ErrorBody),
    ),
    security(()),
)]
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
        Some(core) => core.pki().crl(&which, format).ok_or(ApiError::NotFound)?,
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

/// The answer to a CA rotation.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CaRotation {
    /// The new issuing CA.
    issuing: CaId,
    /// Earlier issuing CAs, still publishing CRLs until their last certificate expires.
    retired: Vec<RetiredCa>,
    root: CaId,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RetiredCa {
    id: CaId,
    until: Timestamp,
}

/// `POST /v1/pki/rotate`: a new issuing CA.
#[utoipa::path(
    post, path = "/v1/pki/rotate", tag = "pki", operation_id = "rotateCa",
    responses((status = 201, description = "A new issuing CA; the old one signs CRLs until its certificates expire.", body = CaRotation)),
)]
pub async fn rotate(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::Admin)?;
    let id = core
        .pki()
        .rotate_issuing(&*audit, state.clock.now())
        .await?;
    let a = core.pki().authority();
    Ok(HttpResponse::Created().json(CaRotation {
        issuing: id,
        retired: a
            .retired
            .iter()
            .map(|(c, until)| RetiredCa {
                id: c.id.clone(),
                until: *until,
            })
            .collect(),
        root: a.root.id.clone(),
    }))
}
