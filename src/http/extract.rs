//! Extractors: JSON bodies and query strings parsed strictly into domain input types (with
//! the failing field named), and the authenticated [`Principal`]: by a bearer root key or the
//! connection's certificate ([`Authenticated`]), or by the certificate alone on routes where
//! `Authorization` belongs to someone else ([`AuthenticatedConnection`]).

use std::{future::Future, pin::Pin, sync::Arc};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, http::header, web};
use futures_util::StreamExt;
use ring::digest;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{
    abuse::Decision,
    error::ApiError,
    state::AppState,
    strict::{Node, Strict},
};
use crate::app::Core;
use crate::{
    access::{Credential, PermSet, Principal},
    audit::{AuditContext, Event},
    clock::{Clock, SystemClock, Timestamp},
    crypto::apikey::{ApiKey, ROOT_KEY_PREFIX},
    identity::{Serial, SpiffeId},
    pki::{ceiling::Ceiling, fingerprint},
};

/// Deepest JSON nesting accepted in a body.
pub const MAX_JSON_DEPTH: usize = 32;

/// A JSON body parsed into `T`, with the SHA-256 of the raw bytes (for idempotency).
pub struct Json<T> {
    pub value: T,
    pub digest: [u8; 32],
}

/// Like [`Json`], but an empty body means `T::default()` (for actions like revoke).
pub struct OptionalJson<T>(pub Json<T>);

fn limit(req: &HttpRequest) -> usize {
    req.app_data::<web::Data<AppState>>()
        .map_or(crate::config::DEFAULT_BODY_LIMIT, |s| s.config.body_limit)
}

async fn read_body(req: HttpRequest, mut payload: Payload) -> Result<web::BytesMut, ApiError> {
    let limit = limit(&req);
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_body("could not read the body"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn is_json(req: &HttpRequest) -> bool {
    req.mime_type().ok().flatten().is_some_and(|m| {
        m.type_() == mime::APPLICATION
            && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    })
}

/// Refuses bodies nested deeper than [`MAX_JSON_DEPTH`] before parsing them.
fn check_depth(bytes: &[u8]) -> Result<(), ApiError> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::bad_body("the body is nested too deeply"));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A field name taken from the client's own input, made safe to echo.
fn safe_name(s: &str) -> String {
    let clean: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    clean
}

/// `path.name`, unless the path already ends with the name (serde_path_to_error includes an
/// unknown field's own name in its path, but not a missing field's).
fn join(path: &str, name: &str) -> String {
    if path == "." || path.is_empty() {
        name.to_owned()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Turns a deserialisation error into a 400 naming the field, with our own words (never the
/// library's text, which could echo input back).
fn describe(path: &str, msg: &str) -> ApiError {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    let field = if path == "." {
        None
    } else {
        Some(path.to_owned())
    };
    let named = |prefix: &str| {
        msg.strip_prefix(prefix)
            .and_then(|r| r.split('`').next())
            .map(|n| join(path, &safe_name(n)))
    };
    if let Some(f) = named("unknown field `") {
        return ApiError::bad(f, "is not a known field");
    }
    if let Some(f) = named("missing field `") {
        return ApiError::bad(f, "is required");
    }
    if let Some(f) = named("duplicate field `") {
        return ApiError::bad(f, "is given more than once");
    }
    let message = if msg.starts_with("must ") {
        msg.to_owned()
    } else if msg.starts_with("invalid type") {
        "has the wrong type".to_owned()
    } else if msg.starts_with("unknown variant") {
        "is not one of the allowed values".to_owned()
    } else if msg.starts_with("invalid length") {
        "has the wrong length".to_owned()
    } else {
        "is not valid".to_owned()
    };
    match field {
        Some(f) => ApiError::bad(f, message),
        None => ApiError::bad_body(format!("the body {message}")),
    }
}

/// Parses JSON bytes into `T`: an object where `T` has a struct, each key once (see
/// [`super::strict`]). Errors are rare: the fast pass tracks no paths, and only a failure is
/// read again with serde_path_to_error to name the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_depth(bytes)?;
    let parsed = serde_json::from_slice::<Node>(bytes)
        .ok()
        .and_then(|node| T::deserialize(Strict(node)).ok());
    match parsed {
        Some(value) => Ok(value),
        None => Err(parse_error::<T>(bytes)),
    }
}

/// Why `bytes` is not a `T`, naming the field.
fn parse_error<T: DeserializeOwned>(bytes: &[u8]) -> ApiError {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let node: Node = match serde_path_to_error::deserialize(&mut de) {
        // A repeated key.
        Err(e) if e.inner().classify() == serde_json::error::Category::Data => {
            return describe(&e.path().to_string(), &e.inner().to_string());
        }
        Err(_) => return ApiError::bad_body("the body is not valid JSON"),
        Ok(node) => node,
    };
    if de.end().is_err() {
        return ApiError::bad_body("the body is not valid JSON");
    }
    match serde_path_to_error::deserialize::<_, T>(Strict(node)) {
        Err(e) => describe(&e.path().to_string(), &e.inner().to_string()),
        Ok(_) => ApiError::bad_body("the body is not valid"),
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            if !is_json(&req) {
                return Err(ApiError::UnsupportedMediaType);
            }
            let bytes = read_body(req, payload).await?;
            let value = parse_json(&bytes)?;
            let mut d = [0u8; 32];
            d.copy_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
            Ok(Json { value, digest: d })
        })
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let has_type = req.headers().contains_key(header::CONTENT_TYPE);
            let bytes = read_body(req.clone(), payload).await?;
            if bytes.is_empty() {
                return Ok(OptionalJson(Json {
                    value: T::default(),
                    digest: [0; 32],
                }));
            }
            if !has_type || !is_json(&req) {
                return Err(ApiError::UnsupportedMediaType);
            }
            let value = parse_json(&bytes)?;
            let mut d = [0u8; 32];
            d.copy_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
            Ok(OptionalJson(Json { value, digest: d }))
        })
    }
}

/// A query string parsed into `T` (use `deny_unknown_fields` on `T`).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let q = req.query_string();
        let result = if q.len() > 2048 {
            Err(ApiError::bad_body("the query string is too long"))
        } else {
            let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
            serde_path_to_error::deserialize(de)
                .map(Query)
                .map_err(|e| describe(&e.path().to_string(), &e.inner().to_string()))
        };
        std::future::ready(result)
    }
}

/// A value taken from a path segment of the route (`{NAME}`), parsed by its type's own parser;
/// a bad one is a 400 naming `FIELD` (the name the API documents), before any look-up.
pub trait Segment: Sized {
    /// The segment's name in the route pattern.
    const NAME: &'static str;
    /// The field a 400 names.
    const FIELD: &'static str = Self::NAME;
    fn parse(s: &str) -> Result<Self, &'static str>;
}

/// A typed path segment: `id: Seg<KeyId>` instead of a string and a parse in every handler.
pub struct Seg<T>(pub T);

impl<T> std::ops::Deref for Seg<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Segment> FromRequest for Seg<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let raw = req.match_info().get(T::NAME).unwrap_or_default();
        std::future::ready(
            T::parse(raw)
                .map(Seg)
                .map_err(|m| ApiError::bad(T::FIELD, m)),
        )
    }
}

/// The API whose keys a route lists or issues: `/v1/apis/{id}/keys`, documented as `api_id`.
pub struct KeysOf(pub crate::ids::ApiId);

macro_rules! segment {
    ($t:ty, $name:literal, $parse:expr) => {
        impl Segment for $t {
            const NAME: &'static str = $name;
            fn parse(s: &str) -> Result<Self, &'static str> {
                $parse(s)
            }
        }
    };
}

segment!(crate::ids::KeyId, "id", crate::ids::KeyId::parse);
segment!(crate::ids::ApiId, "id", crate::ids::ApiId::parse);
segment!(Serial, "serial", Serial::parse);
segment!(
    crate::access::RoleName,
    "role",
    crate::access::RoleName::parse
);
segment!(
    crate::identity::ServiceName,
    "identity",
    crate::identity::ServiceName::parse
);

impl Segment for crate::ids::TenantName {
    const NAME: &'static str = "t";
    const FIELD: &'static str = "tenant";
    fn parse(s: &str) -> Result<Self, &'static str> {
        crate::ids::TenantName::parse(s)
    }
}

impl Segment for KeysOf {
    const NAME: &'static str = "id";
    const FIELD: &'static str = "api_id";
    fn parse(s: &str) -> Result<Self, &'static str> {
        crate::ids::ApiId::parse(s).map(KeysOf)
    }
}

/// Parses a value that is not a path segment of its own (a query parameter naming a CA);
/// a bad one is a 400 naming `field`.
pub fn path_param<T>(
    raw: &str,
    field: &'static str,
    parse: impl FnOnce(&str) -> Result<T, &'static str>,
) -> Result<T, ApiError> {
    parse(raw).map_err(|m| ApiError::bad(field, m))
}

/// What the TLS layer learned about the client certificate of a connection. Computed once
/// per connection (in `on_connect`), checked on every request.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub serial: Serial,
    /// The certificate's URI SAN, if it has exactly one.
    pub uri: Option<String>,
    pub not_after: Timestamp,
    pub fingerprint: String,
    /// The certificate's SubjectPublicKeyInfo (DER), for renewal without a new key.
    pub spki: Vec<u8>,
    /// The permission ceiling the CA signed into it (`None`: no ceiling extension).
    pub ceiling: Option<Ceiling>,
}

impl PeerCert {
    /// Reads the leaf (`certs[0]`: the client's own certificate, not the last of the chain).
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(leaf).ok()?;
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            serial: Serial::from_bytes(cert.raw_serial()),
            uri: (uris.len() == 1).then(|| uris[0].to_owned()),
            not_after: Timestamp::from_unix(cert.validity().not_after.timestamp()),
            fingerprint: fingerprint(leaf),
            spki: cert.public_key().raw.to_vec(),
            ceiling: Ceiling::of(&cert),
        })
    }
}

/// The authenticated caller: a bearer root key when `Authorization` is sent, otherwise the
/// connection's client certificate. Extraction fails with the one uniform 401.
pub struct Authenticated(pub Principal);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(&req).await.map(|(p, _)| Authenticated(p)) })
    }
}

/// The authenticated caller and the certificate it presented on this connection (required:
/// a bearer credential does not satisfy this extractor).
pub struct AuthenticatedCert(pub Principal, pub PeerCert);

impl FromRequest for AuthenticatedCert {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            match authenticate(&req).await? {
                (p, Some(c)) if matches!(p.credential, Credential::Cert { .. }) => {
                    Ok(AuthenticatedCert(p, c))
                }
                _ => Err(ApiError::Unauthenticated),
            }
        })
    }
}

/// The caller of a forward-auth route (the gateway), authenticated by the connection's client
/// certificate alone. An `Authorization` header on such a request belongs to the end client
/// and is not read here: it never authenticates the caller, is never parsed as a root key, and
/// never counts against the source's lockout. Extraction fails with the one uniform 401.
pub struct AuthenticatedConnection(pub Principal);

impl FromRequest for AuthenticatedConnection {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or(ApiError::Internal)?;
            let core = state.core()?;
            let Some(peer) = req.conn_data::<PeerCert>() else {
                // No credential of the caller's own. The request middleware throttles such
                // requests per source, except when they carry `Authorization`, which is no
                // credential here: throttle those now.
                if req.headers().contains_key(header::AUTHORIZATION) {
                    throttle_source(&req, state)?;
                }
                return Err(ApiError::Unauthenticated);
            };
            let principal = cert_principal(&req, state, &core, peer, state.clock.now()).await?;
            admit(&req, state, principal).map(AuthenticatedConnection)
        })
    }
}

/// The authenticated principal's name, left in the request for the audit middleware.
#[derive(Clone, Debug)]
pub struct PrincipalName(pub String, pub Option<String>);

/// Authenticates a request. A bearer root key, when sent, is the credential; otherwise the
/// connection's client certificate (see [`cert_principal`]). Every failure is the same 401. A
/// malformed bearer key is refused before any hashing or look-up.
async fn authenticate(req: &HttpRequest) -> Result<(Principal, Option<PeerCert>), ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::Internal)?;
    let core = state.core()?;
    let now = state.clock.now();
    let peer = req.conn_data::<PeerCert>().cloned();
    let principal = match req.headers().get(header::AUTHORIZATION) {
        Some(h) => {
            let source = state.guard.source(req);
            // A bearer credential is refused at once while its source is locked out.
            if let Some(ip) = source
                && let Some(secs) = state.guard.locked(ip)
            {
                return Err(ApiError::TooManyRequests { retry_after: secs });
            }
            match bearer_principal(&core, h, now).await? {
                Some(p) => p,
                None => {
                    if let Some(ip) = source {
                        state.guard.failed(ip, "bearer root key refused");
                    }
                    return Err(ApiError::Unauthenticated);
                }
            }
        }
        None => {
            let peer = peer.as_ref().ok_or(ApiError::Unauthenticated)?;
            cert_principal(req, state, &core, peer, now).await?
        }
    };
    Ok((admit(req, state, principal)?, peer))
}

/// The principal of the connection's client certificate, checked on every request: unexpired,
/// not revoked (a keep-alive connection opened before a revocation is refused on its next
/// request), naming one of Tessera's identities. A refused certificate counts against its
/// source; a valid one is never refused for other credentials' failures at the same address.
async fn cert_principal(
    req: &HttpRequest,
    state: &AppState,
    core: &Core,
    peer: &PeerCert,
    now: Timestamp,
) -> Result<Principal, ApiError> {
    let usable = peer.not_after > now && !core.pki().is_revoked(&peer.serial);
    let id = peer
        .uri
        .as_deref()
        .and_then(|u| SpiffeId::parse(u, &state.config.trust_domain).ok());
    let Some(id) = id.filter(|_| usable) else {
        if let Some(ip) = state.guard.source(req) {
            state.guard.failed(ip, "client certificate refused");
        }
        return Err(ApiError::Unauthenticated);
    };
    Ok(core
        .access()
        .principal_for_cert(
            id,
            peer.serial.clone(),
            peer.fingerprint.clone(),
            peer.ceiling.map(|c| PermSet::from_bits(c.bits())),
        )
        .await?)
}

/// Lets an authenticated principal in: its request rate, then its name for the audit log.
fn admit(req: &HttpRequest, state: &AppState, principal: Principal) -> Result<Principal, ApiError> {
    let name = principal.name();
    let secs = throttled(req, state.guard.principal(&name));
    if secs > 0 {
        return Err(ApiError::TooManyRequests { retry_after: secs });
    }
    let tenant = principal.tenant.as_ref().map(|t| t.as_str().to_owned());
    if let Some(ctx) = req.extensions().get::<Arc<AuditContext>>() {
        ctx.set_principal(name.clone(), tenant.clone());
    }
    req.extensions_mut().insert(PrincipalName(name, tenant));
    Ok(principal)
}

/// Throttles a request by its source, as the request middleware does for requests without
/// a credential.
fn throttle_source(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(ip) = state.guard.source(req) else {
        return Ok(());
    };
    match throttled(req, state.guard.anonymous(ip)) {
        0 => Ok(()),
        secs => Err(ApiError::TooManyRequests { retry_after: secs }),
    }
}

/// Records a throttle's decision for the `RateLimit-*` headers; the seconds to wait when it
/// refuses (at least 1), 0 when it allows.
fn throttled(req: &HttpRequest, decision: Decision) -> u64 {
    match decision {
        Decision::Allow { limit, remaining } => {
            req.extensions_mut().insert(RateLimitInfo {
                limit,
                remaining,
                reset: 0,
            });
            0
        }
        Decision::Deny { limit, retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            req.extensions_mut().insert(RateLimitInfo {
                limit,
                remaining: 0,
                reset: secs,
            });
            secs.max(1)
        }
    }
}

/// The principal of a bearer root key; `None` if the header or the key is refused. A
/// malformed key is refused before any hashing or look-up.
async fn bearer_principal(
    core: &Core,
    header_value: &header::HeaderValue,
    now: Timestamp,
) -> Result<Option<Principal>, ApiError> {
    let Some(token) = header_value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Ok(None);
    };
    let Ok(key) = ApiKey::parse(token) else {
        return Ok(None);
    };
    if key.prefix() != ROOT_KEY_PREFIX {
        return Ok(None);
    }
    let Some(k) = core.keys().authenticate_root(&key, now).await? else {
        return Ok(None);
    };
    let permissions = crate::access::root_key_permissions(k.scopes.iter().map(|s| s.as_str()));
    Ok(Some(Principal {
        credential: Credential::RootKey { id: k.id },
        tenant: Some(k.tenant),
        roles: Vec::new(),
        permissions,
    }))
}

/// The throttle's state for this request, turned into `RateLimit-*` headers.
#[derive(Clone, Copy, Debug)]
pub struct RateLimitInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a request would be allowed again (0: now).
    pub reset: u64,
}

/// The request's audit context: handlers pass it to the domain, which records a successful
/// change in the change's own batch. Put it after [`Authenticated`] in a handler's arguments.
pub struct Audited(pub Arc<AuditContext>);

impl std::ops::Deref for Audited {
    type Target = AuditContext;
    fn deref(&self) -> &AuditContext {
        &self.0
    }
}

/// The audit event a request starts with (no outcome yet).
pub fn base_event(req: &HttpRequest, now: Timestamp) -> Event {
    let (principal, tenant) = req
        .extensions()
        .get::<PrincipalName>()
        .map(|p| (p.0.clone(), p.1.clone()))
        .or_else(|| {
            req.conn_data::<PeerCert>()
                .map(|c| (format!("cert:{}", c.serial), None))
        })
        .unwrap_or_else(|| ("anonymous".to_owned(), None));
    let pattern = req
        .match_pattern()
        .unwrap_or_else(|| "(unmatched)".to_owned());
    let object = ["id", "serial", "api_id"]
        .iter()
        .find_map(|k| req.match_info().get(k))
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(str::to_owned);
    Event {
        time: now,
        request_id: super::error::request_id(),
        principal,
        tenant,
        action: format!("{} {}", req.method(), pattern),
        object,
        outcome: String::new(),
        source: req
            .peer_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string()),
        detail: None,
    }
}

impl FromRequest for Audited {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let now = req
            .app_data::<web::Data<AppState>>()
            .map_or_else(|| SystemClock.now(), |s| s.clock.now());
        let ctx = AuditContext::new(base_event(req, now));
        req.extensions_mut().insert(ctx.clone());
        std::future::ready(Ok(Audited(ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: crate::keys::model::Text<5>,
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
    }

    fn field_of(body: &str) -> (Option<String>, String) {
        match parse_json::<Outer>(body.as_bytes()) {
            Err(ApiError::BadRequest { field, message }) => (field, message),
            other => panic!("expected a 400, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn errors_name_the_field_in_our_words() {
        assert_eq!(
            field_of(r#"{"name":"a","inner":{"n":1},"bogus":1}"#)
                .0
                .as_deref(),
            Some("bogus")
        );
        assert_eq!(
            field_of(r#"{"name":"a","inner":{"n":1,"x":2}}"#)
                .0
                .as_deref(),
            Some("inner.x")
        );
        assert_eq!(field_of(r#"{"inner":{"n":1}}"#).0.as_deref(), Some("name"));
        let (f, m) = field_of(r#"{"name":"toolong","inner":{"n":1}}"#);
        assert_eq!(f.as_deref(), Some("name"));
        assert_eq!(m, "must be 1 to 5 characters");
        let (f, m) = field_of(r#"{"name":"a","inner":{"n":"x"}}"#);
        assert_eq!(f.as_deref(), Some("inner.n"));
        assert_eq!(m, "has the wrong type");
        assert_eq!(
            field_of(r#"{"name":"a","inner":{"n":1},"list":[{"n":1},{"n":-1}]}"#)
                .0
                .as_deref(),
            Some("list[1].n")
        );
        assert_eq!(field_of(r#"{"name":"a""#).0, None);
        assert_eq!(field_of(r#"{"name":"a","inner":{"n":1}} trailing"#).0, None);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(check_depth(deep.as_bytes()).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#).is_ok());
    }

    #[test]
    fn echoed_names_are_sanitised() {
        assert_eq!(safe_name("a\u{7}b<script>"), "a?b<script>");
        assert_eq!(safe_name(&"x".repeat(100)).len(), 64);
    }
}
