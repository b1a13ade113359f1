//! A raw HTTP/1.1 keep-alive client over tokio-rustls: one TLS connection, many requests,
//! and a look at the handshake (the server's certificate, full or resumed).

use std::{net::SocketAddr, sync::Arc};

use rustls::{ClientConfig, HandshakeKind, pki_types::ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

pub struct RawConn {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        Ok(Self {
            tls,
            buf: Vec::new(),
        })
    }

    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.tls.get_ref().1.handshake_kind()
    }

    /// The server's leaf certificate (DER).
    pub fn server_certificate(&self) -> Vec<u8> {
        self.tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// Serial (lowercase hex) of the server's leaf certificate.
    pub fn server_serial(&self) -> String {
        let certs = self.tls.get_ref().1.peer_certificates().unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        tessera::identity::Serial::from_bytes(c.raw_serial()).to_string()
    }

    /// Sends one request on the connection; returns (status, body).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        self.tls.write_all(req.as_bytes()).await?;
        self.tls.flush().await?;
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    self.fill().await?;
                }
                let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).to_string();
                self.buf.drain(..end + 4 + len);
                return Ok((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.tls.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
