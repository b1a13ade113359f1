//! The vocabulary of answers: what is asked, what Tessera (or the cache) answers, where the
//! answer came from, and what a middleware hands a handler.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Tessera's answer to a verify request (the body of `POST /v1/keys/verify`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `REVOKED`, `EXPIRED`, `DISABLED`, `IDENTITY_MISMATCH`,
    /// `INSUFFICIENT_SCOPES`, `RATE_LIMITED`, `USAGE_EXCEEDED`.
    pub code: String,
    pub key_id: Option<String>,
    pub api_id: Option<String>,
    pub tenant: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<serde_json::Value>,
    pub expires_at: Option<String>,
    pub remaining: Option<u64>,
    pub ratelimit: Option<serde_json::Value>,
    #[serde(default)]
    pub expiring: bool,
    pub rotation: Option<Rotation>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rotation {
    pub stage: String,
    pub superseded_by: Option<String>,
    pub stops_at: Option<String>,
}

/// One verify request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    pub key: &'a str,
    /// The API the key must belong to.
    pub api_id: Option<&'a str>,
    /// The scopes the key must hold.
    pub scopes: &'a [&'a str],
    /// The end client's identity (SPIFFE id or `sha256:` fingerprint) for sender-constrained
    /// keys. Without it Tessera compares with this verifier's own certificate.
    pub presented_identity: Option<&'a str>,
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Tessera,
}

/// The outcome of [`crate::Verifier::verify`].
#[derive(Clone, Debug)]
pub enum Decision {
    Answer {
        verdict: Arc<Verdict>,
        source: Source,
    },
    /// No answer can be given now (stale and refusing, or Tessera unreachable): fail closed.
    Unavailable,
}

/// What a middleware puts in the request's extensions for a handler: the valid key's answer.
#[derive(Clone, Debug)]
pub struct Verified {
    pub verdict: Arc<Verdict>,
    pub source: Source,
}

/// The `presented_identity` a middleware sends when it knows no end-client identity: a
/// fingerprint no certificate has, so a sender-constrained key is refused
/// (`IDENTITY_MISMATCH`) instead of being compared with this verifier's own certificate.
/// Keys that are not bound are unaffected.
pub const NO_IDENTITY: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub fn presented_key<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(x_api_key)
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The outcome of [`crate::Verifier::verify_local`].
#[derive(Clone, Debug)]
pub enum Local {
    Answer(Arc<Verdict>),
    AskTessera(Why),
}

/// Why a request cannot be answered locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// No verified checkpoint within `max_staleness`.
    Stale,
    /// Not cached (never asked, dropped by the feed, too old, or central-only).
    NotCached,
}

/// The answer for a key that is none of this verifier's (or no key at all).
pub(crate) fn not_found() -> Verdict {
    Verdict {
        valid: false,
        code: "NOT_FOUND".into(),
        key_id: None,
        api_id: None,
        tenant: None,
        scopes: None,
        metadata: None,
        expires_at: None,
        remaining: None,
        ratelimit: None,
        expiring: false,
        rotation: None,
    }
}
