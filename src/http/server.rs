//! Building and running the HTTPS server, and its background tasks.

use std::{sync::Arc, time::Duration};

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
    app::{AppError, Core, Vault, tasks},
    pki::bootstrap::{self, ServerCertSource},
};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("pki: {0}")]
    Pki(#[from] crate::pki::PkiError),
}

/// Longest interval between checks whether the server's certificate is due for renewal.
const RENEW_CHECK_MAX: Duration = Duration::from_secs(3600);

/// Serves until SIGTERM or SIGINT, then shuts down gracefully. With `core` the server starts
/// unsealed; without, sealed (TLS works, only the public routes and unseal answer).
pub async fn serve(vault: Vault, core: Option<Core>) -> Result<(), ServeError> {
    let config = vault.config.clone();
    let clock = vault.clock.clone();
    let now = clock.now();
    // TLS works while sealed: the server's own key is a 0600 file outside the seal.
    let cred = match &core {
        Some(c) => {
            bootstrap::ensure_server_cert(c.pki(), &vault.paths, &config.server_cert, now).await?
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
        state.runtime.install(core);
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
        handshake_refusals(&state),
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
        core.pki()
            .set_public_url(format!("https://localhost:{}", addr.port()));
    }
    print_banner(&state, &paths, addr);
    let mut metrics_handle = None;

    let rt = &state.runtime;
    let tasks = [
        actix_web::rt::spawn(tasks::flush_usage(rt.clone())),
        actix_web::rt::spawn(keep_server_cert(
            state.clone(),
            paths.clone(),
            cred.not_after,
        )),
        actix_web::rt::spawn(tasks::keep_crls(rt.clone())),
        actix_web::rt::spawn(tasks::tidy(rt.clone())),
        actix_web::rt::spawn(tasks::checkpoints(rt.clone())),
        actix_web::rt::spawn(tasks::refusals(rt.clone())),
        actix_web::rt::spawn(forget_replies(state.clone())),
        actix_web::rt::spawn(tasks::gauges(rt.clone())),
        actix_web::rt::spawn(housekeeping(state.clone())),
        actix_web::rt::spawn(tasks::rewrap(rt.clone())),
        actix_web::rt::spawn(tasks::store_doctor(rt.clone())),
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
        say(&format!("  metrics:      http://{bound}/metrics\n"));
    }
    let result = server.await;
    if let Some(h) = metrics_handle {
        h.stop(false).await;
    }
    for t in &tasks {
        t.abort();
    }
    if let Some(core) = state.try_core() {
        if let Err(e) = core.keys().usage().flush().await {
            tracing::error!(error = %e, "could not persist usage counters at shutdown");
        }
        // The window's tallied refusals are written before going, not lost.
        let refusals = state.runtime.refusals.drain();
        if let Err(e) = core.audit().write_all(&refusals).await {
            tracing::error!(error = %e, "could not write the tallied refusals at shutdown");
        }
    }
    tracing::info!("stopped");
    result.map_err(|source| {
        AppError::Io {
            what: "server failed on",
            path: addr.to_string(),
            source,
        }
        .into()
    })
}

/// Client certificates refused at the handshake: a log line with the serial, the reason and
/// the peer, and a refusal tallied for the audit log (one entry per source and window, like
/// every refusal without a usable credential, so a flood cannot fill the log).
fn handshake_refusals(state: &web::Data<AppState>) -> listener::OnRefused {
    let state = state.clone();
    Arc::new(move |peer, refused| {
        refused.log(peer);
        let serial = refused.serial.as_ref().map(|s| s.as_str().to_owned());
        let event = crate::audit::Event {
            time: state.clock.now(),
            request_id: String::new(),
            principal: serial
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |s| format!("cert:{s}")),
            tenant: None,
            action: format!("TLS handshake ({})", refused.reason),
            object: serial,
            outcome: "unauthenticated".to_owned(),
            source: peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string()),
            detail: None,
        };
        crate::metrics::AUDIT_REFUSALS
            .with_label_values(&[event.outcome.as_str()])
            .inc();
        state.runtime.refusals.note(event);
    })
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
                not_after.unix_millis() - now.unix_millis() < (*lifetime_secs * 1000 / 3) as i64
            }
            ServerCertSource::Files { .. } => false,
        };
        if !due && !forced {
            continue;
        }
        let renewed = match (&source, state.try_core()) {
            (ServerCertSource::Managed { .. }, Some(core)) => {
                bootstrap::renew_server_cert(core.pki(), &paths, &source, now).await
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

/// Keeps limiter and lockout state bounded.
async fn housekeeping(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        state.guard.housekeeping();
    }
}

/// Drops remembered idempotent replies (which may hold a new key) once their window ends.
async fn forget_replies(state: web::Data<AppState>) {
    let mut tick = actix_web::rt::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        state.idempotency.purge_expired();
        if let Some(core) = state.try_core()
            && core.store().shared()
            && let Err(e) = super::idempotency::purge_shared(&core, state.clock.now()).await
        {
            tracing::debug!(error = %e, "could not purge expired idempotent answers");
        }
    }
}

/// The banner on stdout, in one write. A server never dies because its stdout went away: a
/// supervisor or bench that reads the address and closes the pipe gets an error here that is
/// ignored (`println!` would panic on it).
fn print_banner(state: &AppState, p: &bootstrap::CertPaths, addr: std::net::SocketAddr) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let mut out = String::new();
    let host = if addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let _ = writeln!(
        out,
        "Tessera {} listening on https://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    if state.sealed() {
        let _ = writeln!(
            out,
            "  SEALED: unseal with POST /v1/sys/unseal {{\"share\": \"...\"}} (or `tessera unseal`)"
        );
    }
    let _ = writeln!(out, "  data:         {}", state.config.data_dir.display());
    if let Some(store) = &state.config.store_url {
        // Shown without its password.
        let _ = writeln!(out, "  store:        {store}");
    }
    let _ = writeln!(out, "  trust anchor: {}", p.ca.display());
    let _ = writeln!(
        out,
        "  server cert:  {} (key {})",
        p.server_cert.display(),
        p.server_key.display()
    );
    if p.admin_cert.exists() {
        let _ = writeln!(
            out,
            "  admin cert:   {} (key {})",
            p.admin_cert.display(),
            p.admin_key.display()
        );
    } else {
        let _ = writeln!(
            out,
            "  admin cert:   missing; issue one with `tessera admin-cert` while the server is stopped"
        );
    }
    let _ = writeln!(out, "First call:");
    let _ = writeln!(
        out,
        "  curl --cacert {} --cert {} --key {} https://{host}/v1/whoami",
        p.ca.display(),
        p.admin_cert.display(),
        p.admin_key.display()
    );
    say(&out);
}

/// Writes `text` to stdout and flushes it, ignoring a closed or full stdout.
fn say(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
