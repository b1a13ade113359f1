//! Roles: the built-in ones (`admin`, `tenant-admin`, `issuer`, `verifier`, `auditor`) and
//! custom roles defined per tenant.

use super::{PermSet, Permission};

/// A role name: `[a-z0-9-]{1,63}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1 to 63 characters of [a-z0-9-]")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RoleName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The built-in roles and what they grant.
pub fn builtin(name: &str) -> Option<PermSet> {
    use Permission::*;
    Some(match name {
        "admin" => PermSet::all(),
        "tenant-admin" => PermSet::all().without(Admin),
        "issuer" => PermSet::of(&[
            ApisRead,
            KeysCreate,
            KeysRead,
            KeysRotate,
            KeysRevoke,
            CertsIssue,
            CertsRead,
            CertsRevoke,
        ]),
        "verifier" => PermSet::of(&[KeysVerify, CertsVerify, FeedRead]),
        "auditor" => PermSet::of(&[AuditRead, MetricsRead, ApisRead, KeysRead, CertsRead]),
        _ => return None,
    })
}

pub const BUILTIN: [&str; 5] = ["admin", "tenant-admin", "issuer", "verifier", "auditor"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_nested_as_documented() {
        let ta = builtin("tenant-admin").unwrap();
        for r in ["issuer", "verifier", "auditor"] {
            assert!(builtin(r).unwrap().is_subset(ta), "{r}");
        }
        assert!(!ta.contains(Permission::Admin));
        assert!(builtin("nobody").is_none());
    }
}
