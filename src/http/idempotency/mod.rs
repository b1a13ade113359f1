//! `Idempotency-Key` for create calls: a retry with the same key (same caller, same route,
//! same body) gets the first answer again instead of a second object. On the embedded engine
//! answers are kept in memory only (they can hold a secret), zeroized when dropped, for a
//! short window; on a shared database they are kept in it, encrypted under a key only the
//! retry's own header yields (shared.rs), so a retry replays on any node.

mod shared;

pub use shared::purge as purge_shared;

use crate::sync::Locked;
use std::{
    collections::HashMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode};

use super::error::ApiError;
use crate::crypto::secret::SecretBytes;

/// How long an answer is replayable.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Most answers held at once; beyond it new keys are not remembered (the call still works).
const CAPACITY: usize = 10_000;
pub(crate) const HEADER: &str = "idempotency-key";

/// A JSON answer that can be replayed.
#[derive(Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: SecretBytes,
}

impl Reply {
    pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Result<Self, ApiError> {
        let mut body = SecretBytes::with_capacity(1024);
        serde_json::to_writer(body.expose_mut(), value).map_err(|_| ApiError::Internal)?;
        Ok(Self { status, body })
    }

    /// The response, never cacheable (it may carry a secret).
    pub fn to_response(&self, replayed: bool) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        r.content_type("application/json")
            .insert_header(("cache-control", "no-store"));
        if replayed {
            r.insert_header(("idempotent-replayed", "true"));
        }
        r.body(self.body.expose().to_vec())
    }
}

enum Entry {
    InFlight,
    Done {
        digest: [u8; 32],
        reply: Reply,
        at: Instant,
    },
}

type Slot = (String, String, String);

#[derive(Default)]
pub struct Idempotency {
    entries: Mutex<HashMap<Slot, Entry>>,
}

/// Removes an in-flight marker if the request is dropped before it finishes.
struct InFlightGuard<'a> {
    owner: &'a Idempotency,
    slot: Option<Slot>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.owner.lock().remove(&slot);
        }
    }
}

/// Reads and checks the header: 1 to 255 visible ASCII characters.
pub fn key_from(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_owned()))
        }
        _ => Err(ApiError::bad(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// What a new request with a key may do.
pub(super) enum Claim {
    /// Run it; its answer will be remembered.
    Claimed,
    /// Run it without remembering (the table is full).
    Untracked,
    /// Answer with the remembered reply.
    Replay(Reply),
}

impl Idempotency {
    fn claim(&self, slot: &Slot, digest: [u8; 32]) -> Result<Claim, ApiError> {
        let mut map = self.lock();
        let now = Instant::now();
        match map.get(slot) {
            Some(Entry::Done {
                digest: d,
                reply,
                at,
            }) if now.duration_since(*at) < WINDOW => {
                if *d != digest {
                    return Err(ApiError::Conflict(
                        "this Idempotency-Key was used with a different request".into(),
                    ));
                }
                return Ok(Claim::Replay(reply.clone()));
            }
            Some(Entry::InFlight) => {
                return Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is in progress".into(),
                ));
            }
            _ => {}
        }
        if map.len() >= CAPACITY {
            map.retain(|_, e| match e {
                Entry::Done { at, .. } => now.duration_since(*at) < WINDOW,
                Entry::InFlight => true,
            });
        }
        if map.len() >= CAPACITY {
            return Ok(Claim::Untracked);
        }
        map.insert(slot.clone(), Entry::InFlight);
        Ok(Claim::Claimed)
    }

    /// Drops every remembered reply older than the window: a reply can hold a secret (the
    /// key it created), which must not outlive the window in memory. Run every few seconds.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        self.lock().retain(|_, e| match e {
            Entry::Done { at, .. } => now.duration_since(*at) < WINDOW,
            Entry::InFlight => true,
        });
    }

    /// Forgets every remembered reply (sealing: no secret stays in memory).
    pub fn clear(&self) {
        self.lock().retain(|_, e| matches!(e, Entry::InFlight));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, Entry>> {
        self.entries.write_locked()
    }

    /// Runs `create` at most once per (caller, request path, key) within the window (on a
    /// shared database, across every node).
    #[allow(clippy::too_many_arguments)]
    pub async fn run<F, Fut>(
        &self,
        core: &std::sync::Arc<crate::app::Core>,
        caller: &str,
        route: &str,
        key: Option<String>,
        digest: [u8; 32],
        now: crate::clock::Timestamp,
        create: F,
    ) -> Result<HttpResponse, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Reply, ApiError>>,
    {
        let Some(key) = key else {
            return create().await.map(|r| r.to_response(false));
        };
        if core.store().shared() {
            return run_shared(core, caller, route, &key, digest, now, create).await;
        }
        let slot: Slot = (caller.to_owned(), route.to_owned(), key);
        match self.claim(&slot, digest)? {
            Claim::Replay(reply) => return Ok(reply.to_response(true)),
            Claim::Untracked => return create().await.map(|r| r.to_response(false)),
            Claim::Claimed => {}
        }
        let mut guard = InFlightGuard {
            owner: self,
            slot: Some(slot),
        };
        let result = create().await;
        if let (Ok(reply), Some(slot)) = (&result, guard.slot.take()) {
            self.lock().insert(
                slot,
                Entry::Done {
                    digest,
                    reply: reply.clone(),
                    at: Instant::now(),
                },
            );
        }
        result.map(|r| r.to_response(false))
    }
}

/// [`Idempotency::run`] on a shared database.
async fn run_shared<F, Fut>(
    core: &std::sync::Arc<crate::app::Core>,
    caller: &str,
    route: &str,
    key: &str,
    digest: [u8; 32],
    now: crate::clock::Timestamp,
    create: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Reply, ApiError>>,
{
    let slot = std::sync::Arc::new(shared::Slot::new(core, caller, route, key)?);
    match slot.claim(core, &digest, now).await? {
        Claim::Replay(reply) => return Ok(reply.to_response(true)),
        Claim::Untracked | Claim::Claimed => {}
    }
    // A request dropped before it finishes lets the slot go (in the background).
    struct Release(
        Option<(
            std::sync::Arc<crate::app::Core>,
            std::sync::Arc<shared::Slot>,
        )>,
    );
    impl Drop for Release {
        fn drop(&mut self) {
            if let Some((core, slot)) = self.0.take() {
                actix_web::rt::spawn(async move {
                    let _ = slot.release(&core).await;
                });
            }
        }
    }
    let mut release = Release(Some((core.clone(), slot.clone())));
    let result = create().await;
    match &result {
        Ok(reply) => {
            release.0 = None;
            if let Err(e) = slot.finish(core, &digest, reply, now).await {
                // The object exists; only the replay is lost: a retry gets 409 until the
                // in-flight marker expires.
                tracing::warn!(error = %e, "could not keep an idempotent answer");
            }
        }
        Err(_) => {
            release.0 = None;
            slot.release(core).await?;
        }
    }
    result.map(|r| r.to_response(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_holding_secrets_do_not_outlive_the_window() {
        let idem = Idempotency::default();
        let reply = Reply::json(StatusCode::CREATED, &serde_json::json!({"key": "tsk_x"})).unwrap();
        let old = Instant::now()
            .checked_sub(WINDOW + Duration::from_secs(1))
            .unwrap();
        let fresh = Instant::now();
        let slot = |k: &str| ("p".to_owned(), "/r".to_owned(), k.to_owned());
        idem.lock().insert(
            slot("old"),
            Entry::Done {
                digest: [0; 32],
                reply: reply.clone(),
                at: old,
            },
        );
        idem.lock().insert(
            slot("fresh"),
            Entry::Done {
                digest: [0; 32],
                reply,
                at: fresh,
            },
        );
        idem.purge_expired();
        assert!(!idem.lock().contains_key(&slot("old")));
        assert!(idem.lock().contains_key(&slot("fresh")));
        idem.clear();
        assert!(idem.lock().is_empty());
    }
}
