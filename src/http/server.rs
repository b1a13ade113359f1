//! Building and running the HTTPS server, and its background tasks.

use std::{sync::Arc, time::Duration};

use actix_web::{App, HttpServer, middleware::from_fn, web};

use super::{
    idempotency::Idempotency,
    middleware::request_context,
    routes,
    state::AppState,
    tls::{self, CertResolver, ClientVerifier},
};
use crate::{
    app::{AppError, Application},
    keys::Keys,
    pki::bootstrap::{self, SERVER_CERT_RENEW_BEFORE_SECS},
};

/// How often usage counters are persisted (the bound on what a crash can re-grant).
const USAGE_FLUSH_EVERY: Duration = Duration::from_millis(900);
/// How often the server checks whether its own certificate is due for renewal.
const RENEW_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn serve(app: Application) -> Result<(), AppError> {
    let now = app.clock.now();
    let cred = bootstrap::ensure_server_cert(&app.pki, &app.paths, now).await?;
    let resolver = Arc::new(CertResolver::new(&cred)?);
    let verifier = Arc::new(ClientVerifier::new(&[app
        .pki
        .authority()
        .root
        .cert
        .clone()])?);
    let tls_config = tls::server_config(resolver.clone(), verifier)?;

    let config = app.config.clone();
    let state = web::Data::new(AppState {
        keys: Keys::new(app.store.clone(), app.keyring.clone()),
        config: app.config.clone(),
        clock: app.clock.clone(),
        store: app.store.clone(),
        pki: app.pki.clone(),
        resolver,
        idempotency: Idempotency::default(),
    });

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
    let server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .wrap(from_fn(request_context))
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
    })
    .on_connect(tls::on_connect)
    .workers(config.workers)
    .shutdown_timeout(config.shutdown_timeout_secs)
    .client_request_timeout(Duration::from_secs(10))
    .tls_handshake_timeout(Duration::from_secs(10))
    .keep_alive(Duration::from_secs(30))
    .max_connections(10_000)
    .listen_rustls_0_23(listener, tls_config)
    .map_err(|source| AppError::Io {
        what: "cannot serve on",
        path: addr.to_string(),
        source,
    })?
    .run();

    print_banner(&app, addr);

    let usage = state.keys.usage();
    let flusher = actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(USAGE_FLUSH_EVERY);
        loop {
            tick.tick().await;
            if let Err(e) = usage.flush().await {
                tracing::error!(error = %e, "could not persist usage counters; will retry");
            }
        }
    });
    let renewer = {
        let state = state.clone();
        let paths = app.paths.clone();
        let mut not_after = cred.not_after;
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(RENEW_CHECK_EVERY);
            loop {
                tick.tick().await;
                let now = state.clock.now();
                if not_after.unix() - now.unix() > SERVER_CERT_RENEW_BEFORE_SECS as i64 {
                    continue;
                }
                match bootstrap::renew_server_cert(&state.pki, &paths, now).await {
                    Ok(cred) => match state.resolver.swap(&cred) {
                        Ok(()) => not_after = cred.not_after,
                        Err(e) => {
                            tracing::error!(error = %e, "renewed server certificate unusable")
                        }
                    },
                    Err(e) => tracing::error!(error = %e, "server certificate renewal failed"),
                }
            }
        })
    };

    let result = server.await;
    flusher.abort();
    renewer.abort();
    if let Err(e) = state.keys.usage().flush().await {
        tracing::error!(error = %e, "could not persist usage counters at shutdown");
    }
    tracing::info!("stopped");
    result.map_err(|source| AppError::Io {
        what: "server failed on",
        path: addr.to_string(),
        source,
    })
}

fn print_banner(app: &Application, addr: std::net::SocketAddr) {
    let p = &app.paths;
    let host = if addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    println!(
        "Tessera {} listening on https://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    println!("  data:         {}", app.config.data_dir.display());
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
