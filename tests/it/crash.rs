//! The crash harness: a mixed load (key issue, rotate, revoke; certificate issue and revoke)
//! is SIGKILLed at random moments; after each restart every acknowledged write must be there
//! and every acknowledged revocation must hold. 50 kill points by default
//! (`TESSERA_CRASH_POINTS` for more).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use crate::helpers::{Api, Home, Server};

#[derive(Clone, Debug)]
enum Acked {
    Key {
        secret: String,
        revoked: bool,
    },
    Cert {
        serial: String,
        pem: String,
        revoked: bool,
    },
    /// A revocation was sent; if it was not acknowledged it may or may not have landed.
    Attempt(String),
}

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn load(admin: Api, api: String, acked: Arc<Mutex<Vec<Acked>>>, worker: u64) {
    let mut i = worker;
    loop {
        i += 1;
        match i % 5 {
            0 | 1 => {
                let Some(r) = admin
                    .try_post(&format!("/v1/apis/{api}/keys"), json!({}))
                    .await
                else {
                    return;
                };
                if r.status != 201 {
                    return;
                }
                let v = r.json();
                let secret = v["key"].as_str().unwrap().to_owned();
                let id = v["id"].as_str().unwrap().to_owned();
                acked.lock().unwrap().push(Acked::Key {
                    secret: secret.clone(),
                    revoked: false,
                });
                if i % 2 == 0 {
                    acked.lock().unwrap().push(Acked::Attempt(secret.clone()));
                    let Some(r) = admin
                        .try_post(&format!("/v1/keys/{id}/revoke"), json!({}))
                        .await
                    else {
                        return;
                    };
                    if r.status != 200 {
                        return;
                    }
                    acked.lock().unwrap().push(Acked::Key {
                        secret,
                        revoked: true,
                    });
                } else {
                    let Some(r) = admin
                        .try_post(
                            &format!("/v1/keys/{id}/rotate"),
                            json!({"grace_seconds": 86400}),
                        )
                        .await
                    else {
                        return;
                    };
                    if r.status != 201 {
                        return;
                    }
                    let secret = r.json()["key"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push(Acked::Key {
                        secret,
                        revoked: false,
                    });
                }
            }
            _ => {
                let Some(r) = admin
                    .try_post("/v1/certs", json!({"identity": "crash", "generate": true}))
                    .await
                else {
                    return;
                };
                if r.status != 201 {
                    return;
                }
                let v = r.json();
                let serial = v["serial"].as_str().unwrap().to_owned();
                let pem = v["certificate"].as_str().unwrap().to_owned();
                acked.lock().unwrap().push(Acked::Cert {
                    serial: serial.clone(),
                    pem: pem.clone(),
                    revoked: false,
                });
                if i % 3 == 0 {
                    acked.lock().unwrap().push(Acked::Attempt(serial.clone()));
                    let Some(r) = admin
                        .try_post(&format!("/v1/certs/{serial}/revoke"), json!({}))
                        .await
                    else {
                        return;
                    };
                    if r.status != 200 {
                        return;
                    }
                    acked.lock().unwrap().push(Acked::Cert {
                        serial,
                        pem,
                        revoked: true,
                    });
                }
            }
        }
    }
}

/// What the acknowledged history allows for one object after a crash.
fn allowed(id: &str, revoked: &[String], attempted: &[String]) -> &'static [&'static str] {
    if revoked.iter().any(|r| r == id) {
        &["REVOKED"]
    } else if attempted.iter().any(|r| r == id) {
        &["VALID", "REVOKED"]
    } else {
        &["VALID"]
    }
}

async fn check(admin: &Api, a: &Acked, revoked: &[String], attempted: &[String]) {
    match a {
        Acked::Key { secret, .. } => {
            let got = admin.verify(secret).await;
            assert!(
                allowed(secret, revoked, attempted).contains(&got.as_str()),
                "key after a crash: {got}"
            );
        }
        Acked::Cert { serial, pem, .. } => {
            admin.get(&format!("/v1/certs/{serial}")).await.expect(200);
            let v = admin
                .post("/v1/certs/verify", json!({"certificate": pem}))
                .await
                .expect(200);
            let got = v["code"].as_str().unwrap();
            assert!(
                allowed(serial, revoked, attempted).contains(&got),
                "certificate {serial} after a crash: {got}"
            );
        }
        Acked::Attempt(_) => {}
    }
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let points: usize = std::env::var("TESSERA_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash harness seed {seed}, {points} kill points");
    let mut rng = Rng(seed);
    let home = Home::new();
    let mut server = Server::start(&home);
    let api = server.admin().create_api("crash").await;
    let mut all: Vec<Acked> = Vec::new();
    for point in 0..points {
        let admin = server.admin();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                tokio::spawn(load(
                    admin.clone(),
                    api.clone(),
                    acked.clone(),
                    w * 7 + point as u64,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30 + rng.next() % 300)).await;
        server.kill9();
        for w in workers {
            let _ = w.await;
        }
        let fresh = acked.lock().unwrap().clone();
        all.extend(fresh.iter().cloned());
        let revoked: Vec<String> = all
            .iter()
            .filter_map(|a| match a {
                Acked::Key {
                    secret,
                    revoked: true,
                } => Some(secret.clone()),
                Acked::Cert {
                    serial,
                    revoked: true,
                    ..
                } => Some(serial.clone()),
                _ => None,
            })
            .collect();
        let attempted: Vec<String> = all
            .iter()
            .filter_map(|a| match a {
                Acked::Attempt(id) => Some(id.clone()),
                _ => None,
            })
            .collect();

        server = Server::start(&home);
        let admin = server.admin();
        // Everything acknowledged just before this kill, and a sample of what came before.
        for a in &fresh {
            check(&admin, a, &revoked, &attempted).await;
        }
        for _ in 0..10.min(all.len()) {
            let a = &all[(rng.next() as usize) % all.len()];
            check(&admin, a, &revoked, &attempted).await;
        }
    }
    assert!(
        all.len() > points,
        "the load made progress: {} acknowledged writes",
        all.len()
    );
    // The audit chain survived every kill.
    assert_eq!(
        server.admin().get("/v1/audit/verify").await.expect(200)["valid"],
        true
    );
}
