//! `/v1/certs`: client certificates — issue, renew, list, read, revoke, verify.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use serde::{Deserialize, Serialize};

use super::ListQuery;
use crate::{
    access::{Credential, Permission, authorize, may_act_on, may_grant, target_tenant},
    clock::Timestamp,
    crypto::secret::SecretString,
    http::{
        error::{ApiError, ErrorBody},
        extract::{Audited, Authenticated, AuthenticatedCert, Json, OptionalJson, Query, Seg},
        idempotency::{self, Reply},
        state::AppState,
    },
    identity::{Identity, Serial, ServiceName, SpiffeId},
    ids::{TenantName, TenantScope},
    metrics,
    page::Page,
    pki::{
        CertVerdict, Issued, KeySource,
        ceiling::Ceiling,
        enrol,
        records::{CertView, RevocationReason},
    },
};

/// `POST /v1/certs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"identity": "orders", "generate": true, "ttl_seconds": 86400}))]
pub struct IssueBody {
    /// Only the global admin names the tenant (default `default`).
    #[serde(default)]
    tenant: Option<TenantName>,
    /// The service name; the certificate names `spiffe://<td>/tenant/<tenant>/svc/<identity>`.
    identity: ServiceName,
    #[serde(default)]
    csr: Option<String>,
    #[serde(default)]
    generate: bool,
    #[serde(default)]
    #[schema(minimum = 1)]
    ttl_seconds: Option<u64>,
}

/// `POST /v1/certs/renew`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ttl_seconds": 86400}))]
pub struct RenewBody {
    /// A new CSR to rotate the key pair; without it the current public key is kept.
    #[serde(default)]
    csr: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1)]
    ttl_seconds: Option<u64>,
}

/// `POST /v1/certs/{serial}/revoke`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = CertRevokeBody)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "key_compromise"}))]
pub struct RevokeBody {
    #[serde(default)]
    reason: Option<RevocationReason>,
}

/// `POST /v1/certs/verify`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// PEM: the leaf, optionally followed by its chain.
    certificate: String,
}

/// `GET /v1/certs?identity=&cursor=&limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CertListQuery {
    /// A service name (in the caller's own tenant; for the global admin, in `default`) or a
    /// full SPIFFE id. Another tenant's identity gives an empty page, exactly like one that
    /// does not exist.
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    #[param(pattern = "^([0-9a-fA-F]{2}){1,128}$")]
    cursor: Option<String>,
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
}

/// The tenant a certificate (or an enrolment token for one) for `identity` is issued in: the
/// caller's, or the one it names if it may; it must exist. No escalation: the identity's
/// bindings may grant nothing the issuer lacks.
async fn issuable(
    auth: &Authenticated,
    core: &crate::app::Core,
    named: Option<TenantName>,
    identity: &ServiceName,
) -> Result<TenantName, ApiError> {
    let tenant = target_tenant(&auth.0, named).map_err(|m| ApiError::bad("tenant", m))?;
    if core.access().tenant(&tenant).await?.is_none() {
        return Err(ApiError::bad("tenant", "must name an existing tenant"));
    }
    let granted = core.access().granted_to(&tenant, identity).await?;
    may_grant(&auth.0, granted)?;
    Ok(tenant)
}

/// An issued certificate as the API returns it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IssuedCert<'a> {
    serial: &'a Serial,
    /// The SPIFFE id the certificate names.
    identity: &'a str,
    tenant: &'a Option<TenantName>,
    /// The leaf, PEM.
    certificate: String,
    /// The issuing CA's certificate (and any intermediate), PEM, leaf's issuer first.
    chain: Vec<String>,
    not_before: Timestamp,
    not_after: Timestamp,
    /// The private key (PKCS#8 PEM), only with `generate: true`: shown this once, never stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key: Option<&'a str>,
}

fn issued_body<'a>(i: &'a Issued, private_key: Option<&'a str>) -> IssuedCert<'a> {
    IssuedCert {
        serial: &i.serial,
        identity: &i.identity,
        tenant: &i.tenant,
        certificate: i.cert_pem(),
        chain: i.chain_pem(),
        not_before: i.not_before,
        not_after: i.not_after,
        private_key,
    }
}

/// A new enrolment token: the token itself is shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EnrolmentTokenBody<'a> {
    id: &'a str,
    /// The single-use token, for `POST /v1/enrol`.
    token: &'a str,
    tenant: &'a TenantName,
    identity: &'a ServiceName,
    expires_at: Timestamp,
}

#[utoipa::path(
    post, path = "/v1/certs", tag = "certs", operation_id = "issueCert",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe: the same key, caller and route within 10 minutes returns the first answer.")),
    request_body = IssueBody,
    responses(
        (status = 201, description = "The certificate (and, with `generate`, its private key, once).", body = IssuedCert,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 409, description = "The Idempotency-Key was used with another request, or its first request is in progress.", body = ErrorBody),
    ),
)]
pub async fn issue(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<IssueBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::CertsIssue)?;
    let idem = idempotency::key_from(&req)?;
    let now = state.clock.now();
    let digest = body.digest;
    let b = body.value;
    let key = match (b.csr, b.generate) {
        (Some(csr), false) => KeySource::Csr(csr),
        (None, true) => KeySource::Generate,
        (Some(_), true) => {
            return Err(ApiError::bad(
                "generate",
                "must not be true when a csr is given",
            ));
        }
        (None, false) => return Err(ApiError::bad("csr", "is required unless generate is true")),
    };
    let ttl = core.pki().ttl(b.ttl_seconds)?;
    let tenant = issuable(&auth, &core, b.tenant, &b.identity).await?;
    let ceiling = Ceiling::from_bits(auth.0.ceiling().bits());
    state
        .idempotency
        .run(
            &core,
            &auth.0.name(),
            req.path(),
            idem,
            digest,
            now,
            || async {
                let (issued, private_key) = core
                    .pki()
                    .issue_service(&*audit, tenant, b.identity, key, ttl, ceiling, now)
                    .await?;
                metrics::CERTS_ISSUED.inc();
                Reply::json(
                    StatusCode::CREATED,
                    &issued_body(&issued, private_key.as_ref().map(|k| k.expose())),
                )
            },
        )
        .await
}

#[utoipa::path(
    post, path = "/v1/certs/renew", tag = "certs", operation_id = "renewCert",
    request_body(content = Option<RenewBody>, description = "Optional: without a CSR the current public key is kept."),
    responses(
        (status = 201, description = "A new certificate for the caller's own identity, with its ceiling; it lives no longer than the renewed one (notAfter - notBefore), nor past its lineage's end.", body = IssuedCert),
        (status = 409, description = "The lineage (the renewals since the first issuance) has reached `certificates.max_lineage_seconds`: issue a new certificate or enrol again. Or a concurrent revocation won.", body = ErrorBody),
    ),
    security(("mtls" = [])),
)]
pub async fn renew(
    auth: AuthenticatedCert,
    audit: Audited,
    state: web::Data<AppState>,
    body: OptionalJson<RenewBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let AuthenticatedCert(principal, peer) = auth;
    // The bootstrap admin credential is never issued (or renewed) through the API.
    if matches!(&principal.credential, Credential::Cert { id, .. } if id.identity == Identity::Admin)
    {
        return Err(ApiError::refused(
            "the bootstrap admin credential is never renewed through the API",
        ));
    }
    let b = body.0.value;
    let issued = core
        .pki()
        .renew(
            &*audit,
            &peer.serial,
            peer.spki,
            peer.ceiling,
            b.csr,
            b.ttl_seconds,
            state.clock.now(),
        )
        .await?;
    metrics::CERTS_ISSUED.inc();
    Reply::json(StatusCode::CREATED, &issued_body(&issued, None)).map(|r| r.to_response(false))
}

#[utoipa::path(
    get, path = "/v1/certs", tag = "certs", operation_id = "listCerts",
    params(CertListQuery),
    responses((status = 200, description = "One page of certificates (metadata only).", body = Page<CertView>)),
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: Query<CertListQuery>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::CertsRead)?;
    let q = q.0;
    let page = ListQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .page()?;
    let identity = match q.identity {
        None => None,
        Some(i) if i.starts_with("spiffe://") => Some(
            SpiffeId::parse(&i, core.pki().trust_domain())
                .map_err(|m| ApiError::bad("identity", m))?,
        ),
        Some(name) => {
            let name = ServiceName::parse(&name).map_err(|m| ApiError::bad("identity", m))?;
            let tenant = match &scope {
                TenantScope::One(own) => own.clone(),
                TenantScope::All => TenantName::default_tenant(),
            };
            Some(SpiffeId::new(
                core.pki().trust_domain().clone(),
                Identity::Service { tenant, name },
            ))
        }
    };
    let page = core
        .pki()
        .list(&scope, identity.as_ref(), &page, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(
    get, path = "/v1/certs/{serial}", tag = "certs", operation_id = "getCert",
    params(("serial" = Serial, Path, description = "The certificate's serial, lowercase hex.")),
    responses((status = 200, description = "The certificate's metadata.", body = CertView)),
)]
pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
    serial: Seg<Serial>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::CertsRead)?;
    let rec = core.pki().get(&scope, &serial).await?;
    Ok(HttpResponse::Ok().json(CertView::new(&rec, state.clock.now())))
}

#[utoipa::path(
    post, path = "/v1/certs/{serial}/revoke", tag = "certs", operation_id = "revokeCert",
    params(("serial" = Serial, Path, description = "The certificate's serial, lowercase hex.")),
    request_body(content = Option<RevokeBody>, description = "Optional: the RFC 5280 reason (default `unspecified`)."),
    responses(
        (status = 200, description = "The certificate, revoked; the next CRL lists it and handshakes with it fail at once. With `key_compromise`, every live certificate of its lineage and every live one holding its key pair (that the caller can see) is revoked with it.", body = CertView),
        (status = 403, description = "The certificate's service is bound to roles granting permissions the caller does not hold.", body = ErrorBody),
        (status = 409, description = "A concurrent change won.", body = ErrorBody),
    ),
)]
pub async fn revoke(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    serial: Seg<Serial>,
    body: OptionalJson<RevokeBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::CertsRevoke)?;
    let reason = body.0.value.reason.unwrap_or(RevocationReason::Unspecified);
    let now = state.clock.now();
    // No acting on a more privileged principal: revoking a service's certificate needs every
    // permission its bound roles grant (404 first for what the caller cannot see). A
    // compromise revocation also ends the certificates sharing the key or the lineage, so the
    // caller must be able to act on each of them: a CSR is public, and a planted certificate
    // with a wider service's public key must not become a way to revoke that service.
    let reach = core
        .pki()
        .revocation_reach(&scope, &serial, reason, now)
        .await?;
    for target in &reach {
        if let Ok(id) = SpiffeId::parse(&target.identity, core.pki().trust_domain())
            && let Identity::Service { tenant, name } = &id.identity
        {
            may_act_on(&auth.0, core.access().granted_to(tenant, name).await?)?;
        }
    }
    let rec = core
        .pki()
        .revoke(
            &*audit,
            &scope,
            &serial,
            reason,
            &reach.iter().map(|c| c.serial.clone()).collect::<Vec<_>>(),
            now,
        )
        .await?;
    Ok(HttpResponse::Ok().json(CertView::new(&rec, now)))
}

#[utoipa::path(
    post, path = "/v1/certs/verify", tag = "certs", operation_id = "verifyCert",
    request_body = VerifyBody,
    responses((status = 200, description = "The verdict: `valid` and a `code`. An untrusted certificate is still a 200.", body = CertVerdict)),
)]
pub async fn verify(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: Json<VerifyBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let scope = authorize(&auth.0, Permission::CertsVerify)?;
    let verdict = core
        .pki()
        .verify_certificate_now(&scope, &body.value.certificate, state.clock.now())
        .await?;
    metrics::CERT_VERIFY
        .with_label_values(&[verdict.code.as_str()])
        .inc();
    Ok(HttpResponse::Ok().json(verdict))
}

/// `POST /v1/enrolment-tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"identity": "orders", "ttl_seconds": 600}))]
pub struct NewEnrolmentToken {
    /// Only the global admin names the tenant (default: the caller's).
    #[serde(default)]
    tenant: Option<TenantName>,
    identity: ServiceName,
    /// How long the token may be used (default 600, at most 86400).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    ttl_seconds: Option<u64>,
}

/// Makes a single-use enrolment token for one identity: the same permission and the same
/// no-escalation rule as issuing that identity a certificate.
#[utoipa::path(
    post, path = "/v1/enrolment-tokens", tag = "certs", operation_id = "createEnrolmentToken",
    request_body = NewEnrolmentToken,
    responses(
        (status = 201, description = "The token, shown this once.", body = EnrolmentTokenBody,
            headers(("cache-control" = String, description = "`no-store`"))),
    ),
)]
pub async fn create_enrolment_token(
    auth: Authenticated,
    audit: Audited,
    state: web::Data<AppState>,
    body: Json<NewEnrolmentToken>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    authorize(&auth.0, Permission::CertsIssue)?;
    let b = body.value;
    let ttl = enrol::token_ttl(b.ttl_seconds)?;
    let tenant = issuable(&auth, &core, b.tenant, &b.identity).await?;
    let (token, secret) = core
        .pki()
        .create_enrolment_token(
            &*audit,
            core.pepper(),
            tenant,
            b.identity,
            ttl,
            auth.0.name(),
            Ceiling::from_bits(auth.0.ceiling().bits()),
            state.clock.now(),
        )
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("cache-control", "no-store"))
        .json(EnrolmentTokenBody {
            id: &token.id,
            token: secret.expose(),
            tenant: &token.tenant,
            identity: &token.identity,
            expires_at: token.expires_at,
        }))
}

/// `POST /v1/enrol` (no credential: the token is one).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolBody {
    token: SecretString,
    /// The identity the token was made for.
    identity: ServiceName,
    csr: String,
    #[serde(default)]
    #[schema(minimum = 1)]
    ttl_seconds: Option<u64>,
}

/// Trades an enrolment token and a CSR for the first certificate. An unknown, used, expired
/// or other identity's token is the uniform 401 and counts towards the source's lockout.
#[utoipa::path(
    post, path = "/v1/enrol", tag = "certs", operation_id = "enrol",
    request_body = EnrolBody,
    responses(
        (status = 201, description = "The workload's first certificate.", body = IssuedCert),
        (status = 401, description = "The token is unknown, used, expired or for another identity (counts towards the source's lockout).", body = ErrorBody),
    ),
    security(()),
)]
pub async fn enrol(
    audit: Audited,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<EnrolBody>,
) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    // A source locked out for failed credentials is refused before the token is looked at.
    let source = state.guard.source(&req);
    if let Some(retry_after) = source.and_then(|ip| state.guard.locked(ip)) {
        return Err(ApiError::TooManyRequests { retry_after });
    }
    let b = body.value;
    let issued = core
        .pki()
        .enrol(
            &*audit,
            core.pepper(),
            b.token.expose(),
            &b.identity,
            b.csr,
            b.ttl_seconds,
            state.clock.now(),
        )
        .await?;
    match issued {
        Some(issued) => {
            metrics::CERTS_ISSUED.inc();
            Ok(HttpResponse::Created().json(issued_body(&issued, None)))
        }
        None => {
            if let Some(ip) = source {
                state.guard.failed(ip, "enrolment token refused");
            }
            crate::http::extract::refuse(&req, "enrolment token refused", None);
            Err(ApiError::Unauthenticated)
        }
    }
}
