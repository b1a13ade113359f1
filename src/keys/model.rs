//! The records and validated values of the API registry and the API-key domain.

use serde::{Deserialize, Serialize};

use crate::{
    clock::{Day, Timestamp},
    crypto::apikey::KeyPrefix,
    ids::{ApiId, KeyId, TenantName},
    store::{Kind, Record},
};

/// Free text with a length bound (in characters) and no control characters.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    pub fn parse(s: &str) -> Result<Self, String> {
        let n = s.chars().count();
        if n == 0 || n > MAX {
            return Err(format!("must be 1 to {MAX} characters"));
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> std::fmt::Debug for Text<MAX> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A scope: 1 to 128 characters of `[A-Za-z0-9_.:/*-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Scope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:/*-".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1 to 128 characters of [A-Za-z0-9_.:/*-]")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Most scopes a key or a verify request may carry.
pub const MAX_SCOPES: usize = 64;

/// A set of scopes, sorted and without duplicates, at most [`MAX_SCOPES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn new(mut v: Vec<Scope>) -> Result<Self, &'static str> {
        if v.len() > MAX_SCOPES {
            return Err("must hold at most 64 scopes");
        }
        v.sort();
        v.dedup();
        Ok(Self(v))
    }

    /// Whether every scope of `required` is held.
    pub fn contains_all(&self, required: &Scopes) -> bool {
        required.0.iter().all(|s| self.0.binary_search(s).is_ok())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<Scope>::deserialize(d)?;
        Self::new(v).map_err(serde::de::Error::custom)
    }
}

/// Largest serialized size of a key's metadata.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Arbitrary JSON object the portal attaches to a key, returned by verify.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Metadata(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let size = serde_json::to_vec(&m)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(serde::de::Error::custom(
                "must serialize to at most 4096 bytes",
            ));
        }
        Ok(Self(m))
    }
}

/// An API's risk level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    /// Days until the next review when none is given.
    pub fn default_review_days(self) -> i64 {
        match self {
            Risk::Low => 365,
            Risk::Medium => 180,
            Risk::High => 90,
        }
    }
}

/// Longest key lifetime accepted (10 years).
pub const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;
/// Longest rotation grace accepted (30 days).
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;

/// A key's rate limit: at most `limit` VALID answers per window of `window_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(deserialize_with = "limit_value")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub limit: u32,
    #[serde(deserialize_with = "window_value")]
    #[schema(minimum = 1, maximum = 86400)]
    pub window_seconds: u32,
}

fn limit_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if (1..=1_000_000).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom("must be between 1 and 1000000"))
    }
}

fn window_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if (1..=86_400).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom("must be between 1 and 86400"))
    }
}

/// A quota refill: every `interval_seconds`, `remaining` is reset to `amount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    #[serde(deserialize_with = "amount_value")]
    #[schema(minimum = 1)]
    pub amount: u64,
    #[serde(deserialize_with = "interval_value")]
    #[schema(minimum = 1, maximum = 31622400)]
    pub interval_seconds: u64,
}

fn amount_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v >= 1 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom("must be at least 1"))
    }
}

fn interval_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if (1..=366 * 86_400).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom("must be between 1 and 31622400"))
    }
}

/// Defaults an API gives to the keys issued under it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyDefaults {
    /// Lifetime of a new key when the request gives none.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    pub ttl_seconds: Option<u64>,
    /// Scopes of a new key when the request gives none.
    #[serde(default)]
    pub scopes: Scopes,
    /// Rate limit of a new key when the request gives none.
    #[serde(default)]
    pub ratelimit: Option<RateLimit>,
}

/// An API in the registry.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Api {
    pub id: ApiId,
    pub tenant: TenantName,
    pub name: Text<100>,
    pub purpose: Text<1000>,
    pub owner: Text<200>,
    pub live_date: Option<Day>,
    pub risk: Risk,
    pub review_by: Day,
    pub key_prefix: KeyPrefix,
    pub key_defaults: KeyDefaults,
    /// Rotation policy: verify reports `expiring` once a key is past 80 % of this age.
    #[serde(default)]
    pub max_key_age_seconds: Option<u64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The per-tenant API that holds root keys: never listed, read or changed as an API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
}

impl Record for Api {
    const KIND: Kind = Kind("api");
}

/// A marker whose revision moves whenever a key is added under an API, so deleting the API
/// and issuing a key under it cannot both succeed (see `registry::delete_api`).
#[derive(Serialize, Deserialize)]
pub struct ApiKeysMarker {}

impl Record for ApiKeysMarker {
    const KIND: Kind = Kind("api_keys");
}

/// Why a key was revoked, when the record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyRevocationReason {
    /// Reported as leaked (`POST /v1/leaks/github`, `POST /v1/keys/report-leak`).
    Leaked,
}

/// An API key's record. The secret is not here: only its HMAC.
#[derive(Clone, Serialize, Deserialize)]
pub struct Key {
    pub id: KeyId,
    pub tenant: TenantName,
    pub api_id: ApiId,
    pub name: Option<Text<200>>,
    /// HMAC-SHA256(pepper, key).
    #[serde(with = "crate::crypto::serde_hex::array32")]
    pub hash: [u8; 32],
    /// The blind index the key is looked up by (kept so tidying can remove the entry).
    #[serde(with = "crate::crypto::serde_hex::array32")]
    pub lookup: [u8; 32],
    /// The non-secret hint: prefix and first 4 characters.
    pub start: String,
    pub scopes: Scopes,
    pub metadata: Metadata,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// Set when the key was rotated: the key that replaced it.
    pub superseded_by: Option<KeyId>,
    /// When a superseded key stops working (end of its grace).
    pub stops_at: Option<Timestamp>,
    /// The key this one replaced.
    pub replaces: Option<KeyId>,
    /// A root key (management credential, `tsr_`): only `/v1/root-keys` handles it, and
    /// `POST /v1/keys/verify` never finds it.
    #[serde(default)]
    pub root: bool,
    /// Sender constraint: the identity that must present this key.
    #[serde(default)]
    pub bound_to: Option<BoundTo>,
    #[serde(default)]
    pub ratelimit: Option<RateLimit>,
    #[serde(default)]
    pub refill: Option<Refill>,
    /// The first key of this key's rotation chain, when it is not this key: the chain shares
    /// one quota and one rate-limit window, kept under that id, so rotating with grace never
    /// multiplies a customer's limits.
    #[serde(default)]
    pub budget: Option<KeyId>,
    /// When the chain's first key was created (its refill periods count from then).
    #[serde(default)]
    pub budget_since: Option<Timestamp>,
    /// Whether the key's counters hold a quota (`remaining`): set at creation and by every
    /// change of `remaining`, so a verifier on a shared database knows an unlimited key
    /// without reading its counters. `None` in records from before it was kept; meaningful
    /// only for a key outside any rotation chain (see [`Key::has_quota`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<bool>,
    /// Why it was revoked, when not by a principal's request (`leaked`: reported by a
    /// secret scanner or a holder). Absent on older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<KeyRevocationReason>,
}

impl Key {
    /// Whether the key's budget has a quota, when the key record can say: a key never
    /// rotated, with the flag written. A rotation chain shares one budget whose quota any of
    /// its keys may change, so for those (and for old records) `None`: read the counters.
    pub fn has_quota(&self) -> Option<bool> {
        if self.budget.is_some() || self.superseded_by.is_some() {
            return None;
        }
        self.quota
    }
}

impl Record for Key {
    const KIND: Kind = Kind("key");
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("api_id", &self.api_id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The id the usage counters of this key's rotation chain are kept under.
    pub fn budget_id(&self) -> &KeyId {
        self.budget.as_ref().unwrap_or(&self.id)
    }

    /// Revoked, or past its expiry or the end of its rotation grace.
    pub fn is_dead(&self, now: Timestamp) -> bool {
        self.revoked_at.is_some() || self.is_expired(now)
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|t| t <= now) || self.stops_at.is_some_and(|t| t <= now)
    }

    /// When the key stops working for good: the earliest of revocation, expiry and the end
    /// of a rotation grace. `None` while it has no end.
    pub fn end(&self) -> Option<Timestamp> {
        [self.revoked_at, self.expires_at, self.stops_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The identity a sender-constrained key is bound to: a SPIFFE id, or a client certificate's
/// SHA-256 fingerprint written `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BoundTo(String);

impl BoundTo {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        const BAD: &str = "must be a spiffe:// id or sha256:<64 lowercase hex>";
        if let Some(hex) = s.strip_prefix("sha256:") {
            let ok = hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            return if ok { Ok(Self(s.to_owned())) } else { Err(BAD) };
        }
        let ok = s.len() <= 2048
            && s.strip_prefix("spiffe://").is_some_and(|rest| {
                rest.contains('/')
                    && rest.bytes().all(|b| b.is_ascii_graphic())
                    && !rest.split('/').any(|seg| seg == "." || seg == "..")
            });
        if ok { Ok(Self(s.to_owned())) } else { Err(BAD) }
    }

    pub fn is_fingerprint(&self) -> bool {
        self.0.starts_with("sha256:")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BoundTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Usage counters of a key, persisted at most about a second behind memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Verifications left; `None` is unlimited.
    pub remaining: Option<u64>,
    pub last_used_at: Option<Timestamp>,
    /// VALID answers so far.
    #[serde(default)]
    pub valid_count: u64,
    /// Answers about this key by code (`VALID`, `REVOKED`, ...).
    #[serde(default)]
    pub verify_counts: std::collections::BTreeMap<String, u64>,
    /// When `remaining` was last refilled.
    #[serde(default)]
    pub last_refill_at: Option<Timestamp>,
    /// The current rate-limit window: its start (unix millis) and the requests in it. On
    /// the embedded engine it is kept in memory and written with the other counters; on a
    /// shared database every node updates it in the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<(i64, u32)>,
}

impl Record for UsageRecord {
    const KIND: Kind = Kind("usage");
}

/// Where a key stands in a rotation.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Rotation {
    pub superseded_by: Option<KeyId>,
    pub stops_at: Option<Timestamp>,
    pub replaces: Option<KeyId>,
}

/// A key's public metadata: everything but the secret and its hash.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: KeyId,
    pub api_id: ApiId,
    pub tenant: TenantName,
    pub name: Option<Text<200>>,
    pub start: String,
    pub scopes: Scopes,
    pub metadata: Metadata,
    pub enabled: bool,
    pub state: &'static str,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// `leaked` when a leak report revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<KeyRevocationReason>,
    pub remaining: Option<u64>,
    pub last_used_at: Option<Timestamp>,
    /// Verifications of this key so far, by answer code (persisted about a second behind).
    pub verify_counts: std::collections::BTreeMap<String, u64>,
    pub rotation: Option<Rotation>,
    pub bound_to: Option<BoundTo>,
    pub ratelimit: Option<RateLimit>,
    pub refill: Option<Refill>,
}

impl KeyView {
    pub fn new(k: &Key, usage: &UsageRecord, now: Timestamp) -> Self {
        let state = if k.revoked_at.is_some() {
            "revoked"
        } else if k.is_expired(now) {
            "expired"
        } else if !k.enabled {
            "disabled"
        } else {
            "active"
        };
        let rotation = (k.superseded_by.is_some() || k.replaces.is_some()).then(|| Rotation {
            superseded_by: k.superseded_by.clone(),
            stops_at: k.stops_at,
            replaces: k.replaces.clone(),
        });
        Self {
            id: k.id.clone(),
            api_id: k.api_id.clone(),
            tenant: k.tenant.clone(),
            name: k.name.clone(),
            start: k.start.clone(),
            scopes: k.scopes.clone(),
            metadata: k.metadata.clone(),
            enabled: k.enabled,
            state,
            created_at: k.created_at,
            updated_at: k.updated_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            revocation_reason: k.revocation_reason,
            remaining: usage.remaining,
            last_used_at: usage.last_used_at,
            verify_counts: usage.verify_counts.clone(),
            rotation,
            bound_to: k.bound_to.clone(),
            ratelimit: k.ratelimit,
            refill: k.refill,
        }
    }
}

/// `Option<Option<T>>` for PATCH bodies: absent = leave alone, `null` = clear.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A plain, live key record for unit tests.
#[cfg(test)]
pub fn sample_key(now: Timestamp) -> Key {
    Key {
        quota: None,
        revocation_reason: None,
        id: KeyId::generate().unwrap_or_else(|_| unreachable!()),
        tenant: TenantName::default_tenant(),
        api_id: ApiId::generate().unwrap_or_else(|_| unreachable!()),
        name: None,
        hash: [0; 32],
        lookup: [0; 32],
        start: "tsk_abcd".into(),
        scopes: Scopes::default(),
        metadata: Metadata::default(),
        enabled: true,
        created_at: now,
        updated_at: now,
        expires_at: None,
        revoked_at: None,
        superseded_by: None,
        stops_at: None,
        replaces: None,
        root: false,
        bound_to: None,
        ratelimit: None,
        refill: None,
        budget: None,
        budget_since: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_a_bounded_set() {
        let s =
            |v: &[&str]| Scopes::new(v.iter().map(|x| Scope::parse(x).unwrap()).collect()).unwrap();
        let held = s(&["read", "write", "read"]);
        assert_eq!(held.iter().count(), 2);
        assert!(held.contains_all(&s(&["read"])));
        assert!(held.contains_all(&s(&[])));
        assert!(!held.contains_all(&s(&["admin"])));
        let too_many: Vec<Scope> = (0..65)
            .map(|i| Scope::parse(&format!("s{i}")).unwrap())
            .collect();
        assert!(Scopes::new(too_many).is_err());
        assert!(Scope::parse("a b").is_err());
    }

    #[test]
    fn text_bounds_count_characters_and_refuse_controls() {
        assert!(Text::<3>::parse("äöü").is_ok());
        assert!(Text::<3>::parse("abcd").is_err());
        assert!(Text::<10>::parse("a\nb").is_err());
        assert!(Text::<10>::parse("").is_err());
    }
}
