//! `/v1/tenants`: tenants (global admin), and each tenant's custom roles and role bindings
//! (`tenants:admin` in that tenant).

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::ListQuery;
use crate::{
    access::{BindingView, CustomRole, PermSet, Permission, RoleName, RoleView, Tenant, authorize},
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, Json, Query, Seg},
        state::AppState,
    },
    identity::ServiceName,
    ids::{TenantName, TenantScope},
    page::Page,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "acme"}))]
pub struct NewTenant {
    name: TenantName,
}

#[utoipa::path(
    post, path = "/v1/tenants", tag = "tenants", operation_id = "createTenant",
    request_body = NewTenant,
    responses(
        (status = 201, description = "The tenant.", body = Tenant),
        (status = 409, description = "The tenant exists.", body = ErrorBody),
    ),
)]
pub async fn create(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    body: Json<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::Admin)?;
    if !auth.0.is_global_admin() {
        return Err(ApiError::global_admin_only());
    }
    let t = core
        .access()
        .create_tenant(&*audit, body.value.name, state.clock.now())
        .await?;
    Ok(HttpResponse::Created().json(t))
}

#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants", operation_id = "listTenants",
    params(ListQuery),
    responses((status = 200, description = "One page of the tenants the caller administers.", body = Page<Tenant>)),
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    let page = core.access().list_tenants(&scope, &q.0.page()?).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// The tenant named in the path, if the caller administers it.
async fn tenant_in_scope(
    auth: &Authenticated,
    state: &AppState,
    name: &TenantName,
) -> Result<(TenantScope, TenantName), ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    core.access().visible_tenant(&scope, name).await?;
    Ok((scope, name.clone()))
}

#[utoipa::path(
    get, path = "/v1/tenants/{t}", tag = "tenants", operation_id = "getTenant",
    params(("t" = TenantName, Path, description = "The tenant's name.")),
    responses((status = 200, description = "The tenant.", body = Tenant)),
)]
pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
    t: Seg<TenantName>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::TenantsAdmin)?;
    Ok(HttpResponse::Ok().json(core.access().visible_tenant(&scope, &t).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "reader", "permissions": ["apis:read", "keys:read"]}))]
pub struct NewRole {
    name: RoleName,
    permissions: PermSet,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"permissions": ["apis:read", "keys:read", "keys:verify"]}))]
pub struct RolePermissions {
    permissions: PermSet,
}

#[utoipa::path(
    get, path = "/v1/tenants/{t}/roles", tag = "tenants", operation_id = "listRoles",
    params(("t" = TenantName, Path, description = "The tenant's name.")),
    responses((status = 200, description = "The built-in roles and the tenant's custom roles (one page).", body = Page<RoleView>)),
)]
pub async fn list_roles(
    auth: Authenticated,
    state: web::Data<AppState>,
    t: Seg<TenantName>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let roles = core.access().list_roles(&tenant).await?;
    Ok(HttpResponse::Ok().json(Page {
        items: roles,
        next_cursor: None,
    }))
}

#[utoipa::path(
    post, path = "/v1/tenants/{t}/roles", tag = "tenants", operation_id = "createRole",
    params(("t" = TenantName, Path, description = "The tenant's name.")),
    request_body = NewRole,
    responses(
        (status = 201, description = "The custom role.", body = CustomRole),
        (status = 409, description = "A role with this name exists.", body = ErrorBody),
    ),
)]
pub async fn create_role(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    t: Seg<TenantName>,
    body: Json<NewRole>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let b = body.value;
    if core
        .access()
        .role_permissions(&tenant, &b.name)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict("a role with this name exists".into()));
    }
    let role = core
        .access()
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

#[utoipa::path(
    put, path = "/v1/tenants/{t}/roles/{role}", tag = "tenants", operation_id = "putRole",
    params(("t" = TenantName, Path, description = "The tenant's name."), ("role" = RoleName, Path, description = "The role's name.")),
    request_body = RolePermissions,
    responses((status = 200, description = "The custom role, created or replaced; takes effect on the next request.", body = CustomRole)),
)]
pub async fn put_role(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: (Seg<TenantName>, Seg<RoleName>),
    body: Json<RolePermissions>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &path.0).await?;
    let name = path.1.0;
    let role = core
        .access()
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

#[utoipa::path(
    get, path = "/v1/tenants/{t}/roles/{role}", tag = "tenants", operation_id = "getRole",
    params(("t" = TenantName, Path, description = "The tenant's name."), ("role" = RoleName, Path, description = "The role's name.")),
    responses((status = 200, description = "The role (built-in or custom).", body = RoleView)),
)]
pub async fn get_role(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: (Seg<TenantName>, Seg<RoleName>),
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &path.0).await?;
    let name = path.1.0;
    let roles = core.access().list_roles(&tenant).await?;
    let role = roles
        .into_iter()
        .find(|x| x.name == name.as_str())
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(role))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{t}/roles/{role}", tag = "tenants", operation_id = "deleteRole",
    params(("t" = TenantName, Path, description = "The tenant's name."), ("role" = RoleName, Path, description = "The role's name.")),
    responses((status = 204, description = "Deleted.")),
)]
pub async fn delete_role(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: (Seg<TenantName>, Seg<RoleName>),
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &path.0).await?;
    let name = path.1.0;
    core.access()
        .delete_role(&*audit, &auth.0, &tenant, &name)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"roles": ["verifier"]}))]
pub struct BindingBody {
    roles: Vec<RoleName>,
}

#[utoipa::path(
    get, path = "/v1/tenants/{t}/bindings", tag = "tenants", operation_id = "listBindings",
    params(("t" = TenantName, Path, description = "The tenant's name.")),
    responses((status = 200, description = "The tenant's role bindings (one page).", body = Page<BindingView>)),
)]
pub async fn list_bindings(
    auth: Authenticated,
    state: web::Data<AppState>,
    t: Seg<TenantName>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &t).await?;
    let items = core.access().list_bindings(&tenant).await?;
    Ok(HttpResponse::Ok().json(Page {
        items,
        next_cursor: None,
    }))
}

#[utoipa::path(
    put, path = "/v1/tenants/{t}/bindings/{identity}", tag = "tenants", operation_id = "putBinding",
    params(("t" = TenantName, Path, description = "The tenant's name."), ("identity" = ServiceName, Path, description = "The service name the binding is for.")),
    request_body = BindingBody,
    responses((status = 200, description = "The binding; takes effect on the next request.", body = BindingView)),
)]
pub async fn put_binding(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: (Seg<TenantName>, Seg<ServiceName>),
    body: Json<BindingBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &path.0).await?;
    let identity = path.1.0;
    let view = core
        .access()
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

#[utoipa::path(
    get, path = "/v1/tenants/{t}/bindings/{identity}", tag = "tenants", operation_id = "getBinding",
    params(("t" = TenantName, Path, description = "The tenant's name."), ("identity" = ServiceName, Path, description = "The service name the binding is for.")),
    responses((status = 200, description = "The binding.", body = BindingView)),
)]
pub async fn get_binding(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: (Seg<TenantName>, Seg<ServiceName>),
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &path.0).await?;
    let identity = path.1.0;
    Ok(HttpResponse::Ok().json(core.access().get_binding(&tenant, &identity).await?))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{t}/bindings/{identity}", tag = "tenants", operation_id = "deleteBinding",
    params(("t" = TenantName, Path, description = "The tenant's name."), ("identity" = ServiceName, Path, description = "The service name the binding is for.")),
    responses((status = 204, description = "Deleted.")),
)]
pub async fn delete_binding(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    path: (Seg<TenantName>, Seg<ServiceName>),
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let (_, tenant) = tenant_in_scope(&auth, &state, &path.0).await?;
    let identity = path.1.0;
    core.access()
        .delete_binding(&*audit, &auth.0, &tenant, &identity)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
