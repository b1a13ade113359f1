//! What every engine shares below the [`Store`](super::Store) contract: how a write's
//! condition is judged against a record's sealed value, the keyring's stored form, and the
//! metadata names. Engines differ in how they keep bytes, never in what the bytes mean.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Expect, Rev, StoreError, envelope};
use crate::crypto::{
    hex,
    keyring::{Keyring, MasterKey, WrappedKeyring},
};

/// The data format this build writes (every engine: a backup carries it).
pub const FORMAT_VERSION: u32 = 1;

/// Metadata: the keyring, every key wrapped by the master key.
pub(crate) const KEYRING: &str = "keyring";
/// Metadata: a keyring wrapped by the next master key, during a master-key rotation.
pub(crate) const NEXT_KEYRING: &str = "keyring_next";
/// Metadata: the data format version, u32 big-endian.
pub(crate) const FORMAT: &str = "format";

/// The metadata name of a log's head.
pub(crate) fn head_meta(log: super::Kind) -> String {
    format!("log/{}", log.0)
}

/// Whether a record's current sealed value satisfies `expect`.
pub(crate) fn holds(current: Option<&[u8]>, expect: Expect) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Rev(r) => current.and_then(envelope::rev_of) == Some(r),
    }
}

/// The revision a write gets, or `None` if its condition fails.
pub(crate) fn next_rev(current: Option<&[u8]>, expect: Expect) -> Option<Rev> {
    let current_rev = current.map(|c| envelope::rev_of(c).unwrap_or(Rev(0)));
    match (expect, current_rev) {
        (Expect::Absent, None) => Some(Rev(1)),
        (Expect::Absent, Some(_)) => None,
        (Expect::Rev(want), Some(have)) if want == have => Some(Rev(have.0 + 1)),
        (Expect::Rev(_), _) => None,
        (Expect::Any, None) => Some(Rev(1)),
        (Expect::Any, Some(have)) => Some(Rev(have.0 + 1)),
    }
}

/// The keyring as stored at `m/keyring` (and staged at `m/keyring_next`): JSON with every
/// wrapped key in hex, the data keys by version,
/// `{"current":2,"data_keys":{"1":"<hex>","2":"<hex>"},"pepper":"<hex>"}`.
/// Unknown fields are ignored; every listed one is required.
#[derive(Serialize, Deserialize)]
struct StoredKeyring {
    current: u32,
    data_keys: BTreeMap<u32, String>,
    pepper: String,
}

pub(crate) fn encode_keyring(w: &WrappedKeyring) -> Result<Vec<u8>, StoreError> {
    let stored = StoredKeyring {
        current: w.current,
        data_keys: w
            .data_keys
            .iter()
            .map(|(v, k)| (*v, hex::encode(k)))
            .collect(),
        pepper: hex::encode(&w.pepper),
    };
    serde_json::to_vec(&stored).map_err(|_| StoreError::Corrupt {
        kind: "keyring",
        id: "encoding".into(),
    })
}

pub(crate) fn decode_keyring(bytes: &[u8]) -> Option<WrappedKeyring> {
    let stored: StoredKeyring = serde_json::from_slice(bytes).ok()?;
    let data_keys = stored
        .data_keys
        .iter()
        .map(|(v, k)| Some((*v, hex::decode(k)?)))
        .collect::<Option<_>>()?;
    Some(WrappedKeyring {
        current: stored.current,
        data_keys,
        pepper: hex::decode(&stored.pepper)?,
    })
}

/// Unwraps the keyring with `master`, finishing or abandoning an interrupted master-key
/// rotation: if only the staged keyring opens with this key, the rotation got as far as
/// switching keys and is completed; if the current one opens, a staged one is dropped.
pub(crate) fn unwrap_keyring(
    db: &dyn super::Database,
    master: &MasterKey,
) -> Result<Option<Keyring>, StoreError> {
    let Some(wrapped) = db.wrapped_keyring()? else {
        return Ok(None);
    };
    let staged = db.meta(NEXT_KEYRING)?.and_then(|b| decode_keyring(&b));
    match Keyring::unwrap(master, &wrapped) {
        Ok(ring) => {
            if staged.is_some() {
                db.delete_meta(NEXT_KEYRING)?;
            }
            Ok(Some(ring))
        }
        Err(crate::crypto::CryptoError::Tampered) => {
            let ring = staged
                .and_then(|s| Keyring::unwrap(master, &s).ok())
                .ok_or(StoreError::WrongMasterKey)?;
            db.promote_keyring(None)?;
            Ok(Some(ring))
        }
        Err(_) => Err(StoreError::Corrupt {
            kind: "keyring",
            id: String::new(),
        }),
    }
}
