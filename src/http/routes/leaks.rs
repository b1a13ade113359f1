//! Leak reports: `POST /v1/leaks/github` (GitHub's secret scanning partner programme) and
//! `POST /v1/keys/report-leak` (a tenant's own scanners, or anyone holding a key).
//!
//! GitHub signs the raw body with ECDSA P-256 / SHA-256 (`Github-Public-Key-Signature`, base64
//! DER) under a key it names (`Github-Public-Key-Identifier`); Tessera checks it against the
//! public keys pinned in `leaks.github_keys_file` (GitHub's own JSON format) before it reads a
//! single token. A missing or bad signature is a 401 that counts towards the source's lockout.

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use ring::{digest, signature};
use serde::{Deserialize, Serialize};

use crate::{
    audit::AuditContext,
    crypto::{hex, secret::SecretString},
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, Json, raw_body},
        state::AppState,
    },
    ids::TenantName,
    keys::Leak,
    metrics,
    store::{Batch, Recorder, StoreError},
};

/// The most tokens one report may carry.
const MAX_TOKENS: usize = 1000;
/// How much of a report's `url`, `type` and `source` goes into the audit entry.
const MAX_NOTE: usize = 300;

/// GitHub's public keys file (`https://api.github.com/meta/public_keys/secret_scanning`).
#[derive(Deserialize)]
struct GithubKeys {
    public_keys: Vec<GithubKey>,
}

#[derive(Deserialize)]
struct GithubKey {
    key_identifier: String,
    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    key: String,
}

/// One reported token, as GitHub sends it.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct GithubMatch {
    /// The matched text (a secret; never logged, stored or returned).
    #[schema(value_type = String)]
    token: SecretString,
    /// The token type the organisation registered (its key prefix's pattern name).
    #[serde(rename = "type", default)]
    token_type: String,
    /// Where it was found.
    #[serde(default)]
    url: String,
    /// What kind of place (`content`, `commit`, `pull_request_comment`, ...).
    #[serde(default)]
    source: String,
}

/// The feedback GitHub accepts for each token (`leaks.github_feedback = true`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct GithubLabel {
    /// SHA-256 of the token, hex: the token itself never leaves Tessera.
    token_hash: String,
    token_type: String,
    /// `true_positive` (one of this server's keys) or `false_positive`.
    label: &'static str,
}

/// The uncompressed P-256 point of a PEM SubjectPublicKeyInfo, if it is one.
fn p256_point(pem: &str) -> Option<Vec<u8>> {
    use x509_parser::{
        oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY},
        prelude::FromDer,
        x509::SubjectPublicKeyInfo,
    };
    let der = ::pem::parse(pem).ok()?;
    if der.tag() != "PUBLIC KEY" {
        return None;
    }
    let (_, spki) = SubjectPublicKeyInfo::from_der(der.contents()).ok()?;
    let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
    (spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == OID_EC_P256)
        .then(|| spki.subject_public_key.data.to_vec())
}

/// Whether `body` carries a valid signature by the named GitHub key.
async fn signed_by_github(path: &std::path::Path, req: &HttpRequest, body: &[u8]) -> bool {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let (Some(id), Some(sig)) = (
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
    ) else {
        return false;
    };
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
        return false;
    };
    // Read at every report: a job that refreshes the file from GitHub needs no restart.
    let file = path.to_owned();
    let keys = match web::block(move || std::fs::read(file)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read leaks.github_keys_file");
            return false;
        }
        Err(_) => return false,
    };
    let Ok(keys) = serde_json::from_slice::<GithubKeys>(&keys) else {
        tracing::error!(path = %path.display(), "leaks.github_keys_file is not GitHub's public keys JSON");
        return false;
    };
    keys.public_keys
        .iter()
        .filter(|k| k.key_identifier == id)
        .filter_map(|k| p256_point(&k.key))
        .any(|point| {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
                .verify(body, &sig)
                .is_ok()
        })
}

fn note(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NOTE)
        .collect()
}

#[utoipa::path(
    post, path = "/v1/leaks/github", tag = "keys", operation_id = "githubLeakReport",
    request_body(content = Vec<GithubMatch>, description = "GitHub's secret scanning report: the raw body is what `Github-Public-Key-Signature` signs."),
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "Which of GitHub's keys signed the body."),
        ("Github-Public-Key-Signature" = String, Header, description = "ECDSA P-256 SHA-256 signature of the raw body, base64 DER."),
    ),
    responses(
        (status = 204, description = "Checked: every live key among the tokens is revoked (reason `leaked`)."),
        (status = 200, description = "With `leaks.github_feedback`: a label per token.", body = Vec<GithubLabel>),
        (status = 401, description = "The signature is missing or does not verify.", body = ErrorBody),
        (status = 404, description = "Leak reports from GitHub are not configured (`leaks.github_keys_file`).", body = ErrorBody),
    ),
    security(()),
)]
pub async fn github(
    state: web::Data<AppState>,
    audit: Audited,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Some(path) = state.config.leaks.github_keys_file.clone() else {
        return Err(ApiError::NotFound);
    };
    let source = state.guard.source(&req);
    if let Some(ip) = source
        && let Some(secs) = state.guard.locked(ip)
    {
        return Err(ApiError::TooManyRequests { retry_after: secs });
    }
    let body = raw_body(req.clone(), payload.into_inner()).await?;
    if !signed_by_github(&path, &req, &body).await {
        if let Some(ip) = source {
            state.guard.failed(ip, "leak report signature refused");
        }
        return Err(ApiError::Unauthenticated);
    }
    // The parser's own message can quote the input (a token): only its position is said.
    let matches: Vec<GithubMatch> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "body",
            format!(
                "is not a list of {{token, type, url, source}} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if matches.len() > MAX_TOKENS {
        return Err(ApiError::bad(
            "body",
            format!("holds more than {MAX_TOKENS} tokens"),
        ));
    }
    let core = state.core()?;
    audit.set_principal("github-secret-scanning".into(), None);
    let mut labels = Vec::with_capacity(matches.len());
    for m in &matches {
        audit.set_detail(Some(format!(
            "leaked: reported by GitHub secret scanning; type {}; source {}; url {}",
            note(&m.token_type),
            note(&m.source),
            note(&m.url)
        )));
        let leak = core
            .keys()
            .report_leak(&*audit, m.token.expose(), state.clock.now())
            .await?;
        metrics::LEAKS
            .with_label_values(&["github", leak.as_str()])
            .inc();
        if let Leak::Revoked { id, tenant } = &leak {
            tracing::warn!(key = %id, tenant = %tenant, url = %note(&m.url), "revoked a key GitHub found leaked");
        }
        labels.push(GithubLabel {
            token_hash: hex::encode(
                digest::digest(&digest::SHA256, m.token.expose().as_bytes()).as_ref(),
            ),
            token_type: note(&m.token_type),
            label: if leak.is_ours() {
                "true_positive"
            } else {
                "false_positive"
            },
        });
    }
    Ok(if state.config.leaks.github_feedback {
        HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(labels)
    } else {
        HttpResponse::NoContent().finish()
    })
}

/// Records a holder's report in the key's tenant. A tenant principal reporting another
/// tenant's key is not named there (the entry says so instead): one tenant's audit log never
/// shows another tenant's principals. The reporter's own request log line still names it.
struct HolderRecorder<'a> {
    ctx: &'a AuditContext,
    reporter: Option<TenantName>,
}

impl Recorder for HolderRecorder<'_> {
    fn record(
        &self,
        batch: &mut Batch,
        object: &str,
        tenant: Option<&TenantName>,
    ) -> Result<(), StoreError> {
        let stranger =
            matches!((&self.reporter, tenant), (Some(mine), Some(theirs)) if mine != theirs);
        self.ctx.record_as(
            batch,
            object,
            tenant,
            stranger.then_some("a principal of another tenant"),
        )
    }
}

/// `POST /v1/keys/report-leak`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "tsk_..."}))]
pub struct ReportLeak {
    /// The key found leaked.
    #[schema(value_type = String)]
    key: SecretString,
}

#[utoipa::path(
    post, path = "/v1/keys/report-leak", tag = "keys", operation_id = "reportLeakedKey",
    request_body = ReportLeak,
    responses((status = 202, description = "Taken: if it is a live key, it is revoked now (reason `leaked`). The answer is the same whatever the key was, and says nothing about it.")),
)]
pub async fn report(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    body: Json<ReportLeak>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    audit.set_detail(Some("leaked: reported by a holder".into()));
    let rec = HolderRecorder {
        ctx: &audit,
        reporter: auth.0.tenant.clone(),
    };
    let leak = core
        .keys()
        .report_leak(&rec, body.value.key.expose(), state.clock.now())
        .await?;
    metrics::LEAKS
        .with_label_values(&["holder", leak.as_str()])
        .inc();
    if let Leak::Revoked { id, tenant } = &leak {
        tracing::warn!(key = %id, tenant = %tenant, "revoked a key reported leaked");
    }
    Ok(HttpResponse::Accepted().finish())
}
