//! The runtime slot: whether the server is sealed or unsealed, and what lives across that —
//! the [`Vault`], unseal progress (shares held in memory, zeroized), the refusal tallies that
//! wait for the audit log. Installing, taking out and sealing a [`Core`] happen here; the
//! serving layer is told through a hook (its TLS verifier and lockout guard follow the core).
//! No HTTP here.

use std::sync::{Arc, Mutex, RwLock};

use zeroize::Zeroizing;

use super::{AppError, Core, Vault};
use crate::{audit::AuditContext, audit::refusals::Refusals, metrics, store::Batch, sync::Locked};

/// What happened to the core in service.
pub enum Change<'a> {
    /// This core is about to serve.
    Installed(&'a Arc<Core>),
    /// The core was taken out to reopen the store; another follows.
    Out,
    /// Sealed: every key leaves memory.
    Sealed,
}

/// Told of every [`Change`] (the serving layer: its TLS verifier, lockout guard, replies).
pub type OnChange = Box<dyn Fn(Change<'_>) + Send + Sync>;

/// Where an unseal stands after a share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unseal {
    /// Already unsealed: the share was not needed.
    AlreadyUnsealed,
    /// Still sealed: `given` of `threshold` shares so far.
    Progress { given: usize, threshold: usize },
    /// The threshold was reached: the server is unsealed now.
    Unsealed { threshold: usize },
}

/// Why a share was not taken.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("this data directory is not sealed with shares")]
    NotShares,
    #[error("this share was already given")]
    Repeated,
    #[error("not one of this data directory's shares")]
    Wrong,
    #[error(transparent)]
    Failed(#[from] AppError),
}

pub struct Runtime {
    pub vault: Vault,
    core: RwLock<Option<Arc<Core>>>,
    /// Unseal shares received so far (memory only), by share number.
    progress: Mutex<Vec<(u8, Zeroizing<Vec<u8>>)>>,
    /// Refusals without a credential, written as one tally per source and window (kept
    /// across sealing: those made while sealed are written after the unseal).
    pub refusals: Refusals,
    on_change: OnChange,
}

impl Runtime {
    pub fn new(vault: Vault, on_change: OnChange) -> Self {
        Self {
            vault,
            core: RwLock::new(None),
            progress: Mutex::new(Vec::new()),
            refusals: Refusals::default(),
            on_change,
        }
    }

    /// The services, if unsealed.
    pub fn core(&self) -> Option<Arc<Core>> {
        self.core.read_locked().clone()
    }

    pub fn sealed(&self) -> bool {
        self.core().is_none()
    }

    /// Puts an unsealed core in service.
    pub fn install(&self, core: Core) -> Arc<Core> {
        let core = Arc::new(core);
        // The serving layer first (handshakes against this CA, lockouts into this log), then
        // the core: no request sees the core before its TLS verifier does.
        (self.on_change)(Change::Installed(&core));
        *self.core.write_locked() = Some(core.clone());
        metrics::SEALED.set(0);
        core
    }

    /// Takes the core out of service to reopen the store (requests see "sealed" meanwhile).
    pub fn take(&self) -> Option<Arc<Core>> {
        let core = self.core.write_locked().take();
        (self.on_change)(Change::Out);
        core
    }

    /// Seals: takes the core out of service and forgets unseal progress. The core's keys are
    /// dropped (zeroized) as soon as the requests still holding it finish.
    pub fn seal(&self) -> Option<Arc<Core>> {
        let core = self.core.write_locked().take();
        (self.on_change)(Change::Sealed);
        self.progress.write_locked().clear();
        metrics::SEALED.set(1);
        core
    }

    /// Shares given so far.
    pub fn unseal_progress(&self) -> usize {
        self.progress.read_locked().len()
    }

    /// Takes one unseal share (checked against the hashes stored at init). At the threshold
    /// the shares are combined, the store unsealed, the core installed, and the unseal
    /// recorded in the audit log.
    pub async fn unseal_with_share(
        &self,
        share: &str,
        now: crate::clock::Timestamp,
    ) -> Result<Unseal, UnsealError> {
        if !self.sealed() {
            return Ok(Unseal::AlreadyUnsealed);
        }
        let seal = self.vault.seal.as_ref().ok_or(UnsealError::NotShares)?;
        let threshold = usize::from(seal.threshold);
        let (n, bytes) = self
            .vault
            .check_share(share)
            .map_err(|_| UnsealError::Wrong)?;
        let ready = {
            let mut p = self.progress.write_locked();
            if p.iter().any(|(m, _)| *m == n) {
                return Err(UnsealError::Repeated);
            }
            p.push((n, bytes));
            if p.len() < threshold {
                return Ok(Unseal::Progress {
                    given: p.len(),
                    threshold,
                });
            }
            std::mem::take(&mut *p)
        };
        let shares: Vec<_> = ready.into_iter().map(|(_, b)| b).collect();
        let master = self.vault.combine(&shares)?;
        let core = self.install(self.vault.unseal(master).await?);
        let mut b = Batch::new();
        let rec = AuditContext::system("unseal", now);
        crate::store::Recorder::record(&*rec, &mut b, "sys", None).map_err(AppError::from)?;
        core.store().commit(b).await.map_err(AppError::from)?;
        Ok(Unseal::Unsealed { threshold })
    }

    /// After a storage fault: takes the core out, waits for the requests holding it, reopens
    /// the store from disk and installs a new core. Keeps trying until it works.
    pub async fn reopen_store(self: &Arc<Self>) {
        let Some(old) = self.core() else {
            return;
        };
        let Ok(master) = old.master_copy() else {
            return;
        };
        drop(old);
        tracing::warn!("the data directory accepts writes again: reopening the store");
        let Some(old) = self.take() else {
            return;
        };
        for _ in 0..200 {
            if Arc::strong_count(&old) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(old);
        // Until the store is back, keep trying: the master key stays in this task meanwhile.
        loop {
            let rt = self.clone();
            let reopened = tokio::task::spawn_blocking(move || rt.vault.reopen()).await;
            if matches!(reopened, Ok(Ok(()))) {
                match master.duplicate() {
                    Ok(m) => match self.vault.unseal(m).await {
                        Ok(core) => {
                            self.install(core);
                            tracing::info!("store reopened; writes accepted again");
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "could not reopen the store; will retry");
                        }
                    },
                    Err(_) => return,
                }
            } else {
                tracing::error!("could not reopen the store; will retry");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}
