//! The API registry: every downstream API that keys are issued for, with its owner, purpose,
//! risk and review date. Keys belong to an API.

use serde::Deserialize;

use super::{
    BLIND_API_NAME, IDX_API_NAME, IDX_APIS, IDX_KEYS_BY_API, IDX_ROOT_API, KeyKind, Keys,
    KeysError,
    model::{Api, ApiKeysMarker, Key, KeyDefaults, MAX_TTL_SECS, Risk, Text, double_option},
    ordered, retrying,
};
use crate::{
    clock::{Day, Timestamp},
    crypto::apikey::{KeyPrefix, ROOT_KEY_PREFIX},
    ids::{ApiId, TenantName, TenantScope},
    page::{Page, PageRequest},
    store::{self, Batch, Expect, Record, Recorder, Rev},
};

/// `POST /v1/apis`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "orders", "purpose": "The orders API", "owner": "shop-team", "risk": "medium", "key_defaults": {"scopes": ["orders:read"]}}))]
pub struct NewApi {
    /// Only the global admin names the tenant (default `default`); taken by the caller.
    #[serde(default)]
    pub tenant: Option<TenantName>,
    pub name: Text<100>,
    pub purpose: Text<1000>,
    pub owner: Text<200>,
    pub risk: Risk,
    #[serde(default)]
    pub live_date: Option<Day>,
    #[serde(default)]
    pub review_by: Option<Day>,
    #[serde(default)]
    pub key_prefix: Option<KeyPrefix>,
    #[serde(default)]
    pub key_defaults: KeyDefaults,
    /// Rotation policy: verify reports `expiring` once a key is past 80 % of this age.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 316224000)]
    pub max_key_age_seconds: Option<u64>,
}

/// `PATCH /v1/apis/{id}`: absent fields stay, `live_date: null` clears.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"owner": "platform-team", "max_key_age_seconds": 7776000}))]
pub struct ApiPatch {
    #[serde(default)]
    pub name: Option<Text<100>>,
    #[serde(default)]
    pub purpose: Option<Text<1000>>,
    #[serde(default)]
    pub owner: Option<Text<200>>,
    #[serde(default)]
    pub risk: Option<Risk>,
    #[serde(default, deserialize_with = "double_option")]
    pub live_date: Option<Option<Day>>,
    #[serde(default)]
    pub review_by: Option<Day>,
    #[serde(default)]
    pub key_prefix: Option<KeyPrefix>,
    #[serde(default)]
    pub key_defaults: Option<KeyDefaults>,
    /// `null` removes the policy.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(minimum = 1, maximum = 316224000)]
    pub max_key_age_seconds: Option<Option<u64>>,
}

/// Longest `max_key_age_seconds`: ten years.
const MAX_KEY_AGE_SECS: u64 = 10 * 366 * 86_400;

fn check_max_age(v: Option<u64>) -> Result<(), KeysError> {
    match v {
        Some(a) if !(1..=MAX_KEY_AGE_SECS).contains(&a) => Err(KeysError::invalid(
            "max_key_age_seconds",
            "must be between 1 and 316224000 (ten years)",
        )),
        _ => Ok(()),
    }
}

fn check_prefix(p: &KeyPrefix) -> Result<(), KeysError> {
    if p.as_str() == ROOT_KEY_PREFIX {
        return Err(KeysError::invalid(
            "key_prefix",
            "must not be the root-key prefix tsr",
        ));
    }
    Ok(())
}

fn check_defaults(d: &KeyDefaults) -> Result<(), KeysError> {
    if let Some(ttl) = d.ttl_seconds
        && !(1..=MAX_TTL_SECS).contains(&ttl)
    {
        return Err(KeysError::invalid(
            "key_defaults.ttl_seconds",
            "must be between 1 and 315360000",
        ));
    }
    Ok(())
}

impl Keys {
    fn api_name_index(&self, tenant: &TenantName, name: &str) -> [u8; 32] {
        let mut v = Vec::with_capacity(tenant.as_str().len() + 1 + name.len());
        v.extend_from_slice(tenant.as_str().as_bytes());
        v.push(0);
        v.extend_from_slice(name.as_bytes());
        self.keyring.pepper().blind_index(BLIND_API_NAME, &v)
    }

    pub async fn create_api(
        &self,
        rec: &dyn Recorder,
        tenant: TenantName,
        input: NewApi,
        now: Timestamp,
    ) -> Result<Api, KeysError> {
        let key_prefix = input.key_prefix.unwrap_or_else(KeyPrefix::default_prefix);
        check_prefix(&key_prefix)?;
        check_defaults(&input.key_defaults)?;
        check_max_age(input.max_key_age_seconds)?;
        let api = Api {
            id: ApiId::generate()?,
            review_by: input
                .review_by
                .unwrap_or_else(|| Day::of(now).plus_days(input.risk.default_review_days())),
            tenant,
            name: input.name,
            purpose: input.purpose,
            owner: input.owner,
            live_date: input.live_date,
            risk: input.risk,
            key_prefix,
            key_defaults: input.key_defaults,
            max_key_age_seconds: input.max_key_age_seconds,
            created_at: now,
            updated_at: now,
            internal: false,
        };
        let mut b = Batch::new();
        b.put_record(api.id.as_str(), &api, Expect::Absent)?;
        b.index_put(
            IDX_API_NAME,
            &self.api_name_index(&api.tenant, api.name.as_str()),
            api.id.as_str(),
            true,
        );
        b.index_put(
            IDX_APIS,
            api_position(&api).as_bytes(),
            api.id.as_str(),
            false,
        );
        rec.record(&mut b, api.id.as_str(), Some(&api.tenant))?;
        self.store.commit(b).await.map_err(|e| match e {
            store::StoreError::Conflict => {
                KeysError::Conflict("an API with this name already exists in the tenant")
            }
            e => e.into(),
        })?;
        Ok(api)
    }

    pub async fn list_apis(
        &self,
        scope: &TenantScope,
        page: &PageRequest,
    ) -> Result<Page<Api>, KeysError> {
        let prefix = match scope {
            TenantScope::All => String::new(),
            TenantScope::One(t) => format!("{}/", t.as_str()),
        };
        crate::page::from_index(
            &*self.store,
            IDX_APIS,
            prefix.as_bytes(),
            page,
            |id| async move {
                Ok::<_, KeysError>(
                    store::record::get::<Api>(&*self.store, &id)
                        .await?
                        .map(|(_, api)| api),
                )
            },
        )
        .await
    }

    /// The API with its revision, if the caller may see it: a registered API for API keys,
    /// the tenant's internal root-key API for root keys.
    pub(super) async fn api_in_scope(
        &self,
        scope: &TenantScope,
        id: &ApiId,
        kind: KeyKind,
    ) -> Result<(Rev, Api), KeysError> {
        match store::record::get::<Api>(&*self.store, id.as_str()).await? {
            Some((rev, api))
                if scope.allows(&api.tenant) && api.internal == (kind == KeyKind::Root) =>
            {
                Ok((rev, api))
            }
            _ => Err(KeysError::NotFound),
        }
    }

    /// A registered API with its revision, if the caller may see it.
    pub(super) async fn visible_api(
        &self,
        scope: &TenantScope,
        id: &ApiId,
    ) -> Result<(Rev, Api), KeysError> {
        self.api_in_scope(scope, id, KeyKind::Api).await
    }

    /// The tenant's internal API that holds its root keys, created on first use.
    pub(super) async fn root_api(
        &self,
        tenant: &TenantName,
        now: Timestamp,
    ) -> Result<(Rev, Api), KeysError> {
        let scope = &TenantScope::One(tenant.clone());
        retrying(|| async move {
            if let Some(id) = self
                .store
                .lookup(IDX_ROOT_API, tenant.as_str().as_bytes())
                .await?
            {
                let id = ApiId::parse(&id).map_err(|_| KeysError::NotFound)?;
                return self.api_in_scope(scope, &id, KeyKind::Root).await;
            }
            let api = Api {
                id: ApiId::generate()?,
                tenant: tenant.clone(),
                name: Text::parse("root keys").map_err(|_| KeysError::NotFound)?,
                purpose: Text::parse("Tessera root keys of the tenant")
                    .map_err(|_| KeysError::NotFound)?,
                owner: Text::parse("tessera").map_err(|_| KeysError::NotFound)?,
                live_date: None,
                risk: Risk::High,
                review_by: Day::of(now).plus_days(Risk::High.default_review_days()),
                key_prefix: KeyPrefix::parse(ROOT_KEY_PREFIX).map_err(|_| KeysError::NotFound)?,
                key_defaults: KeyDefaults::default(),
                max_key_age_seconds: None,
                created_at: now,
                updated_at: now,
                internal: true,
            };
            let mut b = Batch::new();
            b.put_record(api.id.as_str(), &api, Expect::Absent)?;
            b.index_put(
                IDX_ROOT_API,
                tenant.as_str().as_bytes(),
                api.id.as_str(),
                true,
            );
            // A concurrent creator's conflict sends the next attempt to its API.
            self.store.commit(b).await?;
            Ok((Rev(1), api))
        })
        .await
    }

    pub async fn get_api(&self, scope: &TenantScope, id: &ApiId) -> Result<Api, KeysError> {
        Ok(self.visible_api(scope, id).await?.1)
    }

    pub async fn update_api(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        id: &ApiId,
        patch: ApiPatch,
        now: Timestamp,
    ) -> Result<Api, KeysError> {
        if let Some(p) = &patch.key_prefix {
            check_prefix(p)?;
        }
        if let Some(a) = patch.max_key_age_seconds {
            check_max_age(a)?;
        }
        if let Some(d) = &patch.key_defaults {
            check_defaults(d)?;
        }
        let patch = &patch;
        retrying(|| async move {
            let (rev, old) = self.visible_api(scope, id).await?;
            let mut api = old.clone();
            if let Some(v) = &patch.name {
                api.name = v.clone();
            }
            if let Some(v) = &patch.purpose {
                api.purpose = v.clone();
            }
            if let Some(v) = &patch.owner {
                api.owner = v.clone();
            }
            if let Some(v) = patch.risk {
                api.risk = v;
            }
            if let Some(v) = patch.live_date {
                api.live_date = v;
            }
            if let Some(v) = patch.review_by {
                api.review_by = v;
            }
            if let Some(v) = &patch.key_prefix {
                api.key_prefix = v.clone();
            }
            if let Some(v) = &patch.key_defaults {
                api.key_defaults = v.clone();
            }
            if let Some(v) = patch.max_key_age_seconds {
                api.max_key_age_seconds = v;
            }
            api.updated_at = now;
            let mut b = Batch::new();
            b.put_record(id.as_str(), &api, Expect::Rev(rev))?;
            let renamed = api.name != old.name;
            if renamed {
                b.index_delete(
                    IDX_API_NAME,
                    &self.api_name_index(&old.tenant, old.name.as_str()),
                );
                b.index_put(
                    IDX_API_NAME,
                    &self.api_name_index(&api.tenant, api.name.as_str()),
                    id.as_str(),
                    true,
                );
            }
            rec.record(&mut b, id.as_str(), Some(&api.tenant))?;
            match self.commit_changing(b, &[], &[&api.id]).await {
                Err(KeysError::Store(store::StoreError::Conflict)) if renamed => {
                    // Either a concurrent update (retry) or a name taken by another API.
                    let taken = self
                        .store
                        .lookup(
                            IDX_API_NAME,
                            &self.api_name_index(&api.tenant, api.name.as_str()),
                        )
                        .await?
                        .is_some_and(|other| other != id.as_str());
                    if taken {
                        return Err(KeysError::Conflict(
                            "an API with this name already exists in the tenant",
                        ));
                    }
                    Err(store::StoreError::Conflict.into())
                }
                other => other.map(|()| api),
            }
        })
        .await
    }

    /// Deletes an API that has no active key (a disabled key still counts: it can be
    /// re-enabled). Issuing a key bumps the API's key marker, and deletion is conditional on
    /// that marker, so a key issued concurrently either makes the delete fail or fails itself.
    pub async fn delete_api(
        &self,
        rec: &dyn Recorder,
        scope: &TenantScope,
        id: &ApiId,
        now: Timestamp,
    ) -> Result<(), KeysError> {
        retrying(|| async move {
            let (rev, api) = self.visible_api(scope, id).await?;
            let marker = self
                .store
                .get(ApiKeysMarker::KIND, id.as_str())
                .await?
                .map_or(Expect::Absent, |s| Expect::Rev(s.rev));
            if self.has_active_keys(id, now).await? {
                return Err(KeysError::Conflict("the API still has active keys"));
            }
            let mut b = Batch::new();
            b.delete(Api::KIND, id.as_str(), Expect::Rev(rev));
            b.check(ApiKeysMarker::KIND, id.as_str(), marker);
            b.delete(ApiKeysMarker::KIND, id.as_str(), Expect::Any);
            b.index_delete(
                IDX_API_NAME,
                &self.api_name_index(&api.tenant, api.name.as_str()),
            );
            b.index_delete(IDX_APIS, api_position(&api).as_bytes());
            rec.record(&mut b, id.as_str(), Some(&api.tenant))?;
            self.commit_changing(b, &[], &[&api.id]).await
        })
        .await
    }

    async fn has_active_keys(&self, api: &ApiId, now: Timestamp) -> Result<bool, KeysError> {
        let prefix = format!("{}/", api.as_str());
        let mut after: Option<Vec<u8>> = None;
        loop {
            let entries = self
                .store
                .scan(IDX_KEYS_BY_API, prefix.as_bytes(), after.as_deref(), 500)
                .await?;
            if entries.is_empty() {
                return Ok(false);
            }
            for e in &entries {
                if let Some((_, k)) = store::record::get::<Key>(&*self.store, &e.id).await?
                    && !k.is_dead(now)
                {
                    return Ok(true);
                }
            }
            after = entries.last().map(|e| e.key.clone());
        }
    }
}

fn api_position(api: &Api) -> String {
    format!(
        "{}/{}",
        api.tenant.as_str(),
        ordered(api.created_at, api.id.as_str())
    )
}
