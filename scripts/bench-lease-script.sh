#!/usr/bin/env bash
# What one call of the fleet-wide limits' Lua script costs Redis, by itself: a local
# redis-server, and `redis-benchmark` calling the script as the load benchmark's sidecar does
# far from the limits, each call taking a lease and returning the last one with 26 runs of uses
# (14 merged by the second, 12 within the last 1.1 s: a 15 s lease at about 11 req/s), over
# 1,000 workspaces. Prints Redis's own time per call (`INFO commandstats`, the script with the
# commands it runs) for each script given, in alternating rounds, and each one's median.
#
#   scripts/bench-lease-script.sh                      # this tree's src/limits/fleet/lease.lua
#   git show HEAD~1:src/limits/fleet/lease.lua > /tmp/old.lua
#   scripts/bench-lease-script.sh /tmp/old.lua src/limits/fleet/lease.lua
#
# Settings (environment): LEASE_BENCH_ROUNDS (5), LEASE_BENCH_CALLS (5000 per round).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- src/limits/fleet/lease.lua
rounds=${LEASE_BENCH_ROUNDS:-5}
calls=${LEASE_BENCH_CALLS:-5000}
command -v redis-benchmark >/dev/null || { echo "needs redis-server and redis-benchmark: scripts/install-deps.sh --test" >&2; exit 1; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; rm -rf "$work"' EXIT
cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done

# The uses of the lease returned: "age ms:count", oldest first, as Uses::encode sends them.
runs=$(python3 -c '
old = [f"{s * 1000 - 100}:11" for s in range(15, 1, -1)]
recent = [f"{a}:1" for a in range(1000, 0, -85)]
print(",".join(old + recent))')

declare -A times
for round in $(seq "$rounds"); do
  for script in "$@"; do
    sha=$(cli script load "$(cat "$script")")
    cli flushall >/dev/null
    cli config resetstat >/dev/null
    # ARGV: burst and sustained limits far above the rate, the new lease's id, need 0, want
    # 165, reserve 0, lifetimes 30 s; then the lease returned: its id, 165 used, its runs.
    redis-benchmark -h 127.0.0.1 -p "$port" -n "$calls" -c 1 -r 1000 -q EVALSHA "$sha" 3 \
      "keygate:{ws:__rand_int__}:b" "keygate:{ws:__rand_int__}:s" "keygate:{ws:__rand_int__}:l" \
      1000000 10000000 lease-1 0 165 0 30000 30000 lease-1 165 "$runs" >/dev/null 2>&1
    us=$(cli info commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p')
    [ -n "$us" ] || { echo "$script: no call succeeded" >&2; exit 1; }
    echo "round $round  $script  $us us per call"
    times[$script]+="$us "
  done
done
echo "== median of $rounds rounds, $calls calls each"
for script in "$@"; do
  printf '%-40s %s us per call\n' "$script" \
    "$(echo "${times[$script]}" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')"
done
