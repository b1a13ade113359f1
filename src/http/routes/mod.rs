//! The route table. Each resource lists its methods; any other method is a 405 with `Allow`.
//! Order matters where a literal segment shares a position with an id (`/v1/keys/verify`
//! before `/v1/keys/{id}`).

mod apis;
mod audit;
mod certs;
mod console;
mod custody;
mod feed;
mod forward_auth;
mod keys;
mod leaks;
mod pki;
mod rootkeys;
pub(super) mod sys;
mod tenants;

use actix_web::{HttpResponse, Resource, web};
use serde::Deserialize;

use super::{
    error::ApiError,
    openapi::{self, Shared},
};
use crate::page::PageRequest;

fn resource(path: &str, allow: &'static str) -> Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow))
    }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The hot paths first: the router tries resources in order, and every dynamic one it
    // passes costs a pattern match (a regex).
    cfg.service(resource("/v1/keys/verify", "POST").route(web::post().to(keys::verify)))
        .service(resource("/v1/certs/verify", "POST").route(web::post().to(certs::verify)))
        // Forward auth answers any method: gateways pass the original request's.
        .service(web::resource("/v1/auth/check").route(web::route().to(forward_auth::check)))
        .service(resource("/healthz", "GET").route(web::get().to(sys::healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(sys::readyz)))
        .service(resource("/v1/pki/ca", "GET").route(web::get().to(pki::ca_bundle)))
        .service(resource("/v1/pki/crl", "GET").route(web::get().to(pki::crl)))
        .service(resource("/v1/pki/rotate", "POST").route(web::post().to(pki::rotate)))
        .service(resource("/v1/whoami", "GET").route(web::get().to(sys::whoami)))
        .service(resource("/v1/sys/status", "GET").route(web::get().to(custody::status)))
        .service(resource("/v1/sys/unseal", "POST").route(web::post().to(custody::unseal)))
        .service(resource("/v1/sys/seal", "POST").route(web::post().to(custody::seal)))
        .service(resource("/v1/sys/backup", "GET").route(web::get().to(custody::backup)))
        .service(
            resource("/v1/sys/rotate-keyring", "POST")
                .route(web::post().to(custody::rotate_keyring)),
        )
        .service(resource("/ui", "GET").route(web::get().to(console::root)))
        .service(resource("/ui/", "GET").route(web::get().to(console::file)))
        .service(resource("/metrics", "GET").route(web::get().to(sys::metrics)))
        .service(resource("/openapi.json", "GET").route(web::get().to(openapi::serve)))
        .service(resource("/v1/audit", "GET").route(web::get().to(audit::list)))
        .service(resource("/v1/audit/verify", "GET").route(web::get().to(audit::verify)))
        .service(resource("/v1/audit/checkpoint", "GET").route(web::get().to(audit::checkpoint)))
        .service(resource("/v1/feed/key", "GET").route(web::get().to(feed::key)))
        .service(resource("/v1/feed/snapshot", "GET").route(web::get().to(feed::snapshot)))
        .service(resource("/v1/feed/changes", "GET").route(web::get().to(feed::changes)))
        .service(resource("/v1/feed/stream", "GET").route(web::get().to(feed::stream)))
        // The dynamic ones after every static one (a string comparison each): a request for a
        // static path passes no pattern match on its way.
        .service(
            web::resource("/v1/auth/check/{path:.*}")
                .route(web::route().to(forward_auth::check_prefixed)),
        )
        .service(resource("/ui/{file}", "GET").route(web::get().to(console::file)))
        .service(
            resource("/v1/apis", "GET, POST")
                .route(web::get().to(apis::list))
                .route(web::post().to(apis::create)),
        )
        .service(
            resource("/v1/apis/{id}", "GET, PATCH, DELETE")
                .route(web::get().to(apis::get))
                .route(web::patch().to(apis::update))
                .route(web::delete().to(apis::delete)),
        )
        .service(
            resource("/v1/apis/{id}/keys", "GET, POST")
                .route(web::get().to(keys::list))
                .route(web::post().to(keys::create)),
        )
        .service(resource("/v1/keys/report-leak", "POST").route(web::post().to(leaks::report)))
        .service(resource("/v1/leaks/github", "POST").route(web::post().to(leaks::github)))
        .service(
            resource("/v1/keys/{id}", "GET, PATCH")
                .route(web::get().to(keys::get))
                .route(web::patch().to(keys::update)),
        )
        .service(resource("/v1/keys/{id}/rotate", "POST").route(web::post().to(keys::rotate)))
        .service(resource("/v1/keys/{id}/revoke", "POST").route(web::post().to(keys::revoke)))
        .service(
            resource("/v1/certs", "GET, POST")
                .route(web::get().to(certs::list))
                .route(web::post().to(certs::issue)),
        )
        .service(resource("/v1/certs/renew", "POST").route(web::post().to(certs::renew)))
        .service(
            resource("/v1/enrolment-tokens", "POST")
                .route(web::post().to(certs::create_enrolment_token)),
        )
        .service(resource("/v1/enrol", "POST").route(web::post().to(certs::enrol)))
        .service(resource("/v1/certs/{serial}", "GET").route(web::get().to(certs::get)))
        .service(
            resource("/v1/tenants", "GET, POST")
                .route(web::get().to(tenants::list))
                .route(web::post().to(tenants::create)),
        )
        .service(resource("/v1/tenants/{t}", "GET").route(web::get().to(tenants::get)))
        .service(
            resource("/v1/tenants/{t}/roles", "GET, POST")
                .route(web::get().to(tenants::list_roles))
                .route(web::post().to(tenants::create_role)),
        )
        .service(
            resource("/v1/tenants/{t}/roles/{role}", "GET, PUT, DELETE")
                .route(web::get().to(tenants::get_role))
                .route(web::put().to(tenants::put_role))
                .route(web::delete().to(tenants::delete_role)),
        )
        .service(
            resource("/v1/tenants/{t}/bindings", "GET")
                .route(web::get().to(tenants::list_bindings)),
        )
        .service(
            resource("/v1/tenants/{t}/bindings/{identity}", "GET, PUT, DELETE")
                .route(web::get().to(tenants::get_binding))
                .route(web::put().to(tenants::put_binding))
                .route(web::delete().to(tenants::delete_binding)),
        )
        .service(
            resource("/v1/root-keys", "GET, POST")
                .route(web::get().to(rootkeys::list))
                .route(web::post().to(rootkeys::create)),
        )
        .service(resource("/v1/root-keys/{id}", "GET").route(web::get().to(rootkeys::get)))
        .service(
            resource("/v1/root-keys/{id}/rotate", "POST").route(web::post().to(rootkeys::rotate)),
        )
        .service(
            resource("/v1/root-keys/{id}/revoke", "POST").route(web::post().to(rootkeys::revoke)),
        )
        .service(
            resource("/v1/certs/{serial}/revoke", "POST").route(web::post().to(certs::revoke)),
        );
}

/// Unknown paths.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// `?cursor=&limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    #[param(pattern = "^([0-9a-fA-F]{2}){1,128}$")]
    pub cursor: Option<String>,
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u64>,
}

impl ListQuery {
    fn page(&self) -> Result<PageRequest, ApiError> {
        PageRequest::new(self.cursor.as_deref(), self.limit).map_err(|(f, m)| ApiError::bad(f, m))
    }
}

/// The OpenAPI description of every route above (see `http::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tessera",
        description = "Issues, rotates, revokes and verifies API keys and mTLS client certificates. \
            Every call is authenticated by a client certificate issued by Tessera or a root key \
            (`Authorization: Bearer tsr_…`), except the few marked public. Errors are \
            `{\"error\": {code, message, request_id, field?}}`.",
    ),
    security(("mtls" = []), ("root_key" = [])),
    paths(
        keys::verify, certs::verify, forward_auth::check, forward_auth::check_prefixed,
        sys::healthz, sys::readyz, pki::ca_bundle, pki::crl, pki::rotate, sys::whoami,
        custody::status, custody::unseal, custody::seal, custody::backup,
        custody::rotate_keyring, sys::metrics, audit::list, audit::verify, audit::checkpoint,
        feed::key, feed::snapshot, feed::changes, feed::stream,
        apis::list, apis::create, apis::get, apis::update, apis::delete,
        keys::list, keys::create, keys::get, keys::update, keys::rotate, keys::revoke,
        leaks::report, leaks::github,
        certs::list, certs::issue, certs::renew, certs::create_enrolment_token, certs::enrol,
        certs::get, certs::revoke,
        tenants::list, tenants::create, tenants::get, tenants::list_roles, tenants::create_role,
        tenants::get_role, tenants::put_role, tenants::delete_role, tenants::list_bindings,
        tenants::get_binding, tenants::put_binding, tenants::delete_binding,
        rootkeys::list, rootkeys::create, rootkeys::get, rootkeys::rotate, rootkeys::revoke,
        openapi::serve,
    ),
    components(schemas(crate::http::error::ErrorBody)),
    modifiers(&Shared),
)]
pub struct ApiDoc;
