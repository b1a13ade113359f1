//! Leaked keys: a token reported by a secret scanner (GitHub's secret scanning partner
//! programme) or by anyone holding it is checked and, when it is a live key, revoked at once
//! with the reason `leaked`.
//!
//! The key format's checksum is checked first, so text that only looks like a key costs no
//! look-up; then the blind index and the stored HMAC (constant time), exactly as verification
//! finds a key. Whoever holds a key may report it: holding it is all a report proves, and
//! everything it could do with the key is less than what revoking it takes away.

use super::{KeyKind, Keys, KeysError, model::KeyRevocationReason};
use crate::{
    clock::Timestamp,
    crypto::apikey::ApiKey,
    ids::{KeyId, TenantName, TenantScope},
    store::Recorder,
};

/// What a reported token turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Leak {
    /// Not a key at all: the format or its checksum is wrong (no look-up was made).
    Malformed,
    /// Well formed, but no key has this secret.
    Unknown,
    /// A key that this report revoked.
    Revoked { id: KeyId, tenant: TenantName },
    /// A key that was already revoked.
    AlreadyRevoked { id: KeyId, tenant: TenantName },
}

impl Leak {
    /// Whether the token is one of ours (a true positive for the scanner).
    pub fn is_ours(&self) -> bool {
        matches!(self, Self::Revoked { .. } | Self::AlreadyRevoked { .. })
    }

    /// The label metrics use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked { .. } => "revoked",
            Self::AlreadyRevoked { .. } => "already_revoked",
        }
    }
}

impl Keys {
    /// Checks a reported token and revokes the key it is (API key or root key, any tenant),
    /// recording the revocation through `rec` in the change's own batch.
    pub async fn report_leak(
        &self,
        rec: &dyn Recorder,
        token: &str,
        now: Timestamp,
    ) -> Result<Leak, KeysError> {
        if token.len() > super::verify::MAX_KEY_FIELD {
            return Ok(Leak::Malformed);
        }
        let Ok(presented) = ApiKey::parse(token) else {
            return Ok(Leak::Malformed);
        };
        let Some(entry) = self.find(&presented).await? else {
            return Ok(Leak::Unknown);
        };
        let key = entry.key();
        let (id, tenant) = (key.id.clone(), key.tenant.clone());
        if key.revoked_at.is_some() {
            return Ok(Leak::AlreadyRevoked { id, tenant });
        }
        let kind = KeyKind::of(key);
        let view = self
            .revoke_key(
                rec,
                &TenantScope::All,
                kind,
                &id,
                Some(KeyRevocationReason::Leaked),
                now,
            )
            .await?;
        // A concurrent revocation may have won: it is revoked either way.
        Ok(
            if view.revocation_reason == Some(KeyRevocationReason::Leaked) {
                Leak::Revoked { id, tenant }
            } else {
                Leak::AlreadyRevoked { id, tenant }
            },
        )
    }
}
