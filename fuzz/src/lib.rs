//! What the fuzz targets share: a real PKI (fresh CAs in a throwaway store, made once per
//! process) for the targets whose code path needs one, and helpers to mirror how the HTTP
//! layer reads header values.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use tessera::{
    clock::{Clock, SystemClock, Timestamp},
    crypto::keyring::MasterKey,
    identity::{ServiceName, TrustDomain},
    ids::TenantName,
    pki::{KeySource, Pki, Policy, ceiling::Ceiling},
    store::{
        Batch, IndexEntry, IndexName, Kind, NoRecord, Store, StoreFuture, Stored, log,
        sled::SledStore,
    },
};

/// The trust domain of the fuzzing PKI.
pub const TRUST_DOMAIN: &str = "tessera.local";

/// A PKI as the server has it after its first start, and a certificate it issued.
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub pki: Pki,
    /// A client certificate of `default/fuzz` issued by `pki` (PEM).
    pub leaf_pem: String,
    /// The leaf followed by its issuing CA (PEM).
    pub chain_pem: String,
    /// The instant the PKI was made: inside the leaf's validity.
    pub now: Timestamp,
}

/// The process's fixture, made on first use. Its store lives in a temporary directory that is
/// removed once the PKI is open (the store keeps its open files; nothing is left on disk), and
/// from then on it takes no more writes: what a fuzz input issues is not kept, so every input
/// meets the same state, and no input waits for a disk flush.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| match build() {
        Ok(f) => f,
        Err(e) => panic!("the fuzzing PKI could not be made: {e}"),
    })
}

fn build() -> Result<Fixture, Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let dir = tempfile::Builder::new().prefix("tessera-fuzz-").tempdir()?;
    let master = MasterKey::generate()?;
    let (sled, _) = SledStore::open(dir.path(), &master, &Default::default())?;
    let store = Arc::new(Frozen {
        inner: sled,
        frozen: AtomicBool::new(false),
    });
    let now = SystemClock.now();
    let (pki, leaf) = rt.block_on(async {
        let (pki, _) = Pki::open(
            store.clone(),
            TrustDomain::parse(TRUST_DOMAIN)?,
            Policy {
                default_ttl_secs: 3600,
                max_ttl_secs: 86_400,
                max_lineage_secs: 90 * 86_400,
            },
            None,
            now,
        )
        .await?;
        let (leaf, _) = pki
            .issue_service(
                &NoRecord,
                TenantName::default_tenant(),
                ServiceName::parse("fuzz")?,
                KeySource::Generate,
                3600,
                Ceiling::from_bits(0),
                now,
            )
            .await?;
        Ok::<_, Box<dyn std::error::Error>>((pki, leaf))
    })?;
    store.frozen.store(true, Ordering::SeqCst);
    dir.close()?;
    Ok(Fixture {
        rt,
        pki,
        leaf_pem: leaf.cert_pem(),
        chain_pem: leaf.full_chain_pem(),
        now,
    })
}

/// `HeaderValue::to_str` as actix-web (the `http` crate) has it: visible ASCII and tabs only.
/// A value it refuses is a header the handlers treat as absent.
pub fn header_str(bytes: &[u8]) -> Option<&str> {
    if bytes.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// A store that reads through to `inner` and, once frozen, accepts commits without applying
/// them.
struct Frozen {
    inner: SledStore,
    frozen: AtomicBool,
}

impl Store for Frozen {
    fn get<'a>(&'a self, kind: Kind, id: &'a str) -> StoreFuture<'a, Option<Stored>> {
        self.inner.get(kind, id)
    }

    fn lookup<'a>(&'a self, index: IndexName, key: &'a [u8]) -> StoreFuture<'a, Option<String>> {
        self.inner.lookup(index, key)
    }

    fn scan<'a>(
        &'a self,
        index: IndexName,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<IndexEntry>> {
        self.inner.scan(index, prefix, after, limit)
    }

    fn scan_records<'a>(
        &'a self,
        kind: Kind,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Stored)>> {
        self.inner.scan_records(kind, after, limit)
    }

    fn commit(&self, batch: Batch) -> StoreFuture<'_, ()> {
        if self.frozen.load(Ordering::SeqCst) {
            Box::pin(async { Ok(()) })
        } else {
            self.inner.commit(batch)
        }
    }

    fn log_head(&self, log: Kind) -> StoreFuture<'_, log::Head> {
        self.inner.log_head(log)
    }

    fn read_log(&self, log: Kind, after: u64, limit: usize) -> StoreFuture<'_, Vec<log::Read>> {
        self.inner.read_log(log, after, limit)
    }

    fn healthy(&self) -> bool {
        self.inner.healthy()
    }

    /// Once frozen, the change is computed on what is stored and not written, like commits.
    fn update<'a>(
        &'a self,
        kind: Kind,
        id: &'a str,
        durable: bool,
        mut change: tessera::store::Change,
    ) -> StoreFuture<'a, tessera::crypto::secret::SecretBytes> {
        if !self.frozen.load(Ordering::SeqCst) {
            return self.inner.update(kind, id, durable, change);
        }
        Box::pin(async move {
            let current = self.inner.get(kind, id).await?;
            let next = change(current.as_ref().map(|s| s.plaintext.expose()))?;
            Ok(tessera::crypto::secret::SecretBytes::new(next))
        })
    }
}
