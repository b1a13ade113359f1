//! Tessera: issues, rotates, revokes and verifies API keys and mTLS client certificates.
//!
//! Dependency direction: `cli/http -> app -> (keys, pki, access, audit) -> store -> crypto`;
//! `identity`, `ids`, `clock`, `page`, `cache`, `sync`, `files` and `config` are leaves that any
//! layer may use; `src/main.rs` only calls [`cli::run`]. docs/ARCHITECTURE.md has the map.

pub mod access;
pub mod agent;
pub mod app;
pub mod audit;
pub mod cache;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod feed;
pub mod files;
pub mod http;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod page;
pub mod pki;
pub mod store;
pub mod sync;
