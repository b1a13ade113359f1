//! The signed change feed (docs/edge.md): what a verifier outside this process needs to learn,
//! within a stated bound, that a key or certificate it trusted has changed.
//!
//! **Written with the change.** A key or certificate change appends its [`Event`] to the
//! store's hash-chained log `feed` in the same atomic batch as the change, exactly as the
//! audit entry is written: an acknowledged change is in the feed. That log is global (one
//! sequence for the whole store, shared by every node of a cluster).
//!
//! **Read per scope.** A reader asks for one scope: `tenant:<name>` or `api:<id>`. Every node
//! follows the global log in order ([`Feed::follow`]) and gives each scope an event sequence
//! of its own, gap-free from 1, and a hash chain of its own
//! (`SHA-256("tessera-feed-v1" ‖ scope ‖ 0 ‖ prev ‖ seq as u64 BE ‖ body)`). Both are a pure
//! function of the global log, so every node and every restart computes the same numbers and
//! hashes, and a reader never learns the global sequence (how busy other tenants are).
//!
//! **Signed checkpoints.** `{scope, seq, hash, time_ms}` signed with the feed's own Ed25519
//! key ([`signer`]), whose public half is served at the public `GET /v1/feed/key` and pinned
//! by verifiers. `time_ms` is when this node last finished reading the whole global log, never
//! later: a checkpoint says "as of this time, nothing in this scope after `seq`".
//!
//! Nothing secret is in the feed: ids, types and times. A verifier caches the answers it got
//! from `POST /v1/keys/verify` and drops them when the feed names the key (design A of
//! docs/edge.md, and why it was chosen over per-scope verifier hashes).

mod follow;
mod signer;

use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    crypto::secret::SecretBytes,
    identity::Serial,
    ids::{ApiId, KeyId, TenantName},
    store::{Batch, Kind, StoreError},
};

pub use follow::{Checkpoint, Feed, FeedError, Head, MAX_EVENTS, Since, WireEvent};

/// The global log the events are appended to.
pub const LOG: Kind = Kind("feed");

/// How long events are kept for resuming readers (a reader further behind gets `reset`).
pub const RETENTION_SECS: i64 = 3600;
/// The most events kept per scope for resuming readers.
pub const RETAINED_PER_SCOPE: usize = 20_000;

/// What changed. Stored as compact JSON; the canonical body a scope's chain hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// `key.created`, `key.changed`, `key.disabled`, `key.enabled`, `key.rotated`,
    /// `key.revoked`, `cert.revoked`.
    #[serde(rename = "type")]
    pub kind: String,
    pub time: Timestamp,
    pub tenant: TenantName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<ApiId>,
    /// `key.rotated`: the replacement, and when the rotated key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<KeyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stops_at: Option<Timestamp>,
    /// `cert.revoked`: the certificate's serial and its issuing CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<Serial>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl Event {
    /// An event of type `kind` about an object of `tenant`, at `time`; the caller fills in
    /// what names the object (the feed knows no domain type: keys and the PKI call it).
    pub fn new(kind: &str, tenant: TenantName, time: Timestamp) -> Self {
        Self {
            kind: kind.to_owned(),
            time,
            tenant,
            key_id: None,
            api_id: None,
            superseded_by: None,
            stops_at: None,
            serial: None,
            issuer: None,
        }
    }

    /// The scopes whose chains the event belongs to: its tenant's, and its API's.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut v = vec![Scope::Tenant(self.tenant.clone())];
        if let Some(api) = &self.api_id {
            v.push(Scope::Api(api.clone()));
        }
        v
    }

    fn canonical(&self) -> Result<SecretBytes, StoreError> {
        let mut buf = SecretBytes::with_capacity(256);
        serde_json::to_writer(buf.expose_mut(), self).map_err(|_| StoreError::Crypto)?;
        Ok(buf)
    }
}

/// Appends `event` to the feed in `batch` (with the change it describes).
pub fn append(batch: &mut Batch, event: &Event) -> Result<(), StoreError> {
    batch.append(LOG, event.canonical()?)
}

/// What a feed reader follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant(TenantName),
    Api(ApiId),
}

impl Scope {
    /// `tenant:<name>` or `api:<id>`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        const MSG: &str = "must be tenant:<name> or api:<id>";
        match s.split_once(':') {
            Some(("tenant", t)) => TenantName::parse(t).map(Self::Tenant).map_err(|_| MSG),
            Some(("api", a)) => ApiId::parse(a).map(Self::Api).map_err(|_| MSG),
            _ => Err(MSG),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tenant(t) => write!(f, "tenant:{t}"),
            Self::Api(a) => write!(f, "api:{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        let s = Scope::parse("tenant:acme").unwrap();
        assert_eq!(s.to_string(), "tenant:acme");
        let id = ApiId::generate().unwrap();
        assert_eq!(
            Scope::parse(&format!("api:{id}")).unwrap(),
            Scope::Api(id.clone())
        );
        for bad in ["", "acme", "tenant:", "api:nope", "key:x", "tenant:A B"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }
}
