//! The client verbs: thin calls to a running server's API. `apis`, `keys`, `certs` and
//! `whoami` print a table or the server's JSON; `backup` downloads an online backup; `unseal`
//! sends one share to a sealed server; `agent` keeps a certificate renewed. Errors are the
//! server's own message, and a non-zero exit. Secrets are never taken as arguments (they
//! would show in `ps`): a key to verify comes from `TESSERA_KEY` or standard input, a share or
//! an enrolment token from standard input.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

use super::{
    args::{AgentArgs, Apis, Certs, Keys, Output, ServerArgs, TargetArgs},
    exit,
};
use crate::{agent, client::Client, config::LogFormat, crypto::secret::SecretString, files};

/// One call; a failure says which operation failed (`cannot revoke the key: …`), then the
/// server's own message.
pub(super) async fn call(
    c: &Client,
    op: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let answer = c
        .call(method, path, body.as_ref())
        .await
        .and_then(crate::client::Answer::ok)
        .with_context(|| format!("cannot {op}"))?;
    Ok(answer.json())
}

/// Every page of a list.
pub(super) async fn list_all(c: &Client, op: &str, path: &str) -> anyhow::Result<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &cursor {
            Some(cur) => format!("{path}{sep}limit=100&cursor={cur}"),
            None => format!("{path}{sep}limit=100"),
        };
        let page = call(c, op, Method::GET, &page_path, None).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(json!({ "items": items }))
}

pub(super) fn set(body: &mut Value, field: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        body[field] = v.into();
    }
}

/// A secret from the environment variable `var` when it is set, else the first line of
/// standard input (never from the command line, where `ps` and shell history would keep it).
pub(super) fn secret_input(var: Option<&str>) -> std::io::Result<zeroize::Zeroizing<String>> {
    if let Some(v) = var.and_then(|v| std::env::var(v).ok()) {
        return Ok(zeroize::Zeroizing::new(v));
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line)?;
    Ok(line)
}

pub(super) async fn apis(c: &Client, cmd: Apis, out: Output) -> anyhow::Result<()> {
    match cmd {
        Apis::Create {
            name,
            purpose,
            owner,
            risk,
            prefix,
        } => {
            let mut body = json!({"name": name, "purpose": purpose, "owner": owner, "risk": risk});
            set(&mut body, "key_prefix", prefix);
            show(
                out,
                &call(c, "register the API", Method::POST, "/v1/apis", Some(body)).await?,
                None,
            );
        }
        Apis::List => show(
            out,
            &list_all(c, "list APIs", "/v1/apis").await?,
            Some(&["id", "name", "owner", "risk", "review_by", "created_at"]),
        ),
        Apis::Get { id } => show(
            out,
            &call(
                c,
                "read the API",
                Method::GET,
                &format!("/v1/apis/{id}"),
                None,
            )
            .await?,
            None,
        ),
        Apis::Update {
            id,
            name,
            purpose,
            owner,
            risk,
            live_date,
            review_by,
            max_key_age,
        } => {
            let mut body = json!({});
            set(&mut body, "name", name);
            set(&mut body, "purpose", purpose);
            set(&mut body, "owner", owner);
            set(&mut body, "risk", risk);
            set(&mut body, "live_date", live_date);
            set(&mut body, "review_by", review_by);
            set(&mut body, "max_key_age_seconds", max_key_age);
            let path = format!("/v1/apis/{id}");
            show(
                out,
                &call(c, "change the API", Method::PATCH, &path, Some(body)).await?,
                None,
            );
        }
        Apis::Delete { id } => {
            let path = format!("/v1/apis/{id}");
            call(c, "delete the API", Method::DELETE, &path, None).await?;
            out!("API {id} deleted");
        }
    }
    Ok(())
}

/// The fields `keys create` and `keys update` share: only those given.
fn key_fields(name: Option<String>, scopes: Vec<String>, metadata: Vec<(String, String)>) -> Value {
    let mut body = json!({});
    set(&mut body, "name", name);
    if !scopes.is_empty() {
        body["scopes"] = json!(scopes);
    }
    if !metadata.is_empty() {
        body["metadata"] = Value::Object(
            metadata
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        );
    }
    body
}

/// The exit code of a verdict (`keys verify`, `certs verify`): only VALID is success.
fn verdict(v: &Value) -> i32 {
    if v["code"] == "VALID" {
        exit::OK
    } else {
        exit::NOT_VALID
    }
}

/// Returns the exit code ([`verdict`]'s for `keys verify`).
pub(super) async fn keys(c: &Client, cmd: Keys, out: Output) -> anyhow::Result<i32> {
    let v = match cmd {
        Keys::Create {
            api,
            name,
            scopes,
            ttl,
            remaining,
            metadata,
        } => {
            let mut body = key_fields(name, scopes, metadata);
            set(&mut body, "ttl_seconds", ttl);
            set(&mut body, "remaining", remaining);
            let path = format!("/v1/apis/{api}/keys");
            call(c, "issue the key", Method::POST, &path, Some(body)).await?
        }
        Keys::List { api } => {
            let v = list_all(c, "list keys", &format!("/v1/apis/{api}/keys")).await?;
            show(
                out,
                &v,
                Some(&["id", "name", "start", "state", "scopes", "expires_at"]),
            );
            return Ok(exit::OK);
        }
        Keys::Get { id } => {
            call(
                c,
                "read the key",
                Method::GET,
                &format!("/v1/keys/{id}"),
                None,
            )
            .await?
        }
        Keys::Update {
            id,
            name,
            scopes,
            disable,
            enable,
            remaining,
            unlimited,
            expires_at,
            metadata,
        } => {
            let mut body = key_fields(name, scopes, metadata);
            if disable || enable {
                body["enabled"] = json!(enable);
            }
            set(&mut body, "remaining", remaining);
            if unlimited {
                body["remaining"] = Value::Null;
            }
            set(&mut body, "expires_at", expires_at);
            let path = format!("/v1/keys/{id}");
            call(c, "change the key", Method::PATCH, &path, Some(body)).await?
        }
        Keys::Rotate { id, grace } => {
            let mut body = json!({});
            set(&mut body, "grace_seconds", grace);
            call(
                c,
                "rotate the key",
                Method::POST,
                &format!("/v1/keys/{id}/rotate"),
                Some(body),
            )
            .await?
        }
        Keys::Revoke { id } => {
            call(
                c,
                "revoke the key",
                Method::POST,
                &format!("/v1/keys/{id}/revoke"),
                Some(json!({})),
            )
            .await?
        }
        Keys::Verify { api, scopes } => {
            let key = secret_input(Some("TESSERA_KEY"))?;
            let mut body = json!({ "key": key.trim() });
            set(&mut body, "api_id", api);
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            let v = call(
                c,
                "verify the key",
                Method::POST,
                "/v1/keys/verify",
                Some(body),
            )
            .await?;
            show(out, &v, None);
            return Ok(verdict(&v));
        }
    };
    show(out, &v, None);
    Ok(exit::OK)
}

/// Returns the exit code ([`verdict`]'s for `certs verify`).
pub(super) async fn certs(c: &Client, cmd: Certs, out: Output) -> anyhow::Result<i32> {
    let v = match cmd {
        Certs::Issue {
            identity,
            tenant,
            csr,
            generate,
            key_out,
            cert_out,
            ttl,
        } => {
            let mut body = json!({ "identity": identity });
            set(&mut body, "tenant", tenant);
            set(&mut body, "ttl_seconds", ttl);
            match (csr, generate) {
                (Some(path), _) => {
                    body["csr"] = json!(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?
                    );
                }
                (None, true) => body["generate"] = json!(true),
                (None, false) => bail!("give --csr FILE, or --generate with --key-out FILE"),
            }
            // A generated key is in the answer only: know that its file (and the
            // certificate's) can be written before asking for it.
            let key_file = key_out
                .as_deref()
                .filter(|_| generate)
                .map(|p| stage(p, files::PRIVATE))
                .transpose()?;
            let cert_file = cert_out
                .as_deref()
                .map(|p| stage(p, files::PUBLIC))
                .transpose()?;
            let mut v = call(
                c,
                "issue the certificate",
                Method::POST,
                "/v1/certs",
                Some(body),
            )
            .await?;
            // A generated key goes to its file, never to the terminal.
            if let (Some((f, path)), Some(key)) = (key_file, v["private_key"].as_str()) {
                let key = zeroize::Zeroizing::new(key.to_owned());
                commit(f, path, key.as_bytes())?;
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("private_key");
            }
            if let Some((f, path)) = cert_file {
                commit(f, path, agent::chain_pem(&v).as_bytes())?;
            }
            v
        }
        Certs::List { identity } => {
            let path = match identity {
                Some(i) => format!(
                    "/v1/certs?identity={}",
                    form_urlencoded::byte_serialize(i.as_bytes()).collect::<String>()
                ),
                None => "/v1/certs".to_owned(),
            };
            let v = list_all(c, "list certificates", &path).await?;
            show(out, &v, Some(&["serial", "identity", "state", "not_after"]));
            return Ok(exit::OK);
        }
        Certs::Get { serial } => {
            let path = format!("/v1/certs/{serial}");
            call(c, "read the certificate", Method::GET, &path, None).await?
        }
        Certs::Renew { csr, cert_out, ttl } => {
            let mut body = json!({});
            set(&mut body, "ttl_seconds", ttl);
            if let Some(path) = csr {
                body["csr"] = json!(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                );
            }
            let (f, path) = stage(&cert_out, files::PUBLIC)?;
            let v = call(
                c,
                "renew the certificate",
                Method::POST,
                "/v1/certs/renew",
                Some(body),
            )
            .await?;
            commit(f, path, agent::chain_pem(&v).as_bytes())?;
            v
        }
        Certs::Token {
            identity,
            tenant,
            ttl,
        } => {
            let mut body = json!({ "identity": identity });
            set(&mut body, "tenant", tenant);
            set(&mut body, "ttl_seconds", ttl);
            call(
                c,
                "make the enrolment token",
                Method::POST,
                "/v1/enrolment-tokens",
                Some(body),
            )
            .await?
        }
        Certs::Revoke { serial, reason } => {
            let mut body = json!({});
            set(&mut body, "reason", reason);
            call(
                c,
                "revoke the certificate",
                Method::POST,
                &format!("/v1/certs/{serial}/revoke"),
                Some(body),
            )
            .await?
        }
        Certs::Verify { file } => {
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let v = call(
                c,
                "verify the certificate",
                Method::POST,
                "/v1/certs/verify",
                Some(json!({ "certificate": pem })),
            )
            .await?;
            show(out, &v, None);
            return Ok(verdict(&v));
        }
    };
    show(out, &v, None);
    Ok(exit::OK)
}

/// A file to write once an answer arrives, created now so that a path that cannot be written
/// fails before the call.
pub(super) fn stage(path: &Path, mode: u32) -> anyhow::Result<(files::Staged, &Path)> {
    let f = files::Staged::create(path, mode)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((f, path))
}

pub(super) fn commit(f: files::Staged, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    f.commit(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub(super) async fn whoami(c: &Client, out: Output) -> anyhow::Result<()> {
    show(
        out,
        &call(c, "ask who you are", Method::GET, "/v1/whoami", None).await?,
        None,
    );
    Ok(())
}

/// A cell: strings bare, lists comma-separated, null empty, anything else as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        // Certificates are long: a table shows that they are there.
        other => other.to_string(),
    }
}

/// Prints `v` as JSON, or as a table: `columns` of `v.items`, or one `field  value` line per
/// field of an object.
pub(super) fn show(out: Output, v: &Value, columns: Option<&[&str]>) {
    if let Output::Json = out {
        out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match columns {
        Some(cols) => {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| cols.iter().map(|c| cell(&i[*c])).collect())
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(n, c)| {
                    rows.iter()
                        .map(|r| r[n].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            out!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
            for r in rows {
                out!("{}", line(r));
            }
        }
        None => {
            let Some(obj) = v.as_object() else {
                out!("{}", cell(v));
                return;
            };
            let w = obj.keys().map(String::len).max().unwrap_or(0);
            for (k, val) in obj {
                let text = match (k.as_str(), val) {
                    ("certificate", Value::String(_)) => {
                        "(PEM; --output json or --cert-out)".into()
                    }
                    ("chain", Value::Array(a)) => format!("({} PEM certificates)", a.len()),
                    _ => cell(val),
                };
                out!("{k:<w$}  {text}");
            }
        }
    }
}

/// `tessera backup`: downloads an online backup and writes it (0600) once its structure
/// checks out.
pub(super) async fn backup(target: TargetArgs, out: PathBuf) -> anyhow::Result<()> {
    let client = Client::new(&target.target())?;
    let (file, _) = stage(&out, files::PRIVATE)?;
    let answer = client
        .call(Method::GET, "/v1/sys/backup", None)
        .await?
        .ok()?;
    // Its structure only: checking its MAC takes the master key (restore does).
    crate::store::backup::parse(&answer.body).context("the server's backup does not check out")?;
    commit(file, &out, &answer.body)?;
    out!(
        "backup written: {} ({} bytes)",
        out.display(),
        answer.body.len()
    );
    Ok(())
}

/// `tessera unseal`: sends one share, read from standard input, with no client certificate.
pub(super) async fn unseal(target: TargetArgs) -> anyhow::Result<()> {
    let mut t = target.target();
    t.cert = None;
    t.key = None;
    let client = Client::new(&t)?;
    let line = secret_input(None)?;
    let body = json!({"share": line.trim()});
    let v = call(
        &client,
        "send the unseal share",
        Method::POST,
        "/v1/sys/unseal",
        Some(body),
    )
    .await?;
    out!("{}", unseal_progress(&v));
    Ok(())
}

/// An unseal answer in words.
fn unseal_progress(v: &Value) -> String {
    if v["sealed"] == Value::Bool(false) {
        return "share accepted: the server is unsealed".into();
    }
    match (v["progress"].as_u64(), v["threshold"].as_u64()) {
        (Some(p), Some(t)) => format!(
            "share accepted: {p} of {t}; the server stays sealed until {} more",
            t.saturating_sub(p)
        ),
        _ => "share accepted; the server is still sealed".into(),
    }
}

/// `tessera agent bootstrap`: the first certificate, from an enrolment token.
pub(super) async fn agent_bootstrap(
    ServerArgs { server, ca }: ServerArgs,
    identity: String,
    cert: PathBuf,
    key: PathBuf,
    ttl: Option<u64>,
) -> anyhow::Result<()> {
    let token = secret_input(Some("TESSERA_ENROL_TOKEN"))?;
    let b = agent::Bootstrap {
        server,
        ca,
        cert: cert.clone(),
        key,
        identity,
        token: SecretString::new(token.trim().to_owned()),
        ttl_seconds: ttl,
    };
    let v = agent::bootstrap(b).await?;
    out!(
        "Wrote {} (valid until {}) and its key. Keep it renewed with `tessera agent`.",
        cert.display(),
        crate::clock::Timestamp::from_unix(v.not_after)
    );
    Ok(())
}

/// `tessera agent`: renews the certificate at --renew-at of its lifetime until stopped (or
/// once, with --once). Returns [`exit::NOT_VALID`] when the certificate is expired or refused:
/// it must be replaced.
pub(super) async fn agent_run(a: AgentArgs) -> anyhow::Result<i32> {
    super::init_logging(LogFormat::Human);
    let (Some(cert), Some(key)) = (a.cert, a.key) else {
        bail!("--cert and --key are required");
    };
    let exec = a.exec.as_deref().map(agent::split_command).transpose()?;
    let opts = agent::Options {
        server: a.server.server,
        ca: a.server.ca,
        cert,
        key,
        exec,
        signal_pid: a.signal_pid,
        renew_at: a.renew_at,
        rekey: a.rekey,
        ttl_seconds: a.ttl,
        once: a.once,
    };
    match agent::run(opts).await {
        Ok(()) => Ok(exit::OK),
        Err(e) if e.is_verdict() => {
            eprintln!("Error: {e}");
            Ok(exit::NOT_VALID)
        }
        Err(e) => Err(e.into()),
    }
}
