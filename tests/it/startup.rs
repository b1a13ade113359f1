//! Start-up on embedded defaults, reuse on restart, configuration errors, offline admin-cert.

use crate::proc::{Timed, wait_within};
use std::{fs, process::Command, time::Duration};

use crate::helpers::{Api, BIN, Home, Server, client_config};

#[tokio::test]
async fn first_start_creates_everything_and_second_start_reuses_it() {
    let home = Home::new();
    let mut server = Server::start(&home);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        fs::metadata(home.tmp.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data/master.key"), 0o600);
    assert_eq!(mode("certs/server.key"), 0o600);
    assert_eq!(mode("certs/admin.key"), 0o600);
    let ca = fs::read(home.certs().join("ca.pem")).unwrap();
    let admin_pem = fs::read(home.certs().join("admin.pem")).unwrap();
    let server_pem = fs::read(home.certs().join("server.pem")).unwrap();
    // The server presents its full chain: leaf and issuing CA.
    assert_eq!(
        String::from_utf8_lossy(&server_pem)
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    server.terminate();

    let server = Server::start(&home);
    assert_eq!(fs::read(home.certs().join("ca.pem")).unwrap(), ca);
    assert_eq!(fs::read(home.certs().join("admin.pem")).unwrap(), admin_pem);
    assert_eq!(
        fs::read(home.certs().join("server.pem")).unwrap(),
        server_pem
    );
    server.admin().get("/v1/whoami").await.expect(200);
}

#[test]
fn a_wrong_setting_names_it_and_creates_nothing() {
    let home = Home::new();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("serve")
            .args(args)
            .arg("--data")
            .arg(home.data())
            .arg("--certs")
            .arg(home.certs())
            .output_timed()
            .unwrap()
    };
    let out = run(&["--listen", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`listen`"));
    let out = run(&["--listen", "127.0.0.1:0", "--trust-domain", "Bad Domain!"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`trust_domain`"));
    let cfg = home.tmp.path().join("tessera.toml");
    fs::write(&cfg, "listen = \"127.0.0.1:0\"\nsurprise = true\n").unwrap();
    let out = run(&["--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
    assert!(!home.data().exists());
    assert!(!home.certs().exists());
}

#[tokio::test]
async fn admin_cert_reissues_offline_and_refuses_a_running_server() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let admin_cmd = || {
        Command::new(BIN)
            .arg("admin-cert")
            .arg("--data")
            .arg(home.data())
            .arg("--certs")
            .arg(home.certs())
            .output_timed()
            .unwrap()
    };
    // One process per database: the running server holds it.
    let out = admin_cmd();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another process"));
    server.terminate();

    let before = fs::read(home.certs().join("admin.pem")).unwrap();
    fs::remove_file(home.certs().join("admin.key")).unwrap();
    let out = admin_cmd();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(fs::read(home.certs().join("admin.pem")).unwrap(), before);
    let server = Server::start(&home);
    server.admin().get("/v1/whoami").await.expect(200);
}

/// A supervisor that reads nothing (or reads the address and closes the pipe) must not take
/// the server down: with stdout closed before the first line, the banner cannot be written,
/// and the server still starts, serves and stops cleanly.
#[tokio::test]
async fn a_closed_stdout_never_stops_the_server() {
    let home = Home::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // Killed on every way out of the test.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(
        Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--shutdown-timeout", "1"])
            .arg("--data")
            .arg(home.data())
            .arg("--certs")
            .arg(home.certs())
            .env_remove("TESSERA_MASTER_KEY")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(fs::File::create(home.log()).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("https://localhost:{port}");
    let mut answered = None;
    for _ in 0..300 {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "the server exited ({status}); log:\n{}",
                fs::read_to_string(home.log()).unwrap_or_default()
            );
        }
        if home.certs().join("admin.key").exists() {
            let admin = Api::with_base(
                base.clone(),
                client_config(
                    &home.certs().join("ca.pem"),
                    Some((
                        &home.certs().join("admin.pem"),
                        &home.certs().join("admin.key"),
                    )),
                ),
            );
            if let Some(r) = admin
                .try_call(reqwest::Method::GET, "/v1/whoami", serde_json::Value::Null)
                .await
            {
                answered = Some(r.status);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(200), "the server answered whoami");
    // Still running after the banner would have been written, and it stops on SIGTERM with 0.
    assert!(child.0.try_wait().unwrap().is_none());
    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status_timed()
        .unwrap();
    assert!(term.success());
    let status = wait_within(&mut child.0, "tessera serve", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "stopped with {status}");
}
