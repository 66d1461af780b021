#!/usr/bin/env bash
# Installs what building keygate needs and a fresh Debian machine lacks: cmake (Pingora's
# zlib-ng), a C compiler, curl and python3 (for the quickstart). With `--test`, also Prometheus
# (`promtool` and `prometheus`, which the test suite runs). Safe to run again.
set -euo pipefail
for_tests=false
[ "${1:-}" = "--test" ] && for_tests=true
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
# Debian's `prometheus` package provides both binaries.
prometheus=()
if $for_tests; then
  { command -v promtool && command -v prometheus; } >/dev/null || prometheus=(prometheus)
fi
if [ ${#missing[@]} -gt 0 ] || [ ${#prometheus[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  apt_install() {
    # `env` so that sudo, which resets the environment, passes DEBIAN_FRONTEND on.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  }
  all=("${missing[@]}" "${prometheus[@]}")
  echo "installing: ${all[*]}"
  $sudo apt-get update -qq
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  if [ ${#prometheus[@]} -gt 0 ]; then
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
    apt_install --no-install-recommends prometheus
    # Belt and braces: where systemd runs, leave no Prometheus service running or enabled.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
  fi
fi
