//! What every handler shares. The services live in a [`Core`] that exists only while the
//! server is unsealed; [`AppState::core`] answers 503 otherwise.

use crate::sync::Locked;
use std::sync::{Arc, Mutex, RwLock};

use zeroize::Zeroizing;

use super::{
    error::ApiError,
    guard::Guard,
    idempotency::Idempotency,
    tls::{CertResolver, ClientVerifier},
};
use crate::{
    app::{Core, Vault},
    audit::refusals::Refusals,
    clock::Clock,
    config::Config,
    metrics,
};

pub struct AppState {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub guard: Arc<Guard>,
    pub resolver: Arc<CertResolver>,
    pub verifier: Arc<ClientVerifier>,
    pub vault: Vault,
    /// Refusals without a credential, written as one tally per source and window (kept
    /// across sealing: those made while sealed are written after the unseal).
    pub refusals: Refusals,
    core: RwLock<Option<Arc<Core>>>,
    /// Unseal shares received so far (memory only), by share number.
    pub(super) unseal_progress: Mutex<Vec<(u8, Zeroizing<Vec<u8>>)>>,
    pub(super) idempotency: Idempotency,
}

impl AppState {
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        guard: Arc<Guard>,
        resolver: Arc<CertResolver>,
        verifier: Arc<ClientVerifier>,
        vault: Vault,
    ) -> Self {
        Self {
            config,
            clock,
            guard,
            resolver,
            verifier,
            vault,
            refusals: Refusals::default(),
            core: RwLock::new(None),
            unseal_progress: Mutex::new(Vec::new()),
            idempotency: Idempotency::default(),
        }
    }

    /// The services, or 503 while sealed.
    pub fn core(&self) -> Result<Arc<Core>, ApiError> {
        self.try_core().ok_or(ApiError::Sealed)
    }

    pub fn try_core(&self) -> Option<Arc<Core>> {
        self.core.read_locked().clone()
    }

    pub fn sealed(&self) -> bool {
        self.try_core().is_none()
    }

    /// Puts an unsealed core in service: handshakes verify against its CA and CRLs, the
    /// guard writes lockouts to its audit log.
    pub fn install(&self, core: Core) -> Arc<Core> {
        let core = Arc::new(core);
        self.verifier.set_pki(Some(core.pki.clone()));
        self.guard.set_audit(Some(core.audit.clone()));
        *self.core.write_locked() = Some(core.clone());
        metrics::SEALED.set(0);
        core
    }

    /// Takes the core out of service to reopen the store (requests get 503 meanwhile).
    pub fn take_core(&self) -> Option<Arc<Core>> {
        let core = self.core.write_locked().take();
        // Remembered replies may hold new keys: nothing secret stays in memory once sealed.
        self.idempotency.clear();
        self.verifier.set_pki(None);
        self.guard.set_audit(None);
        core
    }

    /// Seals: takes the core out of service. Its keys are dropped (zeroized) as soon as the
    /// requests still holding it finish.
    pub fn seal(&self) -> Option<Arc<Core>> {
        let core = self.core.write_locked().take();
        self.verifier.set_pki(None);
        self.guard.set_audit(None);
        metrics::SEALED.set(1);
        core
    }
}
