//! Identities: the SPIFFE-style URI that Tessera puts in every client certificate, and
//! certificate serials, with no TLS or CA dependency (access control and configuration use them
//! without depending on the PKI). A verified chain is not yet an identity: the leaf's single URI SAN is
//! parsed here and mapped to one of the shapes Tessera issues.
//!
//! ```text
//! spiffe://<trust-domain>/system/admin                   the bootstrap admin
//! spiffe://<trust-domain>/tenant/<tenant>/svc/<name>     a service of a tenant
//! ```

pub mod serial;

use std::fmt;

use crate::ids::TenantName;

pub use serial::Serial;

/// A SPIFFE trust domain: `[a-z0-9._-]{1,255}`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let ok = (1..=255).contains(&s.len())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
            && !s.starts_with('.')
            && !s.ends_with('.');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be a SPIFFE trust domain: 1 to 255 characters of [a-z0-9._-]")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A service name within a tenant: `[a-z0-9][a-z0-9._-]{0,62}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let b = s.as_bytes();
        let ok = (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1 to 63 characters of [a-z0-9._-], starting with a letter or digit")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ServiceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Who a Tessera certificate names.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Identity {
    /// `/system/admin`: the bootstrap administrator. Never issued through the API.
    Admin,
    /// `/tenant/<tenant>/svc/<name>`.
    Service {
        tenant: TenantName,
        name: ServiceName,
    },
}

impl Identity {
    pub fn path(&self) -> String {
        match self {
            Identity::Admin => "/system/admin".to_owned(),
            Identity::Service { tenant, name } => {
                format!("/tenant/{}/svc/{}", tenant.as_str(), name.as_str())
            }
        }
    }
}

/// A SPIFFE id in Tessera's trust domain, in one of the shapes of [`Identity`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SpiffeId {
    pub trust_domain: TrustDomain,
    pub identity: Identity,
}

/// Longest URI accepted (the SPIFFE limit).
const MAX_URI: usize = 2048;

impl SpiffeId {
    pub fn new(trust_domain: TrustDomain, identity: Identity) -> Self {
        Self {
            trust_domain,
            identity,
        }
    }

    /// Parses a URI and accepts it only in `expected` trust domain and a Tessera shape.
    pub fn parse(uri: &str, expected: &TrustDomain) -> Result<Self, &'static str> {
        const BAD: &str = "must be a SPIFFE id of this trust domain";
        if uri.len() > MAX_URI {
            return Err(BAD);
        }
        let rest = uri.strip_prefix("spiffe://").ok_or(BAD)?;
        let (td, path) = rest.split_once('/').ok_or(BAD)?;
        if td != expected.as_str() {
            return Err(BAD);
        }
        let segments: Vec<&str> = path.split('/').collect();
        let identity = match segments.as_slice() {
            ["system", "admin"] => Identity::Admin,
            ["tenant", t, "svc", n] => Identity::Service {
                tenant: TenantName::parse(t).map_err(|_| BAD)?,
                name: ServiceName::parse(n).map_err(|_| BAD)?,
            },
            _ => return Err(BAD),
        };
        Ok(Self {
            trust_domain: expected.clone(),
            identity,
        })
    }

    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}{}",
            self.trust_domain.as_str(),
            self.identity.path()
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("tessera.local").unwrap()
    }

    #[test]
    fn parses_only_tessera_shapes_in_its_domain() {
        let a = SpiffeId::parse("spiffe://tessera.local/system/admin", &td()).unwrap();
        assert_eq!(a.identity, Identity::Admin);
        let s = SpiffeId::parse("spiffe://tessera.local/tenant/acme/svc/billing", &td()).unwrap();
        assert_eq!(s.uri(), "spiffe://tessera.local/tenant/acme/svc/billing");
        for bad in [
            "spiffe://other.domain/system/admin",
            "spiffe://tessera.local/system/admin/",
            "spiffe://tessera.local/system/root",
            "spiffe://tessera.local/tenant/acme/svc/../admin",
            "spiffe://tessera.local/tenant/ACME/svc/x",
            "https://tessera.local/system/admin",
            "spiffe://tessera.local",
        ] {
            assert!(SpiffeId::parse(bad, &td()).is_err(), "{bad}");
        }
    }
}
