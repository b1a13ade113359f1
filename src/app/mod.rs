//! The application: custody ([`vault`]: master-key sources, shares, unseal, restore), the
//! composition root ([`Core`]: every service of an unsealed server, assembled once, with
//! private fields), the sealed/unsealed slot and store recovery ([`runtime`]), and the
//! background jobs ([`tasks`]). Nothing here knows HTTP: the serving layer calls in.

pub mod runtime;
pub mod tasks;
pub mod vault;

use std::{path::Path, sync::Arc};

use crate::{
    access::Access,
    audit::{Audit, AuditContext},
    clock::Timestamp,
    crypto::keyring::{Keyring, MasterKey},
    keys::Keys,
    pki::{Pki, PkiError, Policy, bootstrap},
    store::{Batch, Recorder, Store, StoreAdmin, StoreError, backup},
};

pub use runtime::Runtime;
pub use vault::{KeySource, SealConfig, Vault, open_store, write_key_file};

/// The environment variable that may carry the master key (64 hex digits).
pub const MASTER_KEY_ENV: &str = "TESSERA_MASTER_KEY";
/// Set by `tessera restore`: the first unseal writes the new audit epoch's entry.
pub const RESTORE_META: &str = "restore";

/// Errors while starting up or unsealing. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("pki: {0}")]
    Pki(#[from] PkiError),
    #[error("access: {0}")]
    Access(#[from] crate::access::AccessError),
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::CheckpointError),
    #[error("unseal: {0}")]
    Share(&'static str),
    #[error("a background task failed")]
    Task,
    /// The environment asks for something this build does not do (a test-only setting in a
    /// release build).
    #[error("configuration: {0}")]
    Config(String),
}

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AppError + 'a {
    move |source| AppError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Every service of an unsealed server, assembled once ([`Core::open`]). Dropping it drops
/// the keys (sealing). The master key stays inside: only custody operations use it.
pub struct Core {
    store: Arc<dyn Store>,
    /// The store's admin half: keyring rotation and rewrap, backup snapshots.
    admin: Arc<dyn StoreAdmin>,
    keyring: Arc<Keyring>,
    /// Kept for keyring rotation and store recovery; zeroized when the core is dropped.
    master: MasterKey,
    pki: Arc<Pki>,
    access: Arc<Access>,
    audit: Arc<Audit>,
    keys: Arc<Keys>,
    feed: Arc<crate::feed::Feed>,
    /// Whether this unseal created the CA (and so the admin credential).
    first_start: bool,
}

/// On a shared database, hands other nodes' changes to the services that cache what they
/// touch. The follower holds the services weakly: sealing drops them, and the store with them.
fn follow_remote(
    store: &dyn Store,
    keys: &Arc<Keys>,
    access: &Arc<Access>,
    pki: &Arc<Pki>,
    clock: Arc<dyn crate::clock::Clock>,
) {
    let (keys, access, pki) = (
        Arc::downgrade(keys),
        Arc::downgrade(access),
        Arc::downgrade(pki),
    );
    store.follow(Arc::new(move |changes| {
        let (keys, access, pki, clock) = (keys.clone(), access.clone(), pki.clone(), clock.clone());
        Box::pin(async move {
            if let Some(access) = access.upgrade() {
                access.apply_remote(&changes);
            }
            if let Some(keys) = keys.upgrade() {
                keys.apply_remote(&changes).await;
            }
            if let Some(pki) = pki.upgrade() {
                pki.apply_remote(&changes, clock.now()).await;
            }
        })
    }));
}

/// How often an unseal is tried when its first writes conflict (see [`Core::open`]).
const OPEN_ATTEMPTS: u32 = 6;

impl AppError {
    /// Whether a concurrent write on the shared store got there first.
    fn is_conflict(&self) -> bool {
        use crate::access::AccessError;
        matches!(
            self,
            Self::Store(StoreError::Conflict)
                | Self::Pki(PkiError::Store(StoreError::Conflict))
                | Self::Access(AccessError::Store(StoreError::Conflict))
        )
    }
}

impl Core {
    /// The composition root: unwraps the keyring with `master` and assembles every service
    /// (opening the CA on first start, and writing a restore's new audit epoch).
    ///
    /// Nodes started together on an empty shared database race to create the keyring, the
    /// default tenant and the CA; a loser's write conflicts. It then opens again, a little
    /// later each time, and finds what the winner created (with the same master key; with
    /// another, the keyring does not unwrap and the start fails as it should).
    async fn open(vault: &Vault, master: MasterKey) -> Result<Core, AppError> {
        let mut attempt = 1;
        loop {
            match Self::assemble(vault, &master).await {
                Ok(finish) => return Ok(finish(master)),
                Err(e) if e.is_conflict() && attempt < OPEN_ATTEMPTS => {
                    tracing::info!(
                        attempt,
                        "another node is initialising the store; opening again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt at [`Core::open`]: every service, waiting only for the master key.
    async fn assemble(
        vault: &Vault,
        master: &MasterKey,
    ) -> Result<impl FnOnce(MasterKey) -> Core + use<>, AppError> {
        let crate::store::Unsealed {
            store,
            admin,
            keyring,
        } = vault.db()?.unseal(master)?;
        let audit = Arc::new(Audit::open(store.clone(), keyring.clone()).await?);
        let access = Arc::new(Access::new(
            store.clone(),
            vault.config.trust_domain.clone(),
        ));
        access.ensure_default_tenant(vault.clock.now()).await?;
        let policy = Policy {
            default_ttl_secs: vault.config.cert_default_ttl_secs,
            max_ttl_secs: vault.config.cert_max_ttl_secs,
            max_lineage_secs: vault.config.cert_max_lineage_secs,
        };
        let (pki, first_start) = Pki::open(
            store.clone(),
            vault.config.trust_domain.clone(),
            policy,
            Some(vault.config.certs_dir.clone()),
            vault.clock.now(),
        )
        .await?;
        let pki = Arc::new(pki);
        pki.set_public_url(
            vault
                .config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("https://localhost:{}", vault.config.listen.port())),
        );
        if first_start {
            let rec = AuditContext::system("issue bootstrap admin credential", vault.clock.now());
            bootstrap::issue_admin_cert(&*rec, &pki, &vault.paths, vault.clock.now()).await?;
        }
        if let Some(restore) = vault.db()?.meta(RESTORE_META)? {
            // The first unseal after a restore opens a new audit epoch, in the chain.
            let rec = AuditContext::system("restore: new audit epoch", vault.clock.now());
            let mut b = crate::store::Batch::new();
            let _ = restore;
            rec.record(&mut b, "restore", None)?;
            store.commit(b).await?;
            vault.db()?.delete_meta(RESTORE_META)?;
        }
        let keys = Arc::new(Keys::new(
            store.clone(),
            keyring.clone(),
            vault.config.verify_cache_keys,
            vault.config.usage_cache_keys,
        ));
        follow_remote(&*store, &keys, &access, &pki, vault.clock.clone());
        let feed = crate::feed::Feed::open(store.clone(), vault.clock.clone()).await?;
        // Another node's change reaches the feed within one interval: a shared database is
        // asked less often (one query per node per interval).
        feed.follow(std::time::Duration::from_millis(if store.shared() {
            100
        } else {
            20
        }));
        Ok(move |master| Core {
            store,
            admin,
            keyring,
            master,
            pki,
            access,
            audit,
            keys,
            feed,
            first_start,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn pki(&self) -> &Arc<Pki> {
        &self.pki
    }

    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn feed(&self) -> &Arc<crate::feed::Feed> {
        &self.feed
    }

    /// The pepper: keyed hashes of secrets (enrolment tokens use it too).
    pub fn pepper(&self) -> &crate::crypto::hash::Pepper {
        self.keyring.pepper()
    }

    /// Whether this unseal created the CA (and so the admin credential).
    pub fn first_start(&self) -> bool {
        self.first_start
    }

    /// The data-key version new writes use, and every version in the keyring.
    pub fn key_versions(&self) -> (u32, Vec<u32>) {
        self.admin.key_versions()
    }

    /// Adds a data-key version (new writes use it at once; the rewrap task moves old records)
    /// and records it; returns the new version.
    pub async fn rotate_keyring(self: &Arc<Self>, rec: &dyn Recorder) -> Result<u32, AppError> {
        let core = self.clone();
        let current = tokio::task::spawn_blocking(move || core.admin.rotate_keyring(&core.master))
            .await
            .map_err(|_| AppError::Task)??;
        let mut b = Batch::new();
        rec.record(&mut b, &format!("data-key-{current}"), None)?;
        self.store.commit(b).await?;
        Ok(current)
    }

    /// An online, consistent backup: every entry still sealed, authenticated with the key
    /// derived from the pepper ([`backup`]), never the master key. Recorded first.
    pub async fn backup(
        self: &Arc<Self>,
        rec: &dyn Recorder,
        trust_domain: &str,
        now: Timestamp,
    ) -> Result<Vec<u8>, AppError> {
        let mut b = Batch::new();
        rec.record(&mut b, "backup", None)?;
        self.store.commit(b).await?;
        let head = self.store.log_head(crate::audit::LOG).await?;
        // Read before the snapshot: a revocation made in between is then in the data but not
        // in this list, so a restore reports it as lost (the safe mistake), never the reverse.
        let revoked_serials: Vec<String> = self
            .pki
            .revoked_serials()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let admin = self.admin.clone();
        let entries = tokio::task::spawn_blocking(move || admin.snapshot())
            .await
            .map_err(|_| AppError::Task)??;
        let header = backup::Header {
            version: backup::VERSION,
            created_at: now,
            data_format: self.admin.format_version(),
            trust_domain: trust_domain.to_owned(),
            entries: entries.len() as u64,
            audit_head_seq: head.seq,
            revoked_serials,
        };
        let key = self.keyring.pepper().backup_key();
        tokio::task::spawn_blocking(move || backup::encode(&header, &entries, &key))
            .await
            .map_err(|_| AppError::Task)
    }

    /// One rewrap pass (blocking): how many records under an older data key it found.
    pub fn rewrap_pass(&self) -> Result<usize, StoreError> {
        self.admin.rewrap_pass()
    }

    /// Retires the old data keys if `current` is still the current version.
    pub fn retire_old_keys(&self, current: u32) -> Result<bool, StoreError> {
        self.admin.retire_old_keys(&self.master, current)
    }

    /// A copy of the master key, for reopening the store after a fault (custody only).
    fn master_copy(&self) -> Result<MasterKey, AppError> {
        self.master
            .duplicate()
            .map_err(|e| AppError::MasterKey(e.to_string()))
    }
}
