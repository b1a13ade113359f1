//! The edge guard: where a request comes from (the TCP peer, or the client named by a
//! trusted proxy's `X-Forwarded-For`), its throttles, and failed-authentication lockouts.

use crate::sync::Locked;
use std::{net::IpAddr, sync::Arc};

use actix_web::HttpRequest;

use super::abuse::{Decision, LockoutPolicy, Lockouts, Throttle};
use crate::{
    audit::{Audit, Event},
    clock::Clock,
    metrics,
};

pub struct Guard {
    pub throttle: Throttle,
    lockouts: Lockouts,
    trusted_proxies: Vec<IpAddr>,
    audit: std::sync::RwLock<Option<Arc<Audit>>>,
    clock: Arc<dyn Clock>,
}

impl Guard {
    pub fn new(
        throttle: Throttle,
        policy: LockoutPolicy,
        trusted_proxies: Vec<IpAddr>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            throttle,
            lockouts: Lockouts::new(policy),
            trusted_proxies,
            audit: std::sync::RwLock::new(None),
            clock,
        }
    }

    /// Where lockouts are recorded (none while sealed: they are still logged).
    pub fn set_audit(&self, audit: Option<Arc<Audit>>) {
        *self.audit.write_locked() = audit;
    }

    /// The request's source: the TCP peer, unless the peer is a trusted proxy, in which case
    /// the rightmost `X-Forwarded-For` address that is not itself a trusted proxy.
    pub fn source(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|a| !self.trusted_proxies.contains(a))
                .unwrap_or(peer),
        )
    }

    /// Seconds left of `ip`'s lockout, if it is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<u64> {
        self.lockouts.locked(ip, self.clock.now())
    }

    /// Counts a credential presented by `ip` that was refused; a lockout it starts is logged,
    /// counted and written to the audit log.
    pub fn failed(&self, ip: IpAddr, what: &'static str) {
        let now = self.clock.now();
        let Some(until) = self.lockouts.failure(ip, now) else {
            return;
        };
        metrics::LOCKOUTS.inc();
        tracing::warn!(source = %ip, %until, reason = what, "source locked out after repeated authentication failures");
        let event = Event {
            time: now,
            request_id: super::error::request_id(),
            principal: format!("source:{ip}"),
            tenant: None,
            action: "lockout".into(),
            object: None,
            outcome: "locked_out".into(),
            source: ip.to_string(),
            detail: Some(format!("until {until}; last failure: {what}")),
        };
        let Some(audit) = self.audit.read_locked().clone() else {
            return;
        };
        actix_web::rt::spawn(async move {
            if let Err(e) = audit.write(&event).await {
                tracing::error!(error = %e, "could not write the lockout to the audit log");
            }
        });
    }

    pub fn principal(&self, name: &std::sync::Arc<str>) -> Decision {
        self.throttle.principal(name)
    }

    pub fn anonymous(&self, ip: IpAddr) -> Decision {
        self.throttle.source(ip)
    }

    /// Drops stale limiter and lockout state (bounded memory); run on a timer.
    pub fn housekeeping(&self) {
        self.throttle.retain_recent();
        self.lockouts.prune(self.clock.now());
    }
}
