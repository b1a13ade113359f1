//! Group commit. sled writes reach disk in the background unless flushed, so a commit applies
//! its transaction and then waits ([`SledStore::durable`]) for a flush that started after it.
//! One flusher thread serves every writer, so concurrent commits share one `fsync`-class
//! flush. sled flushes with `sync_file_range`: that survives a process crash, not a power loss.
//!
//! Every applied batch takes a generation number after it is applied; a writer asks for its
//! generation and waits until the flushed generation reaches it. A failed flush fails every
//! waiter not yet covered and stops the thread (sled stays failed after an I/O error; the
//! store is reopened to recover).

use std::sync::{
    Arc, Condvar, Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::watch;

use super::{Shared, SledStore};
use crate::store::StoreError;

/// The flush requests of every writer, and the flusher's answers.
pub(super) struct Queue {
    /// Generations of applied batches; a batch's generation is taken after it is applied.
    applied: AtomicU64,
    requests: Mutex<FlushState>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
}

pub(super) struct FlushState {
    /// Highest generation some writer waits for.
    wanted: u64,
    stop: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Flushed {
    generation: u64,
    failed: bool,
}

impl Queue {
    pub(super) fn new() -> Self {
        let (flushed, _) = watch::channel(Flushed::default());
        Self {
            applied: AtomicU64::new(0),
            requests: Mutex::new(FlushState {
                wanted: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            flushed,
        }
    }

    /// Holds the request queue: until the guard drops, no writer can ask for a flush and the
    /// flusher starts none.
    pub(super) fn hold(&self) -> Result<MutexGuard<'_, FlushState>, StoreError> {
        self.requests
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))
    }
}

/// The flusher thread; dropping the handle stops and joins it.
pub(super) struct FlusherHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl FlusherHandle {
    /// Starts the flusher thread of `shared`'s database.
    pub(super) fn start(shared: &Arc<Shared>) -> Result<Self, StoreError> {
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-flush".into())
            .spawn(move || flush_loop(&worker))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            shared: shared.clone(),
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for FlusherHandle {
    fn drop(&mut self) {
        if let Ok(mut r) = self.shared.flush.requests.lock() {
            r.stop = true;
        }
        self.shared.flush.wake.notify_all();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl SledStore {
    /// Waits until everything applied before this call is on disk (a flush that started after
    /// it finished).
    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let queue = &self.shared.flush;
        let generation = queue.applied.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = queue.flushed.subscribe();
        {
            let mut r = queue
                .requests
                .lock()
                .map_err(|_| StoreError::Unavailable("flusher poisoned".into()))?;
            r.wanted = r.wanted.max(generation);
        }
        queue.wake.notify_one();
        let state = rx
            .wait_for(|f| f.generation >= generation || f.failed)
            .await
            .map_err(|_| StoreError::Unavailable("flusher stopped".into()))?;
        if state.failed && state.generation < generation {
            return Err(StoreError::Unavailable("flush failed".into()));
        }
        Ok(())
    }
}

fn flush_loop(shared: &Shared) {
    let queue = &shared.flush;
    loop {
        {
            let Ok(mut r) = queue.requests.lock() else {
                return;
            };
            while !r.stop && r.wanted <= queue.flushed.borrow().generation {
                r = match queue.wake.wait(r) {
                    Ok(r) => r,
                    Err(_) => return,
                };
            }
            if r.stop {
                return;
            }
        }
        // Every batch with a generation <= target was applied before its generation was
        // taken, so this flush covers it.
        let target = queue.applied.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let result = shared.db.flush();
        crate::metrics::STORE_FLUSH.observe(started.elapsed().as_secs_f64());
        let failed = result.is_err();
        if let Err(e) = result {
            tracing::error!(error = %e, "store flush failed");
            shared.healthy.store(false, Ordering::SeqCst);
        }
        queue.flushed.send_modify(|f| {
            if failed {
                f.failed = true;
            } else {
                f.generation = f.generation.max(target);
            }
        });
        if failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{K, open, put};
    use crate::{
        crypto::keyring::MasterKey,
        store::{Batch, Expect, Store},
    };

    // Several worker threads and a barrier: the commits really overlap (on a current-thread
    // runtime spawned tasks never run at once, and a race could not show).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_share_flushes_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let s = open(dir.path(), &master);
        let mut tasks = Vec::new();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(64));
        for i in 0..64 {
            let s = s.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let mut b = Batch::new();
                put(&mut b, &format!("c{i}"), b"v", Expect::Absent);
                s.commit(b).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.scan_records(K, None, 100).await.unwrap().len(), 64);
    }
}
