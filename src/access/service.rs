//! The access service: tenants, custom roles, role bindings, and resolving an authenticated
//! certificate to a [`Principal`]. A binding or role change takes effect on the next request:
//! the resolution cache is dropped before the change is acknowledged.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    Credential, Denied, PermSet, Permission, Principal, may_act_on, may_grant,
    roles::{self, RoleName},
    tenants::Tenant,
};
use crate::{
    cache::EpochCache,
    clock::Timestamp,
    identity::{Identity, Serial, ServiceName, SpiffeId},
    ids::{TenantId, TenantName, TenantScope},
    page::{Page, PageRequest},
    store::{self, Batch, Expect, IndexName, Kind, Record, Recorder, Store, StoreError},
};

/// Errors of the access layer.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A role defined by a tenant.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomRole {
    pub tenant: TenantName,
    pub name: RoleName,
    pub permissions: PermSet,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Record for CustomRole {
    const KIND: Kind = Kind("role");
}

/// The roles bound to one service identity in a tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Binding {
    pub tenant: TenantName,
    pub identity: ServiceName,
    pub roles: Vec<RoleName>,
    pub updated_at: Timestamp,
}

impl Record for Binding {
    const KIND: Kind = Kind("binding");
}

/// A binding as the API shows it, with the permissions it grants now.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BindingView {
    pub tenant: TenantName,
    pub identity: ServiceName,
    pub spiffe_id: String,
    pub roles: Vec<RoleName>,
    pub permissions: PermSet,
    pub updated_at: Timestamp,
}

/// A role as the API lists it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RoleView {
    pub name: String,
    pub builtin: bool,
    pub permissions: PermSet,
}

const IDX_TENANTS: IndexName = IndexName("tenants");
const IDX_ROLES: IndexName = IndexName("roles_by_tenant");
const IDX_BINDINGS: IndexName = IndexName("bindings_by_tenant");

fn pair(t: &TenantName, name: &str) -> String {
    format!("{}/{}", t.as_str(), name)
}

type Resolved = Arc<(Vec<String>, PermSet)>;

pub struct Access {
    store: Arc<dyn Store>,
    trust_domain: crate::identity::TrustDomain,
    /// Resolved bindings; a change to any role or binding forgets them all, and a resolution
    /// that read the store before that change cannot put its (perhaps wider) answer back.
    cache: EpochCache<(TenantName, ServiceName), Resolved>,
}

/// How many resolved bindings are held.
const RESOLVED_CAPACITY: usize = 1 << 16;

impl Access {
    pub fn new(store: Arc<dyn Store>, trust_domain: crate::identity::TrustDomain) -> Self {
        Self {
            store,
            trust_domain,
            cache: EpochCache::new(RESOLVED_CAPACITY),
        }
    }

    fn forget_all(&self) {
        self.cache.invalidate_all();
    }

    /// Applies other nodes' changes to a shared database: any role, binding or tenant
    /// changed forgets every resolved binding.
    pub fn apply_remote(&self, changes: &[crate::store::Changed]) {
        if changes
            .iter()
            .any(|c| matches!(c.kind.as_str(), "role" | "binding" | "tenant" | "*"))
        {
            self.forget_all();
        }
    }

    // ---- tenants ----

    /// Creates the `default` tenant if it does not exist (data from before tenants lives in
    /// it; every first start has it).
    pub async fn ensure_default_tenant(&self, now: Timestamp) -> Result<(), AccessError> {
        match self
            .create_tenant(&store::NoRecord, TenantName::default_tenant(), now)
            .await
        {
            Ok(_) | Err(AccessError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn create_tenant(
        &self,
        rec: &dyn Recorder,
        name: TenantName,
        now: Timestamp,
    ) -> Result<Tenant, AccessError> {
        let t = Tenant {
            id: TenantId::generate().map_err(|_| StoreError::Crypto)?,
            name,
            created_at: now,
        };
        let mut b = Batch::new();
        b.put_record(t.name.as_str(), &t, Expect::Absent)?;
        b.index_put(
            IDX_TENANTS,
            t.name.as_str().as_bytes(),
            t.name.as_str(),
            false,
        );
        rec.record(&mut b, t.id.as_str(), Some(&t.name))?;
        match self.store.commit(b).await {
            Ok(()) => Ok(t),
            Err(StoreError::Conflict) => Err(AccessError::Conflict("the tenant exists")),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn tenant(&self, name: &TenantName) -> Result<Option<Tenant>, AccessError> {
        Ok(store::record::get::<Tenant>(&*self.store, name.as_str())
            .await?
            .map(|(_, t)| t))
    }

    /// The tenant, if it exists and the caller may see it.
    pub async fn visible_tenant(
        &self,
        scope: &TenantScope,
        name: &TenantName,
    ) -> Result<Tenant, AccessError> {
        if !scope.allows(name) {
            return Err(AccessError::NotFound);
        }
        self.tenant(name).await?.ok_or(AccessError::NotFound)
    }

    pub async fn list_tenants(
        &self,
        scope: &TenantScope,
        page: &PageRequest,
    ) -> Result<Page<Tenant>, AccessError> {
        if let TenantScope::One(t) = scope {
            let items = self.tenant(t).await?.into_iter().collect();
            return Ok(Page {
                items,
                next_cursor: None,
            });
        }
        crate::page::from_index(&*self.store, IDX_TENANTS, b"", page, |id| async move {
            Ok::<_, AccessError>(
                store::record::get::<Tenant>(&*self.store, &id)
                    .await?
                    .map(|(_, t)| t),
            )
        })
        .await
    }

    // ---- roles ----

    /// What a role grants in a tenant (built-in or custom); `None` if it does not exist.
    pub async fn role_permissions(
        &self,
        tenant: &TenantName,
        role: &RoleName,
    ) -> Result<Option<PermSet>, AccessError> {
        if let Some(p) = roles::builtin(role.as_str()) {
            return Ok(Some(p));
        }
        Ok(
            store::record::get::<CustomRole>(&*self.store, &pair(tenant, role.as_str()))
                .await?
                .map(|(_, r)| r.permissions),
        )
    }

    pub async fn put_role(
        &self,
        rec: &dyn Recorder,
        caller: &Principal,
        tenant: &TenantName,
        name: RoleName,
        permissions: PermSet,
        now: Timestamp,
    ) -> Result<CustomRole, AccessError> {
        if roles::builtin(name.as_str()).is_some() {
            return Err(AccessError::Invalid {
                field: "name",
                message: "must not be the name of a built-in role",
            });
        }
        may_grant(caller, permissions)?;
        self.tenant(tenant).await?.ok_or(AccessError::NotFound)?;
        let id = pair(tenant, name.as_str());
        let existing = store::record::get::<CustomRole>(&*self.store, &id).await?;
        // Replacing a role changes what every service bound to it holds: the caller must hold
        // what the role grants today as well as what it will grant.
        if let Some((_, old)) = &existing {
            may_act_on(caller, old.permissions)?;
        }
        let role = CustomRole {
            tenant: tenant.clone(),
            name,
            permissions,
            created_at: existing.as_ref().map_or(now, |(_, r)| r.created_at),
            updated_at: now,
        };
        let mut b = Batch::new();
        let expect = existing.map_or(Expect::Absent, |(rev, _)| Expect::Rev(rev));
        b.put_record(&id, &role, expect)?;
        b.index_put(IDX_ROLES, id.as_bytes(), &id, false);
        rec.record(&mut b, &id, Some(tenant))?;
        self.forget_all();
        let committed = self.store.commit(b).await;
        self.forget_all();
        match committed {
            Ok(()) => Ok(role),
            Err(StoreError::Conflict) => Err(AccessError::Conflict("the role changed meanwhile")),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_roles(&self, tenant: &TenantName) -> Result<Vec<RoleView>, AccessError> {
        let mut out: Vec<RoleView> = roles::BUILTIN
            .iter()
            .filter_map(|n| {
                roles::builtin(n).map(|p| RoleView {
                    name: (*n).to_owned(),
                    builtin: true,
                    permissions: p,
                })
            })
            .collect();
        let prefix = format!("{}/", tenant.as_str());
        for e in self
            .store
            .scan(IDX_ROLES, prefix.as_bytes(), None, 1000)
            .await?
        {
            if let Some((_, r)) = store::record::get::<CustomRole>(&*self.store, &e.id).await? {
                out.push(RoleView {
                    name: r.name.as_str().to_owned(),
                    builtin: false,
                    permissions: r.permissions,
                });
            }
        }
        Ok(out)
    }

    pub async fn delete_role(
        &self,
        rec: &dyn Recorder,
        caller: &Principal,
        tenant: &TenantName,
        name: &RoleName,
    ) -> Result<(), AccessError> {
        let id = pair(tenant, name.as_str());
        let (rev, role) = store::record::get::<CustomRole>(&*self.store, &id)
            .await?
            .ok_or(AccessError::NotFound)?;
        may_act_on(caller, role.permissions)?;
        let mut b = Batch::new();
        b.delete(CustomRole::KIND, &id, Expect::Rev(rev));
        b.index_delete(IDX_ROLES, id.as_bytes());
        rec.record(&mut b, &id, Some(tenant))?;
        self.forget_all();
        let r = self.store.commit(b).await;
        self.forget_all();
        r.map_err(Into::into)
    }

    // ---- bindings ----

    /// Binds roles to a service identity of a tenant (replacing its roles).
    pub async fn put_binding(
        &self,
        rec: &dyn Recorder,
        caller: &Principal,
        tenant: &TenantName,
        identity: ServiceName,
        roles: Vec<RoleName>,
        now: Timestamp,
    ) -> Result<BindingView, AccessError> {
        if roles.len() > 32 {
            return Err(AccessError::Invalid {
                field: "roles",
                message: "must hold at most 32 roles",
            });
        }
        self.tenant(tenant).await?.ok_or(AccessError::NotFound)?;
        let mut granted = PermSet::EMPTY;
        for r in &roles {
            let p = self
                .role_permissions(tenant, r)
                .await?
                .ok_or(AccessError::Invalid {
                    field: "roles",
                    message: "must name existing roles",
                })?;
            granted = granted.union(p);
        }
        may_grant(caller, granted)?;
        // Re-binding a service replaces what it holds: the caller must also hold what it holds
        // now (a tenant admin does not re-bind a service bound to a wider role).
        let (_, held) = &*self.resolve(tenant, &identity).await?;
        may_act_on(caller, *held)?;
        let id = pair(tenant, identity.as_str());
        let mut roles = roles;
        roles.sort();
        roles.dedup();
        let binding = Binding {
            tenant: tenant.clone(),
            identity,
            roles,
            updated_at: now,
        };
        let mut b = Batch::new();
        b.put_record(&id, &binding, Expect::Any)?;
        b.index_put(IDX_BINDINGS, id.as_bytes(), &id, false);
        rec.record(&mut b, &id, Some(tenant))?;
        self.forget_all();
        // Forgotten again whatever the outcome: a failed flush may still have applied it.
        let committed = self.store.commit(b).await;
        self.forget_all();
        committed?;
        Ok(self.view(&binding, granted))
    }

    fn view(&self, b: &Binding, permissions: PermSet) -> BindingView {
        BindingView {
            spiffe_id: SpiffeId::new(
                self.trust_domain.clone(),
                Identity::Service {
                    tenant: b.tenant.clone(),
                    name: b.identity.clone(),
                },
            )
            .uri(),
            tenant: b.tenant.clone(),
            identity: b.identity.clone(),
            roles: b.roles.clone(),
            permissions,
            updated_at: b.updated_at,
        }
    }

    pub async fn get_binding(
        &self,
        tenant: &TenantName,
        identity: &ServiceName,
    ) -> Result<BindingView, AccessError> {
        let (_, b) = store::record::get::<Binding>(&*self.store, &pair(tenant, identity.as_str()))
            .await?
            .ok_or(AccessError::NotFound)?;
        let (_, perms) = &*self.resolve(tenant, identity).await?;
        Ok(self.view(&b, *perms))
    }

    pub async fn list_bindings(
        &self,
        tenant: &TenantName,
    ) -> Result<Vec<BindingView>, AccessError> {
        let prefix = format!("{}/", tenant.as_str());
        let mut out = Vec::new();
        for e in self
            .store
            .scan(IDX_BINDINGS, prefix.as_bytes(), None, 10_000)
            .await?
        {
            if let Some((_, b)) = store::record::get::<Binding>(&*self.store, &e.id).await? {
                let (_, perms) = &*self.resolve(tenant, &b.identity).await?;
                out.push(self.view(&b, *perms));
            }
        }
        Ok(out)
    }

    pub async fn delete_binding(
        &self,
        rec: &dyn Recorder,
        caller: &Principal,
        tenant: &TenantName,
        identity: &ServiceName,
    ) -> Result<(), AccessError> {
        let id = pair(tenant, identity.as_str());
        let (rev, _) = store::record::get::<Binding>(&*self.store, &id)
            .await?
            .ok_or(AccessError::NotFound)?;
        let (_, held) = &*self.resolve(tenant, identity).await?;
        may_act_on(caller, *held)?;
        let mut b = Batch::new();
        b.delete(Binding::KIND, &id, Expect::Rev(rev));
        b.index_delete(IDX_BINDINGS, id.as_bytes());
        rec.record(&mut b, &id, Some(tenant))?;
        self.forget_all();
        let r = self.store.commit(b).await;
        self.forget_all();
        r.map_err(Into::into)
    }

    /// The roles bound to a service and what they grant now (cached until a role or binding
    /// changes).
    pub async fn resolve(
        &self,
        tenant: &TenantName,
        name: &ServiceName,
    ) -> Result<Resolved, AccessError> {
        let key = (tenant.clone(), name.clone());
        if let Some(r) = self.cache.get(&key) {
            return Ok(r);
        }
        let epoch = self.cache.epoch();
        let binding = store::record::get::<Binding>(&*self.store, &pair(tenant, name.as_str()))
            .await?
            .map(|(_, b)| b);
        let mut roles = Vec::new();
        let mut perms = PermSet::EMPTY;
        for r in binding.iter().flat_map(|b| b.roles.iter()) {
            if let Some(p) = self.role_permissions(tenant, r).await? {
                roles.push(r.as_str().to_owned());
                perms = perms.union(p);
            }
        }
        let resolved = Arc::new((roles, perms));
        self.cache.insert(epoch, key, resolved.clone());
        Ok(resolved)
    }

    /// The principal of a verified Tessera certificate. A service certificate holds what is
    /// bound to its name now, capped by its `ceiling` (what its issuer held when it was
    /// issued, signed into it); one without a ceiling (issued before ceilings existed) holds
    /// nothing until re-issued. The bootstrap admin certificate is the global admin.
    pub async fn principal_for_cert(
        &self,
        id: Arc<SpiffeId>,
        serial: Serial,
        fingerprint: String,
        ceiling: Option<PermSet>,
    ) -> Result<Principal, AccessError> {
        let (tenant, roles, permissions) = match &id.identity {
            Identity::Admin => (None, vec!["admin".to_owned()], PermSet::all()),
            Identity::Service { tenant, name } => {
                let r = self.resolve(tenant, name).await?;
                let permissions = r.1.intersect(ceiling.unwrap_or(PermSet::EMPTY));
                // The admin role, which only the global admin can bind, makes a global admin,
                // and only in a certificate the global admin issued (its ceiling holds admin).
                let tenant = (!permissions.contains(Permission::Admin)).then(|| tenant.clone());
                (tenant, r.0.clone(), permissions)
            }
        };
        Ok(Principal {
            credential: Credential::Cert {
                id,
                serial,
                fingerprint,
            },
            tenant,
            roles,
            permissions,
        })
    }

    /// What a service identity would be granted (for the no-escalation check on issuance).
    pub async fn granted_to(
        &self,
        tenant: &TenantName,
        name: &ServiceName,
    ) -> Result<PermSet, AccessError> {
        Ok(self.resolve(tenant, name).await?.1)
    }
}
