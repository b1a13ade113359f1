//! Request middleware: a request id on every log line, in the `X-Request-Id` header and in
//! error bodies; security headers on every response; one access-log line per request.

use std::time::Instant;

use actix_web::{
    Error,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{self, HeaderName, HeaderValue},
    middleware::Next,
};
use tracing::Instrument;

use super::error::{ApiError, REQUEST_ID};
use crate::crypto::random;

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
