//! Who is calling and what they may do. Authentication produces a [`Principal`]; every
//! handler then asks [`authorize`] for the permission its route needs, and gets back the
//! tenants it may touch. Until tenants and roles land, the bootstrap admin is the only
//! principal with permissions; any other Tessera identity is authenticated but refused (403).

use crate::{
    ids::TenantScope,
    pki::{
        identity::{Identity, SpiffeId},
        serial::Serial,
    },
};

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    ApisRead,
    ApisWrite,
    KeysCreate,
    KeysRead,
    KeysUpdate,
    KeysRotate,
    KeysRevoke,
    KeysVerify,
    CertsIssue,
    CertsRead,
    CertsRevoke,
    CertsVerify,
    AuditRead,
    MetricsRead,
    TenantsAdmin,
    Admin,
}

impl Permission {
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
        }
    }
}

/// An authenticated caller: a client certificate issued by Tessera, mapped to its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: SpiffeId,
    /// Serial of the certificate it authenticated with.
    pub serial: Serial,
}

/// Why a request was refused after authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The principal lacks the permission.
    #[error("the caller lacks the permission {}", .0.as_str())]
    Forbidden(Permission),
}

/// The one authorisation decision: may `principal` use `permission`, and on which tenants?
pub fn authorize(principal: &Principal, permission: Permission) -> Result<TenantScope, Denied> {
    match principal.id.identity {
        Identity::Admin => Ok(TenantScope::All),
        Identity::Service { .. } => Err(Denied::Forbidden(permission)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ids::TenantName,
        pki::identity::{ServiceName, TrustDomain},
    };

    fn principal(identity: Identity) -> Principal {
        Principal {
            id: SpiffeId::new(TrustDomain::parse("t.local").unwrap(), identity),
            serial: Serial::parse("1a").unwrap(),
        }
    }

    #[test]
    fn only_the_admin_is_allowed_before_roles_exist() {
        let admin = principal(Identity::Admin);
        assert_eq!(
            authorize(&admin, Permission::KeysCreate),
            Ok(TenantScope::All)
        );
        let svc = principal(Identity::Service {
            tenant: TenantName::default_tenant(),
            name: ServiceName::parse("billing").unwrap(),
        });
        assert_eq!(
            authorize(&svc, Permission::KeysVerify),
            Err(Denied::Forbidden(Permission::KeysVerify))
        );
    }
}
