//! Verification: the hot path downstream APIs call on every request.
//!
//! A malformed key or a bad checksum is answered without any look-up; otherwise one blind-index
//! look-up finds the record, the stored HMAC is compared in constant time, and the answer
//! follows DESIGN.md's precedence:
//! NOT_FOUND > REVOKED > EXPIRED > DISABLED > IDENTITY_MISMATCH > INSUFFICIENT_SCOPES >
//! RATE_LIMITED > USAGE_EXCEEDED.
//! Only a VALID answer spends quota.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    BLIND_KEY, IDX_KEY_HASH, Keys, KeysError,
    cache::Cached,
    model::{BoundTo, Key, Metadata, Scopes},
    usage::{Limits, RateLimitState, Spend},
};
use crate::{
    clock::Timestamp,
    crypto::{apikey::ApiKey, secret::SecretString},
    ids::{ApiId, KeyId, TenantName, TenantScope},
    store,
};

/// Longest `key` string accepted in a verify request.
pub const MAX_KEY_FIELD: usize = 512;

/// `POST /v1/keys/verify`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "tsk_example", "scopes": ["orders:read"]}))]
pub struct VerifyRequest {
    pub key: SecretString,
    #[serde(default)]
    pub api_id: Option<ApiId>,
    #[serde(default)]
    pub scopes: Option<Scopes>,
    /// The identity of the end client presenting the key (a SPIFFE id or `sha256:` fingerprint),
    /// for sender-constrained keys. Without it, the caller's own identity is used.
    #[serde(default)]
    pub presented_identity: Option<BoundTo>,
}

/// The verifying caller's own identity (its client certificate), used for a
/// sender-constrained key when the request names no presented identity: the caller is then
/// taken to be the end client.
#[derive(Clone, Debug, Default)]
pub struct CallerIdentity {
    pub spiffe: Option<String>,
    /// `sha256:<hex>` of the caller's certificate.
    pub fingerprint: Option<String>,
}

/// The answer's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Valid,
    NotFound,
    Revoked,
    Expired,
    Disabled,
    IdentityMismatch,
    InsufficientScopes,
    RateLimited,
    UsageExceeded,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::NotFound => "NOT_FOUND",
            Code::Revoked => "REVOKED",
            Code::Expired => "EXPIRED",
            Code::Disabled => "DISABLED",
            Code::IdentityMismatch => "IDENTITY_MISMATCH",
            Code::InsufficientScopes => "INSUFFICIENT_SCOPES",
            Code::RateLimited => "RATE_LIMITED",
            Code::UsageExceeded => "USAGE_EXCEEDED",
        }
    }
}

/// The answer to a verify request.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub valid: bool,
    pub code: Code,
    pub key_id: Option<KeyId>,
    pub api_id: Option<ApiId>,
    pub tenant: Option<TenantName>,
    pub scopes: Option<Scopes>,
    pub metadata: Option<Metadata>,
    pub expires_at: Option<Timestamp>,
    pub remaining: Option<u64>,
    /// The key's rate limit: `{limit, remaining, reset}` (reset in unix milliseconds).
    pub ratelimit: Option<RateLimitState>,
    /// Time to move to a new key: past 80 % of the API's `max_key_age_seconds`, or replaced
    /// and in its grace.
    pub expiring: bool,
    /// Where the key is in a rotation, if it took part in one.
    pub rotation: Option<RotationStage>,
}

/// A key's place in a rotation, as verify reports it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RotationStage {
    /// `previous`: replaced, working until `stops_at`; `current`: the replacement.
    pub stage: &'static str,
    pub superseded_by: Option<KeyId>,
    pub stops_at: Option<Timestamp>,
}

/// Share of `max_key_age_seconds` after which a key is `expiring`.
const EXPIRING_AT: f64 = 0.8;

/// Whether the key should be replaced soon, and its rotation stage.
pub fn rotation_state(
    key: &Key,
    max_age: Option<u64>,
    now: Timestamp,
) -> (bool, Option<RotationStage>) {
    let stage = match (&key.superseded_by, &key.replaces) {
        (Some(next), _) => Some(RotationStage {
            stage: "previous",
            superseded_by: Some(next.clone()),
            stops_at: key.stops_at,
        }),
        (None, Some(_)) => Some(RotationStage {
            stage: "current",
            superseded_by: None,
            stops_at: None,
        }),
        (None, None) => None,
    };
    let age_ms = (now.unix_millis() - key.created_at.unix_millis()).max(0) as f64;
    let old = max_age.is_some_and(|m| age_ms >= m as f64 * 1000.0 * EXPIRING_AT);
    (old || key.superseded_by.is_some(), stage)
}

impl Verdict {
    fn not_found() -> Self {
        Self {
            valid: false,
            code: Code::NotFound,
            key_id: None,
            api_id: None,
            tenant: None,
            scopes: None,
            metadata: None,
            expires_at: None,
            remaining: None,
            ratelimit: None,
            expiring: false,
            rotation: None,
        }
    }

    fn about(
        key: &Key,
        code: Code,
        remaining: Option<u64>,
        ratelimit: Option<RateLimitState>,
        (expiring, rotation): (bool, Option<RotationStage>),
    ) -> Self {
        Self {
            valid: code == Code::Valid,
            code,
            key_id: Some(key.id.clone()),
            api_id: Some(key.api_id.clone()),
            tenant: Some(key.tenant.clone()),
            scopes: Some(key.scopes.clone()),
            metadata: Some(key.metadata.clone()),
            expires_at: key.expires_at,
            remaining,
            ratelimit,
            expiring,
            rotation,
        }
    }
}

/// The state checks, in precedence order, for a key already known to be the caller's.
/// `presented` is the identity presenting the key, for sender-constrained keys.
pub fn check_state(
    key: &Key,
    required: Option<&Scopes>,
    presented: Option<&str>,
    now: Timestamp,
) -> Option<Code> {
    if key.revoked_at.is_some() {
        return Some(Code::Revoked);
    }
    if key.is_expired(now) {
        return Some(Code::Expired);
    }
    if !key.enabled {
        return Some(Code::Disabled);
    }
    if let Some(bound) = &key.bound_to
        && presented != Some(bound.as_str())
    {
        return Some(Code::IdentityMismatch);
    }
    if let Some(req) = required
        && !key.scopes.contains_all(req)
    {
        return Some(Code::InsufficientScopes);
    }
    None
}

impl Keys {
    /// The rotation policy of a key's API (cached; see [`super::cache::Policies`]).
    async fn max_key_age(&self, api: &ApiId) -> Result<Option<u64>, KeysError> {
        if self.store.fresh()
            && let Some(v) = self.policies.get(api)
        {
            return Ok(v);
        }
        let epoch = self.policies.epoch();
        let v = store::record::get::<super::model::Api>(&*self.store, api.as_str())
            .await?
            .and_then(|(_, a)| a.max_key_age_seconds);
        self.policies.insert(epoch, api.clone(), v);
        Ok(v)
    }

    /// The key record a presented secret belongs to: one blind-index look-up, then the
    /// stored HMAC compared in constant time.
    ///
    /// The record comes from the verification cache when it is there.
    pub(super) async fn find(&self, presented: &ApiKey) -> Result<Option<Arc<Cached>>, KeysError> {
        let secret = presented.expose().as_bytes();
        let pepper = self.keyring.pepper();
        let blind = pepper.blind_index(BLIND_KEY, secret);
        // A node behind other nodes' changes (a shared database) reads the store instead.
        let cached = if self.store.fresh() {
            self.cache.get(&blind)
        } else {
            None
        };
        let entry = match cached {
            Some(e) => e,
            None => {
                let epoch = self.cache.epoch();
                let Some(id) = self.store.lookup(IDX_KEY_HASH, &blind).await? else {
                    return Ok(None);
                };
                let Some((_, key)) = store::record::get::<Key>(&*self.store, &id).await? else {
                    return Ok(None);
                };
                if key.lookup != blind {
                    return Ok(None);
                }
                self.cache.insert_key(epoch, key)
            }
        };
        Ok(pepper.verify(secret, &entry.key().hash).then_some(entry))
    }

    /// Authenticates a root key presented as a bearer credential: found, a root key, and
    /// live (not revoked, expired, past its grace, or disabled).
    pub async fn authenticate_root(
        &self,
        presented: &ApiKey,
        now: Timestamp,
    ) -> Result<Option<Key>, KeysError> {
        let Some(entry) = self.find(presented).await? else {
            return Ok(None);
        };
        let key = entry.key();
        if !key.root || check_state(key, None, None, now).is_some() {
            return Ok(None);
        }
        self.usage
            .spend(key.budget_id(), &Limits::of(key), now)
            .await?;
        Ok(Some(key.clone()))
    }

    pub async fn verify(
        &self,
        scope: &TenantScope,
        req: &VerifyRequest,
        caller: &CallerIdentity,
        now: Timestamp,
    ) -> Result<Verdict, KeysError> {
        if req.key.expose().len() > MAX_KEY_FIELD {
            return Err(KeysError::invalid("key", "must be at most 512 characters"));
        }
        let Ok(presented) = ApiKey::parse(req.key.expose()) else {
            return Ok(Verdict::not_found());
        };
        let Some(entry) = self.find(&presented).await? else {
            return Ok(Verdict::not_found());
        };
        let key = entry.key();
        let mine = !key.root
            && scope.allows(&key.tenant)
            && req.api_id.as_ref().is_none_or(|a| *a == key.api_id);
        if !mine {
            return Ok(Verdict::not_found());
        }
        let presenter = match (&req.presented_identity, &key.bound_to) {
            (Some(p), _) => Some(p.as_str()),
            (None, Some(b)) if b.is_fingerprint() => caller.fingerprint.as_deref(),
            (None, Some(_)) => caller.spiffe.as_deref(),
            (None, None) => None,
        };
        let limits = Limits::of(key);
        let rotation = rotation_state(key, self.max_key_age(&key.api_id).await?, now);
        if let Some(code) = check_state(key, req.scopes.as_ref(), presenter, now) {
            let remaining = self
                .usage
                .note(key.budget_id(), code.as_str(), &limits, now)
                .await?;
            return Ok(Verdict::about(key, code, remaining, None, rotation));
        }
        Ok(
            match self.usage.spend(key.budget_id(), &limits, now).await? {
                Spend::Ok {
                    remaining,
                    ratelimit,
                } => Verdict::about(key, Code::Valid, remaining, ratelimit, rotation),
                Spend::RateLimited(rl) => {
                    let remaining = self.usage.current(key, now).await?.remaining;
                    Verdict::about(key, Code::RateLimited, remaining, Some(rl), rotation)
                }
                Spend::Exhausted { ratelimit } => {
                    Verdict::about(key, Code::UsageExceeded, Some(0), ratelimit, rotation)
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::model::Scope;

    fn key(now: Timestamp) -> Key {
        let mut k = crate::keys::model::sample_key(now);
        k.scopes = Scopes::new(vec![Scope::parse("read").unwrap()]).unwrap();
        k
    }

    #[test]
    fn precedence_follows_the_contract() {
        let now = Timestamp::from_unix(1_000_000);
        let write = Scopes::new(vec![Scope::parse("write").unwrap()]).unwrap();
        let mut k = key(now);
        assert_eq!(
            check_state(&k, Some(&write), None, now),
            Some(Code::InsufficientScopes)
        );
        k.enabled = false;
        assert_eq!(
            check_state(&k, Some(&write), None, now),
            Some(Code::Disabled)
        );
        k.expires_at = Some(now);
        assert_eq!(
            check_state(&k, Some(&write), None, now),
            Some(Code::Expired)
        );
        k.revoked_at = Some(now);
        assert_eq!(
            check_state(&k, Some(&write), None, now),
            Some(Code::Revoked)
        );
    }

    #[test]
    fn a_bound_key_needs_its_identity() {
        let now = Timestamp::from_unix(1_000_000);
        let mut k = key(now);
        k.bound_to = Some(BoundTo::parse("spiffe://t.local/tenant/a/svc/b").unwrap());
        assert_eq!(
            check_state(&k, None, None, now),
            Some(Code::IdentityMismatch)
        );
        assert_eq!(
            check_state(&k, None, Some("spiffe://t.local/tenant/a/svc/c"), now),
            Some(Code::IdentityMismatch)
        );
        assert_eq!(
            check_state(&k, None, Some("spiffe://t.local/tenant/a/svc/b"), now),
            None
        );
        // Disabled outranks a mismatch; a mismatch outranks missing scopes.
        let write = Scopes::new(vec![Scope::parse("write").unwrap()]).unwrap();
        assert_eq!(
            check_state(&k, Some(&write), None, now),
            Some(Code::IdentityMismatch)
        );
        k.enabled = false;
        assert_eq!(check_state(&k, None, None, now), Some(Code::Disabled));
        assert!(BoundTo::parse("sha256:ABC").is_err());
        assert!(BoundTo::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn expiring_follows_the_age_policy_and_rotation() {
        let now = Timestamp::from_unix(1_000_000);
        let mut k = key(now);
        assert!(!rotation_state(&k, None, now.plus_secs(10_000)).0);
        assert!(!rotation_state(&k, Some(100), now.plus_secs(79)).0);
        assert!(rotation_state(&k, Some(100), now.plus_secs(80)).0);
        k.replaces = Some(KeyId::generate().unwrap());
        let (expiring, stage) = rotation_state(&k, None, now);
        assert!(!expiring);
        assert_eq!(stage.unwrap().stage, "current");
        k.superseded_by = Some(KeyId::generate().unwrap());
        k.stops_at = Some(now.plus_secs(60));
        let (expiring, stage) = rotation_state(&k, None, now);
        let stage = stage.unwrap();
        assert!(expiring);
        assert_eq!(stage.stage, "previous");
        assert_eq!(stage.stops_at, Some(now.plus_secs(60)));
    }

    use crate::{
        crypto::{
            apikey::KeyPrefix,
            keyring::{Keyring, MasterKey},
        },
        keys::{KeyKind, NewKey, NewRootKey},
        store::{NoRecord, sled::SledStore},
    };

    /// A key service over a fresh store, and the data directory it lives in.
    fn service() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let (store, _) = SledStore::open(dir.path(), &master, &Default::default()).unwrap();
        let (keyring, _) = Keyring::generate(&master).unwrap();
        (
            dir,
            Keys::new(
                Arc::new(store),
                Arc::new(keyring),
                100,
                crate::keys::usage::MAX_ENTRIES,
            ),
        )
    }

    async fn api(keys: &Keys, name: &str, max_age: Option<u64>, now: Timestamp) -> ApiId {
        let input = serde_json::from_value(serde_json::json!({
            "name": name, "purpose": "p", "owner": "o", "risk": "low",
            "max_key_age_seconds": max_age,
        }))
        .unwrap();
        keys.create_api(&NoRecord, TenantName::default_tenant(), input, now)
            .await
            .unwrap()
            .id
    }

    async fn issue(keys: &Keys, api: &ApiId, input: NewKey, now: Timestamp) -> (KeyId, String) {
        let (view, key) = keys
            .issue_key(&NoRecord, &TenantScope::All, api, input, now)
            .await
            .unwrap();
        (view.id, key.expose().to_owned())
    }

    fn request(key: &str, api_id: Option<&ApiId>) -> VerifyRequest {
        VerifyRequest {
            key: SecretString::new(key.to_owned()),
            api_id: api_id.cloned(),
            scopes: None,
            presented_identity: None,
        }
    }

    async fn code(keys: &Keys, scope: &TenantScope, req: &VerifyRequest, now: Timestamp) -> Code {
        let v = keys
            .verify(scope, req, &CallerIdentity::default(), now)
            .await
            .unwrap();
        assert_eq!(v.valid, v.code == Code::Valid, "{v:?}");
        v.code
    }

    #[tokio::test]
    async fn verify_answers_only_for_the_callers_own_live_keys() {
        let now = Timestamp::from_unix(1_000_000);
        let (_d, keys) = service();
        let (a, b) = (
            api(&keys, "a", None, now).await,
            api(&keys, "b", None, now).await,
        );
        let (id, secret) = issue(&keys, &a, NewKey::default(), now).await;
        let all = TenantScope::All;
        let v = keys
            .verify(
                &all,
                &request(&secret, None),
                &CallerIdentity::default(),
                now,
            )
            .await
            .unwrap();
        assert!(v.valid);
        assert_eq!((v.code, v.key_id), (Code::Valid, Some(id.clone())));
        assert_eq!(
            code(&keys, &all, &request(&secret, Some(&a)), now).await,
            Code::Valid
        );
        // Another API's, another tenant's: the key does not exist for that caller.
        assert_eq!(
            code(&keys, &all, &request(&secret, Some(&b)), now).await,
            Code::NotFound
        );
        let beta = TenantScope::One(TenantName::parse("beta").unwrap());
        assert_eq!(
            code(&keys, &beta, &request(&secret, None), now).await,
            Code::NotFound
        );
        let mine = TenantScope::One(TenantName::default_tenant());
        assert_eq!(
            code(&keys, &mine, &request(&secret, None), now).await,
            Code::Valid
        );

        // Unknown and mistyped keys, and a root key, are not API keys anyone can verify.
        let unknown = ApiKey::generate(&KeyPrefix::default_prefix()).unwrap();
        assert_eq!(
            code(&keys, &all, &request(unknown.expose(), None), now).await,
            Code::NotFound
        );
        let mut typo = secret.clone().into_bytes();
        typo[6] = if typo[6] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(
            code(&keys, &all, &request(&typo, None), now).await,
            Code::NotFound
        );
        let (_, root) = keys
            .issue_root_key(
                &NoRecord,
                &TenantName::default_tenant(),
                NewRootKey::default(),
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            code(&keys, &all, &request(root.expose(), None), now).await,
            Code::NotFound
        );

        // The length limit: 512 characters are read (and are no key), 513 are refused.
        let long = "a".repeat(MAX_KEY_FIELD);
        assert_eq!(
            code(&keys, &all, &request(&long, None), now).await,
            Code::NotFound
        );
        let longer = "a".repeat(MAX_KEY_FIELD + 1);
        let err = keys
            .verify(
                &all,
                &request(&longer, None),
                &CallerIdentity::default(),
                now,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, KeysError::Invalid { field: "key", .. }),
            "{err:?}"
        );

        // A state refusal is answered for the key, and is not valid.
        keys.revoke_key(&NoRecord, &all, KeyKind::Api, &id, None, now)
            .await
            .unwrap();
        let v = keys
            .verify(
                &all,
                &request(&secret, None),
                &CallerIdentity::default(),
                now,
            )
            .await
            .unwrap();
        assert!(!v.valid);
        assert_eq!((v.code, v.key_id), (Code::Revoked, Some(id)));
    }

    #[tokio::test]
    async fn a_bound_key_is_checked_against_the_callers_identity_of_its_kind() {
        let now = Timestamp::from_unix(1_000_000);
        let (_d, keys) = service();
        let a = api(&keys, "a", None, now).await;
        let spiffe = "spiffe://t.local/tenant/default/svc/client";
        let fp = format!("sha256:{}", "ab".repeat(32));
        let bound = |to: &str| NewKey {
            bound_to: Some(BoundTo::parse(to).unwrap()),
            ..NewKey::default()
        };
        let (_, by_spiffe) = issue(&keys, &a, bound(spiffe), now).await;
        let (_, by_fp) = issue(&keys, &a, bound(&fp), now).await;
        // The caller holds both: each key takes the one of its own kind.
        let caller = CallerIdentity {
            spiffe: Some(spiffe.to_owned()),
            fingerprint: Some(fp.clone()),
        };
        let other = CallerIdentity {
            spiffe: Some("spiffe://t.local/tenant/default/svc/other".to_owned()),
            fingerprint: Some(format!("sha256:{}", "cd".repeat(32))),
        };
        let all = TenantScope::All;
        for (secret, caller, want) in [
            (&by_spiffe, &caller, Code::Valid),
            (&by_fp, &caller, Code::Valid),
            (&by_spiffe, &other, Code::IdentityMismatch),
            (&by_fp, &other, Code::IdentityMismatch),
        ] {
            let v = keys
                .verify(&all, &request(secret, None), caller, now)
                .await
                .unwrap();
            assert_eq!(v.code, want, "{secret} by {caller:?}");
        }
        // A presented identity, when named, is the one checked.
        let mut req = request(&by_fp, None);
        req.presented_identity = Some(BoundTo::parse(&fp).unwrap());
        let v = keys.verify(&all, &req, &other, now).await.unwrap();
        assert_eq!(v.code, Code::Valid);
    }

    #[tokio::test]
    async fn expiring_follows_the_apis_max_key_age() {
        let now = Timestamp::from_unix(1_000_000);
        let (_d, keys) = service();
        let a = api(&keys, "a", Some(100), now).await;
        let (_, secret) = issue(&keys, &a, NewKey::default(), now).await;
        let all = TenantScope::All;
        for (after, want) in [(0, false), (10, false), (79, false), (80, true)] {
            let v = keys
                .verify(
                    &all,
                    &request(&secret, None),
                    &CallerIdentity::default(),
                    now.plus_secs(after),
                )
                .await
                .unwrap();
            assert_eq!(
                (v.code, v.expiring),
                (Code::Valid, want),
                "{after} s after issue"
            );
        }
    }

    #[tokio::test]
    async fn root_keys_authenticate_only_while_live() {
        let now = Timestamp::from_unix(1_000_000);
        let (_d, keys) = service();
        let tenant = TenantName::default_tenant();
        let (view, root) = keys
            .issue_root_key(&NoRecord, &tenant, NewRootKey::default(), now)
            .await
            .unwrap();
        let k = keys.authenticate_root(&root, now).await.unwrap().unwrap();
        assert!(k.root);
        assert_eq!(k.id, view.id);
        // An API key is no root key, however valid.
        let a = api(&keys, "a", None, now).await;
        let (_, secret) = issue(&keys, &a, NewKey::default(), now).await;
        let as_key = ApiKey::parse(&secret).unwrap();
        assert!(
            keys.authenticate_root(&as_key, now)
                .await
                .unwrap()
                .is_none()
        );
        // Revoked: refused.
        keys.revoke_key(
            &NoRecord,
            &TenantScope::All,
            KeyKind::Root,
            &view.id,
            None,
            now,
        )
        .await
        .unwrap();
        assert!(keys.authenticate_root(&root, now).await.unwrap().is_none());
    }

    #[test]
    fn a_superseded_key_works_until_its_grace_ends() {
        let now = Timestamp::from_unix(1_000_000);
        let mut k = key(now);
        k.superseded_by = Some(KeyId::generate().unwrap());
        k.stops_at = Some(now.plus_secs(60));
        assert_eq!(check_state(&k, None, None, now.plus_secs(59)), None);
        assert_eq!(
            check_state(&k, None, None, now.plus_secs(60)),
            Some(Code::Expired)
        );
    }
}
