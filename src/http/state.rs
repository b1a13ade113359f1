//! What every handler shares. The services live in a [`Core`] that exists only while the
//! server is unsealed ([`crate::app::Runtime`]); [`AppState::core`] answers 503 otherwise.

use std::sync::Arc;

use super::{
    error::ApiError,
    guard::Guard,
    idempotency::Idempotency,
    tls::{CertResolver, ClientVerifier},
};
use crate::{
    app::{Core, Runtime, Vault, runtime::Change},
    clock::Clock,
    config::Config,
};

pub struct AppState {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub guard: Arc<Guard>,
    pub resolver: Arc<CertResolver>,
    pub verifier: Arc<ClientVerifier>,
    /// Sealed or unsealed, unseal progress, tallied refusals.
    pub runtime: Arc<Runtime>,
    pub(super) idempotency: Arc<Idempotency>,
}

impl AppState {
    /// The serving state around `vault`: the TLS verifier, the lockout guard and the
    /// remembered idempotent replies follow the core in and out of service.
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        guard: Arc<Guard>,
        resolver: Arc<CertResolver>,
        verifier: Arc<ClientVerifier>,
        vault: Vault,
    ) -> Self {
        let idempotency = Arc::new(Idempotency::default());
        let on_change = {
            let (verifier, guard, idempotency) =
                (verifier.clone(), guard.clone(), idempotency.clone());
            Box::new(move |change: Change<'_>| {
                // Handshakes verify against the core's CA and CRLs; the guard writes lockouts
                // to its audit log. Remembered replies may hold new keys: nothing secret stays
                // in memory once sealed (a store reopen keeps them, so retries still replay).
                let core = match change {
                    Change::Installed(core) => Some(core),
                    Change::Out => None,
                    Change::Sealed => {
                        idempotency.clear();
                        None
                    }
                };
                verifier.set_pki(core.map(|c| c.pki().clone()));
                guard.set_audit(core.map(|c| c.audit().clone()));
            })
        };
        Self {
            config,
            clock,
            guard,
            resolver,
            verifier,
            runtime: Arc::new(Runtime::new(vault, on_change)),
            idempotency,
        }
    }

    /// The services, or 503 while sealed.
    pub fn core(&self) -> Result<Arc<Core>, ApiError> {
        self.try_core().ok_or(ApiError::Sealed)
    }

    pub fn try_core(&self) -> Option<Arc<Core>> {
        self.runtime.core()
    }

    pub fn sealed(&self) -> bool {
        self.runtime.sealed()
    }

    pub fn vault(&self) -> &Vault {
        &self.runtime.vault
    }
}
