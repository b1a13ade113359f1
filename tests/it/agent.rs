//! `tessera agent` against the real server: renewals under live mTLS traffic, an expired
//! certificate, a server that is down for a while, `--rekey --once`.

use crate::proc::Timed;
use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::helpers::{Api, Home, Server, identity_files, identity_files_ttl};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A running agent; killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(server: &Server, dir: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("agent")
        .args(["--server", &server.url("")])
        .arg("--ca")
        .arg(server.certs.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join(format!("default-{name}.pem")))
        .arg("--key")
        .arg(dir.join(format!("default-{name}.key")))
        .args(extra);
    c
}

fn spawn(mut c: Command, log: &Path) -> Agent {
    let log = fs::File::create(log).unwrap();
    Agent(c.stdout(Stdio::null()).stderr(log).spawn().unwrap())
}

/// Sets the flag when dropped.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A client built from the files on disk right now, as a service reloading them would.
fn from_files(server: &Server, cert: &Path, key: &Path) -> Api {
    server.client(cert, key)
}

#[tokio::test]
async fn the_agent_renews_under_traffic_with_no_failed_call() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) =
        identity_files_ttl(&admin, dir.path(), "default", "worker", Some(30)).await;
    let hook = dir.path().join("hook.log");
    let exec = format!("/bin/sh -c 'echo renewed >> {}'", hook.display());
    let running = spawn(
        {
            let mut c = agent(
                &server,
                dir.path(),
                "worker",
                &["--renew-at", "0.5", "--ttl", "30"],
            );
            c.args(["--exec", &exec]);
            c
        },
        &dir.path().join("agent.log"),
    );

    // A reader never sees a partial file. The files are replaced in microseconds, so they
    // are read in a tight loop on a thread of their own for the whole run (a sample every few
    // hundred milliseconds would almost never look at the moment of a write): every read must
    // hold the leaf and its chain, complete and parseable, and the key must parse.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Stops the reader however the test ends (a failed assertion included).
    let _stop_reader = StopOnDrop(stop.clone());
    let reader = {
        let (cert, key, stop) = (cert.clone(), key.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut bad) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let pem = fs::read(&cert).unwrap_or_default();
                let blocks = ::pem::parse_many(&pem).unwrap_or_default();
                let whole = blocks.len() == 2
                    && blocks.iter().all(|b| {
                        b.tag() == "CERTIFICATE"
                            && x509_parser::parse_x509_certificate(b.contents()).is_ok()
                    });
                let key_ok = ::pem::parse(fs::read(&key).unwrap_or_default()).is_ok();
                if !(whole && key_ok) && bad.len() < 5 {
                    bad.push(String::from_utf8_lossy(&pem).into_owned());
                }
                reads += 1;
                // Gives way to other tests' threads; still reads thousands of times a second.
                std::thread::yield_now();
            }
            (reads, bad)
        })
    };

    // 30-second certificates renewed at half their life: about every 13 s.
    let started = Instant::now();
    let mut serials = BTreeSet::from([first]);
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(50) {
        let pem = fs::read_to_string(&cert).unwrap();
        let r = from_files(&server, &cert, &key).get("/v1/whoami").await;
        assert_eq!(r.status, 200, "call {calls} failed: {}", r.text);
        calls += 1;
        let serial = r.json()["serial"].as_str().unwrap().to_owned();
        if serials.insert(serial) {
            // Every renewed certificate verifies.
            let v = admin
                .post("/v1/certs/verify", json!({ "certificate": pem }))
                .await
                .expect(200);
            assert_eq!(v["code"], "VALID", "{v}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A renewal may land after the last call: stop the agent while it sleeps between
    // renewals (its last line is "next renewal"), so hook runs and renewals can be counted.
    let log_path = dir.path().join("agent.log");
    let idle = Instant::now();
    let log = loop {
        let log = fs::read_to_string(&log_path).unwrap();
        let last = log.lines().last().unwrap_or_default().to_owned();
        if last.contains("next renewal") || idle.elapsed() > Duration::from_secs(30) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(running);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert!(bad.is_empty(), "a reader saw a partial file: {bad:#?}");
    assert!(reads > 10_000, "the files were read {reads} times");
    assert!(
        serials.len() >= 4,
        "{} certificates; log:\n{log}",
        serials.len()
    );
    let renewals = log.matches("certificate renewed").count();
    let hooks = fs::read_to_string(&hook)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(
        hooks, renewals,
        "the hook ran once per renewal; log:\n{log}"
    );
    assert!(
        renewals >= serials.len() - 1,
        "every certificate seen came from a renewal; log:\n{log}"
    );
    assert!(log.contains("next renewal"), "{log}");
    assert!(calls > 100);
}

#[tokio::test]
async fn expired_refused_down_and_rekey() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();

    // An expired certificate cannot renew itself: a clear message and a non-zero exit.
    identity_files_ttl(&admin, dir.path(), "default", "old", Some(1)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for extra in [&["--once"][..], &[][..]] {
        let out = agent(&server, dir.path(), "old", extra)
            .output_timed()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("expired"), "{err}");
    }

    // A revoked certificate is refused: no retry loop.
    let (_, _, serial) = identity_files(&admin, dir.path(), "default", "gone").await;
    admin
        .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    let out = agent(&server, dir.path(), "gone", &["--renew-at", "0.0001"])
        .output_timed()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));

    // --rekey --once: a new key pair, the certificate matches it.
    let (cert, key, first) = identity_files(&admin, dir.path(), "default", "fresh").await;
    let old_key = fs::read_to_string(&key).unwrap();
    let out = agent(
        &server,
        dir.path(),
        "fresh",
        &["--once", "--rekey", "--renew-at", "0.0001"],
    )
    .output_timed()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(fs::read_to_string(&key).unwrap(), old_key);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = from_files(&server, &cert, &key).get("/v1/whoami").await;
    assert_eq!(r.status, 200);
    assert_ne!(r.json()["serial"].as_str().unwrap(), first);
    // --once when not due: nothing to do.
    let out = agent(&server, dir.path(), "fresh", &["--once"])
        .output_timed()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not due"));

    // The server is down: the agent backs off, then renews once it is back.
    identity_files(&admin, dir.path(), "default", "patient").await;
    let addr = server.addr;
    let mut server = server;
    server.terminate();
    let hook = dir.path().join("patient.hook");
    let log = dir.path().join("patient.log");
    // A process to reload by signal: its pid in a file.
    let mut reloaded = Command::new("sleep").arg("60").spawn().unwrap();
    let pid_file = dir.path().join("svc.pid");
    fs::write(&pid_file, format!("{}\n", reloaded.id())).unwrap();
    let _agent = spawn(
        {
            let mut c = agent(&server, dir.path(), "patient", &["--renew-at", "0.0001"]);
            c.args(["--exec", &format!("touch {}", hook.display())])
                .arg("--signal-pid")
                .arg(&pid_file);
            c
        },
        &log,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!hook.exists());
    let _back = Server::start_with(&home, &["--listen", &addr.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hook.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        hook.exists(),
        "renewed once the server was back; log:\n{text}"
    );
    assert!(text.matches("will retry").count() >= 2, "{text}");
    // The renewed certificate is due at once for this --renew-at: the agent waits rather than
    // renewing in a loop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("certificate renewed").count(), 1, "{text}");
    assert!(text.contains("already due"), "{text}");
    // The process in the pid file got SIGHUP (which ends `sleep`).
    let mut status = None;
    for _ in 0..50 {
        status = reloaded.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = reloaded.kill();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.and_then(|s| s.signal()), Some(1), "{text}");
}

/// The first certificate without a long-lived secret: a single-use token for one identity.
#[tokio::test]
async fn enrolment_tokens_bootstrap_a_new_workload_once() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let token = |identity: &'static str, ttl: u64| {
        let admin = admin.clone();
        async move {
            let r = admin
                .post(
                    "/v1/enrolment-tokens",
                    json!({"identity": identity, "ttl_seconds": ttl}),
                )
                .await;
            assert_eq!(r.headers["cache-control"], "no-store");
            let v = r.expect(201);
            assert!(v["expires_at"].is_string());
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let bootstrap = |identity: &str, token: &str, name: &str| {
        Command::new(BIN)
            .args(["agent", "bootstrap", "--server", &server.url("")])
            .arg("--ca")
            .arg(server.certs.join("ca.pem"))
            .args(["--identity", identity])
            .arg("--cert")
            .arg(dir.path().join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.path().join(format!("{name}.key")))
            .env("TESSERA_ENROL_TOKEN", token)
            .output_timed()
            .unwrap()
    };

    let t = token("newbie", 60).await;
    let out = bootstrap("newbie", &t, "newbie");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key) = (dir.path().join("newbie.pem"), dir.path().join("newbie.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let me = from_files(&server, &cert, &key)
        .get("/v1/whoami")
        .await
        .expect(200);
    assert_eq!(
        me["identity"],
        "spiffe://tessera.local/tenant/default/svc/newbie"
    );

    // Then the agent keeps it: not due for hours, but SIGHUP renews at once.
    let hook = dir.path().join("newbie.hook");
    let mut c = Command::new(BIN);
    c.args(["agent", "--server", &server.url("")])
        .arg("--ca")
        .arg(server.certs.join("ca.pem"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["--exec", &format!("touch {}", hook.display())]);
    let running = spawn(c, &dir.path().join("newbie.log"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!hook.exists());
    Command::new("kill")
        .args(["-s", "HUP", "--", &running.0.id().to_string()])
        .status_timed()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hook.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hook.exists(),
        "{}",
        fs::read_to_string(dir.path().join("newbie.log")).unwrap()
    );
    drop(running);

    // Single use.
    let again = bootstrap("newbie", &t, "again");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("enrolment token"), "{err}");
    assert!(
        !err.contains("renewal"),
        "a bootstrap is no renewal (issue 20): {err}"
    );

    // Bound to one identity: the wrong one is refused and does not spend the token.
    let t = token("alpha", 60).await;
    let wrong = bootstrap("beta", &t, "beta");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("enrolment token"));
    assert!(bootstrap("alpha", &t, "alpha").status.success());

    // Short-lived.
    let t = token("late", 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = server
        .anonymous()
        .post(
            "/v1/enrol",
            json!({"token": t, "identity": "late", "csr": fs::read_to_string(&cert).unwrap()}),
        )
        .await;
    assert_eq!(r.status, 401);

    // No escalation: an issuer cannot mint a token for an identity bound to more than it has.
    crate::helpers::bind(&admin, "default", "boss", &["tenant-admin"]).await;
    let issuer =
        crate::helpers::service(&server, &admin, dir.path(), "default", "hr", &["issuer"]).await;
    issuer
        .post("/v1/enrolment-tokens", json!({"identity": "boss"}))
        .await
        .expect(403);
    issuer
        .post("/v1/enrolment-tokens", json!({"identity": "intern"}))
        .await
        .expect(201);
}

/// Issue 20: `agent bootstrap` checks that it can write its files before it spends the
/// single-use token; a bootstrap that cannot write them leaves the token for the next try.
#[tokio::test]
async fn issue_20_bootstrap_never_spends_a_token_it_cannot_use() {
    let home = Home::new();
    let server = Server::start(&home);
    let dir = tempfile::tempdir().unwrap();
    let token = server
        .admin()
        .post("/v1/enrolment-tokens", json!({"identity": "careful"}))
        .await
        .expect(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bootstrap = |cert: &Path, key: &Path| {
        Command::new(BIN)
            .args(["agent", "bootstrap", "--server", &server.url("")])
            .arg("--ca")
            .arg(server.certs.join("ca.pem"))
            .args(["--identity", "careful"])
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .env("TESSERA_ENROL_TOKEN", &token)
            .output_timed()
            .unwrap()
    };
    let good = (
        dir.path().join("careful.pem"),
        dir.path().join("careful.key"),
    );
    let missing = dir.path().join("no-such-dir");
    // A directory that does not exist, for the key and then for the certificate only.
    for (cert, key) in [
        (missing.join("careful.pem"), missing.join("careful.key")),
        (missing.join("careful.pem"), good.1.clone()),
    ] {
        let out = bootstrap(&cert, &key);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot write"), "{err}");
        assert!(err.contains("no-such-dir"), "{err}");
        assert!(!good.1.exists(), "nothing is left behind");
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

    let out = bootstrap(&good.0, &good.1);
    assert!(
        out.status.success(),
        "the token is still good: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    from_files(&server, &good.0, &good.1)
        .get("/v1/whoami")
        .await
        .expect(200);
}
