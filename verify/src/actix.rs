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

use crate::{
    Verifier,
    gate::{Gate, Outcome, REFUSED, UNAVAILABLE},
    presented_key,
};

/// How a middleware learns the end client's identity (a SPIFFE id or `sha256:` fingerprint
/// of its client certificate), for sender-constrained keys.
pub type IdentityOf = Arc<dyn Fn(&ServiceRequest) -> Option<String> + Send + Sync>;

/// The middleware's configuration: which scopes (and API) every request's key must hold.
#[derive(Clone)]
pub struct VerifyKey {
    gate: Gate,
    identity: Option<IdentityOf>,
}

impl VerifyKey {
    /// Requires keys of the verifier's API when it follows one API (`api:<id>`): a key of
    /// another API of the tenant is refused, not accepted.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            gate: Gate::new(verifier),
            identity: None,
        }
    }

    /// With a tenant-scoped verifier: accept a key of any API of the tenant (without this or
    /// [`VerifyKey::api`], every request is refused: the choice must be made).
    pub fn any_api(mut self) -> Self {
        self.gate.any_api = true;
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
        self.gate.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The API a key must belong to.
    pub fn api(mut self, id: &str) -> Self {
        self.gate.api_id = Some(Arc::from(id));
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

fn refusal(unavailable: bool) -> HttpResponse {
    let mut r = if unavailable {
        HttpResponse::ServiceUnavailable()
    } else {
        HttpResponse::Unauthorized()
    };
    if unavailable {
        r.insert_header((header::RETRY_AFTER, "1"));
    }
    r.content_type("application/json")
        .body(if unavailable { UNAVAILABLE } else { REFUSED })
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
            let identity = config.identity.as_ref().and_then(|f| f(&req));
            match config
                .gate
                .decide(key.as_deref().map(String::as_str), identity.as_deref())
                .await
            {
                Outcome::Pass(verified) => {
                    req.extensions_mut().insert(verified);
                    Ok(service.call(req).await?.map_into_left_body())
                }
                Outcome::Refused => Ok(req.into_response(refusal(false)).map_into_right_body()),
                Outcome::Unavailable => Ok(req.into_response(refusal(true)).map_into_right_body()),
            }
        })
    }
}
