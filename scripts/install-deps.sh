#!/usr/bin/env bash
# Installs what building keygate needs and a fresh Debian machine lacks: cmake (Pingora's
# zlib-ng), a C compiler, curl and python3 (for the quickstart). With `--test`, also openssl
# and h2load (the TLS tests), cargo-deb (the package test), Prometheus
# (`promtool` and `prometheus`) and Redis (`redis-server`, `redis-cli`), which the test suite
# runs. Safe to run again.
set -euo pipefail
for_tests=false
[ "${1:-}" = "--test" ] && for_tests=true
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if $for_tests; then
  # The TLS tests make certificates with openssl and load the listener with h2load.
  command -v openssl >/dev/null || missing+=(openssl)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
fi
# Debian's `prometheus` package provides both binaries; `redis-server` pulls in `redis-tools`.
# Both would start a service on install: see the policy below.
services=()
if $for_tests; then
  { command -v promtool && command -v prometheus; } >/dev/null || services+=(prometheus)
  { command -v redis-server && command -v redis-cli; } >/dev/null || services+=(redis-server)
fi
if [ ${#missing[@]} -gt 0 ] || [ ${#services[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  apt_install() {
    # `env` so that sudo, which resets the environment, passes DEBIAN_FRONTEND on.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  }
  all=("${missing[@]}" "${services[@]}")
  echo "installing: ${all[*]}"
  $sudo apt-get update -qq
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  if [ ${#services[@]} -gt 0 ]; then
    # The package would start a Prometheus service on :9090 (and recommends a node exporter
    # on :9100): the tests start their own. Forbid service starts during this install unless a
    # policy-rc.d is already in place (Docker images ship one that does just that).
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\n# keygate scripts/install-deps.sh: no service starts during its install\nexit 101\n' |
        $sudo tee "$policy" >/dev/null
      $sudo chmod 0755 "$policy"
      trap '$sudo rm -f "$policy"' EXIT
    fi
    apt_install --no-install-recommends "${services[@]}"
    # Belt and braces: where systemd runs, leave no Prometheus or Redis service running or
    # enabled (the tests start their own, on ports of their own).
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      $sudo systemctl disable --now prometheus.service redis-server.service >/dev/null 2>&1 || true
    fi
  fi
fi
# The package test (tests/package.rs) builds the .deb with cargo-deb, from crates.io.
if $for_tests && ! command -v cargo-deb >/dev/null; then
  echo "installing: cargo-deb"
  cargo install --quiet --locked cargo-deb --version '^3'
fi
