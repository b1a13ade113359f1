//! `/v1/tenants`: tenants (global admin), and each tenant's custom roles and role bindings
//! (`tenants:admin` in that tenant).

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::ListQuery;
use crate::{
    access::{PermSet, Permission, RoleName, authorize},
    http::{
        error::ApiError,
        extract::{Audited, Authenticated, Json, Query, path_param},
        state::AppState,
    },
    ids::{TenantName, TenantScope},
    pki::identity::ServiceName,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: TenantName,
}

pub async fn create(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    body: Json<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::Admin)?;
    if !auth.0.is_global_admin() {
        return Err(ApiError::Forbidden);
    }
    let t = core
        .access
        .create_tenant(&*audit, body.value.name, state.clock.now())
        .await?;
    Ok(HttpResponse::Created().json(t))
}

pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    let page = core.access.list_tenants(&scope, &q.0.page()?).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// The tenant named in the path, if the caller administers it.
async fn tenant_in_scope(
    auth: &Authenticated,
    state: &AppState,
    t: &str,
) -> Result<(TenantScope, TenantName), ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    let name = path_param(t, "tenant", TenantName::parse)?;
    core.access.visible_tenant(&scope, &name).await?;
    Ok((scope, name))
}

pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
    t: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    let name = path_param(&t, "tenant", TenantName::parse)?;
    Ok(HttpResponse::Ok().json(core.access.visible_tenant(&scope, &name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    name: RoleName,
    permissions: PermSet,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePermissions {
    permissions: PermSet,
}

pub async fn list_roles(
    auth: Authenticated,
    state: web::Data<AppState>,
    t: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let roles = core.access.list_roles(&tenant).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"items": roles, "next_cursor": null})))
}

pub async fn create_role(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    t: web::Path<String>,
    body: Json<NewRole>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let b = body.value;
    if core
        .access
        .role_permissions(&tenant, &b.name)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict("a role with this name exists".into()));
    }
    let role = core
        .access
        .put_role(
            &*audit,
            &auth.0,
            &tenant,
            b.name,
            b.permissions,
            state.clock.now(),
        )
        .await?;
    Ok(HttpResponse::Created().json(role))
}

pub async fn put_role(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: Json<RolePermissions>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (t, r) = path.into_inner();
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let name = path_param(&r, "role", RoleName::parse)?;
    let role = core
        .access
        .put_role(
            &*audit,
            &auth.0,
            &tenant,
            name,
            body.value.permissions,
            state.clock.now(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(role))
}

pub async fn get_role(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (t, r) = path.into_inner();
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let name = path_param(&r, "role", RoleName::parse)?;
    let roles = core.access.list_roles(&tenant).await?;
    let role = roles
        .into_iter()
        .find(|x| x.name == name.as_str())
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(role))
}

pub async fn delete_role(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (t, r) = path.into_inner();
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let name = path_param(&r, "role", RoleName::parse)?;
    core.access.delete_role(&*audit, &tenant, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingBody {
    roles: Vec<RoleName>,
}

pub async fn list_bindings(
    auth: Authenticated,
    state: web::Data<AppState>,
    t: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let items = core.access.list_bindings(&tenant).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"items": items, "next_cursor": null})))
}

pub async fn put_binding(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: Json<BindingBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (t, i) = path.into_inner();
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let identity = path_param(&i, "identity", ServiceName::parse)?;
    let view = core
        .access
        .put_binding(
            &*audit,
            &auth.0,
            &tenant,
            identity,
            body.value.roles,
            state.clock.now(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

pub async fn get_binding(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (t, i) = path.into_inner();
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let identity = path_param(&i, "identity", ServiceName::parse)?;
    Ok(HttpResponse::Ok().json(core.access.get_binding(&tenant, &identity).await?))
}

pub async fn delete_binding(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (t, i) = path.into_inner();
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let identity = path_param(&i, "identity", ServiceName::parse)?;
    core.access
        .delete_binding(&*audit, &tenant, &identity)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
