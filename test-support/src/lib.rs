//! The test harness of keygate's integration tests, shared by every crate of the workspace:
//!
//! - [`http`]: the one raw HTTP/1.1 client over std `TcpStream` (byte-exact requests, parsed or
//!   raw responses), the [`Echo`] upstream, and the port helpers;
//! - [`cp`]: the reference control plane as a fixture ([`ControlPlane`]), run from the binary
//!   it is given;
//! - [`metrics`]: assertions on a `/metrics` page, `metric("name").label(..).value(..)`;
//! - [`prometheus`]: a real Prometheus server scraping one endpoint;
//! - [`redis`]: a real `redis-server` on a loopback port, or a three-primary Redis Cluster, for
//!   the fleet-wide limits;
//! - [`systemd`]: a unit file verified and scored by `systemd-analyze`;
//! - [`tls`]: certificates made by `openssl`, and a blocking TLS client.
//!
//! It depends on neither keygate nor its control plane (nor SQLite): it drives their binaries.

pub mod cp;
pub mod http;
pub mod metrics;
pub mod prometheus;
pub mod redis;
pub mod systemd;
pub mod tls;

pub use cp::ControlPlane;
pub use http::{Echo, Request, Response, free_port, wait_for_port};
pub use metrics::metric;
pub use redis::{Redis, RedisCluster};
