//! `/v1/sys/...`: seal status, unseal with Shamir shares, seal, keyring rotation, backup.

use crate::sync::Locked;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::{
    access::{Permission, authorize},
    app::KeySource,
    crypto::secret::SecretString,
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, Json},
        state::AppState,
    },
    store::{Batch, Recorder},
};

/// `GET /v1/sys/status`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SysStatus {
    sealed: bool,
    initialized: bool,
    key_source: KeySource,
    /// Shares needed to unseal (servers sealed with shares).
    threshold: Option<u8>,
    shares: Option<u8>,
    /// Shares given so far.
    progress: usize,
    /// `null` while sealed.
    keyring: Option<KeyringVersions>,
    version: &'static str,
}

/// The data-key versions: new writes use `current`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyringVersions {
    current: u32,
    versions: Vec<u32>,
}

/// Seal state, and unseal progress while sealed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SealState {
    sealed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<usize>,
}

impl SealState {
    fn sealed(sealed: bool) -> Self {
        Self {
            sealed,
            progress: None,
            threshold: None,
        }
    }
}

fn admin_only(auth: &Authenticated) -> Result<(), ApiError> {
    authorize(&auth.0, Permission::Admin)?;
    if auth.0.is_global_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `GET /v1/sys/status` (anyone).
#[utoipa::path(
    get, path = "/v1/sys/status", tag = "sys", operation_id = "sysStatus",
    responses((status = 200, description = "Seal state, unseal progress and the data-key versions.", body = SysStatus)),
    security(()),
)]
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let seal = state.vault.seal.as_ref();
    let progress = state.unseal_progress.write_locked().len();
    let keyring = state.try_core().map(|c| {
        let (current, versions) = c.admin.key_versions();
        KeyringVersions { current, versions }
    });
    Ok(HttpResponse::Ok().json(SysStatus {
        sealed: state.sealed(),
        initialized: state
            .vault
            .db()
            .and_then(|d| d.initialized())
            .unwrap_or(false),
        key_source: state.vault.key_source(),
        threshold: seal.map(|s| s.threshold),
        shares: seal.map(|s| s.shares),
        progress,
        keyring,
        version: env!("CARGO_PKG_VERSION"),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealBody {
    share: SecretString,
}

/// `POST /v1/sys/unseal {share}` (anyone). Each share is checked on arrival against the hash
/// stored at init; a wrong or repeated share is refused without resetting the others'
/// progress. At the threshold the server unseals.
#[utoipa::path(
    post, path = "/v1/sys/unseal", tag = "sys", operation_id = "unseal",
    request_body = UnsealBody,
    responses(
        (status = 200, description = "Progress: still sealed until `threshold` shares were given.", body = SealState),
        (status = 409, description = "This data directory is not sealed with shares.", body = ErrorBody),
    ),
    security(()),
)]
pub async fn unseal(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<UnsealBody>,
) -> Result<HttpResponse, ApiError> {
    if !state.sealed() {
        return Ok(HttpResponse::Ok().json(SealState::sealed(false)));
    }
    let Some(seal) = state.vault.seal.as_ref() else {
        return Err(ApiError::Conflict(
            "this data directory is not sealed with shares".into(),
        ));
    };
    // Guessing shares is a credential attack like any other: a locked-out source waits.
    if let Some(ip) = state.guard.source(&req)
        && let Some(secs) = state.guard.locked(ip)
    {
        return Err(ApiError::TooManyRequests { retry_after: secs });
    }
    let threshold = usize::from(seal.threshold);
    let (n, bytes) = match state.vault.check_share(body.value.share.expose()) {
        Ok(v) => v,
        Err(_) => {
            if let Some(ip) = state.guard.source(&req) {
                state.guard.failed(ip, "unseal share refused");
            }
            return Err(ApiError::bad(
                "share",
                "must be one of this data directory's shares",
            ));
        }
    };
    let ready = {
        let mut p = state.unseal_progress.write_locked();
        if p.iter().any(|(m, _)| *m == n) {
            return Err(ApiError::bad("share", "was already given"));
        }
        p.push((n, bytes));
        if p.len() < threshold {
            return Ok(HttpResponse::Ok().json(SealState {
                sealed: true,
                progress: Some(p.len()),
                threshold: Some(threshold),
            }));
        }
        std::mem::take(&mut *p)
    };
    let shares: Vec<_> = ready.into_iter().map(|(_, b)| b).collect();
    let master = state.vault.combine(&shares).map_err(|e| {
        tracing::error!(error = %e, "unseal failed");
        ApiError::Internal
    })?;
    let core = state.vault.unseal(master).await.map_err(|e| {
        tracing::error!(error = %e, "unseal failed");
        ApiError::Internal
    })?;
    let core = state.install(core);
    let mut b = Batch::new();
    let rec = crate::audit::AuditContext::system("unseal", state.clock.now());
    rec.record(&mut b, "sys", None)?;
    core.store.commit(b).await?;
    tracing::info!("unsealed");
    Ok(HttpResponse::Ok().json(SealState {
        sealed: false,
        progress: Some(threshold),
        threshold: Some(threshold),
    }))
}

/// `POST /v1/sys/seal` (global admin): every key leaves memory at once.
#[utoipa::path(
    post, path = "/v1/sys/seal", tag = "sys", operation_id = "seal",
    responses((status = 200, description = "Sealed: every key left memory.", body = SealState)),
)]
pub async fn seal(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin_only(&auth)?;
    let core = state.core()?;
    if state.vault.seal.is_none() && state.vault.key_source() != crate::app::KeySource::Shares {
        // Sealing a key-file server is allowed (the key file unseals it at the next start);
        // say so in the answer.
        tracing::warn!("sealed a server whose master key is a file or the environment");
    }
    // Usage counters are flushed first; the entry is written while the store is still open.
    let _ = core.keys.usage().flush().await;
    let mut b = Batch::new();
    audit.record(&mut b, "sys", None)?;
    core.store.commit(b).await?;
    drop(core);
    state.seal();
    state.unseal_progress.write_locked().clear();
    tracing::info!("sealed");
    Ok(HttpResponse::Ok().json(SealState::sealed(true)))
}

/// `POST /v1/sys/rotate-keyring` (global admin): a new data-key version for new writes; a
/// background pass moves old records over, then retires old versions.
#[utoipa::path(
    post, path = "/v1/sys/rotate-keyring", tag = "sys", operation_id = "rotateKeyring",
    responses((status = 200, description = "A new data-key version for new writes.", body = KeyringVersions)),
)]
pub async fn rotate_keyring(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin_only(&auth)?;
    let core = state.core()?;
    let c = core.clone();
    let current = actix_web::rt::task::spawn_blocking(move || c.admin.rotate_keyring(&c.master))
        .await
        .map_err(|_| ApiError::Internal)??;
    let mut b = Batch::new();
    audit.record(&mut b, &format!("data-key-{current}"), None)?;
    core.store.commit(b).await?;
    let (_, versions) = core.admin.key_versions();
    Ok(HttpResponse::Ok().json(KeyringVersions { current, versions }))
}

/// `GET /v1/sys/backup` (global admin): an online, consistent, still-sealed snapshot,
/// authenticated with a key only the master key unlocks (see `store::backup`). Commits wait
/// while it is copied; reads go on. It never holds the master key.
#[utoipa::path(
    get, path = "/v1/sys/backup", tag = "sys", operation_id = "backup",
    responses((status = 200, description = "An online, consistent, still-sealed snapshot, authenticated with a key derived from the keyring (only the master key holder can check or forge it; `tessera restore` reads it).", body = Vec<u8>, content_type = "application/octet-stream")),
)]
pub async fn backup(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin_only(&auth)?;
    let core = state.core()?;
    let mut b = Batch::new();
    audit.record(&mut b, "backup", None)?;
    core.store.commit(b).await?;
    let head = core.store.log_head(crate::audit::LOG).await?;
    let admin = core.admin.clone();
    let entries = actix_web::rt::task::spawn_blocking(move || admin.snapshot())
        .await
        .map_err(|_| ApiError::Internal)??;
    let now = state.clock.now();
    let header = crate::store::backup::Header {
        version: crate::store::backup::VERSION,
        created_at: now,
        data_format: core.admin.format_version(),
        trust_domain: state.config.trust_domain.as_str().to_owned(),
        entries: entries.len() as u64,
        audit_head_seq: head.seq,
        revoked_serials: core
            .pki
            .revoked_serials()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
    };
    let key = core.keyring.pepper().backup_key();
    let bytes = actix_web::rt::task::spawn_blocking(move || {
        crate::store::backup::encode(&header, &entries, &key)
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("cache-control", "no-store"))
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"tessera-{}.backup\"", now.unix()),
        ))
        .body(bytes))
}
