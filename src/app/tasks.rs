//! The background jobs of a running server: usage counters, CRLs, the keyring rewrap, store
//! recovery, state gauges, tallied refusals, audit checkpoints and shipping, tidying. Each is
//! a loop over the [`Runtime`]'s current core (skipping while sealed); the serving layer
//! spawns them. The jobs that belong to serving itself (the server certificate's hot swap,
//! limiter housekeeping, idempotent replies) stay in `http::server`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::Runtime;

/// How often usage counters are persisted (the bound on what a crash can re-grant).
const USAGE_FLUSH_EVERY: Duration = Duration::from_millis(900);
/// How often the state gauges are recomputed.
const GAUGES_EVERY: Duration = Duration::from_secs(30);
/// How often CRLs are checked for re-signing.
const CRL_CHECK_EVERY: Duration = Duration::from_secs(600);

/// Persists usage counters about once a second.
pub async fn flush_usage(rt: Arc<Runtime>) {
    let mut tick = tokio::time::interval(USAGE_FLUSH_EVERY);
    loop {
        tick.tick().await;
        let Some(core) = rt.core() else {
            continue;
        };
        if let Err(e) = core.keys().usage().flush_quotas().await {
            tracing::error!(error = %e, "could not persist usage counters; will retry");
        }
    }
}

/// How long a singleton job's lease lasts: a node that stops renewing it (killed,
/// partitioned from the database) is replaced by another within this, plus one renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a node renews (or tries to take) the leases of the singleton jobs.
const LEASE_RENEW: Duration = Duration::from_secs(2);

/// A job that one node at a time runs, every `every`, while it holds the job's lease (on
/// the embedded engine, always). The lease's fencing token is logged when it changes hands;
/// what the jobs write is compare-and-swap throughout, so a deposed leader still running
/// cannot overwrite its successor's work.
struct Singleton {
    name: &'static str,
    every: Duration,
    fence: Option<u64>,
    last_run: Option<Instant>,
}

impl Singleton {
    fn new(name: &'static str, every: Duration) -> Self {
        Self {
            name,
            every,
            fence: None,
            last_run: None,
        }
    }

    /// Renews the lease; whether this node should run the job now.
    async fn due(&mut self, core: &crate::app::Core) -> bool {
        self.lease(core).await && self.period_over()
    }

    /// Renews the lease; whether this node holds it.
    async fn lease(&mut self, core: &crate::app::Core) -> bool {
        let held = match core.store().lease(self.name, LEASE_TTL).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(job = self.name, error = %e, "cannot renew the job's lease");
                None
            }
        };
        if held != self.fence {
            match held {
                Some(fence) => tracing::info!(job = self.name, fence, "leading this job"),
                None => tracing::info!(job = self.name, "no longer leading this job"),
            }
            self.fence = held;
            self.last_run = None;
        }
        held.is_some()
    }

    /// Whether `every` has passed since the last run (or there was none under this lease). A
    /// timer tick may come a hair early: a run is due within 50 ms of its time.
    fn period_over(&self) -> bool {
        self.last_run
            .is_none_or(|t| t.elapsed() + Duration::from_millis(50) >= self.every)
    }

    fn ran(&mut self) {
        self.last_run = Some(Instant::now());
    }
}

/// Re-signs CRLs before their nextUpdate, when one is behind the revocation index, and within
/// seconds of a revocation whose CRL signing failed on this node.
pub async fn keep_crls(rt: Arc<Runtime>) {
    let mut job = Singleton::new("crl", CRL_CHECK_EVERY);
    let mut tick = tokio::time::interval(LEASE_RENEW.min(CRL_CHECK_EVERY));
    loop {
        tick.tick().await;
        let Some(core) = rt.core() else {
            continue;
        };
        // A revocation on this node stored without its CRL: retried at once, by this node,
        // lease or not (a refresh signs only CRLs that are due or behind). The leader also
        // runs as soon as a CRL in memory falls due, and every CRL_CHECK_EVERY (which finds a
        // CRL behind the revocation index, whichever node failed to sign it).
        let retry = core.pki().take_crl_retry();
        let leading = job.lease(&core).await;
        let timely = leading && core.pki().crls_due(rt.vault.clock.now());
        if !(retry || timely || (leading && job.period_over())) {
            continue;
        }
        if leading {
            job.ran();
        }
        if let Err(e) = core.pki().refresh_crls(rt.vault.clock.now(), false).await {
            tracing::error!(error = %e, "CRL refresh failed");
            if retry {
                core.pki().crl_needs_retry();
            }
        }
    }
}

/// Moves records sealed under older data keys to the current one (after a keyring rotation,
/// and at start if a rotation was interrupted), then retires the old keys.
pub async fn rewrap(rt: Arc<Runtime>) {
    let mut job = Singleton::new("rewrap", Duration::from_secs(1));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut clean_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(core) = rt.core() else {
            continue;
        };
        if !job.due(&core).await {
            if job.fence.is_none() {
                // Another node leads: its clean passes count, not ours.
                clean_since = None;
            }
            continue;
        }
        job.ran();
        let (current, versions) = core.key_versions();
        if versions.len() < 2 {
            clean_since = None;
            continue;
        }
        let c = core.clone();
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || c.rewrap_pass()).await {
            Ok(Ok(0)) => {
                // Retire only after a clean pass that began well after the rotation, so a
                // write still using the old key when the pass began cannot be missed.
                let since = *clean_since.get_or_insert(started);
                if since.elapsed() >= Duration::from_secs(2) {
                    let c = core.clone();
                    let retired =
                        tokio::task::spawn_blocking(move || c.retire_old_keys(current)).await;
                    match retired.unwrap_or(Ok(false)) {
                        Ok(true) => tracing::info!("old data keys retired"),
                        Ok(false) => tracing::info!("a rotation came first: not retiring yet"),
                        Err(e) => tracing::error!(error = %e, "could not retire old data keys"),
                    }
                    clean_since = None;
                }
            }
            Ok(Ok(n)) => {
                clean_since = None;
                tracing::info!(rewrapped = n, "records moved to the current data key");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "rewrap pass failed"),
            Err(_) => tracing::error!("rewrap task failed"),
        }
    }
}

/// Whether the data directory accepts a durable write of a couple of MiB.
fn writable(dir: &std::path::Path) -> bool {
    use std::io::Write;
    // Room for a few of the embedded store's segments, not just the bytes it gave back when
    // its write failed: a nearly full disk must not make the store flap between reopen and
    // failure.
    const HEADROOM: usize = 2 * 1024 * 1024;
    let path = dir.join(".tessera-probe");
    let chunk = [0u8; 64 * 1024];
    let ok = std::fs::File::create(&path)
        .and_then(|mut f| {
            for _ in 0..HEADROOM / chunk.len() {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        })
        .is_ok();
    let _ = std::fs::remove_file(&path);
    ok
}

/// After a storage fault (disk full, read-only, I/O error) writes answer 503 and reads go on;
/// the embedded store stays failed after an I/O error, so once the data directory accepts
/// writes again the store is closed and reopened from disk, and the core rebuilt. Requests get
/// 503 for the moment of the swap.
pub async fn store_doctor(rt: Arc<Runtime>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(core) = rt.core() else {
            continue;
        };
        // A shared database's pool reconnects by itself; only the embedded engine stays
        // failed after an I/O error and is reopened from disk.
        if core.store().healthy() || rt.vault.config.store_url.is_some() {
            continue;
        }
        drop(core);
        let dir = rt.vault.config.data_dir.clone();
        let ready = tokio::task::spawn_blocking(move || writable(&dir))
            .await
            .unwrap_or(false);
        if ready {
            rt.reopen_store().await;
        }
    }
}

/// Refreshes the gauges of keys and certificates by state. A singleton: counting reads whole
/// indexes, so on a shared database one node counts and reports them; the others report no
/// `tessera_keys` or `tessera_certs` series and `tessera_certs_expiring_7d` 0 (a dashboard
/// takes the `max` across nodes).
pub async fn gauges(rt: Arc<Runtime>) {
    let mut job = Singleton::new("gauges", GAUGES_EVERY);
    let mut tick = tokio::time::interval(LEASE_RENEW.min(GAUGES_EVERY));
    let mut reporting = false;
    loop {
        tick.tick().await;
        let Some(core) = rt.core() else {
            continue;
        };
        if !job.lease(&core).await {
            if reporting {
                crate::metrics::KEYS_BY_STATE.reset();
                crate::metrics::CERTS_BY_STATE.reset();
                crate::metrics::CERTS_EXPIRING.set(0);
                reporting = false;
            }
            continue;
        }
        if !job.period_over() {
            continue;
        }
        job.ran();
        reporting = true;
        let now = rt.vault.clock.now();
        if let Ok(k) = core.keys().count_states(now).await {
            let m = &crate::metrics::KEYS_BY_STATE;
            m.with_label_values(&["active"]).set(k.active as i64);
            m.with_label_values(&["ended"]).set(k.ended as i64);
        }
        if let Ok(c) = core.pki().count_states(now).await {
            let m = &crate::metrics::CERTS_BY_STATE;
            m.with_label_values(&["valid"]).set(c.valid as i64);
            m.with_label_values(&["expired"]).set(c.expired as i64);
            m.with_label_values(&["revoked"]).set(c.revoked as i64);
            crate::metrics::CERTS_EXPIRING.set(c.expiring_7d as i64);
        }
    }
}

/// Writes the window's tallied refusals (one entry per source and kind); while sealed, or if
/// the store fails, they wait for the next window.
pub async fn refusals(rt: Arc<Runtime>) {
    let mut tick = tokio::time::interval(Duration::from_secs(
        rt.vault.config.audit_refusal_window_secs,
    ));
    loop {
        tick.tick().await;
        if rt.refusals.is_empty() {
            continue;
        }
        let events = rt.refusals.drain();
        let Some(core) = rt.core() else {
            rt.refusals.restore(events);
            continue;
        };
        if let Err(e) = core.audit().write_all(&events).await {
            tracing::error!(error = %e, "could not write the tallied refusals");
            rt.refusals.restore(events);
        }
    }
}

/// Signs an audit checkpoint when the log has grown, and ships new entries to the JSON-lines
/// file when one is configured.
pub async fn checkpoints(rt: Arc<Runtime>) {
    let every = Duration::from_secs(rt.vault.config.audit_checkpoint_secs);
    let ship_every = Duration::from_millis(500).min(every);
    let mut last_cp = Instant::now();
    let mut job = Singleton::new("checkpoint", every);
    let mut tick = tokio::time::interval(ship_every);
    loop {
        tick.tick().await;
        let Some(core) = rt.core() else {
            continue;
        };
        if let Some(path) = &rt.vault.config.audit_file
            && let Err(e) = crate::audit::sink::ship(core.audit(), path).await
        {
            tracing::error!(error = %e, "could not ship audit entries");
        }
        if last_cp.elapsed() < every.min(LEASE_RENEW) {
            continue;
        }
        last_cp = Instant::now();
        if !job.due(&core).await {
            continue;
        }
        job.ran();
        let latest = core.audit().latest_checkpoint().await.ok().flatten();
        let head = core.store().log_head(crate::audit::LOG).await.ok();
        if let Some(h) = head {
            crate::metrics::AUDIT_HEAD.set(i64::try_from(h.seq).unwrap_or(i64::MAX));
        }
        if latest.as_ref().map(|c| c.seq) == head.map(|h| h.seq) {
            continue;
        }
        if let Err(e) = core.audit().checkpoint(rt.vault.clock.now()).await {
            tracing::error!(error = %e, "could not sign an audit checkpoint");
        }
    }
}

/// Removes records of certificates and keys dead for longer than the retention period.
pub async fn tidy(rt: Arc<Runtime>) {
    let every = Duration::from_secs(rt.vault.config.tidy_interval_secs);
    let retention = rt.vault.config.tidy_retention_secs;
    let mut job = Singleton::new("tidy", every);
    let mut tick = tokio::time::interval(LEASE_RENEW.min(every));
    loop {
        tick.tick().await;
        let Some(core) = rt.core() else {
            continue;
        };
        if !job.due(&core).await {
            continue;
        }
        job.ran();
        let now = rt.vault.clock.now();
        if let Err(e) = core.pki().tidy_enrolment_tokens(now).await {
            tracing::error!(error = %e, "could not tidy enrolment tokens");
        }
        if let Err(e) = core.pki().tidy(now, retention).await {
            tracing::error!(error = %e, "certificate tidy failed");
        }
        if let Err(e) = core.keys().tidy(now, retention).await {
            tracing::error!(error = %e, "key tidy failed");
        }
    }
}
