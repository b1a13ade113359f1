//! `/v1/auth/check`: forward authentication for gateways (nginx `auth_request`, Envoy
//! `ext_authz` in HTTP mode, Traefik `ForwardAuth`).
//!
//! The caller is the gateway, and the gateway is the connection's client certificate, always
//! ([`AuthenticatedConnection`]): it needs `keys:verify` to check keys and `certs:verify` to
//! check certificates, in its own tenant. A root key is no credential here. The request's
//! `Authorization` header belongs to the end client (gateways forward it): it never
//! authenticates the gateway and never counts against the gateway's address; it is read only
//! when the operator chose it as the end client's key header (`forward_auth.key_header =
//! "Authorization"`, a bare key or `Bearer <key>`), and is otherwise ignored.
//!
//! The gateway passes the end client's credentials: an API key in `X-Api-Key` (the name is
//! configurable) and/or the client certificate it verified, URL-escaped PEM in `X-Client-Cert`
//! (nginx's `$ssl_client_escaped_cert`). The API and scopes required come from the `api_id` and
//! `scopes` query parameters or the `X-Tessera-Api-Id` / `X-Tessera-Scopes` headers; a key is
//! never read from the URL.
//!
//! The answer is a status and nothing the end client could learn from: `204` with the identity
//! headers, or an empty `401` (unknown, revoked, expired, disabled, wrong identity), `403`
//! (missing scopes, quota used up) or `429` with `Retry-After` (the key's rate limit). Only the
//! gateway's own problems get Tessera's error body: no valid certificate (the uniform `401`), a
//! missing permission (`403`), bad requirements (`400`), its own throttle (`429`).
//!
//! Envoy appends the original request path to its `path_prefix`, so `/v1/auth/check/<path>`
//! answers the same way, with any method; its query string belongs to the original request
//! and is ignored there (pass the API and scopes as headers).

use actix_web::{
    HttpRequest, HttpResponse,
    http::{
        StatusCode,
        header::{AUTHORIZATION, HeaderMap, HeaderName},
    },
    web,
};
use serde::Deserialize;

use crate::{
    access::{Permission, authorize},
    crypto::secret::SecretString,
    http::{
        error::ApiError,
        extract::{self, AuthenticatedConnection, Query},
        state::AppState,
    },
    identity::Serial,
    ids::{ApiId, KeyId, TenantName},
    keys::{
        CallerIdentity, Code, VerifyRequest,
        model::{Scope, Scopes},
        verify::MAX_KEY_FIELD,
    },
    metrics,
    pki::{self, PkiError},
};

/// The identity headers of an allowed request.
pub const KEY_ID: HeaderName = HeaderName::from_static("x-tessera-key-id");
pub const API_ID: HeaderName = HeaderName::from_static("x-tessera-api-id");
pub const TENANT: HeaderName = HeaderName::from_static("x-tessera-tenant");
pub const IDENTITY: HeaderName = HeaderName::from_static("x-tessera-identity");
pub const SCOPES: HeaderName = HeaderName::from_static("x-tessera-scopes");

/// Longest forwarded certificate accepted (URL-escaped PEM of a leaf and its chain).
const MAX_CERT_HEADER: usize = 16 * 1024;

/// `GET /v1/auth/check?api_id=&scopes=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    #[serde(default)]
    api_id: Option<ApiId>,
    /// Comma-separated.
    #[serde(default)]
    scopes: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/auth/check", tag = "gateway", operation_id = "forwardAuth",
    description = "Forward authentication for nginx `auth_request`, Envoy `ext_authz` (HTTP) and Traefik `ForwardAuth`. The gateway authenticates with its client certificate only (a root key is no credential here); an `Authorization` header belongs to the end client and is ignored, unless `forward_auth.key_header` is `Authorization`. Any method is answered the same way (gateways pass the original request's).",
    security(("mtls" = [])),
    params(CheckQuery, ("X-Api-Key" = Option<String>, Header, description = "The end client's API key (the header name is `forward_auth.key_header`; set to `Authorization`, it takes a bare key or `Bearer <key>`). Never in the URL."),
        ("X-Client-Cert" = Option<String>, Header, description = "The end client's certificate as the gateway verified it: URL-escaped PEM (nginx `$ssl_client_escaped_cert`; the name is `forward_auth.cert_header`)."),
        ("X-Tessera-Api-Id" = Option<ApiId>, Header, description = "The API the key must belong to (or `api_id` in the query)."),
        ("X-Tessera-Scopes" = Option<String>, Header, description = "Comma-separated scopes the key must hold (or `scopes` in the query).")),
    responses(
        (status = 204, description = "Allowed. The identity headers are for the upstream.",
            headers(
                ("X-Tessera-Key-Id" = KeyId, description = "The key's id (key requests)."),
                ("X-Tessera-Api-Id" = ApiId, description = "The key's API."),
                ("X-Tessera-Tenant" = TenantName, description = "The key's or certificate's tenant."),
                ("X-Tessera-Identity" = String, description = "The client certificate's SPIFFE id (certificate requests)."),
                ("X-Tessera-Scopes" = String, description = "The key's scopes, comma-separated."),
            )),
        (status = 401, description = "The end client's credential is missing, unknown, revoked, expired, disabled or presented by the wrong identity (empty body); or the gateway presented no valid client certificate (the uniform error body)."),
        (status = 403, description = "The key lacks a required scope or its quota is used up (empty body); or the gateway lacks `keys:verify`/`certs:verify` (error body)."),
        (status = 429, description = "The key's rate limit (empty body), or the gateway is throttled (error body).",
            headers(("Retry-After" = u64, description = "Seconds."))),
    ),
)]
pub async fn check(
    auth: AuthenticatedConnection,
    state: web::Data<AppState>,
    req: HttpRequest,
    q: Query<CheckQuery>,
) -> Result<HttpResponse, ApiError> {
    decide(auth, state, req, q.0).await
}

/// The Envoy form, `/v1/auth/check/<original path>`: settings from headers only.
#[utoipa::path(
    get, path = "/v1/auth/check/{path}", tag = "gateway", operation_id = "forwardAuthPrefixed",
    description = "The same check for Envoy, which appends the original path to `path_prefix`. The gateway authenticates with its client certificate only; an `Authorization` header belongs to the end client and is ignored, unless `forward_auth.key_header` is `Authorization`. The query string belongs to the original request and is ignored: pass the API and scopes as headers. Any method.",
    security(("mtls" = [])),
    params(("path" = String, Path, description = "The original request's path (ignored)."), ("X-Api-Key" = Option<String>, Header, description = "The end client's API key (the header name is `forward_auth.key_header`; set to `Authorization`, it takes a bare key or `Bearer <key>`). Never in the URL."),
        ("X-Client-Cert" = Option<String>, Header, description = "The end client's certificate as the gateway verified it: URL-escaped PEM (nginx `$ssl_client_escaped_cert`; the name is `forward_auth.cert_header`)."),
        ("X-Tessera-Api-Id" = Option<ApiId>, Header, description = "The API the key must belong to."),
        ("X-Tessera-Scopes" = Option<String>, Header, description = "Comma-separated scopes the key must hold.")),
    responses(
        (status = 204, description = "Allowed. The identity headers are for the upstream.",
            headers(
                ("X-Tessera-Key-Id" = KeyId, description = "The key's id (key requests)."),
                ("X-Tessera-Api-Id" = ApiId, description = "The key's API."),
                ("X-Tessera-Tenant" = TenantName, description = "The key's or certificate's tenant."),
                ("X-Tessera-Identity" = String, description = "The client certificate's SPIFFE id (certificate requests)."),
                ("X-Tessera-Scopes" = String, description = "The key's scopes, comma-separated."),
            )),
        (status = 401, description = "The end client's credential is missing, unknown, revoked, expired, disabled or presented by the wrong identity (empty body); or the gateway presented no valid client certificate (the uniform error body)."),
        (status = 403, description = "The key lacks a required scope or its quota is used up (empty body); or the gateway lacks `keys:verify`/`certs:verify` (error body)."),
        (status = 429, description = "The key's rate limit (empty body), or the gateway is throttled (error body).",
            headers(("Retry-After" = u64, description = "Seconds."))),
    ),
)]
pub async fn check_prefixed(
    auth: AuthenticatedConnection,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    decide(auth, state, req, CheckQuery::default()).await
}

async fn decide(
    auth: AuthenticatedConnection,
    state: web::Data<AppState>,
    req: HttpRequest,
    q: CheckQuery,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let now = state.clock.now();
    let headers = req.headers();
    let api_id = match q.api_id {
        Some(a) => Some(a),
        None => header(headers, &API_ID)
            .map(|v| ApiId::parse(v).map_err(|m| ApiError::bad("api_id", m)))
            .transpose()?,
    };
    let scopes = match q.scopes.as_deref().or_else(|| header(headers, &SCOPES)) {
        Some(list) => Some(parse_scopes(list)?),
        None => None,
    };
    let fa = &state.config.forward_auth;
    let key = end_client_key(headers, &fa.key_header);
    let cert = header(headers, &fa.cert_header);
    if key.is_none() && cert.is_none() {
        return Ok(refuse(&req, "end client: no key and no certificate", None));
    }

    let mut allowed = HttpResponse::NoContent();
    allowed.insert_header(("cache-control", "no-store"));
    // The end client's certificate first: it is the identity a bound key must match.
    let mut caller = CallerIdentity::default();
    // The tenant of an accepted certificate (`None` inside: the certificate has none).
    let mut cert_tenant = None;
    if let Some(escaped) = cert {
        let scope = authorize(&auth.0, Permission::CertsVerify)?;
        let Some(pem) = unescape_pem(escaped) else {
            return Ok(refuse(&req, "end client's certificate: not PEM", None));
        };
        let verdict = match core.pki().verify_certificate_now(&scope, &pem, now).await {
            Ok(v) => v,
            Err(PkiError::Invalid { .. }) => {
                return Ok(refuse(&req, "end client's certificate: malformed", None));
            }
            Err(e) => return Err(e.into()),
        };
        metrics::CERT_VERIFY
            .with_label_values(&[verdict.code.as_str()])
            .inc();
        let (true, Some(identity)) = (verdict.valid, verdict.identity) else {
            let reason = format!("end client's certificate: {}", verdict.code.as_str());
            return Ok(refuse(&req, reason, verdict.serial.as_ref()));
        };
        let leaf = pki::parse_pem_certs(&pem, pki::verify::MAX_CHAIN)
            .ok()
            .and_then(|c| c.into_iter().next());
        caller.fingerprint = leaf.map(|der| format!("sha256:{}", pki::fingerprint(&der)));
        allowed.insert_header((IDENTITY, identity.clone()));
        if let Some(t) = &verdict.tenant {
            allowed.insert_header((TENANT, t.as_str()));
        }
        caller.spiffe = Some(identity);
        cert_tenant = Some(verdict.tenant);
    }

    if let Some(key) = key {
        let scope = authorize(&auth.0, Permission::KeysVerify)?;
        if key.len() > MAX_KEY_FIELD {
            return Ok(refuse(&req, "end client's key: too long", None));
        }
        let request = VerifyRequest {
            key: SecretString::new(key.to_owned()),
            api_id,
            scopes,
            presented_identity: None,
        };
        let verdict = core.keys().verify(&scope, &request, &caller, now).await?;
        metrics::KEY_VERIFY
            .with_label_values(&[verdict.code.as_str()])
            .inc();
        match verdict.code {
            Code::Valid => {}
            Code::InsufficientScopes | Code::UsageExceeded => {
                return Ok(deny(StatusCode::FORBIDDEN));
            }
            Code::RateLimited => {
                let reset = verdict.ratelimit.map_or(0, |r| r.reset);
                let wait_ms = (reset - now.unix_millis()).max(0);
                let seconds = (wait_ms + 999) / 1000;
                return Ok(HttpResponse::TooManyRequests()
                    .insert_header(("retry-after", seconds.max(1).to_string()))
                    .insert_header(("cache-control", "no-store"))
                    .finish());
            }
            Code::NotFound
            | Code::Revoked
            | Code::Expired
            | Code::Disabled
            | Code::IdentityMismatch => {
                let reason = format!("end client's key: {}", verdict.code.as_str());
                return Ok(refuse(&req, reason, None));
            }
        }
        // A certificate and a key of two tenants are not one client.
        if cert_tenant.is_some_and(|t| t != verdict.tenant) {
            let reason = "end client's certificate and key are of two tenants";
            return Ok(refuse(&req, reason, None));
        }
        if let Some(id) = &verdict.key_id {
            allowed.insert_header((KEY_ID, id.as_str()));
        }
        if let Some(id) = &verdict.api_id {
            allowed.insert_header((API_ID, id.as_str()));
        }
        if let Some(t) = &verdict.tenant {
            allowed.insert_header((TENANT, t.as_str()));
        }
        if let Some(s) = &verdict.scopes {
            let list: Vec<&str> = s.iter().map(Scope::as_str).collect();
            allowed.insert_header((SCOPES, list.join(",")));
        }
    }
    Ok(allowed.finish())
}

/// An end client's credential refused: the empty 401, and the reason for the log line.
fn refuse(req: &HttpRequest, reason: impl Into<String>, serial: Option<&Serial>) -> HttpResponse {
    extract::refuse(req, reason, serial);
    deny(StatusCode::UNAUTHORIZED)
}

/// A refusal: the status alone.
fn deny(status: StatusCode) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("cache-control", "no-store"))
        .finish()
}

/// A header's value, if present, readable and not empty (nginx sends an empty value when the
/// client presented no certificate).
fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The end client's key, from the configured header only. `Authorization` is read only when it
/// is that header, and then the key may come bare or as a bearer token; otherwise it is the end
/// client's credential for the upstream, and none of Tessera's business.
fn end_client_key<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let value = header(headers, name)?;
    if *name != AUTHORIZATION {
        return Some(value);
    }
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim()).filter(|t| !t.is_empty())
        }
        _ => Some(value),
    }
}

fn parse_scopes(list: &str) -> Result<Scopes, ApiError> {
    let v = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Scope::parse(s).map_err(|m| ApiError::bad("scopes", m)))
        .collect::<Result<Vec<_>, _>>()?;
    Scopes::new(v).map_err(|m| ApiError::bad("scopes", m))
}

/// A forwarded certificate: URL-escaped PEM (nginx, Traefik's `pem` option), or plain PEM with
/// its line breaks folded into spaces.
fn unescape_pem(value: &str) -> Option<String> {
    if value.len() > MAX_CERT_HEADER {
        return None;
    }
    let text = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok()?
        .into_owned();
    let text = text.replace(
        "-----BEGIN CERTIFICATE----- ",
        "-----BEGIN CERTIFICATE-----\n",
    );
    text.contains("-----BEGIN CERTIFICATE-----").then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_certificates_are_unescaped() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let escaped = "-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A";
        assert_eq!(unescape_pem(escaped).as_deref(), Some(pem));
        assert_eq!(unescape_pem(pem).as_deref(), Some(pem));
        assert_eq!(unescape_pem("%zz"), None);
        assert_eq!(unescape_pem("not a certificate"), None);
        assert_eq!(unescape_pem(&"%41".repeat(MAX_CERT_HEADER)), None);
    }

    #[test]
    fn the_key_comes_from_the_configured_header_only() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer tsk_abc".parse().unwrap());
        let api_key = HeaderName::from_static("x-api-key");
        assert_eq!(end_client_key(&h, &api_key), None);
        assert_eq!(end_client_key(&h, &AUTHORIZATION), Some("tsk_abc"));
        h.insert(api_key.clone(), "tsk_def".parse().unwrap());
        assert_eq!(end_client_key(&h, &api_key), Some("tsk_def"));
        for (value, key) in [
            ("bearer  tsk_abc ", Some("tsk_abc")),
            ("tsk_abc", Some("tsk_abc")),
            ("Basic dXNlcjpwYXNz", Some("Basic dXNlcjpwYXNz")),
            ("Bearer ", Some("Bearer")),
            ("Bearer  ", Some("Bearer")),
        ] {
            h.insert(AUTHORIZATION, value.parse().unwrap());
            assert_eq!(end_client_key(&h, &AUTHORIZATION), key, "{value:?}");
        }
    }

    #[test]
    fn scopes_are_comma_separated() {
        let s = parse_scopes("read, write,,read").unwrap();
        let v: Vec<&str> = s.iter().map(Scope::as_str).collect();
        assert_eq!(v, ["read", "write"]);
        assert!(parse_scopes("bad scope!").is_err());
    }
}
