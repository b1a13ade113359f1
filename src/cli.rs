//! The client verbs (`tessera apis|keys|certs|whoami`): thin calls to the API, printed as a
//! table or as the server's JSON. Errors are the server's own message, and a non-zero exit.
//! Secrets are never taken as arguments (they would show in `ps`): a key to verify comes from
//! `TESSERA_KEY` or standard input.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};
use tessera::client::Client;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Apis {
    /// Register an API.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        owner: String,
        /// low, medium, high or critical.
        #[arg(long)]
        risk: String,
        /// The prefix of its keys (default `tsk`).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// List the APIs the caller may see.
    List,
}

#[derive(Subcommand)]
pub enum Keys {
    /// Issue a key (the secret is printed once).
    Create {
        #[arg(long)]
        api: String,
        #[arg(long)]
        name: Option<String>,
        /// A scope (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        remaining: Option<u64>,
    },
    /// An API's keys.
    List {
        #[arg(long)]
        api: String,
    },
    Get {
        id: String,
    },
    /// A new key; the old one keeps working for --grace seconds.
    Rotate {
        id: String,
        #[arg(long)]
        grace: Option<u64>,
    },
    Revoke {
        id: String,
    },
    /// Verify a key read from TESSERA_KEY or the first line of standard input.
    Verify {
        #[arg(long)]
        api: Option<String>,
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum Certs {
    /// Issue a certificate from a CSR (recommended), or make the key pair here (--generate,
    /// with --key-out).
    Issue {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        tenant: Option<String>,
        /// A PEM CSR file.
        #[arg(long, conflicts_with = "generate")]
        csr: Option<PathBuf>,
        #[arg(long, requires = "key_out")]
        generate: bool,
        /// Where to write the generated private key (0600).
        #[arg(long)]
        key_out: Option<PathBuf>,
        /// Where to write the certificate and its chain (PEM).
        #[arg(long)]
        cert_out: Option<PathBuf>,
        #[arg(long)]
        ttl: Option<u64>,
    },
    List {
        /// A service name or SPIFFE id.
        #[arg(long)]
        identity: Option<String>,
    },
    Revoke {
        serial: String,
        /// e.g. key_compromise, superseded, cessation_of_operation.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Verify a certificate (PEM file, leaf first).
    Verify { file: PathBuf },
}

async fn call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    Ok(c.call(method, path, body.as_ref()).await?.ok()?.json())
}

/// Every page of a list.
async fn list_all(c: &Client, path: &str) -> anyhow::Result<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &cursor {
            Some(cur) => format!("{path}{sep}limit=100&cursor={cur}"),
            None => format!("{path}{sep}limit=100"),
        };
        let page = call(c, Method::GET, &page_path, None).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(json!({ "items": items }))
}

fn set(body: &mut Value, field: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        body[field] = v.into();
    }
}

/// A secret from the environment variable `var` when it is set, else the first line of
/// standard input (never from the command line, where `ps` and shell history would keep it).
pub fn secret_input(var: Option<&str>) -> std::io::Result<zeroize::Zeroizing<String>> {
    if let Some(v) = var.and_then(|v| std::env::var(v).ok()) {
        return Ok(zeroize::Zeroizing::new(v));
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line)?;
    Ok(line)
}

pub async fn apis(c: &Client, cmd: Apis, out: Output) -> anyhow::Result<()> {
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
                &call(c, Method::POST, "/v1/apis", Some(body)).await?,
                None,
            );
        }
        Apis::List => show(
            out,
            &list_all(c, "/v1/apis").await?,
            Some(&["id", "name", "owner", "risk", "created_at"]),
        ),
    }
    Ok(())
}

pub async fn keys(c: &Client, cmd: Keys, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        Keys::Create {
            api,
            name,
            scopes,
            ttl,
            remaining,
        } => {
            let mut body = json!({});
            set(&mut body, "name", name);
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            set(&mut body, "ttl_seconds", ttl);
            set(&mut body, "remaining", remaining);
            call(c, Method::POST, &format!("/v1/apis/{api}/keys"), Some(body)).await?
        }
        Keys::List { api } => {
            let v = list_all(c, &format!("/v1/apis/{api}/keys")).await?;
            show(
                out,
                &v,
                Some(&["id", "name", "start", "state", "scopes", "expires_at"]),
            );
            return Ok(());
        }
        Keys::Get { id } => call(c, Method::GET, &format!("/v1/keys/{id}"), None).await?,
        Keys::Rotate { id, grace } => {
            let mut body = json!({});
            set(&mut body, "grace_seconds", grace);
            call(
                c,
                Method::POST,
                &format!("/v1/keys/{id}/rotate"),
                Some(body),
            )
            .await?
        }
        Keys::Revoke { id } => {
            call(
                c,
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
            call(c, Method::POST, "/v1/keys/verify", Some(body)).await?
        }
    };
    show(out, &v, None);
    Ok(())
}

pub async fn certs(c: &Client, cmd: Certs, out: Output) -> anyhow::Result<()> {
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
            let mut v = call(c, Method::POST, "/v1/certs", Some(body)).await?;
            // A generated key goes to its file, never to the terminal.
            if let (Some(path), Some(key)) = (&key_out, v["private_key"].as_str()) {
                let key = zeroize::Zeroizing::new(key.to_owned());
                tessera::files::write_atomic(path, key.as_bytes(), tessera::files::PRIVATE)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("private_key");
            }
            if let Some(path) = &cert_out {
                let pem = tessera::agent::chain_pem(&v);
                tessera::files::write_atomic(path, pem.as_bytes(), tessera::files::PUBLIC)
                    .with_context(|| format!("writing {}", path.display()))?;
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
            let v = list_all(c, &path).await?;
            show(out, &v, Some(&["serial", "identity", "state", "not_after"]));
            return Ok(());
        }
        Certs::Revoke { serial, reason } => {
            let mut body = json!({});
            set(&mut body, "reason", reason);
            call(
                c,
                Method::POST,
                &format!("/v1/certs/{serial}/revoke"),
                Some(body),
            )
            .await?
        }
        Certs::Verify { file } => {
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            call(
                c,
                Method::POST,
                "/v1/certs/verify",
                Some(json!({ "certificate": pem })),
            )
            .await?
        }
    };
    show(out, &v, None);
    Ok(())
}

pub async fn whoami(c: &Client, out: Output) -> anyhow::Result<()> {
    show(out, &call(c, Method::GET, "/v1/whoami", None).await?, None);
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
fn show(out: Output, v: &Value, columns: Option<&[&str]>) {
    if let Output::Json = out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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
            println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
            for r in rows {
                println!("{}", line(r));
            }
        }
        None => {
            let Some(obj) = v.as_object() else {
                println!("{}", cell(v));
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
                println!("{k:<w$}  {text}");
            }
        }
    }
}
