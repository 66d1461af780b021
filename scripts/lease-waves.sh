#!/usr/bin/env bash
# How evenly one sidecar's Redis calls spread over time under even load: keygate with the load
# benchmark's Redis config (1,000 workspaces far below their limits, every workspace at the
# same rate), wrk -t1 -c32 for WAVES_DURATION, and keygate_fleet_redis_calls_total sampled every
# 100 ms. Prints the calls in each second and the largest 100 ms sample: leases taken together
# at the same rate are renewed together unless something spreads them.
#
#   BENCH_KEEP=1 BENCH_TLS=0 BENCH_FEATURE_ROWS=nolog BENCH_ROUNDS=1 BENCH_CONNECTIONS=32 \
#     BENCH_DURATION=2s scripts/bench-load.sh          # prints the work directory
#   scripts/lease-waves.sh /tmp/keygate-bench.XXXXXX [KEYGATE_BINARY]
#
# Needs redis-server, nginx, wrk, curl and python3. Settings: WAVES_DURATION (45s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${1:?usage: scripts/lease-waves.sh WORK_DIR [KEYGATE_BINARY]}
keygate=$(realpath "${2:-${CARGO_TARGET_DIR:-target}/release/keygate}")
duration=${WAVES_DURATION:-45s}
config=$work/keygate-redis.yaml
[ -f "$config" ] || { echo "$work: no keygate-redis.yaml (a work directory kept by BENCH_KEEP=1 scripts/bench-load.sh)" >&2; exit 1; }
port=$(grep -o '127\.0\.0\.1:[0-9]*' "$config" | head -n 1 | cut -d: -f2)
admin=$(awk '/^admin:/ { a = 1 } a && /address:/ { print $2; exit }' "$config")
redis_port=$(grep -o 'redis://127\.0\.0\.1:[0-9]*' "$config" | cut -d: -f3)
samples=$(mktemp)
kg=""
cleanup() {
  [ -n "$kg" ] && kill -INT "$kg" 2>/dev/null && wait "$kg" 2>/dev/null
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -s stop 2>/dev/null || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -f "$samples"
}
trap cleanup EXIT

cd "$work"
redis-server --port "$redis_port" --save "" --appendonly no --daemonize yes >/dev/null
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>/dev/null
"$keygate" run -c "$config" >/dev/null 2>&1 &
kg=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
wrk -t1 -c32 -d"$duration" -s "$root/scripts/bench/keys.lua" "http://127.0.0.1:$port/v1/products" \
  -- secrets.txt >/dev/null &
load=$!
sleep 5 # past the first leases, which every workspace takes at once
while kill -0 "$load" 2>/dev/null; do
  curl -s "http://$admin/metrics" |
    awk -v t="$(date +%s.%N)" '/^keygate_fleet_redis_calls_total\{result="ok"\}/ { print t, $2 }' >>"$samples"
  sleep 0.1
done
python3 - "$samples" <<'PY'
import sys
rows = [tuple(map(float, line.split())) for line in open(sys.argv[1])]
steps = [(t2 - rows[0][0], c2 - c1) for (_, c1), (t2, c2) in zip(rows, rows[1:])]
seconds = {}
for at, calls in steps:
    seconds[int(at)] = seconds.get(int(at), 0) + calls
print("Redis calls in each second:", " ".join(str(int(seconds.get(s, 0))) for s in range(max(seconds) + 1)))
print(f"total {int(rows[-1][1] - rows[0][1])}; largest 100 ms sample {int(max(c for _, c in steps))}; "
      f"busiest second {int(max(seconds.values()))}")
PY
