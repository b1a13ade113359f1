//! Forward auth: `/v1/auth/check` called directly the way Envoy and Traefik call it, and a real
//! nginx (Debian's) in front of a small upstream with the shipped `docs/gateway/nginx.conf`.

use crate::proc::Timed;
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Api, Home, Server, bind, client_config, identity_files, service};

/// A request to the check endpoint with the end client's headers.
async fn check(gw: &Api, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = gw.http.get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// A request through the gateway, with a header a client might forge.
async fn call(client: &Api, key: Option<&str>) -> crate::helpers::Resp {
    let mut req = client.http.get(client.url("/orders"));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    // A client cannot claim an identity: nginx replaces these headers.
    req = req
        .header("x-tessera-key-id", "forged")
        .header("x-tessera-api-id", "forged")
        .header("x-tessera-identity", "forged");
    client.send(req).await
}

/// URL-escaping as nginx's `$ssl_client_escaped_cert` does it.
fn escaped(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn forward_auth_answers_with_a_status_and_identity_headers() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("orders").await;
    let gw = service(&server, &admin, dir.path(), "default", "gw", &["verifier"]).await;
    let (key_id, key) = admin.issue(&api, json!({"scopes": ["read"]})).await;
    let (_, write_only) = admin.issue(&api, json!({"scopes": ["write"]})).await;
    let (_, limited) = admin
        .issue(
            &api,
            json!({"ratelimit": {"limit": 1, "window_seconds": 60}}),
        )
        .await;

    // Allowed: 204, the identity in headers, no body.
    let r = check(
        &gw,
        &format!("/v1/auth/check?api_id={api}&scopes=read"),
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-tessera-key-id"], key_id.as_str());
    assert_eq!(r.headers()["x-tessera-api-id"], api.as_str());
    assert_eq!(r.headers()["x-tessera-tenant"], "default");
    assert_eq!(r.headers()["x-tessera-scopes"], "read");
    assert!(r.bytes().await.unwrap().is_empty());

    // Envoy's form: the original path appended, any method, settings from headers.
    let r = gw
        .http
        .post(gw.url("/v1/auth/check/orders/42?limit=5"))
        .header("x-api-key", &key)
        .header("x-tessera-api-id", &api)
        .header("x-tessera-scopes", "read")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Refusals carry nothing that says why.
    for (headers, query, status) in [
        (vec![], "", 401),
        (vec![("x-api-key", "tsk_garbage")], "", 401),
        (
            vec![("x-api-key", write_only.as_str())],
            "?scopes=read",
            403,
        ),
        (vec![("x-api-key", key.as_str())], "?scopes=admin", 403),
        (
            vec![("x-api-key", key.as_str())],
            "?api_id=api_0000000000000000000000",
            401,
        ),
    ] {
        let r = check(&gw, &format!("/v1/auth/check{query}"), &headers).await;
        assert_eq!(r.status(), status, "{headers:?} {query}");
        let told: Vec<_> = r
            .headers()
            .keys()
            .filter(|h| h.as_str().starts_with("x-tessera-"))
            .cloned()
            .collect();
        assert!(told.is_empty(), "{told:?}");
        assert!(r.bytes().await.unwrap().is_empty());
    }
    // The rate limit: 429 with Retry-After.
    assert_eq!(
        check(&gw, "/v1/auth/check", &[("x-api-key", &limited)])
            .await
            .status(),
        204
    );
    let r = check(&gw, "/v1/auth/check", &[("x-api-key", &limited)]).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    // Never the key in a URL; bad settings are the gateway's 400.
    let r = check(&gw, &format!("/v1/auth/check?key={key}"), &[]).await;
    assert_eq!(r.status(), 400);
    let r = check(
        &gw,
        "/v1/auth/check?scopes=no%20spaces",
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(r.status(), 400);

    // A forwarded client certificate: its identity; a key bound to it needs it.
    let (cert, _, _) = identity_files(&admin, dir.path(), "default", "web").await;
    let pem = fs::read_to_string(&cert).unwrap();
    let web = "spiffe://tessera.local/tenant/default/svc/web";
    let r = check(&gw, "/v1/auth/check", &[("x-client-cert", &escaped(&pem))]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-tessera-identity"], web);
    let (_, bound) = admin.issue(&api, json!({"bound_to": web})).await;
    let r = check(&gw, "/v1/auth/check", &[("x-api-key", &bound)]).await;
    assert_eq!(r.status(), 401, "a bound key without its certificate");
    let r = check(
        &gw,
        "/v1/auth/check",
        &[("x-api-key", &bound), ("x-client-cert", &escaped(&pem))],
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = check(&gw, "/v1/auth/check", &[("x-client-cert", "garbage")]).await;
    assert_eq!(r.status(), 401);

    // A certificate of one tenant and a key of another are not one client (the admin, which
    // may verify in every tenant, asks).
    admin
        .post("/v1/tenants", json!({"name": "acme"}))
        .await
        .expect(201);
    let (acme, _, _) = identity_files(&admin, dir.path(), "acme", "shop").await;
    let acme = escaped(&fs::read_to_string(&acme).unwrap());
    let r = check(
        &admin,
        "/v1/auth/check",
        &[("x-api-key", &key), ("x-client-cert", &acme)],
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = check(
        &admin,
        "/v1/auth/check",
        &[("x-api-key", &key), ("x-client-cert", &escaped(&pem))],
    )
    .await;
    assert_eq!(r.status(), 204);

    // The gateway needs keys:verify / certs:verify; without a credential, the uniform 401.
    let nobody = service(&server, &admin, dir.path(), "default", "nobody", &[]).await;
    assert_eq!(
        check(&nobody, "/v1/auth/check", &[("x-api-key", &key)])
            .await
            .status(),
        403
    );
    assert_eq!(
        check(
            &server.anonymous(),
            "/v1/auth/check",
            &[("x-api-key", &key)]
        )
        .await
        .status(),
        401
    );
}

#[tokio::test]
async fn the_key_header_is_configurable() {
    let home = Home::new();
    let server =
        Server::start_with_config(&home, "[forward_auth]\nkey_header = \"X-Partner-Key\"\n");
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("partners").await;
    let gw = service(&server, &admin, dir.path(), "default", "gw", &["verifier"]).await;
    let (_, key) = admin.issue(&api, json!({})).await;
    let r = check(&gw, "/v1/auth/check", &[("x-partner-key", &key)]).await;
    assert_eq!(r.status(), 204);
    let r = check(&gw, "/v1/auth/check", &[("x-api-key", &key)]).await;
    assert_eq!(r.status(), 401);
    drop(server);

    // Authorization can carry the end client's key, never its certificate.
    let home = Home::new();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg({
            let p = home.data().with_file_name("bad.toml");
            fs::write(&p, "[forward_auth]\ncert_header = \"Authorization\"\n").unwrap();
            p
        })
        .arg("--data")
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .output_timed()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forward_auth.cert_header"));
}

/// A refusal of the end client: the status alone, no identity header, no body, nothing that
/// says why (unlike a failure of the gateway's own credential, which is Tessera's uniform 401).
async fn assert_bare(r: reqwest::Response, status: u16, what: &str) {
    assert_eq!(r.status(), status, "{what}");
    let told: Vec<_> = r
        .headers()
        .keys()
        .filter(|h| h.as_str().starts_with("x-tessera-") || *h == "www-authenticate")
        .cloned()
        .collect();
    assert!(told.is_empty(), "{what}: {told:?}");
    assert!(r.bytes().await.unwrap().is_empty(), "{what}");
}

/// A root key of `tenant` holding `permissions`; returns the secret.
async fn root_key(admin: &Api, tenant: &str, permissions: &[&str]) -> String {
    let v = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": tenant, "name": "portal", "permissions": permissions}),
        )
        .await
        .expect(201);
    v["key"].as_str().unwrap().to_owned()
}

/// On forward auth the caller is the connection's certificate. A root key of tenant `beta` in
/// `Authorization` once made the gateway of `acme` speak as `beta`'s verifier and pass `beta`'s
/// clients with `X-Tessera-Tenant: beta`.
#[tokio::test]
async fn forward_auth_is_the_gateways_certificate_never_an_authorization_header() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    for t in ["acme", "beta"] {
        admin
            .post("/v1/tenants", json!({"name": t}))
            .await
            .expect(201);
    }
    let api = admin
        .post(
            "/v1/apis",
            json!({"tenant": "acme", "name": "shop", "purpose": "p", "owner": "o", "risk": "low"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, key) = admin.issue(&api, json!({})).await;
    let gw = service(&server, &admin, dir.path(), "acme", "gw", &["verifier"]).await;
    let beta_root = root_key(&admin, "beta", &["keys:verify", "certs:verify"]).await;
    let bearer = format!("Bearer {beta_root}");
    let (beta_cert, _, _) = identity_files(&admin, dir.path(), "beta", "shop").await;
    let beta_cert = escaped(&fs::read_to_string(&beta_cert).unwrap());

    // acme's key, checked by acme's gateway: the bearer is not read.
    let r = check(
        &gw,
        "/v1/auth/check",
        &[("authorization", &bearer), ("x-api-key", &key)],
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-tessera-tenant"], "acme");

    // beta's certificate: acme's gateway never vouches for beta, whatever Authorization says.
    for path in ["/v1/auth/check", "/v1/auth/check/orders/1"] {
        let r = check(
            &gw,
            path,
            &[("authorization", &bearer), ("x-client-cert", &beta_cert)],
        )
        .await;
        assert_bare(r, 401, path).await;
    }

    // A root key is no gateway credential: without a certificate, Tessera's uniform 401.
    let r = check(
        &server.anonymous(),
        "/v1/auth/check",
        &[("authorization", &bearer), ("x-client-cert", &beta_cert)],
    )
    .await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
}

/// End clients send their own `Authorization` (Basic for the app, OAuth tokens): it is theirs,
/// and a valid key next to it passes.
#[tokio::test]
async fn an_end_clients_own_authorization_header_does_not_refuse_it() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("orders").await;
    let gw = service(&server, &admin, dir.path(), "default", "gw", &["verifier"]).await;
    let (key_id, key) = admin.issue(&api, json!({})).await;
    for auth in ["Basic dXNlcjpwYXNz", "Bearer garbage", "Bearer tsr_garbage"] {
        for path in ["/v1/auth/check", "/v1/auth/check/orders/1"] {
            let r = check(&gw, path, &[("authorization", auth), ("x-api-key", &key)]).await;
            assert_eq!(r.status(), 204, "{auth} {path}");
            assert_eq!(r.headers()["x-tessera-key-id"], key_id.as_str());
        }
    }
    // Without a key the end client has no credential Tessera reads: its bare 401.
    let r = check(
        &gw,
        "/v1/auth/check",
        &[("authorization", "Bearer garbage")],
    )
    .await;
    assert_bare(r, 401, "an Authorization header alone").await;
}

/// Failed-authentication accounting counts only credentials a caller presents for itself: the
/// end client's `Authorization` and the keys a gateway asks about never lock the gateway's
/// address out.
#[tokio::test]
async fn end_client_credentials_never_lock_the_gateway_out() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("orders").await;
    let gw = service(&server, &admin, dir.path(), "default", "gw", &["verifier"]).await;
    let (_, key) = admin.issue(&api, json!({})).await;
    let portal = root_key(&admin, "default", &["keys:read"]).await;

    // Past the lockout threshold (20) with garbage Authorization, then with garbage keys.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = check(
            &gw,
            "/v1/auth/check",
            &[("authorization", "Bearer garbage"), ("x-api-key", &key)],
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = check(&gw, "/v1/auth/check", &[("x-api-key", "tsk_garbage")]).await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");

    // The address is not locked out: the gateway's next check passes, and so does a root key
    // presented from the same address.
    let r = check(&gw, "/v1/auth/check", &[("x-api-key", &key)]).await;
    assert_eq!(r.status(), 204);
    let anon = server.anonymous();
    let r = anon
        .send(
            anon.http
                .get(anon.url("/v1/whoami"))
                .header("authorization", format!("Bearer {portal}")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// An operator may choose `Authorization` as the end client's key header: then it carries the
/// end client's key, bare or as a bearer token, and still never the gateway's credential.
#[tokio::test]
async fn authorization_as_the_key_header_carries_the_end_clients_key() {
    let home = Home::new();
    let server =
        Server::start_with_config(&home, "[forward_auth]\nkey_header = \"Authorization\"\n");
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let api = admin.create_api("partners").await;
    let gw = service(&server, &admin, dir.path(), "default", "gw", &["verifier"]).await;
    let (key_id, key) = admin.issue(&api, json!({})).await;
    for value in [
        format!("Bearer {key}"),
        format!("bearer {key}"),
        key.clone(),
    ] {
        let r = check(&gw, "/v1/auth/check", &[("authorization", &value)]).await;
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()["x-tessera-key-id"], key_id.as_str());
    }
    // X-Api-Key is not read any more; other schemes are not keys.
    let r = check(&gw, "/v1/auth/check", &[("x-api-key", &key)]).await;
    assert_bare(r, 401, "x-api-key").await;
    let r = check(
        &gw,
        "/v1/auth/check",
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_bare(r, 401, "basic").await;
    // Refused keys there are the end client's: they never lock the gateway out.
    for i in 0..25 {
        let r = check(
            &gw,
            "/v1/auth/check",
            &[("authorization", "Bearer tsk_garbage")],
        )
        .await;
        assert_bare(r, 401, &format!("garbage {i}")).await;
    }
    let r = check(
        &gw,
        "/v1/auth/check",
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(r.status(), 204);
}

/// nginx, started in its own process group and killed with it.
pub(crate) struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx; `None` if it exits at once (its port was taken meanwhile: the caller
    /// tries another).
    pub(crate) fn start(dir: &Path, conf: &str, addr: SocketAddr) -> Option<Self> {
        use std::os::unix::process::CommandExt;
        let path = dir.join("nginx.conf");
        fs::write(&path, conf).unwrap();
        let _ = fs::remove_file(dir.join("nginx.pid"));
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is not installed (.ci/run installs nginx-light)");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("nginx.stderr")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut n = Self {
            child,
            addr,
            dir: dir.to_owned(),
        };
        for _ in 0..100 {
            if matches!(n.child.try_wait(), Ok(Some(_))) {
                eprintln!("nginx exited at start: {}", n.log());
                return None;
            }
            // Listening once it has written its pid file (after binding).
            if dir.join("nginx.pid").exists() && std::net::TcpStream::connect(addr).is_ok() {
                return Some(n);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nginx did not start: {}", n.log());
    }

    fn log(&self) -> String {
        ["nginx.stderr", "error.log"]
            .iter()
            .map(|f| fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }

    /// Re-reads the configuration and its files (new CRLs), as `nginx -s reload` does.
    async fn reload(&self) {
        Command::new("kill")
            .args(["-s", "HUP", &self.child.id().to_string()])
            .status_timed()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM to the master stops its workers too; then KILL its whole group whatever
        // happened, so no worker outlives the test (`--` first: without it, `kill` reads a
        // negative pid as an option).
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-s", "TERM", &pid])
            .status_timed();
        for _ in 0..60 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stderr(std::process::Stdio::null())
            .status_timed();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream: answers every request with the `x-tessera-*`, `x-api-key` and `authorization`
/// headers it got.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let seen: String = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(name, value)| (name.to_lowercase(), value.trim()))
                        .filter(|(n, _)| {
                            n.starts_with("x-tessera-") || n == "x-api-key" || n == "authorization"
                        })
                        .map(|(n, v)| format!("{n}: {v}\n"))
                        .collect();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{seen}",
                        seen.len()
                    );
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTPS client of the gateway, optionally with a client certificate; a new one opens new
/// connections (a certificate is checked at the handshake).
fn gateway_client(home: &Home, nginx: &Nginx, identity: Option<(&Path, &Path)>) -> Api {
    Api::with_base(
        format!("https://localhost:{}", nginx.addr.port()),
        client_config(&home.certs().join("ca.pem"), identity),
    )
}

async fn fetch_crls(admin: &Api, dir: &Path) {
    let crls = admin
        .get("/v1/pki/crl?issuer=all&format=pem")
        .await
        .expect_text(200);
    assert!(
        crls.matches("BEGIN X509 CRL").count() >= 2,
        "root and issuing CA"
    );
    fs::write(dir.join("crls.pem"), crls).unwrap();
}

/// The shipped `docs/gateway/nginx.conf` in front of an upstream, with the gateway's files in
/// `dir` made the way docs/gateway.md says (identity `nginx` with role `verifier` in `default`).
/// Only the paths, the ports and API_ID are replaced.
async fn shipped_nginx(home: &Home, server: &Server, admin: &Api, dir: &Path, api: &str) -> Nginx {
    bind(admin, "default", "nginx", &["verifier"]).await;
    let (gw_cert, gw_key, _) = identity_files(admin, dir, "default", "nginx").await;
    fs::rename(gw_cert, dir.join("gateway.pem")).unwrap();
    fs::rename(gw_key, dir.join("gateway.key")).unwrap();
    let ca = admin.get("/v1/pki/ca").await.expect_text(200);
    fs::write(dir.join("ca.pem"), ca).unwrap();
    fetch_crls(admin, dir).await;
    fs::copy(home.certs().join("server.pem"), dir.join("server.pem")).unwrap();
    fs::copy(home.certs().join("server.key"), dir.join("server.key")).unwrap();

    let app = upstream().await;
    let shipped = include_str!("../../docs/gateway/nginx.conf");
    (0..3)
        .find_map(|_| {
            let addr = free_addr();
            let conf = shipped
                .replace("/etc/tessera-gateway/", &format!("{}/", dir.display()))
                .replace(
                    "/run/tessera-gateway.pid",
                    &dir.join("nginx.pid").display().to_string(),
                )
                .replace(
                    "/var/log/nginx/tessera-gateway.error.log",
                    &dir.join("error.log").display().to_string(),
                )
                // Whole directives: a port that starts with another's digits (44311 after
                // 443) must not be rewritten twice.
                .replace(
                    "server 127.0.0.1:8443;",
                    &format!("server {};", server.addr),
                )
                .replace("server 127.0.0.1:8080;", &format!("server {app};"))
                .replace("listen 127.0.0.1:443 ssl;", &format!("listen {addr} ssl;"))
                .replace("API_ID", api);
            Nginx::start(dir, &conf, addr)
        })
        .expect("nginx did not start on three free ports")
}

#[tokio::test]
async fn nginx_in_front_of_an_api_asks_tessera() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let gw_dir = tempfile::tempdir().unwrap();
    let dir = gw_dir.path();
    let api = admin.create_api("orders").await;
    let nginx = shipped_nginx(&home, &server, &admin, dir, &api).await;

    let (key_id, key) = admin.issue(&api, json!({"scopes": ["read"]})).await;
    let (revoked_id, revoked) = admin.issue(&api, json!({"scopes": ["read"]})).await;
    admin
        .post(&format!("/v1/keys/{revoked_id}/revoke"), json!({}))
        .await
        .expect(200);
    let (_, write_only) = admin.issue(&api, json!({"scopes": ["write"]})).await;
    let (_, limited) = admin
        .issue(
            &api,
            json!({"scopes": ["read"], "ratelimit": {"limit": 1, "window_seconds": 60}}),
        )
        .await;

    let anon = gateway_client(&home, &nginx, None);
    // A valid key: the upstream sees the identity, not the key.
    let r = call(&anon, Some(&key)).await;
    assert_eq!(r.status, 200, "{}", nginx.log());
    assert!(
        r.text.contains(&format!("x-tessera-key-id: {key_id}")),
        "{}",
        r.text
    );
    assert!(r.text.contains("x-tessera-tenant: default"), "{}", r.text);
    assert!(r.text.contains("x-tessera-scopes: read"), "{}", r.text);
    assert!(!r.text.contains("forged"), "{}", r.text);
    assert!(!r.text.contains(&key), "the key never reaches the upstream");

    assert_eq!(call(&anon, None).await.status, 401);
    assert_eq!(call(&anon, Some(&revoked)).await.status, 401);
    assert_eq!(call(&anon, Some(&write_only)).await.status, 403);
    assert_eq!(call(&anon, Some(&limited)).await.status, 200);
    let r = call(&anon, Some(&limited)).await;
    assert_eq!(r.status, 429, "{}", nginx.log());
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));

    // A client certificate issued by Tessera: nginx verifies it, then Tessera does.
    let (cert, ckey, serial) = identity_files(&admin, dir, "default", "web").await;
    let web = gateway_client(&home, &nginx, Some((&cert, &ckey)));
    let r = call(&web, None).await;
    assert_eq!(r.status, 200, "{}", nginx.log());
    assert!(
        r.text
            .contains("x-tessera-identity: spiffe://tessera.local/tenant/default/svc/web"),
        "{}",
        r.text
    );

    // Revoked: Tessera refuses it at once; nginx refuses it at the handshake check once its
    // CRLs are refreshed.
    admin
        .post(&format!("/v1/certs/{serial}/revoke"), json!({}))
        .await
        .expect(200);
    let web = gateway_client(&home, &nginx, Some((&cert, &ckey)));
    assert_eq!(call(&web, None).await.status, 401);
    fetch_crls(&admin, dir).await;
    nginx.reload().await;
    let web = gateway_client(&home, &nginx, Some((&cert, &ckey)));
    assert_eq!(call(&web, None).await.status, 400, "{}", nginx.log());
    // A client without a certificate is unaffected.
    assert_eq!(call(&anon, Some(&key)).await.status, 200);
}

/// Through the shipped nginx.conf: an end client's own `Authorization` goes to the app, never to
/// Tessera's check, and is never taken as the gateway's credential. A client of tenant `beta`
/// with its certificate and `Authorization: Bearer <a root key of beta>` once passed the gateway
/// of `default` with `X-Tessera-Tenant: beta`; a client sending Basic credentials for the app was
/// refused however valid its key.
#[tokio::test]
async fn nginx_keeps_an_end_clients_authorization_away_from_tessera() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let gw_dir = tempfile::tempdir().unwrap();
    let dir = gw_dir.path();
    let api = admin.create_api("orders").await;
    admin
        .post("/v1/tenants", json!({"name": "beta"}))
        .await
        .expect(201);
    let beta_root = root_key(&admin, "beta", &["keys:verify", "certs:verify"]).await;
    let (beta_cert, beta_key, _) = identity_files(&admin, dir, "beta", "shop").await;
    let (key_id, key) = admin.issue(&api, json!({"scopes": ["read"]})).await;
    let nginx = shipped_nginx(&home, &server, &admin, dir, &api).await;

    // The app's own credential next to a valid key: allowed, and the app still gets it.
    let anon = gateway_client(&home, &nginx, None);
    let r = anon
        .send(
            anon.http
                .get(anon.url("/orders"))
                .header("x-api-key", &key)
                .header("authorization", "Basic dXNlcjpwYXNz"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", nginx.log());
    assert!(
        r.text.contains(&format!("x-tessera-key-id: {key_id}")),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("authorization: Basic dXNlcjpwYXNz"),
        "{}",
        r.text
    );

    // A foreign certificate with a root key of its own tenant: refused, and the upstream never
    // hears of tenant beta.
    let beta = gateway_client(&home, &nginx, Some((&beta_cert, &beta_key)));
    for with_key in [false, true] {
        let mut req = beta
            .http
            .get(beta.url("/orders"))
            .header("authorization", format!("Bearer {beta_root}"));
        if with_key {
            req = req.header("x-api-key", &key);
        }
        let r = beta.send(req).await;
        assert_eq!(r.status, 401, "with key: {with_key}; {}", r.text);
        assert!(!r.text.contains("beta"), "{}", r.text);
    }
}
