//! The administrative client verbs: tenants, roles, bindings, root keys, the PKI, the audit
//! log and the server's seal. Each is one call (or every page of a list) to the public API
//! with the caller's own credential: the CLI has no path around authorisation.

use std::path::{Path, PathBuf};

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};

use super::{
    args::{Bindings, Output, Pki, Roles, RootKeys, Sys, Tenants},
    client::{call, list_all, set, show, stage},
    exit,
};
use crate::{client::Client, files};

/// A path segment, percent-encoded (tenant, role and service names are restricted by the
/// server, but a typo must not become another route).
fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(super) async fn tenants(c: &Client, cmd: Tenants, out: Output) -> anyhow::Result<()> {
    match cmd {
        Tenants::Create { name } => show(
            out,
            &call(
                c,
                "create the tenant",
                Method::POST,
                "/v1/tenants",
                Some(json!({ "name": name })),
            )
            .await?,
            None,
        ),
        Tenants::List => show(
            out,
            &list_all(c, "list tenants", "/v1/tenants").await?,
            Some(&["name", "id", "created_at"]),
        ),
        Tenants::Get { name } => show(
            out,
            &call(
                c,
                "read the tenant",
                Method::GET,
                &format!("/v1/tenants/{}", seg(&name)),
                None,
            )
            .await?,
            None,
        ),
    }
    Ok(())
}

pub(super) async fn roles(c: &Client, cmd: Roles, out: Output) -> anyhow::Result<()> {
    let base = |t: &str| format!("/v1/tenants/{}/roles", seg(t));
    let v = match cmd {
        Roles::List { tenant } => {
            let v = list_all(c, "list roles", &base(&tenant)).await?;
            show(out, &v, Some(&["name", "builtin", "permissions"]));
            return Ok(());
        }
        Roles::Get { tenant, name } => {
            let path = format!("{}/{}", base(&tenant), seg(&name));
            call(c, "read the role", Method::GET, &path, None).await?
        }
        Roles::Create {
            tenant,
            name,
            permissions,
        } => {
            let body = json!({ "name": name, "permissions": permissions });
            call(
                c,
                "create the role",
                Method::POST,
                &base(&tenant),
                Some(body),
            )
            .await?
        }
        Roles::Set {
            tenant,
            name,
            permissions,
        } => {
            let path = format!("{}/{}", base(&tenant), seg(&name));
            let body = json!({ "permissions": permissions });
            call(c, "change the role", Method::PUT, &path, Some(body)).await?
        }
        Roles::Delete { tenant, name } => {
            let path = format!("{}/{}", base(&tenant), seg(&name));
            call(c, "delete the role", Method::DELETE, &path, None).await?;
            out!("role {name} deleted");
            return Ok(());
        }
    };
    show(out, &v, None);
    Ok(())
}

pub(super) async fn bindings(c: &Client, cmd: Bindings, out: Output) -> anyhow::Result<()> {
    let base = |t: &str| format!("/v1/tenants/{}/bindings", seg(t));
    let v = match cmd {
        Bindings::List { tenant } => {
            let v = list_all(c, "list bindings", &base(&tenant)).await?;
            show(out, &v, Some(&["identity", "roles", "updated_at"]));
            return Ok(());
        }
        Bindings::Get { tenant, identity } => {
            let path = format!("{}/{}", base(&tenant), seg(&identity));
            call(c, "read the binding", Method::GET, &path, None).await?
        }
        Bindings::Set {
            tenant,
            identity,
            roles,
        } => {
            let path = format!("{}/{}", base(&tenant), seg(&identity));
            let body = json!({ "roles": roles });
            call(c, "bind the roles", Method::PUT, &path, Some(body)).await?
        }
        Bindings::Delete { tenant, identity } => {
            let path = format!("{}/{}", base(&tenant), seg(&identity));
            call(c, "unbind the service", Method::DELETE, &path, None).await?;
            out!("{identity} holds no role in {tenant} now");
            return Ok(());
        }
    };
    show(out, &v, None);
    Ok(())
}

pub(super) async fn root_keys(c: &Client, cmd: RootKeys, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        RootKeys::Create {
            tenant,
            name,
            permissions,
            ttl,
        } => {
            let mut body = json!({ "permissions": permissions });
            set(&mut body, "tenant", tenant);
            set(&mut body, "name", name);
            set(&mut body, "ttl_seconds", ttl);
            call(
                c,
                "create the root key",
                Method::POST,
                "/v1/root-keys",
                Some(body),
            )
            .await?
        }
        RootKeys::List => {
            let v = list_all(c, "list root keys", "/v1/root-keys").await?;
            show(
                out,
                &v,
                Some(&["id", "tenant", "name", "start", "state", "expires_at"]),
            );
            return Ok(());
        }
        RootKeys::Get { id } => {
            let path = format!("/v1/root-keys/{}", seg(&id));
            call(c, "read the root key", Method::GET, &path, None).await?
        }
        RootKeys::Rotate { id, grace } => {
            let mut body = json!({});
            set(&mut body, "grace_seconds", grace);
            let path = format!("/v1/root-keys/{}/rotate", seg(&id));
            call(c, "rotate the root key", Method::POST, &path, Some(body)).await?
        }
        RootKeys::Revoke { id } => {
            let path = format!("/v1/root-keys/{}/revoke", seg(&id));
            call(
                c,
                "revoke the root key",
                Method::POST,
                &path,
                Some(json!({})),
            )
            .await?
        }
    };
    show(out, &v, None);
    Ok(())
}

/// Writes `bytes` to `out` (0644, atomically), or prints them.
fn emit(out: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            let (f, path) = stage(path, files::PUBLIC)?;
            f.commit(bytes)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bytes)?;
            stdout.flush()?;
        }
    }
    Ok(())
}

/// A body the server sends as text (PEM).
async fn text(c: &Client, op: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    Ok(c.call(Method::GET, path, None)
        .await
        .and_then(crate::client::Answer::ok)
        .with_context(|| format!("cannot {op}"))?
        .body)
}

pub(super) async fn pki(c: &Client, cmd: Pki, out: Output) -> anyhow::Result<()> {
    match cmd {
        Pki::Ca { out: file } => {
            emit(
                file.as_deref(),
                &text(c, "read the CA bundle", "/v1/pki/ca").await?,
            )?;
        }
        Pki::Crl { out: file } => {
            let crl = text(c, "read the CRLs", "/v1/pki/crl?issuer=all&format=pem").await?;
            emit(file.as_deref(), &crl)?;
        }
        Pki::Rotate => show(
            out,
            &call(
                c,
                "rotate the issuing CA",
                Method::POST,
                "/v1/pki/rotate",
                Some(json!({})),
            )
            .await?,
            None,
        ),
    }
    Ok(())
}

pub(super) async fn sys(c: &Client, cmd: Sys, out: Output) -> anyhow::Result<()> {
    let v = match cmd {
        Sys::Status => call(c, "read the status", Method::GET, "/v1/sys/status", None).await?,
        Sys::Seal => {
            call(
                c,
                "seal the server",
                Method::POST,
                "/v1/sys/seal",
                Some(json!({})),
            )
            .await?
        }
        Sys::RotateKeyring => {
            call(
                c,
                "rotate the keyring",
                Method::POST,
                "/v1/sys/rotate-keyring",
                Some(json!({})),
            )
            .await?
        }
    };
    show(out, &v, None);
    Ok(())
}

/// `tessera audit list`.
pub(super) async fn audit_list(
    c: &Client,
    limit: u64,
    after_seq: Option<u64>,
    out: Output,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(s) = after_seq {
        path.push_str(&format!("&after_seq={s}"));
    }
    let v = call(c, "read the audit log", Method::GET, &path, None).await?;
    show(
        out,
        &v,
        Some(&[
            "seq",
            "time",
            "principal",
            "action",
            "object",
            "outcome",
            "source",
        ]),
    );
    Ok(())
}

/// `tessera audit check`: exits [`exit::NOT_VALID`] when the chain does not verify.
pub(super) async fn audit_check(c: &Client, out: Output) -> anyhow::Result<i32> {
    let v = call(
        c,
        "have the server verify the audit log",
        Method::GET,
        "/v1/audit/verify",
        None,
    )
    .await?;
    show(out, &v, None);
    Ok(if v["valid"] == Value::Bool(true) {
        exit::OK
    } else {
        exit::NOT_VALID
    })
}

/// `tessera audit checkpoint`.
pub(super) async fn audit_checkpoint(
    c: &Client,
    fresh: bool,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let path = if fresh {
        "/v1/audit/checkpoint?fresh=true"
    } else {
        "/v1/audit/checkpoint"
    };
    let v = call(c, "read the audit checkpoint", Method::GET, path, None).await?;
    let mut text = serde_json::to_vec_pretty(&v)?;
    text.push(b'\n');
    emit(file.as_deref(), &text)
}
