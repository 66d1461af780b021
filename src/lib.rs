//! keygate: a sidecar reverse proxy that authenticates API keys, enforces route scopes and
//! forwards each allowed request with the caller's identity, built on Pingora.
//!
//! The request path, in order: [`path`] normalises the path, [`routes`] finds the route,
//! [`auth`] turns the bearer token into a key from the [`snapshot`], [`scopes`] checks what
//! the key holds; [`gate`] composes these into one decision, and [`proxy`] acts on it.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod browser;
pub mod cli;
pub mod client_address;
pub mod concurrency;
pub mod config;
pub mod connections;
pub mod forward;
pub mod gate;
pub mod headers;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod path;
pub mod proxy;
pub mod proxy_protocol;
pub mod refusal;
pub mod respond;
pub mod restrictions;
pub mod routes;
pub mod server;
pub mod shield;
pub mod shutdown;
pub mod snapshot;
pub mod sync;
pub mod target;
pub mod tls;
pub mod tokens;
pub mod upgrade;
pub mod usage;

// Defined once for keygate and its control plane (the `keygate-protocol` crate).
pub use keygate_protocol::{scopes, secret};
