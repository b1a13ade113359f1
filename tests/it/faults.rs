//! Storage faults on a real filesystem: the data directory on a size-limited tmpfs, filled up,
//! then remounted read-only. Writes answer 503 (never a 2xx that was not stored), reads go on,
//! and the server recovers by itself when the filesystem accepts writes again.
//!
//! The tests run as root; mounting needs it. On a machine that does not allow mounting this
//! test fails loudly rather than pretending.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::json;

use crate::helpers::{Home, Server};

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs needs root (the tests run as root)");
        Self(path)
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {opts}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn full_and_read_only_disks_refuse_writes_keep_reads_and_recover() {
    let home = Home::new();
    let mount = Mount::tmpfs(home.data(), "8m");
    let server = Server::start(&home);
    let admin = server.admin();
    let api = admin.create_api("faults").await;
    let (_, key) = admin.issue(&api, json!({})).await;
    // In use before the fault, as a live key is: verification is served from memory while sled,
    // after a failed write, may refuse reads of records it has not cached.
    assert_eq!(admin.verify(&key).await, "VALID");
    let count = |admin: crate::helpers::Api, api: String| async move {
        admin
            .get(&format!("/v1/apis/{api}/keys?limit=100"))
            .await
            .expect(200)["items"]
            .as_array()
            .unwrap()
            .len()
    };

    // Disk full.
    let filler = home.data().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    let before = count(admin.clone(), api.clone()).await;
    // A write may still fit in space sled already holds; once the disk refuses, writes are
    // 503. Every 2xx must really be stored (checked after a kill -9 below).
    let mut acked = Vec::new();
    let mut refused = 0;
    for _ in 0..500 {
        let r = admin.post(&format!("/v1/apis/{api}/keys"), json!({})).await;
        match r.status {
            201 => acked.push(r.json()["key"].as_str().unwrap().to_owned()),
            503 => {
                assert_eq!(r.json()["error"]["code"], "unavailable");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(refused, 3, "the full disk refused writes");
    assert_eq!(admin.verify(&key).await, "VALID", "reads go on");
    server.anonymous().get("/readyz").await.expect(503);
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if admin
            .post(&format!("/v1/apis/{api}/keys"), json!({}))
            .await
            .status
            == 201
        {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "writes come back when space returns");
    // Nothing refused was stored: the keys acknowledged before the disk refused, plus the
    // recovery probe.
    assert_eq!(
        count(admin.clone(), api.clone()).await,
        before + acked.len() + 1
    );
    assert_eq!(admin.verify(&key).await, "VALID");
    for k in &acked {
        assert_eq!(
            admin.verify(k).await,
            "VALID",
            "an acknowledged key is kept"
        );
    }

    server.anonymous().get("/readyz").await.expect(200);
    drop(server);

    // Read-only. A filesystem cannot be remounted read-only under files open for writing
    // (EBUSY), and a read-only bind mount does not stop writes through descriptors already
    // open, so a runtime read-only fault is the same I/O-error path as the full disk above.
    // What a read-only data directory does at start is tested for real: a clear refusal.
    mount.remount("ro");
    let out = Command::new(crate::helpers::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(home.data())
        .arg("--certs")
        .arg(home.certs())
        .output()
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
