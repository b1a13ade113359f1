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
    error::{ApiError, REQUEST_ID},
    extract::base_event,
    state::AppState,
};
use crate::crypto::random;
use crate::{
    audit::{AuditContext, outcome_of},
    metrics,
};

fn new_request_id() -> String {
    let mut s = String::with_capacity(20);
    s.push_str("req_");
    if random::push_base62(&mut s, 16).is_err() {
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
    let method = req.method().clone();
    // The path only: queries carry cursors and filters, never secrets, but keep logs lean.
    let path = req.path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let started = Instant::now();
    REQUEST_ID
        .scope(
            id.clone(),
            async move {
                // Handlers and extractors turn their errors into responses inside the routing
                // service, so an error here comes from the framework itself: replace its body
                // (which could carry library text) with ours.
                let mut res = match next.call(req).await {
                    Ok(res) => res.map_into_boxed_body(),
                    Err(e) => {
                        let status = e.as_response_error().status_code();
                        tracing::error!(error = %e, %status, "error outside a handler");
                        return Err(if status.is_server_error() {
                            ApiError::Internal
                        } else {
                            ApiError::bad_body("the request could not be processed")
                        }
                        .into());
                    }
                };
                if let Some(state) = &state {
                    audit_response(state, &res);
                }
                let route = res
                    .request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_owned());
                let method_label = match method.as_str() {
                    m @ ("GET" | "POST" | "PATCH" | "PUT" | "DELETE" | "HEAD") => m,
                    _ => "other",
                };
                metrics::HTTP_REQUESTS
                    .with_label_values(&[route.as_str(), method_label, res.status().as_str()])
                    .inc();
                metrics::HTTP_DURATION
                    .with_label_values(&[route.as_str(), method_label])
                    .observe(started.elapsed().as_secs_f64());
                let h = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&id) {
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
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
                );
                if !h.contains_key(header::CACHE_CONTROL) {
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                }
                tracing::info!(
                    status = res.status().as_u16(),
                    micros = started.elapsed().as_micros() as u64,
                    "served"
                );
                Ok(res)
            }
            .instrument(span),
        )
        .await
}

/// Read-only routes that never write entries even though they are POSTs: verification is the
/// hot path, counted per key and outcome instead (see `keys::usage`).
const UNAUDITED: &[&str] = &["/v1/keys/verify", "/v1/certs/verify"];

/// Writes the audit entry a response still needs: every mutation that did not record a
/// successful change in its own batch (refusals, failures, no-op changes), and every
/// authentication or authorisation failure on any route. Written off the response path.
fn audit_response(state: &web::Data<AppState>, res: &ServiceResponse<BoxBody>) {
    let req = res.request();
    let status = res.status().as_u16();
    let pattern = req.match_pattern();
    let mutation = !matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS")
        && !pattern.as_deref().is_some_and(|p| UNAUDITED.contains(&p));
    if !(mutation || status == 401 || status == 403) {
        return;
    }
    let ctx = req
        .extensions()
        .get::<std::sync::Arc<AuditContext>>()
        .cloned();
    let outcome = outcome_of(status);
    let event = match ctx {
        Some(c) if c.recorded() && res.status().is_success() => return,
        Some(c) => c.event(outcome, None),
        None => {
            let mut e = base_event(req, state.clock.now());
            e.outcome = outcome.to_owned();
            e
        }
    };
    let state = state.clone();
    actix_web::rt::spawn(async move {
        if let Err(e) = state.audit.write(&event).await {
            tracing::error!(error = %e, "could not write an audit entry");
        }
    });
}
