//! Following the global feed log and keeping each scope's sequence, chain and recent events
//! in memory.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use ring::digest;
use serde::Serialize;
use tokio::sync::watch;

use super::{Event, LOG, RETAINED_PER_SCOPE, RETENTION_SECS, Scope, signer};
use crate::{
    clock::Clock,
    crypto::hex,
    store::{Store, StoreError},
    sync::Locked,
};

/// Global log entries read per step.
const PAGE: usize = 1000;
/// Events returned per read at most.
pub const MAX_EVENTS: usize = 1000;
const DOMAIN: &[u8] = b"tessera-feed-v1";

/// A scope's chain hash: `SHA-256("tessera-feed-v1" ‖ scope ‖ 0 ‖ prev ‖ seq BE ‖ body)`.
pub fn chain_hash(scope: &str, prev: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(scope.as_bytes());
    ctx.update(&[0]);
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// One event as readers get it: its place in the scope's chain and its canonical body (the
/// exact bytes the hash covers, as a JSON string, so a reader hashes what it was sent).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FeedEvent)]
pub struct WireEvent {
    pub seq: u64,
    /// Hex SHA-256 chain hash after this event.
    pub hash: String,
    /// The event as compact JSON: `{"type", "time", "tenant", "key_id"?, "api_id"?,
    /// "superseded_by"?, "stops_at"?, "serial"?, "issuer"?}`.
    pub body: String,
    #[serde(skip)]
    time_ms: i64,
}

/// A scope's head as this node knows it, not yet signed.
#[derive(Clone, Debug)]
pub struct Head {
    scope: String,
    seq: u64,
    hash: [u8; 32],
    time_ms: i64,
}

impl Head {
    /// The last sequence number of the scope.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A signed statement: as of `time_ms`, the scope's chain ends at `seq` with `hash`.
/// The signed text is `tessera-feed-checkpoint-v1\n<scope>\n<seq>\n<hash>\n<time_ms>\n`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FeedCheckpoint)]
pub struct Checkpoint {
    pub scope: String,
    pub seq: u64,
    pub hash: String,
    /// Unix milliseconds: when this node last finished reading the whole feed.
    pub time_ms: i64,
    pub algorithm: &'static str,
    pub public_key: String,
    pub signature: String,
}

/// What a reader resuming after a sequence number gets.
pub enum Since {
    /// The events after it (at most [`MAX_EVENTS`]; possibly none).
    Events(Vec<Arc<WireEvent>>),
    /// The cursor is older than what is retained (or not one of this scope's): re-read the
    /// snapshot.
    Reset,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// This node has not read the whole feed since it started (or cannot read it now).
    #[error("the change feed is not ready")]
    NotReady,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct ScopeLog {
    seq: u64,
    hash: [u8; 32],
    events: VecDeque<Arc<WireEvent>>,
}

#[derive(Default)]
struct State {
    /// The last global log entry applied.
    position: u64,
    /// When the last read that reached the end of the global log began.
    caught_up_ms: Option<i64>,
    scopes: HashMap<String, ScopeLog>,
    /// A global entry could not be opened or read: the feed stops (fail closed: checkpoints
    /// stop getting newer, verifiers freeze) until the process restarts.
    broken: bool,
}

/// The feed as this node follows it.
pub struct Feed {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signer: signer::Signer,
    state: RwLock<State>,
    /// Bumped whenever events were applied: readers waiting for news watch it.
    news: watch::Sender<u64>,
}

impl Feed {
    /// Loads (or creates) the feed key. Call [`Feed::follow`] to start reading.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let signer = signer::Signer::load_or_create(&*store).await?;
        Ok(Arc::new(Self {
            store,
            clock,
            signer,
            state: RwLock::new(State::default()),
            news: watch::channel(0).0,
        }))
    }

    /// Starts the task that follows the global log, every `interval` (it ends when the feed
    /// is dropped, at seal).
    pub fn follow(self: &Arc<Self>, interval: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(follow(weak, interval));
    }

    /// The feed key's public half (hex).
    pub fn public_key(&self) -> &str {
        self.signer.public_hex()
    }

    /// A receiver that changes whenever events were applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.news.subscribe()
    }

    /// Reads the global log from where this node is, to its end; whether any event was
    /// applied.
    pub async fn read_once(&self) -> Result<bool, StoreError> {
        let started = self.clock.now().unix_millis();
        let mut applied = false;
        loop {
            let from = self.state.read_locked().position;
            let page = self.store.read_log(LOG, from, PAGE).await?;
            let n = page.len();
            let mut parsed = Vec::with_capacity(n);
            for (i, r) in page.into_iter().enumerate() {
                let want = from + 1 + i as u64;
                let entry = match r.entry {
                    Ok(e) if r.position == want && e.seq == want => e,
                    Ok(_) => return Err(self.break_off(want, "out of sequence")),
                    Err(e) => return Err(self.break_off(want, &e.to_string())),
                };
                let event: Event = match serde_json::from_slice(&entry.body) {
                    Ok(e) => e,
                    Err(_) => return Err(self.break_off(want, "not an event")),
                };
                let body =
                    String::from_utf8(entry.body).map_err(|_| self.break_off(want, "not UTF-8"))?;
                parsed.push((event, body));
            }
            if !parsed.is_empty() {
                // Read once applied, maybe before its flush: published only once durable (a
                // crash must not take back what a verifier has seen).
                self.store.sync().await?;
                self.apply(from, parsed, started);
                applied = true;
            }
            if n < PAGE {
                let mut st = self.state.write_locked();
                if !st.broken {
                    st.caught_up_ms = Some(started);
                }
                break;
            }
        }
        if applied {
            self.news.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(applied)
    }

    fn break_off(&self, seq: u64, why: &str) -> StoreError {
        let mut st = self.state.write_locked();
        if !st.broken {
            tracing::error!(
                seq,
                why,
                "the change feed cannot be read past this entry; verifiers that follow it will go stale"
            );
            st.broken = true;
        }
        StoreError::Corrupt {
            kind: LOG.0,
            id: seq.to_string(),
        }
    }

    fn apply(&self, from: u64, events: Vec<(Event, String)>, now_ms: i64) {
        let mut st = self.state.write_locked();
        if st.broken || st.position != from {
            return;
        }
        let oldest = now_ms - RETENTION_SECS * 1000;
        for (event, body) in events {
            st.position += 1;
            let time_ms = event.time.unix_millis();
            for scope in event.scopes() {
                let name = scope.to_string();
                let log = st.scopes.entry(name.clone()).or_default();
                log.seq += 1;
                log.hash = chain_hash(&name, &log.hash, log.seq, body.as_bytes());
                log.events.push_back(Arc::new(WireEvent {
                    seq: log.seq,
                    hash: hex::encode(&log.hash),
                    body: body.clone(),
                    time_ms,
                }));
                while log.events.len() > RETAINED_PER_SCOPE
                    || log.events.front().is_some_and(|e| e.time_ms < oldest)
                {
                    log.events.pop_front();
                }
            }
        }
    }

    fn ready(st: &State) -> Result<i64, FeedError> {
        match st.caught_up_ms {
            Some(t) if !st.broken => Ok(t),
            _ => Err(FeedError::NotReady),
        }
    }

    /// Signs a head (only when it is sent: a reader waiting for its scope costs no signature
    /// when another scope changes).
    pub fn sign(&self, head: &Head) -> Checkpoint {
        let hash = hex::encode(&head.hash);
        let signature =
            self.signer
                .sign(&signer::message(&head.scope, head.seq, &hash, head.time_ms));
        Checkpoint {
            scope: head.scope.clone(),
            seq: head.seq,
            hash,
            time_ms: head.time_ms,
            algorithm: "ed25519",
            public_key: self.signer.public_hex().to_owned(),
            signature,
        }
    }

    /// The scope's head (to sign with [`Feed::sign`] when it is sent).
    pub fn head(&self, scope: &Scope) -> Result<Head, FeedError> {
        let name = scope.to_string();
        let st = self.state.read_locked();
        let time_ms = Self::ready(&st)?;
        let (seq, hash) = st
            .scopes
            .get(&name)
            .map_or((0, [0; 32]), |l| (l.seq, l.hash));
        Ok(Head {
            scope: name,
            seq,
            hash,
            time_ms,
        })
    }

    /// The scope's events after `after`, and its head at the same moment (to sign with
    /// [`Feed::sign`] when it is sent).
    pub fn since(&self, scope: &Scope, after: u64) -> Result<(Since, Head), FeedError> {
        let name = scope.to_string();
        let (since, seq, hash, time) = {
            let st = self.state.read_locked();
            let time = Self::ready(&st)?;
            let empty = ScopeLog::default();
            let log = st.scopes.get(&name).unwrap_or(&empty);
            let since = if after > log.seq {
                Since::Reset
            } else if after == log.seq {
                Since::Events(Vec::new())
            } else {
                match log.events.front() {
                    Some(first) if first.seq <= after + 1 => {
                        let skip = (after + 1 - first.seq) as usize;
                        Since::Events(
                            log.events
                                .iter()
                                .skip(skip)
                                .take(MAX_EVENTS)
                                .cloned()
                                .collect(),
                        )
                    }
                    _ => Since::Reset,
                }
            };
            (since, log.seq, log.hash, time)
        };
        Ok((
            since,
            Head {
                scope: name,
                seq,
                hash,
                time_ms: time,
            },
        ))
    }
}

async fn follow(weak: Weak<Feed>, interval: Duration) {
    let mut failing = false;
    loop {
        let Some(feed) = weak.upgrade() else { return };
        match feed.read_once().await {
            Ok(_) if failing => {
                tracing::info!("reading the change feed again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the change feed; its checkpoints stop getting newer");
                }
                failing = true;
            }
        }
        drop(feed);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_hash_binds_the_scope_and_the_position() {
        let body = br#"{"type":"key.revoked"}"#;
        let h = chain_hash("tenant:a", &[0; 32], 1, body);
        assert_ne!(h, chain_hash("tenant:b", &[0; 32], 1, body));
        assert_ne!(h, chain_hash("tenant:a", &[0; 32], 2, body));
        assert_ne!(h, chain_hash("tenant:a", &[1; 32], 1, body));
        assert_ne!(
            h,
            chain_hash("tenant:a", &[0; 32], 1, br#"{"type":"key.changed"}"#)
        );
    }
}
