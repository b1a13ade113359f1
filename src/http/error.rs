//! The one error type of the HTTP layer and its mapping to responses.
//!
//! Bodies are `{"error": {"code", "message", "request_id", "field"?}}`. Messages are fixed,
//! safe text: an internal cause is logged with the request id and never sent. Every
//! authentication failure is the same 401 body; another tenant's object is the same 404 as a
//! missing one.

use std::fmt;

use actix_web::{
    HttpResponse, ResponseError,
    http::{StatusCode, header},
};
use serde::Serialize;

use crate::{
    access::{Denied, Permission},
    keys::KeysError,
    pki::PkiError,
    store::StoreError,
};

tokio::task_local! {
    /// The id of the request being served (set by the request middleware).
    pub static REQUEST_ID: String;
}

/// The current request's id, or empty outside a request.
pub fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Every error answer's body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `invalid_request`, `unauthenticated`, `forbidden`, `not_found`, `method_not_allowed`,
    /// `conflict`, `payload_too_large`, `headers_too_large`, `unsupported_media_type`,
    /// `rate_limited`, `unavailable`, `sealed` or `internal`.
    pub code: &'static str,
    /// Fixed, safe text.
    pub message: String,
    /// The request's id (also in the `X-Request-Id` header and the logs).
    pub request_id: String,
    /// The offending field of a 400, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The permission a 403 lacks, when one would do (e.g. `keys:verify`, or `admin` for
    /// the global admin's routes). The caller is authenticated: this is no clue to an
    /// attacker, and it tells an operator which role to bind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<&'static str>,
}

/// Errors as the client sees them.
#[derive(Debug)]
pub enum ApiError {
    /// Bad input; `field` names the offending field when there is one.
    BadRequest {
        field: Option<String>,
        message: String,
    },
    /// Not authenticated, whatever the reason.
    Unauthenticated,
    /// Authenticated but not allowed: why, and the permission it lacks when one would do.
    Forbidden {
        message: std::borrow::Cow<'static, str>,
        permission: Option<&'static str>,
    },
    /// No such object visible to the caller.
    NotFound,
    /// The route exists, the method does not; `Allow` lists the methods.
    MethodNotAllowed(&'static str),
    /// The object's state forbids the change.
    Conflict(String),
    PayloadTooLarge,
    /// The request's headers are larger than allowed.
    HeadersTooLarge,
    UnsupportedMediaType,
    /// Too many requests (throttled, or the source is locked out); retry after so many
    /// seconds.
    TooManyRequests {
        retry_after: u64,
    },
    /// Storage cannot accept writes right now; nothing was changed.
    Unavailable,
    /// The server is sealed: unseal it first.
    Sealed,
    /// A bug or corrupted data. Logged; the client gets fixed text.
    Internal,
}

impl ApiError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A 403 for a caller that lacks `permission` (in the tenant it acts in).
    pub fn lacks(permission: Permission) -> Self {
        Self::Forbidden {
            message: format!(
                "not allowed: this needs the permission {}",
                permission.as_str()
            )
            .into(),
            permission: Some(permission.as_str()),
        }
    }

    /// A 403 for the global admin's routes, which no tenant permission opens.
    pub fn global_admin_only() -> Self {
        Self::Forbidden {
            message: "not allowed: only the global admin may do this".into(),
            permission: Some(Permission::Admin.as_str()),
        }
    }

    /// A 403 for a rule no permission lifts.
    pub fn refused(message: &'static str) -> Self {
        Self::Forbidden {
            message: format!("not allowed: {message}").into(),
            permission: None,
        }
    }

    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: None,
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "invalid_request",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Unavailable => "unavailable",
            ApiError::Sealed => "sealed",
            ApiError::Internal => "internal",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest { message, .. } => message.clone(),
            ApiError::Unauthenticated => "authentication required".into(),
            ApiError::Forbidden { message, .. } => message.to_string(),
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed(_) => "method not allowed".into(),
            ApiError::Conflict(m) => m.clone(),
            ApiError::PayloadTooLarge => "the request body is too large".into(),
            ApiError::HeadersTooLarge => "the request headers are too large".into(),
            ApiError::UnsupportedMediaType => "the body must be application/json".into(),
            ApiError::TooManyRequests { .. } => "too many requests; retry later".into(),
            ApiError::Unavailable => "the service cannot accept this request right now".into(),
            ApiError::Sealed => "the server is sealed".into(),
            ApiError::Internal => "internal error".into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::Sealed => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let error = ErrorDetail {
            code: self.code(),
            message: self.message(),
            request_id: request_id(),
            field: match self {
                ApiError::BadRequest { field, .. } => field.clone(),
                _ => None,
            },
            permission: match self {
                ApiError::Forbidden { permission, .. } => *permission,
                _ => None,
            },
        };
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        if let ApiError::MethodNotAllowed(allow) = self {
            res.insert_header((header::ALLOW, *allow));
        }
        if let ApiError::TooManyRequests { retry_after } = self {
            res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
        }
        if let ApiError::Unauthenticated = self {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer, mTLS"));
        }
        res.json(ErrorBody { error })
    }
}

impl From<crate::app::AppError> for ApiError {
    fn from(e: crate::app::AppError) -> Self {
        match e {
            crate::app::AppError::Store(s) => s.into(),
            e => {
                tracing::error!(error = %e, "internal error");
                ApiError::Internal
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => {
                ApiError::Conflict("a concurrent change conflicted; retry".into())
            }
            StoreError::Unavailable(_) | StoreError::Locked => {
                tracing::error!(error = %e, "storage unavailable");
                ApiError::Unavailable
            }
            StoreError::Corrupt { .. }
            | StoreError::NewerFormat { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::WrongMasterKey
            | StoreError::Crypto => {
                tracing::error!(error = %e, "internal error");
                ApiError::Internal
            }
        }
    }
}

impl From<KeysError> for ApiError {
    fn from(e: KeysError) -> Self {
        match e {
            KeysError::NotFound => ApiError::NotFound,
            KeysError::Conflict(m) => ApiError::Conflict(m.to_owned()),
            KeysError::Invalid { field, message } => ApiError::bad(field, message),
            KeysError::Store(s) => s.into(),
            KeysError::Crypto(c) => {
                tracing::error!(error = %c, "crypto failure");
                ApiError::Internal
            }
        }
    }
}

impl From<PkiError> for ApiError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::Store(s) => s.into(),
            PkiError::Invalid { field, message } => ApiError::bad(field, message),
            PkiError::NotFound => ApiError::NotFound,
            PkiError::Conflict(m) => ApiError::Conflict(m.to_owned()),
            PkiError::Refused(m) => {
                tracing::info!(reason = m, "refused");
                ApiError::refused(m)
            }
            other => {
                tracing::error!(error = %other, "pki failure");
                ApiError::Internal
            }
        }
    }
}

impl From<crate::access::AccessError> for ApiError {
    fn from(e: crate::access::AccessError) -> Self {
        use crate::access::AccessError as A;
        match e {
            A::NotFound => ApiError::NotFound,
            A::Conflict(m) => ApiError::Conflict(m.to_owned()),
            A::Invalid { field, message } => ApiError::bad(field, message),
            A::Denied(d) => d.into(),
            A::Store(s) => s.into(),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        tracing::info!(reason = %e, "refused");
        match e {
            Denied::Forbidden(p) => ApiError::lacks(p),
            Denied::Escalation => {
                ApiError::refused("this would grant permissions the caller does not hold")
            }
        }
    }
}
