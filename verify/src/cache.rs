//! The answers a verifier may give from memory: Tessera's answers for the followed scope,
//! dropped when the feed names their key, refused while the feed is stale.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ring::hmac;

use crate::{
    answer::{Local, Request, Verdict, Why},
    feed,
};

/// How long after the feed names a key its answers are not cached. Tessera may answer from a
/// copy of the key older than the event for a moment: on one node, between the change's flush
/// and the drop of its cached copy; on a cluster, until the answering node has followed the
/// change (`store.max_staleness_ms`, at most 60 s). Longer than both, and than any request.
const REMEMBER_CHANGES: Duration = Duration::from_secs(120);

/// Codes that a key's end of life outranks (DESIGN.md's precedence).
const BELOW_EXPIRED: [&str; 4] = [
    "VALID",
    "DISABLED",
    "IDENTITY_MISMATCH",
    "INSUFFICIENT_SCOPES",
];

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_ms(t: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

struct Entry {
    verdict: Arc<Verdict>,
    cached_at: Instant,
    /// When the key stops working (expiry or the end of a rotation grace), unix ms.
    ends_at_ms: Option<i64>,
}

#[derive(Default)]
struct State {
    entries: HashMap<[u8; 32], Entry>,
    by_key: HashMap<String, Vec<[u8; 32]>>,
    /// Keys the feed named lately (the last time each was named), and the order to forget
    /// them in: their answers are not cached meanwhile.
    recent: HashMap<String, Instant>,
    recent_order: VecDeque<(Instant, String)>,
    revoked_certs: HashSet<String>,
    /// Whether every certificate revocation is known: a tenant scope, started from a snapshot
    /// that listed them.
    certs_complete: bool,
    /// Bumped when the cache is dropped whole (a reset, a new start of the feed).
    generation: u64,
    /// The verified knowledge: as of this server time (unix ms), received at this instant.
    known_at: Option<(i64, Instant)>,
    seq: u64,
}

/// A ticket for one question to Tessera: its answer is cached only if the cache was not
/// dropped meanwhile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Asked {
    generation: u64,
}

pub(crate) struct Cache {
    scope: String,
    max_staleness: Duration,
    max_entry_age: Duration,
    max_entries: usize,
    mac: hmac::Key,
    state: RwLock<State>,
}

impl Cache {
    pub(crate) fn new(
        scope: &str,
        max_staleness: Duration,
        max_entry_age: Duration,
        max_entries: usize,
    ) -> Option<Self> {
        let mac = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).ok()?;
        Some(Self {
            scope: scope.to_owned(),
            max_staleness,
            max_entry_age,
            max_entries: max_entries.max(1),
            mac,
            state: RwLock::new(State::default()),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cache key: an HMAC of the request under a key made at start (no presented key is
    /// kept, and the map cannot be probed from outside).
    fn digest(&self, r: &Request<'_>) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(r.key.as_bytes());
        ctx.update(&[0]);
        ctx.update(r.api_id.unwrap_or("").as_bytes());
        ctx.update(&[0]);
        // Scopes are a set: the same set in any order is the same request.
        let mut scopes: Vec<&str> = r.scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        for s in scopes {
            ctx.update(s.as_bytes());
            ctx.update(&[1]);
        }
        ctx.update(&[0]);
        ctx.update(r.presented_identity.unwrap_or("").as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn fresh_in(&self, st: &State) -> bool {
        st.known_at.is_some_and(|(ms, at)| {
            let limit = self.max_staleness;
            at.elapsed() <= limit && now_ms().saturating_sub(ms) <= limit.as_millis() as i64
        })
    }

    pub(crate) fn fresh(&self) -> bool {
        self.fresh_in(&self.read())
    }

    pub(crate) fn lookup(&self, r: &Request<'_>) -> Local {
        let h = self.digest(r);
        let st = self.read();
        if !self.fresh_in(&st) {
            return Local::AskTessera(Why::Stale);
        }
        let Some(e) = st.entries.get(&h) else {
            return Local::AskTessera(Why::NotCached);
        };
        if e.cached_at.elapsed() > self.max_entry_age {
            return Local::AskTessera(Why::NotCached);
        }
        if e.ends_at_ms.is_some_and(|end| end <= now_ms())
            && BELOW_EXPIRED.contains(&e.verdict.code.as_str())
        {
            let mut v = (*e.verdict).clone();
            v.valid = false;
            v.code = "EXPIRED".into();
            return Local::Answer(Arc::new(v));
        }
        Local::Answer(e.verdict.clone())
    }

    /// Taken just before asking Tessera.
    pub(crate) fn asking(&self) -> Asked {
        Asked {
            generation: self.read().generation,
        }
    }

    /// Whether an answer depends only on the key's record and the time, for a key whose
    /// changes this verifier follows.
    /// Whether an answer is about a key of the followed scope.
    pub(crate) fn in_scope(&self, v: &Verdict) -> bool {
        match self.scope.split_once(':') {
            Some(("api", id)) => v.api_id.as_deref() == Some(id),
            Some(("tenant", t)) => v.tenant.as_deref() == Some(t),
            _ => false,
        }
    }

    pub(crate) fn cacheable(&self, v: &Verdict) -> bool {
        let in_scope = self.in_scope(v);
        let stable = match v.code.as_str() {
            // A spending answer: the key has a quota or a rate limit.
            "VALID" => v.remaining.is_none() && v.ratelimit.is_none(),
            "REVOKED" | "EXPIRED" | "DISABLED" | "IDENTITY_MISMATCH" | "INSUFFICIENT_SCOPES" => {
                true
            }
            _ => false,
        };
        in_scope && stable && v.key_id.is_some()
    }

    /// Caches Tessera's answer to `r`, asked at `asked`, if it may be.
    pub(crate) fn insert(&self, r: &Request<'_>, verdict: Arc<Verdict>, asked: Asked) {
        if !self.cacheable(&verdict) {
            return;
        }
        let Some(key_id) = verdict.key_id.clone() else {
            return;
        };
        let mut ends = Vec::new();
        for t in [
            verdict.expires_at.as_deref(),
            verdict
                .rotation
                .as_ref()
                .and_then(|r| r.stops_at.as_deref()),
        ]
        .into_iter()
        .flatten()
        {
            // A time this verifier cannot read: it could not expire the answer locally.
            let Some(ms) = parse_ms(t) else { return };
            ends.push(ms);
        }
        let ends_at_ms = ends.into_iter().min();
        let h = self.digest(r);
        let mut st = self.write();
        // Asked before the cache was dropped, or about a key the feed named lately: the answer
        // may come from a copy older than the change.
        if st.generation != asked.generation || st.recent.contains_key(&key_id) {
            return;
        }
        if st.entries.len() >= self.max_entries {
            // Full: drop a tenth (whichever the map yields first), and their index entries.
            let mut n = 0usize;
            st.entries.retain(|_, _| {
                n += 1;
                n % 10 != 0
            });
            let State {
                entries, by_key, ..
            } = &mut *st;
            by_key.retain(|_, hs| {
                hs.retain(|h| entries.contains_key(h));
                !hs.is_empty()
            });
        }
        st.entries.insert(
            h,
            Entry {
                verdict,
                cached_at: Instant::now(),
                ends_at_ms,
            },
        );
        let hs = st.by_key.entry(key_id).or_default();
        if !hs.contains(&h) {
            hs.push(h);
        }
    }

    /// Forgets every cached answer (the feed may have missed changes): at a start from a
    /// snapshot, with the revoked certificates it listed (a tenant scope).
    pub(crate) fn restart(&self, revoked_certs: Option<Vec<String>>) {
        let mut st = self.write();
        st.entries.clear();
        st.by_key.clear();
        st.generation += 1;
        st.certs_complete = self.scope.starts_with("tenant:") && revoked_certs.is_some();
        for serial in revoked_certs.into_iter().flatten() {
            st.revoked_certs.insert(serial.to_lowercase());
        }
    }

    /// Applies verified changes and the follower's new position.
    pub(crate) fn apply(&self, changes: Vec<feed::Change>, seq: u64, known_at_ms: Option<i64>) {
        let mut st = self.write();
        let now = Instant::now();
        for c in changes {
            match c {
                feed::Change::Key(id) => {
                    if let Some(hs) = st.by_key.remove(&id) {
                        for h in hs {
                            st.entries.remove(&h);
                        }
                    }
                    st.recent.insert(id.clone(), now);
                    st.recent_order.push_back((now, id));
                }
                feed::Change::CertRevoked(serial) => {
                    st.revoked_certs.insert(serial);
                }
                feed::Change::Other => {}
            }
        }
        while let Some((at, _)) = st.recent_order.front()
            && now.duration_since(*at) > REMEMBER_CHANGES
        {
            if let Some((at, id)) = st.recent_order.pop_front()
                && st.recent.get(&id) == Some(&at)
            {
                st.recent.remove(&id);
            }
        }
        st.seq = seq;
        if let Some(ms) = known_at_ms {
            // Only ever forward: a checkpoint about an older time never counts as newer.
            if st.known_at.is_none_or(|(old, _)| ms > old) {
                st.known_at = Some((ms, now));
            }
        }
    }

    pub(crate) fn certificate_revoked(&self, serial: &str) -> Option<bool> {
        let st = self.read();
        (self.fresh_in(&st) && st.certs_complete)
            .then(|| st.revoked_certs.contains(&serial.to_lowercase()))
    }

    pub(crate) fn seq(&self) -> u64 {
        self.read().seq
    }

    pub(crate) fn len(&self) -> usize {
        self.read().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = "api_AAAAAAAAAAAAAAAAA";

    fn cache() -> Cache {
        let c = Cache::new(
            &format!("api:{API}"),
            Duration::from_secs(5),
            Duration::from_secs(300),
            1000,
        )
        .unwrap();
        // Started and fresh: a checkpoint as of now.
        c.restart(None);
        c.apply(Vec::new(), 1, Some(now_ms()));
        c
    }

    fn verdict(code: &str, key: &str) -> Verdict {
        Verdict {
            valid: code == "VALID",
            code: code.into(),
            key_id: Some(key.into()),
            api_id: Some(API.into()),
            tenant: Some("acme".into()),
            scopes: Some(vec!["read".into()]),
            metadata: None,
            expires_at: None,
            remaining: None,
            ratelimit: None,
            expiring: false,
            rotation: None,
        }
    }

    fn req(key: &str) -> Request<'_> {
        Request {
            key,
            api_id: None,
            scopes: &["read"],
            presented_identity: None,
        }
    }

    fn code(l: Local) -> String {
        match l {
            Local::Answer(v) => v.code.clone(),
            Local::AskTessera(w) => format!("{w:?}"),
        }
    }

    #[test]
    fn a_cached_answer_is_given_until_the_feed_names_its_key() {
        let c = cache();
        c.insert(&req("k"), Arc::new(verdict("VALID", "key_1")), c.asking());
        assert_eq!(code(c.lookup(&req("k"))), "VALID");
        // Another request (other scopes, another identity) is another question.
        let mut other = req("k");
        other.scopes = &["write"];
        assert_eq!(code(c.lookup(&other)), "NotCached");
        c.apply(vec![feed::Change::Key("key_1".into())], 2, None);
        assert_eq!(code(c.lookup(&req("k"))), "NotCached");
    }

    #[test]
    fn scopes_in_another_order_are_the_same_question() {
        let c = cache();
        let a = Request {
            scopes: &["a", "b"],
            ..req("k")
        };
        let b = Request {
            scopes: &["b", "a", "a"],
            ..req("k")
        };
        c.insert(&a, Arc::new(verdict("VALID", "key_1")), c.asking());
        assert_eq!(code(c.lookup(&b)), "VALID");
    }

    #[test]
    fn no_answer_about_a_key_the_feed_named_lately_is_cached() {
        let c = cache();
        let asked = c.asking();
        // The feed names the key while the question is in flight.
        c.apply(vec![feed::Change::Key("key_1".into())], 2, None);
        c.insert(&req("k"), Arc::new(verdict("VALID", "key_1")), asked);
        assert_eq!(code(c.lookup(&req("k"))), "NotCached");
        // Nor one asked after the event: Tessera may still answer from an older copy.
        c.insert(&req("k"), Arc::new(verdict("VALID", "key_1")), c.asking());
        assert_eq!(code(c.lookup(&req("k"))), "NotCached");
        // Another key is cached as usual.
        c.insert(&req("j"), Arc::new(verdict("VALID", "key_3")), c.asking());
        assert_eq!(code(c.lookup(&req("j"))), "VALID");
        // Nor one asked before the whole cache was dropped.
        let asked = c.asking();
        c.restart(None);
        c.insert(&req("k2"), Arc::new(verdict("VALID", "key_2")), asked);
        assert_eq!(code(c.lookup(&req("k2"))), "NotCached");
    }

    #[test]
    fn an_end_of_life_it_cannot_read_is_not_cached() {
        let c = cache();
        let mut v = verdict("VALID", "key_1");
        v.expires_at = Some("next tuesday".into());
        c.insert(&req("k"), Arc::new(v), c.asking());
        assert_eq!(code(c.lookup(&req("k"))), "NotCached");
    }

    #[test]
    fn spending_answers_and_keys_outside_the_scope_are_not_cached() {
        let c = cache();
        let mut quota = verdict("VALID", "key_1");
        quota.remaining = Some(5);
        let mut limited = verdict("VALID", "key_2");
        limited.ratelimit = Some(serde_json::json!({"limit": 10}));
        let mut elsewhere = verdict("VALID", "key_3");
        elsewhere.api_id = Some("api_BBBBBBBBBBBBBBBBB".into());
        let mut not_found = verdict("NOT_FOUND", "key_4");
        not_found.key_id = None;
        for (i, v) in [
            quota,
            limited,
            elsewhere,
            not_found,
            verdict("RATE_LIMITED", "key_5"),
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("k{i}");
            c.insert(&req(&key), Arc::new(v), c.asking());
            assert_eq!(code(c.lookup(&req(&key))), "NotCached", "{i}");
        }
        for refusal in [
            "REVOKED",
            "DISABLED",
            "INSUFFICIENT_SCOPES",
            "IDENTITY_MISMATCH",
        ] {
            c.insert(
                &req(refusal),
                Arc::new(verdict(refusal, "key_9")),
                c.asking(),
            );
            assert_eq!(code(c.lookup(&req(refusal))), refusal);
        }
    }

    #[test]
    fn a_key_past_its_end_answers_expired_as_tessera_would() {
        let c = cache();
        let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
        let past = past
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let mut expired = verdict("VALID", "key_1");
        expired.expires_at = Some(past.clone());
        let mut superseded = verdict("DISABLED", "key_2");
        superseded.rotation = Some(crate::answer::Rotation {
            stage: "previous".into(),
            superseded_by: Some("key_3".into()),
            stops_at: Some(past.clone()),
        });
        let mut revoked = verdict("REVOKED", "key_4");
        revoked.expires_at = Some(past);
        c.insert(&req("a"), Arc::new(expired), c.asking());
        c.insert(&req("b"), Arc::new(superseded), c.asking());
        c.insert(&req("c"), Arc::new(revoked), c.asking());
        match c.lookup(&req("a")) {
            Local::Answer(v) => assert!(!v.valid && v.code == "EXPIRED"),
            other => panic!("{other:?}"),
        }
        assert_eq!(code(c.lookup(&req("b"))), "EXPIRED");
        // Revocation outranks expiry.
        assert_eq!(code(c.lookup(&req("c"))), "REVOKED");
    }

    #[test]
    fn nothing_is_answered_while_the_feed_is_stale() {
        let c = Cache::new(
            &format!("api:{API}"),
            Duration::from_millis(200),
            Duration::from_secs(300),
            1000,
        )
        .unwrap();
        assert_eq!(code(c.lookup(&req("k"))), "Stale");
        c.apply(Vec::new(), 1, Some(now_ms()));
        c.insert(&req("k"), Arc::new(verdict("VALID", "key_1")), c.asking());
        assert_eq!(code(c.lookup(&req("k"))), "VALID");
        // A checkpoint about a time further back than the bound does not make it fresh.
        let c2 = cache();
        c2.apply(Vec::new(), 1, Some(now_ms() - 10_000));
        assert!(c2.fresh(), "older knowledge never replaces newer");
        let c3 = Cache::new(
            "tenant:acme",
            Duration::from_secs(5),
            Duration::from_secs(1),
            10,
        )
        .unwrap();
        c3.apply(Vec::new(), 1, Some(now_ms() - 10_000));
        assert!(!c3.fresh());
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(code(c.lookup(&req("k"))), "Stale");
    }

    #[test]
    fn revoked_certificates_are_known_only_while_fresh_and_complete() {
        let c = Cache::new(
            "tenant:acme",
            Duration::from_secs(5),
            Duration::from_secs(300),
            10,
        )
        .unwrap();
        assert_eq!(c.certificate_revoked("0a1b"), None, "not started");
        // The snapshot lists the revocations before it; the feed brings the later ones.
        c.restart(Some(vec!["0A1B".into()]));
        c.apply(Vec::new(), 1, Some(now_ms()));
        assert_eq!(c.certificate_revoked("0a1b"), Some(true));
        assert_eq!(c.certificate_revoked("0c1d"), Some(false));
        c.apply(vec![feed::Change::CertRevoked("0c1d".into())], 2, None);
        assert_eq!(c.certificate_revoked("0C1D"), Some(true));
        // A snapshot without the list (an older server): not known.
        c.restart(None);
        assert_eq!(c.certificate_revoked("ffff"), None);
        // An API scope never carries certificate events.
        assert_eq!(cache().certificate_revoked("ffff"), None);
    }

    #[test]
    fn a_full_cache_makes_room() {
        let c = Cache::new(
            &format!("api:{API}"),
            Duration::from_secs(5),
            Duration::from_secs(300),
            20,
        )
        .unwrap();
        c.apply(Vec::new(), 1, Some(now_ms()));
        for i in 0..100 {
            let key = format!("k{i}");
            c.insert(
                &req(&key),
                Arc::new(verdict("VALID", &format!("key_{i}"))),
                c.asking(),
            );
            assert!(c.len() <= 20);
        }
        assert_eq!(code(c.lookup(&req("k99"))), "VALID");
    }
}
