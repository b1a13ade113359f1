//! The client verbs against the real server, in both output formats.

use crate::proc::{CHILD_LIMIT, Timed, wait_output_within};
use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Output},
};

use serde_json::{Value, json};

use crate::helpers::{Home, Server};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// `tessera <args>` as the bootstrap admin (credentials from the environment).
fn command(server: &Server, args: &[&str], env: &[(&str, &str)]) -> Command {
    as_admin(Command::new(BIN), server, args, env)
}

/// `program <args>` with the bootstrap admin's environment.
fn as_admin(mut c: Command, server: &Server, args: &[&str], env: &[(&str, &str)]) -> Command {
    let certs = &server.certs;
    c.args(args)
        .env("TESSERA_ADDR", server.url(""))
        .env("TESSERA_CACERT", certs.join("ca.pem"))
        .env("TESSERA_CLIENT_CERT", certs.join("admin.pem"))
        .env("TESSERA_CLIENT_KEY", certs.join("admin.key"))
        .env_remove("TESSERA_TOKEN")
        .env_remove("TESSERA_KEY")
        .env_remove("TESSERA_ENROL_TOKEN")
        .envs(env.iter().copied());
    c
}

/// Runs `tessera <args>` as the bootstrap admin.
fn run(server: &Server, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(server, args, env).output_timed().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(server: &Server, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    serde_json::from_str(&ok(&run(server, &all, env))).unwrap()
}

#[tokio::test]
async fn client_verbs_in_both_formats() {
    let home = Home::new();
    let server = Server::start(&home);

    let me = ok(&run(&server, &["whoami"], &[]));
    assert!(me.contains("spiffe://tessera.local/system/admin"), "{me}");

    let api = json(
        &server,
        &[
            "apis",
            "create",
            "--name",
            "cli",
            "--purpose",
            "command line",
            "--owner",
            "ops",
            "--risk",
            "low",
        ],
        &[],
    );
    let api_id = api["id"].as_str().unwrap().to_owned();
    let table = ok(&run(&server, &["apis", "list"], &[]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&api_id), "{table}");

    let key = json(
        &server,
        &[
            "keys", "create", "--api", &api_id, "--scope", "read", "--name", "ci",
        ],
        &[],
    );
    let (id, secret) = (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    );
    let table = ok(&run(&server, &["keys", "list", "--api", &api_id], &[]));
    assert!(table.contains(&id) && table.contains("read"), "{table}");
    assert!(!table.contains(&secret), "lists never show the secret");
    assert_eq!(json(&server, &["keys", "get", &id], &[])["name"], "ci");

    // The key to verify comes from the environment, never from the arguments.
    let v = json(
        &server,
        &["keys", "verify", "--scope", "read"],
        &[("TESSERA_KEY", &secret)],
    );
    assert_eq!(v["code"], "VALID");
    let out = run(
        &server,
        &["keys", "verify", "--scope", "write"],
        &[("TESSERA_KEY", &secret)],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("INSUFFICIENT_SCOPES"), "{table}");
    assert_eq!(out.status.code(), Some(3), "a verdict other than VALID");

    let rotated = json(&server, &["keys", "rotate", &id, "--grace", "60"], &[]);
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    let revoked = ok(&run(&server, &["keys", "revoke", &new_id], &[]));
    assert!(revoked.contains("revoked"), "{revoked}");

    // Certificates: from a CSR, and generated with the key written to a file.
    let dir = tempfile::tempdir().unwrap();
    let csr = dir.path().join("svc.csr");
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(
        &csr,
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap(),
    )
    .unwrap();
    let cert_out = dir.path().join("svc.pem");
    let issued = json(
        &server,
        &[
            "certs",
            "issue",
            "--identity",
            "svc",
            "--csr",
            csr.to_str().unwrap(),
            "--cert-out",
            cert_out.to_str().unwrap(),
        ],
        &[],
    );
    let serial = issued["serial"].as_str().unwrap().to_owned();
    let table = ok(&run(&server, &["certs", "list", "--identity", "svc"], &[]));
    assert!(table.contains(&serial), "{table}");
    let verdict = ok(&run(
        &server,
        &["certs", "verify", cert_out.to_str().unwrap()],
        &[],
    ));
    assert!(verdict.contains("VALID"), "{verdict}");
    let key_out = dir.path().join("gen.key");
    let generated = ok(&run(
        &server,
        &[
            "certs",
            "issue",
            "--identity",
            "gen",
            "--generate",
            "--key-out",
            key_out.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        !generated.contains("PRIVATE KEY"),
        "the key goes to its file only"
    );
    assert!(
        std::fs::read_to_string(&key_out)
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_eq!(
        std::fs::metadata(&key_out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = json(&server, &["certs", "revoke", &serial], &[]);
    assert_eq!(r["state"], "revoked");

    // Errors: the server's message, a non-zero exit.
    let out = run(&server, &["keys", "get", "key_00000000000000000"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &server,
        &[
            "apis",
            "create",
            "--name",
            "x",
            "--purpose",
            "p",
            "--owner",
            "o",
            "--risk",
            "extreme",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("risk"));
}

/// `tessera admin-cert` on a stopped server's directories, with extra arguments.
fn admin_cert(home: &Home, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("admin-cert")
        .arg("--data")
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .args(extra)
        .env_remove("TESSERA_MASTER_KEY")
        .output_timed()
        .unwrap();
    ok(&out)
}

/// A copy of the current admin credential, kept aside as `name`.
fn keep_aside(home: &Home, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = home.tmp.path().join(format!("{name}.pem"));
    let key = home.tmp.path().join(format!("{name}.key"));
    std::fs::copy(home.certs().join("admin.pem"), &cert).unwrap();
    std::fs::copy(home.certs().join("admin.key"), &key).unwrap();
    (cert, key)
}

/// Whether a credential gets a 200 from whoami on a new connection.
async fn works(server: &Server, cert: &std::path::Path, key: &std::path::Path) -> bool {
    let client = server.client(cert, key);
    match client.http.get(server.url("/v1/whoami")).send().await {
        Ok(r) => r.status() == 200,
        Err(_) => false,
    }
}

#[tokio::test]
async fn admin_cert_revokes_the_admin_credentials_it_replaces() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let lost = keep_aside(&home, "lost");
    let lost_serial = server.admin().get("/v1/whoami").await.expect(200)["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    server.terminate();

    let out = admin_cert(&home, &[]);
    let mut server = Server::start(&home);
    assert!(
        !works(&server, &lost.0, &lost.1).await,
        "the lost credential"
    );
    assert!(out.contains(&lost_serial), "{out}");
    let admin = server.admin();
    let me = admin.get("/v1/whoami").await.expect(200);
    assert_ne!(me["serial"], lost_serial.as_str());
    let rec = admin
        .get(&format!("/v1/certs/{lost_serial}"))
        .await
        .expect(200);
    assert_eq!(rec["state"], "revoked", "{rec}");
    assert_eq!(rec["revocation_reason"], "superseded", "{rec}");
    let crl = std::fs::read_to_string(home.certs().join("crl.pem")).unwrap();
    let crl_path = home.tmp.path().join("check.crl");
    std::fs::write(&crl_path, crl).unwrap();
    let text = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl_path)
        .output_timed()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&lost_serial.to_uppercase()),
        "the CRL lists it"
    );

    // --keep-old leaves the previous one working.
    let previous = keep_aside(&home, "previous");
    server.terminate();
    admin_cert(&home, &["--keep-old"]);
    let server = Server::start(&home);
    assert!(works(&server, &previous.0, &previous.1).await);
    server.admin().get("/v1/whoami").await.expect(200);
    assert!(!works(&server, &lost.0, &lost.1).await);
}

/// Issue 20: every file the command line writes may be given as a bare name, relative to the
/// working directory. The atomic writer synced the bare name's parent, the empty path, and
/// failed after writing (after spending the token, for `agent bootstrap`).
#[tokio::test]
async fn issue_20_output_files_given_as_bare_names() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let cwd = tempfile::tempdir().unwrap();
    let here = |args: &[&str], env: &[(&str, &str)]| {
        ok(&command(&server, args, env)
            .current_dir(cwd.path())
            .output_timed()
            .unwrap())
    };
    let file = |name: &str| std::fs::read_to_string(cwd.path().join(name)).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(cwd.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };

    here(&["backup", "--out", "today.backup"], &[]);
    assert!(
        std::fs::read(cwd.path().join("today.backup"))
            .unwrap()
            .starts_with(b"TESSERA-BACKUP")
    );
    assert_eq!(mode("today.backup"), 0o600);

    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    std::fs::write(cwd.path().join("svc.csr"), csr.pem().unwrap()).unwrap();
    here(
        &[
            "certs",
            "issue",
            "--identity",
            "svc",
            "--csr",
            "svc.csr",
            "--cert-out",
            "svc.pem",
        ],
        &[],
    );
    assert_eq!(file("svc.pem").matches("BEGIN CERTIFICATE").count(), 2);

    here(
        &[
            "certs",
            "issue",
            "--identity",
            "gen",
            "--generate",
            "--key-out",
            "gen.key",
            "--cert-out",
            "gen.pem",
        ],
        &[],
    );
    assert!(file("gen.key").contains("PRIVATE KEY"));
    assert_eq!(mode("gen.key"), 0o600);
    assert_eq!(file("gen.pem").matches("BEGIN CERTIFICATE").count(), 2);

    // The agent's renewal writes both files (with --rekey).
    let before = file("gen.pem");
    here(
        &[
            "agent",
            "--once",
            "--rekey",
            "--renew-at",
            "0.0001",
            "--cert",
            "gen.pem",
            "--key",
            "gen.key",
        ],
        &[],
    );
    assert_ne!(file("gen.pem"), before, "renewed");
    let me = server
        .client(&cwd.path().join("gen.pem"), &cwd.path().join("gen.key"))
        .get("/v1/whoami")
        .await
        .expect(200);
    assert!(
        me["identity"].as_str().unwrap().ends_with("/svc/gen"),
        "{me}"
    );

    let token = server
        .admin()
        .post("/v1/enrolment-tokens", json!({"identity": "boot"}))
        .await
        .expect(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    here(
        &[
            "agent",
            "bootstrap",
            "--identity",
            "boot",
            "--cert",
            "boot.pem",
            "--key",
            "boot.key",
        ],
        &[("TESSERA_ENROL_TOKEN", &token)],
    );
    assert!(file("boot.key").contains("PRIVATE KEY"));
    assert_eq!(mode("boot.key"), 0o600);
    assert_eq!(file("boot.pem").matches("BEGIN CERTIFICATE").count(), 2);

    // Offline, with the server stopped.
    server.terminate();
    let out = Command::new(BIN)
        .args([
            "bench-preload",
            "--keys",
            "2",
            "--out",
            "keys.txt",
            "--data",
        ])
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .env_remove("TESSERA_MASTER_KEY")
        .current_dir(cwd.path())
        .output_timed()
        .unwrap();
    ok(&out);
    assert_eq!(file("keys.txt").lines().count(), 2);

    // Nothing else was left behind (no temp files).
    let mut names: Vec<String> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "boot.key",
            "boot.pem",
            "gen.key",
            "gen.pem",
            "keys.txt",
            "svc.csr",
            "svc.pem",
            "today.backup"
        ]
    );
}

/// Issue 20: a script can tell VALID from any other verdict, and a verdict from a failure to
/// reach one, by the exit code alone: 0 VALID, 3 another verdict, 1 no verdict, 2 usage.
#[tokio::test]
async fn issue_20_exit_codes_tell_a_verdict() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let code = |args: &[&str], env: &[(&str, &str)]| {
        let out = run(&server, args, env);
        (
            out.status.code().unwrap(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let api = admin.create_api("codes").await;
    let (key_id, key) = admin.issue(&api, json!({"scopes": ["read"]})).await;
    let verify_key = |scope: &str| {
        code(
            &["keys", "verify", "--scope", scope],
            &[("TESSERA_KEY", &key)],
        )
    };
    assert_eq!(verify_key("read").0, 0);
    let (c, out) = verify_key("write");
    assert_eq!((c, out.contains("INSUFFICIENT_SCOPES")), (3, true), "{out}");
    let (c, out) = code(
        &["keys", "verify"],
        &[("TESSERA_KEY", "tsk_not_a_key_at_all")],
    );
    assert_eq!(c, 3, "NOT_FOUND is a verdict: {out}");
    admin
        .post(&format!("/v1/keys/{key_id}/revoke"), json!({}))
        .await
        .expect(200);
    let (c, out) = verify_key("read");
    assert_eq!((c, out.contains("REVOKED")), (3, true), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_key, serial) =
        crate::helpers::identity_files(&admin, dir.path(), "default", "coded").await;
    let cert_arg = cert.to_str().unwrap();
    assert_eq!(code(&["certs", "verify", cert_arg], &[]).0, 0);

    // `agent --once` with a certificate that is not due: done, and it said so.
    let agent = |extra: &[&str]| {
        let mut args = vec![
            "agent",
            "--cert",
            cert_arg,
            "--key",
            cert_key.to_str().unwrap(),
        ];
        args.extend(extra);
        code(&args, &[])
    };
    let (c, out) = agent(&["--once"]);
    assert_eq!((c, out.contains("not due")), (0, true), "{out}");
    // Not due and the server cannot be asked: nothing needed it yet, so a warning, not a
    // failed cron job.
    let mut args = vec!["agent", "--once", "--cert", cert_arg, "--key"];
    args.push(cert_key.to_str().unwrap());
    let (c, out) = code(&args, &[("TESSERA_ADDR", "https://localhost:1")]);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("could not check") && out.contains("not due"),
        "{out}"
    );

    admin
        .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    let (c, out) = code(&["certs", "verify", cert_arg], &[]);
    assert_eq!((c, out.contains("REVOKED")), (3, true), "{out}");
    // Revoked but not due: the agent finds out at once (with --once, and when it starts),
    // instead of "not due yet" and 0, or sleeping until a renewal that will fail.
    for extra in [&["--once"][..], &[][..]] {
        let (c, out) = agent(extra);
        assert_eq!(c, 3, "{out}");
        assert!(out.contains("revoked"), "{out}");
        assert!(!out.contains("not due"), "{out}");
    }

    // No verdict: the command line is wrong, or the server cannot be reached.
    assert_eq!(code(&["certs", "verify"], &[]).0, 2);
    let nowhere = [("TESSERA_ADDR", "https://localhost:1")];
    let (c, out) = code(&["keys", "verify"], &[nowhere[0], ("TESSERA_KEY", &key)]);
    assert_eq!(c, 1, "{out}");
    let (c, out) = code(&["certs", "verify", cert_arg], &nowhere);
    assert_eq!(c, 1, "{out}");
}

/// Issue 20: logs carry ANSI colour codes only for a person at a terminal, and never with
/// `NO_COLOR` set; a log file, a pipe or journald gets plain text.
#[tokio::test]
async fn issue_20_logs_have_colour_only_at_a_terminal() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = crate::helpers::identity_files(&admin, dir.path(), "default", "tty").await;
    server.anonymous().get("/v1/apis").await.expect(401);
    let log = std::fs::read_to_string(home.log()).unwrap();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "the server's log file: {log:?}");

    let agent = format!(
        "{BIN} agent --once --cert {} --key {}",
        cert.display(),
        key.display()
    );
    let out = run(
        &server,
        &[
            "agent",
            "--once",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let piped = String::from_utf8_lossy(&out.stderr);
    assert!(piped.contains("not due"), "{piped}");
    assert!(!piped.contains('\x1b'), "a pipe: {piped:?}");
    // At a terminal (`script` runs it on a pseudo-terminal): colours, unless NO_COLOR.
    let at_a_terminal = |no_color: &[(&str, &str)]| {
        let script = Command::new("script");
        let mut c = as_admin(script, &server, &["-qec", &agent, "/dev/null"], no_color);
        let out = c.stdin(std::process::Stdio::null()).output_timed().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = at_a_terminal(&[("NO_COLOR", "")]);
    assert!(tty.contains("not due") && tty.contains('\x1b'), "{tty:?}");
    let tty = at_a_terminal(&[("NO_COLOR", "1")]);
    assert!(tty.contains("not due") && !tty.contains('\x1b'), "{tty:?}");
}

/// Issue 20: every administrative operation from the CLI alone, through the public API with
/// the caller's credential; a failure names the operation; times are RFC 3339.
#[tokio::test]
async fn issue_20_the_cli_covers_every_operation() {
    let home = Home::new();
    let mut server = Server::start(&home);
    let j = |args: &[&str]| json(&server, args, &[]);
    let fails = |args: &[&str], env: &[(&str, &str)]| {
        let o = run(&server, args, env);
        assert_eq!(o.status.code(), Some(1), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    // Tenants, roles, bindings.
    assert_eq!(j(&["tenants", "create", "acme"])["name"], "acme");
    assert!(ok(&run(&server, &["tenants", "list"], &[])).contains("acme"));
    assert_eq!(j(&["tenants", "get", "acme"])["name"], "acme");
    let role = j(&[
        "roles",
        "create",
        "--tenant",
        "acme",
        "reader",
        "--permission",
        "apis:read",
        "--permission",
        "keys:read",
    ]);
    assert_eq!(role["permissions"], json!(["apis:read", "keys:read"]));
    j(&[
        "roles",
        "set",
        "--tenant",
        "acme",
        "reader",
        "--permission",
        "apis:read",
    ]);
    assert_eq!(
        j(&["roles", "get", "--tenant", "acme", "reader"])["permissions"],
        json!(["apis:read"])
    );
    let roles = ok(&run(&server, &["roles", "list", "--tenant", "acme"], &[]));
    assert!(
        roles.contains("reader") && roles.contains("tenant-admin"),
        "{roles}"
    );
    j(&[
        "bindings", "set", "--tenant", "acme", "svc", "--role", "reader", "--role", "verifier",
    ]);
    assert_eq!(
        j(&["bindings", "get", "--tenant", "acme", "svc"])["roles"],
        json!(["reader", "verifier"])
    );
    assert!(
        ok(&run(
            &server,
            &["bindings", "list", "--tenant", "acme"],
            &[]
        ))
        .contains("svc")
    );
    ok(&run(
        &server,
        &["bindings", "delete", "--tenant", "acme", "svc"],
        &[],
    ));
    ok(&run(
        &server,
        &["roles", "delete", "--tenant", "acme", "reader"],
        &[],
    ));
    let err = fails(&["roles", "get", "--tenant", "acme", "reader"], &[]);
    assert!(err.contains("cannot read the role"), "{err}");

    // Root keys: created, used as the only credential, rotated, revoked.
    let rk = j(&[
        "root-keys",
        "create",
        "--tenant",
        "acme",
        "--name",
        "portal",
        "--permission",
        "apis:read",
        "--permission",
        "apis:write",
        "--permission",
        "keys:create",
    ]);
    let (rk_id, rk_secret) = (rk["id"].as_str().unwrap(), rk["key"].as_str().unwrap());
    assert!(ok(&run(&server, &["root-keys", "list"], &[])).contains(rk_id));
    assert_eq!(j(&["root-keys", "get", rk_id])["name"], "portal");
    assert!(
        j(&["root-keys", "get", rk_id])["key"].is_null(),
        "the secret once only"
    );
    let as_portal = |args: &[&str]| {
        let mut c = command(&server, args, &[]);
        c.env_remove("TESSERA_CLIENT_CERT")
            .env_remove("TESSERA_CLIENT_KEY")
            .env("TESSERA_TOKEN", rk_secret)
            .env("TESSERA_CACERT", server.certs.join("ca.pem"));
        c.output_timed().unwrap()
    };
    let api: Value = serde_json::from_str(&ok(&as_portal(&[
        "apis",
        "create",
        "--name",
        "orders",
        "--purpose",
        "Orders",
        "--owner",
        "team",
        "--risk",
        "low",
        "--output",
        "json",
    ])))
    .unwrap();
    assert_eq!(api["tenant"], "acme", "the root key's tenant");
    let api = api["id"].as_str().unwrap().to_owned();
    let rotated = j(&["root-keys", "rotate", rk_id]);
    let new_rk = rotated["id"].as_str().unwrap().to_owned();
    j(&["root-keys", "revoke", &new_rk]);
    assert_eq!(j(&["root-keys", "get", &new_rk])["state"], "revoked");

    // APIs and keys.
    assert_eq!(j(&["apis", "get", &api])["name"], "orders");
    let changed = j(&[
        "apis",
        "update",
        &api,
        "--owner",
        "team-orders",
        "--review-by",
        "2031-01-31",
    ]);
    assert_eq!(changed["owner"], "team-orders");
    assert_eq!(changed["review_by"], "2031-01-31");
    let key = j(&[
        "keys",
        "create",
        "--api",
        &api,
        "--scope",
        "orders:read",
        "--metadata",
        "customer=acme",
        "--metadata",
        "plan=a=b",
    ]);
    assert_eq!(key["metadata"], json!({"customer": "acme", "plan": "a=b"}));
    let (kid, secret) = (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    );
    let verify = |scope: &str| {
        run(
            &server,
            &["keys", "verify", "--scope", scope],
            &[("TESSERA_KEY", &secret)],
        )
        .status
        .code()
    };
    assert_eq!(verify("orders:write"), Some(3));
    let upd = j(&[
        "keys",
        "update",
        &kid,
        "--scope",
        "orders:read",
        "--scope",
        "orders:write",
        "--disable",
        "--remaining",
        "5",
        "--name",
        "renamed",
    ]);
    assert_eq!(
        (
            upd["enabled"].clone(),
            upd["remaining"].clone(),
            upd["name"].clone()
        ),
        (json!(false), json!(5), json!("renamed"))
    );
    assert_eq!(verify("orders:write"), Some(3), "disabled");
    j(&["keys", "update", &kid, "--enable", "--unlimited"]);
    assert_eq!(verify("orders:write"), Some(0));
    assert!(j(&["keys", "get", &kid])["remaining"].is_null());
    // RFC 3339 times in the table, not unix seconds.
    let table = ok(&run(&server, &["keys", "get", &kid], &[]));
    let created = table
        .lines()
        .find(|l| l.starts_with("created_at"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        created.len() >= 20 && created.contains('T') && created.ends_with('Z'),
        "{table}"
    );
    let err = fails(&["apis", "delete", &api], &[]);
    assert!(err.contains("cannot delete the API"), "{err}");
    j(&["keys", "revoke", &kid]);
    let err = fails(&["keys", "revoke", "key_doesnotexist000000"], &[]);
    assert!(err.contains("cannot revoke the key"), "{err}");

    // Certificates: an enrolment token, the agent's bootstrap, read, renew with itself.
    let dir = tempfile::tempdir().unwrap();
    let token = j(&["certs", "token", "--identity", "edge", "--ttl", "600"]);
    let token = token["token"].as_str().unwrap().to_owned();
    let boot = command(
        &server,
        &[
            "agent",
            "bootstrap",
            "--identity",
            "edge",
            "--cert",
            "edge.pem",
            "--key",
            "edge.key",
        ],
        &[("TESSERA_ENROL_TOKEN", &token)],
    )
    .env("TESSERA_ADDR", server.url(""))
    .current_dir(dir.path())
    .output_timed()
    .unwrap();
    let said = ok(&boot);
    assert!(
        said.contains("valid until 20"),
        "RFC 3339, not unix: {said}"
    );
    let again = command(
        &server,
        &[
            "agent",
            "bootstrap",
            "--identity",
            "edge",
            "--cert",
            "e2.pem",
            "--key",
            "e2.key",
        ],
        &[("TESSERA_ENROL_TOKEN", &token)],
    )
    .current_dir(dir.path())
    .output_timed()
    .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("enrolment token") && !err.contains("renew"),
        "a reused token is named as such: {err}"
    );
    let serial = {
        let list = j(&["certs", "list", "--identity", "edge"]);
        list["items"][0]["serial"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        j(&["certs", "get", &serial])["identity"],
        "spiffe://tessera.local/tenant/default/svc/edge"
    );
    let renewed = command(
        &server,
        &[
            "certs",
            "renew",
            "--cert",
            "edge.pem",
            "--key",
            "edge.key",
            "--cert-out",
            "edge2.pem",
            "--output",
            "json",
        ],
        &[],
    )
    .current_dir(dir.path())
    .output_timed()
    .unwrap();
    let renewed: Value = serde_json::from_str(&ok(&renewed)).unwrap();
    assert_ne!(renewed["serial"].as_str().unwrap(), serial);
    let pem = std::fs::read_to_string(dir.path().join("edge2.pem")).unwrap();
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and chain"
    );

    // PKI, audit, sys.
    let ca = dir.path().join("ca-copy.pem");
    ok(&run(
        &server,
        &["pki", "ca", "--out", ca.to_str().unwrap()],
        &[],
    ));
    assert!(
        std::fs::read_to_string(&ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let crl = ok(&run(&server, &["pki", "crl"], &[]));
    assert!(crl.contains("BEGIN X509 CRL"), "{crl}");
    let rotation = j(&["pki", "rotate"]);
    assert!(rotation["issuing"].as_str().unwrap().starts_with("ca_"));
    let audit = j(&["audit", "list", "--limit", "100"]);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.iter().any(|a| a.contains("root-keys")),
        "{actions:?}"
    );
    assert_eq!(j(&["audit", "check"])["valid"], true);
    let cp = dir.path().join("checkpoint.json");
    ok(&run(
        &server,
        &[
            "audit",
            "checkpoint",
            "--fresh",
            "--out",
            cp.to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(j(&["sys", "status"])["sealed"], false);
    let before = j(&["sys", "status"])["keyring"]["current"]
        .as_u64()
        .unwrap();
    let after = j(&["sys", "rotate-keyring"])["current"].as_u64().unwrap();
    assert_eq!(after, before + 1);
    j(&["sys", "seal"]);
    let err = fails(&["apis", "list"], &[]);
    assert!(err.contains("cannot list APIs"), "{err}");

    // The checkpoint saved online verifies the log offline.
    server.terminate();
    let o = Command::new(BIN)
        .args(["audit", "verify", "--checkpoint", cp.to_str().unwrap()])
        .arg("--data")
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .env_remove("TESSERA_MASTER_KEY")
        .output_timed()
        .unwrap();
    ok(&o);

    // Completions for the three shells name the verbs.
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output_timed()
            .unwrap();
        let script = ok(&o);
        assert!(
            script.contains("root-keys") && script.contains("rotate-keyring"),
            "{shell}"
        );
    }
}

/// Issue 20: `tessera unseal` says where the unsealing stands in words.
#[tokio::test]
async fn issue_20_unseal_reports_progress_in_words() {
    let home = Home::new();
    let init = Command::new(BIN)
        .args(["init", "--shares", "3", "--threshold", "2"])
        .arg("--data")
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .output_timed()
        .unwrap();
    let shares: Vec<String> = ok(&init)
        .lines()
        .filter_map(|l| l.strip_prefix("share-")?.split_once(": "))
        .map(|(_, share)| share.to_owned())
        .collect();
    assert_eq!(shares.len(), 3, "{shares:?}");
    let server = Server::start(&home);
    let unseal = |share: &str| {
        use std::io::Write;
        let mut c = Command::new(BIN)
            .args(["unseal", "--server", &server.url(""), "--ca"])
            .arg(home.certs().join("ca.pem"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{share}\n").as_bytes())
            .unwrap();
        ok(&wait_output_within(c, "tessera unseal", CHILD_LIMIT).unwrap())
    };
    let first = unseal(&shares[0]);
    assert!(
        first.contains("1 of 2") && first.contains("sealed"),
        "{first}"
    );
    assert!(!first.contains('{'), "words, not JSON: {first}");
    let second = unseal(&shares[2]);
    assert!(second.contains("unsealed"), "{second}");
}

/// A reader that goes away (`tessera apis list | head -0`) ends the CLI quietly with 141, the
/// status of a tool killed by SIGPIPE: the read end of its standard output is closed before
/// it writes, so every write meets a broken pipe. (`println!` panics there: exit 101 and
/// "failed printing to stdout".)
#[tokio::test]
async fn a_closed_pipe_ends_a_verb_quietly() {
    let home = Home::new();
    let server = Server::start(&home);
    server.admin().create_api("piped").await;
    for format in ["table", "json"] {
        let mut child = command(&server, &["apis", "list", "--output", format], &[])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = wait_output_within(child, "tessera apis list", CHILD_LIMIT).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(141) && stderr.is_empty(),
            "{format}: {:?}: {stderr}",
            out.status
        );
    }
}
