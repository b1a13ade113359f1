//! What the two middlewares share: the requirements a request's key must meet, the decision,
//! and the refusals' bodies.

use std::sync::Arc;

use crate::{
    Verifier,
    answer::{Decision, NO_IDENTITY, Request, Verified},
};

/// The body of every 401: the same whatever was wrong with the key.
pub(crate) const REFUSED: &str =
    r#"{"error":{"code":"unauthenticated","message":"a valid API key is required"}}"#;
/// The body of a 503 (no answer can be given now).
pub(crate) const UNAVAILABLE: &str =
    r#"{"error":{"code":"unavailable","message":"the key cannot be verified right now"}}"#;

/// Which scopes (and API) a key must hold.
#[derive(Clone)]
pub(crate) struct Gate {
    pub(crate) verifier: Verifier,
    pub(crate) scopes: Arc<[String]>,
    pub(crate) api_id: Option<Arc<str>>,
    pub(crate) any_api: bool,
}

pub(crate) enum Outcome {
    Pass(Verified),
    /// A uniform 401.
    Refused,
    /// A 503 with `Retry-After`.
    Unavailable,
}

impl Gate {
    /// Requires keys of the verifier's API when it follows one API (`api:<id>`).
    pub(crate) fn new(verifier: Verifier) -> Self {
        let api_id = verifier.scope_api().map(Arc::from);
        Self {
            verifier,
            scopes: Arc::from(Vec::new()),
            api_id,
            any_api: false,
        }
    }

    /// The decision for a request presenting `key` (if any) from an end client whose
    /// identity is `identity` (if known: else [`NO_IDENTITY`], so a sender-constrained key
    /// is refused rather than compared with the verifier's own certificate).
    pub(crate) async fn decide(&self, key: Option<&str>, identity: Option<&str>) -> Outcome {
        let Some(key) = key else {
            return Outcome::Refused;
        };
        if self.api_id.is_none() && !self.any_api {
            tracing::error!(
                "a tenant-scoped verifier's middleware needs .api(id) or .any_api(): refusing"
            );
            return Outcome::Refused;
        }
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let decision = self
            .verifier
            .verify(&Request {
                key,
                api_id: self.api_id.as_deref(),
                scopes: &scopes,
                presented_identity: Some(identity.unwrap_or(NO_IDENTITY)),
            })
            .await;
        match decision {
            Decision::Answer { verdict, source } if verdict.valid => {
                Outcome::Pass(Verified { verdict, source })
            }
            Decision::Answer { .. } => Outcome::Refused,
            Decision::Unavailable => Outcome::Unavailable,
        }
    }
}
