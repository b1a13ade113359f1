//! The authenticated caller: by a bearer root key or the connection's certificate
//! ([`Authenticated`]), by the certificate alone ([`AuthenticatedCert`], and
//! [`AuthenticatedConnection`] on routes where `Authorization` belongs to someone else). Every
//! failure is the one uniform 401.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, http::header, web};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::super::{abuse::Decision, error::ApiError, state::AppState};
use crate::app::Core;
use crate::{
    access::{Credential, PermSet, Principal},
    audit::AuditContext,
    clock::Timestamp,
    crypto::apikey::{ApiKey, ROOT_KEY_PREFIX},
    identity::{Serial, SpiffeId, TrustDomain},
    pki::{ceiling::Ceiling, fingerprint},
};

/// per connection (in `on_connect`), checked on every request.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub serial: Serial,
    /// The certificate's URI SAN, if it has exactly one.
    pub uri: Option<String>,
    pub not_after: Timestamp,
    pub fingerprint: String,
    /// The certificate's SubjectPublicKeyInfo (DER), for renewal without a new key.
    pub spki: Vec<u8>,
    /// The permission ceiling the CA signed into it (`None`: no ceiling extension).
    pub ceiling: Option<Ceiling>,
    /// The identity it names, worked out on the connection's first request (see
    /// [`PeerCert::caller`]).
    caller: OnceLock<Option<CertCaller>>,
}

/// The identity a connection's certificate names, and the principal's name for throttles and
/// the audit log: properties of the certificate, so worked out once per connection instead of
/// once per request. Whether the certificate still holds (expiry, revocation) and what its
/// identity may do are checked on every request.
#[derive(Clone, Debug)]
pub struct CertCaller {
    pub id: Arc<SpiffeId>,
    pub name: Arc<str>,
}

impl PeerCert {
    /// The identity of this trust domain the certificate names, if it names exactly one.
    pub fn caller(&self, trust_domain: &TrustDomain) -> Option<&CertCaller> {
        self.caller
            .get_or_init(|| {
                let id = SpiffeId::parse(self.uri.as_deref()?, trust_domain).ok()?;
                Some(CertCaller {
                    name: id.uri().into(),
                    id: Arc::new(id),
                })
            })
            .as_ref()
    }
}

impl PeerCert {
    /// Reads the leaf (`certs[0]`: the client's own certificate, not the last of the chain).
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(leaf).ok()?;
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            serial: Serial::from_bytes(cert.raw_serial()),
            uri: (uris.len() == 1).then(|| uris[0].to_owned()),
            not_after: Timestamp::from_unix(cert.validity().not_after.timestamp()),
            fingerprint: fingerprint(leaf),
            spki: cert.public_key().raw.to_vec(),
            ceiling: Ceiling::of(&cert),
            caller: OnceLock::new(),
        })
    }
}

/// The authenticated caller: a bearer root key when `Authorization` is sent, otherwise the
/// connection's client certificate. Extraction fails with the one uniform 401.
pub struct Authenticated(pub Principal);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(&req).await.map(|(p, _)| Authenticated(p)) })
    }
}

/// The authenticated caller and the certificate it presented on this connection (required:
/// a bearer credential does not satisfy this extractor).
pub struct AuthenticatedCert(pub Principal, pub PeerCert);

impl FromRequest for AuthenticatedCert {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            match authenticate(&req).await? {
                (p, Some(c)) if matches!(p.credential, Credential::Cert { .. }) => {
                    Ok(AuthenticatedCert(p, c.clone()))
                }
                _ => {
                    refuse(&req, "this route takes a client certificate only", None);
                    Err(ApiError::Unauthenticated)
                }
            }
        })
    }
}

/// The caller of a forward-auth route (the gateway), authenticated by the connection's client
/// certificate alone. An `Authorization` header on such a request belongs to the end client
/// and is not read here: it never authenticates the caller, is never parsed as a root key, and
/// never counts against the source's lockout. Extraction fails with the one uniform 401.
pub struct AuthenticatedConnection(pub Principal);

impl FromRequest for AuthenticatedConnection {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or(ApiError::Internal)?;
            let core = state.core()?;
            let Some(peer) = req.conn_data::<PeerCert>() else {
                // No credential of the caller's own. The request middleware throttles such
                // requests per source, except when they carry `Authorization`, which is no
                // credential here: throttle those now.
                if req.headers().contains_key(header::AUTHORIZATION) {
                    throttle_source(&req, state)?;
                }
                refuse(&req, "no client certificate", None);
                return Err(ApiError::Unauthenticated);
            };
            let (principal, name) =
                cert_principal(&req, state, &core, peer, state.clock.now()).await?;
            admit(&req, state, principal, name).map(AuthenticatedConnection)
        })
    }
}

/// Why a request is refused with the uniform 401, left in the request for its log line: a
/// reason in words and the serial of the certificate refused, if one was. Never the credential
/// itself; never in the response.
#[derive(Clone, Debug)]
pub struct AuthRefusal {
    pub reason: String,
    pub serial: Option<Serial>,
}

/// Notes why `req` is refused (see [`AuthRefusal`]).
pub fn refuse(req: &HttpRequest, reason: impl Into<String>, serial: Option<&Serial>) {
    req.extensions_mut().insert(AuthRefusal {
        reason: reason.into(),
        serial: serial.cloned(),
    });
}

/// The authenticated principal's name, left in the request for the audit middleware.
#[derive(Clone, Debug)]
pub struct PrincipalName(pub Arc<str>, pub Option<String>);

/// Authenticates a request. A bearer root key, when sent, is the credential; otherwise the
/// connection's client certificate (see [`cert_principal`]). Every failure is the same 401. A
/// malformed bearer key is refused before any hashing or look-up.
async fn authenticate(req: &HttpRequest) -> Result<(Principal, Option<&PeerCert>), ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::Internal)?;
    let core = state.core()?;
    let now = state.clock.now();
    let peer = req.conn_data::<PeerCert>();
    let (principal, name) = match req.headers().get(header::AUTHORIZATION) {
        Some(h) => {
            let source = state.guard.source(req);
            // A bearer credential is refused at once while its source is locked out.
            if let Some(ip) = source
                && let Some(secs) = state.guard.locked(ip)
            {
                return Err(ApiError::TooManyRequests { retry_after: secs });
            }
            match bearer_principal(&core, h, now).await? {
                Some(p) => {
                    let name = p.name().into();
                    (p, name)
                }
                None => {
                    if let Some(ip) = source {
                        state.guard.failed(ip, "bearer root key refused");
                    }
                    refuse(req, "bearer root key refused", None);
                    return Err(ApiError::Unauthenticated);
                }
            }
        }
        None => {
            let Some(peer) = peer else {
                refuse(req, "no credential", None);
                return Err(ApiError::Unauthenticated);
            };
            cert_principal(req, state, &core, peer, now).await?
        }
    };
    Ok((admit(req, state, principal, name)?, peer))
}

/// The principal of the connection's client certificate, checked on every request: unexpired,
/// not revoked (a keep-alive connection opened before a revocation is refused on its next
/// request), naming one of Tessera's identities. A refused certificate counts against its
/// source; a valid one is never refused for other credentials' failures at the same address.
async fn cert_principal(
    req: &HttpRequest,
    state: &AppState,
    core: &Core,
    peer: &PeerCert,
    now: Timestamp,
) -> Result<(Principal, Arc<str>), ApiError> {
    // Revocation unknown (a node behind other nodes' changes that cannot read the store):
    // refused as unavailable, not as unauthenticated.
    let revoked = core.pki().is_revoked_now(&peer.serial).await?;
    let caller = peer.caller(&state.config.trust_domain);
    let refusal = if peer.not_after <= now {
        Some("client certificate expired")
    } else if revoked {
        Some("client certificate revoked")
    } else if caller.is_none() {
        Some("client certificate names no identity of this trust domain")
    } else {
        None
    };
    let (None, Some(caller)) = (refusal, caller) else {
        if let Some(ip) = state.guard.source(req) {
            state.guard.failed(ip, "client certificate refused");
        }
        refuse(
            req,
            refusal.unwrap_or("client certificate refused"),
            Some(&peer.serial),
        );
        return Err(ApiError::Unauthenticated);
    };
    let principal = core
        .access()
        .principal_for_cert(
            caller.id.clone(),
            peer.serial.clone(),
            peer.fingerprint.clone(),
            peer.ceiling.map(|c| PermSet::from_bits(c.bits())),
        )
        .await?;
    Ok((principal, caller.name.clone()))
}

/// Lets an authenticated principal in: its request rate, then its name (`principal.name()`)
/// for the audit log.
fn admit(
    req: &HttpRequest,
    state: &AppState,
    principal: Principal,
    name: Arc<str>,
) -> Result<Principal, ApiError> {
    let secs = throttled(req, state.guard.principal(&name));
    if secs > 0 {
        return Err(ApiError::TooManyRequests { retry_after: secs });
    }
    let tenant = principal.tenant.as_ref().map(|t| t.as_str().to_owned());
    if let Some(ctx) = req.extensions().get::<Arc<AuditContext>>() {
        ctx.set_principal(name.to_string(), tenant.clone());
    }
    req.extensions_mut().insert(PrincipalName(name, tenant));
    Ok(principal)
}

/// Throttles a request by its source, as the request middleware does for requests without
/// a credential.
fn throttle_source(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(ip) = state.guard.source(req) else {
        return Ok(());
    };
    match throttled(req, state.guard.anonymous(ip)) {
        0 => Ok(()),
        secs => Err(ApiError::TooManyRequests { retry_after: secs }),
    }
}

/// Records a throttle's decision for the `RateLimit-*` headers; the seconds to wait when it
/// refuses (at least 1), 0 when it allows.
fn throttled(req: &HttpRequest, decision: Decision) -> u64 {
    match decision {
        Decision::Allow { limit, remaining } => {
            req.extensions_mut().insert(RateLimitInfo {
                limit,
                remaining,
                reset: 0,
            });
            0
        }
        Decision::Deny { limit, retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            req.extensions_mut().insert(RateLimitInfo {
                limit,
                remaining: 0,
                reset: secs,
            });
            secs.max(1)
        }
    }
}

/// The principal of a bearer root key; `None` if the header or the key is refused. A
/// malformed key is refused before any hashing or look-up.
async fn bearer_principal(
    core: &Core,
    header_value: &header::HeaderValue,
    now: Timestamp,
) -> Result<Option<Principal>, ApiError> {
    let Some(token) = header_value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Ok(None);
    };
    let Ok(key) = ApiKey::parse(token) else {
        return Ok(None);
    };
    if key.prefix() != ROOT_KEY_PREFIX {
        return Ok(None);
    }
    let Some(k) = core.keys().authenticate_root(&key, now).await? else {
        return Ok(None);
    };
    let permissions = crate::access::root_key_permissions(k.scopes.iter().map(|s| s.as_str()));
    Ok(Some(Principal {
        credential: Credential::RootKey { id: k.id },
        tenant: Some(k.tenant),
        roles: Vec::new(),
        permissions,
    }))
}

/// The throttle's state for this request, turned into `RateLimit-*` headers.
#[derive(Clone, Copy, Debug)]
pub struct RateLimitInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a request would be allowed again (0: now).
    pub reset: u64,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::test::TestRequest;

    use super::*;

    fn info(req: &HttpRequest) -> (u32, u32, u64) {
        let i = *req.extensions().get::<RateLimitInfo>().unwrap();
        (i.limit, i.remaining, i.reset)
    }

    fn cert(uris: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["dns.example".to_owned()]).unwrap();
        p.subject_alt_names.extend(
            uris.iter()
                .map(|u| rcgen::SanType::URI((*u).try_into().unwrap())),
        );
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_leaf_names_an_identity_only_with_exactly_one_uri() {
        let one = "spiffe://t.local/tenant/a/svc/b";
        let der = cert(&[one]);
        let peer = PeerCert::from_leaf(&der).unwrap();
        assert_eq!(peer.uri.as_deref(), Some(one));
        assert_eq!(peer.fingerprint, fingerprint(&der));
        // Two URIs: which one is the caller? Neither.
        let two = PeerCert::from_leaf(&cert(&[one, "spiffe://t.local/tenant/a/svc/c"])).unwrap();
        assert_eq!(two.uri, None);
        assert_eq!(PeerCert::from_leaf(&cert(&[])).unwrap().uri, None);
        assert!(PeerCert::from_leaf(&CertificateDer::from(vec![0x30, 0x00])).is_none());
    }

    #[test]
    fn a_throttled_request_waits_whole_seconds_rounded_up() {
        let req = TestRequest::default().to_http_request();
        let allow = Decision::Allow {
            limit: 5,
            remaining: 2,
        };
        assert_eq!(throttled(&req, allow), 0);
        assert_eq!(info(&req), (5, 2, 0));
        // Never a wait of 0 seconds for a refusal, and never one that comes too early.
        for (wait, secs, reset) in [
            (Duration::from_millis(1500), 2, 2),
            (Duration::from_secs(2), 2, 2),
            (Duration::from_millis(1), 1, 1),
            (Duration::ZERO, 1, 0),
        ] {
            let req = TestRequest::default().to_http_request();
            let deny = Decision::Deny {
                limit: 5,
                retry_after: wait,
            };
            assert_eq!(throttled(&req, deny), secs, "{wait:?}");
            assert_eq!(info(&req), (5, 0, reset), "{wait:?}");
        }
    }
}
