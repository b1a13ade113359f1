//! The data format version (`m/format`, u32 big-endian) and the migrations that bring an older
//! database up to the version this build writes. They run at every unseal, before the store
//! serves a record; a database written by a newer build is refused.

use super::io;
use crate::{crypto::keyring::Keyring, store::StoreError};

pub use crate::store::engine::FORMAT_VERSION;

/// Upgrades from older formats, in order: entry `(n, f)` turns format `n` into `n + 1`.
/// Each must be idempotent, since a crash may interrupt it before the version is bumped.
type Migration = fn(&sled::Db, &Keyring) -> Result<(), StoreError>;
const MIGRATIONS: &[(u32, Migration)] = &[];

const FORMAT_KEY: &[u8] = b"m/format";

/// Marks a new database as written in [`FORMAT_VERSION`] unless it already says otherwise.
/// Not flushed: the caller flushes it with the rest of the initialisation.
pub(super) fn stamp(db: &sled::Db) -> Result<(), StoreError> {
    if db.get(FORMAT_KEY).map_err(io)?.is_none() {
        db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
            .map_err(io)?;
    }
    Ok(())
}

/// Brings the database to [`FORMAT_VERSION`], durably after each step.
pub(super) fn run(db: &sled::Db, keyring: &Keyring) -> Result<(), StoreError> {
    migrate(db, keyring, MIGRATIONS)
}

fn migrate(db: &sled::Db, keyring: &Keyring, steps: &[(u32, Migration)]) -> Result<(), StoreError> {
    let found = match db.get(FORMAT_KEY).map_err(io)? {
        Some(v) => {
            let b: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                kind: "format",
                id: String::new(),
            })?;
            u32::from_be_bytes(b)
        }
        None => FORMAT_VERSION,
    };
    if found > FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            found,
            supported: FORMAT_VERSION,
        });
    }
    let mut version = found;
    for (from, step) in steps {
        if *from == version {
            tracing::info!(from = version, to = version + 1, "migrating data format");
            step(db, keyring)?;
            version += 1;
            db.insert(FORMAT_KEY, &version.to_be_bytes()).map_err(io)?;
            db.flush().map_err(io)?;
        }
    }
    if version != FORMAT_VERSION {
        return Err(StoreError::Corrupt {
            kind: "format",
            id: format!("no migration from {version}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crypto::keyring::MasterKey,
        store::sled::{SledOptions, SledStore, tests::open},
    };

    #[tokio::test]
    async fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        drop(open(dir.path(), &master));
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(FORMAT_KEY, &99u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), &master, &SledOptions::default());
        assert!(matches!(
            err,
            Err(StoreError::NewerFormat { found: 99, .. })
        ));
    }

    #[test]
    fn migrations_run_in_order_and_bump_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let (ring, _) = Keyring::generate(&master).unwrap();
        let db = sled::open(dir.path()).unwrap();
        db.insert(FORMAT_KEY, &(FORMAT_VERSION - 1).to_be_bytes())
            .unwrap();
        fn step(db: &sled::Db, _: &Keyring) -> Result<(), StoreError> {
            db.insert(b"migrated", b"yes").map_err(io)?;
            Ok(())
        }
        migrate(&db, &ring, &[(FORMAT_VERSION - 1, step)]).unwrap();
        assert_eq!(db.get(b"migrated").unwrap().as_deref(), Some(&b"yes"[..]));
        let v = db.get(FORMAT_KEY).unwrap().unwrap();
        assert_eq!(v.as_ref(), FORMAT_VERSION.to_be_bytes());
        // No path from a version without a migration.
        db.insert(FORMAT_KEY, &0u32.to_be_bytes()).unwrap();
        assert!(migrate(&db, &ring, &[]).is_err());
    }
}
