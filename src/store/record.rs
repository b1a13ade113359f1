//! Typed records over the byte-level [`Store`]: JSON plaintext, sealed by the store.

use serde::{Serialize, de::DeserializeOwned};

use super::{Batch, Expect, Kind, Rev, Store, StoreError};
use crate::crypto::secret::SecretBytes;

/// A type stored as sealed records of one [`Kind`].
pub trait Record: Serialize + DeserializeOwned {
    const KIND: Kind;
}

/// Encodes a record into a zeroizing buffer sized up front.
pub fn encode<R: Record>(record: &R) -> Result<SecretBytes, StoreError> {
    let mut buf = SecretBytes::with_capacity(1024);
    serde_json::to_writer(buf.expose_mut(), record).map_err(|_| StoreError::Corrupt {
        kind: R::KIND.0,
        id: String::new(),
    })?;
    Ok(buf)
}

pub fn decode<R: Record>(id: &str, plaintext: &SecretBytes) -> Result<R, StoreError> {
    serde_json::from_slice(plaintext.expose()).map_err(|_| StoreError::Corrupt {
        kind: R::KIND.0,
        id: id.to_owned(),
    })
}

/// Reads one record with its revision.
pub async fn get<R: Record>(store: &dyn Store, id: &str) -> Result<Option<(Rev, R)>, StoreError> {
    match store.get(R::KIND, id).await? {
        Some(s) => Ok(Some((s.rev, decode(id, &s.plaintext)?))),
        None => Ok(None),
    }
}

/// Reads a record that is made once and never changed (a signing key), or makes and stores
/// it; when another process made it first, theirs is the one (every node uses the same).
pub async fn get_or_create<R: Record>(
    store: &dyn Store,
    id: &str,
    make: impl FnOnce() -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    if let Some((_, r)) = get::<R>(store, id).await? {
        return Ok(r);
    }
    let r = make()?;
    let mut b = Batch::new();
    b.put_record(id, &r, Expect::Absent)?;
    match store.commit(b).await {
        Ok(()) => Ok(r),
        Err(StoreError::Conflict) => get::<R>(store, id)
            .await?
            .map(|(_, r)| r)
            .ok_or(StoreError::Conflict),
        Err(e) => Err(e),
    }
}

impl Batch {
    /// Adds a typed record write.
    pub fn put_record<R: Record>(
        &mut self,
        id: &str,
        record: &R,
        expect: Expect,
    ) -> Result<(), StoreError> {
        self.put(R::KIND, id, encode(record)?, expect)
    }
}
