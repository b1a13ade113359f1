//! The web console at `/ui/`: its headers and files, and the console itself driven in headless
//! Chromium (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs) through
//! WebDriver against a real server, checked from outside through the API.
//!
//! Screenshots of every page land in `target/console/`; the accessibility check runs axe-core
//! (`.ci/axe` fetches the pinned release from the npm registry into `target/axe-core/`) on
//! each page.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use fantoccini::{
    Client, ClientBuilder, Locator, elements::Element, wd::WebDriverCompatibleCommand,
};
use serde_json::{Value, json};

use crate::{
    access::{bearer, fresh_csr},
    helpers::{Api, Home, Server, client_config},
    proc::Timed,
};

/// How long a step may take to show on the page (generous: CI runs the browser beside the
/// rest of the suite on two cores).
const WAIT: Duration = Duration::from_secs(30);

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
    require-trusted-types-for 'script'; trusted-types 'none'";

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_nothing_else() {
    let home = Home::new();
    let server = Server::start(&home);
    let anon = server.anonymous();
    let no_follow = Api {
        http: reqwest::Client::builder()
            .use_preconfigured_tls(client_config(&server.certs.join("ca.pem"), None))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: server.url(""),
    };
    let redirect = no_follow.get("/ui").await;
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.headers["location"], "/ui/");
    for (path, media, cache) in [
        ("/ui/", "text/html; charset=utf-8", "no-store"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "no-cache"),
        ("/ui/app.css", "text/css; charset=utf-8", "no-cache"),
        ("/ui/icon.svg", "image/svg+xml", "no-cache"),
    ] {
        let r = anon.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.headers["content-type"], media, "{path}");
        assert_eq!(r.headers["content-security-policy"], POLICY, "{path}");
        assert_eq!(r.headers["cache-control"], cache, "{path}");
        assert_eq!(r.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(
            r.headers["cross-origin-opener-policy"], "same-origin",
            "{path}"
        );
        assert_eq!(
            r.headers["cross-origin-resource-policy"], "same-origin",
            "{path}"
        );
    }
    // Only the console's own files: no directory walk, no other method, no back door.
    for path in [
        "/ui/%2e%2e",
        "/ui/%2e%2e%2fcerts%2fca.pem",
        "/ui/admin",
        "/ui/app.js.map",
    ] {
        let r = anon.get(path).await;
        assert!(r.status == 404, "{path}: {}", r.status);
    }
    let r = anon.post("/ui/", json!({})).await;
    assert_eq!(r.status, 405);
    // The API's own answers keep their policy (nothing may run in them).
    let r = server.admin().get("/v1/whoami").await;
    assert_eq!(
        r.headers["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

/// The console's sources hold no inline code for the policy to forbid and never write markup
/// from strings (the policy's Trusted Types refuse it at run time too; this says where).
#[test]
fn the_console_sources_have_no_inline_code_and_no_markup_sinks() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let html = std::fs::read_to_string(ui.join("index.html")).unwrap();
    let lower = html.to_lowercase();
    for (i, _) in lower.match_indices("<script") {
        let tag = &lower[i..i + lower[i..].find('>').unwrap()];
        assert!(tag.contains(" src="), "inline script in index.html: {tag}");
    }
    assert!(!lower.contains("<style"), "inline style in index.html");
    assert!(!lower.contains(" style="), "style attribute in index.html");
    assert!(
        !lower.contains(" on"),
        "event handler attribute in index.html"
    );
    let js = std::fs::read_to_string(ui.join("app.js")).unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "indexedDB",
        "setAttribute(\"style\"",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    // The element builder sets only the properties on its allow-list (and `href` only to the
    // console's own routes): none of them can carry markup or load anything.
    assert!(js.contains("else if (PROPERTIES.has(k)) el[k] = v;"));
    assert!(js.contains("else if (k === \"href\") el.href = safeHref(v);"));
    let start = js.find("const PROPERTIES = new Set([").unwrap();
    let allowed = &js[start..start + js[start..].find("]);").unwrap()];
    for sink in [
        "innerHTML",
        "outerHTML",
        "srcdoc",
        "\"src\"",
        "action",
        "formAction",
        "style",
        "textContent",
        "\"data\"",
        "\"codebase\"",
    ] {
        assert!(!allowed.contains(sink), "the builder may set {sink}");
    }
    assert_eq!(
        js.matches("el[k] = v").count(),
        1,
        "one generic property write only"
    );
}

// ---- Headless Chromium through WebDriver. ---------------------------------------------------

/// `chromedriver` and the Chromium it starts, in a process group of their own that is killed
/// whole when the test ends, however it ends.
struct Browser {
    driver: Child,
    client: Option<Client>,
    profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
    /// Chromium's `$HOME` (its NSS database of client certificates).
    _home: tempfile::TempDir,
    shots: PathBuf,
}

/// The W3C Permissions extension (`POST /session/{id}/permissions`): lets the test read what
/// the console's Copy button put on the clipboard.
#[derive(Debug)]
struct SetPermission(&'static str);

impl WebDriverCompatibleCommand for SetPermission {
    fn endpoint(
        &self,
        base: &reqwest::Url,
        session: Option<&str>,
    ) -> Result<reqwest::Url, url::ParseError> {
        base.join(&format!("session/{}/permissions", session.unwrap_or("")))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (reqwest::Method, Option<String>) {
        let body = json!({"descriptor": {"name": self.0}, "state": "granted"});
        (reqwest::Method::POST, Some(body.to_string()))
    }
}

impl Browser {
    /// Starts Chromium trusting exactly the server's TLS key (its SPKI pinned: real TLS, no
    /// blanket acceptance of bad certificates).
    async fn start(server: &Server, shots: &str) -> Self {
        Self::start_with(server, shots, None).await
    }

    /// Starts Chromium holding the client certificate `certificate` (PEM chain and key
    /// files), which it sends to the server when asked (Chromium on Linux keeps client
    /// certificates in the NSS database under `$HOME/.pki/nssdb`; choosing one without a
    /// dialog is the "auto-select certificate" content setting, set here for the server's
    /// origin only).
    async fn start_holding(server: &Server, shots: &str, certificate: (&Path, &Path)) -> Self {
        Self::start_with(server, shots, Some(certificate)).await
    }

    async fn start_with(server: &Server, shots: &str, certificate: Option<(&Path, &Path)>) -> Self {
        let home = tempfile::tempdir().unwrap();
        let mut prefs = json!({
            "download.default_directory": "",
            "download.prompt_for_download": false,
            "credentials_enable_service": false,
            "profile.password_manager_enabled": false,
        });
        if let Some((cert, key)) = certificate {
            nss_holding(home.path(), cert, key);
            let origin = format!("https://localhost:{},*", server.addr.port());
            prefs["profile"] = json!({"content_settings": {"exceptions": {
                "auto_select_certificate": {origin: {"setting": {"filters": [{}]}}}
            }}});
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let driver = cmd
            .spawn()
            .expect("chromedriver is not installed (.ci/run installs chromium-driver)");
        let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/console")
            .join(shots);
        std::fs::create_dir_all(&shots).unwrap();
        let mut b = Self {
            driver,
            client: None,
            profile: tempfile::tempdir().unwrap(),
            downloads: tempfile::tempdir().unwrap(),
            _home: home,
            shots,
        };
        prefs["download.default_directory"] = json!(b.downloads.path());
        let pin = spki_pin(&server.certs.join("server.pem"));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--password-store=basic",
                    "--disable-breakpad",
                    "--disable-crash-reporter",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", b.profile.path().display()),
                    format!("--ignore-certificate-errors-spki-list={pin}"),
                ],
                "prefs": prefs,
            }),
        );
        let started = Instant::now();
        let client = loop {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session within 30 s: {e}"),
            }
        };
        // A page that never loads (a certificate picker Chromium cannot show, headless) fails
        // the step within the wait instead of WebDriver's default 300 s.
        client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                Some(WAIT),
                Some(WAIT),
                Some(Duration::ZERO),
            ))
            .await
            .unwrap();
        b.client = Some(client);
        b
    }

    /// Lets the page of the current origin use the clipboard (the test reads what Copy put
    /// there). Permissions are per origin: call it on the server's page.
    async fn allow_clipboard(&self) {
        for p in ["clipboard-read", "clipboard-write"] {
            self.c().issue_cmd(SetPermission(p)).await.unwrap();
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn goto(&self, url: &str) {
        self.c().goto(url).await.unwrap();
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it.
    async fn find(&self, css: &str) -> Element {
        let started = Instant::now();
        loop {
            if let Ok(e) = self.c().find(Locator::Css(css)).await {
                return e;
            }
            if started.elapsed() > WAIT {
                let body = self.text("body").await;
                panic!("no {css} within {WAIT:?}; the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn gone(&self, css: &str) -> bool {
        self.c().find(Locator::Css(css)).await.is_err()
    }

    /// The rendered text of the first element matching `css` ("" when there is none), read
    /// in one step (the page may re-render between a find and a read).
    async fn text(&self, css: &str) -> String {
        let v = self
            .c()
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                vec![json!(css)],
            )
            .await
            .unwrap();
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element `css` says `want` (a substring).
    async fn wait_text(&self, css: &str, want: &str) -> String {
        let started = Instant::now();
        loop {
            let t = self.text(css).await;
            if t.contains(want) {
                return t;
            }
            if started.elapsed() > WAIT {
                let body = self.text("body").await;
                panic!("{css} never said {want:?} (last: {t:?}); the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    /// Clicks the element `css`, finding it again if the page re-rendered it meanwhile.
    async fn click(&self, css: &str) {
        let started = Instant::now();
        loop {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(e) if started.elapsed() < WAIT => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.c().execute(script, vec![]).await.unwrap()
    }

    async fn js_async(&self, script: &str) -> Value {
        self.c().execute_async(script, vec![]).await.unwrap()
    }

    /// Saves a screenshot of the page as `<name>.png`.
    async fn shot(&self, name: &str) {
        let png = self.c().screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// axe-core's WCAG 2 A/AA rules on the page: the violations, by rule id and impact.
    async fn accessibility(&self) -> Vec<Value> {
        let axe = axe_source();
        self.c().execute(&axe, vec![]).await.unwrap();
        let v = self
            .js_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
                   .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                      nodes: v.nodes.map(n => n.target.join(' '))}))))
                   .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));",
            )
            .await;
        v.as_array().unwrap().clone()
    }

    /// Everything the browser keeps for the origin, and the page's whole text and markup.
    async fn leftovers(&self) -> String {
        let storage = self
            .js(
                "return JSON.stringify({local: Object.entries(localStorage), session: \
                 Object.entries(sessionStorage), cookies: document.cookie});",
            )
            .await;
        let page = self.c().source().await.unwrap();
        format!("{}\n{page}", storage.as_str().unwrap())
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver, Chromium and every helper process it started share the group.
        let pgid = self.driver.id();
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pgid}")])
            .status_timed();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A Chromium helper that left the group still names this profile directory.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.profile.path().display().to_string()])
            .status_timed();
    }
}

/// Chromium's `--ignore-certificate-errors-spki-list` value for the server's certificate:
/// base64 SHA-256 of its SubjectPublicKeyInfo.
fn spki_pin(cert_pem: &Path) -> String {
    let pem = std::fs::read(cert_pem).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = p.parse_x509().unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn axe_source() -> String {
    let path = std::env::var_os("TESSERA_AXE_JS").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/axe-core/node_modules/axe-core/axe.min.js")
        },
        PathBuf::from,
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "axe-core is not installed at {} ({e}): run `.ci/axe` (.ci/run does)",
            path.display()
        )
    })
}

/// A root key of the default tenant holding `permissions`; returns its secret.
async fn root_key(admin: &Api, permissions: &[&str]) -> String {
    let v = admin
        .post(
            "/v1/root-keys",
            json!({"tenant": "default", "name": "console", "permissions": permissions}),
        )
        .await
        .expect(201);
    v["key"].as_str().unwrap().to_owned()
}

/// WebDriver's codes for the Tab and Enter keys.
const TAB: &str = "\u{E004}";
const SHIFT: &str = "\u{E008}";
const ENTER: &str = "\u{E007}";

/// Signs in with `key`, typed and submitted with the keyboard.
async fn sign_in(b: &Browser, server: &Server, key: &str) {
    b.goto(&server.url("/ui/")).await;
    b.fill("form[aria-label='Sign in'] input[name=root_key]", key)
        .await;
    b.find("form[aria-label='Sign in'] input[name=root_key]")
        .await
        .send_keys(ENTER)
        .await
        .unwrap();
    b.wait_text("#whoami", "Root key").await;
}

/// Checks the page with axe-core and fails on any serious or critical violation.
async fn accessible(b: &Browser, page: &str, report: &mut Vec<String>) {
    // A value that was not a node nor text (an absent optional part) never shows as "null".
    let shown = b.text("body").await;
    assert!(
        !shown.contains("null") && !shown.contains("undefined"),
        "{page}: {shown}"
    );
    let violations = b.accessibility().await;
    for v in &violations {
        report.push(format!(
            "{page}: {} ({}) {}",
            v["id"], v["impact"], v["help"]
        ));
    }
    let bad: Vec<&Value> = violations
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(bad.is_empty(), "{page}: accessibility violations: {bad:#?}");
}

const FULL: &[&str] = &[
    "apis:read",
    "apis:write",
    "keys:create",
    "keys:read",
    "keys:update",
    "keys:rotate",
    "keys:revoke",
    "keys:verify",
    "certs:issue",
    "certs:read",
    "certs:revoke",
    "audit:read",
    "tenants:admin",
];

#[tokio::test]
async fn a_portal_user_runs_a_key_and_a_certificate_through_their_lives_in_the_console() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let root = root_key(&admin, FULL).await;
    let b = Browser::start(&server, "portal").await;
    let mut a11y = Vec::new();

    // The sign-in page, then the APIs page.
    b.goto(&server.url("/ui/")).await;
    b.find("#sign-in").await;
    // Not a password field: the browser must not offer to store the root key.
    let kind = b
        .js("return document.querySelector('input[name=root_key]').type;")
        .await;
    assert_eq!(kind, "text");
    b.shot("01-sign-in").await;
    accessible(&b, "sign-in", &mut a11y).await;
    sign_in(&b, &server, &root).await;
    b.find("form[aria-label='Register an API']").await;

    // Register an API.
    let form = "form[aria-label='Register an API']";
    b.fill(&format!("{form} [name=name]"), "Payments").await;
    b.fill(&format!("{form} [name=owner]"), "team-payments")
        .await;
    b.fill(
        &format!("{form} [name=purpose]"),
        "Card payments for the shop",
    )
    .await;
    // A value the API refuses: its 400 is shown naming the field, with the request id, and
    // nothing is created.
    b.fill(&format!("{form} [name=key_prefix]"), "tsr").await;
    b.click("#create-api").await;
    let err = b.wait_text(".error", "400").await;
    assert!(err.contains("Field: key_prefix"), "{err}");
    assert!(err.contains("Request id req_"), "{err}");
    let apis = admin.get("/v1/apis").await.expect(200);
    assert_eq!(apis["items"].as_array().unwrap().len(), 0);
    b.fill(&format!("{form} [name=key_prefix]"), "pay").await;
    b.click("#create-api").await;
    b.find("#issue-key").await;
    let api_id = b.text("dl.facts dd code").await;
    assert!(api_id.starts_with("api_"), "{api_id}");
    let v = admin.get(&format!("/v1/apis/{api_id}")).await.expect(200);
    assert_eq!(v["owner"], "team-payments");
    assert_eq!(v["key_prefix"], "pay");
    // Edit it: a new owner and a review date.
    let edit = "form[aria-label='Edit the API']";
    b.fill(&format!("{edit} [name=owner]"), "team-checkout")
        .await;
    b.click("#save-api").await;
    b.wait_text("dl.facts", "team-checkout").await;
    let v = admin.get(&format!("/v1/apis/{api_id}")).await.expect(200);
    assert_eq!(v["owner"], "team-checkout");
    b.goto(&server.url("/ui/#/apis")).await;
    b.wait_text("table", "Payments").await;
    b.shot("02-apis").await;
    accessible(&b, "apis", &mut a11y).await;

    // Issue a key: shown once, copied, valid from outside; then gone from the page.
    b.goto(&server.url(&format!("/ui/#/apis/{api_id}/issue")))
        .await;
    b.fill("form[aria-label='Issue a key'] [name=name]", "checkout")
        .await;
    b.click("#issue").await;
    let key = b.find("#secret-value").await.text().await.unwrap();
    assert!(key.starts_with("pay_"), "{key}");
    b.shot("03-key-issued").await;
    accessible(&b, "key-issued", &mut a11y).await;
    b.allow_clipboard().await;
    b.click("#copy-secret").await;
    let copied = b
        .js_async(
            "const done = arguments[arguments.length - 1];
             navigator.clipboard.readText().then(done, e => done('refused: ' + e));",
        )
        .await;
    assert_eq!(copied.as_str(), Some(key.as_str()));
    assert_eq!(admin.verify(&key).await, "VALID");
    let key_link = b
        .find("#new-key-link")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    b.click("#forget-secret").await;
    assert!(b.gone("#secret-value").await);
    assert!(
        !b.leftovers().await.contains(&key),
        "the key stayed in the page"
    );

    // The key's page, its usage; rotate with a grace period: both keys work, both stages shown.
    b.goto(&server.url(&format!("/ui/{key_link}"))).await;
    b.wait_text("#key-state", "active").await;
    // Disable and enable it again.
    b.click("#disable-key").await;
    b.wait_text("#key-state", "disabled").await;
    assert_eq!(admin.verify(&key).await, "DISABLED");
    b.click("#enable-key").await;
    b.wait_text("#key-state", "active").await;
    for _ in 0..3 {
        admin.verify(&key).await;
    }
    b.wait_text("td[data-code=VALID]", "").await;
    let old_id = key_link.trim_start_matches("#/keys/").to_owned();
    b.fill("form[aria-label='Rotate'] [name=grace_seconds]", "3600")
        .await;
    b.click("#rotate-key").await;
    let new_key = b.find("#secret-value").await.text().await.unwrap();
    assert_ne!(new_key, key);
    assert_eq!(admin.verify(&new_key).await, "VALID");
    assert_eq!(
        admin.verify(&key).await,
        "VALID",
        "the old key works in its grace"
    );
    let new_link = b
        .find("#rotated-key-link")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    b.wait_text("#key-rotation", "in grace until").await;
    let old = admin.get(&format!("/v1/keys/{old_id}")).await.expect(200);
    assert_eq!(
        old["rotation"]["superseded_by"].as_str(),
        Some(new_link.trim_start_matches("#/keys/"))
    );
    b.click("#forget-secret").await;
    b.shot("04-key-rotated").await;
    accessible(&b, "key", &mut a11y).await;
    // Usage: the totals by answer as the server counts them, refreshed every 5 s, and the
    // chart of answers per interval since the page opened.
    let started = Instant::now();
    loop {
        let counted = b.text("td[data-code=VALID]").await;
        if counted.parse::<u64>().is_ok_and(|n| n >= 5) {
            break;
        }
        assert!(started.elapsed() < WAIT, "VALID count: {counted}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.find(".chart svg rect.bar.c-valid").await;

    // Revoke the new key from the console (with a confirmation): REVOKED outside.
    b.goto(&server.url(&format!("/ui/{new_link}"))).await;
    b.wait_text("#key-rotation", "Replaces").await;
    b.click("#revoke-key").await;
    assert_eq!(
        admin.verify(&new_key).await,
        "VALID",
        "nothing before the confirmation"
    );
    b.click("#confirm-revoke").await;
    b.wait_text("#key-state", "revoked").await;
    assert_eq!(admin.verify(&new_key).await, "REVOKED");

    // Issue a certificate with a generated key; the private key is downloaded, then dropped.
    b.goto(&server.url("/ui/#/certs")).await;
    b.fill(
        "form[aria-label='Issue a certificate'] [name=identity]",
        "orders",
    )
    .await;
    b.click("#issue-cert").await;
    let serial = b.find("#new-cert-link").await.text().await.unwrap();
    b.click("#download-cert").await;
    let cert_file = b.downloads.path().join("orders.pem");
    wait_for_file(&cert_file).await;
    b.click("#download-key").await;
    let key_file = b.downloads.path().join("orders.key");
    wait_for_file(&key_file).await;
    let pem = std::fs::read_to_string(&key_file).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem:.40}");
    assert_key_matches(&key_file, &cert_file);
    let cert = admin.get(&format!("/v1/certs/{serial}")).await.expect(200);
    assert_eq!(cert["state"], "valid");
    assert_eq!(
        cert["identity"],
        "spiffe://tessera.local/tenant/default/svc/orders"
    );
    // The key stays downloadable (a cancelled save can be repeated) until "Done".
    b.click("#forget-key").await;
    b.find("#key-forgotten").await;
    assert!(
        b.gone("#download-key").await,
        "the key is offered until Done only"
    );
    assert!(!b.leftovers().await.contains("PRIVATE KEY"));
    b.wait_text("table", &serial).await;
    b.shot("05-certs").await;
    accessible(&b, "certs", &mut a11y).await;

    // From a pasted CSR: no private key to offer.
    let form = "form[aria-label='Issue a certificate']";
    b.fill(&format!("{form} [name=identity]"), "billing").await;
    b.fill(&format!("{form} [name=csr]"), &fresh_csr()).await;
    b.click("#issue-cert").await;
    let started = Instant::now();
    let from_csr = loop {
        let t = b.text("#new-cert-link").await;
        if !t.is_empty() && t != serial {
            break t;
        }
        assert!(started.elapsed() < WAIT, "no second certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(b.gone("#download-key").await);
    let v = admin
        .get(&format!("/v1/certs/{from_csr}"))
        .await
        .expect(200);
    assert_eq!(
        v["identity"],
        "spiffe://tessera.local/tenant/default/svc/billing"
    );

    // An enrolment token, shown once, redeemed from outside.
    b.fill(
        "form[aria-label='Enrolment token'] [name=identity]",
        "batch",
    )
    .await;
    b.click("#make-token").await;
    let token = b.find("#secret-value").await.text().await.unwrap();
    b.click("#forget-secret").await;
    assert!(!b.leftovers().await.contains(&token));
    let csr = fresh_csr();
    server
        .anonymous()
        .post(
            "/v1/enrol",
            json!({"token": token, "identity": "batch", "csr": csr}),
        )
        .await
        .expect(201);

    // Revoke it with a reason.
    b.goto(&server.url(&format!("/ui/#/certs/{serial}"))).await;
    b.find("form[aria-label='Revoke'] select[name=reason]")
        .await
        .select_by_value("key_compromise")
        .await
        .unwrap();
    b.click("#revoke-cert").await;
    b.click("#confirm-revoke").await;
    b.wait_text("#cert-state", "revoked").await;
    let cert = admin.get(&format!("/v1/certs/{serial}")).await.expect(200);
    assert_eq!(cert["state"], "revoked");
    assert_eq!(cert["revocation_reason"], "key_compromise");
    b.shot("06-cert-revoked").await;

    // The audit log shows each of those actions, with filters.
    b.goto(&server.url("/ui/#/audit")).await;
    b.wait_text("table", "rotate").await;
    let log = b.text("table").await;
    for action in [
        "POST /v1/apis",
        "/keys",
        "/rotate",
        "/revoke",
        "POST /v1/certs",
    ] {
        assert!(
            log.contains(action),
            "no {action} in the console's log:\n{log}"
        );
    }
    b.fill("form[aria-label='Filters'] [name=action]", "/rotate")
        .await;
    let filtered = b.text("table tbody").await;
    assert!(
        filtered.lines().all(|l| l.contains("/rotate")),
        "{filtered}"
    );
    b.shot("07-audit").await;
    accessible(&b, "audit", &mut a11y).await;

    // Access: the tenant's roles, bindings and root keys.
    b.goto(&server.url("/ui/#/access")).await;
    b.wait_text("h1", "Tenant default").await;
    b.find("tr[data-root-key]").await;
    b.shot("08-access").await;
    accessible(&b, "access", &mut a11y).await;
    // A role, a binding to it, and a root key, made in the console and checked through the
    // API: the binding grants exactly the role's permission, the root key works and holds
    // exactly what was ticked.
    let role = "form[aria-label='New role']";
    b.fill(&format!("{role} [name=name]"), "reader").await;
    b.click(&format!("{role} input[value='keys:read']")).await;
    b.click("#create-role").await;
    b.wait_text("main table", "reader").await;
    b.fill("form[aria-label='Bind'] [name=identity]", "orders")
        .await;
    b.fill("form[aria-label='Bind'] [name=roles]", "reader")
        .await;
    b.click("#bind").await;
    b.wait_text("main", "orders").await;
    let binding = admin
        .get("/v1/tenants/default/bindings/orders")
        .await
        .expect(200);
    assert_eq!(binding["roles"], json!(["reader"]));
    assert_eq!(binding["permissions"], json!(["keys:read"]));
    let form = "form[aria-label='New root key']";
    b.fill(&format!("{form} [name=name]"), "ci").await;
    b.click(&format!("{form} input[value='keys:read']")).await;
    b.click("#create-root-key").await;
    let made = b.find("#secret-value").await.text().await.unwrap();
    assert!(made.starts_with("tsr_"), "{made:.4}");
    let me = bearer(&server, &made).get("/v1/whoami").await.expect(200);
    assert_eq!(me["permissions"], json!(["keys:read"]));
    b.click("#forget-secret").await;
    // Rotating it asks first and takes a grace period: both secrets work in the grace.
    b.goto(&server.url("/ui/#/access/default")).await;
    let id = me["identity"].as_str().unwrap().to_owned();
    b.click(&format!(
        "tr[data-root-key='{id}'] button[aria-label^='Rotate']"
    ))
    .await;
    assert_eq!(
        bearer(&server, &made).get("/v1/whoami").await.status,
        200,
        "nothing before the confirmation"
    );
    b.fill("[role=group] [name=grace_seconds]", "600").await;
    b.click("#confirm-rotate-root-key").await;
    let rotated = b.find("#secret-value").await.text().await.unwrap();
    assert_ne!(rotated, made);
    bearer(&server, &rotated)
        .get("/v1/whoami")
        .await
        .expect(200);
    bearer(&server, &made).get("/v1/whoami").await.expect(200);
    b.click("#forget-secret").await;

    // Keyboard: the skip link is the first stop and leads to the content.
    b.goto(&server.url("/ui/#/apis")).await;
    b.wait_text("table", "Payments").await;
    // Keyboard: a page opens with the focus on its content; Shift+Tab walks back through
    // the header to the skip link, and Enter on it returns to the content (the route stays).
    let focused = b.js("return document.activeElement.id;").await;
    assert_eq!(focused, "main");
    let mut reached = Vec::new();
    for _ in 0..6 {
        b.c()
            .active_element()
            .await
            .unwrap()
            .send_keys(&format!("{SHIFT}{TAB}"))
            .await
            .unwrap();
        reached.push(b.js("return document.activeElement.textContent;").await);
    }
    assert_eq!(
        reached,
        [
            "Sign out",
            "Access",
            "Audit",
            "Certificates",
            "APIs",
            "Skip to content"
        ],
        "{reached:?}"
    );
    b.c()
        .active_element()
        .await
        .unwrap()
        .send_keys(ENTER)
        .await
        .unwrap();
    let focused = b
        .js("return [document.activeElement.id, location.hash];")
        .await;
    assert_eq!(focused, json!(["main", "#/apis"]));

    // Signing out leaves no secret anywhere the browser keeps things, nor in the page.
    assert!(!b.leftovers().await.contains(&root));
    b.click("#sign-out").await;
    b.find("#sign-in").await;
    let left = b.leftovers().await;
    for secret in [&root, &key, &new_key] {
        assert!(
            !left.contains(secret.as_str()),
            "a secret is left after sign-out"
        );
    }
    assert!(
        left.starts_with(r#"{"local":[],"session":[],"cookies":""}"#),
        "{left:.200}"
    );
    // The console really is signed out: a page needs signing in again.
    b.goto(&server.url("/ui/#/apis")).await;
    b.find("#sign-in").await;
    eprintln!(
        "accessibility (axe-core, WCAG 2.1 A/AA): {} findings",
        a11y.len()
    );
    for f in &a11y {
        eprintln!("  {f}");
    }
    b.close().await;
}

#[tokio::test]
async fn a_reader_sees_keys_cannot_issue_and_never_sees_another_tenant() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("orders").await;
    let (key_id, _) = admin.issue(&api, json!({"name": "k1"})).await;
    // Another tenant's API and key.
    admin
        .post("/v1/tenants", json!({"name": "other"}))
        .await
        .expect(201);
    let theirs = admin
        .post(
            "/v1/apis",
            json!({"name": "secret-api", "purpose": "p", "owner": "o", "risk": "high",
                   "tenant": "other"}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (their_key, _) = admin.issue(&theirs, json!({})).await;

    let reader = root_key(&admin, &["apis:read", "keys:read"]).await;
    let b = Browser::start(&server, "reader").await;
    sign_in(&b, &server, &reader).await;

    // Keys are listed; issuing is a disabled button saying what it needs.
    b.goto(&server.url(&format!("/ui/#/apis/{api}"))).await;
    b.find(&format!("tr[data-key='{key_id}']")).await;
    let issue = b.find("#issue-key").await;
    assert!(!issue.is_enabled().await.unwrap());
    assert!(b.text(".gated").await.contains("needs keys:create"));
    assert!(b.gone("#rotate-key").await || b.gone("form[aria-label='Rotate']").await);
    b.shot("01-reader-api").await;
    // Forcing it (the issue page by its address): the API's 403 is shown as it says it.
    b.goto(&server.url(&format!("/ui/#/apis/{api}/issue")))
        .await;
    b.click("#issue").await;
    let err = b.wait_text(".error", "403").await;
    assert!(err.contains("keys:create"), "{err}");
    assert!(err.contains("Request id"), "{err}");
    b.shot("02-reader-forbidden").await;
    assert!(b.gone("#secret-value").await);
    let keys = admin.get(&format!("/v1/apis/{api}/keys")).await.expect(200);
    assert_eq!(
        keys["items"].as_array().unwrap().len(),
        1,
        "nothing was issued"
    );

    // A key page of this tenant shows the key, with no action the reader cannot take.
    b.goto(&server.url(&format!("/ui/#/keys/{key_id}"))).await;
    b.wait_text("#key-state", "active").await;
    assert!(!b.find("#revoke-key").await.is_enabled().await.unwrap());

    // Another tenant's key and API by their ids: not found, nothing of them shown.
    for path in [format!("#/keys/{their_key}"), format!("#/apis/{theirs}")] {
        b.goto(&server.url(&format!("/ui/{path}"))).await;
        b.wait_text("h1", "Not found").await;
        let body = b.text("main").await;
        assert!(!body.contains("secret-api"), "{body}");
        assert!(!body.contains("other"), "{body}");
    }
    b.shot("03-other-tenant").await;
    b.close().await;
}

async fn wait_for_file(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < WAIT,
            "{} was not downloaded",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Chromium renames the finished download into place; give the write a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The downloaded private key belongs to the downloaded certificate: `openssl` derives the
/// same public key from both.
fn assert_key_matches(key: &Path, cert: &Path) {
    let from_key = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(key)
        .output_timed()
        .unwrap();
    assert!(
        from_key.status.success(),
        "{}",
        String::from_utf8_lossy(&from_key.stderr)
    );
    let from_cert = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(cert)
        .output_timed()
        .unwrap();
    assert!(from_cert.status.success());
    assert_eq!(
        from_key.stdout, from_cert.stdout,
        "the key is not the certificate's"
    );
}

/// An NSS database under `home` holding the client certificate and key (as Chromium on Linux
/// reads them), made with NSS's own tools and `openssl`.
fn nss_holding(home: &Path, cert: &Path, key: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    let p12 = home.join("client.p12");
    let run = |cmd: &mut Command| {
        let out = cmd.output_timed().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("certutil").args(["-N", "--empty-password", "-d", &db_arg]));
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:", "-in"])
        .arg(cert)
        .arg("-inkey")
        .arg(key)
        .arg("-out")
        .arg(&p12));
    run(Command::new("pk12util")
        .args(["-d", &db_arg, "-W", "", "-i"])
        .arg(&p12));
}

/// The optional sign-in: the browser's own client certificate, here the global admin's, and
/// what only the global admin sees (every tenant, the audit chain's check and checkpoint).
#[tokio::test]
async fn the_global_admin_signs_in_with_the_browsers_certificate() {
    let home = Home::new();
    let server = Server::start(&home);
    let admin = server.admin();
    admin
        .post("/v1/tenants", json!({"name": "acme"}))
        .await
        .expect(201);
    let b = Browser::start_holding(
        &server,
        "admin",
        (
            &server.certs.join("admin.pem"),
            &server.certs.join("admin.key"),
        ),
    )
    .await;
    b.goto(&server.url("/ui/")).await;
    b.click("#sign-in-cert").await;
    let who = b.wait_text("#whoami", "Certificate").await;
    assert!(who.contains("/system/admin"), "{who}");
    assert!(who.contains("global admin"), "{who}");
    b.goto(&server.url("/ui/#/audit")).await;
    let chain = b.wait_text("#chain-status", "checked").await;
    assert!(chain.contains("valid"), "{chain}");
    let head = admin.get("/v1/audit/verify").await.expect(200)["head_seq"].clone();
    assert!(chain.contains(&format!("head {head}")), "{chain} vs {head}");
    b.shot("01-audit-chain").await;
    b.goto(&server.url("/ui/#/access")).await;
    b.wait_text("table", "acme").await;
    b.shot("02-tenants").await;
    // A change through the console with the certificate: a tenant, then its audit entry is
    // the newest one shown.
    b.fill("form[aria-label='New tenant'] [name=name]", "globex")
        .await;
    b.click("form[aria-label='New tenant'] button[type=submit]")
        .await;
    b.wait_text("h1", "Tenant globex").await;
    admin.get("/v1/tenants/globex").await.expect(200);
    b.goto(&server.url("/ui/#/audit")).await;
    let newest = b.wait_text("main table tbody tr", "POST /v1/tenants").await;
    assert!(newest.contains("/system/admin"), "{newest}");
    b.close().await;
}
