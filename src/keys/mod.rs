//! The API registry and the API-key domain: issue, list, update, rotate with grace, revoke,
//! verify, usage quotas. No HTTP here; the caller passes the tenants it may see and `now`.

pub mod cache;
mod leaks;
mod lifecycle;
pub mod model;
mod registry;
mod tidy;
pub mod usage;
pub mod verify;

use std::sync::Arc;

use crate::{
    crypto::{CryptoError, keyring::Keyring},
    store::{IndexName, Store, StoreError},
};

pub use leaks::Leak;
pub use lifecycle::{KeyPatch, NewKey, NewRootKey, RotateKey};
pub use registry::{ApiPatch, NewApi};
pub use tidy::KeyCounts;
pub use verify::{CallerIdentity, Code, Verdict, VerifyRequest};

/// Errors of the key domain.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// No such object visible to the caller (missing, or another tenant's).
    #[error("not found")]
    NotFound,
    /// The object's state forbids the change (already rotated, still has active keys, ...).
    #[error("{0}")]
    Conflict(&'static str),
    /// A field's value is not acceptable; nothing was changed.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl KeysError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// How often a read-modify-write retries after losing a race to a concurrent writer.
const RETRIES: usize = 8;

/// Which key space a key call acts in: API keys (`/v1/keys`) or root keys (`/v1/root-keys`).
/// The two never answer for one another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Api,
    Root,
}

impl KeyKind {
    fn of(key: &model::Key) -> Self {
        if key.root { Self::Root } else { Self::Api }
    }
}

/// Runs one read-modify-write `attempt` until it does not lose a compare-and-swap race to a
/// concurrent writer (a [`StoreError::Conflict`]), at most [`RETRIES`] times. Every other
/// outcome, success or error, is final.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, KeysError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KeysError>>,
{
    for _ in 0..RETRIES {
        match attempt().await {
            Err(KeysError::Store(StoreError::Conflict)) => continue,
            other => return other,
        }
    }
    Err(KeysError::Conflict("too many concurrent changes; retry"))
}

/// Index: blind(tenant, API name) -> API id (unique names per tenant).
const IDX_API_NAME: IndexName = IndexName("api_name");
/// Index: `<tenant>/<created millis, 20 digits>/<api id>` -> API id (listing).
const IDX_APIS: IndexName = IndexName("apis");
/// Index: `<api id>/<created millis, 20 digits>/<key id>` -> key id (listing, active-key check).
const IDX_KEYS_BY_API: IndexName = IndexName("keys_by_api");
/// Index: `<end millis, 20 digits>/<key id>` -> key id: keys by when they stopped working.
const IDX_KEY_ENDS: IndexName = IndexName("key_ends");
/// Index: `<tenant>/<created millis>/<key id>` -> key id: root keys, for listing.
const IDX_ROOT_KEYS: IndexName = IndexName("root_keys");
/// Index: tenant name -> the id of the tenant's internal root-key API.
const IDX_ROOT_API: IndexName = IndexName("root_api");
/// Index: blind(key) -> key id (verification look-up).
const IDX_KEY_HASH: IndexName = IndexName("key_hash");

/// Blind-index domain of key look-ups.
const BLIND_KEY: &str = "key";
/// Blind-index domain of API names.
const BLIND_API_NAME: &str = "api-name";

/// The key domain's service.
pub struct Keys {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    usage: Arc<usage::Usage>,
    cache: cache::VerifyCache,
    policies: cache::Policies,
}

impl Keys {
    /// `cache_keys`: how many key records the verification cache holds; `usage_keys`: how many
    /// keys' usage counters stay in memory.
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        cache_keys: usize,
        usage_keys: usize,
    ) -> Self {
        let usage = Arc::new(usage::Usage::new(store.clone(), usage_keys));
        Self {
            store,
            keyring,
            usage,
            cache: cache::VerifyCache::new(cache_keys),
            policies: cache::Policies::new(cache::POLICY_CAPACITY),
        }
    }

    /// Drops a changed key's cached record: after the commit, before the acknowledgement.
    fn changed(&self, key: &model::Key) {
        self.cache.invalidate(&key.lookup);
    }

    /// Commits a batch that changes `keys` and the policies of `apis`, and drops their cached
    /// copies whatever the outcome but a conflict (nothing was applied then; the caller
    /// retries): a write whose flush failed may still be applied, and no cached copy may
    /// outlive it.
    async fn commit_changing(
        &self,
        batch: crate::store::Batch,
        keys: &[&model::Key],
        apis: &[&crate::ids::ApiId],
    ) -> Result<(), KeysError> {
        let result = self.store.commit(batch).await;
        if !matches!(result, Err(StoreError::Conflict)) {
            keys.iter().for_each(|k| self.changed(k));
            apis.iter().for_each(|a| self.policies.invalidate(a));
        }
        Ok(result?)
    }

    /// Applies other nodes' changes to a shared database: a changed key's cached record and
    /// a changed API's policy are dropped (a key that is gone, or `*`: every cached one).
    pub async fn apply_remote(&self, changes: &[crate::store::Changed]) {
        for c in changes {
            match c.kind.as_str() {
                "key" => match crate::store::record::get::<model::Key>(&*self.store, &c.id).await {
                    Ok(Some((_, key))) => self.changed(&key),
                    _ => self.cache.invalidate_all(),
                },
                "usage" => {
                    if let Ok(id) = crate::ids::KeyId::parse(&c.id) {
                        self.usage.forget(&id);
                    }
                }
                "api" => match crate::ids::ApiId::parse(&c.id) {
                    Ok(api) => self.policies.invalidate(&api),
                    Err(_) => self.policies.invalidate_all(),
                },
                "*" => {
                    self.cache.invalidate_all();
                    self.policies.invalidate_all();
                }
                _ => {}
            }
        }
    }

    /// The usage counters, for the background flusher.
    pub fn usage(&self) -> Arc<usage::Usage> {
        self.usage.clone()
    }
}

/// Position of an object in a creation-ordered index: `<unix millis, 20 digits>/<id>`.
fn ordered(created: crate::clock::Timestamp, id: &str) -> String {
    format!("{:020}/{}", created.unix_millis().max(0), id)
}
