#!/usr/bin/env bash
# Instructions per request, counted by callgrind: the bare Pingora proxy, then keygate on each
# config given, under the load benchmark's requests (10,000 keys cycled, every request
# authenticated). Unlike req/s or sampled CPU, an instruction count does not move with the
# machine's speed or with what else runs on it, so two configs or two builds compare within a
# percent on this shared VM, where timed runs move by ±40% between rounds. It does not see
# cache misses, lock contention or system calls: those need `scripts/bench-load.sh` and
# `scripts/profile-vs-bare.sh`.
#
#   BENCH_KEEP=1 BENCH_TLS=0 BENCH_FEATURE_ROWS=nolog BENCH_REDIS=0 BENCH_ROUNDS=1 \
#     BENCH_CONNECTIONS=32 BENCH_DURATION=2s scripts/bench-load.sh     # prints the work directory
#   scripts/count-instructions.sh /tmp/keygate-bench.XXXXXX keygate.yaml keygate-nolog.yaml
#
# Each config is one of the work directory's, or a path (a copy with one field changed, say).
# Each target runs alone under `valgrind --tool=callgrind`: a warm-up, the counters zeroed, then
# wrk -t1 -c4 for COUNT_DURATION; the count covers every thread of the process (the access
# log's writer included). A config with fleet-wide limits on redis://127.0.0.1:PORT gets a
# fresh redis-server on that port for its count. Settings (environment): COUNT_DURATION (10s),
# COUNT_KEYGATE / COUNT_BARE (the binaries; this tree's release build), COUNT_KEEP (a directory
# to keep each callgrind dump in, as NAME.callgrind, for `callgrind_annotate --inclusive=yes`),
# COUNT_WORKSPACES (all; N loads the first N workspaces' keys only: under callgrind the load is
# about 50 times slower, and fleet-wide limits size leases by each workspace's rate, so 25 of
# the 1,000 keep it near the full benchmark's 32 requests a second). Needs valgrind, wrk and
# nginx; redis-server for a Redis config.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${1:?usage: scripts/count-instructions.sh WORK_DIR [CONFIG...]}
shift
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(keygate.yaml)
target_dir="${CARGO_TARGET_DIR:-target}"
keygate=$(realpath "${COUNT_KEYGATE:-$target_dir/release/keygate}")
bare=$(realpath "${COUNT_BARE:-$target_dir/release/examples/bare_proxy}")
duration=${COUNT_DURATION:-10s}
for tool in valgrind callgrind_control wrk nginx; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -f "$work/keygate.yaml" ] && [ -f "$work/nginx/nginx.conf" ] ||
  { echo "$work: not a work directory kept by BENCH_KEEP=1 scripts/bench-load.sh" >&2; exit 1; }
out=$(mktemp -d)
lua=$root/scripts/bench/keys.lua
pid=""
redis_pid=""

cd "$work"
secrets=secrets.txt
if [ -n "${COUNT_WORKSPACES:-}" ]; then
  python3 "$root/scripts/bench/first_workspaces.py" "$COUNT_WORKSPACES" >"$out/secrets.txt"
  secrets=$out/secrets.txt
fi
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>/dev/null
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; [ -n "$redis_pid" ] && kill $redis_pid 2>/dev/null; nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -s stop 2>/dev/null || true; rm -rf "$out"' EXIT

# count NAME PORT COMMAND...: runs COMMAND under callgrind, loads PORT, prints one report line.
count() {
  local name=$1 port=$2 n dump total
  shift 2
  valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out/$name.%p" "$@" \
    >"$out/$name.stdout" 2>"$out/$name.stderr" &
  pid=$!
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  wrk -t1 -c4 -d3s -s "$lua" "http://127.0.0.1:$port/v1/products" -- "$secrets" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  wrk -t1 -c4 -d"$duration" -s "$lua" "http://127.0.0.1:$port/v1/products" -- "$secrets" \
    >"$out/wrk-$name.txt"
  callgrind_control -d "$pid" >/dev/null 2>&1
  n=$(awk '/requests in/ { print $1 }' "$out/wrk-$name.txt")
  # Part 1: the dump made after zeroing (the one at exit has no part number).
  dump="$out/$name.$pid.1"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  [ -z "${COUNT_KEEP:-}" ] || cp "$dump" "$COUNT_KEEP/$name.callgrind"
  awk -v name="$name" -v n="$n" -v total="$total" \
    'BEGIN { printf "%-28s %9d requests  %12.0f instructions per request\n", name, n, total / n }'
}

bare_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== instructions per request (callgrind; wrk -t1 -c4 -d$duration after a 3 s warm-up)"
count bare "$bare_port" "$bare" -c keygate.yaml --listen "127.0.0.1:$bare_port"
for config in "${configs[@]}"; do
  port=$(grep -o '127\.0\.0\.1:[0-9]*' "$config" | head -n 1 | cut -d: -f2)
  redis_port=$(grep -o 'redis://127\.0\.0\.1:[0-9]*' "$config" | head -n 1 | cut -d: -f3 || true)
  if [ -n "$redis_port" ]; then
    command -v redis-server >/dev/null || { echo "$config needs redis-server" >&2; exit 1; }
    redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$out" \
      >"$out/redis.log" 2>&1 &
    redis_pid=$!
  fi
  count "$(basename "$config" .yaml)" "$port" "$keygate" run -c "$config"
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid"
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
  fi
done
