//! Request middleware: a request id on every log line, in the `X-Request-Id` header and in
//! error bodies; security headers on every response; one access-log line per request.

use std::time::Instant;

use actix_web::{
    Error, HttpMessage,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{self, HeaderName, HeaderValue},
    middleware::Next,
    web,
};
use tracing::Instrument;

use super::{
    abuse::Decision,
    error::{ApiError, REQUEST_ID},
    extract::{AuthRefusal, PeerCert, PrincipalName, RateLimitInfo, base_event},
    state::AppState,
};
use crate::crypto::random;
use crate::{
    audit::{AuditContext, outcome_of},
    metrics,
};

/// A request id: `req_` and 16 random base62 characters. Ids are not secrets, but they must
/// not count requests (a client would learn how busy the server is): their randomness comes
/// from the OS, drawn 4 KiB at a time into a per-thread pool rather than by a system call per
/// request (measured at about a system call and a half per request before).
fn new_request_id() -> String {
    use std::cell::RefCell;
    const POOL: usize = 4096;
    thread_local! {
        static RANDOM: RefCell<(Box<[u8; POOL]>, usize)> = RefCell::new((Box::new([0; POOL]), POOL));
    }
    let mut s = String::with_capacity(20);
    s.push_str("req_");
    let filled = RANDOM.with(|r| {
        let (pool, used) = &mut *r.borrow_mut();
        let mut pushed = 0;
        while pushed < 16 {
            if *used == POOL {
                if random::fill(&mut pool[..]).is_err() {
                    return false;
                }
                *used = 0;
            }
            let b = pool[*used];
            *used += 1;
            // Rejection sampling keeps every character equally likely.
            if b < 248 {
                s.push(char::from(
                    crate::crypto::base62::ALPHABET[usize::from(b % 62)],
                ));
                pushed += 1;
            }
        }
        true
    });
    if !filled {
        s.truncate(4);
        s.push_str("unavailable");
    }
    s
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id = new_request_id();
    // The path only: queries carry cursors and filters, never secrets, but keep logs lean.
    // The Envoy form of forward auth carries an end client's original path, which can hold a
    // capability token of that API: never logged. (Fields are formatted only when the span is
    // enabled: nothing is copied for a disabled one.)
    let path = if req.path().starts_with(FORWARD_AUTH_PREFIXED) {
        FORWARD_AUTH_PREFIXED_LOGGED
    } else {
        req.path()
    };
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), %path);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let started = Instant::now();
    REQUEST_ID
        .scope(
            id.clone(),
            async move {
                // Requests that carry no credential at all are throttled per source here;
                // the others per principal once authenticated (`extract::authenticate`).
                let header_bytes: usize = req
                    .headers()
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum();
                let max_header_bytes = state
                    .as_ref()
                    .map_or(16 * 1024, |s| s.config.limits.max_header_bytes);
                if header_bytes > max_header_bytes {
                    let res = req.error_response(ApiError::HeadersTooLarge);
                    return Ok(finish(res, &id, started, state.as_ref()));
                }
                if from_another_site(&req) {
                    let res = req.error_response(ApiError::refused(
                        "a browser request from another site (Sec-Fetch-Site, Origin)",
                    ));
                    return Ok(finish(res, &id, started, state.as_ref()));
                }
                if let Some(secs) = state.as_ref().and_then(|s| throttle_anonymous(s, &req)) {
                    let res = req.error_response(ApiError::TooManyRequests { retry_after: secs });
                    return Ok(finish(res, &id, started, state.as_ref()));
                }
                // Handlers and extractors turn their errors into responses inside the routing
                // service, so an error here comes from the framework itself: replace its body
                // (which could carry library text) with ours.
                match next.call(req).await {
                    Ok(res) => Ok(finish(
                        res.map_into_boxed_body(),
                        &id,
                        started,
                        state.as_ref(),
                    )),
                    Err(e) => {
                        let status = e.as_response_error().status_code();
                        tracing::error!(error = %e, %status, "error outside a handler");
                        Err(if status.is_server_error() {
                            ApiError::Internal
                        } else {
                            ApiError::bad_body("the request could not be processed")
                        }
                        .into())
                    }
                }
            }
            .instrument(span),
        )
        .await
}

/// Whether a browser sent this request from a page of another site, to a route where that
/// is refused. A client certificate held by a browser (the console's optional sign-in) is an
/// ambient credential, like a cookie: without this check any page its holder visits could make
/// the browser send Tessera a form post, a body-less `fetch` in `no-cors` mode (neither needs
/// a CORS preflight) or an `<img>` load with that certificate, to seal the server, revoke a
/// key, sign an audit checkpoint (`GET /v1/audit/checkpoint?fresh=true`) or run a whole-chain
/// check. So every method is covered on authenticated routes; a public route (the CA bundle,
/// the CRL, health, the console's own files) may be fetched or linked from anywhere, but only
/// read. Browsers say where a request comes from (`Sec-Fetch-Site`; older ones at least
/// `Origin`); API clients, agents and gateways send neither and are unaffected. Forward-auth
/// requests are exempt: their headers are the end client's, relayed by the gateway.
fn from_another_site(req: &ServiceRequest) -> bool {
    use actix_web::http::Method;
    let path = req.path();
    if path == FORWARD_AUTH || path.starts_with(FORWARD_AUTH_PREFIXED) {
        return false;
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if reads && public(path) {
        return false;
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return false;
    };
    let host = h
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    match (origin.as_bytes().strip_prefix(b"https://"), host) {
        (Some(o), Some(host)) => !o.eq_ignore_ascii_case(host),
        _ => true,
    }
}

/// Routes that take no credential: an `Authorization` header there authenticates nothing,
/// so it must not exempt the request from the per-source throttle.
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/v1/pki/ca",
    "/v1/pki/crl",
    "/v1/enrol",
    "/v1/feed/key",
    "/v1/sys/status",
    "/v1/sys/unseal",
];

/// Whether `path` takes no credential: a route of [`PUBLIC`] or one of the console's files.
fn public(path: &str) -> bool {
    PUBLIC.contains(&path) || path == "/ui" || path.starts_with("/ui/")
}

/// Throttles a request that carries no credential, by source: no client certificate, and no
/// `Authorization` header on a route that would authenticate it (on a public route the header
/// counts for nothing). A locked-out source is refused here too. Returns the seconds to wait
/// when it is refused.
fn throttle_anonymous(state: &web::Data<AppState>, req: &ServiceRequest) -> Option<u64> {
    // A header authenticates something only on a route that reads it: on a public route or a
    // path no route matches it is nothing, and must not switch the throttle off.
    let anonymous = req.conn_data::<PeerCert>().is_none()
        && (!req.headers().contains_key(header::AUTHORIZATION)
            || public(req.path())
            || req.match_pattern().is_none());
    if !anonymous {
        return None;
    }
    let ip = state.guard.source(req.request())?;
    if let Some(secs) = state.guard.locked(ip) {
        return Some(secs.max(1));
    }
    match state.guard.anonymous(ip) {
        Decision::Allow { limit, remaining } => {
            req.extensions_mut().insert(RateLimitInfo {
                limit,
                remaining,
                reset: 0,
            });
            None
        }
        Decision::Deny { limit, retry_after } => {
            let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
            req.extensions_mut().insert(RateLimitInfo {
                limit,
                remaining: 0,
                reset: secs,
            });
            Some(secs)
        }
    }
}

/// Everything every response gets: its audit entry if it needs one, metrics, the request
/// id, security headers, the throttle's `RateLimit-*` headers, one log line.
fn finish(
    mut res: ServiceResponse<BoxBody>,
    id: &str,
    started: Instant,
    state: Option<&web::Data<AppState>>,
) -> ServiceResponse<BoxBody> {
    let pattern = res.request().match_pattern();
    if let Some(state) = state {
        audit_response(state, &res, pattern.as_deref());
    }
    let route = pattern.as_deref().unwrap_or("unmatched");
    let method = res.request().method().as_str();
    let method_label = match method {
        m @ ("GET" | "POST" | "PATCH" | "PUT" | "DELETE" | "HEAD") => m,
        _ => "other",
    };
    metrics::HTTP_REQUESTS
        .with_label_values(&[route, method_label, res.status().as_str()])
        .inc();
    metrics::HTTP_DURATION
        .with_label_values(&[route, method_label])
        .observe(started.elapsed().as_secs_f64());
    let rate = res.request().extensions().get::<RateLimitInfo>().copied();
    let status = res.status().as_u16();
    let h = res.headers_mut();
    // Room for what follows at once, rather than growing the map twice on the way.
    h.reserve(10);
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(X_REQUEST_ID, v);
    }
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No other origin may load an answer as a resource (`<img>`, `<script>`, no-cors fetch).
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    // The console's files carry their own policy (`routes::console`); nothing else may run.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(r) = rate {
        h.insert(RATELIMIT_LIMIT, HeaderValue::from(r.limit));
        h.insert(RATELIMIT_REMAINING, HeaderValue::from(r.remaining));
        h.insert(RATELIMIT_RESET, HeaderValue::from(r.reset));
    }
    if status == 401 {
        log_refusal(res.request());
    }
    tracing::info!(
        status,
        micros = started.elapsed().as_micros() as u64,
        "served"
    );
    res
}

/// The log line of a 401: why, from where, and the serial of the certificate refused (the
/// uniform body says none of it; the operator's log does). Never the credential.
fn log_refusal(req: &actix_web::HttpRequest) {
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let refusal = req.extensions().get::<AuthRefusal>().cloned();
    let (reason, serial) = match refusal {
        Some(r) => (r.reason, r.serial),
        None => ("no credential".to_owned(), None),
    };
    match serial {
        Some(serial) => {
            tracing::info!(%peer, %reason, serial = serial.as_str(), "authentication refused")
        }
        None => tracing::info!(%peer, %reason, "authentication refused"),
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Read-only routes that never write entries even though they are POSTs: verification is the
/// hot path, counted per key and outcome instead (see `keys::usage`).
const UNAUDITED: &[&str] = &["/v1/keys/verify", "/v1/certs/verify"];

/// Forward authentication answers about end clients: verification, never written one by one.
const FORWARD_AUTH: &str = "/v1/auth/check";
const FORWARD_AUTH_PREFIXED: &str = "/v1/auth/check/";
const FORWARD_AUTH_PREFIXED_LOGGED: &str = "/v1/auth/check/{path}";

/// Records what a response still needs recording: every mutation that did not record a
/// successful change in its own batch (refusals, failures, no-op changes), and every
/// authentication or authorisation failure on any route.
///
/// Only an authenticated principal's request is written on its own (off the response path).
/// A refusal without a usable credential, a throttled request, and every refusal on a
/// verification route are tallied instead ([`crate::audit::refusals`]): one entry per source
/// and window, so nobody without a credential makes Tessera write per request.
fn audit_response(
    state: &web::Data<AppState>,
    res: &ServiceResponse<BoxBody>,
    pattern: Option<&str>,
) {
    let req = res.request();
    let status = res.status().as_u16();
    let forward_auth = pattern.is_some_and(|p| p.starts_with(FORWARD_AUTH));
    let verification = forward_auth || pattern.is_some_and(|p| UNAUDITED.contains(&p));
    let mutation = !matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS") && !verification;
    let refused = matches!(status, 401 | 403 | 429);
    if !(mutation || refused) {
        return;
    }
    let ctx = req
        .extensions()
        .get::<std::sync::Arc<AuditContext>>()
        .cloned();
    let authenticated = req.extensions().get::<PrincipalName>().is_some();
    let outcome = outcome_of(status);
    let mut event = match ctx {
        Some(c) if c.recorded() && res.status().is_success() => return,
        Some(c) => c.event(outcome, None),
        None => base_event(req, state.clock.now()),
    };
    event.outcome = outcome.to_owned();
    if forward_auth || status == 429 || !authenticated {
        if forward_auth && authenticated {
            // A gateway or verifier asking about someone else's credential: the refusal is
            // the end client's, not the caller's own.
            event.outcome = format!("end_client_{outcome}");
        }
        metrics::AUDIT_REFUSALS
            .with_label_values(&[event.outcome.as_str()])
            .inc();
        state.runtime.refusals.note(event);
        return;
    }
    let Some(core) = state.try_core() else {
        return;
    };
    actix_web::rt::spawn(async move {
        if let Err(e) = core.audit().write(&event).await {
            tracing::error!(error = %e, "could not write an audit entry");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::new_request_id;

    #[test]
    fn request_ids_are_random_base62_and_refill_across_the_pool() {
        // More ids than one 4 KiB pool serves, on two threads.
        let ids: Vec<String> = std::thread::scope(|s| {
            let a = s.spawn(|| (0..400).map(|_| new_request_id()).collect::<Vec<_>>());
            let b = s.spawn(|| (0..400).map(|_| new_request_id()).collect::<Vec<_>>());
            let mut v = a.join().unwrap_or_default();
            v.extend(b.join().unwrap_or_default());
            v
        });
        assert_eq!(ids.len(), 800);
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 800, "no id repeats, across threads too");
        for id in &ids {
            let rest = id.strip_prefix("req_").unwrap_or_default();
            assert_eq!(rest.len(), 16, "{id}");
            assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        // Every character of the alphabet shows up: nothing is stuck.
        let seen: std::collections::HashSet<u8> =
            ids.iter().flat_map(|i| i.bytes().skip(4)).collect();
        assert_eq!(seen.len(), 62);
        // And no counter in disguise: the first character varies as much as the last.
        let first: std::collections::HashSet<u8> = ids.iter().map(|i| i.as_bytes()[4]).collect();
        assert!(first.len() > 40, "{} first characters", first.len());
    }
}
