//! Extractors: strict bodies and queries ([`body`]), the authenticated principal
//! ([`principal`]), typed path segments, and the request's audit context.

mod body;
mod principal;

pub use body::{Json, MAX_JSON_DEPTH, OptionalJson, Query, parse_json, read_body as raw_body};
pub use principal::{
    AuthRefusal, Authenticated, AuthenticatedCert, AuthenticatedConnection, PeerCert,
    PrincipalName, RateLimitInfo, refuse,
};

use std::sync::Arc;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};

use super::{error::ApiError, state::AppState};
use crate::{
    audit::{AuditContext, Event},
    clock::{Clock, SystemClock, Timestamp},
    identity::Serial,
};

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
/// The request's audit context: handlers pass it to the domain, which records a successful
/// change in the change's own batch. Put it after [`Authenticated`] in a handler's arguments.
pub struct Audited(pub Arc<AuditContext>);

impl std::ops::Deref for Audited {
    type Target = AuditContext;
    fn deref(&self) -> &AuditContext {
        &self.0
    }
}

/// A request method as the audit log names it: the ones the API uses, else `OTHER`.
fn method_name(m: &actix_web::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// The audit event a request starts with (no outcome yet).
pub fn base_event(req: &HttpRequest, now: Timestamp) -> Event {
    let (principal, tenant) = req
        .extensions()
        .get::<PrincipalName>()
        .map(|p| (p.0.to_string(), p.1.clone()))
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
        // Methods are the client's to choose: any the API does not use is one name, so the
        // actions (and the refusal tallies keyed by them) stay a bounded set.
        action: format!("{} {}", method_name(req.method()), pattern),
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
    use actix_web::{http::Method, test::TestRequest};

    use super::*;

    #[test]
    fn methods_outside_the_api_are_one_name() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert_eq!(method_name(&Method::from_bytes(m.as_bytes()).unwrap()), m);
        }
        for m in ["TRACE", "CONNECT", "PROPFIND", "get"] {
            assert_eq!(
                method_name(&Method::from_bytes(m.as_bytes()).unwrap()),
                "OTHER"
            );
        }
    }

    #[test]
    fn only_an_id_shaped_path_value_reaches_the_audit_object() {
        let now = Timestamp::from_unix(1_000_000);
        let object = |k: &'static str, v: &str| {
            let req = TestRequest::default()
                .param(k, v.to_owned())
                .to_http_request();
            base_event(&req, now).object
        };
        let id = "key_2Qx9abcDEF";
        assert_eq!(object("id", id), Some(id.to_owned()));
        assert_eq!(object("serial", "0A1b"), Some("0A1b".to_owned()));
        let longest = "a".repeat(64);
        assert_eq!(object("api_id", &longest), Some(longest.clone()));
        // Anything a client could use to forge an entry or flood the log stays out.
        for bad in [
            "a".repeat(65),
            "key_1/../x".into(),
            "a b".into(),
            "a\nb".into(),
        ] {
            assert_eq!(object("id", &bad), None, "{bad:?}");
        }
        assert_eq!(object("other", id), None);
        let e = base_event(&TestRequest::default().to_http_request(), now);
        assert_eq!((e.principal.as_str(), e.object), ("anonymous", None));
    }
}
