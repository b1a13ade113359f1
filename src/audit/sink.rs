//! An optional JSON-lines copy of the audit log for shipping to a log system. One task
//! tails the log in order and appends each entry as a line (`{seq, hash, prev_hash, ...}`),
//! resuming after the last seq already in the file.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
};

use super::Audit;

/// The last seq already written to the file (0 if none).
fn last_written(path: &Path) -> u64 {
    let Ok(f) = std::fs::File::open(path) else {
        return 0;
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .last()
        .unwrap_or(0)
}

/// Appends entries after the file's last seq; returns how many were written.
pub async fn ship(audit: &Audit, path: &PathBuf) -> std::io::Result<usize> {
    let mut after = last_written(path);
    let mut written = 0;
    loop {
        let entries = audit
            .list(after, 1000)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if entries.is_empty() {
            return Ok(written);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for e in &entries {
            let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
            writeln!(f, "{line}")?;
            after = e.seq;
            written += 1;
        }
        f.sync_data()?;
    }
}
