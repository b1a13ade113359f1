//! The life of an API key: issue, read, update, rotate with grace, revoke.

use serde::Deserialize;

use super::{
    BLIND_KEY, IDX_KEY_ENDS, IDX_KEY_HASH, IDX_KEYS_BY_API, IDX_ROOT_KEYS, KeyKind, Keys,
    KeysError,
    model::{
        Api, ApiKeysMarker, BoundTo, Key, KeyRevocationReason, KeyView, MAX_GRACE_SECS,
        MAX_TTL_SECS, Metadata, RateLimit, Refill, Scopes, Text, UsageRecord, double_option,
    },
    ordered, retrying,
};
use crate::{
    clock::Timestamp,
    crypto::apikey::ApiKey,
    ids::{ApiId, KeyId, TenantScope},
    page::{Page, PageRequest},
    store::{self, Batch, Expect, Record, Recorder, Rev},
};

/// `POST /v1/apis/{api_id}/keys`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "portal customer 42", "scopes": ["orders:read", "orders:write"], "metadata": {"plan": "pro"}, "ttl_seconds": 7776000, "remaining": 1000, "refill": {"amount": 1000, "interval_seconds": 86400}}))]
pub struct NewKey {
    #[serde(default)]
    pub name: Option<Text<200>>,
    #[serde(default)]
    pub scopes: Option<Scopes>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub remaining: Option<u64>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Sender constraint: the SPIFFE id or `sha256:` certificate fingerprint that must
    /// present the key.
    #[serde(default)]
    pub bound_to: Option<BoundTo>,
    /// At most `limit` VALID answers per `window_seconds` (default: the API's).
    #[serde(default)]
    pub ratelimit: Option<RateLimit>,
    /// Resets `remaining` to `amount` every `interval_seconds` (needs `remaining`).
    #[serde(default)]
    pub refill: Option<Refill>,
}

/// `PATCH /v1/keys/{id}`: absent fields stay; `null` clears `name`, `expires_at`,
/// `remaining` (unlimited).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"scopes": ["orders:read"], "enabled": false}))]
pub struct KeyPatch {
    #[serde(default, deserialize_with = "double_option")]
    pub name: Option<Option<Text<200>>>,
    #[serde(default)]
    pub scopes: Option<Scopes>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    pub expires_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "double_option")]
    pub remaining: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub bound_to: Option<Option<BoundTo>>,
    #[serde(default, deserialize_with = "double_option")]
    pub ratelimit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "double_option")]
    pub refill: Option<Option<Refill>>,
}

/// `POST /v1/root-keys`: a root key's name, permissions (as scopes) and lifetime. The tenant
/// is decided by the caller's authority, not here.
#[derive(Debug, Default)]
pub struct NewRootKey {
    pub name: Option<Text<200>>,
    pub permissions: Scopes,
    pub expires_at: Option<Timestamp>,
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/keys/{id}/rotate`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"grace_seconds": 3600}))]
pub struct RotateKey {
    /// How long the old key keeps working (default 0: it stops now).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub grace_seconds: u64,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    pub ttl_seconds: Option<u64>,
}

const REFILL_NEEDS_REMAINING: &str = "needs a remaining quota to refill";

/// The expiry a new key gets from an explicit time or lifetime.
fn expiry(
    expires_at: Option<Timestamp>,
    ttl_seconds: Option<u64>,
    now: Timestamp,
) -> Result<Option<Timestamp>, KeysError> {
    match (expires_at, ttl_seconds) {
        (Some(_), Some(_)) => Err(KeysError::invalid(
            "ttl_seconds",
            "must not be given together with expires_at",
        )),
        (Some(t), None) => {
            check_future(t, now, "expires_at")?;
            Ok(Some(t))
        }
        (None, Some(ttl)) if (1..=MAX_TTL_SECS).contains(&ttl) => Ok(Some(now.plus_secs(ttl))),
        (None, Some(_)) => Err(KeysError::invalid(
            "ttl_seconds",
            "must be between 1 and 315360000",
        )),
        (None, None) => Ok(None),
    }
}

fn check_future(t: Timestamp, now: Timestamp, field: &'static str) -> Result<(), KeysError> {
    if t <= now {
        return Err(KeysError::invalid(field, "must be in the future"));
    }
    if t > now.plus_secs(MAX_TTL_SECS) {
        return Err(KeysError::invalid(field, "must be at most 10 years ahead"));
    }
    Ok(())
}

impl Keys {
    /// Adds to `b` everything a new key needs: its record, its look-up and listing index
    /// entries, its usage record, and the conditions on its API.
    fn add_new_key(
        &self,
        b: &mut Batch,
        api: (&Api, Rev),
        key: &Key,
        secret: &ApiKey,
        remaining: Option<u64>,
    ) -> Result<(), KeysError> {
        b.check(Api::KIND, api.0.id.as_str(), Expect::Rev(api.1));
        b.put_record(api.0.id.as_str(), &ApiKeysMarker {}, Expect::Any)?;
        b.put_record(key.id.as_str(), key, Expect::Absent)?;
        debug_assert_eq!(
            key.lookup,
            self.keyring
                .pepper()
                .blind_index(BLIND_KEY, secret.expose().as_bytes())
        );
        b.index_put(IDX_KEY_HASH, &key.lookup, key.id.as_str(), true);
        track_end(b, None, key);
        b.index_put(
            IDX_KEYS_BY_API,
            key_position(key).as_bytes(),
            key.id.as_str(),
            false,
        );
        if key.root {
            b.index_put(
                IDX_ROOT_KEYS,
                root_position(key).as_bytes(),
                key.id.as_str(),
                false,
            );
        }
        if remaining.is_some() {
            let usage = UsageRecord {
                remaining,
                ..UsageRecord::default()
            };
            b.put_record(key.id.as_str(), &usage, Expect::Absent)?;
        }
        feed_event(b, "key.created", key, key.created_at)?;
        Ok(())
    }

    fn new_key_record(&self, secret: &ApiKey, api: &Api, now: Timestamp) -> Result<Key, KeysError> {
        Ok(Key {
            id: KeyId::generate()?,
            tenant: api.tenant.clone(),
            api_id: api.id.clone(),
            name: None,
            hash: self
                .keyring
                .pepper()
                .verification_hash(secret.expose().as_bytes()),
            lookup: self
                .keyring
                .pepper()
                .blind_index(BLIND_KEY, secret.expose().as_bytes()),
            start: secret.start(),
            scopes: api.key_defaults.scopes.clone(),
            metadata: Metadata::default(),
            enabled: true,
            created_at: now,
            updated_at: now,
            expires_at: None,
            revoked_at: None,
            superseded_by: None,
            stops_at: None,
            replaces: None,
            root: api.internal,
            bound_to: None,
            ratelimit: None,
            refill: None,
            budget: None,
            budget_since: None,
            quota: Some(false),
            revocation_reason: None,
        })
    }

    /// Issues a key under an API. The secret is returned here and never again.
    pub async fn issue_key(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        api_id: &ApiId,
        input: NewKey,
        now: Timestamp,
    ) -> Result<(KeyView, ApiKey), KeysError> {
        if input.refill.is_some() && input.remaining.is_none() {
            return Err(KeysError::invalid("refill", REFILL_NEEDS_REMAINING));
        }
        let input = &input;
        retrying(|| async move {
            let (api_rev, api) = self.visible_api(scope, api_id).await?;
            self.issue_in(rec, (&api, api_rev), input, now).await
        })
        .await
    }

    /// Issues a root key for a tenant: a `tsr_` key under the tenant's internal API, whose
    /// scopes are its permissions. Stored, verified, rotated and revoked like any key.
    pub async fn issue_root_key(
        &self,
        rec: &dyn Recorder,
        tenant: &crate::ids::TenantName,
        input: NewRootKey,
        now: Timestamp,
    ) -> Result<(KeyView, ApiKey), KeysError> {
        let as_key = NewKey {
            name: input.name,
            scopes: Some(input.permissions),
            expires_at: input.expires_at,
            ttl_seconds: input.ttl_seconds,
            ..NewKey::default()
        };
        let as_key = &as_key;
        retrying(|| async move {
            let (api_rev, api) = self.root_api(tenant, now).await?;
            self.issue_in(rec, (&api, api_rev), as_key, now).await
        })
        .await
    }

    /// Issues `n` keys under an API in batches of `batch` per durable commit (imports,
    /// benchmarks). Returns the secrets, in order.
    pub async fn bulk_issue(
        &self,
        scope: &TenantScope,
        api_id: &ApiId,
        n: usize,
        batch: usize,
        now: Timestamp,
    ) -> Result<Vec<ApiKey>, KeysError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (api_rev, api) = self.visible_api(scope, api_id).await?;
            let mut b = Batch::new();
            let mut secrets = Vec::new();
            for _ in 0..batch.min(n - out.len()) {
                let secret = ApiKey::generate(&api.key_prefix)?;
                let key = self.new_key_record(&secret, &api, now)?;
                self.add_new_key(&mut b, (&api, api_rev), &key, &secret, None)?;
                secrets.push(secret);
            }
            self.store.commit(b).await?;
            out.extend(secrets);
        }
        Ok(out)
    }

    /// One attempt at issuing a key under `api`; a conflict means the caller retries.
    async fn issue_in(
        &self,
        rec: &dyn Recorder,
        api: (&Api, Rev),
        input: &NewKey,
        now: Timestamp,
    ) -> Result<(KeyView, ApiKey), KeysError> {
        let (api, api_rev) = api;
        let expires_at = match expiry(input.expires_at, input.ttl_seconds, now)? {
            Some(t) => Some(t),
            None => api.key_defaults.ttl_seconds.map(|t| now.plus_secs(t)),
        };
        let secret = ApiKey::generate(&api.key_prefix)?;
        let mut key = self.new_key_record(&secret, api, now)?;
        key.name = input.name.clone();
        if let Some(s) = &input.scopes {
            key.scopes = s.clone();
        }
        key.metadata = input.metadata.clone().unwrap_or_default();
        key.enabled = input.enabled.unwrap_or(true);
        key.expires_at = expires_at;
        key.bound_to = input.bound_to.clone();
        key.ratelimit = input.ratelimit.or(api.key_defaults.ratelimit);
        key.refill = input.refill;
        key.quota = Some(input.remaining.is_some());
        let mut b = Batch::new();
        self.add_new_key(&mut b, (api, api_rev), &key, &secret, input.remaining)?;
        rec.record(&mut b, key.id.as_str(), Some(&key.tenant))?;
        self.store.commit(b).await?;
        let usage = UsageRecord {
            remaining: input.remaining,
            ..UsageRecord::default()
        };
        Ok((KeyView::new(&key, &usage, now), secret))
    }

    /// The key with its revision, if the caller may see it in this key space (root keys and
    /// API keys never answer for one another).
    async fn visible_key(
        &self,
        scope: &TenantScope,
        id: &KeyId,
        kind: KeyKind,
    ) -> Result<(Rev, Key), KeysError> {
        match store::record::get::<Key>(&*self.store, id.as_str()).await? {
            Some((rev, k)) if scope.allows(&k.tenant) && KeyKind::of(&k) == kind => Ok((rev, k)),
            _ => Err(KeysError::NotFound),
        }
    }

    pub async fn get_key(
        &self,
        scope: &TenantScope,
        kind: KeyKind,
        id: &KeyId,
        now: Timestamp,
    ) -> Result<KeyView, KeysError> {
        let (_, k) = self.visible_key(scope, id, kind).await?;
        let usage = self.usage.current(&k, now).await?;
        Ok(KeyView::new(&k, &usage, now))
    }

    pub async fn list_keys(
        &self,
        scope: &TenantScope,
        api_id: &ApiId,
        page: &PageRequest,
        now: Timestamp,
    ) -> Result<Page<KeyView>, KeysError> {
        self.visible_api(scope, api_id).await?;
        let prefix = format!("{}/", api_id.as_str());
        self.page_of(
            IDX_KEYS_BY_API,
            prefix.as_bytes(),
            scope,
            KeyKind::Api,
            page,
            now,
        )
        .await
    }

    /// Root keys, oldest first, of the tenants the caller may see.
    pub async fn list_root_keys(
        &self,
        scope: &TenantScope,
        page: &PageRequest,
        now: Timestamp,
    ) -> Result<Page<KeyView>, KeysError> {
        let prefix = match scope {
            TenantScope::All => String::new(),
            TenantScope::One(t) => format!("{}/", t.as_str()),
        };
        self.page_of(
            IDX_ROOT_KEYS,
            prefix.as_bytes(),
            scope,
            KeyKind::Root,
            page,
            now,
        )
        .await
    }

    /// One page of keys from an index.
    async fn page_of(
        &self,
        index: store::IndexName,
        prefix: &[u8],
        scope: &TenantScope,
        kind: KeyKind,
        page: &PageRequest,
        now: Timestamp,
    ) -> Result<Page<KeyView>, KeysError> {
        crate::page::from_index(&*self.store, index, prefix, page, |id| async move {
            match store::record::get::<Key>(&*self.store, &id).await? {
                Some((_, k)) if scope.allows(&k.tenant) && KeyKind::of(&k) == kind => {
                    let usage = self.usage.current(&k, now).await?;
                    Ok::<_, KeysError>(Some(KeyView::new(&k, &usage, now)))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    pub async fn update_key(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        kind: KeyKind,
        id: &KeyId,
        patch: KeyPatch,
        now: Timestamp,
    ) -> Result<KeyView, KeysError> {
        if let Some(Some(t)) = patch.expires_at {
            check_future(t, now, "expires_at")?;
        }
        let patch = &patch;
        let k = retrying(|| async move {
            let (rev, mut k) = self.visible_key(scope, id, kind).await?;
            let before = k.clone();
            if k.revoked_at.is_some() {
                return Err(KeysError::Conflict("the key is revoked"));
            }
            if let Some(v) = &patch.name {
                k.name = v.clone();
            }
            if let Some(v) = &patch.scopes {
                k.scopes = v.clone();
            }
            if let Some(v) = &patch.metadata {
                k.metadata = v.clone();
            }
            if let Some(v) = patch.enabled {
                k.enabled = v;
            }
            if let Some(v) = patch.expires_at {
                k.expires_at = v;
            }
            if let Some(r) = patch.remaining {
                k.quota = Some(r.is_some());
            }
            if let Some(v) = &patch.bound_to {
                k.bound_to = v.clone();
            }
            if let Some(v) = patch.ratelimit {
                k.ratelimit = v;
            }
            if let Some(v) = patch.refill {
                let remaining = match patch.remaining {
                    Some(r) => r,
                    None => self.usage.current(&k, now).await?.remaining,
                };
                if v.is_some() && remaining.is_none() {
                    return Err(KeysError::invalid("refill", REFILL_NEEDS_REMAINING));
                }
                k.refill = v;
            }
            k.updated_at = now;
            let mut b = Batch::new();
            b.put_record(id.as_str(), &k, Expect::Rev(rev))?;
            track_end(&mut b, Some(&before), &k);
            let change = match (before.enabled, k.enabled) {
                (true, false) => "key.disabled",
                (false, true) => "key.enabled",
                _ => "key.changed",
            };
            feed_event(&mut b, change, &k, now)?;
            rec.record(&mut b, k.id.as_str(), Some(&k.tenant))?;
            self.commit_changing(b, &[&k], &[]).await?;
            Ok(k)
        })
        .await?;
        // After the commit, outside the retries: nothing below may re-run the change.
        let refill_from = matches!(patch.refill, Some(Some(_))).then_some(now);
        if patch.remaining.is_some() || refill_from.is_some() {
            self.usage
                .set_quota(k.budget_id(), patch.remaining, refill_from)
                .await?;
        }
        let usage = self.usage.current(&k, now).await?;
        Ok(KeyView::new(&k, &usage, now))
    }

    /// Replaces a key with a new one (new id, new secret, same API, name, scopes, metadata,
    /// remaining quota). The old key keeps working for `grace_seconds`, then answers EXPIRED.
    /// Exactly one of several concurrent rotations of a key wins; the others get a conflict.
    pub async fn rotate_key(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        kind: KeyKind,
        id: &KeyId,
        input: RotateKey,
        now: Timestamp,
    ) -> Result<(KeyView, ApiKey), KeysError> {
        if input.grace_seconds > MAX_GRACE_SECS {
            return Err(KeysError::invalid(
                "grace_seconds",
                "must be at most 2592000 (30 days)",
            ));
        }
        let explicit = expiry(input.expires_at, input.ttl_seconds, now)?;
        let grace = input.grace_seconds;
        let (new, secret) = retrying(|| async move {
            let (rev, mut old) = self.visible_key(scope, id, kind).await?;
            if old.superseded_by.is_some() {
                return Err(KeysError::Conflict("the key has already been rotated"));
            }
            if old.revoked_at.is_some() {
                return Err(KeysError::Conflict("the key is revoked"));
            }
            if old.is_expired(now) {
                return Err(KeysError::Conflict("the key has expired"));
            }
            let (api_rev, api) = self.api_in_scope(scope, &old.api_id, kind).await?;
            let secret = ApiKey::generate(&api.key_prefix)?;
            let mut new = self.new_key_record(&secret, &api, now)?;
            new.name = old.name.clone();
            new.scopes = old.scopes.clone();
            new.metadata = old.metadata.clone();
            new.enabled = old.enabled;
            new.replaces = Some(old.id.clone());
            new.bound_to = old.bound_to.clone();
            new.ratelimit = old.ratelimit;
            new.refill = old.refill;
            // One budget for the whole chain: the old key spends from it during its grace.
            new.budget = Some(old.budget_id().clone());
            new.budget_since = Some(old.budget_since.unwrap_or(old.created_at));
            // Without an explicit expiry the new key gets the old one's original lifetime.
            new.expires_at = explicit.or_else(|| {
                old.expires_at.map(|e| {
                    let lifetime = e.unix_millis() - old.created_at.unix_millis();
                    Timestamp::from_unix_millis(now.unix_millis().saturating_add(lifetime.max(0)))
                })
            });

            let before = old.clone();
            old.superseded_by = Some(new.id.clone());
            old.stops_at = Some(now.plus_secs(grace));
            old.updated_at = now;

            let mut b = Batch::new();
            b.put_record(old.id.as_str(), &old, Expect::Rev(rev))?;
            track_end(&mut b, Some(&before), &old);
            feed_event(&mut b, "key.rotated", &old, now)?;
            // No usage record of its own: the chain's stays where it is.
            self.add_new_key(&mut b, (&api, api_rev), &new, &secret, None)?;
            rec.record(&mut b, new.id.as_str(), Some(&new.tenant))?;
            self.commit_changing(b, &[&old], &[]).await?;
            Ok((new, secret))
        })
        .await?;
        let usage = self.usage.current(&new, now).await?;
        Ok((KeyView::new(&new, &usage, now), secret))
    }

    /// Revokes a key at once (`reason`: why, when not a principal's request). Revoking a
    /// revoked key changes nothing and succeeds.
    pub async fn revoke_key(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        kind: KeyKind,
        id: &KeyId,
        reason: Option<KeyRevocationReason>,
        now: Timestamp,
    ) -> Result<KeyView, KeysError> {
        retrying(|| async move {
            let (rev, mut k) = self.visible_key(scope, id, kind).await?;
            if k.revoked_at.is_none() {
                let before = k.clone();
                k.revoked_at = Some(now);
                k.revocation_reason = reason;
                k.updated_at = now;
                let mut b = Batch::new();
                b.put_record(id.as_str(), &k, Expect::Rev(rev))?;
                track_end(&mut b, Some(&before), &k);
                feed_event(&mut b, "key.revoked", &k, now)?;
                rec.record(&mut b, k.id.as_str(), Some(&k.tenant))?;
                self.commit_changing(b, &[&k], &[]).await?;
            } else {
                // Already revoked (perhaps by an earlier attempt whose flush failed after the
                // write was applied): make sure no cached copy says otherwise.
                self.changed(&k);
            }
            let usage = self.usage.current(&k, now).await?;
            Ok(KeyView::new(&k, &usage, now))
        })
        .await
    }
}

/// Puts a change of an API key in the signed feed, in the batch that makes it (root keys are
/// credentials for Tessera itself, not for downstream APIs: never in the feed).
fn feed_event(b: &mut Batch, kind: &str, key: &Key, now: Timestamp) -> Result<(), KeysError> {
    if !key.root {
        let event = crate::feed::Event {
            key_id: Some(key.id.clone()),
            api_id: Some(key.api_id.clone()),
            superseded_by: key.superseded_by.clone(),
            stops_at: key.stops_at,
            ..crate::feed::Event::new(kind, key.tenant.clone(), now)
        };
        crate::feed::append(b, &event)?;
    }
    Ok(())
}

/// Keeps the key's entry in the end-time index in step with its record.
fn track_end(b: &mut Batch, before: Option<&Key>, after: &Key) {
    let old = before.and_then(end_position);
    let new = end_position(after);
    if old == new {
        return;
    }
    if let Some(o) = old {
        b.index_delete(IDX_KEY_ENDS, o.as_bytes());
    }
    if let Some(n) = new {
        b.index_put(IDX_KEY_ENDS, n.as_bytes(), after.id.as_str(), false);
    }
}

pub(super) fn end_position(k: &Key) -> Option<String> {
    k.end().map(|t| ordered(t, k.id.as_str()))
}

pub(super) fn root_position(k: &Key) -> String {
    format!(
        "{}/{}",
        k.tenant.as_str(),
        ordered(k.created_at, k.id.as_str())
    )
}

pub(super) fn key_position(k: &Key) -> String {
    format!(
        "{}/{}",
        k.api_id.as_str(),
        ordered(k.created_at, k.id.as_str())
    )
}
