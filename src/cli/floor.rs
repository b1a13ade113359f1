//! `tessera bench-floor` (hidden): the load benchmark's framework floor. A bare actix-web +
//! rustls server with Tessera's TLS settings (TLS 1.3 only, client certificates verified
//! against the same CA by rustls's own verifier, no resumption, one worker) answering one
//! small static JSON route. What it costs per request is what actix and rustls cost; the
//! difference to `GET /v1/whoami` is what Tessera adds.

use std::{path::Path, sync::Arc};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use rustls::{
    RootCertStore, ServerConfig, server::NoServerSessionStorage, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

pub(super) fn run(certs: &Path, listen: &str) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).context("reading ca.pem")? {
        roots.add(c?)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_file_iter(certs.join("server.pem"))
        .context("reading server.pem")?
        .collect::<Result<Vec<_>, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(certs.join("server.key")).context("reading server.key")?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new().route(
                "/v1/whoami",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(r#"{"identity":"floor"}"#)
                }),
            )
        })
        .workers(1)
        .bind_rustls_0_23(listen, cfg)?;
        for addr in server.addrs() {
            out!("framework floor listening on https://{addr}");
        }
        server.run().await?;
        anyhow::Ok(())
    })
}
