//! The HTTPS listener: actix-server accepts TCP, our own step does the rustls handshake (so
//! it knows the peer's address, counts a refused client certificate against that source,
//! reports it with its serial and peer ([`OnRefused`]), and bounds the handshake's time), then actix-http serves HTTP/1.1 or HTTP/2 to the actix-web
//! application. This is what `HttpServer::listen_rustls` does internally, plus the
//! per-source accounting it cannot offer.

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
    time::Duration,
};

use actix_http::{HttpService, KeepAlive, Protocol, Request, Response, body::MessageBody};
use actix_service::{
    IntoServiceFactory, ServiceFactory, ServiceFactoryExt, fn_service, map_config,
};
use actix_web::{dev::AppConfig, rt::net::TcpStream};
use rustls::ServerConfig;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{guard::Guard, tls};

/// Connection-level limits.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub workers: usize,
    pub max_connections: usize,
    pub keep_alive: Duration,
    /// Time for a client to send a complete request head (cuts off slowloris clients).
    pub client_request_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_timeout_secs: u64,
}

/// Whether a handshake failed because the client's certificate was refused.
fn refused_certificate(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_)
            )
        })
}

/// What to do with a client certificate refused at the handshake, and the peer that sent it
/// (log it, tally it for the audit log).
pub type OnRefused = Arc<dyn Fn(Option<SocketAddr>, tls::Refused) + Send + Sync>;

/// Builds the HTTPS server (not yet running).
pub fn https<F, I, S, B>(
    listener: TcpListener,
    tls_config: Arc<ServerConfig>,
    tuning: Tuning,
    guard: Arc<Guard>,
    on_refused: OnRefused,
    app: F,
) -> std::io::Result<actix_server::Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let local: SocketAddr = listener.local_addr()?;
    actix_server::Server::build()
        .workers(tuning.workers)
        .max_concurrent_connections(tuning.max_connections)
        .shutdown_timeout(tuning.shutdown_timeout_secs)
        .listen("tessera-https", listener, move || {
            let acceptor = TlsAcceptor::from(tls_config.clone());
            let guard = guard.clone();
            let on_refused = on_refused.clone();
            let accept = fn_service(move |io: TcpStream| {
                let acceptor = acceptor.clone();
                let guard = guard.clone();
                let on_refused = on_refused.clone();
                async move {
                    let peer = io.peer_addr().ok();
                    let _ = io.set_nodelay(true);
                    let (outcome, refused) = tls::handshake(tokio::time::timeout(
                        tuning.tls_handshake_timeout,
                        acceptor.accept(io),
                    ))
                    .await;
                    match outcome {
                        Ok(Ok(stream)) => {
                            let proto = match stream.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Protocol::Http2,
                                _ => Protocol::Http1,
                            };
                            Ok((stream, proto, peer))
                        }
                        Ok(Err(e)) => {
                            let refused = refused.or_else(|| {
                                refused_certificate(&e).then_some(tls::Refused {
                                    serial: None,
                                    reason: "refused",
                                })
                            });
                            if let Some(r) = refused {
                                if let Some(p) = peer {
                                    guard.failed(
                                        p.ip(),
                                        "client certificate refused at the handshake",
                                    );
                                }
                                on_refused(peer, r);
                            }
                            Err(actix_http::error::DispatchError::Io(e))
                        }
                        Err(_) => Err(actix_http::error::DispatchError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        ))),
                    }
                }
            });
            let factory = app()
                .into_factory()
                .map_err(|err| err.into().error_response());
            let http = HttpService::<TlsStream<TcpStream>, _, _>::build()
                .keep_alive(KeepAlive::Timeout(tuning.keep_alive))
                .client_request_timeout(tuning.client_request_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .secure()
                .local_addr(local)
                .on_connect_ext(|io: &TlsStream<TcpStream>, ext| tls::on_connect(io, ext))
                .finish(map_config(factory, |_| AppConfig::default()));
            accept.and_then(http)
        })
        .map(actix_server::ServerBuilder::run)
}
