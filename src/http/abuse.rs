//! Abuse resistance at the edge.
//!
//! - **Throttling**: GCRA (the `governor` crate) per principal, and per source address for
//!   requests that carry no credential. A refused request gets 429 with `Retry-After`; every
//!   throttled answer carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
//!   Limiter state stays bounded: `retain_recent` runs on a timer.
//! - **Failed authentication**: counted per source, only for credentials a caller presents for
//!   itself (a refused client certificate at the handshake or on a request, a bad bearer root
//!   key); keys it asks Tessera to verify for end clients never count. After `threshold`
//!   failures within `window` the source is locked out for a back-off that doubles with each
//!   further lockout, up to `max`. A locked-out source gets 429 with `Retry-After`, except for
//!   requests that present a valid client certificate: an attacker at the same address cannot
//!   lock a legitimate service out.

use crate::sync::Locked;
use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};

use crate::clock::Timestamp;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// A throttling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow { limit: u32, remaining: u32 },
    Deny { limit: u32, retry_after: Duration },
}

/// Request rates, per principal and per credential-less source.
pub struct Throttle {
    principals: Keyed<Arc<str>>,
    sources: Keyed<IpAddr>,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

fn decide<K: std::hash::Hash + Eq + Clone>(limiter: &Keyed<K>, key: &K) -> Decision {
    match limiter.check_key(key) {
        Ok(snapshot) => Decision::Allow {
            limit: snapshot.quota().burst_size().get(),
            remaining: snapshot.remaining_burst_capacity(),
        },
        Err(not_until) => Decision::Deny {
            limit: not_until.quota().burst_size().get(),
            retry_after: not_until.wait_time_from(limiter.clock().now()),
        },
    }
}

impl Throttle {
    pub fn new(principal: (u32, u32), source: (u32, u32)) -> Self {
        Self {
            principals: RateLimiter::dashmap(quota(principal.0, principal.1))
                .with_middleware::<StateInformationMiddleware>(),
            sources: RateLimiter::dashmap(quota(source.0, source.1))
                .with_middleware::<StateInformationMiddleware>(),
        }
    }

    pub fn principal(&self, name: &Arc<str>) -> Decision {
        decide(&self.principals, name)
    }

    pub fn source(&self, ip: IpAddr) -> Decision {
        decide(&self.sources, &ip)
    }

    /// Forgets keys whose buckets are full again (bounds memory); run on a timer.
    pub fn retain_recent(&self) {
        self.principals.retain_recent();
        self.principals.shrink_to_fit();
        self.sources.retain_recent();
        self.sources.shrink_to_fit();
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.principals.len() + self.sources.len()
    }
}

/// The lockout policy.
#[derive(Clone, Copy, Debug)]
pub struct LockoutPolicy {
    /// Failures within `window_secs` that trigger a lockout.
    pub threshold: u32,
    pub window_secs: u64,
    /// The first lockout's length; each further one doubles, up to `max_secs`.
    pub base_secs: u64,
    pub max_secs: u64,
}

#[derive(Default)]
struct Source {
    window_start: i64,
    failures: u32,
    locked_until: i64,
    strikes: u32,
}

/// Most sources tracked at once; beyond it the oldest windows are dropped first.
const MAX_SOURCES: usize = 100_000;

/// Failed-authentication counts and lockouts per source address.
pub struct Lockouts {
    policy: LockoutPolicy,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

impl Lockouts {
    pub fn new(policy: LockoutPolicy) -> Self {
        Self {
            policy,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.sources.write_locked()
    }

    /// Seconds left of a lockout of `ip`, if it is locked out.
    pub fn locked(&self, ip: IpAddr, now: Timestamp) -> Option<u64> {
        let now = now.unix_millis();
        self.lock()
            .get(&ip)
            .filter(|s| s.locked_until > now)
            .map(|s| u64::try_from((s.locked_until - now + 999) / 1000).unwrap_or(1))
    }

    /// Counts a failure; returns the end of the lockout it starts, if it starts one.
    pub fn failure(&self, ip: IpAddr, now: Timestamp) -> Option<Timestamp> {
        let now_ms = now.unix_millis();
        let p = self.policy;
        let mut map = self.lock();
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            prune_locked(&mut map, now_ms, p);
        }
        let s = map.entry(ip).or_default();
        if s.locked_until > now_ms {
            return None;
        }
        let window_ms = i64::try_from(p.window_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        if now_ms - s.window_start > window_ms {
            s.window_start = now_ms;
            s.failures = 0;
        }
        s.failures += 1;
        if s.failures < p.threshold {
            return None;
        }
        s.strikes = s.strikes.saturating_add(1);
        let secs = p
            .base_secs
            .saturating_mul(1u64 << (s.strikes - 1).min(20))
            .min(p.max_secs);
        s.locked_until =
            now_ms.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000));
        s.failures = 0;
        s.window_start = now_ms;
        Some(Timestamp::from_unix_millis(s.locked_until))
    }

    /// Forgets sources with nothing recent (bounds memory); run on a timer.
    pub fn prune(&self, now: Timestamp) {
        let mut map = self.lock();
        prune_locked(&mut map, now.unix_millis(), self.policy);
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

fn prune_locked(map: &mut HashMap<IpAddr, Source>, now_ms: i64, p: LockoutPolicy) {
    // A source is kept while locked out, while its window is open, and (so that back-off keeps
    // growing for a persistent attacker) for the longest lockout after its last one ended.
    let keep_ms = i64::try_from(p.max_secs.max(p.window_secs))
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    map.retain(|_, s| {
        s.locked_until > now_ms || now_ms - s.window_start.max(s.locked_until) <= keep_ms
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            threshold: 3,
            window_secs: 60,
            base_secs: 10,
            max_secs: 25,
        }
    }

    #[test]
    fn lockout_after_threshold_with_doubling_back_off() {
        let l = Lockouts::new(policy());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Timestamp::from_unix(1_000);
        assert_eq!(l.failure(ip, t0), None);
        assert_eq!(l.failure(ip, t0), None);
        assert_eq!(l.failure(ip, t0), Some(t0.plus_secs(10)));
        assert_eq!(l.locked(ip, t0), Some(10));
        assert_eq!(l.locked(other, t0), None, "another source is unaffected");
        assert_eq!(l.locked(ip, t0.plus_secs(10)), None, "recovered");
        // The second lockout lasts twice as long; the third is capped.
        for _ in 0..3 {
            l.failure(ip, t0.plus_secs(11));
        }
        assert_eq!(l.locked(ip, t0.plus_secs(11)), Some(20));
        for _ in 0..3 {
            l.failure(ip, t0.plus_secs(40));
        }
        assert_eq!(l.locked(ip, t0.plus_secs(40)), Some(25));
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let l = Lockouts::new(policy());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Timestamp::from_unix(1_000);
        l.failure(ip, t0);
        l.failure(ip, t0);
        assert_eq!(l.failure(ip, t0.plus_secs(61)), None);
        l.prune(t0.plus_secs(1_000));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn throttle_allows_the_burst_then_refuses() {
        let t = Throttle::new((1, 3), (1, 1));
        for left in (0..3).rev() {
            assert_eq!(
                t.principal(&"p".into()),
                Decision::Allow {
                    limit: 3,
                    remaining: left
                }
            );
        }
        assert!(matches!(
            t.principal(&"p".into()),
            Decision::Deny { limit: 3, .. }
        ));
        assert!(
            matches!(t.principal(&"q".into()), Decision::Allow { .. }),
            "per principal"
        );
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(matches!(t.source(ip), Decision::Allow { .. }));
        match t.source(ip) {
            Decision::Deny { retry_after, .. } => assert!(retry_after <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }
}
