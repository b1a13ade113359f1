//! `/v1/apis/{id}/keys` and `/v1/keys/...`: the API-key lifecycle and verification.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use serde::Serialize;

use super::ListQuery;
use crate::{
    access::{Credential, Permission, authorize},
    http::{
        error::ApiError,
        extract::{Audited, Authenticated, Json, OptionalJson, Query, path_param},
        idempotency::{self, Reply},
        state::AppState,
    },
    ids::{ApiId, KeyId},
    keys::{CallerIdentity, KeyPatch, NewKey, RotateKey, VerifyRequest},
    metrics,
};

/// A key's metadata plus its secret: the one answer that carries it.
#[derive(Serialize)]
pub(super) struct WithSecret<'a, T: Serialize> {
    #[serde(flatten)]
    pub view: &'a T,
    pub key: &'a str,
}

pub async fn create(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    api_id: web::Path<String>,
    body: Json<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysCreate)?;
    let api_id = path_param(&api_id, "api_id", ApiId::parse)?;
    let idem = idempotency::key_from(&req)?;
    let now = state.clock.now();
    state
        .idempotency
        .run(&auth.0.name(), req.path(), idem, body.digest, || async {
            let (view, secret) = core
                .keys
                .issue_key(&*audit, &scope, &api_id, body.value, now)
                .await?;
            metrics::KEYS_ISSUED.inc();
            Reply::json(
                StatusCode::CREATED,
                &WithSecret {
                    view: &view,
                    key: secret.expose(),
                },
            )
        })
        .await
}

pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    api_id: web::Path<String>,
    q: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysRead)?;
    let api_id = path_param(&api_id, "api_id", ApiId::parse)?;
    let page = core
        .keys
        .list_keys(&scope, &api_id, &q.0.page()?, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysRead)?;
    let id = path_param(&id, "id", KeyId::parse)?;
    let view = core
        .keys
        .get_key(&scope, false, &id, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

pub async fn update(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: Json<KeyPatch>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysUpdate)?;
    let id = path_param(&id, "id", KeyId::parse)?;
    let view = core
        .keys
        .update_key(&*audit, &scope, false, &id, body.value, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

pub async fn rotate(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: OptionalJson<RotateKey>,
) -> Result<HttpResponse, ApiError> {
    let scope = authorize(&auth.0, Permission::KeysRotate)?;
    let id = path_param(&id, "id", KeyId::parse)?;
    rotate_in(&auth, &audit, &state, &req, &scope, false, &id, body).await
}

/// Rotation, shared by API keys and root keys.
#[allow(clippy::too_many_arguments)]
pub(super) async fn rotate_in(
    auth: &Authenticated,
    audit: &Audited,
    state: &web::Data<AppState>,
    req: &HttpRequest,
    scope: &crate::ids::TenantScope,
    root: bool,
    id: &KeyId,
    body: OptionalJson<RotateKey>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let idem = idempotency::key_from(req)?;
    let now = state.clock.now();
    let body = body.0;
    state
        .idempotency
        .run(&auth.0.name(), req.path(), idem, body.digest, || async {
            let (view, secret) = core
                .keys
                .rotate_key(&**audit, scope, root, id, body.value, now)
                .await?;
            metrics::KEYS_ISSUED.inc();
            let view = if root {
                serde_json::to_value(super::rootkeys::RootKeyView::from(&view))
            } else {
                serde_json::to_value(&view)
            }
            .map_err(|_| ApiError::Internal)?;
            Reply::json(
                StatusCode::CREATED,
                &WithSecret {
                    view: &view,
                    key: secret.expose(),
                },
            )
        })
        .await
}

/// `POST /v1/keys/{id}/revoke` takes no fields (an empty body or `{}`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {}

pub async fn revoke(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _body: OptionalJson<RevokeBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysRevoke)?;
    let id = path_param(&id, "id", KeyId::parse)?;
    let view = core
        .keys
        .revoke_key(&*audit, &scope, false, &id, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

pub async fn verify(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: Json<VerifyRequest>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysVerify)?;
    let caller = match &auth.0.credential {
        Credential::Cert {
            id, fingerprint, ..
        } => CallerIdentity {
            spiffe: Some(id.uri()),
            fingerprint: Some(format!("sha256:{fingerprint}")),
        },
        Credential::RootKey { .. } => CallerIdentity::default(),
    };
    let verdict = core
        .keys
        .verify(&scope, &body.value, &caller, state.clock.now())
        .await?;
    metrics::KEY_VERIFY
        .with_label_values(&[verdict.code.as_str()])
        .inc();
    Ok(HttpResponse::Ok().json(verdict))
}
