//! Storage faults on a real filesystem: the data directory on a size-limited tmpfs, filled up,
//! then remounted read-only. Writes answer 503 (never a 2xx that was not stored), reads go on,
//! and the server recovers by itself when the filesystem accepts writes again.
//!
//! The tests run as root; mounting needs it. On a machine that does not allow mounting this
//! test fails loudly rather than pretending.

use crate::proc::Timed;
use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::json;

use crate::helpers::{Api, Home, Server};

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("timeout")
            .args([
                "30",
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
            ])
            .arg(&path)
            .status_timed()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs needs root (the tests run as root)");
        Self(path)
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("timeout")
            .args(["30", "mount", "-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status_timed()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {opts}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["30", "umount", "-l"])
            .arg(&self.0)
            .status_timed();
    }
}

/// Bytes free on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = Command::new("timeout")
        .args(["30", "df", "-B1", "--output=avail"])
        .arg(path)
        .output_timed()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// Fills the filesystem holding `dir` up to `leave` free bytes with one file; returns it.
fn fill(dir: &std::path::Path, name: &str, leave: u64) -> PathBuf {
    let filler = dir.join(name);
    let kib = free_bytes(dir).saturating_sub(leave) / 1024;
    let _ = Command::new("timeout")
        .args(["60", "dd", "if=/dev/zero", "bs=1K", &format!("count={kib}")])
        .arg(format!("of={}", filler.display()))
        .output_timed();
    filler
}

/// Issues keys until the full disk has refused three writes; returns the secrets of the keys
/// acknowledged meanwhile. Every answer is a 201 or the 503 `unavailable`, nothing else.
async fn write_until_refused(admin: &Api, api: &str) -> Vec<String> {
    let mut acked = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        let r = admin.post(&format!("/v1/apis/{api}/keys"), json!({})).await;
        match r.status {
            201 => acked.push(r.json()["key"].as_str().unwrap().to_owned()),
            503 => {
                assert_eq!(r.json()["error"]["code"], "unavailable");
                refused += 1;
                if refused == 3 {
                    return acked;
                }
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    panic!(
        "the full disk never refused a write ({} acknowledged)",
        acked.len()
    );
}

async fn count(admin: &Api, api: &str) -> usize {
    let mut n = 0;
    let mut path = format!("/v1/apis/{api}/keys?limit=100");
    loop {
        let page = admin.get(&path).await.expect(200);
        n += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/apis/{api}/keys?limit=100&cursor={c}"),
            None => return n,
        }
    }
}

#[tokio::test]
async fn full_and_read_only_disks_refuse_writes_keep_reads_and_recover() {
    let home = Home::new();
    let mount = Mount::tmpfs(home.data(), "8m");
    let mut server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("faults").await;
    let (_, key) = admin.issue(&api, json!({})).await;
    // In use before the fault, as a live key is: verification is served from memory while sled,
    // after a failed write, may refuse reads of records it has not cached.
    assert_eq!(admin.verify(&key).await, "VALID");
    let mut acked = vec![key.clone()];

    // Disk full, with a little room left, so that some writes are acknowledged before the
    // disk refuses: those must really be stored.
    let filler = fill(&home.data(), "filler", 192 * 1024);
    let during = write_until_refused(&admin, &api).await;
    assert!(
        !during.is_empty(),
        "some writes were acknowledged while the disk filled up"
    );
    acked.extend(during);
    assert_eq!(admin.verify(&key).await, "VALID", "reads go on");
    server.anonymous().get("/readyz").await.expect(503);
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = admin.post(&format!("/v1/apis/{api}/keys"), json!({})).await;
        if r.status == 201 {
            acked.push(r.json()["key"].as_str().unwrap().to_owned());
            recovered = true;
            break;
        }
    }
    assert!(recovered, "writes come back when space returns");
    server.anonymous().get("/readyz").await.expect(200);
    // Nothing refused was stored: exactly the acknowledged keys.
    assert_eq!(count(&admin, &api).await, acked.len());

    // Full again, and SIGKILL while it is full: every key acknowledged at any point survives,
    // and nothing refused appears.
    let filler = fill(&home.data(), "filler2", 192 * 1024);
    let during = write_until_refused(&admin, &api).await;
    acked.extend(during);
    server.kill9();
    std::fs::remove_file(&filler).unwrap();
    let server = Server::start(&home);
    let admin = server.admin();
    for (i, k) in acked.iter().enumerate() {
        assert_eq!(
            admin.verify(k).await,
            "VALID",
            "acknowledged key {i} of {} lost after a kill -9 on a full disk",
            acked.len()
        );
    }
    assert_eq!(count(&admin, &api).await, acked.len());
    drop(server);

    // Read-only. A filesystem cannot be remounted read-only under files open for writing
    // (EBUSY), and a read-only bind mount does not stop writes through descriptors already
    // open, so a runtime read-only fault is the same I/O-error path as the full disk above.
    // What a read-only data directory does at start is tested for real: a clear refusal.
    mount.remount("ro");
    let out = Command::new("timeout")
        .args([
            "30",
            crate::helpers::BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .output_timed()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Read-only") || err.contains("read-only"),
        "{err}"
    );
    mount.remount("rw");
    let server = Server::start(&home);
    assert_eq!(server.admin().verify(&key).await, "VALID");
    drop(server);
}

/// Kill points inside a full disk: at each, the disk is filled to a random few hundred KiB,
/// three writers issue keys as fast as they can (each answer a 201 or the 503 `unavailable`),
/// and the server is SIGKILLed at a random moment while they run, as the disk fills or once
/// it refuses. A start **on the still-full disk** must either refuse, naming the full disk, or
/// come up and verify every key acknowledged so far. Then space is given back: after a
/// restart every acknowledged key verifies VALID and has its audit entry, and the chain
/// verifies. The seed is printed and
/// replays the fills and kill delays (`TESSERA_CRASH_SEED`; the interleaving is the machine's).
#[tokio::test]
async fn kill_points_on_a_full_disk_lose_nothing_acknowledged() {
    let seed = std::env::var("TESSERA_CRASH_SEED")
        .map(|v| v.parse::<u64>().expect("TESSERA_CRASH_SEED is a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("full-disk kill points: seed {seed} (replay: TESSERA_CRASH_SEED={seed})");
    let mut rng = crate::crash::Rng(seed);
    let home = Home::new();
    let _mount = Mount::tmpfs(home.data(), "8m");
    let config = home.tmp.path().join("tessera.toml");
    std::fs::write(
        &config,
        "[limits]\nrequests_per_second = 100000\nburst = 100000\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut server = Server::start_with(&home, &args);
    let api = server.admin().create_api("full").await;
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut refused_total = 0;
    let (mut started_full, mut refused_full) = (0, 0);
    for point in 0..4 {
        let leave = 64 * 1024 + rng.next() % (256 * 1024);
        let filler = fill(&home.data(), &format!("filler-{point}"), leave);
        let mut workers = Vec::new();
        for _ in 0..3 {
            let admin = server.admin();
            let api = api.clone();
            workers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut refused = 0;
                loop {
                    let Some(r) = admin
                        .try_call(
                            reqwest::Method::POST,
                            &format!("/v1/apis/{api}/keys"),
                            json!({}),
                        )
                        .await
                    else {
                        // The connection went with the server: the answer never came.
                        return (acked, refused);
                    };
                    match r.status {
                        201 => {
                            let v = r.json();
                            acked.push((
                                v["id"].as_str().unwrap().to_owned(),
                                v["key"].as_str().unwrap().to_owned(),
                            ));
                        }
                        503 => {
                            assert_eq!(r.json()["error"]["code"], "unavailable", "{}", r.text);
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("point {point} (seed {seed}): {other} {}", r.text),
                    }
                }
            }));
        }
        let delay = 100 + rng.next() % 1500;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        for w in workers {
            let (a, r) = w.await.unwrap();
            acked.extend(a);
            refused_total += r;
        }
        // A start on the disk as the kill left it, still full: sled's recovery writes (it
        // zeroes the rest of its last segment), so the start either refuses, naming the full
        // disk, or comes up and serves every acknowledged key.
        match Server::try_start_with_env(&home, &args, &[]) {
            Ok(on_full) => {
                started_full += 1;
                let admin = on_full.admin();
                for (id, key) in &acked {
                    assert_eq!(
                        admin.verify(key).await,
                        "VALID",
                        "point {point} (seed {seed}): acknowledged key {id} lost (started on \
                         the full disk)"
                    );
                }
            }
            Err(log) => {
                assert!(
                    log.contains("No space left on device"),
                    "point {point} (seed {seed}): a start on the full disk failed without \
                     naming it:\n{log}"
                );
                refused_full += 1;
            }
        }
        std::fs::remove_file(&filler).unwrap();
        server = Server::start_with(&home, &args);
        let admin = server.admin();
        for (id, key) in &acked {
            assert_eq!(
                admin.verify(key).await,
                "VALID",
                "point {point} (seed {seed}): acknowledged key {id} lost after a kill -9 on \
                 a full disk"
            );
        }
        let audited = audited_keys(&admin).await;
        for (id, _) in &acked {
            assert!(
                audited.contains(id),
                "point {point} (seed {seed}): acknowledged key {id} has no audit entry"
            );
        }
        assert!(count(&admin, &api).await >= acked.len());
        assert_eq!(
            admin.get("/v1/audit/verify").await.expect(200)["valid"],
            true,
            "point {point} (seed {seed}): the audit chain"
        );
    }
    eprintln!(
        "full-disk kill points: {} keys acknowledged, {refused_total} writes refused; on the \
         full disk {started_full} starts came up, {refused_full} refused",
        acked.len()
    );
    assert!(
        refused_total > 0,
        "no write was ever refused: the disk never filled up"
    );
    assert!(
        acked.len() > 4,
        "hardly any write was acknowledged: {}",
        acked.len()
    );
}

/// The objects of the success entries in the audit log.
async fn audited_keys(admin: &Api) -> std::collections::HashSet<String> {
    crate::helpers::audit_after(admin, 0)
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "success")
        .filter_map(|e| e["object"].as_str().map(str::to_owned))
        .collect()
}
