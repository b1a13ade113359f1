//! `/v1/feed`: the signed change feed (docs/edge.md) as a snapshot, a Server-Sent Events
//! stream and a long poll.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::{
    access::{Permission, authorize},
    feed::{self, Checkpoint, Feed, FeedError, Scope, Since, WireEvent},
    http::{
        error::ApiError,
        extract::{Authenticated, Query},
        state::AppState,
    },
};

/// How often an idle stream sends a checkpoint (the heartbeat).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long one stream lasts; the client reconnects with `Last-Event-ID`.
const STREAM_FOR: Duration = Duration::from_secs(300);
/// The longest long poll.
const MAX_WAIT_SECS: u64 = 30;

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::NotReady => ApiError::Unavailable,
            FeedError::Store(e) => e.into(),
        }
    }
}

/// The scope the caller asked for, if it may read it: its own tenant or one of its APIs (the
/// global admin: any). Anything else is a 404, like a missing object.
async fn visible_scope(
    state: &AppState,
    auth: &Authenticated,
    raw: &str,
) -> Result<(Scope, Arc<crate::app::Core>), ApiError> {
    let core = state.core()?;
    let tenants = authorize(&auth.0, Permission::FeedRead)?;
    let scope = Scope::parse(raw).map_err(|m| ApiError::bad("scope", m))?;
    match &scope {
        Scope::Tenant(t) if !tenants.allows(t) => return Err(ApiError::NotFound),
        Scope::Tenant(_) => {}
        Scope::Api(id) => {
            core.keys().get_api(&tenants, id).await?;
        }
    }
    Ok((scope, core))
}

/// The feed key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedKey {
    /// Always `ed25519`.
    pub algorithm: &'static str,
    /// The raw 32-byte public key, hex.
    pub public_key: String,
}

#[utoipa::path(
    get, path = "/v1/feed/key", tag = "feed", operation_id = "feedKey",
    responses((status = 200, description = "The public key that signs feed checkpoints. Pin it in verifiers at deployment (fetch it over a channel you trust).", body = FeedKey)),
    security(()),
)]
pub async fn key(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    Ok(HttpResponse::Ok().json(FeedKey {
        algorithm: "ed25519",
        public_key: core.feed().public_key().to_owned(),
    }))
}

/// `?scope=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// `tenant:<name>` or `api:<id>`.
    scope: String,
}

/// A revoked certificate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FeedRevokedCert)]
pub struct RevokedCert {
    /// The issuing CA's id.
    pub issuer: String,
    /// Hex.
    pub serial: String,
}

/// Where a reader starts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FeedSnapshot)]
pub struct Snapshot {
    /// The scope's head, signed: follow from `checkpoint.seq`.
    pub checkpoint: Checkpoint,
    /// A tenant scope: the tenant's revoked, unexpired certificates, read after the
    /// checkpoint (every revocation at or before it is listed; a later one may be listed too,
    /// and comes again as an event). Absent for an API scope (certificates are not an API's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_certificates: Option<Vec<RevokedCert>>,
    /// How long events are kept for a resuming reader; an older cursor gets `reset`.
    pub retention_seconds: i64,
    /// How often a stream sends a checkpoint while idle.
    pub heartbeat_seconds: u64,
}

#[utoipa::path(
    get, path = "/v1/feed/snapshot", tag = "feed", operation_id = "feedSnapshot",
    params(SnapshotQuery),
    responses(
        (status = 200, description = "The scope's signed head. A verifier starts with nothing cached and follows from here.", body = Snapshot),
        (status = 503, description = "This node has not read the whole feed yet."),
    ),
)]
pub async fn snapshot(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<SnapshotQuery>,
) -> Result<HttpResponse, ApiError> {
    let (scope, core) = visible_scope(&state, &auth, &q.0.scope).await?;
    let feed = core.feed();
    let checkpoint = feed.sign(&feed.head(&scope)?);
    // After the checkpoint: a revocation it covers was durable before the feed published it.
    let revoked_certificates = match &scope {
        Scope::Tenant(t) => Some(
            core.pki()
                .revoked_of_tenant(t, state.clock.now())
                .await?
                .into_iter()
                .map(|(issuer, serial)| RevokedCert {
                    issuer: issuer.to_string(),
                    serial: serial.as_str().to_owned(),
                })
                .collect(),
        ),
        Scope::Api(_) => None,
    };
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(Snapshot {
            checkpoint,
            revoked_certificates,
            retention_seconds: feed::RETENTION_SECS,
            heartbeat_seconds: HEARTBEAT.as_secs(),
        }))
}

/// `?scope=&after=&wait=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// `tenant:<name>` or `api:<id>`.
    scope: String,
    /// The last sequence number the reader holds (0: none).
    after: u64,
    /// Seconds to wait for an event when there is none yet (at most 30; default 0).
    #[serde(default)]
    #[param(maximum = 30)]
    wait: Option<u64>,
}

/// A long poll's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FeedChanges)]
pub struct Changes<'a> {
    /// The cursor is older than the retention (or beyond the head): re-read the snapshot.
    pub reset: bool,
    /// At most 1 000; ask again after the last one for more.
    pub events: Vec<&'a WireEvent>,
    /// The scope's head when the events were read.
    pub checkpoint: Checkpoint,
}

#[utoipa::path(
    get, path = "/v1/feed/changes", tag = "feed", operation_id = "feedChanges",
    params(ChangesQuery),
    responses(
        (status = 200, description = "The events after `after` (waiting up to `wait` seconds for one) and a signed checkpoint of the head: the long-poll form for proxies that break Server-Sent Events.", body = Changes),
        (status = 503, description = "This node has not read the whole feed yet."),
    ),
)]
pub async fn changes(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<ChangesQuery>,
) -> Result<HttpResponse, ApiError> {
    let wait = q.0.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad("wait", "must be at most 30"));
    }
    let (scope, core) = visible_scope(&state, &auth, &q.0.scope).await?;
    let mut news = core.feed().subscribe();
    // Held weakly while waiting: sealing must not wait for a long poll to end.
    let weak = Arc::downgrade(core.feed());
    drop(core);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        news.borrow_and_update();
        let feed = weak.upgrade().ok_or(ApiError::Sealed)?;
        let (since, head) = feed.since(&scope, q.0.after)?;
        let timed_out = tokio::time::Instant::now() >= deadline;
        let (reset, events) = match since {
            Since::Reset => (true, Vec::new()),
            Since::Events(v) if !v.is_empty() || timed_out => (false, v),
            Since::Events(_) => {
                drop(feed);
                match tokio::time::timeout_at(deadline, news.changed()).await {
                    Ok(Ok(())) | Err(_) => continue,
                    Ok(Err(_)) => return Err(ApiError::Sealed),
                }
            }
        };
        let checkpoint = feed.sign(&head);
        return Ok(HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(Changes {
                reset,
                events: events.iter().map(|e| &**e).collect(),
                checkpoint,
            }));
    }
}

/// `?scope=&after=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// `tenant:<name>` or `api:<id>`.
    scope: String,
    /// Resume after this sequence number (`Last-Event-ID` takes precedence; neither: from the
    /// head).
    #[serde(default)]
    after: Option<u64>,
}

#[utoipa::path(
    get, path = "/v1/feed/stream", tag = "feed", operation_id = "feedStream",
    params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this sequence number.")),
    responses(
        (status = 200, description = "Server-Sent Events: `change` (id = the scope's sequence number, data = the event with its chain hash), `checkpoint` (after each batch and every 2 s while idle: the heartbeat), `reset` (the cursor is older than the retention: re-read the snapshot; the stream then ends). A stream ends after 5 minutes; reconnect with `Last-Event-ID`.", body = String, content_type = "text/event-stream"),
        (status = 503, description = "This node has not read the whole feed yet."),
    ),
)]
pub async fn stream(
    req: HttpRequest,
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let last = match req.headers().get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad("Last-Event-ID", "must be a sequence number"))?,
        ),
        None => None,
    };
    let (scope, core) = visible_scope(&state, &auth, &q.0.scope).await?;
    let feed = core.feed();
    let after = match last.or(q.0.after) {
        Some(a) => a,
        None => feed.head(&scope)?.seq(),
    };
    let stream = Stream {
        news: feed.subscribe(),
        feed: Arc::downgrade(feed),
        scope,
        after,
        until: Instant::now() + STREAM_FOR,
        last_sent: None,
        wait: false,
        done: false,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((
            Ok::<_, std::convert::Infallible>(web::Bytes::from(chunk)),
            s,
        ))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

struct Stream {
    feed: Weak<Feed>,
    news: tokio::sync::watch::Receiver<u64>,
    scope: Scope,
    after: u64,
    until: Instant,
    /// When the last chunk went out (`None`: nothing yet).
    last_sent: Option<Instant>,
    /// Whether to wait for news (or the heartbeat) before looking again.
    wait: bool,
    done: bool,
}

impl Stream {
    /// The next chunk: this scope's new events and a checkpoint, or a checkpoint alone when
    /// the heartbeat is due. News of other scopes wakes the stream but sends nothing (a
    /// reader must not learn when other tenants change things).
    async fn next_chunk(&mut self) -> Option<String> {
        loop {
            if self.done || Instant::now() >= self.until {
                return None;
            }
            if self.wait {
                let due = self.last_sent.map_or_else(Instant::now, |t| t + HEARTBEAT);
                let due = tokio::time::Instant::from_std(due);
                if let Ok(Err(_)) = tokio::time::timeout_at(due, self.news.changed()).await {
                    return None;
                }
            }
            self.wait = true;
            self.news.borrow_and_update();
            let heartbeat = self.last_sent.is_none_or(|t| t.elapsed() >= HEARTBEAT);
            let feed = self.feed.upgrade()?;
            let mut out = String::new();
            match feed.since(&self.scope, self.after) {
                // Not caught up (or the feed is broken): nothing signed; the reader's
                // freshness runs out, as it should.
                Err(_) if heartbeat => out.push_str(": not ready\n\n"),
                Err(_) => continue,
                Ok((Since::Reset, head)) => {
                    self.done = true;
                    sse(&mut out, "reset", None, &feed.sign(&head));
                }
                Ok((Since::Events(events), _)) if events.is_empty() && !heartbeat => continue,
                Ok((Since::Events(events), head)) => {
                    for e in &events {
                        sse(&mut out, "change", Some(e.seq), &**e);
                        self.after = e.seq;
                    }
                    // A full page: send the rest without waiting.
                    self.wait = events.len() < feed::MAX_EVENTS;
                    sse(&mut out, "checkpoint", None, &feed.sign(&head));
                }
            }
            self.last_sent = Some(Instant::now());
            return Some(out);
        }
    }
}

/// One Server-Sent Event (compact JSON has no newline, so one `data:` line).
fn sse(out: &mut String, event: &str, id: Option<u64>, data: &impl Serialize) {
    use std::fmt::Write;
    let _ = writeln!(out, "event: {event}");
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let json = serde_json::to_string(data).unwrap_or_default();
    let _ = write!(out, "data: {json}\n\n");
}
