//! Spawning the server and talking to it.

use crate::proc::Timed;
use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A temp directory holding one server's `data/` and `certs/`, kept across restarts.
pub struct Home {
    pub tmp: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn certs(&self) -> PathBuf {
        self.tmp.path().join("certs")
    }

    pub fn log(&self) -> PathBuf {
        self.tmp.path().join("server.log")
    }
}

/// A running `tessera serve`. Dropping it kills the process.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub certs: PathBuf,
    /// Everything the server printed on stdout.
    pub stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(home: &Home) -> Self {
        Self::start_with(home, &[])
    }

    /// Starts with a TOML configuration file written into the home directory.
    pub fn start_with_config(home: &Home, toml: &str) -> Self {
        let path = home.tmp.path().join("tessera.toml");
        fs::write(&path, toml).unwrap();
        Self::start_with(home, &["--config", path.to_str().unwrap()])
    }

    pub fn start_with(home: &Home, extra: &[&str]) -> Self {
        Self::start_with_env(home, extra, &[])
    }

    pub fn start_with_env(home: &Home, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::try_start_with_env(home, extra, envs)
            .unwrap_or_else(|log| panic!("server did not start; log:\n{log}"))
    }

    /// Starts, or answers what the server logged when it did not start (it exited, or named
    /// no address within 30 s; it is killed then).
    pub fn try_start_with_env(
        home: &Home,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Self, String> {
        let logged_before = fs::metadata(home.log()).map_or(0, |m| m.len() as usize);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.log())
            .unwrap();
        // A free port, unless `extra` names the address.
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(listen)
            .args(["--shutdown-timeout", "1"])
            .arg("--data")
            .arg(home.data())
            .arg("--certs")
            .arg(home.certs())
            .args(extra)
            .env_remove("TESSERA_MASTER_KEY")
            .env(
                "RUST_LOG",
                std::env::var("TESSERA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening on https://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read(home.log()).unwrap_or_default();
                return Err(String::from_utf8_lossy(&log[logged_before.min(log.len())..]).into());
            }
        };
        // The banner's remaining lines follow the address at once.
        std::thread::sleep(Duration::from_millis(50));
        Ok(Self {
            child: Some(child),
            addr,
            certs: home.certs(),
            stdout: lines,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// Whether the process was started and not killed by the test.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status_timed()
            .unwrap();
        assert!(ok.success());
        for _ in 0..200 {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.kill().unwrap();
        panic!("server did not stop within 10 s of SIGTERM");
    }

    /// A client holding the bootstrap admin certificate.
    pub fn admin(&self) -> Api {
        Api::new(
            self,
            client_config(
                &self.certs.join("ca.pem"),
                Some((&self.certs.join("admin.pem"), &self.certs.join("admin.key"))),
            ),
        )
    }

    /// A client holding the given certificate chain and key files.
    pub fn client(&self, cert: &Path, key: &Path) -> Api {
        Api::new(
            self,
            client_config(&self.certs.join("ca.pem"), Some((cert, key))),
        )
    }

    /// A client with no certificate.
    pub fn anonymous(&self) -> Api {
        Api::new(self, client_config(&self.certs.join("ca.pem"), None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Under a coverage run (`cargo llvm-cov` sets LLVM_PROFILE_FILE) the server is
            // stopped with SIGTERM first, so that it exits and writes its profile; a SIGKILL
            // follows after 5 s either way.
            if std::env::var_os("LLVM_PROFILE_FILE").is_some() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status_timed();
                let _ = crate::proc::wait_within(&mut c, "tessera serve", Duration::from_secs(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn certs_from(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A rustls client configuration trusting `ca`, optionally with a client certificate.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for c in certs_from(ca) {
        roots.add(c).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(certs_from(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => b.with_no_client_auth(),
    }
}

/// A small JSON client for the API.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

/// A response: status, headers and parsed body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    #[track_caller]
    pub fn expect_text(self, status: u16) -> String {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self.text
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self.json()
    }
}

impl Api {
    pub fn new(server: &Server, tls: ClientConfig) -> Self {
        Self::with_base(server.url(""), tls)
    }

    pub fn with_base(base: String, tls: ClientConfig) -> Self {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self { http, base }
    }

    /// Like [`Api::send`], but a transport failure is `None` (the server may be gone).
    pub async fn try_post(&self, path: &str, body: Value) -> Option<Resp> {
        self.try_call(reqwest::Method::POST, path, body).await
    }

    /// [`Api::try_post`] with any method.
    pub async fn try_call(&self, method: reqwest::Method, path: &str, body: Value) -> Option<Resp> {
        let r = self
            .http
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.ok()?;
        Some(Resp {
            status,
            headers,
            text,
        })
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        Resp {
            status,
            headers,
            text,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.send(self.http.patch(self.url(path)).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.http.delete(self.url(path))).await
    }

    /// Registers an API and returns its id.
    pub async fn create_api(&self, name: &str) -> String {
        let v = self
            .post(
                "/v1/apis",
                json!({"name": name, "purpose": "tests", "owner": "qa", "risk": "low"}),
            )
            .await
            .expect(201);
        v["id"].as_str().unwrap().to_owned()
    }

    /// Issues a key; returns (key id, secret).
    pub async fn issue(&self, api: &str, body: Value) -> (String, String) {
        let v = self
            .post(&format!("/v1/apis/{api}/keys"), body)
            .await
            .expect(201);
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Verifies a key; returns the verdict's code.
    pub async fn verify(&self, key: &str) -> String {
        self.verify_with(json!({ "key": key })).await["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn verify_with(&self, body: Value) -> Value {
        self.post("/v1/keys/verify", body).await.expect(200)
    }
}

/// A certificate and key for service `name` in `tenant`, written to `dir`; returns the
/// certificate (with its chain) and key paths and the serial.
pub async fn identity_files(
    admin: &Api,
    dir: &Path,
    tenant: &str,
    name: &str,
) -> (PathBuf, PathBuf, String) {
    identity_files_ttl(admin, dir, tenant, name, None).await
}

/// [`identity_files`] with a lifetime (the server's default without one).
pub async fn identity_files_ttl(
    admin: &Api,
    dir: &Path,
    tenant: &str,
    name: &str,
    ttl_seconds: Option<u64>,
) -> (PathBuf, PathBuf, String) {
    let mut body = json!({"identity": name, "tenant": tenant, "generate": true});
    if let Some(t) = ttl_seconds {
        body["ttl_seconds"] = json!(t);
    }
    let v = admin.post("/v1/certs", body).await.expect(201);
    let cert = dir.join(format!("{tenant}-{name}.pem"));
    let key = dir.join(format!("{tenant}-{name}.key"));
    let chain: String = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    fs::write(
        &cert,
        format!("{}{}", v["certificate"].as_str().unwrap(), chain),
    )
    .unwrap();
    fs::write(&key, v["private_key"].as_str().unwrap()).unwrap();
    (cert, key, v["serial"].as_str().unwrap().to_owned())
}

/// Binds service identity `name` in `tenant` to `roles`.
pub async fn bind(admin: &Api, tenant: &str, name: &str, roles: &[&str]) {
    admin
        .send(
            admin
                .http
                .put(admin.url(&format!("/v1/tenants/{tenant}/bindings/{name}")))
                .json(&json!({ "roles": roles })),
        )
        .await
        .expect(200);
}

/// Makes a service identity `name` in `tenant` with `roles`, and a client holding its
/// certificate.
pub async fn service(
    server: &Server,
    admin: &Api,
    dir: &Path,
    tenant: &str,
    name: &str,
    roles: &[&str],
) -> Api {
    if !roles.is_empty() {
        bind(admin, tenant, name, roles).await;
    }
    let (cert, key, _) = identity_files(admin, dir, tenant, name).await;
    server.client(&cert, &key)
}

/// Every audit entry after sequence number `after`, oldest first (paged by 100; the caller's
/// view: the global admin sees all).
pub async fn audit_after(admin: &Api, after: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let page = admin
            .get(&format!("/v1/audit?after_seq={after}&limit=100"))
            .await
            .expect(200);
        let items = page["items"].as_array().unwrap().clone();
        let Some(last) = items.last() else {
            return out;
        };
        after = last["seq"].as_u64().unwrap();
        out.extend(items);
    }
}
