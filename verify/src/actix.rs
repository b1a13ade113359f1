//! An actix-web middleware: requests without a valid key get a uniform 401; when no answer
//! can be given (stale and refusing, Tessera unreachable) a 503 with `Retry-After`. A valid
//! key's [`Verified`] answer is in the request's extensions.
//!
//! ```no_run
//! # use tessera_verify::{Verifier, actix::VerifyKey};
//! # fn app(verifier: Verifier) {
//! use actix_web::{App, web};
//! let app = App::new()
//!     .wrap(VerifyKey::new(verifier).scopes(&["orders:read"]))
//!     .route("/orders", web::get().to(|| async { "ok" }));
//! # }
//! ```

use std::{
    future::{Future, Ready, ready},
    pin::Pin,
    rc::Rc,
    sync::Arc,
};

use actix_web::{
    Error, HttpMessage, HttpResponse,
    body::{EitherBody, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready},
    http::header,
};

use crate::{Decision, Request, Verified, Verifier, presented_key};

/// How a middleware learns the end client's identity (a SPIFFE id or `sha256:` fingerprint
/// of its client certificate), for sender-constrained keys.
pub type IdentityOf = Arc<dyn Fn(&ServiceRequest) -> Option<String> + Send + Sync>;

/// The middleware's configuration: which scopes (and API) every request's key must hold.
#[derive(Clone)]
pub struct VerifyKey {
    verifier: Verifier,
    scopes: Arc<[String]>,
    api_id: Option<Arc<str>>,
    any_api: bool,
    identity: Option<IdentityOf>,
}

impl VerifyKey {
    /// Requires keys of the verifier's API when it follows one API (`api:<id>`): a key of
    /// another API of the tenant is refused, not accepted.
    pub fn new(verifier: Verifier) -> Self {
        let api_id = verifier.scope_api().map(Arc::from);
        Self {
            verifier,
            scopes: Arc::from(Vec::new()),
            api_id,
            any_api: false,
            identity: None,
        }
    }

    /// With a tenant-scoped verifier: accept a key of any API of the tenant (without this or
    /// [`VerifyKey::api`], every request is refused: the choice must be made).
    pub fn any_api(mut self) -> Self {
        self.any_api = true;
        self
    }

    /// How to find the end client's identity (e.g. from its client certificate). Without
    /// it, sender-constrained keys are refused ([`crate::NO_IDENTITY`]).
    pub fn identity(
        mut self,
        f: impl Fn(&ServiceRequest) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.identity = Some(Arc::new(f));
        self
    }

    /// The scopes a key must hold.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The API a key must belong to.
    pub fn api(mut self, id: &str) -> Self {
        self.api_id = Some(Arc::from(id));
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for VerifyKey
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = VerifyKeyMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(VerifyKeyMiddleware {
            service: Rc::new(service),
            config: self.clone(),
        }))
    }
}

pub struct VerifyKeyMiddleware<S> {
    service: Rc<S>,
    config: VerifyKey,
}

fn refusal(status: u16) -> HttpResponse {
    let (code, message) = if status == 503 {
        ("unavailable", "the key cannot be verified right now")
    } else {
        ("unauthenticated", "a valid API key is required")
    };
    let mut r = if status == 503 {
        HttpResponse::ServiceUnavailable()
    } else {
        HttpResponse::Unauthorized()
    };
    if status == 503 {
        r.insert_header((header::RETRY_AFTER, "1"));
    }
    r.json(serde_json::json!({"error": {"code": code, "message": message}}))
}

impl<S, B> Service<ServiceRequest> for VerifyKeyMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let key = {
                let h = req.headers();
                let auth = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let x = h.get("x-api-key").and_then(|v| v.to_str().ok());
                presented_key(auth, x).map(|k| zeroize::Zeroizing::new(k.to_owned()))
            };
            let Some(key) = key else {
                return Ok(req.into_response(refusal(401)).map_into_right_body());
            };
            if config.api_id.is_none() && !config.any_api {
                tracing::error!(
                    "VerifyKey on a tenant-scoped verifier needs .api(id) or .any_api(): refusing"
                );
                return Ok(req.into_response(refusal(401)).map_into_right_body());
            }
            let identity = config.identity.as_ref().and_then(|f| f(&req));
            let scopes: Vec<&str> = config.scopes.iter().map(String::as_str).collect();
            let decision = config
                .verifier
                .verify(&Request {
                    key: &key,
                    api_id: config.api_id.as_deref(),
                    scopes: &scopes,
                    presented_identity: Some(identity.as_deref().unwrap_or(crate::NO_IDENTITY)),
                })
                .await;
            match decision {
                Decision::Answer { verdict, source } if verdict.valid => {
                    req.extensions_mut().insert(Verified { verdict, source });
                    Ok(service.call(req).await?.map_into_left_body())
                }
                Decision::Answer { .. } => {
                    Ok(req.into_response(refusal(401)).map_into_right_body())
                }
                Decision::Unavailable => Ok(req.into_response(refusal(503)).map_into_right_body()),
            }
        })
    }
}
