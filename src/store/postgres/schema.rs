//! The SQL schema, as numbered migrations applied in order when a node opens the database.
//! Each runs in one transaction under an advisory lock, so nodes starting together apply it
//! once; a database migrated by a newer build (a version this build does not know) is
//! refused. Tables are prefixed `tessera_` so they can share a database.
//!
//! What PostgreSQL holds is what the embedded engine holds: sealed records (ciphertext, with
//! their kind and opaque id), index entries (blind hashes and opaque ids), plaintext metadata
//! (the wrapped keyring, log heads, the seal configuration). Besides, for the cluster:
//! `tessera_changes`, the gap-free sequence of committed changes (kind and id of each record
//! written) that nodes follow, and `tessera_leases`, the singleton jobs' leases.

use tokio_postgres::Client;

use super::pg_error;
use crate::store::StoreError;

/// Serialises migrations across nodes (an arbitrary constant: "tessera" on a phone pad).
const MIGRATION_LOCK: i64 = 83_773_772;

const V1: &str = r#"
CREATE TABLE tessera_meta (
    name  text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE tessera_records (
    kind   text COLLATE "C" NOT NULL,
    id     text COLLATE "C" NOT NULL,
    sealed bytea NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE tessera_index (
    name text COLLATE "C" NOT NULL,
    key  bytea NOT NULL,
    id   text COLLATE "C" NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE tessera_change_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL
);
INSERT INTO tessera_change_head (one, seq) VALUES (true, 0);
CREATE TABLE tessera_changes (
    seq   bigint PRIMARY KEY,
    node  text NOT NULL,
    at    timestamptz NOT NULL DEFAULT now(),
    kinds text[] NOT NULL,
    ids   text[] NOT NULL
);
CREATE TABLE tessera_leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    fence      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
"#;

/// Every migration, in order: entry `n` (from 0) brings the schema to version `n + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the schema to [`SCHEMA_VERSION`], or refuses a newer one.
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS tessera_schema (version integer PRIMARY KEY)")
        .await
        .map_err(pg_error)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM tessera_schema", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    let found = u32::try_from(found).unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = n as i32 + 1;
        tracing::info!(to, "migrating the PostgreSQL schema");
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute("INSERT INTO tessera_schema (version) VALUES ($1)", &[&to])
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}
