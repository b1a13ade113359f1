//! What every handler shares: the domain services, the clock, the configuration.

use std::sync::Arc;

use super::{guard::Guard, idempotency::Idempotency, tls::CertResolver};
use crate::{
    access::Access, audit::Audit, clock::Clock, config::Config, keys::Keys, pki::Pki, store::Store,
};

pub struct AppState {
    pub guard: Arc<Guard>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub pki: Arc<Pki>,
    pub access: Arc<Access>,
    pub audit: Arc<Audit>,
    pub resolver: Arc<CertResolver>,
    pub(super) idempotency: Idempotency,
}
