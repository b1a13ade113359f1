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
