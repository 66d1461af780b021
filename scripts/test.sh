#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# One build profile (release) serves the quickstart, the tests and later the benchmarks, so
# Pingora is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings
# The README's first command must keep working: run it once, non-interactively.
scripts/quickstart.sh --once
cargo test --release --locked
