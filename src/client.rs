//! A small HTTPS client for the command line (`tessera backup`, and the client verbs): rustls
//! on the ring provider, the CA bundle as trust anchors, a client certificate or a root key.

use std::path::PathBuf;

use reqwest::{Method, header};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::Value;

/// Where the server is and how to authenticate (flags or `TESSERA_ADDR`,
/// `TESSERA_CACERT`, `TESSERA_CLIENT_CERT`, `TESSERA_CLIENT_KEY`, `TESSERA_TOKEN`).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: String,
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token: Option<crate::crypto::secret::SecretString>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {0}")]
    File(String),
    #[error("cannot reach the server: {0}")]
    Connect(String),
    #[error("{status}: {message}")]
    Server { status: u16, message: String },
}

pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// An answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The answer if it is a success, else the server's own error message.
    pub fn ok(self) -> Result<Self, ClientError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let v = self.json();
        let message = v["error"]["message"]
            .as_str()
            .map(|m| match v["error"]["field"].as_str() {
                Some(f) => format!("{f}: {m}"),
                None => m.to_owned(),
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        Err(ClientError::Server {
            status: self.status,
            message,
        })
    }
}

impl Client {
    pub fn new(t: &Target) -> Result<Self, ClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::pem_file_iter(&t.ca)
            .map_err(|_| ClientError::File(t.ca.display().to_string()))?;
        for c in ca {
            let c = c.map_err(|_| ClientError::File(t.ca.display().to_string()))?;
            roots
                .add(c)
                .map_err(|_| ClientError::File(t.ca.display().to_string()))?;
        }
        let builder = ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .with_root_certificates(roots);
        let tls = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<_, _>>())
                    .map_err(|_| ClientError::File(cert.display().to_string()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|_| ClientError::File(key.display().to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ClientError::File(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        let mut headers = header::HeaderMap::new();
        if let Some(token) = &t.token {
            let mut v = header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| ClientError::File("TESSERA_TOKEN".into()))?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .default_headers(headers)
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Self {
            http,
            base: t.addr.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.map_err(connect_error)?;
        let status = r.status().as_u16();
        let body = r.bytes().await.map_err(connect_error)?.to_vec();
        Ok(Answer { status, body })
    }
}

/// A transport error with its causes (a TLS alert is several sources down).
fn connect_error(e: reqwest::Error) -> ClientError {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    ClientError::Connect(text)
}
