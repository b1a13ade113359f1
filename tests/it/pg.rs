//! A real PostgreSQL server for the tests, from Debian's packages: `initdb` in a temp dir and
//! `postgres` on a free loopback port, as the `postgres` user when the tests run as root
//! (PostgreSQL refuses to run as root). Stopped (and its processes gone) when dropped.

use crate::proc::Timed;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The newest PostgreSQL server installed under /usr/lib/postgresql.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output_timed()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` as the `postgres` user when we are root (setpriv execs: the child is the program).
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub struct Postgres {
    child: Option<Child>,
    /// Holds the cluster's directory (and removes it when dropped).
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// initdb and start a fresh server; waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// [`Postgres::start`], serving TLS with this certificate and key (PEM) when given.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pg");
        std::fs::create_dir(&dir).unwrap();
        if running_as_root() {
            assert!(
                Command::new("chmod")
                    .arg("755")
                    .arg(tmp.path())
                    .status_timed()
                    .unwrap()
                    .success()
            );
            assert!(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&dir)
                    .status_timed()
                    .unwrap()
                    .success()
            );
        }
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&dir)
            .args(["-U", "tessera", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output_timed()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = dir.join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                if running_as_root() {
                    assert!(
                        Command::new("chown")
                            .arg("postgres:postgres")
                            .arg(&path)
                            .status_timed()
                            .unwrap()
                            .success()
                    );
                }
            }
            let conf = dir.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(&conf, text).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Self {
            child: None,
            _tmp: tmp,
            dir,
            bin,
            port,
        };
        pg.resume();
        pg
    }

    /// Starts the server again on the same directory and port (after [`Postgres::stop`]).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.with_file_name("postgres.log")).unwrap();
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status_timed()
                .unwrap();
            if ready.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!("PostgreSQL did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The postmaster's process id (its backends are its children), while it runs: the load
    /// bench counts PostgreSQL's CPU by it.
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_file_name("postgres.log")).unwrap_or_default()
    }

    /// Stops the server at once (SIGQUIT: immediate shutdown, as a crash would leave it; it
    /// recovers from its WAL at the next start).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status_timed();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    /// A client program of this server's, told where it is and who connects.
    fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let program = program.as_ref();
        let path = self.bin.join(program);
        let mut c = Command::new(if path.exists() { path } else { program.into() });
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "tessera",
        ]);
        c
    }

    /// Creates a database and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let out = self.client("createdb").arg(name).output_timed().unwrap();
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://tessera@127.0.0.1:{}/{db}", self.port)
    }

    /// `pg_dump` of one database (data only), as text.
    pub fn dump(&self, db: &str) -> String {
        let out = self
            .client("pg_dump")
            .args(["--data-only", db])
            .output_timed()
            .unwrap();
        assert!(out.status.success(), "pg_dump failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs one SQL command through `psql` (Debian's postgresql-client) and returns what it
    /// printed (unaligned, tuples only).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self
            .client("psql")
            .args(["-At", "-d", db, "-c", sql])
            .output_timed()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
