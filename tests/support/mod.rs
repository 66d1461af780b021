//! Test helpers that need outside tools, apart from `tests/common`: a real Prometheus server.

// Each integration-test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod prometheus;
