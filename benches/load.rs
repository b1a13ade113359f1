//! The load benchmark: starts the real server on loopback (pinned to core 0) and drives it from
//! its own async rustls client (pinned to core 1) over HTTP/1.1 keep-alive with a client
//! certificate. It prints one table: requests/s, p50, p99 and server CPU-seconds per request
//! (from /proc/<pid>/stat), each scenario next to its baseline from the same run.
//!
//! ```text
//! cargo bench --bench load                      # 10k and 1M keys, 10 s per scenario
//! cargo bench --bench load -- --quick           # smoke: 1k keys, about 30 s in all
//! cargo bench --bench load -- --keys 10000 --duration 5 --connections 32
//! cargo bench --bench load -- --only verify --keys 1000000 --server "usage_cache_keys = 1048576"
//! cargo bench --bench load -- --soak 600        # the mixed soak, 10 minutes
//! ```
//!
//! The last table of a run is issue 18's targets, each worked out from that run's rows.
//!
//! Only 2xx answers are counted. Throttles are raised explicitly for the run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_literal
)]

use std::os::unix::process::CommandExt as _;
use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{ClientConfig, RootCertStore, client::Resumption, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// The integration tests' PostgreSQL harness (initdb in a temp dir, as the postgres user).
#[path = "../tests/it/pg.rs"]
#[allow(dead_code)]
mod pg;
/// Its deadline on every child it waits for.
#[path = "../tests/it/proc.rs"]
#[allow(dead_code)]
mod proc;

struct Opts {
    keys: Vec<usize>,
    duration: Duration,
    connections: usize,
    quick: bool,
    /// Run only the scenarios whose name contains this (`--only create`).
    only: Option<String>,
    /// `--soak SECONDS`: the mixed soak instead of the scenarios.
    soak: Option<u64>,
}

impl Opts {
    fn wants(&self, scenario: &str) -> bool {
        self.only.as_deref().is_none_or(|o| scenario.contains(o))
    }
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let o = Opts {
        keys: get("--keys")
            .map(|v| v.split(',').map(|n| n.parse().unwrap()).collect())
            .unwrap_or_else(|| {
                if quick {
                    vec![1_000]
                } else {
                    vec![10_000, 1_000_000]
                }
            }),
        duration: Duration::from_secs_f64(
            get("--duration")
                .map(|v| v.parse().unwrap())
                .unwrap_or(if quick { 2.0 } else { 10.0 }),
        ),
        connections: get("--connections")
            .map(|v| v.parse().unwrap())
            .unwrap_or(32),
        quick,
        only: get("--only"),
        soak: get("--soak").map(|v| v.parse().unwrap()),
    };
    if let Some(extra) = get("--server") {
        let _ = SERVER_EXTRA.set(extra);
    }
    o
}

// ---- processes ----

fn pin_self(core: usize) {
    let _ = Command::new("taskset")
        .args(["-cp", &core.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
}

/// utime + stime of a process and its children threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Resident and peak resident memory of a process, MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Server {
    child: Child,
    addr: SocketAddr,
    home: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server that is gone before the bench is done with it: say how it ended.
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = fs::read_to_string(self.home.join("server.stderr")).unwrap_or_default();
            // A panic's message first (a backtrace after it would push it out of the tail).
            let lines: Vec<&str> = log.lines().collect();
            if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
                eprintln!("the server panicked:");
                for l in lines.iter().skip(at).take(3) {
                    eprintln!("  {l}");
                }
            }
            eprintln!("the server exited early ({status}); its last log lines:");
            for l in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("  {l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONFIG: &str = "[limits]\nrequests_per_second = 100000000\nburst = 100000000\n\
unauthenticated_per_second = 100000000\nunauthenticated_burst = 100000000\n\
lockout_threshold = 100000000\n[server]\nworkers = 1\nmax_connections = 100000\n\
store_cache_bytes = 134217728\n";

/// `--server "name = value"`: a line added to the servers' `[server]` section (the last of
/// [`CONFIG`]), for a run with another setting (`--server "usage_cache_keys = 1048576"`).
static SERVER_EXTRA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn config_text() -> String {
    match SERVER_EXTRA.get() {
        Some(extra) => format!("{CONFIG}{extra}\n"),
        None => CONFIG.to_owned(),
    }
}

fn start_server(home: &Path) -> Server {
    start_server_with(home, &[], &[])
}

/// [`start_server`] with more arguments and environment (`--store`, the master key).
fn start_server_with(home: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
    fs::write(home.join("tessera.toml"), config_text()).unwrap();
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "0",
        BIN,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "1",
    ])
    .arg("--data")
    .arg(home.join("data"))
    .arg("--certs")
    .arg(home.join("certs"))
    .arg("--config")
    .arg(home.join("tessera.toml"))
    .args(extra)
    .envs(envs.iter().copied());
    spawn_listening(cmd, home)
}

/// The framework floor (`tessera bench-floor`): bare actix-web + rustls with Tessera's TLS
/// settings and the same certificates, pinned like the server. Its log goes to
/// `home/floor/server.stderr`.
fn start_floor(home: &Path) -> Server {
    let dir = home.join("floor");
    fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", BIN, "bench-floor", "--certs"])
        .arg(home.join("certs"));
    spawn_listening(cmd, &dir)
}

/// Starts `cmd` with its stderr in `home/server.stderr`, and waits for the address it prints.
fn spawn_listening(mut cmd: Command, home: &Path) -> Server {
    let mut child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(fs::File::create(home.join("server.stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The address, then the rest of stdout drained (a server's stdout is never closed on it).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on https://").nth(1) {
                let _ = tx.send(rest.trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).ok();
    Server {
        child,
        addr: addr.expect("the server started"),
        home: home.to_owned(),
    }
}

/// Fills a data directory with `n` keys (offline, in a separate process: its peak memory is
/// the ingest peak). Returns the API id, the secrets and the ingest peak (MiB).
fn preload(home: &Path, n: usize) -> (String, Vec<String>, f64) {
    preload_with(home, n, &[])
}

fn preload_with(home: &Path, n: usize, extra: &[&str]) -> (String, Vec<String>, f64) {
    let out = home.join("secrets.txt");
    let child = Command::new(BIN)
        .args(["bench-preload", "--keys", &n.to_string(), "--out"])
        .arg(&out)
        .arg("--data")
        .arg(home.join("data"))
        .arg("--certs")
        .arg(home.join("certs"))
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let peak = Arc::new(std::sync::Mutex::new(0.0f64));
    let watch = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            while fs::metadata(format!("/proc/{pid}")).is_ok() {
                let (_, hwm) = memory_mib(pid);
                let mut p = peak.lock().unwrap();
                *p = p.max(hwm);
                drop(p);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let output = child.wait_with_output().unwrap();
    watch.join().unwrap();
    assert!(output.status.success(), "preload failed");
    let api = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let secrets = fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let peak = *peak.lock().unwrap();
    (api, secrets, peak)
}

// ---- the client ----

fn client_config(certs: &Path, client_cert: bool, resume: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = if client_cert {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.join("admin.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(certs.join("admin.key")).unwrap();
        b.with_client_auth_cert(chain, key).unwrap()
    } else {
        b.with_no_client_auth()
    };
    if !resume {
        cfg.resumption = Resumption::disabled();
    }
    Arc::new(cfg)
}

/// One HTTP/1.1 keep-alive connection (TLS, or plain TCP for cfssl).
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl Conn<TlsStream<TcpStream>> {
    async fn open(addr: SocketAddr, cfg: Arc<ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        Ok(Self::over(tls))
    }
}

impl Conn<TcpStream> {
    async fn plain(addr: SocketAddr) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self::over(tcp))
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn<S> {
    fn over(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Sends one prepared request; returns the status.
    async fn call(&mut self, req: &[u8]) -> std::io::Result<u16> {
        Ok(self.call_body(req).await?.0)
    }

    /// Sends one prepared request; returns the status and the body.
    async fn call_body(&mut self, req: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(req).await?;
        self.stream.flush().await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap_or("");
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    self.fill().await?;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Ok((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn request(method: &str, path: &str, body: Option<&str>, close: bool) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    if close {
        r.push_str("connection: close\r\n");
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

/// What one scenario measured.
struct Measured {
    ok: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_per_req: f64,
}

impl Measured {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// Requests per server CPU-second.
    fn per_cpu_second(&self) -> f64 {
        if self.cpu_per_req > 0.0 {
            1.0 / self.cpu_per_req
        } else {
            0.0
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64
}

/// Raw counts of one run, mergeable across slices.
#[derive(Default)]
struct Sample {
    ok: u64,
    seconds: f64,
    cpu: f64,
    lat: Vec<u64>,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.ok += other.ok;
        self.seconds += other.seconds;
        self.cpu += other.cpu;
        self.lat.extend(other.lat);
    }

    fn measured(mut self) -> Measured {
        self.lat.sort_unstable();
        Measured {
            ok: self.ok,
            seconds: self.seconds,
            p50_us: percentile(&self.lat, 0.5),
            p99_us: percentile(&self.lat, 0.99),
            cpu_per_req: if self.ok > 0 {
                self.cpu / self.ok as f64
            } else {
                0.0
            },
        }
    }
}

/// Runs `connections` keep-alive clients for `duration`, each sending `pick(i)`'s request.
async fn keepalive(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    pids: &[u32],
    connections: usize,
    duration: Duration,
    requests: Arc<Vec<Vec<u8>>>,
) -> Measured {
    keepalive_sample(addr, cfg, pids, connections, duration, requests)
        .await
        .measured()
}

/// Measures `a` and `b` in alternating slices, so a noisy neighbour on this shared machine
/// weighs on both sides of the ratio alike.
async fn interleaved(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    pids: &[u32],
    connections: usize,
    duration: Duration,
    a: Arc<Vec<Vec<u8>>>,
    b: Arc<Vec<Vec<u8>>>,
) -> (Measured, Measured) {
    const SLICES: u32 = 6;
    let (mut sa, mut sb) = (Sample::default(), Sample::default());
    for _ in 0..SLICES {
        let slice = duration / SLICES;
        sa.add(keepalive_sample(addr, cfg.clone(), pids, connections, slice, a.clone()).await);
        sb.add(keepalive_sample(addr, cfg.clone(), pids, connections, slice, b.clone()).await);
    }
    (sa.measured(), sb.measured())
}

/// What one client task counted: 2xx answers and their latencies (µs).
type Counted = (u64, Vec<u64>);

/// Runs `connections` client tasks until `duration` is up and sums what they counted, with
/// the CPU time `pids` used meanwhile.
async fn run_clients<F, Fut>(
    pids: &[u32],
    connections: usize,
    duration: Duration,
    client: F,
) -> Sample
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = Counted> + Send + 'static,
{
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(client(c, deadline)))
        .collect();
    let mut ok = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        lat.extend(l);
    }
    Sample {
        ok,
        seconds: started.elapsed().as_secs_f64(),
        cpu: pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0,
        lat,
    }
}

async fn keepalive_sample(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    pids: &[u32],
    connections: usize,
    duration: Duration,
    requests: Arc<Vec<Vec<u8>>>,
) -> Sample {
    run_clients(pids, connections, duration, |c, deadline| {
        let (cfg, requests) = (cfg.clone(), requests.clone());
        async move {
            // A handshake refused at a busy start (the server's handshake timeout) is retried.
            let mut conn = None;
            for _ in 0..20 {
                match Conn::open(addr, cfg.clone()).await {
                    Ok(c) => {
                        conn = Some(c);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let mut conn = conn.expect("a connection to the server");
            let mut lat = Vec::with_capacity(100_000);
            let mut ok = 0u64;
            let mut i = c.wrapping_mul(7919);
            while Instant::now() < deadline {
                i = i.wrapping_add(104_729);
                let req = &requests[i % requests.len()];
                let t = Instant::now();
                let status = conn.call(req).await.unwrap();
                if (200..300).contains(&status) {
                    ok += 1;
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            (ok, lat)
        }
    })
    .await
}

/// Full handshakes: a new connection (no resumption) per request.
async fn handshakes(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    pids: &[u32],
    connections: usize,
    duration: Duration,
    req: Arc<Vec<u8>>,
) -> Measured {
    run_clients(pids, connections, duration, |_, deadline| {
        let (cfg, req) = (cfg.clone(), req.clone());
        async move {
            let mut lat = Vec::new();
            let mut ok = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let Ok(mut conn) = Conn::open(addr, cfg.clone()).await else {
                    continue;
                };
                if let Ok(s) = conn.call(&req).await
                    && (200..300).contains(&s)
                {
                    ok += 1;
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            (ok, lat)
        }
    })
    .await
    .measured()
}

// ---- outside peers ----

struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // nginx runs in its own process group: the master and every worker go together.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx with `ssl_verify_client on`, the same certificates, no tickets, no session cache.
fn start_nginx(home: &Path) -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let dir = home.join("nginx");
    fs::create_dir_all(&dir).unwrap();
    let certs = home.join("certs");
    let conf = format!(
        "# tessera-bench-nginx\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir};\n\
  proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n\
    ssl_certificate {c}/server.pem;\n    ssl_certificate_key {c}/server.key;\n\
    ssl_client_certificate {c}/ca.pem;\n    ssl_verify_client on;\n    ssl_verify_depth 2;\n\
    ssl_session_tickets off;\n    ssl_session_cache off;\n    keepalive_requests 100000;\n\
    location / {{ return 204; }}\n  }}\n}}\n",
        dir = dir.display(),
        c = certs.display()
    );
    fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("taskset")
        .args(["-c", "0", bin, "-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Nginx {
                child,
                addr: ([127, 0, 0, 1], port).into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The pids of a process and its children (nginx's master and worker).
fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(o) = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
    {
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok()),
        );
    }
    out
}

// ---- the raw baseline for issuance ----

/// One ECDSA P-256 signature verification plus one signing (what issuing from a CSR must
/// do), per second on one core, measured in this process.
fn raw_verify_plus_sign_per_second() -> f64 {
    use ring::{
        rand::SystemRandom,
        signature::{
            self, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
        },
    };
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let msg = [7u8; 300];
    let sig = pair.sign(&rng, &msg).unwrap();
    let pk = signature::UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        pair.public_key().as_ref().to_vec(),
    );
    let n = 3000;
    let t = Instant::now();
    for _ in 0..n {
        pk.verify(&msg, sig.as_ref()).unwrap();
        let _ = pair.sign(&rng, &msg).unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn csrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("bench-{i}"));
            p.serialize_request(&key).unwrap().pem().unwrap()
        })
        .collect()
}

struct Cfssl {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Cfssl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `cfssl serve` with its own P-256 CA (made with `openssl`: cfssl reads SEC1 EC
/// keys), plain HTTP.
fn start_cfssl(home: &Path) -> Option<Cfssl> {
    let bin = ["/usr/bin/cfssl"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let dir = home.join("cfssl");
    fs::create_dir_all(&dir).unwrap();
    let key = dir.join("ca-key.pem");
    let made = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&key)
        .status()
        .ok()?
        .success()
        && Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-subj",
                "/CN=cfssl bench CA",
                "-days",
                "2",
            ])
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(dir.join("ca.pem"))
            .status()
            .ok()?
            .success();
    if !made {
        return None;
    }
    fs::write(
        dir.join("config.json"),
        r#"{"signing":{"default":{"expiry":"24h","usages":["digital signature","client auth"]}}}"#,
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("taskset")
        .args([
            "-c",
            "0",
            bin,
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            &port.to_string(),
        ])
        .arg(format!("-ca={}", dir.join("ca.pem").display()))
        .arg(format!("-ca-key={}", dir.join("ca-key.pem").display()))
        .arg(format!("-config={}", dir.join("config.json").display()))
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("cfssl.log")).ok()?)
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Cfssl {
                child,
                addr: ([127, 0, 0, 1], port).into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Plain-HTTP keep-alive load for cfssl.
async fn cfssl_load(
    addr: SocketAddr,
    pid: u32,
    connections: usize,
    duration: Duration,
    csrs: Arc<Vec<String>>,
) -> Measured {
    run_clients(&family(pid), connections, duration, |c, deadline| {
        let csrs = csrs.clone();
        async move {
            let mut conn = Conn::plain(addr).await.unwrap();
            let mut ok = 0u64;
            let mut lat = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                i += 1;
                let body = serde_json::json!({"certificate_request": csrs[i % csrs.len()]});
                let req = request("POST", "/api/v1/cfssl/sign", Some(&body.to_string()), false);
                let t = Instant::now();
                match conn.call(&req).await {
                    Ok(200) => {
                        ok += 1;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            (ok, lat)
        }
    })
    .await
    .measured()
}

// ---- the run ----

struct Row {
    name: String,
    m: Measured,
    note: String,
}

/// The name of the framework floor's row; every row is also shown as a ratio to it.
const FLOOR: &str = "framework floor: GET /v1/whoami";

fn print_table(rows: &[Row]) {
    println!();
    let floor = rows
        .iter()
        .find(|r| r.name == FLOOR)
        .map(|r| r.m.per_cpu_second());
    println!(
        "| {:<46} | {:>10} | {:>9} | {:>9} | {:>11} | {:>12} | {:>7} | {}",
        "scenario", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "req/CPU-s", "/floor", "note"
    );
    println!(
        "|{:-<48}|{:-<12}|{:-<11}|{:-<11}|{:-<13}|{:-<14}|{:-<9}|------",
        "", "", "", "", "", "", ""
    );
    for r in rows {
        let vs_floor = floor.map_or_else(
            || "-".to_owned(),
            |f| format!("{:.2}x", r.m.per_cpu_second() / f.max(1e-9)),
        );
        println!(
            "| {:<46} | {:>10.0} | {:>9.0} | {:>9.0} | {:>11.1} | {:>12.0} | {:>7} | {}",
            r.name,
            r.m.rps(),
            r.m.p50_us,
            r.m.p99_us,
            r.m.cpu_per_req * 1e6,
            r.m.per_cpu_second(),
            vs_floor,
            r.note
        );
    }
}

fn main() {
    let o = opts();
    let _ = rustls::crypto::ring::default_provider().install_default();
    pin_self(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(seconds) = o.soak {
        rt.block_on(soak(Duration::from_secs(seconds)));
        return;
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut memory = Vec::new();
    let mut half_p99 = Vec::new();
    let d = o.duration;
    let c = o.connections;

    for (round, &n) in o.keys.iter().enumerate() {
        let home = tempfile::tempdir().unwrap();
        // First start creates the CA and credentials; then the offline preload; then a fresh
        // server process.
        drop(start_server(home.path()));
        eprintln!("preloading {n} keys ...");
        let t = Instant::now();
        let (api, secrets, ingest_peak) = preload(home.path(), n);
        eprintln!(
            "preloaded in {:.1} s (ingest peak {ingest_peak:.0} MiB)",
            t.elapsed().as_secs_f64()
        );
        let server = start_server(home.path());
        let pid = server.child.id();
        let certs = server.home.join("certs");
        let mtls = client_config(&certs, true, true);

        rt.block_on(async {
            if o.wants("verify") {
                let whoami = Arc::new(vec![request("GET", "/v1/whoami", None, false)]);
                if round == 0 {
                    // The framework floor (with Tessera idle), then warm up and the baseline.
                    let floor = start_floor(home.path());
                    let fpid = floor.child.id();
                    keepalive(floor.addr, mtls.clone(), &[fpid], c, d / 4, whoami.clone()).await;
                    let m =
                        keepalive(floor.addr, mtls.clone(), &[fpid], c, d, whoami.clone()).await;
                    rows.push(Row {
                        name: FLOOR.into(),
                        note: "bare actix-web + rustls, Tessera's TLS settings".into(),
                        m,
                    });
                    drop(floor);
                    keepalive(server.addr, mtls.clone(), &[pid], c, d / 4, whoami.clone()).await;
                }
                let verify: Vec<Vec<u8>> = secrets
                    .iter()
                    .map(|k| {
                        request(
                            "POST",
                            "/v1/keys/verify",
                            Some(&format!("{{\"key\":\"{k}\"}}")),
                            false,
                        )
                    })
                    .collect();
                let verify = Arc::new(verify);
                // Warm up the way a long-running server is warm: about every key verified
                // once (verification cache, usage counters).
                let warm = (d / 4).max(Duration::from_secs_f64(n as f64 / 20_000.0));
                keepalive(server.addr, mtls.clone(), &[pid], c, warm, verify.clone()).await;
                let (base, v) = interleaved(
                    server.addr,
                    mtls.clone(),
                    &[pid],
                    c,
                    d,
                    whoami.clone(),
                    verify.clone(),
                )
                .await;
                let ratio = v.per_cpu_second() / base.per_cpu_second();
                rows.push(Row {
                    name: format!("baseline: GET /v1/whoami ({n} keys stored)"),
                    note: "the trivial authenticated route".into(),
                    m: base,
                });
                // p99 at half of saturation: a paced run at half the measured rate.
                let half =
                    half_load(server.addr, mtls.clone(), v.rps() / 2.0, d, verify.clone()).await;
                half_p99.push((n, half));
                rows.push(Row {
                    name: format!("verify, keys drawn from {n}"),
                    note: format!(
                        "{ratio:.2}x baseline per CPU-s; p99 at half load {:.0} µs",
                        half
                    ),
                    m: v,
                });
            }
            let (rss, _) = memory_mib(pid);
            memory.push((n, rss, ingest_peak));

            if round == 0 && o.wants("create") {
                // Durable key creation with concurrent clients (group commit).
                let create = Arc::new(vec![request(
                    "POST",
                    &format!("/v1/apis/{api}/keys"),
                    Some("{}"),
                    false,
                )]);
                let k = keepalive(server.addr, mtls.clone(), &[pid], c, d, create).await;
                rows.push(Row {
                    name: format!("durable key creation, {c} clients"),
                    note: "acknowledged after flush".into(),
                    m: k,
                });
            }
            if round == 0 && o.wants("issue") {
                // Issuance from CSRs.
                let list = csrs(if o.quick { 50 } else { 400 });
                let issue: Vec<Vec<u8>> = list
                    .iter()
                    .map(|csr| {
                        let body = serde_json::json!({"identity": "bench", "csr": csr}).to_string();
                        request("POST", "/v1/certs", Some(&body), false)
                    })
                    .collect();
                let i = keepalive(server.addr, mtls.clone(), &[pid], c, d, Arc::new(issue)).await;
                let raw = raw_verify_plus_sign_per_second();
                let ratio = i.per_cpu_second() / raw;
                rows.push(Row {
                    name: "certificate issuance from CSRs".into(),
                    note: format!("{ratio:.2}x raw P-256 verify+sign ({raw:.0}/CPU-s)"),
                    m: i,
                });
                if let Some(cf) = start_cfssl(home.path()) {
                    let cpid = cf.child.id();
                    let csrs = Arc::new(list.clone());
                    let m = cfssl_load(cf.addr, cpid, c, d, csrs).await;
                    rows.push(Row {
                        name: "cfssl serve: /api/v1/cfssl/sign (Debian)".into(),
                        note: format!(
                            "plain HTTP; Tessera/cfssl per CPU-s: {:.2}x",
                            rows.last().map_or(0.0, |r| r.m.per_cpu_second())
                                / m.per_cpu_second().max(1e-9)
                        ),
                        m,
                    });
                }
            }
            if round == 0 && o.wants("handshake") {
                // Full mTLS handshakes: a new connection per request, no resumption.
                let fresh = client_config(&certs, true, false);
                let hs = handshakes(
                    server.addr,
                    fresh.clone(),
                    &[pid],
                    c,
                    d,
                    Arc::new(request("GET", "/healthz", None, true)),
                )
                .await;
                rows.push(Row {
                    name: "full mTLS handshakes (Tessera)".into(),
                    note: "new connection per request, resumption off".into(),
                    m: hs,
                });
                if let Some(nginx) = start_nginx(home.path()) {
                    let pids = family(nginx.child.id());
                    let m = handshakes(
                        nginx.addr,
                        fresh.clone(),
                        &pids,
                        c,
                        d,
                        Arc::new(request("GET", "/", None, true)),
                    )
                    .await;
                    let tessera = rows.last().map_or(0.0, |r| r.m.per_cpu_second());
                    rows.push(Row {
                        name: "full mTLS handshakes (nginx, ssl_verify_client on)".into(),
                        note: format!(
                            "Tessera/nginx per CPU-s: {:.2}x",
                            tessera / m.per_cpu_second().max(1e-9)
                        ),
                        m,
                    });
                }
            }
        });
        drop(server);
    }
    if o.wants("postgres") {
        rt.block_on(postgres_rows(&o, &mut rows));
    }
    print_table(&rows);
    println!();
    for (n, rss, ingest) in &memory {
        let per_m = rss / (*n as f64) * 1e6;
        println!(
            "memory with {n} keys: steady RSS {rss:.0} MiB ({per_m:.0} MiB per million keys), ingest peak {ingest:.0} MiB ({:.2}x steady)",
            ingest / rss.max(1.0)
        );
    }
    print_targets(&rows, &memory, &half_p99, &o.keys);
    if o.keys.len() >= 2 {
        let find = |n: usize| {
            rows.iter()
                .find(|r| r.name == format!("verify, keys drawn from {n}"))
        };
        if let (Some(a), Some(b)) = (find(o.keys[0]), find(o.keys[o.keys.len() - 1])) {
            println!(
                "verify at {} vs {} keys: throughput {:.2}x, p99 {:.2}x",
                o.keys[o.keys.len() - 1],
                o.keys[0],
                b.m.rps() / a.m.rps(),
                b.m.p99_us / a.m.p99_us.max(1.0)
            );
        }
    }
}

/// Issue 18's targets, each worked out from this run's rows (a figure the run did not measure,
/// because of `--only` or `--keys`, says so).
fn print_targets(
    rows: &[Row],
    memory: &[(usize, f64, f64)],
    half_p99: &[(usize, f64)],
    keys: &[usize],
) {
    let per_cpu = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| r.m.per_cpu_second())
    };
    let rps = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.m.rps());
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b.max(1e-9));
    let (first, last) = (keys[0], keys[keys.len() - 1]);
    let whoami = |n: usize| per_cpu(&format!("baseline: GET /v1/whoami ({n} keys stored)"));
    let verify = |n: usize| format!("verify, keys drawn from {n}");
    let floor = per_cpu(FLOOR);
    // (figure, measured, target, whether higher is better, unit)
    let mut targets: Vec<(String, Option<f64>, f64, bool, &str)> = vec![
        (
            format!("whoami / framework floor ({first} keys)"),
            ratio(whoami(first), floor),
            0.7,
            true,
            "x",
        ),
        (
            format!("verify / framework floor ({first} keys)"),
            ratio(per_cpu(&verify(first)), floor),
            0.6,
            true,
            "x",
        ),
        (
            format!("verify / whoami ({first} keys)"),
            ratio(per_cpu(&verify(first)), whoami(first)),
            0.9,
            true,
            "x",
        ),
    ];
    if last != first {
        targets.push((
            format!("verify throughput at {last} / at {first} keys"),
            ratio(rps(&verify(last)), rps(&verify(first))),
            0.9,
            true,
            "x",
        ));
    }
    targets.push((
        "resident memory with 1000000 keys, steady".to_owned(),
        memory
            .iter()
            .find(|(n, _, _)| *n == 1_000_000)
            .map(|(_, rss, _)| *rss),
        384.0,
        false,
        " MiB",
    ));
    targets.push((
        "certificate issuance / cfssl serve (per CPU-s)".to_owned(),
        ratio(
            per_cpu("certificate issuance from CSRs"),
            per_cpu("cfssl serve: /api/v1/cfssl/sign (Debian)"),
        ),
        1.0,
        true,
        "x",
    ));
    targets.push((
        "full mTLS handshakes / nginx (per CPU-s)".to_owned(),
        ratio(
            per_cpu("full mTLS handshakes (Tessera)"),
            per_cpu("full mTLS handshakes (nginx, ssl_verify_client on)"),
        ),
        2.0,
        true,
        "x",
    ));
    targets.push((
        format!("verify p99 at half of saturation ({first} keys)"),
        half_p99.iter().find(|(n, _)| *n == first).map(|(_, p)| *p),
        1000.0,
        false,
        " µs",
    ));
    println!();
    println!(
        "| {:<50} | {:>12} | {:>12} | result",
        "target (issue 18)", "measured", "target"
    );
    println!("|{:-<52}|{:-<14}|{:-<14}|-------", "", "", "");
    for (figure, measured, target, higher, unit) in targets {
        let bound = format!("{}{target}{unit}", if higher { ">= " } else { "<= " });
        let (shown, result) = match measured {
            Some(m) => (
                format!("{m:.2}{unit}"),
                if (higher && m >= target) || (!higher && m <= target) {
                    "met"
                } else {
                    "missed"
                },
            ),
            None => ("-".to_owned(), "not measured in this run"),
        };
        println!("| {figure:<50} | {shown:>12} | {bound:>12} | {result}");
    }
}

/// The PostgreSQL engine next to the embedded one, in the same run: verification of cached
/// keys, durable key creation and issuance per CPU-second (PostgreSQL's own processes counted
/// with Tessera's), and how long a revocation on one node takes to be refused by another.
async fn postgres_rows(o: &Opts, rows: &mut Vec<Row>) {
    // Few enough keys that the warm-up verifies every one: the rows compare the cache-hit
    // path (the main rounds measure a cold 1M).
    let n = if o.quick { 200 } else { 1_000 };
    let (d, c) = (o.duration, o.connections);
    let db = pg::Postgres::start();
    let url = db.create_db("bench");
    let mut per_engine: Vec<(&str, [f64; 3])> = Vec::new();
    let mut kept_home = None;
    for engine in ["sled", "postgres"] {
        let home = tempfile::tempdir().unwrap();
        let extra: Vec<&str> = if engine == "postgres" {
            vec!["--store", &url]
        } else {
            vec![]
        };
        drop(start_server_with(home.path(), &extra, &[]));
        let (api, secrets, _) = preload_with(home.path(), n, &extra);
        let server = start_server_with(home.path(), &extra, &[]);
        let mut pids = vec![server.child.id()];
        let mtls = client_config(&home.path().join("certs"), true, true);
        let verify: Vec<Vec<u8>> = secrets
            .iter()
            .map(|k| {
                request(
                    "POST",
                    "/v1/keys/verify",
                    Some(&format!("{{\"key\":\"{k}\"}}")),
                    false,
                )
            })
            .collect();
        let verify = Arc::new(verify);
        keepalive(server.addr, mtls.clone(), &pids, c, d, verify.clone()).await;
        if engine == "postgres" {
            // The database's backends do the work of writes: count their CPU too.
            pids.extend(family(db.pid().unwrap()));
        }
        let xacts = || {
            db.sql(
                "bench",
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'bench'",
            )
            .parse::<u64>()
            .unwrap_or(0)
        };
        let before = xacts();
        let v = keepalive(server.addr, mtls.clone(), &pids, c, d, verify).await;
        if engine == "postgres" {
            eprintln!(
                "database transactions during the verify run: {} for {} verifies",
                xacts() - before,
                v.ok
            );
        }
        let create = Arc::new(vec![request(
            "POST",
            &format!("/v1/apis/{api}/keys"),
            Some("{}"),
            false,
        )]);
        let k = keepalive(server.addr, mtls.clone(), &pids, c, d, create).await;
        let issue: Vec<Vec<u8>> = csrs(if o.quick { 50 } else { 400 })
            .iter()
            .map(|csr| {
                let body = serde_json::json!({"identity": "bench", "csr": csr}).to_string();
                request("POST", "/v1/certs", Some(&body), false)
            })
            .collect();
        let i = keepalive(server.addr, mtls.clone(), &pids, c, d, Arc::new(issue)).await;
        per_engine.push((
            engine,
            [v.per_cpu_second(), k.per_cpu_second(), i.per_cpu_second()],
        ));
        let ratio = |j: usize, now: f64| {
            per_engine
                .first()
                .map_or(1.0, |(_, base)| now / base[j].max(1e-9))
        };
        let notes = [
            format!("{:.2}x sled per CPU-s", ratio(0, v.per_cpu_second())),
            format!("{:.2}x sled per CPU-s", ratio(1, k.per_cpu_second())),
            format!("{:.2}x sled per CPU-s", ratio(2, i.per_cpu_second())),
        ];
        for (name, m, note) in [
            (format!("verify, cached keys ({engine})"), v, &notes[0]),
            (
                format!("durable key creation, {c} clients ({engine})"),
                k,
                &notes[1],
            ),
            (
                format!("certificate issuance from CSRs ({engine})"),
                i,
                &notes[2],
            ),
        ] {
            rows.push(Row {
                name,
                note: note.clone(),
                m,
            });
        }
        if engine == "postgres" {
            kept_home = Some((home, server));
        }
    }

    // Revocation propagation: keys created and revoked on A, watched on B.
    let Some((home, a)) = kept_home else { return };
    let master = fs::read_to_string(home.path().join("data/master.key")).unwrap();
    let b_home = tempfile::tempdir().unwrap();
    fs::create_dir_all(b_home.path().join("certs")).unwrap();
    let b = start_server_with(
        b_home.path(),
        &["--store", &url],
        &[("TESSERA_MASTER_KEY", master.trim())],
    );
    let tls = (*client_config(&home.path().join("certs"), true, true)).clone();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let at = |s: &Server, p: &str| format!("https://localhost:{}{p}", s.addr.port());
    let api: serde_json::Value = http
        .post(at(&a, "/v1/apis"))
        .json(&serde_json::json!({"name": "propagation", "purpose": "bench", "owner": "bench", "risk": "low"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api = api["id"].as_str().unwrap().to_owned();
    let mut delays = Vec::new();
    for _ in 0..(if o.quick { 10 } else { 100 }) {
        let k: serde_json::Value = http
            .post(at(&a, &format!("/v1/apis/{api}/keys")))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (id, secret) = (k["id"].as_str().unwrap(), k["key"].as_str().unwrap());
        let verify = || async {
            let v: serde_json::Value = http
                .post(at(&b, "/v1/keys/verify"))
                .json(&serde_json::json!({ "key": secret }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["code"].as_str().unwrap_or("").to_owned()
        };
        assert_eq!(verify().await, "VALID");
        http.post(at(&a, &format!("/v1/keys/{id}/revoke")))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let t = Instant::now();
        while verify().await != "REVOKED" {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(t.elapsed().as_micros() as u64);
    }
    delays.sort_unstable();
    println!(
        "revocation propagation, PostgreSQL, node A to node B ({} keys): p50 {:.1} ms, p99 {:.1} ms (store.poll_interval_ms 100, bound 1000)",
        delays.len(),
        percentile(&delays, 0.5) / 1000.0,
        percentile(&delays, 0.99) / 1000.0
    );
}

/// A paced load at `rate` requests/s; returns the p99 latency in µs.
async fn half_load(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    rate: f64,
    duration: Duration,
    requests: Arc<Vec<Vec<u8>>>,
) -> f64 {
    let connections = 8usize;
    let per_conn = rate / connections as f64;
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let cfg = cfg.clone();
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, cfg).await.unwrap();
            let gap = Duration::from_secs_f64(1.0 / per_conn.max(1.0));
            let mut next = Instant::now();
            let mut lat = Vec::new();
            let mut i = c * 31;
            while Instant::now() < deadline {
                next += gap;
                i += 1;
                let t = Instant::now();
                if let Ok(s) = conn.call(&requests[(i * 7919) % requests.len()]).await
                    && (200..300).contains(&s)
                {
                    lat.push(t.elapsed().as_micros() as u64);
                }
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort_unstable();
    percentile(&lat, 0.99)
}

// ---- the soak ----

/// One operation of the soak: when it ended (seconds from the start), its latency, and
/// whether it answered as it must.
struct Done {
    at: f64,
    micros: u64,
    ok: bool,
}

/// The soak's mix, by the operation's number: 90 % verify; the rest key creation, rotation
/// and revocation, certificate issuance and revocation (in turn).
#[derive(Clone, Copy, PartialEq)]
enum Op {
    Verify,
    Create,
    Rotate,
    Revoke,
    Issue,
    Unissue,
}

fn op_of(i: usize) -> Op {
    match i % 40 {
        0 => Op::Create,
        1 => Op::Rotate,
        2 => Op::Revoke,
        3 if (i / 40) % 2 == 0 => Op::Issue,
        3 => Op::Unissue,
        _ => Op::Verify,
    }
}

/// What every soak client shares.
#[derive(Clone)]
struct Mix {
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    api: Arc<String>,
    verify: Arc<Vec<Vec<u8>>>,
    csrs: Arc<Vec<String>>,
}

/// One soak client: a keep-alive connection running the mix, paced at `rate` operations per
/// second (`None`: as fast as it can) until `deadline`.
async fn soak_client(
    mix: Mix,
    c: usize,
    rate: Option<f64>,
    start: Instant,
    deadline: Instant,
) -> Vec<Done> {
    let Mix {
        addr,
        cfg,
        api,
        verify,
        csrs,
    } = mix;
    let mut conn = None;
    for _ in 0..20 {
        match Conn::open(addr, cfg.clone()).await {
            Ok(k) => {
                conn = Some(k);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut conn = conn.expect("a connection to the server");
    let mut keys: std::collections::VecDeque<String> = Default::default();
    let mut serials: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let gap = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.1)));
    let mut next = Instant::now();
    let mut i = c * 7;
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap_or_default();
    while Instant::now() < deadline {
        i += 1;
        let op = op_of(i);
        let req = match op {
            Op::Verify => verify[(i * 7919) % verify.len()].clone(),
            Op::Create => request("POST", &format!("/v1/apis/{api}/keys"), Some("{}"), false),
            Op::Rotate | Op::Revoke => match keys.pop_front() {
                Some(k) if op == Op::Rotate => request(
                    "POST",
                    &format!("/v1/keys/{k}/rotate"),
                    Some(r#"{"grace_seconds":60}"#),
                    false,
                ),
                Some(k) => request("POST", &format!("/v1/keys/{k}/revoke"), Some("{}"), false),
                None => verify[i % verify.len()].clone(),
            },
            Op::Issue => {
                let body = serde_json::json!({"identity": "soak", "csr": csrs[i % csrs.len()]});
                request("POST", "/v1/certs", Some(&body.to_string()), false)
            }
            Op::Unissue => match serials.pop() {
                Some(s) => request("POST", &format!("/v1/certs/{s}/revoke"), Some("{}"), false),
                None => verify[i % verify.len()].clone(),
            },
        };
        let t = Instant::now();
        let answer = conn.call_body(&req).await;
        let micros = t.elapsed().as_micros() as u64;
        let ok = match &answer {
            Ok((status, body)) if (200..300).contains(status) => {
                let v = json(body);
                match op {
                    Op::Create | Op::Rotate => {
                        if let Some(id) = v["id"].as_str() {
                            keys.push_back(id.to_owned());
                        }
                    }
                    Op::Issue => {
                        if let Some(s) = v["serial"].as_str() {
                            serials.push(s.to_owned());
                        }
                    }
                    _ => {}
                }
                // A verify of a preloaded key must be VALID.
                op != Op::Verify || v["code"] == "VALID"
            }
            _ => false,
        };
        out.push(Done {
            at: start.elapsed().as_secs_f64(),
            micros,
            ok,
        });
        if answer.is_err() {
            // The connection is gone: a new one (counted as the error it was).
            if let Ok(k) = Conn::open(addr, cfg.clone()).await {
                conn = k;
            }
        }
        if let Some(gap) = gap {
            next += gap;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    out
}

/// Full handshakes during the soak: a new connection per request, `rate` per second.
async fn soak_handshakes(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    rate: f64,
    start: Instant,
    deadline: Instant,
) -> Vec<Done> {
    let req = request("GET", "/v1/whoami", None, true);
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        let ok = match Conn::open(addr, cfg.clone()).await {
            Ok(mut c) => matches!(c.call(&req).await, Ok(s) if (200..300).contains(&s)),
            Err(_) => false,
        };
        out.push(Done {
            at: start.elapsed().as_secs_f64(),
            micros: t.elapsed().as_micros() as u64,
            ok,
        });
        next += gap;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    out
}

/// `--soak SECONDS`: 10,000 keys; the mix's capacity measured unpaced for 10 s; then the mix
/// at 80 % of it, with a client doing full handshakes, for the given time. Prints errors
/// (must be 0), p50/p99 and the server's RSS per minute (per 10 s under two minutes), and the
/// RSS growth from the first interval to the last.
async fn soak(length: Duration) {
    const CLIENTS: usize = 8;
    let home = tempfile::tempdir().unwrap();
    drop(start_server(home.path()));
    let (api, secrets, _) = preload(home.path(), 10_000);
    let server = start_server(home.path());
    let pid = server.child.id();
    let mtls = client_config(&server.home.join("certs"), true, true);
    let fresh = client_config(&server.home.join("certs"), true, false);
    let api = Arc::new(api);
    let verify: Arc<Vec<Vec<u8>>> = Arc::new(
        secrets
            .iter()
            .map(|k| {
                request(
                    "POST",
                    "/v1/keys/verify",
                    Some(&format!("{{\"key\":\"{k}\"}}")),
                    false,
                )
            })
            .collect(),
    );
    let csrs = Arc::new(csrs(64));
    // Every key verified once (the cache warm, as in a long-running server).
    keepalive(
        server.addr,
        mtls.clone(),
        &[pid],
        32,
        Duration::from_secs(5),
        verify.clone(),
    )
    .await;
    let mix = Mix {
        addr: server.addr,
        cfg: mtls.clone(),
        api,
        verify,
        csrs,
    };
    let run = |rate: Option<f64>, length: Duration| {
        let mix = mix.clone();
        async move {
            let start = Instant::now();
            let deadline = start + length;
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    tokio::spawn(soak_client(
                        mix.clone(),
                        c,
                        rate.map(|r| r / CLIENTS as f64),
                        start,
                        deadline,
                    ))
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        }
    };
    let probe = run(None, Duration::from_secs(10)).await;
    let capacity = probe.len() as f64 / 10.0;
    let rate = capacity * 0.8;
    eprintln!(
        "soak: mix capacity {capacity:.0} ops/s; running at {rate:.0} ops/s for {} s",
        length.as_secs()
    );
    // RSS sampled every second.
    let rss = Arc::new(std::sync::Mutex::new(Vec::<(f64, f64)>::new()));
    let sampler = {
        let rss = rss.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            loop {
                let (r, _) = memory_mib(pid);
                rss.lock().unwrap().push((start.elapsed().as_secs_f64(), r));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let hs = {
        let start = Instant::now();
        tokio::spawn(soak_handshakes(
            server.addr,
            fresh,
            5.0,
            start,
            start + length,
        ))
    };
    let mut done = run(Some(rate), length).await;
    done.extend(hs.await.unwrap());
    sampler.abort();
    let bucket = if length >= Duration::from_secs(120) {
        60.0
    } else {
        10.0
    };
    let buckets = (length.as_secs_f64() / bucket).ceil() as usize;
    println!();
    println!(
        "| {:>8} | {:>8} | {:>6} | {:>9} | {:>9} | {:>8} |",
        "from s", "ops", "errors", "p50 µs", "p99 µs", "RSS MiB"
    );
    println!(
        "|{:-<10}|{:-<10}|{:-<8}|{:-<11}|{:-<11}|{:-<10}|",
        "", "", "", "", "", ""
    );
    let samples = rss.lock().unwrap().clone();
    let mut first_rss = None;
    let mut last_rss = 0.0;
    let mut errors = 0;
    for b in 0..buckets {
        let (lo, hi) = (b as f64 * bucket, (b + 1) as f64 * bucket);
        let mut lat: Vec<u64> = done
            .iter()
            .filter(|d| d.at >= lo && d.at < hi)
            .map(|d| d.micros)
            .collect();
        let errs = done
            .iter()
            .filter(|d| d.at >= lo && d.at < hi && !d.ok)
            .count();
        errors += errs;
        lat.sort_unstable();
        let r = samples
            .iter()
            .rev()
            .find(|(t, _)| *t < hi)
            .map_or(0.0, |(_, r)| *r);
        first_rss.get_or_insert(r);
        last_rss = r;
        println!(
            "| {:>8.0} | {:>8} | {:>6} | {:>9.0} | {:>9.0} | {:>8.1} |",
            lo,
            lat.len(),
            errs,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            r
        );
    }
    let first = first_rss.unwrap_or(0.0);
    println!();
    println!(
        "soak: {} operations, {errors} errors; RSS {first:.1} MiB in the first interval, {last_rss:.1} MiB in the last ({:+.1} %)",
        done.len(),
        (last_rss / first.max(1e-9) - 1.0) * 100.0
    );
    drop(server);
    assert_eq!(errors, 0, "the soak must run without an error");
}
