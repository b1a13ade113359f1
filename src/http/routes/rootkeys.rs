//! `/v1/root-keys`: management credentials for portals and scripts. A root key is an API key
//! (`tsr_` prefix) bound to one tenant whose scopes are its permissions; it is stored,
//! verified, rotated and revoked by the same code as every key.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use serde::{Deserialize, Serialize};

use super::{
    ListQuery,
    keys::{RevokeBody, WithSecret, rotate_in},
};
use crate::{
    access::{
        PermSet, Permission, authorize, may_act_on, may_grant, root_key_permissions, target_tenant,
    },
    clock::Timestamp,
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, Json, OptionalJson, Query, Seg},
        idempotency::{self, Reply},
        state::AppState,
    },
    ids::{KeyId, TenantName},
    keys::{
        KeyKind, NewRootKey, RotateKey,
        model::{KeyView, Rotation, Scope, Scopes, Text},
    },
    page::Page,
};

/// `POST /v1/root-keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "portal", "permissions": ["apis:read", "keys:create", "keys:read"], "ttl_seconds": 7776000}))]
pub struct NewRootKeyBody {
    /// Only the global admin names the tenant (default `default`).
    #[serde(default)]
    tenant: Option<TenantName>,
    #[serde(default)]
    name: Option<Text<200>>,
    permissions: PermSet,
    #[serde(default)]
    expires_at: Option<Timestamp>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    ttl_seconds: Option<u64>,
}

/// A new root key's answer.
type RootKeyWithSecret<'a> = WithSecret<'a, RootKeyView>;

/// A root key as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RootKeyView {
    id: KeyId,
    tenant: TenantName,
    name: Option<Text<200>>,
    start: String,
    permissions: Scopes,
    state: &'static str,
    created_at: Timestamp,
    updated_at: Timestamp,
    expires_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
    last_used_at: Option<Timestamp>,
    rotation: Option<Rotation>,
}

impl From<&KeyView> for RootKeyView {
    fn from(k: &KeyView) -> Self {
        Self {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            name: k.name.clone(),
            start: k.start.clone(),
            permissions: k.scopes.clone(),
            state: k.state,
            created_at: k.created_at,
            updated_at: k.updated_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
            rotation: k.rotation.clone(),
        }
    }
}

#[utoipa::path(
    post, path = "/v1/root-keys", tag = "root-keys", operation_id = "createRootKey",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe: the same key, caller and route within 10 minutes returns the first answer.")),
    request_body = NewRootKeyBody,
    responses(
        (status = 201, description = "The root key's metadata and, once, the key itself (`key`).", body = RootKeyWithSecret,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 409, description = "The Idempotency-Key was used with another request, or its first request is in progress.", body = ErrorBody),
    ),
)]
pub async fn create(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<NewRootKeyBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::TenantsAdmin)?;
    let idem = idempotency::key_from(&req)?;
    let digest = body.digest;
    let b = body.value;
    let tenant = target_tenant(&auth.0, b.tenant).map_err(|m| ApiError::bad("tenant", m))?;
    if core.access().tenant(&tenant).await?.is_none() {
        return Err(ApiError::bad("tenant", "must name an existing tenant"));
    }
    if b.permissions.contains(Permission::Admin) {
        return Err(ApiError::bad(
            "permissions",
            "must not include admin: root keys act within one tenant",
        ));
    }
    if b.permissions == PermSet::EMPTY {
        return Err(ApiError::bad("permissions", "must not be empty"));
    }
    may_grant(&auth.0, b.permissions)?;
    let scopes = Scopes::new(
        b.permissions
            .names()
            .into_iter()
            .filter_map(|n| Scope::parse(n).ok())
            .collect(),
    )
    .map_err(|m| ApiError::bad("permissions", m))?;
    let now = state.clock.now();
    let input = NewRootKey {
        name: b.name,
        permissions: scopes,
        expires_at: b.expires_at,
        ttl_seconds: b.ttl_seconds,
    };
    state
        .idempotency
        .run(
            &core,
            &auth.0.name(),
            req.path(),
            idem,
            digest,
            now,
            || async {
                let (view, secret) = core
                    .keys()
                    .issue_root_key(&*audit, &tenant, input, now)
                    .await?;
                Reply::json(
                    StatusCode::CREATED,
                    &WithSecret {
                        view: &RootKeyView::from(&view),
                        key: secret.expose(),
                    },
                )
            },
        )
        .await
}

#[utoipa::path(
    get, path = "/v1/root-keys", tag = "root-keys", operation_id = "listRootKeys",
    params(ListQuery),
    responses((status = 200, description = "One page of root keys (metadata only).", body = Page<RootKeyView>)),
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    let page = core
        .keys()
        .list_root_keys(&scope, &q.0.page()?, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(Page {
        items: page.items.iter().map(RootKeyView::from).collect::<Vec<_>>(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(
    get, path = "/v1/root-keys/{id}", tag = "root-keys", operation_id = "getRootKey",
    params(("id" = KeyId, Path, description = "The root key's id.")),
    responses((status = 200, description = "The root key's metadata.", body = RootKeyView)),
)]
pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
    id: Seg<KeyId>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    let view = core
        .keys()
        .get_key(&scope, KeyKind::Root, &id, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(RootKeyView::from(&view)))
}

#[utoipa::path(
    post, path = "/v1/root-keys/{id}/rotate", tag = "root-keys", operation_id = "rotateRootKey",
    params(("id" = KeyId, Path, description = "The root key's id."), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe: the same key, caller and route within 10 minutes returns the first answer.")),
    request_body(content = Option<RotateKey>, description = "Optional: an empty body rotates with no grace."),
    responses(
        (status = 201, description = "The replacement's metadata and, once, the new key (`key`).", body = RootKeyWithSecret,
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
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    // The replacement holds the key's permissions: only a caller that could grant them may
    // mint it (a root key's permissions never change, so this cannot go stale).
    held_by(&auth, &state, &scope, &id).await?;
    rotate_in(
        &auth,
        &audit,
        &state,
        &req,
        &scope,
        KeyKind::Root,
        &id,
        body,
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/root-keys/{id}/revoke", tag = "root-keys", operation_id = "revokeRootKey",
    params(("id" = KeyId, Path, description = "The root key's id.")),
    request_body(content = Option<RevokeBody>, description = "Optional: no fields."),
    responses((status = 200, description = "The root key, revoked.", body = RootKeyView)),
)]
pub async fn revoke(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    id: Seg<KeyId>,
    _body: OptionalJson<RevokeBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    held_by(&auth, &state, &scope, &id).await?;
    let view = core
        .keys()
        .revoke_key(&*audit, &scope, KeyKind::Root, &id, None, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(RootKeyView::from(&view)))
}

/// Refuses (403) a caller acting on a root key that holds permissions the caller could not
/// grant; a key the caller cannot see is a 404 as usual.
async fn held_by(
    auth: &Authenticated,
    state: &web::Data<AppState>,
    scope: &crate::ids::TenantScope,
    id: &KeyId,
) -> Result<(), ApiError> {
    let core = state.core()?;
    let view = core
        .keys()
        .get_key(scope, KeyKind::Root, id, state.clock.now())
        .await?;
    may_act_on(
        &auth.0,
        root_key_permissions(view.scopes.iter().map(|s| s.as_str())),
    )?;
    Ok(())
}
