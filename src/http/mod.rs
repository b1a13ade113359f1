//! The HTTP edge (actix-web over rustls): routes, extractors, the one error-to-response
//! mapping, middleware, TLS with hot reload. Only this layer decides status codes and bodies.

mod abuse;
pub mod error;
pub mod extract;
pub mod guard;
mod idempotency;
mod listener;
mod middleware;
pub mod openapi;
mod routes;
pub mod server;
pub mod state;
mod strict;
pub mod tls;
