//! A tower layer (axum, tonic, hyper): requests without a valid key get a uniform 401; when
//! no answer can be given (stale and refusing, Tessera unreachable) a 503 with
//! `Retry-After`. A valid key's [`Verified`] answer is in the request's extensions.
//!
//! ```no_run
//! # use tessera_verify::{Verifier, tower::VerifyKeyLayer};
//! # fn layer(verifier: Verifier) -> VerifyKeyLayer {
//! VerifyKeyLayer::new(verifier).scopes(&["orders:read"])
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request as HttpRequest, Response, StatusCode, header};

use crate::{
    Verifier,
    gate::{Gate, Outcome, REFUSED, UNAVAILABLE},
    presented_key,
};

/// How the layer learns the end client's identity (a SPIFFE id or `sha256:` fingerprint of
/// its client certificate) from the request's extensions and headers.
pub type IdentityOf =
    Arc<dyn Fn(&http::Extensions, &http::HeaderMap) -> Option<String> + Send + Sync>;

/// The layer: which scopes (and API) every request's key must hold.
#[derive(Clone)]
pub struct VerifyKeyLayer {
    gate: Gate,
    identity: Option<IdentityOf>,
}

impl VerifyKeyLayer {
    /// Requires keys of the verifier's API when it follows one API (`api:<id>`): a key of
    /// another API of the tenant is refused, not accepted.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            gate: Gate::new(verifier),
            identity: None,
        }
    }

    /// With a tenant-scoped verifier: accept a key of any API of the tenant (without this or
    /// [`VerifyKeyLayer::api`], every request is refused: the choice must be made).
    pub fn any_api(mut self) -> Self {
        self.gate.any_api = true;
        self
    }

    /// How to find the end client's identity. Without it, sender-constrained keys are
    /// refused ([`crate::NO_IDENTITY`]).
    pub fn identity(
        mut self,
        f: impl Fn(&http::Extensions, &http::HeaderMap) -> Option<String> + Send + Sync + 'static,
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

impl<S> tower_layer::Layer<S> for VerifyKeyLayer {
    type Service = VerifyKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyKeyService {
            inner,
            config: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct VerifyKeyService<S> {
    inner: S,
    config: VerifyKeyLayer,
}

fn refusal<RB: From<String>>(unavailable: bool) -> Response<RB> {
    let body = if unavailable { UNAVAILABLE } else { REFUSED };
    let mut r = Response::new(RB::from(body.to_owned()));
    *r.status_mut() = if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNAUTHORIZED
    };
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if unavailable {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

impl<S, B, RB> tower_service::Service<HttpRequest<B>> for VerifyKeyService<S>
where
    S: tower_service::Service<HttpRequest<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: From<String> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: HttpRequest<B>) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let key = {
                let h = req.headers();
                let auth = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let x = h.get("x-api-key").and_then(|v| v.to_str().ok());
                presented_key(auth, x).map(|k| zeroize::Zeroizing::new(k.to_owned()))
            };
            let identity = config
                .identity
                .as_ref()
                .and_then(|f| f(req.extensions(), req.headers()));
            match config
                .gate
                .decide(key.as_deref().map(String::as_str), identity.as_deref())
                .await
            {
                Outcome::Pass(verified) => {
                    req.extensions_mut().insert(verified);
                    inner.call(req).await
                }
                Outcome::Refused => Ok(refusal(false)),
                Outcome::Unavailable => Ok(refusal(true)),
            }
        })
    }
}
