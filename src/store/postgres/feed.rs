//! Following the change sequence: how a node learns what other nodes committed.
//!
//! Every commit that writes records takes the next number of the gap-free sequence in
//! `tessera_changes` and lists the records it wrote. Each node reads the rows after the last
//! one it applied, every `store.poll_interval_ms` (100 ms by default) and at once when a
//! `NOTIFY tessera_changes` arrives (LISTEN is only a wake-up: a lost notification delays a
//! read by one interval at most, and correctness never depends on it). It hands the other
//! nodes' changes to the services (they drop what they cached of those records), and only
//! then counts itself caught up *as of the moment the read began*. A node whose last
//! complete read began more than `store.max_staleness_ms` ago is not fresh: it answers
//! nothing from its caches (see [`Store::fresh`](crate::store::Store::fresh)).
//!
//! Rows older than an hour are pruned (by any node, idempotently). A node that finds the
//! row after its position already pruned (it was partitioned away longer than that) cannot
//! know what it missed and drops every cache: a `*` change.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, tls::MakeTlsConnect};

use super::{Shared, pg_error, pool_error};
use crate::store::{Changed, OnRemote, StoreError};

/// Rows read per query.
const PAGE: i64 = 500;
/// How long change rows are kept.
const RETENTION_SECS: f64 = 3600.0;
/// How often a node prunes (each node; the delete is idempotent).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Starts the follower (and its LISTEN wake-up) on the store's runtime. Both end when the
/// store is dropped.
pub(super) fn start(shared: &Arc<Shared>, apply: OnRemote) {
    let Some(handle) = shared.conn.bridge.handle() else {
        return;
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    handle.spawn(listen(Arc::downgrade(shared), wake.clone()));
    handle.spawn(follow(Arc::downgrade(shared), apply, wake));
}

async fn follow(weak: Weak<Shared>, apply: OnRemote, wake: Arc<tokio::sync::Notify>) {
    let mut last_prune = Instant::now();
    let mut failing = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let started = Instant::now();
        match read_once(&shared, &apply).await {
            Ok(complete) => {
                if failing {
                    tracing::info!("following the change sequence again");
                    failing = false;
                }
                shared.healthy.store(true, Ordering::SeqCst);
                if complete {
                    shared.caught_up(started);
                } else {
                    continue;
                }
            }
            Err(e) => {
                shared.healthy.store(false, Ordering::SeqCst);
                if !failing {
                    tracing::warn!(error = %e, "cannot read the change sequence; caches are not used until it can");
                    failing = true;
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            if let Err(e) = prune(&shared).await {
                tracing::debug!(error = %e, "pruning the change sequence failed");
            }
        }
        let poll = shared.poll;
        drop(shared);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Reads and applies the next page; whether it reached the end of the sequence.
async fn read_once(shared: &Shared, apply: &OnRemote) -> Result<bool, StoreError> {
    let from = shared.seen.load(Ordering::SeqCst);
    let c = shared.conn.pool.get().await.map_err(pool_error)?;
    let st = c
        .prepare_cached(
            "SELECT seq, node, kinds, ids FROM tessera_changes WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .await
        .map_err(pg_error)?;
    let rows = c.query(&st, &[&from, &PAGE]).await.map_err(pg_error)?;
    let Some(last) = rows.last().map(|r| r.get::<_, i64>(0)) else {
        return Ok(true);
    };
    let mut changes = Vec::new();
    if rows.first().map(|r| r.get::<_, i64>(0)) != Some(from + 1) {
        tracing::warn!(
            from,
            "the change sequence was pruned past this node's position: dropping every cache"
        );
        changes.push(Changed {
            kind: "*".into(),
            id: String::new(),
        });
    }
    for r in &rows {
        if r.get::<_, &str>(1) == shared.conn.node {
            continue;
        }
        let kinds: Vec<String> = r.get(2);
        let ids: Vec<String> = r.get(3);
        changes.extend(
            kinds
                .into_iter()
                .zip(ids)
                .map(|(kind, id)| Changed { kind, id }),
        );
    }
    drop(c);
    if !changes.is_empty() {
        apply(changes).await;
    }
    shared.seen.store(last, Ordering::SeqCst);
    Ok(rows.len() < PAGE as usize)
}

async fn prune(shared: &Shared) -> Result<(), StoreError> {
    let c = shared.conn.pool.get().await.map_err(pool_error)?;
    c.execute(
        "DELETE FROM tessera_changes WHERE at < now() - make_interval(secs => $1)",
        &[&RETENTION_SECS],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Keeps a LISTEN connection open and turns notifications into wake-ups.
async fn listen(weak: Weak<Shared>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let (config, tls, stop) = (
            shared.conn.target.config.clone(),
            shared.conn.target.tls.clone(),
            shared.stop.clone(),
        );
        drop(shared);
        let r = match tls {
            Some(tls) => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
                listen_once(&config, make, &wake, &stop).await
            }
            None => listen_once(&config, tokio_postgres::NoTls, &wake, &stop).await,
        };
        match r {
            Ok(Stop::Stopped) => return,
            Ok(Stop::Lost) => {}
            Err(e) => tracing::debug!(error = %e, "LISTEN connection failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

enum Stop {
    /// The store was dropped.
    Stopped,
    /// The connection ended.
    Lost,
}

async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    wake: &tokio::sync::Notify,
    stop: &tokio::sync::Notify,
) -> Result<Stop, tokio_postgres::Error>
where
    T: MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.batch_execute("LISTEN tessera_changes").await?;
    let outcome = loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(()) => wake.notify_one(),
                None => break Stop::Lost,
            },
            _ = stop.notified() => break Stop::Stopped,
        }
    };
    driver.abort();
    Ok(outcome)
}
