//! `tessera-verify`: verifies Tessera API keys inside a downstream service.
//!
//! A [`Verifier`] asks Tessera (`POST /v1/keys/verify`, over mTLS with the service's own
//! certificate) the first time it sees a request, caches the answer in memory, and follows
//! Tessera's signed change feed (`GET /v1/feed/changes`, a long poll) to drop a cached answer
//! the moment the feed names its key. Every feed page is checked before anything is taken
//! from it ([`feed`]): checkpoints signed by the pinned feed key, for this scope, never older
//! than the last; events gap-free and hash-chained. While no checkpoint newer than
//! `max_staleness` has verified, the verifier answers nothing from its cache: it refuses, or
//! asks Tessera, as configured ([`WhenStale`]).
//!
//! What is answered locally, and what is not:
//! - the answers that depend only on the key's record and the time (`VALID` for a key without
//!   a quota or rate limit, `REVOKED`, `EXPIRED`, `DISABLED`, `IDENTITY_MISMATCH`,
//!   `INSUFFICIENT_SCOPES`, and `NOT_FOUND` for a key of another tenant or API), with a key
//!   of the followed scope;
//! - a cached answer whose key's `expires_at` (or rotation `stops_at`) has passed becomes
//!   `EXPIRED` locally, as Tessera's precedence would make it;
//! - keys with a quota or a rate limit are always verified by Tessera (a local answer would
//!   spend nothing); so is anything not yet cached.
//!
//! Secrets: the cache is keyed by an HMAC (with a random key made at start) of the presented
//! key and the request; no presented key is kept.

mod answer;
mod cache;
pub mod feed;
mod format;
#[cfg(any(feature = "actix", feature = "tower"))]
mod gate;

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "tower")]
pub mod tower;

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use serde::Serialize;
use zeroize::Zeroizing;

pub use answer::{
    Decision, Local, NO_IDENTITY, Request, Rotation, Source, Verdict, Verified, Why, presented_key,
};
pub use format::well_formed;

use answer::not_found;

/// What a verifier does while its feed is stale (no verified checkpoint within
/// `max_staleness`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenStale {
    /// Answer [`Decision::Unavailable`] (fail closed): the default.
    Refuse,
    /// Ask Tessera for every request (and fail closed when it cannot answer either).
    AskTessera,
}

/// How to reach Tessera and what to follow.
pub struct Config {
    /// Tessera's base URL, e.g. `https://tessera.internal:8443`.
    pub url: String,
    /// PEM certificates that sign Tessera's server certificate (its `ca.pem`).
    pub ca_pem: Vec<u8>,
    /// The service's client certificate chain and private key, PEM. Its identity needs
    /// `keys:verify` and `feed:read` (the built-in `verifier` role has both).
    pub identity_pem: Zeroizing<Vec<u8>>,
    /// `api:<id>` or `tenant:<name>`.
    pub scope: String,
    /// The feed key (hex), from `GET /v1/feed/key`, pinned at deployment.
    pub feed_key: String,
    /// How old the newest verified checkpoint may be before cached answers stop (default 5 s).
    pub max_staleness: Duration,
    pub when_stale: WhenStale,
    /// Cached answers older than this are asked again (default 5 minutes).
    pub max_entry_age: Duration,
    /// The most answers cached (default 100 000).
    pub max_entries: usize,
    /// The long poll's wait, and so how often an idle feed proves itself (default 2 s).
    pub poll_wait: Duration,
}

impl Config {
    pub fn new(
        url: impl Into<String>,
        ca_pem: Vec<u8>,
        identity_pem: Vec<u8>,
        scope: impl Into<String>,
        feed_key: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_owned(),
            ca_pem,
            identity_pem: Zeroizing::new(identity_pem),
            scope: scope.into(),
            feed_key: feed_key.into(),
            max_staleness: Duration::from_secs(5),
            when_stale: WhenStale::Refuse,
            max_entry_age: Duration::from_secs(300),
            max_entries: 100_000,
            poll_wait: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the configuration is unusable: {0}")]
    Config(String),
}

struct Inner {
    url: String,
    scope: String,
    when_stale: WhenStale,
    poll_wait: Duration,
    http: reqwest::Client,
    cache: cache::Cache,
}

/// A verifier following one scope. Cheap to clone; the feed is followed while any clone lives.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl Verifier {
    /// Builds the client and starts following the feed (on the current tokio runtime).
    pub fn start(config: Config) -> Result<Self, Error> {
        let key = feed::unhex(&config.feed_key)
            .filter(|k| k.len() == 32)
            .ok_or_else(|| Error::Config("feed_key must be 64 hex digits".into()))?;
        if !(config.scope.starts_with("api:") || config.scope.starts_with("tenant:")) {
            return Err(Error::Config(
                "scope must be api:<id> or tenant:<name>".into(),
            ));
        }
        let http = client(&config)?;
        let cache = cache::Cache::new(
            &config.scope,
            config.max_staleness,
            config.max_entry_age,
            config.max_entries,
        )
        .ok_or_else(|| Error::Config("no randomness".into()))?;
        let inner = Arc::new(Inner {
            url: config.url.clone(),
            scope: config.scope.clone(),
            when_stale: config.when_stale,
            // Whole seconds, 1 to 30, and at most half the bound: an idle feed proves itself
            // in time.
            poll_wait: Duration::from_secs(
                config
                    .poll_wait
                    .as_secs()
                    .clamp(1, 30)
                    .min((config.max_staleness.as_secs() / 2).max(1)),
            ),
            http,
            cache,
        });
        tokio::spawn(follow(Arc::downgrade(&inner), key));
        Ok(Self { inner })
    }

    /// The API this verifier follows, when its scope is one API (`api:<id>`): the
    /// middlewares require keys of that API unless told otherwise.
    pub fn scope_api(&self) -> Option<&str> {
        self.inner.scope.strip_prefix("api:")
    }

    /// Whether cached answers may be used now.
    pub fn is_fresh(&self) -> bool {
        self.inner.cache.fresh()
    }

    /// The answer from memory, if there is one that may be given.
    pub fn verify_local(&self, r: &Request<'_>) -> Local {
        if !well_formed(r.key) {
            return Local::Answer(Arc::new(not_found()));
        }
        self.inner.cache.lookup(r)
    }

    /// The answer: from memory when possible, else from Tessera (and cached when it may be).
    pub async fn verify(&self, r: &Request<'_>) -> Decision {
        match self.verify_local(r) {
            Local::Answer(verdict) => {
                return Decision::Answer {
                    verdict,
                    source: Source::Local,
                };
            }
            Local::AskTessera(Why::Stale) if self.inner.when_stale == WhenStale::Refuse => {
                return Decision::Unavailable;
            }
            Local::AskTessera(_) => {}
        }
        let asked = self.inner.cache.asking();
        let Some(mut verdict) = self.ask(r).await else {
            return Decision::Unavailable;
        };
        // This verifier answers for its scope only (an identity that sees more must not make
        // a downstream accept another API's or tenant's key).
        if verdict.valid && !self.inner.cache.in_scope(&verdict) {
            verdict = not_found();
        }
        let verdict = Arc::new(verdict);
        self.inner.cache.insert(r, verdict.clone(), asked);
        Decision::Answer {
            verdict,
            source: Source::Tessera,
        }
    }

    async fn ask(&self, r: &Request<'_>) -> Option<Verdict> {
        #[derive(Serialize)]
        struct Body<'a> {
            key: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            api_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            scopes: Option<&'a [&'a str]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            presented_identity: Option<&'a str>,
        }
        let body = Body {
            key: r.key,
            api_id: r.api_id,
            scopes: (!r.scopes.is_empty()).then_some(r.scopes),
            presented_identity: r.presented_identity,
        };
        let resp = self
            .inner
            .http
            .post(format!("{}/v1/keys/verify", self.inner.url))
            .json(&body)
            .send()
            .await
            .ok()?;
        if resp.status() != reqwest::StatusCode::OK {
            tracing::warn!(status = %resp.status(), "Tessera refused a verify request");
            return None;
        }
        resp.json::<Verdict>().await.ok()
    }

    /// Whether a certificate (serial, hex) of the followed tenant is revoked: the snapshot's
    /// list and the feed's events since. `None` while stale, and for an API scope (its feed
    /// carries no certificates).
    pub fn certificate_revoked(&self, serial: &str) -> Option<bool> {
        self.inner.cache.certificate_revoked(serial)
    }

    /// The feed position verified so far (its sequence number).
    pub fn feed_seq(&self) -> u64 {
        self.inner.cache.seq()
    }

    /// How many answers are cached.
    pub fn cached(&self) -> usize {
        self.inner.cache.len()
    }
}

fn client(config: &Config) -> Result<reqwest::Client, Error> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let bad = |what: &str| Error::Config(what.to_owned());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&config.ca_pem) {
        roots
            .add(c.map_err(|_| bad("ca_pem holds no usable certificate"))?)
            .map_err(|_| bad("ca_pem holds no usable certificate"))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&config.identity_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| bad("identity_pem holds no certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(&config.identity_pem)
        .map_err(|_| bad("identity_pem holds no private key"))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|_| bad("TLS"))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|_| bad("identity_pem's certificate and key do not match"))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10) + config.poll_wait)
        .build()
        .map_err(|_| bad("HTTP client"))
}

impl Inner {
    fn started(&self, f: &feed::Follower, snap: feed::Snapshot) {
        // Nothing cached can be trusted across a new start.
        let revoked = snap
            .revoked_certificates
            .map(|v| v.into_iter().map(|c| c.serial).collect());
        self.cache.restart(revoked);
        self.cache.apply(Vec::new(), f.seq, f.known_at_ms);
    }

    /// Starts (again) from the snapshot: at the first start, after a reset, and after a page
    /// that does not follow the chain held (a gap, a fork): whatever was missed, nothing
    /// cached is kept. A snapshot behind the head held is refused (rollback).
    async fn start_from_snapshot(&self, f: &mut feed::Follower) -> Result<(), String> {
        let snap: feed::Snapshot =
            get(self, &format!("/v1/feed/snapshot?scope={}", self.scope)).await?;
        f.start(&snap.checkpoint).map_err(|e| e.to_string())?;
        self.started(f, snap);
        Ok(())
    }
}

async fn get<T: serde::de::DeserializeOwned>(inner: &Inner, path: &str) -> Result<T, String> {
    let resp = inner
        .http
        .get(format!("{}{path}", inner.url))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "{} answered {}",
            path.split('?').next().unwrap_or(""),
            resp.status()
        ));
    }
    resp.json::<T>().await.map_err(|e| e.to_string())
}

/// Follows the feed while the verifier lives.
async fn follow(weak: Weak<Inner>, key: Vec<u8>) {
    let mut follower: Option<feed::Follower> = None;
    let mut failures = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let scope = inner.scope.clone();
        let step: Result<(), String> = async {
            let f = follower.get_or_insert_with(|| feed::Follower::new(&scope, key.clone()));
            if !f.started() {
                return inner.start_from_snapshot(f).await;
            }
            let path = format!(
                "/v1/feed/changes?scope={scope}&after={}&wait={}",
                f.seq,
                inner.poll_wait.as_secs()
            );
            let page: feed::Changes = get(&inner, &path).await?;
            match f.apply(&page) {
                Ok(changes) => {
                    inner.cache.apply(changes, f.seq, f.known_at_ms);
                    Ok(())
                }
                // Signed by the pinned key, but not a continuation of what is held: start
                // again, dropping everything cached.
                Err(
                    e @ (feed::FeedError::Reset
                    | feed::FeedError::Gap { .. }
                    | feed::FeedError::BadHash { .. }
                    | feed::FeedError::BadEvent { .. }
                    | feed::FeedError::Rollback { .. }),
                ) => {
                    tracing::warn!(error = %e, "starting the feed again from its snapshot");
                    inner.start_from_snapshot(f).await
                }
                // Not signed by the pinned key, another scope's, or a replay: nothing is
                // taken; the verifier goes stale unless a genuine page follows.
                Err(e) => Err(e.to_string()),
            }
        }
        .await;
        drop(inner);
        match step {
            Ok(()) => failures = 0,
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "the feed cannot be followed; cached answers stop at the staleness bound");
                }
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(100 * u64::from(failures.min(10)));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
