//! `/v1/sys/...`: seal status, unseal with Shamir shares, seal, keyring rotation, backup.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::{
    access::{Permission, authorize},
    app::{
        KeySource,
        runtime::{Unseal, UnsealError},
    },
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
        Err(ApiError::global_admin_only())
    }
}

/// `GET /v1/sys/status` (anyone).
#[utoipa::path(
    get, path = "/v1/sys/status", tag = "sys", operation_id = "sysStatus",
    responses((status = 200, description = "Seal state, unseal progress and the data-key versions.", body = SysStatus)),
    security(()),
)]
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let seal = state.vault().seal.as_ref();
    let progress = state.runtime.unseal_progress();
    let keyring = state.try_core().map(|c| {
        let (current, versions) = c.key_versions();
        KeyringVersions { current, versions }
    });
    Ok(HttpResponse::Ok().json(SysStatus {
        sealed: state.sealed(),
        initialized: state
            .vault()
            .db()
            .and_then(|d| d.initialized())
            .unwrap_or(false),
        key_source: state.vault().key_source(),
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
    if state.runtime.sealed() {
        // Guessing shares is a credential attack like any other: a locked-out source waits.
        if let Some(ip) = state.guard.source(&req)
            && let Some(secs) = state.guard.locked(ip)
        {
            return Err(ApiError::TooManyRequests { retry_after: secs });
        }
    }
    match state
        .runtime
        .unseal_with_share(body.value.share.expose(), state.clock.now())
        .await
    {
        Ok(Unseal::AlreadyUnsealed) => Ok(HttpResponse::Ok().json(SealState::sealed(false))),
        Ok(Unseal::Progress { given, threshold }) => Ok(HttpResponse::Ok().json(SealState {
            sealed: true,
            progress: Some(given),
            threshold: Some(threshold),
        })),
        Ok(Unseal::Unsealed { threshold }) => {
            tracing::info!("unsealed");
            Ok(HttpResponse::Ok().json(SealState {
                sealed: false,
                progress: Some(threshold),
                threshold: Some(threshold),
            }))
        }
        Err(UnsealError::NotShares) => Err(ApiError::Conflict(
            "this data directory is not sealed with shares".into(),
        )),
        Err(UnsealError::Repeated) => Err(ApiError::bad("share", "was already given")),
        Err(UnsealError::Wrong) => {
            if let Some(ip) = state.guard.source(&req) {
                state.guard.failed(ip, "unseal share refused");
            }
            Err(ApiError::bad(
                "share",
                "must be one of this data directory's shares",
            ))
        }
        Err(UnsealError::Failed(e)) => {
            tracing::error!(error = %e, "unseal failed");
            Err(ApiError::Internal)
        }
    }
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
    if state.vault().seal.is_none() && state.vault().key_source() != crate::app::KeySource::Shares {
        // Sealing a key-file server is allowed (the key file unseals it at the next start);
        // say so in the answer.
        tracing::warn!("sealed a server whose master key is a file or the environment");
    }
    // Usage counters are flushed first; the entry is written while the store is still open.
    let _ = core.keys().usage().flush().await;
    let mut b = Batch::new();
    audit.record(&mut b, "sys", None)?;
    core.store().commit(b).await?;
    drop(core);
    state.runtime.seal();
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
    let current = core.rotate_keyring(&*audit).await?;
    let (_, versions) = core.key_versions();
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
    let now = state.clock.now();
    let bytes = core
        .backup(&*audit, state.config.trust_domain.as_str(), now)
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("cache-control", "no-store"))
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"tessera-{}.backup\"", now.unix()),
        ))
        .body(bytes))
}
