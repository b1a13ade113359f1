//! Custody: a data directory opened without keys. A [`Vault`] holds the database lock, knows
//! how the master key is obtained (the environment, the key file, or Shamir shares),
//! initialises a directory sealed with shares, checks and combines unseal shares, rotates the
//! master key (checked by a full unseal), and turns a master key into a [`Core`]
//! ([`Vault::unseal`]). It also restores a backup into an empty data directory ([`restore`]):
//! imported, authenticated with the master key, and marked for a new audit epoch, or nothing
//! is left behind. The master key itself is visible to custody alone.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use ring::digest;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{AppError, Core, MASTER_KEY_ENV, RESTORE_META, io};
use crate::{
    clock::{self, Clock},
    config::Config,
    crypto::{hex, keyring::MasterKey, secret::Key256},
    files,
    pki::{
        PkiError,
        bootstrap::{self, CertPaths},
    },
    store::{
        Database, Store, StoreError,
        backup::{BackupError, Unverified},
        open_database,
    },
    sync::Locked,
};

const SEAL_META: &str = "seal";

/// How a Shamir-sealed data directory is unsealed: the threshold and a hash of every share,
/// so that each share is checked on arrival.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealConfig {
    pub threshold: u8,
    pub shares: u8,
    /// SHA-256("tessera-share-v1" || share) per share, hex, in share order.
    pub share_hashes: Vec<String>,
}

fn share_hash(share: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"tessera-share-v1");
    ctx.update(share);
    hex::encode(ctx.finish().as_ref())
}

/// Where the master key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    Environment,
    KeyFile,
    Shares,
}

/// A data directory opened without keys.
pub struct Vault {
    pub config: Config,
    db: std::sync::RwLock<Option<Arc<dyn Database>>>,
    pub paths: CertPaths,
    pub clock: Arc<dyn Clock>,
    pub seal: Option<SealConfig>,
}

/// The seal configuration a database holds, if it is sealed with shares.
fn read_seal(db: &dyn Database) -> Result<Option<SealConfig>, AppError> {
    Ok(db
        .meta(SEAL_META)?
        .map(|v| serde_json::from_slice::<SealConfig>(&v))
        .transpose()
        .map_err(|_| StoreError::Corrupt {
            kind: "seal",
            id: String::new(),
        })?)
}

impl Vault {
    /// Creates the directories if needed and opens the database (taking its lock).
    pub fn open(config: Config) -> Result<Self, AppError> {
        files::ensure_dir(&config.data_dir, 0o700)
            .map_err(io("cannot create", &config.data_dir))?;
        files::ensure_dir(&config.certs_dir, 0o755)
            .map_err(io("cannot create", &config.certs_dir))?;
        let clock = clock::from_environment().map_err(AppError::Config)?;
        let db = open_database(&config.store_location())?;
        let seal = read_seal(&*db)?;
        let paths = CertPaths::new(&config.certs_dir);
        Ok(Self {
            config,
            db: std::sync::RwLock::new(Some(db)),
            paths,
            clock,
            seal,
        })
    }

    /// Reads the seal configuration again (after a restore imported one).
    pub fn reload_seal(&mut self) -> Result<(), AppError> {
        self.seal = read_seal(&*self.db()?)?;
        Ok(())
    }

    /// The database handle (absent only while [`Vault::reopen`] swaps it).
    pub fn db(&self) -> Result<Arc<dyn Database>, StoreError> {
        self.db.read_locked().clone().ok_or(StoreError::Unavailable(
            "the database is being reopened".into(),
        ))
    }

    /// Closes and reopens the database (after an I/O error the embedded engine stays failed;
    /// reopening from disk is the recovery). Every other handle must be gone: the old core
    /// dropped.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write_locked();
        drop(slot.take());
        let mut last = StoreError::Locked;
        // The engine's own threads let go of the files a moment after the last handle drops.
        for _ in 0..100 {
            match open_database(&self.config.store_location()) {
                Ok(db) => {
                    *slot = Some(db);
                    return Ok(());
                }
                Err(e) => last = e,
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(last)
    }

    /// Where the master key comes from here.
    pub fn key_source(&self) -> KeySource {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            KeySource::Environment
        } else if self.seal.is_some() {
            KeySource::Shares
        } else {
            KeySource::KeyFile
        }
    }

    /// The master key without human help: from `TESSERA_MASTER_KEY`, else `data/master.key`,
    /// else (on a fresh data directory without a seal) a new one written to `data/master.key`
    /// with mode 0600. `None` when the directory is sealed with Shamir shares.
    pub fn automatic_master(&self) -> Result<Option<MasterKey>, AppError> {
        let parse = |text: &str, source: &str| {
            let raw = hex::decode(text.trim())
                .and_then(|b| Key256::from_slice(&b))
                .ok_or_else(|| AppError::MasterKey(format!("{source} must hold 64 hex digits")))?;
            MasterKey::new(raw).map_err(|e| AppError::MasterKey(e.to_string()))
        };
        if let Ok(v) = std::env::var(MASTER_KEY_ENV) {
            let v = Zeroizing::new(v);
            return parse(&v, MASTER_KEY_ENV).map(Some);
        }
        let path = self.config.data_dir.join("master.key");
        if path.exists() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(io("cannot read", &path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(AppError::MasterKey(format!(
                    "{} is readable by group or others (mode {:o}); run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                )));
            }
            let text =
                Zeroizing::new(std::fs::read_to_string(&path).map_err(io("cannot read", &path))?);
            return parse(&text, &path.display().to_string()).map(Some);
        }
        if self.seal.is_some() {
            return Ok(None);
        }
        if self.db()?.initialized()? {
            return Err(AppError::MasterKey(format!(
                "{} is missing but the data directory holds a database; restore the key file or set {MASTER_KEY_ENV}",
                path.display()
            )));
        }
        let key = MasterKey::generate().map_err(|e| AppError::MasterKey(e.to_string()))?;
        write_key_file(&path, &key)?;
        Ok(Some(key))
    }

    /// Initialises a fresh data directory sealed with Shamir shares of a new master key (no
    /// key file): seals it, unseals it once with the new key (which creates the CA and the
    /// admin credential) and makes the server certificate. Returns the shares
    /// (`share-<n>: <hex>`); the master key itself never leaves custody.
    pub async fn init_shares(
        &mut self,
        shares: u8,
        threshold: u8,
    ) -> Result<Vec<Zeroizing<String>>, InitError> {
        let (master, texts) = self.seal_with_shares(shares, threshold)?;
        let core = self.unseal(master).await?;
        bootstrap::ensure_server_cert(
            core.pki(),
            &self.paths,
            &self.config.server_cert,
            self.clock.now(),
        )
        .await?;
        Ok(texts)
    }

    /// Seals a fresh data directory with Shamir shares of a new master key: stores the
    /// threshold and the share hashes, writes no key file, and returns the master key and the
    /// shares.
    fn seal_with_shares(
        &mut self,
        shares: u8,
        threshold: u8,
    ) -> Result<(MasterKey, Vec<Zeroizing<String>>), AppError> {
        if self.db()?.initialized()? || self.config.data_dir.join("master.key").exists() {
            return Err(AppError::Share("the data directory is already initialised"));
        }
        if threshold < 2 || shares < threshold {
            return Err(AppError::Share(
                "need 2 <= threshold <= shares <= 255 (--threshold, --shares)",
            ));
        }
        let master = MasterKey::generate().map_err(|e| AppError::MasterKey(e.to_string()))?;
        let (texts, seal) = deal(&master, shares, threshold)?;
        self.db()?.put_meta(
            SEAL_META,
            &serde_json::to_vec(&seal).map_err(|_| AppError::Share("encoding"))?,
        )?;
        self.seal = Some(seal);
        Ok((master, texts))
    }

    /// Rotates the master key (server stopped): the keyring is rewrapped under a new key.
    /// Key-file mode writes the new file; with `shares`, new shares are returned (and new
    /// hashes stored, the key file removed); environment mode returns the new key for the
    /// operator to put in place. Crash-safe: the rewrapped keyring is staged first, the key
    /// switched, then the keyring promoted; an unseal finishes or drops an interrupted one.
    /// The new key must open everything (a full unseal) before this returns it.
    pub async fn rotate_master(
        &mut self,
        old: &MasterKey,
        shares: Option<(u8, u8)>,
    ) -> Result<(MasterKey, Vec<Zeroizing<String>>), AppError> {
        let (new, texts) = self.rewrap_master(old, shares)?;
        let again = new
            .duplicate()
            .map_err(|e| AppError::MasterKey(e.to_string()))?;
        drop(self.unseal(again).await?);
        Ok((new, texts))
    }

    /// The rewrap and key switch of [`Vault::rotate_master`], without its check.
    fn rewrap_master(
        &mut self,
        old: &MasterKey,
        shares: Option<(u8, u8)>,
    ) -> Result<(MasterKey, Vec<Zeroizing<String>>), AppError> {
        let db = self.db()?;
        let wrapped = db.wrapped_keyring()?.ok_or(AppError::MasterKey(
            "the data directory is not initialised".into(),
        ))?;
        let new = MasterKey::generate().map_err(|e| AppError::MasterKey(e.to_string()))?;
        let rewrapped = wrapped.rewrapped(old, &new).map_err(|_| {
            AppError::MasterKey("the current master key does not open the keyring".into())
        })?;
        db.stage_keyring(&rewrapped)?;
        match (self.key_source(), shares) {
            (KeySource::Environment, _) => {
                db.promote_keyring(None)?;
                Ok((new, Vec::new()))
            }
            (_, Some((n, k))) => {
                let (texts, seal) = deal(&new, n, k)?;
                let meta = serde_json::to_vec(&seal).map_err(|_| AppError::Share("encoding"))?;
                db.promote_keyring(Some((SEAL_META, &meta)))?;
                let key_file = self.config.data_dir.join("master.key");
                if key_file.exists() {
                    std::fs::remove_file(&key_file).map_err(io("cannot remove", &key_file))?;
                }
                self.seal = Some(seal);
                Ok((new, texts))
            }
            (KeySource::Shares, None) => Err(AppError::Share(
                "a data directory sealed with shares needs --shares and --threshold",
            )),
            (KeySource::KeyFile, None) => {
                let path = self.config.data_dir.join("master.key");
                write_key_file(&path, &new)?;
                db.promote_keyring(None)?;
                Ok((new, Vec::new()))
            }
        }
    }

    /// Checks one unseal share against the stored hashes; returns its bytes and number.
    pub fn check_share(&self, text: &str) -> Result<(u8, Zeroizing<Vec<u8>>), AppError> {
        let seal = self
            .seal
            .as_ref()
            .ok_or(AppError::Share("not sealed with shares"))?;
        let hex_part = text.rsplit(':').next().unwrap_or(text).trim();
        let bytes = Zeroizing::new(
            hex::decode(hex_part).ok_or(AppError::Share("a share is hex, as printed by init"))?,
        );
        if bytes.len() != 33 || !seal.share_hashes.contains(&share_hash(&bytes)) {
            return Err(AppError::Share(
                "the share is not one of this data directory's",
            ));
        }
        Ok((bytes[0], bytes))
    }

    /// Combines checked shares into the master key.
    pub fn combine(&self, shares: &[Zeroizing<Vec<u8>>]) -> Result<MasterKey, AppError> {
        let seal = self
            .seal
            .as_ref()
            .ok_or(AppError::Share("not sealed with shares"))?;
        let parsed: Vec<blahaj::Share> = shares
            .iter()
            .filter_map(|s| blahaj::Share::try_from(s.as_slice()).ok())
            .collect();
        let secret = Zeroizing::new(
            blahaj::Sharks(seal.threshold)
                .recover(&parsed)
                .map_err(|_| AppError::Share("not enough valid shares"))?,
        );
        let key = Key256::from_slice(&secret).ok_or(AppError::Share("bad share set"))?;
        MasterKey::new(key).map_err(|e| AppError::MasterKey(e.to_string()))
    }

    /// Unseals: the keyring, the CA, the services (see [`Core`]).
    pub async fn unseal(&self, master: MasterKey) -> Result<Core, AppError> {
        Core::open(self, master).await
    }
}

/// Splits a master key into `shares` Shamir shares, `threshold` of which recover it.
fn deal(
    master: &MasterKey,
    shares: u8,
    threshold: u8,
) -> Result<(Vec<Zeroizing<String>>, SealConfig), AppError> {
    if threshold < 2 || shares < threshold {
        return Err(AppError::Share(
            "need 2 <= threshold <= shares <= 255 (--threshold, --shares)",
        ));
    }
    let dealt: Vec<blahaj::Share> = blahaj::Sharks(threshold)
        .dealer(master.expose())
        .take(usize::from(shares))
        .collect();
    let mut texts = Vec::new();
    let mut hashes = Vec::new();
    for s in &dealt {
        let bytes = Zeroizing::new(Vec::from(s));
        hashes.push(share_hash(&bytes));
        texts.push(Zeroizing::new(format!(
            "share-{}: {}",
            bytes[0],
            hex::encode(&bytes)
        )));
    }
    Ok((
        texts,
        SealConfig {
            threshold,
            shares,
            share_hashes: hashes,
        },
    ))
}

/// Writes a master key file (0600, atomically).
pub fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), AppError> {
    let mut text = Zeroizing::new(hex::encode(key.expose()));
    text.push('\n');
    files::write_atomic(path, text.as_bytes(), files::PRIVATE).map_err(io("cannot write", path))
}

/// Opens only the store of an existing data directory (for offline checks that must write
/// nothing): the master key must be available without help.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    if config.store_url.is_none() && !config.data_dir.join("db").exists() {
        return Err(AppError::MasterKey(format!(
            "{} holds no database",
            config.data_dir.display()
        )));
    }
    let vault = Vault::open(config.clone())?;
    let master = vault
        .automatic_master()?
        .ok_or(AppError::MasterKey(format!(
            "the data directory is sealed with shares; set {MASTER_KEY_ENV} for offline commands"
        )))?;
    let store = vault.db()?.unseal(&master)?.store;
    Ok(store)
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Sealing the new data directory, or unsealing it, failed.
    #[error(transparent)]
    Custody(#[from] AppError),
    /// The server certificate could not be made (or the configured one loaded).
    #[error(transparent)]
    ServerCert(#[from] PkiError),
}

/// Why a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target data directory could not be opened (a server may hold its lock).
    #[error("opening the target data directory (is a server running on it?)")]
    Open(#[source] AppError),
    /// The target already holds a database: a restore goes only into an empty one.
    #[error(
        "{} already holds a database: restore only into an empty data directory",
        .0.display()
    )]
    NotEmpty(PathBuf),
    /// The backup was refused; the target holds no database.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The store failed outside the import (reading the target, marking the restore).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a backup was refused while it was imported and authenticated. Nothing of it stays in
/// the target.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Its entries could not be written into the target.
    #[error(transparent)]
    Import(StoreError),
    /// The seal configuration it brought, or the target's master key, could not be read.
    #[error(transparent)]
    MasterKey(AppError),
    /// It was made by a server with a key file or `TESSERA_MASTER_KEY`, and neither is here.
    #[error(
        "restore needs the master key that the backup's server used: copy its master.key \
         into {} (mode 0600) or set TESSERA_MASTER_KEY",
        .0.display()
    )]
    NoMasterKey(PathBuf),
    /// The unseal shares could not be read.
    #[error(transparent)]
    Shares(Box<dyn std::error::Error + Send + Sync>),
    /// The master key given does not open the backup's keyring.
    #[error("the master key does not open the backup's keyring")]
    WrongKey(#[source] StoreError),
    /// Its MAC does not verify under its own keyring's backup key (changed, or forged).
    #[error(transparent)]
    Forged(BackupError),
}

/// Restores a parsed backup into the (empty) data directory of `config`, with the server
/// stopped. The backup's MAC key comes from its own keyring, which only the master key opens:
/// the key file or `TESSERA_MASTER_KEY` in the target, or, for a backup of a directory sealed
/// with shares, `read_shares` (called once, with the vault holding the backup's seal). Nothing
/// of an unauthenticated backup stays behind: on [`RestoreError::Refused`] the target's
/// database is removed. On success the first unseal opens a new audit epoch.
pub fn restore<E>(
    config: &Config,
    backup: &Unverified<'_>,
    read_shares: impl FnOnce(&Vault) -> Result<MasterKey, E>,
) -> Result<(), RestoreError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let db_dir = config.data_dir.join("db");
    let mut vault = Vault::open(config.clone()).map_err(RestoreError::Open)?;
    if !vault.db()?.is_empty() {
        return Err(RestoreError::NotEmpty(config.data_dir.clone()));
    }
    if let Err(e) = import_authenticated(&mut vault, backup, read_shares) {
        // Nothing of an unauthenticated backup stays: emptied in place (a shared database),
        // and the embedded engine's directory removed.
        let _ = vault.db().and_then(|db| db.wipe());
        drop(vault);
        if config.store_url.is_none() {
            let _ = std::fs::remove_dir_all(&db_dir);
        }
        return Err(e.into());
    }
    let summary = serde_json::json!({
        "backup_created_at": backup.header.created_at,
        "backup_audit_head_seq": backup.header.audit_head_seq,
    });
    vault
        .db()?
        .put_meta(RESTORE_META, summary.to_string().as_bytes())?;
    Ok(())
}

/// Imports a backup into the (empty, locked) target and checks it against the MAC key of its
/// own keyring, opened with the operator's master key.
fn import_authenticated<E>(
    vault: &mut Vault,
    backup: &Unverified<'_>,
    read_shares: impl FnOnce(&Vault) -> Result<MasterKey, E>,
) -> Result<(), Refused>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    vault
        .db()
        .and_then(|db| db.import(&backup.entries))
        .map_err(Refused::Import)?;
    vault.reload_seal().map_err(Refused::MasterKey)?;
    let master = match vault.automatic_master().map_err(Refused::MasterKey)? {
        Some(m) => m,
        None if vault.seal.is_some() => {
            read_shares(vault).map_err(|e| Refused::Shares(e.into()))?
        }
        None => return Err(Refused::NoMasterKey(vault.config.data_dir.clone())),
    };
    let keyring = vault
        .db()
        .and_then(|db| db.unseal(&master))
        .map_err(Refused::WrongKey)?
        .keyring;
    backup
        .verify(&keyring.pepper().backup_key())
        .map_err(Refused::Forged)?;
    Ok(())
}
