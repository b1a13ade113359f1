//! Assembly: from a validated [`Config`] to open services. Used by `serve` and by the offline
//! commands (which take the same database lock, so they refuse a data dir a server holds).

use std::{path::Path, sync::Arc};

use crate::{
    access::Access,
    audit::{Audit, AuditContext},
    clock::{Clock, SystemClock},
    config::Config,
    crypto::{
        hex,
        keyring::{Keyring, MasterKey},
        secret::Key256,
    },
    files,
    pki::{
        Pki, PkiError, Policy,
        bootstrap::{self, CertPaths},
    },
    store::{
        Store, StoreError,
        sled::{SledOptions, SledStore},
    },
};

/// The environment variable that may carry the master key (64 hex digits).
pub const MASTER_KEY_ENV: &str = "TESSERA_MASTER_KEY";

/// Errors while starting up. Each says what to do.
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
    #[error("tls: {0}")]
    Tls(#[from] crate::http::tls::TlsError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AppError + 'a {
    move |source| AppError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Open services over one data directory.
pub struct Application {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub pki: Arc<Pki>,
    pub access: Arc<Access>,
    pub audit: Arc<Audit>,
    pub paths: CertPaths,
    /// Whether this start created the CA (and so the admin credential).
    pub first_start: bool,
}

impl Application {
    pub async fn open(config: Config) -> Result<Self, AppError> {
        files::ensure_dir(&config.data_dir, 0o700)
            .map_err(io("cannot create", &config.data_dir))?;
        files::ensure_dir(&config.certs_dir, 0o755)
            .map_err(io("cannot create", &config.certs_dir))?;
        let master = master_key(&config.data_dir)?;
        let (store, keyring) = SledStore::open(
            &config.data_dir.join("db"),
            &master,
            &SledOptions {
                cache_capacity: config.store_cache_bytes,
            },
        )?;
        drop(master);
        let store: Arc<dyn Store> = Arc::new(store);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let policy = Policy {
            default_ttl_secs: config.cert_default_ttl_secs,
            max_ttl_secs: config.cert_max_ttl_secs,
        };
        let audit = Arc::new(Audit::open(store.clone()).await?);
        let access = Arc::new(Access::new(store.clone(), config.trust_domain.clone()));
        access.ensure_default_tenant(clock.now()).await?;
        let (pki, first_start) = Pki::open(
            store.clone(),
            config.trust_domain.clone(),
            policy,
            Some(config.certs_dir.clone()),
            clock.now(),
        )
        .await?;
        let pki = Arc::new(pki);
        let paths = CertPaths::new(&config.certs_dir);
        pki.set_public_url(
            config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("https://localhost:{}", config.listen.port())),
        );
        if first_start {
            let rec = AuditContext::system("issue bootstrap admin credential", clock.now());
            bootstrap::issue_admin_cert(&*rec, &pki, &paths, clock.now()).await?;
        }
        Ok(Self {
            config,
            clock,
            store,
            keyring,
            pki,
            access,
            audit,
            paths,
            first_start,
        })
    }
}

/// Opens only the store of an existing data directory (for offline checks that must write
/// nothing): the master key must already exist.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    if !config.data_dir.join("db").exists() {
        return Err(AppError::MasterKey(format!(
            "{} holds no database",
            config.data_dir.display()
        )));
    }
    let master = master_key(&config.data_dir)?;
    let (store, _) = SledStore::open(
        &config.data_dir.join("db"),
        &master,
        &SledOptions {
            cache_capacity: config.store_cache_bytes,
        },
    )?;
    Ok(Arc::new(store))
}

/// The master key: from `TESSERA_MASTER_KEY`, else `data/master.key`, else (on a fresh data
/// directory only) a new one written to `data/master.key` with mode 0600.
fn master_key(data_dir: &Path) -> Result<MasterKey, AppError> {
    let parse = |text: &str, source: &str| {
        let raw = hex::decode(text.trim())
            .and_then(|b| Key256::from_slice(&b))
            .ok_or_else(|| AppError::MasterKey(format!("{source} must hold 64 hex digits")))?;
        MasterKey::new(raw).map_err(|e| AppError::MasterKey(e.to_string()))
    };
    if let Ok(v) = std::env::var(MASTER_KEY_ENV) {
        let v = zeroize::Zeroizing::new(v);
        return parse(&v, MASTER_KEY_ENV);
    }
    let path = data_dir.join("master.key");
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
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path).map_err(io("cannot read", &path))?,
        );
        return parse(&text, &path.display().to_string());
    }
    if data_dir.join("db").exists() {
        return Err(AppError::MasterKey(format!(
            "{} is missing but the data directory holds a database; restore the key file or set {MASTER_KEY_ENV}",
            path.display()
        )));
    }
    let key = MasterKey::generate().map_err(|e| AppError::MasterKey(e.to_string()))?;
    let mut text = zeroize::Zeroizing::new(hex::encode(key.expose()));
    text.push('\n');
    files::write_atomic(&path, text.as_bytes(), files::PRIVATE)
        .map_err(io("cannot write", &path))?;
    Ok(key)
}
