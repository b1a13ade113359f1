//! `/v1/apis/{api_id}/keys` and `/v1/keys/...`: the API-key lifecycle and verification.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use std::borrow::Cow;

use serde::Serialize;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{AllOfBuilder, ObjectBuilder, Ref, RefOr, Schema, schema::Type},
};

use super::ListQuery;
use crate::page::Page;
use crate::{
    access::{Credential, Permission, authorize},
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, Json, KeysOf, OptionalJson, Query, Seg},
        idempotency::{self, Reply},
        state::AppState,
    },
    ids::{ApiId, KeyId},
    keys::{
        CallerIdentity, KeyKind, KeyPatch, NewKey, RotateKey, Verdict, VerifyRequest,
        model::KeyView,
    },
    metrics,
};

/// A key's metadata plus its secret: the one answer that carries it.
#[derive(Serialize)]
pub(super) struct WithSecret<'a, T: Serialize> {
    #[serde(flatten)]
    pub view: &'a T,
    pub key: &'a str,
}

/// A new API key's answer.
pub(super) type KeyWithSecret<'a> = WithSecret<'a, KeyView>;

impl<T: Serialize + ToSchema> PartialSchema for WithSecret<'_, T> {
    fn schema() -> RefOr<Schema> {
        let key = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "The key itself. Shown this once: Tessera keeps only its HMAC.",
            ));
        AllOfBuilder::new()
            .item(Ref::from_schema_name(T::name()))
            .item(ObjectBuilder::new().property("key", key).required("key"))
            .into()
    }
}

impl<T: Serialize + ToSchema> ToSchema for WithSecret<'_, T> {
    fn name() -> Cow<'static, str> {
        Cow::Owned(format!("{}WithSecret", T::name()))
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(schemas);
    }
}

#[utoipa::path(
    post, path = "/v1/apis/{api_id}/keys", tag = "keys", operation_id = "createKey",
    params(("api_id" = ApiId, Path, description = "The API the key is for."), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe: the same key, caller and route within 10 minutes returns the first answer.")),
    request_body = NewKey,
    responses(
        (status = 201, description = "The key's metadata and, once, the key itself (`key`).", body = KeyWithSecret,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 409, description = "The Idempotency-Key was used with another request, or its first request is in progress.", body = ErrorBody),
    ),
)]
pub async fn create(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    api_id: Seg<KeysOf>,
    body: Json<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysCreate)?;
    let api_id = &api_id.0.0;
    let idem = idempotency::key_from(&req)?;
    let now = state.clock.now();
    state
        .idempotency
        .run(
            &core,
            &auth.0.name(),
            req.path(),
            idem,
            body.digest,
            now,
            || async {
                let (view, secret) = core
                    .keys()
                    .issue_key(&*audit, &scope, api_id, body.value, now)
                    .await?;
                metrics::KEYS_ISSUED.inc();
                Reply::json(
                    StatusCode::CREATED,
                    &WithSecret {
                        view: &view,
                        key: secret.expose(),
                    },
                )
            },
        )
        .await
}

#[utoipa::path(
    get, path = "/v1/apis/{api_id}/keys", tag = "keys", operation_id = "listKeys",
    params(("api_id" = ApiId, Path, description = "The API whose keys to list."), ListQuery),
    responses((status = 200, description = "One page of the API's keys (metadata only).", body = Page<KeyView>)),
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    api_id: Seg<KeysOf>,
    q: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysRead)?;
    let api_id = &api_id.0.0;
    let page = core
        .keys()
        .list_keys(&scope, api_id, &q.0.page()?, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "keys", operation_id = "getKey",
    params(("id" = KeyId, Path, description = "The key's id.")),
    responses((status = 200, description = "The key's metadata (never the secret).", body = KeyView)),
)]
pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
    id: Seg<KeyId>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysRead)?;
    let view = core
        .keys()
        .get_key(&scope, KeyKind::Api, &id, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "keys", operation_id = "updateKey",
    params(("id" = KeyId, Path, description = "The key's id.")),
    request_body = KeyPatch,
    responses(
        (status = 200, description = "The key, changed.", body = KeyView),
        (status = 409, description = "The key is revoked, or a concurrent change won.", body = ErrorBody),
    ),
)]
pub async fn update(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    id: Seg<KeyId>,
    body: Json<KeyPatch>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysUpdate)?;
    let view = core
        .keys()
        .update_key(
            &*audit,
            &scope,
            KeyKind::Api,
            &id,
            body.value,
            state.clock.now(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "keys", operation_id = "rotateKey",
    params(("id" = KeyId, Path, description = "The key's id."), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe: the same key, caller and route within 10 minutes returns the first answer.")),
    request_body(content = Option<RotateKey>, description = "Optional: an empty body rotates with no grace."),
    responses(
        (status = 201, description = "The replacement key's metadata and, once, the new key (`key`).", body = KeyWithSecret,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 409, description = "The key is revoked, expired or already replaced, or the Idempotency-Key clashes.", body = ErrorBody),
    ),
)]
pub async fn rotate(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: Seg<KeyId>,
    body: OptionalJson<RotateKey>,
) -> Result<HttpResponse, ApiError> {
    let scope = authorize(&auth.0, Permission::KeysRotate)?;
    rotate_in(&auth, &audit, &state, &req, &scope, KeyKind::Api, &id, body).await
}

/// Rotation, shared by API keys and root keys.
#[allow(clippy::too_many_arguments)]
pub(super) async fn rotate_in(
    auth: &Authenticated,
    audit: &Audited,
    state: &web::Data<AppState>,
    req: &HttpRequest,
    scope: &crate::ids::TenantScope,
    kind: KeyKind,
    id: &KeyId,
    body: OptionalJson<RotateKey>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let idem = idempotency::key_from(req)?;
    let now = state.clock.now();
    let body = body.0;
    state
        .idempotency
        .run(
            &core,
            &auth.0.name(),
            req.path(),
            idem,
            body.digest,
            now,
            || async {
                let (view, secret) = core
                    .keys()
                    .rotate_key(&**audit, scope, kind, id, body.value, now)
                    .await?;
                metrics::KEYS_ISSUED.inc();
                let key = secret.expose();
                if kind == KeyKind::Root {
                    let view = &super::rootkeys::RootKeyView::from(&view);
                    Reply::json(StatusCode::CREATED, &WithSecret { view, key })
                } else {
                    Reply::json(StatusCode::CREATED, &WithSecret { view: &view, key })
                }
            },
        )
        .await
}

/// `POST /v1/keys/{id}/revoke` takes no fields (an empty body or `{}`).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = KeyRevokeBody)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {}

#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", tag = "keys", operation_id = "revokeKey",
    params(("id" = KeyId, Path, description = "The key's id.")),
    request_body(content = Option<RevokeBody>, description = "Optional: no fields."),
    responses(
        (status = 200, description = "The key, revoked (revoking twice is not an error).", body = KeyView),
        (status = 409, description = "A concurrent change won.", body = ErrorBody),
    ),
)]
pub async fn revoke(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    id: Seg<KeyId>,
    _body: OptionalJson<RevokeBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::KeysRevoke)?;
    let view = core
        .keys()
        .revoke_key(&*audit, &scope, KeyKind::Api, &id, None, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(
    post, path = "/v1/keys/verify", tag = "keys", operation_id = "verifyKey",
    request_body = VerifyRequest,
    responses((status = 200, description = "The verdict: `valid` and a `code`. A key that is not valid is still a 200.", body = Verdict)),
)]
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
        .keys()
        .verify(&scope, &body.value, &caller, state.clock.now())
        .await?;
    metrics::KEY_VERIFY
        .with_label_values(&[verdict.code.as_str()])
        .inc();
    Ok(HttpResponse::Ok().json(verdict))
}
