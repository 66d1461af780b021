#!/usr/bin/env bash
# Two keygates side by side under the load benchmark's load, in paired, interleaved runs (A B,
# B A, ...): for comparing two builds on one config, or two configs of one build, when the
# full benchmark's medians move more from round to round than the change being judged. Each
# run reports req/s, p99 and CPU per request (keygate's, plus redis-server's when a config
# uses Redis, exact from schedstat); the summary gives medians, the median of the paired ratios
# B/A and the CPU per request of each thread (the proxy's, the fleet worker's, Redis's), and with
# AB_PROFILE=1 the functions whose sampled CPU per request differs most (perf record).
#
#   BENCH_KEEP=1 BENCH_TLS=0 BENCH_FEATURE_ROWS=nolog BENCH_ROUNDS=1 BENCH_CONNECTIONS=32 \
#     BENCH_DURATION=2s scripts/bench-load.sh          # prints the work directory
#   scripts/ab-load.sh WORK_DIR keygate-nolog.yaml keygate-redis.yaml      # local vs Redis limits
#   AB_KEYGATE_A=/tmp/keygate-before scripts/ab-load.sh WORK_DIR keygate-redis.yaml keygate-redis.yaml
#
# When both sides use one config, B runs on a copy with its own ports (and Redis database 1).
# Settings: AB_ROUNDS (6 pairs), AB_DURATION (8s), AB_CONNECTIONS (32), AB_KEYGATE_A and
# AB_KEYGATE_B (this tree's release build), AB_PROFILE (0), AB_WORKSPACES (all: wrk cycles
# through the keys of every workspace; N, of the first N only, so that their state stays hot).
# Needs wrk, nginx, curl, python3; redis-server for a Redis config, perf for AB_PROFILE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${1:?usage: scripts/ab-load.sh WORK_DIR CONFIG_A CONFIG_B}
config_a=${2:?usage: scripts/ab-load.sh WORK_DIR CONFIG_A CONFIG_B}
config_b=${3:?usage: scripts/ab-load.sh WORK_DIR CONFIG_A CONFIG_B}
target_dir="${CARGO_TARGET_DIR:-target}"
keygate_a=$(realpath "${AB_KEYGATE_A:-$target_dir/release/keygate}")
keygate_b=$(realpath "${AB_KEYGATE_B:-$target_dir/release/keygate}")
rounds=${AB_ROUNDS:-6}
duration=${AB_DURATION:-8s}
connections=${AB_CONNECTIONS:-32}
for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -f "$work/$config_a" ] && [ -f "$work/$config_b" ] && [ -f "$work/nginx/nginx.conf" ] ||
  { echo "$work: not a work directory kept by BENCH_KEEP=1 scripts/bench-load.sh" >&2; exit 1; }
out=$(mktemp -d)
lua=$root/scripts/bench/keys.lua
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The first address in a config is its listener; the admin address follows `admin:`.
listen_port() { grep -o '127\.0\.0\.1:[0-9]*' "$1" | head -n 1 | cut -d: -f2; }
admin_port() { grep -A1 '^admin:' "$1" | grep -o '[0-9]*$'; }
redis_port() { grep -o 'redis://127\.0\.0\.1:[0-9]*' "$1" | head -n 1 | cut -d: -f3 || true; }

cd "$work"
secrets=secrets.txt
if [ -n "${AB_WORKSPACES:-}" ]; then
  python3 "$root/scripts/bench/first_workspaces.py" "$AB_WORKSPACES" >"$out/secrets.txt"
  secrets=$out/secrets.txt
fi
if [ "$(listen_port "$config_a")" = "$(listen_port "$config_b")" ]; then
  sed -e "s/127\.0\.0\.1:$(listen_port "$config_b")\"/127.0.0.1:$(free_port)\"/" \
    -e "s/^  address: 127\.0\.0\.1:$(admin_port "$config_b")$/  address: 127.0.0.1:$(free_port)/" \
    -e 's|\(redis://127\.0\.0\.1:[0-9]*\)/0|\1/1|' -e "s|upgrade_sock: .*|upgrade_sock: $out/b.sock|" \
    "$config_b" >"ab-load-b.yaml" # beside the other: the snapshot's path is relative to it
  config_b=ab-load-b.yaml
fi
pids=()
cleanup() {
  # SIGINT: Pingora's fast shutdown. Waited for, so that a run right after this one finds the
  # ports free (a process still draining would answer its first requests, then vanish).
  kill -INT "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -s stop 2>/dev/null || true
  rm -rf "$out" "$work/ab-load-b.yaml"
}
trap cleanup EXIT
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>"$out/nginx.log" ||
  { echo "nginx did not start (another run's still up?):" >&2; tail -n 3 "$out/nginx.log" >&2; exit 1; }
redis=$( (redis_port "$config_a"; redis_port "$config_b") | grep . | sort -u | head -n 1 || true)
redis_pid=
if [ -n "$redis" ]; then
  command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
  redis-server --bind 127.0.0.1 --port "$redis" --save "" --appendonly no --dir "$out" \
    >"$out/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
fi
"$keygate_a" run -c "$config_a" >/dev/null 2>"$out/a.log" &
pid_a=$!
"$keygate_b" run -c "$config_b" >/dev/null 2>"$out/b.log" &
pid_b=$!
pids+=("$pid_a" "$pid_b")
port_a=$(listen_port "$config_a")
port_b=$(listen_port "$config_b")
for side in a b; do
  port=port_$side
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:${!port}/" && continue 2; sleep 0.1; done
  echo "keygate $side did not start:" >&2
  tail -n 5 "$out/$side.log" >&2
  exit 1
done
sleep 0.5
for side in a b; do
  pid=pid_$side
  kill -0 "${!pid}" 2>/dev/null ||
    { echo "keygate $side exited (its port taken?):" >&2; tail -n 5 "$out/$side.log" >&2; exit 1; }
done

# threads_ns PID...: each thread's time on a CPU in ns, as "TID NAME NS", from schedstat: exact,
# where /proc/PID/stat's user and system ticks are samples at the timer tick (about ±3% over an
# 8 s run, and blind to a thread that wakes on a timer and sleeps again before the next tick).
threads_ns() {
  local pid t
  for pid in "$@"; do
    for t in /proc/"$pid"/task/*; do
      echo "${t##*/} $(tr ' ' _ <"$t/comm" 2>/dev/null) $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null)"
    done
  done
}
load() { # PORT DURATION: wrk as the load benchmark drives it, into $out/wrk.txt
  wrk -t1 -c"$connections" -d"$2" --latency -s "$lua" "http://127.0.0.1:$1/v1/products" \
    -- "$secrets" >"$out/wrk.txt" || { echo "wrk failed against port $1" >&2; exit 1; }
}
# run SIDE PORT PID: one measured run; appends "side req/s p99_ms cpu_us_per_request" to
# $out/runs, and the CPU per request of each thread name (threads of one name summed) to
# $out/threads.
run() {
  local side=$1 port=$2 pid=$3
  threads_ns "$pid" $redis_pid >"$out/before"
  load "$port" "$duration"
  threads_ns "$pid" $redis_pid >"$out/after"
  python3 - "$side" "$out" <<'PY' | tee -a "$out/runs"
import collections, re, sys
side, out = sys.argv[1:]
text = open(f"{out}/wrk.txt").read()
n = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))
value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", text).groups()
p99 = float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
def read(path):  # a thread that ended between the listing and the read has no time: skipped
    return {f[0]: (f[1], int(f[2])) for f in map(str.split, open(path)) if len(f) == 3}
before, after = read(f"{out}/before"), read(f"{out}/after")
per_name = collections.Counter()
for tid, (name, ns) in after.items():
    per_name[name] += (ns - before.get(tid, (name, 0))[1]) / 1e3 / n
with open(f"{out}/threads", "a") as f:
    print(side, *(f"{name}={us:.3f}" for name, us in per_name.items()), file=f)
print(side, round(rps), p99, round(sum(per_name.values()), 2))
PY
}
echo "A: $keygate_a -c $config_a (port $port_a)"
echo "B: $keygate_b -c $config_b (port $port_b)"
echo "wrk -t1 -c$connections -d$duration, $rounds pairs; CPU per request counts redis-server's${redis:+ (port $redis)}"
load "$port_a" 2s
load "$port_b" 2s
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    run A "$port_a" "$pid_a"
    run B "$port_b" "$pid_b"
  else
    run B "$port_b" "$pid_b"
    run A "$port_a" "$pid_a"
  fi
done
python3 - "$out/runs" <<'PY'
import statistics as st, sys
runs = [line.split() for line in open(sys.argv[1])]
side = {s: [list(map(float, r[1:])) for r in runs if r[0] == s] for s in "AB"}
med = lambda xs: st.median(xs)
print(f"{'':4}{'req/s':>9}{'p99 ms':>9}{'CPU us/req':>12}  (medians)")
for s in "AB":
    print(f"{s:4}{med([r[0] for r in side[s]]):>9.0f}{med([r[1] for r in side[s]]):>9.2f}{med([r[2] for r in side[s]]):>12.2f}")
pairs = list(zip(side["A"], side["B"]))
ratio = lambda i: med([b[i] / a[i] for a, b in pairs])
print(f"B/A: req/s x{med([r[0] for r in side['B']]) / med([r[0] for r in side['A']]):.3f}, "
      f"p99 x{med([r[1] for r in side['B']]) / med([r[1] for r in side['A']]):.2f}, "
      f"CPU per request {med([r[2] for r in side['B']]) - med([r[2] for r in side['A']]):+.2f} us")
print(f"     paired: req/s x{ratio(0):.3f}, p99 x{ratio(1):.2f}, CPU per request x{ratio(2):.3f}")
PY
python3 - "$out/threads" <<'PY'
import statistics as st, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    side, *pairs = line.split()
    runs[side].append({k: float(v) for k, v in (p.split("=") for p in pairs)})
names = sorted({k for rs in runs.values() for r in rs for k in r})
med = lambda s, k: st.median([r.get(k, 0.0) for r in runs[s]])
print(f"{'CPU us/req by thread (medians)':32}{'A':>8}{'B':>8}")
for k in sorted(names, key=lambda k: -max(med("A", k), med("B", k))):
    if max(med("A", k), med("B", k)) >= 0.01:
        print(f"  {k:30}{med('A', k):>8.2f}{med('B', k):>8.2f}")
PY

if [ "${AB_PROFILE:-0}" = 1 ]; then
  command -v perf >/dev/null || { echo "AB_PROFILE=1 needs perf" >&2; exit 1; }
  for side in A B; do
    if [ "$side" = A ]; then port=$port_a pid=$pid_a; else port=$port_b pid=$pid_b; fi
    perf record -e cpu-clock -F 2000 -g -o "$out/perf-$side.data" -p "$pid" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.5
    load "$port" 10s
    cp "$out/wrk.txt" "$out/wrk-$side.txt"
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
  done
  echo
  echo "== sampled CPU per request (perf record -e cpu-clock -F 2000; wrk -d10s): A, B"
  python3 "$root/scripts/bench/profile_report.py" samples \
    "$out/perf-A.data" "$(awk '/requests in/ { print $1 }' "$out/wrk-A.txt")" \
    "$out/perf-B.data" "$(awk '/requests in/ { print $1 }' "$out/wrk-B.txt")" A B
fi
