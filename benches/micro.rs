//! Criterion micro-benchmarks of the verification and issuance paths, each next to the
//! primitive that bounds it.
//!
//! ```text
//! cargo bench --bench micro                       # everything (preloads 1M keys: minutes)
//! TESSERA_BENCH_KEYS=10000 cargo bench --bench micro -- verify
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_core_shim::pick;
use tessera::{
    app::{Core, Vault},
    config::{Config, FileConfig, Overrides},
    crypto::{apikey::ApiKey, keyring::Keyring, secret::SecretString},
    identity::ServiceName,
    ids::{TenantName, TenantScope},
    keys::{CallerIdentity, VerifyRequest},
    pki::KeySource,
    store::NoRecord,
};

/// A cheap deterministic index sequence for drawing keys (xorshift; no `rand` needed).
mod rand_core_shim {
    pub fn pick(state: &mut u64, n: usize) -> usize {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state % n as u64) as usize
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A real data directory (sled in a temp dir) unsealed in-process.
fn core(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> (Vault, Core) {
    let overrides = Overrides {
        data: Some(dir.join("data")),
        certs: Some(dir.join("certs")),
        ..Overrides::default()
    };
    let config = Config::resolve(FileConfig::default(), &overrides).unwrap();
    let vault = Vault::open(config).unwrap();
    let master = vault.automatic_master().unwrap().unwrap();
    let core = rt.block_on(vault.unseal(master)).unwrap();
    (vault, core)
}

fn key_format(c: &mut Criterion) {
    let prefix = tessera::crypto::apikey::KeyPrefix::default_prefix();
    let key = ApiKey::generate(&prefix).unwrap();
    let text = key.expose().to_owned();
    let mut g = c.benchmark_group("key");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse + checksum", |b| {
        b.iter(|| ApiKey::parse(black_box(&text)).is_ok())
    });
    g.finish();

    // A verify request body: the server's strict reading (objects only, each key once)
    // against serde_json straight into the struct, the baseline.
    let body = serde_json::json!({
        "key": text, "api_id": "api_5TQ0fM2w8eXgYbNn1", "scopes": ["orders:read", "orders:write"]
    })
    .to_string();
    let mut g = c.benchmark_group("verify body");
    g.throughput(Throughput::Elements(1));
    g.bench_function("serde_json (the baseline)", |b| {
        b.iter(|| serde_json::from_slice::<VerifyRequest>(black_box(body.as_bytes())).is_ok())
    });
    g.bench_function("strict parse", |b| {
        b.iter(|| {
            tessera::http::extract::parse_json::<VerifyRequest>(black_box(body.as_bytes())).is_ok()
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let keyring = Keyring::generate(&tessera::crypto::keyring::MasterKey::generate().unwrap())
        .unwrap()
        .0;
    let pepper = keyring.pepper();
    let secret = ApiKey::generate(&tessera::crypto::apikey::KeyPrefix::default_prefix()).unwrap();
    let stored = pepper.verification_hash(secret.expose().as_bytes());
    let mut g = c.benchmark_group("hmac");
    g.throughput(Throughput::Elements(1));
    g.bench_function("blind index", |b| {
        b.iter(|| pepper.blind_index("key", black_box(secret.expose().as_bytes())))
    });
    g.bench_function("verify hash (constant time)", |b| {
        b.iter(|| pepper.verify(black_box(secret.expose().as_bytes()), &stored))
    });
    g.finish();

    // A typical key record is about 500 bytes of JSON.
    let plaintext = vec![b'x'; 500];
    let nonce = [3u8; 12];
    let (version, sealed) = keyring.seal(nonce, b"key/abc", &plaintext);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal 500 B", |b| {
        b.iter(|| keyring.seal(nonce, b"key/abc", black_box(&plaintext)))
    });
    g.bench_function("open 500 B", |b| {
        b.iter(|| {
            keyring
                .open(version, nonce, b"key/abc", black_box(&sealed))
                .unwrap()
        })
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    let sizes: Vec<usize> = std::env::var("TESSERA_BENCH_KEYS")
        .ok()
        .map(|v| v.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![10_000, 1_000_000]);
    let rt = runtime();
    let mut g = c.benchmark_group("verify in-process");
    g.throughput(Throughput::Elements(1));
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let (vault, core) = core(&rt, dir.path());
        let now = vault.clock.now();
        let api = rt
            .block_on(
                core.keys().create_api(
                    &NoRecord,
                    TenantName::default_tenant(),
                    serde_json::from_value(serde_json::json!({
                        "name": "bench", "purpose": "benchmark", "owner": "bench", "risk": "low"
                    }))
                    .unwrap(),
                    now,
                ),
            )
            .unwrap();
        let secrets = rt
            .block_on(
                core.keys()
                    .bulk_issue(&TenantScope::All, &api.id, n, 5000, now),
            )
            .unwrap();
        let requests: Vec<VerifyRequest> = secrets
            .iter()
            .map(|s| VerifyRequest {
                key: SecretString::new(s.expose().to_owned()),
                api_id: None,
                scopes: None,
                presented_identity: None,
            })
            .collect();
        let caller = CallerIdentity::default();
        // Warm the verification cache the way a running server is warm.
        for r in &requests {
            rt.block_on(core.keys().verify(&TenantScope::All, r, &caller, now))
                .unwrap();
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        g.bench_with_input(BenchmarkId::new("keys stored", n), &n, |b, _| {
            b.iter(|| {
                let r = &requests[pick(&mut state, requests.len())];
                let v = rt
                    .block_on(core.keys().verify(&TenantScope::All, r, &caller, now))
                    .unwrap();
                assert!(v.valid);
            })
        });
    }
    g.finish();
}

fn issuance(c: &mut Criterion) {
    use ring::{
        rand::SystemRandom,
        signature::{self, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
    };
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let msg = [7u8; 300];
    let sig = pair.sign(&rng, &msg).unwrap();
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        pair.public_key().as_ref().to_vec(),
    );

    let mut g = c.benchmark_group("issuance");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw P-256 sign", |b| {
        b.iter(|| pair.sign(&rng, black_box(&msg)).unwrap())
    });
    g.bench_function("raw P-256 verify + sign (the baseline)", |b| {
        b.iter(|| {
            public.verify(&msg, sig.as_ref()).unwrap();
            pair.sign(&rng, black_box(&msg)).unwrap()
        })
    });

    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (vault, core) = core(&rt, dir.path());
    let csr = {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.serialize_request(&key).unwrap().pem().unwrap()
    };
    let tenant = TenantName::default_tenant();
    let name = ServiceName::parse("bench").unwrap();
    // Durable: each issuance waits for its record to reach the disk, one at a time here (the
    // load benchmark shows concurrent issuance sharing flushes).
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("certificate from CSR (durable, sequential)", |b| {
        b.iter(|| {
            rt.block_on(core.pki().issue_service(
                &NoRecord,
                tenant.clone(),
                name.clone(),
                KeySource::Csr(csr.clone()),
                3600,
                tessera::pki::ceiling::Ceiling::EMPTY,
                vault.clock.now(),
            ))
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, key_format, hashing, verify, issuance);
criterion_main!(benches);
