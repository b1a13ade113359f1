//! Opaque object ids (`<type>_<base62, >= 96 random bits>`, never sequential) and tenant
//! names. A value of these types is valid by construction; parse at the edge.

use std::fmt;

use crate::crypto::{CryptoError, base62, random};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Result<Self, CryptoError> {
                random::id($prefix).map(Self)
            }

            pub fn parse(s: &str) -> Result<Self, &'static str> {
                match s.strip_prefix(concat!($prefix, "_")) {
                    Some(rest)
                        if (random::ID_CHARS..=32).contains(&rest.len())
                            && base62::is_base62(rest) =>
                    {
                        Ok(Self(s.to_owned()))
                    }
                    _ => Err(concat!("must be an id of the form ", $prefix, "_<base62>")),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An API in the registry.
    ApiId,
    "api"
);
id_type!(
    /// An API key (not the secret: the key's public id).
    KeyId,
    "key"
);
id_type!(
    /// A tenant's internal id.
    TenantId,
    "ten"
);
id_type!(
    /// A certificate authority (the root or an issuing CA).
    CaId,
    "ca"
);

/// A tenant's immutable name: `[a-z0-9-]{1,63}`. Paths, `tenant` fields and SPIFFE ids
/// use it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub const DEFAULT: &'static str = "default";

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

    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The tenants a caller may see: every tenant (the global admin) or one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantScope {
    All,
    One(TenantName),
}

impl TenantScope {
    pub fn allows(&self, tenant: &TenantName) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::One(t) => t == tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_their_own_type() {
        let k = KeyId::generate().unwrap();
        assert!(KeyId::parse(k.as_str()).is_ok());
        assert!(ApiId::parse(k.as_str()).is_err());
        assert!(KeyId::parse("key_1").is_err());
        assert!(KeyId::parse("key_00000000000000000-").is_err());
        assert!(KeyId::parse("key_../../etc/passwd00").is_err());
    }

    #[test]
    fn tenant_names() {
        assert!(TenantName::parse("acme-1").is_ok());
        assert!(TenantName::parse("").is_err());
        assert!(TenantName::parse("Acme").is_err());
        assert!(TenantName::parse(&"a".repeat(64)).is_err());
    }
}
