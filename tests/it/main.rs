//! Integration tests: the real `tessera` binary on a free loopback port, real TLS with real
//! certificates, the real sled store in a temp dir. Every test kills what it spawns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod access;
mod agent;
mod audit;
mod auth;
mod certs;
mod cli;
mod clock;
mod cluster;
mod console;
mod crash;
mod custody;
mod docs;
mod durability;
mod edge;
mod faults;
mod gateway;
mod guarantees;
mod helpers;
mod injected;
mod input;
mod leaks;
mod lifecycle;
mod openapi;
mod pg;
mod proc;
mod raw;
mod refusals;
mod secrets;
mod startup;
mod store_contract;
mod trust;
mod vectors;
