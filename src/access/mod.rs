//! Who is calling and what they may do.
//!
//! Authentication produces a [`Principal`]: a client certificate issued by Tessera (mapped to
//! its SPIFFE identity and, for services, to the roles bound to it in its tenant), or a root
//! key (a `tsr_` key bound to one tenant, carrying its permissions). Every handler then asks
//! [`authorize`] for the permission its route needs and gets back the tenants it may touch;
//! objects outside them are answered 404 by the domain, exactly like missing ones.
//! [`may_grant`] is the no-escalation rule: nobody hands out a permission it lacks, and only
//! the global admin grants `admin`.

pub mod roles;
mod service;
pub mod tenants;

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    identity::{Serial, SpiffeId},
    ids::{KeyId, TenantName, TenantScope},
};

pub use roles::RoleName;
pub use service::{Access, AccessError, Binding, BindingView, CustomRole, RoleView};
pub use tenants::Tenant;

/// A permission a route needs.
///
/// The numbers are the permission's bit in a [`PermSet`], and that bit set is signed into
/// service certificates as their ceiling (`pki::ceiling`): never renumber a permission, only
/// add new ones with new numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Permission {
    ApisRead = 0,
    ApisWrite = 1,
    KeysCreate = 2,
    KeysRead = 3,
    KeysUpdate = 4,
    KeysRotate = 5,
    KeysRevoke = 6,
    KeysVerify = 7,
    CertsIssue = 8,
    CertsRead = 9,
    CertsRevoke = 10,
    CertsVerify = 11,
    AuditRead = 12,
    MetricsRead = 13,
    TenantsAdmin = 14,
    Admin = 15,
    FeedRead = 16,
}

impl Permission {
    pub const ALL: [Permission; 17] = [
        Permission::ApisRead,
        Permission::ApisWrite,
        Permission::KeysCreate,
        Permission::KeysRead,
        Permission::KeysUpdate,
        Permission::KeysRotate,
        Permission::KeysRevoke,
        Permission::KeysVerify,
        Permission::CertsIssue,
        Permission::CertsRead,
        Permission::CertsRevoke,
        Permission::CertsVerify,
        Permission::AuditRead,
        Permission::MetricsRead,
        Permission::TenantsAdmin,
        Permission::Admin,
        Permission::FeedRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ApisRead => "apis:read",
            Permission::ApisWrite => "apis:write",
            Permission::KeysCreate => "keys:create",
            Permission::KeysRead => "keys:read",
            Permission::KeysUpdate => "keys:update",
            Permission::KeysRotate => "keys:rotate",
            Permission::KeysRevoke => "keys:revoke",
            Permission::KeysVerify => "keys:verify",
            Permission::CertsIssue => "certs:issue",
            Permission::CertsRead => "certs:read",
            Permission::CertsRevoke => "certs:revoke",
            Permission::CertsVerify => "certs:verify",
            Permission::AuditRead => "audit:read",
            Permission::MetricsRead => "metrics:read",
            Permission::TenantsAdmin => "tenants:admin",
            Permission::Admin => "admin",
            Permission::FeedRead => "feed:read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermSet(u32);

impl PermSet {
    pub const EMPTY: PermSet = PermSet(0);

    pub fn of(perms: &[Permission]) -> Self {
        Self(perms.iter().fold(0, |acc, p| acc | (1 << *p as u8)))
    }

    pub fn all() -> Self {
        Self::of(&Permission::ALL)
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & (1 << p as u8) != 0
    }

    pub fn union(self, other: PermSet) -> Self {
        Self(self.0 | other.0)
    }

    pub fn without(self, p: Permission) -> Self {
        Self(self.0 & !(1 << p as u8))
    }

    pub fn intersect(self, other: PermSet) -> Self {
        Self(self.0 & other.0)
    }

    /// The bit set (bit `n` is the permission numbered `n`), as certificates carry it.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// From a bit set; bits naming no permission of this build are dropped (a ceiling can
    /// only shrink by that).
    pub fn from_bits(bits: u32) -> Self {
        Self(bits & Self::all().0)
    }

    pub fn is_subset(self, of: PermSet) -> bool {
        self.0 & !of.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Permission::as_str).collect()
    }
}

impl fmt::Debug for PermSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Serialize for PermSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for PermSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        if names.len() > Permission::ALL.len() * 2 {
            return Err(serde::de::Error::custom("must list each permission once"));
        }
        let mut set = PermSet::EMPTY;
        for n in names {
            let p = Permission::parse(&n)
                .ok_or_else(|| serde::de::Error::custom("must be known permissions"))?;
            set = set.union(PermSet::of(&[p]));
        }
        Ok(set)
    }
}

/// How a principal authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate issued by Tessera.
    Cert {
        /// Shared with the connection it was presented on (see `http::extract::CertCaller`).
        id: Arc<SpiffeId>,
        serial: Serial,
        /// SHA-256 of the certificate DER, hex.
        fingerprint: String,
    },
    /// A root key (`Authorization: Bearer tsr_...`).
    RootKey { id: KeyId },
}

/// An authenticated caller with its resolved permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub credential: Credential,
    /// `None` for the global admin; otherwise the one tenant it acts in.
    pub tenant: Option<TenantName>,
    pub roles: Vec<String>,
    pub permissions: PermSet,
}

impl Principal {
    /// The name the audit log and `whoami` use: the SPIFFE id or the root key's id.
    pub fn name(&self) -> String {
        match &self.credential {
            Credential::Cert { id, .. } => id.uri(),
            Credential::RootKey { id } => id.to_string(),
        }
    }

    /// Whether this is the global admin (admin permission, no tenant).
    pub fn is_global_admin(&self) -> bool {
        self.tenant.is_none() && self.permissions.contains(Permission::Admin)
    }

    /// The most a credential this principal issues (a certificate, an enrolment token) may
    /// ever hold: what the principal holds now; everything for the global admin.
    pub fn ceiling(&self) -> PermSet {
        if self.is_global_admin() {
            PermSet::all()
        } else {
            self.permissions
        }
    }
}

/// Why a request was refused after authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The principal lacks the permission.
    #[error("the caller lacks the permission {}", .0.as_str())]
    Forbidden(Permission),
    /// The request would grant more than the caller holds.
    #[error("the caller cannot grant permissions it does not hold")]
    Escalation,
}

/// The one authorisation decision: may `principal` use `permission`, and on which tenants?
pub fn authorize(principal: &Principal, permission: Permission) -> Result<TenantScope, Denied> {
    if principal.is_global_admin() {
        return Ok(TenantScope::All);
    }
    match &principal.tenant {
        Some(t) if principal.permissions.contains(permission) => Ok(TenantScope::One(t.clone())),
        _ => Err(Denied::Forbidden(permission)),
    }
}

/// The no-escalation rule: `principal` may hand out `granted` (to a role, a binding, a root
/// key, or a certificate's identity) only if it holds all of it; `admin` only the global
/// admin may grant.
pub fn may_grant(principal: &Principal, granted: PermSet) -> Result<(), Denied> {
    if principal.is_global_admin() {
        return Ok(());
    }
    if granted.contains(Permission::Admin) || !granted.is_subset(principal.permissions) {
        return Err(Denied::Escalation);
    }
    Ok(())
}

/// Acting on another principal's credential (rotating or revoking a root key, re-binding or
/// unbinding a service, revoking its certificate, replacing a role it holds) needs the same
/// authority as granting what that credential holds: a tenant principal never acts on a wider
/// one in its tenant.
pub fn may_act_on(principal: &Principal, held: PermSet) -> Result<(), Denied> {
    may_grant(principal, held)
}

/// The permissions a root key's scopes name (`admin` never: root keys act within a tenant).
pub fn root_key_permissions<'a>(scopes: impl IntoIterator<Item = &'a str>) -> PermSet {
    scopes
        .into_iter()
        .filter_map(Permission::parse)
        .filter(|p| *p != Permission::Admin)
        .fold(PermSet::EMPTY, |acc, p| acc.union(PermSet::of(&[p])))
}

/// The tenant a create call acts in: the global admin names it (default `default`); anyone
/// else acts in its own tenant and may not name one.
pub fn target_tenant(
    principal: &Principal,
    requested: Option<TenantName>,
) -> Result<TenantName, &'static str> {
    match (&principal.tenant, requested) {
        (None, Some(t)) => Ok(t),
        (None, None) => Ok(TenantName::default_tenant()),
        (Some(own), None) => Ok(own.clone()),
        (Some(_), Some(_)) => Err("may only be given by the global admin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, ServiceName, TrustDomain};

    fn principal(tenant: Option<&str>, perms: &[Permission]) -> Principal {
        let identity = match tenant {
            None => Identity::Admin,
            Some(t) => Identity::Service {
                tenant: TenantName::parse(t).unwrap(),
                name: ServiceName::parse("svc").unwrap(),
            },
        };
        Principal {
            credential: Credential::Cert {
                id: SpiffeId::new(TrustDomain::parse("t.local").unwrap(), identity).into(),
                serial: Serial::parse("1a").unwrap(),
                fingerprint: String::new(),
            },
            tenant: tenant.map(|t| TenantName::parse(t).unwrap()),
            roles: vec![],
            permissions: PermSet::of(perms),
        }
    }

    #[test]
    fn scopes_follow_tenant_and_permission() {
        let admin = principal(None, &Permission::ALL);
        assert_eq!(
            authorize(&admin, Permission::KeysCreate),
            Ok(TenantScope::All)
        );
        let issuer = principal(Some("acme"), &[Permission::KeysCreate]);
        assert_eq!(
            authorize(&issuer, Permission::KeysCreate),
            Ok(TenantScope::One(TenantName::parse("acme").unwrap()))
        );
        assert_eq!(
            authorize(&issuer, Permission::KeysRevoke),
            Err(Denied::Forbidden(Permission::KeysRevoke))
        );
        // The admin permission inside a tenant is not global.
        let odd = principal(Some("acme"), &[Permission::Admin]);
        assert!(authorize(&odd, Permission::KeysRead).is_err());
    }

    #[test]
    fn nobody_grants_more_than_it_holds() {
        let ta = principal(
            Some("acme"),
            &[Permission::KeysCreate, Permission::KeysRead],
        );
        assert!(may_grant(&ta, PermSet::of(&[Permission::KeysRead])).is_ok());
        assert_eq!(
            may_grant(&ta, PermSet::of(&[Permission::KeysRevoke])),
            Err(Denied::Escalation)
        );
        let all_but_admin = principal(Some("acme"), &Permission::ALL);
        assert_eq!(
            may_grant(&all_but_admin, PermSet::of(&[Permission::Admin])),
            Err(Denied::Escalation)
        );
        assert!(may_grant(&principal(None, &Permission::ALL), PermSet::all()).is_ok());
    }

    // The three tests below kill mutants that survived `cargo mutants` (docs/TESTING.md):
    // a union that drops what two roles both grant, a ceiling (intersect) that lets a
    // credential keep what its issuer lacks, acting on a wider credential, and root keys
    // holding admin or nothing.
    #[test]
    fn unions_and_ceilings_are_exact() {
        use Permission::{KeysCreate, KeysRead, KeysRevoke};
        let a = PermSet::of(&[KeysRead, KeysCreate]);
        let b = PermSet::of(&[KeysRead, KeysRevoke]);
        assert_eq!(a.union(b), PermSet::of(&[KeysRead, KeysCreate, KeysRevoke]));
        assert_eq!(a.union(a), a);
        assert_eq!(a.intersect(b), PermSet::of(&[KeysRead]));
        assert_eq!(a.intersect(PermSet::EMPTY), PermSet::EMPTY);
        assert_eq!(a.intersect(PermSet::all()), a);
    }

    #[test]
    fn acting_on_a_credential_needs_all_it_holds() {
        use Permission::{Admin, KeysCreate, KeysRead, KeysRevoke};
        let ta = principal(Some("acme"), &[KeysRead, KeysRevoke]);
        assert!(may_act_on(&ta, PermSet::of(&[KeysRead])).is_ok());
        assert_eq!(
            may_act_on(&ta, PermSet::of(&[KeysRead, KeysCreate])),
            Err(Denied::Escalation)
        );
        assert_eq!(
            may_act_on(&ta, PermSet::of(&[Admin])),
            Err(Denied::Escalation)
        );
        assert!(may_act_on(&principal(None, &Permission::ALL), PermSet::all()).is_ok());
    }

    #[test]
    fn root_keys_hold_their_scopes_but_never_admin() {
        use Permission::{KeysRead, KeysVerify};
        assert_eq!(
            root_key_permissions(["keys:read", "admin", "nope", "keys:verify", "keys:read"]),
            PermSet::of(&[KeysRead, KeysVerify])
        );
        assert_eq!(root_key_permissions(["admin"]), PermSet::EMPTY);
    }

    #[test]
    fn permission_sets_round_trip() {
        let s = PermSet::of(&[Permission::KeysVerify, Permission::CertsVerify]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["keys:verify","certs:verify"]"#);
        assert_eq!(serde_json::from_str::<PermSet>(&json).unwrap(), s);
        assert!(serde_json::from_str::<PermSet>(r#"["root"]"#).is_err());
    }
}
