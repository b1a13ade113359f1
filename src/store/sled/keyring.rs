//! The keyring in the database: its codec, creating and unwrapping it at unseal, staging and
//! promoting it during a master-key rotation (offline), and, on the open store, adding a
//! data-key version, moving records over to it (the rewrap pass) and retiring old versions.
//!
//! ```text
//! m/keyring         the keyring, every key wrapped by the master key
//! m/keyring_next    the keyring wrapped by the next master key, during a master-key rotation
//! ```

use crate::sync::Locked;
use std::sync::Arc;

use super::{SledDb, SledStore, envelope, io, layout::meta_key};
use crate::store::engine::{NEXT_KEYRING, decode_keyring, encode_keyring};
use crate::{
    crypto::keyring::{Keyring, MasterKey, WrappedKeyring},
    store::StoreError,
};

const KEYRING_KEY: &[u8] = b"m/keyring";

impl SledDb {
    /// Whether the database holds a keyring (it was initialised).
    pub fn initialized(&self) -> Result<bool, StoreError> {
        Ok(self.db.get(KEYRING_KEY).map_err(io)?.is_some())
    }

    /// The persisted (wrapped) keyring.
    pub fn wrapped_keyring(&self) -> Result<Option<WrappedKeyring>, StoreError> {
        match self.db.get(KEYRING_KEY).map_err(io)? {
            Some(bytes) => Ok(Some(decode_keyring(&bytes).ok_or(StoreError::Corrupt {
                kind: "keyring",
                id: String::new(),
            })?)),
            None => Ok(None),
        }
    }

    /// Replaces the persisted keyring (durably).
    pub fn put_wrapped_keyring(&self, w: &WrappedKeyring) -> Result<(), StoreError> {
        self.db
            .insert(KEYRING_KEY, encode_keyring(w)?)
            .map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Stages the keyring wrapped by a new master key (master-key rotation, step one).
    pub fn stage_keyring(&self, w: &WrappedKeyring) -> Result<(), StoreError> {
        self.put_meta(NEXT_KEYRING, &encode_keyring(w)?)
    }

    /// Makes the staged keyring the keyring, with `meta` (e.g. a new seal configuration)
    /// in the same atomic, durable write.
    pub fn promote_keyring(&self, meta: Option<(&str, &[u8])>) -> Result<(), StoreError> {
        let staged = self.meta(NEXT_KEYRING)?.ok_or(StoreError::Corrupt {
            kind: "keyring",
            id: "no staged keyring".into(),
        })?;
        let mut b = sled::Batch::default();
        b.insert(KEYRING_KEY, staged);
        b.remove(meta_key(NEXT_KEYRING));
        if let Some((name, value)) = meta {
            b.insert(meta_key(name), value);
        }
        self.db.apply_batch(b).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Creates the keyring of a fresh database, wrapped by `master`. Not flushed: the caller
    /// flushes it with the rest of the initialisation.
    pub(super) fn create_keyring(&self, master: &MasterKey) -> Result<Keyring, StoreError> {
        let (ring, wrapped) = Keyring::generate(master).map_err(|_| StoreError::Crypto)?;
        self.db
            .insert(KEYRING_KEY, encode_keyring(&wrapped)?)
            .map_err(io)?;
        Ok(ring)
    }
}

/// [`StoreAdmin::rotate_keyring`](crate::store::StoreAdmin::rotate_keyring): adds a data-key
/// version (wrapped by `master`) and makes new writes use it. Durable when it returns. Old
/// records are moved over by [`rewrap_pass`].
pub(super) fn rotate(store: &SledStore, master: &MasterKey) -> Result<u32, StoreError> {
    let db = SledDb {
        db: store.shared.db.clone(),
    };
    // One rotation at a time: the flush queue's lock serialises them (and holds commits back
    // from asking for a flush meanwhile).
    let _one = store.shared.flush.hold()?;
    let wrapped = db.wrapped_keyring()?.ok_or(StoreError::Corrupt {
        kind: "keyring",
        id: String::new(),
    })?;
    let next = wrapped
        .with_new_version(master)
        .map_err(|_| StoreError::Crypto)?;
    let ring = Keyring::unwrap(master, &next).map_err(|_| StoreError::WrongMasterKey)?;
    db.put_wrapped_keyring(&next)?;
    install(store, ring);
    Ok(next.current)
}

/// [`StoreAdmin::rewrap_pass`](crate::store::StoreAdmin::rewrap_pass): one pass over every
/// record: those sealed under an older data key are re-sealed under the current one (compare-and-swap, so a concurrent write simply wins). Returns how many
/// old-version records the pass found. Idempotent, so a crash mid-pass loses nothing: the
/// next pass continues.
pub(super) fn rewrap_pass(store: &SledStore) -> Result<usize, StoreError> {
    let keyring = store.keyring();
    let current = keyring.current_version();
    let mut found = 0;
    for item in store.shared.db.scan_prefix(b"r/") {
        let (k, v) = item.map_err(io)?;
        if envelope::version_of(&v) == Some(current) {
            continue;
        }
        found += 1;
        let key = String::from_utf8_lossy(&k[2..]).into_owned();
        let Some((kind, id)) = key.split_once('/') else {
            continue;
        };
        let nonce = crate::crypto::random::bytes().map_err(|_| StoreError::Crypto)?;
        let Some(resealed) = envelope::reseal(&keyring, kind, id, &v, nonce) else {
            return Err(StoreError::Corrupt {
                kind: "record",
                id: key.clone(),
            });
        };
        crate::store::faulty::rewrap_point(kind, id);
        let _ = store
            .shared
            .db
            .compare_and_swap(&k, Some(&v), Some(resealed))
            .map_err(io)?;
    }
    store.shared.db.flush().map_err(io)?;
    Ok(found)
}

/// [`StoreAdmin::retire_old_keys`](crate::store::StoreAdmin::retire_old_keys): drops data-key
/// versions other than the current one from the keyring (call only after a pass found no
/// record sealed under them).
pub(super) fn retire_old(
    store: &SledStore,
    master: &MasterKey,
    current: u32,
) -> Result<bool, StoreError> {
    let db = SledDb {
        db: store.shared.db.clone(),
    };
    // Serialised with rotations: a rotation between the clean rewrap pass and this retirement
    // would otherwise lose its new version, or have the previous current version (whose
    // records no pass has moved yet) retired under it.
    let _one = store.shared.flush.hold()?;
    let wrapped = db.wrapped_keyring()?.ok_or(StoreError::Corrupt {
        kind: "keyring",
        id: String::new(),
    })?;
    if wrapped.current != current {
        return Ok(false);
    }
    let retired = wrapped.retire_old();
    let ring = Keyring::unwrap(master, &retired).map_err(|_| StoreError::WrongMasterKey)?;
    db.put_wrapped_keyring(&retired)?;
    install(store, ring);
    Ok(true)
}

/// Makes `ring` the keyring the open store seals and opens records with.
fn install(store: &SledStore, ring: Keyring) {
    *store.shared.keyring.write_locked() = Arc::new(ring);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::hex;
    use crate::store::sled::{SledOptions, tests::open};

    /// The hand-written codec this one replaced, as it was, to hold the new one to its
    /// format.
    fn old_encode(w: &WrappedKeyring) -> Vec<u8> {
        let keys: serde_json::Map<String, serde_json::Value> = w
            .data_keys
            .iter()
            .map(|(v, k)| (v.to_string(), hex::encode(k).into()))
            .collect();
        serde_json::json!({"current": w.current, "data_keys": keys, "pepper": hex::encode(&w.pepper)})
            .to_string()
            .into_bytes()
    }

    fn wrapped(current: u32, versions: &[u32]) -> WrappedKeyring {
        WrappedKeyring {
            current,
            data_keys: versions.iter().map(|v| (*v, vec![*v as u8; 3])).collect(),
            pepper: vec![0xab; 4],
        }
    }

    #[test]
    fn reads_the_keyring_format_written_before() {
        // Written by the old codec (its objects sort their keys as strings: "1", "10", "2").
        let old = r#"{"current":10,"data_keys":{"1":"010101","10":"0a0a0a","2":"020202"},"pepper":"abababab"}"#;
        assert_eq!(old_encode(&wrapped(10, &[1, 2, 10])), old.as_bytes());
        let w = decode_keyring(old.as_bytes()).unwrap();
        assert_eq!(
            (w.current, &w.data_keys, &w.pepper),
            (10, &wrapped(10, &[1, 2, 10]).data_keys, &vec![0xab; 4])
        );
        // Below ten versions the new codec writes the same bytes; from ten on it orders the
        // versions as numbers, which either codec reads.
        for versions in [&[1][..], &[1, 2], &[3, 4, 5]] {
            let w = wrapped(*versions.last().unwrap(), versions);
            assert_eq!(encode_keyring(&w).unwrap(), old_encode(&w));
        }
        let w = wrapped(12, &[2, 9, 10, 12]);
        let back = decode_keyring(&encode_keyring(&w).unwrap()).unwrap();
        assert_eq!((back.current, back.data_keys), (w.current, w.data_keys));
        // What the old decoder refused, this one refuses.
        for bad in [
            r#"{"current":1,"data_keys":{"x":"00"},"pepper":"01"}"#,
            r#"{"current":1,"data_keys":{"1":"0"},"pepper":"01"}"#,
            r#"{"current":1,"data_keys":{"1":"zz"},"pepper":"01"}"#,
            r#"{"current":-1,"data_keys":{},"pepper":"01"}"#,
            r#"{"current":4294967296,"data_keys":{},"pepper":""}"#,
            r#"{"current":1,"data_keys":{}}"#,
            r#"{"current":1,"data_keys":[],"pepper":""}"#,
            r#"[]"#,
        ] {
            assert!(decode_keyring(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_real_keyring_round_trips() {
        let master = MasterKey::generate().unwrap();
        let (_, w) = Keyring::generate(&master).unwrap();
        let w = w.with_new_version(&master).unwrap();
        let bytes = encode_keyring(&w).unwrap();
        assert_eq!(bytes, old_encode(&w));
        let back = decode_keyring(&bytes).unwrap();
        assert_eq!(
            (back.current, &back.data_keys, &back.pepper),
            (w.current, &w.data_keys, &w.pepper)
        );
        Keyring::unwrap(&master, &back).unwrap();
    }

    #[tokio::test]
    async fn rotation_rewrap_and_retirement_through_the_admin_trait() {
        use crate::store::{
            Batch, Expect, Store, StoreAdmin,
            sled::tests::{K, put},
        };
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let s = open(dir.path(), &master);
        let admin: Arc<dyn StoreAdmin> = Arc::new(s.clone());
        let mut b = Batch::new();
        put(&mut b, "old", b"sealed under 1", Expect::Absent);
        s.commit(b).await.unwrap();

        assert_eq!(admin.rotate_keyring(&master).unwrap(), 2);
        assert_eq!(admin.key_versions(), (2, vec![1, 2]));
        let mut b = Batch::new();
        put(&mut b, "new", b"sealed under 2", Expect::Absent);
        s.commit(b).await.unwrap();
        assert_eq!(admin.rewrap_pass().unwrap(), 1);
        assert_eq!(admin.rewrap_pass().unwrap(), 0);
        // A rotation after the clean pass: retiring for the version the pass saw does nothing
        // (version 2's records were never moved to 3).
        assert_eq!(admin.rotate_keyring(&master).unwrap(), 3);
        assert!(!admin.retire_old_keys(&master, 2).unwrap());
        assert_eq!(admin.key_versions(), (3, vec![1, 2, 3]));
        assert_eq!(admin.rewrap_pass().unwrap(), 2);
        assert_eq!(admin.rewrap_pass().unwrap(), 0);
        assert!(admin.retire_old_keys(&master, 3).unwrap());
        assert_eq!(admin.key_versions(), (3, vec![3]));
        let old = s.get(K, "old").await.unwrap().unwrap();
        assert_eq!(old.plaintext.expose(), b"sealed under 1");
        assert_eq!(old.rev, crate::store::Rev(1));

        let snapshot = admin.snapshot().unwrap();
        assert!(snapshot.iter().any(|(k, _)| k.as_slice() == b"r/thing/old"));
        assert_eq!(admin.format_version(), super::super::FORMAT_VERSION);
        drop((admin, s));
        // The retired keyring is the one on disk.
        let s = open(dir.path(), &master);
        assert_eq!(s.key_versions(), (3, vec![3]));
        assert!(s.get(K, "new").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &MasterKey::generate().unwrap());
        drop(s);
        let err = SledStore::open(
            dir.path(),
            &MasterKey::generate().unwrap(),
            &SledOptions::default(),
        );
        assert!(matches!(err, Err(StoreError::WrongMasterKey)));
    }
}
