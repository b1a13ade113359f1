//! `/v1/apis`: the API registry.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};

use super::ListQuery;
use crate::{
    access::{Permission, authorize, target_tenant},
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, Json, Query, Seg},
        idempotency::{self, Reply},
        state::AppState,
    },
    ids::ApiId,
    keys::{ApiPatch, NewApi, model::Api},
    page::Page,
};

#[utoipa::path(
    post, path = "/v1/apis", tag = "apis", operation_id = "createApi",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe: the same key, caller and route within 10 minutes returns the first answer.")),
    request_body = NewApi,
    responses(
        (status = 201, description = "The API, registered.", body = Api),
        (status = 409, description = "Another API of the tenant has this name, or the Idempotency-Key clashes.", body = ErrorBody),
    ),
)]
pub async fn create(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<NewApi>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::ApisWrite)?;
    let idem = idempotency::key_from(&req)?;
    let now = state.clock.now();
    let digest = body.digest;
    let mut input = body.value;
    let tenant =
        target_tenant(&auth.0, input.tenant.take()).map_err(|m| ApiError::bad("tenant", m))?;
    if core.access().tenant(&tenant).await?.is_none() {
        return Err(ApiError::bad("tenant", "must name an existing tenant"));
    }
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
                let api = core.keys().create_api(&*audit, tenant, input, now).await?;
                Reply::json(StatusCode::CREATED, &api)
            },
        )
        .await
}

#[utoipa::path(
    get, path = "/v1/apis", tag = "apis", operation_id = "listApis",
    params(ListQuery),
    responses((status = 200, description = "One page of the APIs the caller may see.", body = Page<Api>)),
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::ApisRead)?;
    let page = core.keys().list_apis(&scope, &q.0.page()?).await?;
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(
    get, path = "/v1/apis/{id}", tag = "apis", operation_id = "getApi",
    params(("id" = ApiId, Path, description = "The API's id.")),
    responses((status = 200, description = "The API.", body = Api)),
)]
pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
    id: Seg<ApiId>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::ApisRead)?;
    Ok(HttpResponse::Ok().json(core.keys().get_api(&scope, &id).await?))
}

#[utoipa::path(
    patch, path = "/v1/apis/{id}", tag = "apis", operation_id = "updateApi",
    params(("id" = ApiId, Path, description = "The API's id.")),
    request_body = ApiPatch,
    responses(
        (status = 200, description = "The API, changed.", body = Api),
        (status = 409, description = "Another API of the tenant has this name, or a concurrent change won.", body = ErrorBody),
    ),
)]
pub async fn update(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    id: Seg<ApiId>,
    body: Json<ApiPatch>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::ApisWrite)?;
    let api = core
        .keys()
        .update_api(&*audit, &scope, &id, body.value, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(api))
}

#[utoipa::path(
    delete, path = "/v1/apis/{id}", tag = "apis", operation_id = "deleteApi",
    params(("id" = ApiId, Path, description = "The API's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "The API still has keys that are not revoked or expired.", body = ErrorBody),
    ),
)]
pub async fn delete(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    id: Seg<ApiId>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::ApisWrite)?;
    core.keys()
        .delete_api(&*audit, &scope, &id, state.clock.now())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
