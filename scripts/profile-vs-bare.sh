#!/usr/bin/env bash
# Where keygate's extra cost over a bare Pingora proxy goes, per request, under the load
# benchmark's load: system calls counted by `strace -c`, then CPU sampled by `perf record`, for
# the bare proxy and for keygate on the same generated config, one after the other. Prints each
# system call's count per request for both, then the sampled CPU per request by kind of code
# (kernel, keygate's own, Pingora's header API, the allocator, ...) and the functions that
# differ most. Sampled figures move with the machine's speed; compare the two columns of one
# run, not figures of two runs.
#
#   BENCH_KEEP=1 BENCH_TLS=0 BENCH_FEATURE_ROWS=nolog BENCH_REDIS=0 BENCH_ROUNDS=1 \
#     BENCH_CONNECTIONS=32 BENCH_DURATION=2s scripts/bench-load.sh     # prints the work directory
#   scripts/profile-vs-bare.sh /tmp/keygate-bench.XXXXXX [keygate-nolog.yaml]
#
# The config is one of the work directory's (keygate.yaml: as shipped, the access log to a file;
# keygate-nolog.yaml, the default: the access log off). Settings (environment):
# PROFILE_CONNECTIONS (32), PROFILE_DURATION (10s), PROFILE_KEYGATE / PROFILE_BARE (the
# binaries; this tree's release build). Needs strace and perf.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${1:?usage: scripts/profile-vs-bare.sh WORK_DIR [CONFIG]}
config=${2:-keygate-nolog.yaml}
target_dir="${CARGO_TARGET_DIR:-target}"
keygate=$(realpath "${PROFILE_KEYGATE:-$target_dir/release/keygate}")
bare=$(realpath "${PROFILE_BARE:-$target_dir/release/examples/bare_proxy}")
connections=${PROFILE_CONNECTIONS:-32}
duration=${PROFILE_DURATION:-10s}
for tool in strace perf wrk nginx; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -f "$work/$config" ] && [ -f "$work/nginx/nginx.conf" ] ||
  { echo "$work: not a work directory kept by BENCH_KEEP=1 scripts/bench-load.sh" >&2; exit 1; }
out=$(mktemp -d)
lua=$root/scripts/bench/keys.lua
bare_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kg_port=$(grep -o '127\.0\.0\.1:[0-9]*' "$work/$config" | head -n 1 | cut -d: -f2)

cd "$work"
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>/dev/null
"$bare" -c keygate.yaml --listen "127.0.0.1:$bare_port" >"$out/bare.log" 2>&1 &
bare_pid=$!
"$keygate" run -c "$config" >"$out/access.log" 2>"$out/keygate.log" &
kg_pid=$!
trap 'kill $bare_pid $kg_pid 2>/dev/null || true; nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -s stop 2>/dev/null || true; rm -rf "$out"' EXIT
for port in "$bare_port" "$kg_port"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

# load NAME PORT SECONDS: wrk as the load benchmark drives it; prints the requests it made.
load() {
  wrk -t1 -c"$connections" -d"$3" -s "$lua" "http://127.0.0.1:$2/v1/products" -- secrets.txt \
    >"$out/wrk-$1.txt"
  awk '/requests in/ { print $1 }' "$out/wrk-$1.txt"
}
# under NAME PID PORT TOOL...: TOOL attached to PID while wrk loads PORT (after a warm-up);
# prints wrk's request count.
under() {
  local name=$1 pid=$2 port=$3 tool_pid n
  shift 3
  load "$name-warm" "$port" 2s >/dev/null
  "$@" -p "$pid" >/dev/null 2>&1 &
  tool_pid=$!
  sleep 0.5
  n=$(load "$name" "$port" "$duration")
  kill -INT "$tool_pid"
  wait "$tool_pid" || true
  echo "$n"
}

bare_n=$(under bare "$bare_pid" "$bare_port" strace -c -f -o "$out/strace-bare.txt")
kg_n=$(under keygate "$kg_pid" "$kg_port" strace -c -f -o "$out/strace-keygate.txt")
echo "== system calls per request (strace -c; wrk -t1 -c$connections)"
python3 "$root/scripts/bench/profile_report.py" syscalls \
  "$out/strace-bare.txt" "$bare_n" "$out/strace-keygate.txt" "$kg_n"

bare_n=$(under bare "$bare_pid" "$bare_port" perf record -e cpu-clock -F 2000 -g -o "$out/perf-bare.data")
kg_n=$(under keygate "$kg_pid" "$kg_port" perf record -e cpu-clock -F 2000 -g -o "$out/perf-keygate.data")
echo
echo "== CPU per request, sampled (perf record -e cpu-clock -F 2000; wrk -t1 -c$connections -d$duration)"
python3 "$root/scripts/bench/profile_report.py" samples \
  "$out/perf-bare.data" "$bare_n" "$out/perf-keygate.data" "$kg_n"
