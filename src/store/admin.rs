//! The store's admin half: what custody (`/v1/sys/*`) and the background rewrap job need from
//! an engine besides records. The keyring's data-key versions, adding one and moving records
//! over to it, retiring the old ones, a consistent snapshot for backups, the data format.
//! Like [`Store`](super::Store), it names no engine type, so every engine can serve it.
//!
//! The methods that write or copy block the calling thread (a rewrap pass re-seals every
//! record; a snapshot copies the database): async callers run them on a blocking thread.

use super::{RawEntry, StoreError};
use crate::crypto::keyring::MasterKey;

/// Keyring maintenance and backups, on an unsealed store.
pub trait StoreAdmin: Send + Sync {
    /// The data-key version new writes use, and every version in the keyring, ascending.
    /// Does not block.
    fn key_versions(&self) -> (u32, Vec<u32>);

    /// Adds a data-key version wrapped by `master` and makes new writes use it; returns the
    /// new version. Durable when it returns; rotations do not interleave. Records sealed
    /// under older versions stay readable and are moved over by
    /// [`StoreAdmin::rewrap_pass`].
    fn rotate_keyring(&self, master: &MasterKey) -> Result<u32, StoreError>;

    /// One pass over every record: those sealed under an older data-key version are re-sealed
    /// under the current one, each by compare-and-swap (a concurrent write to the record
    /// wins, and is already under the current version). Returns how many records under an
    /// older version the pass found: 0 means none were left when it ran. Idempotent and
    /// durable when it returns, so a pass interrupted by a crash is finished by the next.
    fn rewrap_pass(&self) -> Result<usize, StoreError>;

    /// Removes every data-key version but the current one from the keyring (`master` wraps
    /// the result), if the current version is still `current`: the version the clean pass
    /// moved records to. Call it only after a pass that began well after the last rotation
    /// found nothing to rewrap: a record still under a removed version could not be opened
    /// again. Returns whether it retired anything (a rotation since the pass: nothing).
    fn retire_old_keys(&self, master: &MasterKey, current: u32) -> Result<bool, StoreError>;

    /// A consistent copy of every entry, still sealed, for a backup: it holds no batch in
    /// part. Commits wait while it is taken; reads go on.
    fn snapshot(&self) -> Result<Vec<RawEntry>, StoreError>;

    /// The data format version of the entries this store holds and a snapshot carries.
    fn format_version(&self) -> u32;
}

/// An unsealed store: the record half, the admin half, and the keyring that seals them.
pub struct Unsealed {
    pub store: std::sync::Arc<dyn super::Store>,
    pub admin: std::sync::Arc<dyn StoreAdmin>,
    pub keyring: std::sync::Arc<crate::crypto::keyring::Keyring>,
}

/// A database opened without any key: it holds the one-process lock and reads and writes the
/// plaintext metadata (the wrapped keyring, the seal configuration, markers). Custody works
/// through it; records need [`Database::unseal`]. Like [`Store`](super::Store), it names no
/// engine type.
pub trait Database: Send + Sync {
    /// Whether the database holds a keyring (it was initialised).
    fn initialized(&self) -> Result<bool, StoreError>;
    /// A metadata value, plaintext.
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a metadata value durably.
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes a metadata value durably.
    fn delete_meta(&self, name: &str) -> Result<(), StoreError>;
    /// Whether the database holds nothing at all.
    fn is_empty(&self) -> bool;
    /// Loads raw entries (a restore) into an empty database, durably.
    fn import(&self, entries: &[RawEntry]) -> Result<(), StoreError>;
    /// Removes every entry, durably (a restore that failed its authentication).
    fn wipe(&self) -> Result<(), StoreError>;
    /// The persisted (wrapped) keyring.
    fn wrapped_keyring(&self)
    -> Result<Option<crate::crypto::keyring::WrappedKeyring>, StoreError>;
    /// Stages the keyring wrapped by a new master key (master-key rotation, step one).
    fn stage_keyring(&self, w: &crate::crypto::keyring::WrappedKeyring) -> Result<(), StoreError>;
    /// Makes the staged keyring the keyring, with `meta` in the same durable write.
    fn promote_keyring(&self, meta: Option<(&str, &[u8])>) -> Result<(), StoreError>;
    /// Unwraps the keyring with `master` (creating it in a fresh database).
    fn unseal(&self, master: &MasterKey) -> Result<Unsealed, StoreError>;
}

/// Where a database lives.
#[derive(Clone, Debug)]
pub enum Location {
    /// The embedded engine in a directory of this machine, with `cache_bytes` of page cache.
    Embedded {
        dir: std::path::PathBuf,
        cache_bytes: u64,
    },
    /// A PostgreSQL database that several nodes share.
    Postgres(Box<super::postgres::PgTarget>),
}

/// Opens the database at `location` (the embedded one takes its one-process lock). The one
/// place that chooses an engine.
pub fn open_database(location: &Location) -> Result<std::sync::Arc<dyn Database>, StoreError> {
    // Test builds only: see `faulty` (a release build refuses when asked for it).
    super::faulty::wrap(open_engine(location)?)
}

fn open_engine(location: &Location) -> Result<std::sync::Arc<dyn Database>, StoreError> {
    match location {
        Location::Embedded { dir, cache_bytes } => {
            let db = super::sled::SledDb::open(
                dir,
                &super::sled::SledOptions {
                    cache_capacity: *cache_bytes,
                },
            )?;
            Ok(std::sync::Arc::new(db))
        }
        Location::Postgres(target) => Ok(std::sync::Arc::new(super::postgres::PgDb::open(target)?)),
    }
}
