//! Building and running the HTTPS server, and its background tasks.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{App, HttpServer, middleware::from_fn, web};

use super::{
    abuse::{LockoutPolicy, Throttle},
    guard::Guard,
    listener::{self, Tuning},
    middleware::request_context,
    routes,
    state::AppState,
    tls::{self, CertResolver, ClientVerifier},
};
use crate::{
    app::{AppError, Core, Vault},
    pki::bootstrap::{self, ServerCertSource},
};

/// How often usage counters are persisted (the bound on what a crash can re-grant).
const USAGE_FLUSH_EVERY: Duration = Duration::from_millis(900);
/// Longest interval between checks whether the server's certificate is due for renewal.
const RENEW_CHECK_MAX: Duration = Duration::from_secs(3600);
/// How often the state gauges are recomputed.
const GAUGES_EVERY: Duration = Duration::from_secs(30);
/// How often CRLs are checked for re-signing.
const CRL_CHECK_EVERY: Duration = Duration::from_secs(600);

/// Serves until SIGTERM or SIGINT, then shuts down gracefully. With `core` the server starts
/// unsealed; without, sealed (TLS works, only the public routes and unseal answer).
pub async fn serve(vault: Vault, core: Option<Core>) -> Result<(), AppError> {
    let config = vault.config.clone();
    let clock = vault.clock.clone();
    let now = clock.now();
    // TLS works while sealed: the server's own key is a 0600 file outside the seal.
    let cred = match &core {
        Some(c) => {
            bootstrap::ensure_server_cert(&c.pki, &vault.paths, &config.server_cert, now).await?
        }
        None => bootstrap::server_cert_from_files(&vault.paths, &config.server_cert)?,
    };
    let resolver = Arc::new(CertResolver::new(&cred)?);
    let verifier = Arc::new(ClientVerifier::new(tls::files_verifier(&vault.paths)?));
    let tls_config = tls::server_config(
        resolver.clone(),
        verifier.clone(),
        config.allow_tls12,
        config.limits.http2,
    )?;

    let l = &config.limits;
    let guard = Arc::new(Guard::new(
        Throttle::new(
            (l.principal_rps, l.principal_burst),
            (l.anonymous_rps, l.anonymous_burst),
        ),
        LockoutPolicy {
            threshold: l.lockout_threshold,
            window_secs: l.lockout_window_secs,
            base_secs: l.lockout_secs,
            max_secs: l.lockout_max_secs,
        },
        l.trusted_proxies.clone(),
        clock.clone(),
    ));
    let paths = vault.paths.clone();
    let state = web::Data::new(AppState::new(
        config.clone(),
        clock.clone(),
        guard,
        resolver,
        verifier,
        vault,
    ));
    crate::metrics::init();
    crate::metrics::SEALED.set(1);
    if let Some(core) = core {
        state.install(core);
    }

    let listener = std::net::TcpListener::bind(config.listen).map_err(|source| AppError::Io {
        what: "cannot listen on",
        path: config.listen.to_string(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| AppError::Io {
        what: "cannot read the address of",
        path: config.listen.to_string(),
        source,
    })?;

    let shared = state.clone();
    let tuning = Tuning {
        workers: config.workers,
        max_connections: l.max_connections,
        keep_alive: Duration::from_secs(l.keep_alive_secs),
        client_request_timeout: Duration::from_millis(l.client_request_timeout_ms),
        tls_handshake_timeout: Duration::from_millis(l.tls_handshake_timeout_ms),
        shutdown_timeout_secs: config.shutdown_timeout_secs,
    };
    let server = listener::https(
        listener,
        Arc::new(tls_config),
        tuning,
        state.guard.clone(),
        move || {
            App::new()
                .app_data(shared.clone())
                .wrap(from_fn(request_context))
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
        },
    )
    .map_err(|source| AppError::Io {
        what: "cannot serve on",
        path: addr.to_string(),
        source,
    })?;

    if config.public_url.is_none()
        && let Some(core) = state.try_core()
    {
        core.pki
            .set_public_url(format!("https://localhost:{}", addr.port()));
    }
    print_banner(&state, &paths, addr);
    let mut metrics_handle = None;

    let tasks = [
        actix_web::rt::spawn(flush_usage(state.clone())),
        actix_web::rt::spawn(keep_server_cert(
            state.clone(),
            paths.clone(),
            cred.not_after,
        )),
        actix_web::rt::spawn(keep_crls(state.clone())),
        actix_web::rt::spawn(tidy(state.clone())),
        actix_web::rt::spawn(checkpoints(state.clone())),
        actix_web::rt::spawn(refusals(state.clone())),
        actix_web::rt::spawn(forget_replies(state.clone())),
        actix_web::rt::spawn(gauges(state.clone())),
        actix_web::rt::spawn(housekeeping(state.clone())),
        actix_web::rt::spawn(rewrap(state.clone())),
        actix_web::rt::spawn(store_doctor(state.clone())),
    ];
    if let Some(addr) = config.metrics_listen {
        // Plain HTTP on loopback only (checked by the configuration), serving /metrics alone.
        let metrics_server = HttpServer::new(|| {
            App::new().route(
                "/metrics",
                web::get().to(|| async { routes::sys::metrics_response() }),
            )
        })
        .workers(1)
        .shutdown_timeout(1)
        .disable_signals()
        .bind(addr)
        .map_err(|source| AppError::Io {
            what: "cannot listen on",
            path: addr.to_string(),
            source,
        })?;
        let bound = metrics_server.addrs().first().copied().unwrap_or(addr);
        let metrics_server = metrics_server.run();
        let handle = metrics_server.handle();
        actix_web::rt::spawn(metrics_server);
        metrics_handle = Some(handle);
        println!("  metrics:      http://{bound}/metrics");
    }
    let result = server.await;
    if let Some(h) = metrics_handle {
        h.stop(false).await;
    }
    for t in &tasks {
        t.abort();
    }
    if let Some(core) = state.try_core()
        && let Err(e) = core.keys.usage().flush().await
    {
        tracing::error!(error = %e, "could not persist usage counters at shutdown");
    }
    tracing::info!("stopped");
    result.map_err(|source| AppError::Io {
        what: "server failed on",
        path: addr.to_string(),
        source,
    })
}

/// Persists usage counters about once a second.
async fn flush_usage(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(USAGE_FLUSH_EVERY);
    loop {
        tick.tick().await;
        let Some(core) = state.try_core() else {
            continue;
        };
        if let Err(e) = core.keys.usage().flush_quotas().await {
            tracing::error!(error = %e, "could not persist usage counters; will retry");
        }
    }
}

/// Renews a managed server certificate when a third of its lifetime is left, and reloads the
/// certificate on SIGHUP (operator-provided files, or a forced renewal). The new certificate
/// is swapped into the resolver: no restart, no re-bind, open connections continue.
async fn keep_server_cert(
    state: web::Data<AppState>,
    paths: bootstrap::CertPaths,
    mut not_after: crate::clock::Timestamp,
) {
    let source = state.config.server_cert.clone();
    let every = match &source {
        ServerCertSource::Managed { lifetime_secs } => {
            Duration::from_secs((lifetime_secs / 30).clamp(1, RENEW_CHECK_MAX.as_secs()))
        }
        ServerCertSource::Files { .. } => RENEW_CHECK_MAX,
    };
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP reload unavailable");
            None
        }
    };
    let mut tick = actix_web::rt::time::interval(every);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
        };
        let now = state.clock.now();
        let due = match &source {
            ServerCertSource::Managed { lifetime_secs } => {
                not_after.unix() - now.unix() < (*lifetime_secs / 3) as i64
            }
            ServerCertSource::Files { .. } => false,
        };
        if !due && !forced {
            continue;
        }
        let renewed = match (&source, state.try_core()) {
            (ServerCertSource::Managed { .. }, Some(core)) => {
                bootstrap::renew_server_cert(&core.pki, &paths, &source, now).await
            }
            // Sealed: no CA to renew with; try again on the next check.
            (ServerCertSource::Managed { .. }, None) => continue,
            (ServerCertSource::Files { .. }, _) => {
                bootstrap::server_cert_from_files(&paths, &source)
            }
        };
        match renewed.map(|cred| (state.resolver.swap(&cred), cred.not_after)) {
            Ok((Ok(()), n)) => {
                not_after = n;
                tracing::info!(not_after = %n, "server certificate swapped in");
            }
            Ok((Err(e), _)) => tracing::error!(error = %e, "new server certificate unusable"),
            Err(e) => tracing::error!(error = %e, "server certificate renewal failed"),
        }
    }
}

/// Re-signs CRLs before their nextUpdate.
async fn keep_crls(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(CRL_CHECK_EVERY);
    loop {
        tick.tick().await;
        let Some(core) = state.try_core() else {
            continue;
        };
        if let Err(e) = core.pki.refresh_crls(state.clock.now(), false).await {
            tracing::error!(error = %e, "CRL refresh failed");
        }
    }
}

/// Moves records sealed under older data keys to the current one (after a keyring rotation,
/// and at start if a rotation was interrupted), then retires the old keys.
async fn rewrap(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(Duration::from_secs(1));
    let mut clean_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(core) = state.try_core() else {
            continue;
        };
        let (current, versions) = core.admin.key_versions();
        if versions.len() < 2 {
            clean_since = None;
            continue;
        }
        let admin = core.admin.clone();
        let started = Instant::now();
        match actix_web::rt::task::spawn_blocking(move || admin.rewrap_pass()).await {
            Ok(Ok(0)) => {
                // Retire only after a clean pass that began well after the rotation, so a
                // write still using the old key when the pass began cannot be missed.
                let since = *clean_since.get_or_insert(started);
                if since.elapsed() >= Duration::from_secs(2) {
                    match core.admin.retire_old_keys(&core.master, current) {
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
async fn store_doctor(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(core) = state.try_core() else {
            continue;
        };
        if core.store.healthy() {
            continue;
        }
        let dir = state.config.data_dir.clone();
        let ready = actix_web::rt::task::spawn_blocking(move || writable(&dir))
            .await
            .unwrap_or(false);
        if !ready {
            continue;
        }
        let Ok(master) = core.master.duplicate() else {
            continue;
        };
        drop(core);
        tracing::warn!("the data directory accepts writes again: reopening the store");
        let Some(old) = state.take_core() else {
            continue;
        };
        for _ in 0..200 {
            if Arc::strong_count(&old) == 1 {
                break;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        drop(old);
        // Until the store is back, keep trying: the master key stays in this task meanwhile.
        loop {
            let st = state.clone();
            let reopened = actix_web::rt::task::spawn_blocking(move || st.vault.reopen()).await;
            if matches!(reopened, Ok(Ok(()))) {
                match state
                    .vault
                    .unseal(master.duplicate().unwrap_or_else(|_| std::process::abort()))
                    .await
                {
                    Ok(core) => {
                        state.install(core);
                        tracing::info!("store reopened; writes accepted again");
                        break;
                    }
                    Err(e) => tracing::error!(error = %e, "could not reopen the store; will retry"),
                }
            } else {
                tracing::error!("could not reopen the store; will retry");
            }
            actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Keeps limiter and lockout state bounded.
async fn housekeeping(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        state.guard.housekeeping();
    }
}

/// Refreshes the gauges of keys and certificates by state.
async fn gauges(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(GAUGES_EVERY);
    loop {
        tick.tick().await;
        let Some(core) = state.try_core() else {
            continue;
        };
        let now = state.clock.now();
        if let Ok(k) = core.keys.count_states(now).await {
            let m = &crate::metrics::KEYS_BY_STATE;
            m.with_label_values(&["active"]).set(k.active as i64);
            m.with_label_values(&["ended"]).set(k.ended as i64);
        }
        if let Ok(c) = core.pki.count_states(now).await {
            let m = &crate::metrics::CERTS_BY_STATE;
            m.with_label_values(&["valid"]).set(c.valid as i64);
            m.with_label_values(&["expired"]).set(c.expired as i64);
            m.with_label_values(&["revoked"]).set(c.revoked as i64);
            crate::metrics::CERTS_EXPIRING.set(c.expiring_7d as i64);
        }
    }
}

/// Drops remembered idempotent replies (which may hold a new key) once their window ends.
async fn forget_replies(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        state.idempotency.purge_expired();
    }
}

/// Writes the window's tallied refusals (one entry per source and kind); while sealed, or if
/// the store fails, they wait for the next window.
async fn refusals(state: web::Data<AppState>) {
    let mut tick =
        actix_web::rt::time::interval(Duration::from_secs(state.config.audit_refusal_window_secs));
    loop {
        tick.tick().await;
        if state.refusals.is_empty() {
            continue;
        }
        let events = state.refusals.drain();
        let Some(core) = state.try_core() else {
            state.refusals.restore(events);
            continue;
        };
        if let Err(e) = core.audit.write_all(&events).await {
            tracing::error!(error = %e, "could not write the tallied refusals");
            state.refusals.restore(events);
        }
    }
}

/// Signs an audit checkpoint when the log has grown, and ships new entries to the JSON-lines
/// file when one is configured.
async fn checkpoints(state: web::Data<AppState>) {
    let every = Duration::from_secs(state.config.audit_checkpoint_secs);
    let ship_every = Duration::from_millis(500).min(every);
    let mut last_cp = Instant::now();
    let mut tick = actix_web::rt::time::interval(ship_every);
    loop {
        tick.tick().await;
        let Some(core) = state.try_core() else {
            continue;
        };
        if let Some(path) = &state.config.audit_file
            && let Err(e) = crate::audit::sink::ship(&core.audit, path).await
        {
            tracing::error!(error = %e, "could not ship audit entries");
        }
        if last_cp.elapsed() < every {
            continue;
        }
        last_cp = Instant::now();
        let latest = core.audit.latest_checkpoint().await.ok().flatten();
        let head = core.store.log_head(crate::audit::LOG).await.ok();
        if let Some(h) = head {
            crate::metrics::AUDIT_HEAD.set(i64::try_from(h.seq).unwrap_or(i64::MAX));
        }
        if latest.as_ref().map(|c| c.seq) == head.map(|h| h.seq) {
            continue;
        }
        if let Err(e) = core.audit.checkpoint(state.clock.now()).await {
            tracing::error!(error = %e, "could not sign an audit checkpoint");
        }
    }
}

/// Removes records of certificates and keys dead for longer than the retention period.
async fn tidy(state: web::Data<AppState>) {
    let every = Duration::from_secs(state.config.tidy_interval_secs);
    let retention = state.config.tidy_retention_secs;
    let mut tick = actix_web::rt::time::interval(every);
    loop {
        tick.tick().await;
        let Some(core) = state.try_core() else {
            continue;
        };
        let now = state.clock.now();
        if let Err(e) = core.pki.tidy_enrolment_tokens(now).await {
            tracing::error!(error = %e, "could not tidy enrolment tokens");
        }
        if let Err(e) = core.pki.tidy(now, retention).await {
            tracing::error!(error = %e, "certificate tidy failed");
        }
        if let Err(e) = core.keys.tidy(now, retention).await {
            tracing::error!(error = %e, "key tidy failed");
        }
    }
}

fn print_banner(state: &AppState, p: &bootstrap::CertPaths, addr: std::net::SocketAddr) {
    let host = if addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    println!(
        "Tessera {} listening on https://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    if state.sealed() {
        println!(
            "  SEALED: unseal with POST /v1/sys/unseal {{\"share\": \"...\"}} (or `tessera unseal`)"
        );
    }
    println!("  data:         {}", state.config.data_dir.display());
    println!("  trust anchor: {}", p.ca.display());
    println!(
        "  server cert:  {} (key {})",
        p.server_cert.display(),
        p.server_key.display()
    );
    if p.admin_cert.exists() {
        println!(
            "  admin cert:   {} (key {})",
            p.admin_cert.display(),
            p.admin_key.display()
        );
    } else {
        println!(
            "  admin cert:   missing; issue one with `tessera admin-cert` while the server is stopped"
        );
    }
    println!("First call:");
    println!(
        "  curl --cacert {} --cert {} --key {} https://{host}/v1/whoami",
        p.ca.display(),
        p.admin_cert.display(),
        p.admin_key.display()
    );
}
