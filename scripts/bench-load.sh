#!/usr/bin/env bash
# The end-to-end load benchmark: what keygate costs over a bare Pingora proxy, under real HTTP.
#
# In one run, all on 127.0.0.1: nginx answering `200 ok` (one worker, keep-alive, no access
# log) as the upstream; then, driven by wrk through the same Lua script:
#   1. nginx directly;
#   2. nginx as a reverse proxy (a second nginx, one worker, pooled keep-alive upstream
#      connections): the reference for what a proxy hop costs at best;
#   3. a bare Pingora proxy (examples/bare_proxy.rs: keygate's Pingora version, allocator and
#      settings, read from the same generated config, with no auth and no header work), and
#   4. keygate as shipped (conf/keygate.yaml's settings: the access log on, its stdout to a file,
#      and `limits.headers: both`) on a generated snapshot of 10,000 keys in 1,000 live
#      workspaces, limits high enough never to answer 429: the headline row. It and 3 run in
#      alternating rounds, all running throughout, so that a drift in the machine's speed
#      reaches all alike; so do
#   5. the same keygate with the access log off, and with the access log off and no rate-limit
#      headers (what each feature costs), unless BENCH_FEATURE_ROWS=0, and
#   6. keygate with the access log off and fleet-wide limits through a local redis-server
#      (`limits.global`), its CPU per request counting redis-server's with keygate's, unless
#      BENCH_REDIS=0 or redis-server is missing, and
#   7. over TLS (keep-alive, HTTP/1.1; a self-signed P-256 certificate, TLS 1.3): the bare
#      Pingora proxy with keygate's TLS settings and certificate, and keygate as shipped on its
#      `listen.tls` listener, unless BENCH_TLS=0.
# All of it at each client concurrency in BENCH_CONNECTIONS (32, then 64).
# Every request carries `Authorization: Bearer <key>`, cycling through all 10,000 keys. Before
# loading keygate the script checks that a good key gets 200 and a bad or missing one 401; after
# each run, that keygate counted as `allowed` (its admin /metrics) the requests wrk reports, and
# that no request got anything but 2xx. It prints req/s, p50 and p99 per target (the median
# round for bare Pingora and keygate), the CPU time each process spent per request (read from
# /proc; the steadier measure of cost when wrk, nginx and the proxy share 2 cores), then the
# ratios per concurrency: keygate as shipped / bare Pingora, each feature on / off, bare Pingora /
# nginx proxy. Other load on the machine during a run is measured and warned about.
#
# Needs a Rust toolchain and the build dependencies (scripts/install-deps.sh); installs wrk and
# nginx-light when missing. On 2 cores with a warm release build, 5 rounds of up to 7 targets
# at 2 concurrencies take about 12 minutes; BENCH_FEATURE_ROWS=0 BENCH_REDIS=0 (4 targets)
# took 7.5.
#
# Settings (environment): BENCH_DURATION (8s per run), BENCH_ROUNDS (5), BENCH_WARMUP (2s),
# BENCH_ROUND_WARMUP (1s, before each run of the alternating rounds), BENCH_CONNECTIONS ("32 64"),
# BENCH_KEYS (10000), BENCH_WORKSPACES (1000), BENCH_FEATURE_ROWS (1; 0: neither row 5; nolog:
# only the access-log-off row, which the Redis row is compared with), BENCH_REDIS (1), BENCH_TLS (1),
# BENCH_KEEP (0: 1 keeps the work directory with configs, logs and wrk's outputs); and the
# Pingora settings both the bare proxy and keygate run with: BENCH_THREADS (2),
# BENCH_WORK_STEALING (false), BENCH_LISTENER_TASKS (1), BENCH_UPSTREAM_POOL (128); keygate's
# BENCH_RATE_HEADERS (both: the headline row's `limits.headers`), BENCH_CONCURRENT_REQUESTS (100: its cap on a
# live workspace's requests in flight; empty for none). To compare two builds, BENCH_KEYGATE and
# BENCH_BARE name other binaries than this tree's release build.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

duration=${BENCH_DURATION:-8s}
warmup=${BENCH_WARMUP:-2s}
# One wrk thread: on a 2-core machine a second one would take CPU from the proxy it measures.
# 32 connections keep keygate's 2 worker threads busy despite that single wrk thread; 64 show
# longer queues. Both stay under the upstream keep-alive pool (128 idle connections), so every
# in-flight request reuses a pooled upstream connection and no run pays for connection set-up.
connection_counts=${BENCH_CONNECTIONS:-32 64}
connections=${connection_counts%% *}
n_keys=${BENCH_KEYS:-10000}
n_workspaces=${BENCH_WORKSPACES:-1000}
feature_rows=${BENCH_FEATURE_ROWS:-1}
tls_run=${BENCH_TLS:-1}
rounds=${BENCH_ROUNDS:-5}
threads=${BENCH_THREADS:-2}
work_stealing=${BENCH_WORK_STEALING:-false}
listener_tasks=${BENCH_LISTENER_TASKS:-1}
upstream_pool=${BENCH_UPSTREAM_POOL:-128}
rate_headers=${BENCH_RATE_HEADERS:-both}
# The shipped config's cap on a live workspace's requests in flight; empty: none (for builds
# from before caps existed, whose config check refuses the field).
concurrent_requests=${BENCH_CONCURRENT_REQUESTS-100}
cap=""
[ -n "$concurrent_requests" ] && cap=", concurrent_requests: $concurrent_requests"

die() {
  echo "bench-load: FAIL: $*" >&2
  exit 1
}

# --- processes: every one started is stopped on exit -------------------------------------------

pids=()
work=""
policy=""
cleanup() {
  local pid
  if [ -n "${wrk_pid:-}" ]; then
    kill -KILL "$wrk_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do
    stop "$pid"
  done
  if [ -n "$policy" ]; then
    $sudo rm -f "$policy"
  fi
  if [ -n "$work" ]; then
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
      echo "bench-load: work directory kept: $work"
    else
      rm -rf "$work"
    fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# alive PID: the process runs (an exited child not yet waited for is a zombie: not alive).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# stop PID: SIGINT — a fast shutdown for Pingora (SIGTERM would wait out its grace period) and
# for nginx — then SIGKILL if it is still there after 3 s.
stop() {
  local pid=$1
  if alive "$pid"; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 30); do
      alive "$pid" || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# wait_ready NAME URL PID LOG: until URL answers 200 (10 s at most); the log is shown on failure.
wait_ready() {
  local name=$1 url=$2 pid=$3 log=$4
  for _ in $(seq 100); do
    if [ "$(curl -sk -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ]; then
      return 0
    fi
    if ! alive "$pid"; then
      tail -n 30 "$log" >&2 || true
      die "$name exited at start (log above)"
    fi
    sleep 0.1
  done
  tail -n 30 "$log" >&2 || true
  die "$name did not answer 200 at $url within 10 s (log above)"
}

# --- tools ---------------------------------------------------------------------------------

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x "$nginx_bin" ] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # The nginx package would start a system nginx on port 80: forbid service starts during the
  # install, unless a policy-rc.d is already in place (as in Docker images).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# keygate scripts/bench-load.sh: no service starts during its install\nexit 101\n' |
      $sudo tee "$policy" >/dev/null
    $sudo chmod 0755 "$policy"
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$policy" ]; then
    $sudo rm -f "$policy"
    policy=""
  fi
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
fi

echo "== building (release): keygate and examples/bare_proxy"
cargo build --release --locked --examples --bins
keygate=${BENCH_KEYGATE:-target/release/keygate}
bare=${BENCH_BARE:-target/release/examples/bare_proxy}
lua=scripts/bench/keys.lua

work=$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench.XXXXXX")
# Fourteen free loopback ports, all held at once so that they differ.
read -r p_nginx p_nginx_proxy p_bare p_kg p_kg_admin p_kg2 p_kg2_admin p_kg3 p_kg3_admin p_kg4 p_kg4_admin p_redis p_bare_tls p_kg_tls < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(14)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
[ -n "${p_kg_tls:-}" ] || die "could not pick free ports"
# The TLS rows' certificate: self-signed, for 127.0.0.1 (wrk does not verify it).
tls_section=""
if [ "$tls_run" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null || die "openssl could not make a certificate"
  tls_section="  tls: { addresses: [\"127.0.0.1:$p_kg_tls\"], cert_file: tls.crt, key_file: tls.key }"
fi

echo "== generating $n_keys keys in $n_workspaces workspaces"
secrets=$work/secrets.txt
python3 scripts/bench/gen_keys.py "$work/keys.json" "$secrets" "$n_keys" "$n_workspaces"
[ "$(wc -l <"$secrets")" -eq "$n_keys" ] || die "expected $n_keys secrets in $secrets"

# keygate_config FILE PORT ADMIN_PORT ACCESS_LOG(true|false) RATE_HEADERS [REDIS_PORT]:
# conf/keygate.yaml's settings, with the generated keys, one route over everything, and limits
# that never bind (held fleet-wide through the Redis on REDIS_PORT when given).
keygate_config() {
  local global="" tls=""
  # keygate as shipped also listens for TLS clients (measured in turn, never at once).
  [ "$2" = "$p_kg" ] && tls=$tls_section
  if [ -n "${6:-}" ]; then
    global="  global:
    redis: { url: \"redis://127.0.0.1:$6/0\" }
    on_outage: local"
  fi
  cat >"$1" <<EOF
# Generated by scripts/bench-load.sh.
listen:
  addresses: ["127.0.0.1:$2"]
  keepalive_timeout: 60s
$tls
upstream:
  address: 127.0.0.1:$p_nginx
  connect_timeout: 1s
  read_timeout: 30s
  write_timeout: 30s
  idle_timeout: 4s
  forward_authorization: false
server:
  threads: $threads
  work_stealing: $work_stealing
  listener_tasks_per_fd: $listener_tasks
  upstream_keepalive_pool_size: $upstream_pool
  grace_period_seconds: 5
  graceful_shutdown_timeout_seconds: 5
  upgrade_sock: $work/upgrade-$2.sock
snapshot:
  file: keys.json
  watch_interval: 250ms
routes:
  - name: all
    path: /**
    scopes: ["products:read"]
unmatched: deny
limits:
  enabled: true
  live: { burst_per_second: 1000000, sustained_per_minute: 100000000$cap }
  headers: $5
$global
admin:
  address: 127.0.0.1:$3
access_log:
  enabled: $4
  sample_ratio: 1.0
usage:
  mode: status
log:
  level: info
EOF
  "$keygate" check -c "$1" >"$1.check" 2>&1 || {
    cat "$1.check" >&2
    die "keygate check rejected $1"
  }
}
keygate_config "$work/keygate.yaml" "$p_kg" "$p_kg_admin" true "$rate_headers"
if [ "$feature_rows" != 0 ]; then
  keygate_config "$work/keygate-nolog.yaml" "$p_kg2" "$p_kg2_admin" false "$rate_headers"
fi
if [ "$feature_rows" = 1 ]; then
  keygate_config "$work/keygate-minimal.yaml" "$p_kg4" "$p_kg4_admin" false none
fi
redis_run=${BENCH_REDIS:-1}
command -v redis-server >/dev/null || redis_run=0
[ "$redis_run" = 1 ] && keygate_config "$work/keygate-redis.yaml" "$p_kg3" "$p_kg3_admin" false "$rate_headers" "$p_redis"

# --- the upstream --------------------------------------------------------------------------

# nginx_config NAME SERVER_BLOCK: an nginx of one worker, keep-alive, no access log, its files
# in $work/NAME.
nginx_config() {
  local dir=$work/$1
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
# Generated by scripts/bench-load.sh.
worker_processes 1;
pid $dir/nginx.pid;
lock_file $dir/nginx.lock;
error_log $dir/error.log warn;
events {
  worker_connections 1024;
}
http {
  access_log off;
  keepalive_timeout 65s;          # above the proxies' 4 s upstream idle_timeout
  keepalive_requests 100000000;   # the default (1000) would close every connection often
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
$2
}
EOF
}

# start_nginx NAME: sets nginx_pid.
start_nginx() {
  local dir=$work/$1
  local args=(-p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf")
  "$nginx_bin" "${args[@]}" -t -q || die "nginx rejected $dir/nginx.conf"
  "$nginx_bin" "${args[@]}" -g 'daemon off;' 2>>"$dir/error.log" &
  nginx_pid=$!
  pids+=("$nginx_pid")
}

# The upstream: answers 200 "ok".
nginx_config nginx "  server {
    listen 127.0.0.1:$p_nginx;
    location / {
      default_type text/plain;
      return 200 \"ok\\n\";
    }
  }"
# The reference proxy: nginx in front of the same upstream, as keygate would be, with upstream
# connections pooled (HTTP/1.1, keep-alive) as Pingora pools them.
nginx_config nginx-proxy "  upstream backend {
    server 127.0.0.1:$p_nginx;
    keepalive $upstream_pool;
  }
  server {
    listen 127.0.0.1:$p_nginx_proxy;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
start_nginx nginx
upstream_pid=$nginx_pid
wait_ready nginx "http://127.0.0.1:$p_nginx/" "$upstream_pid" "$work/nginx/error.log"
nginx_worker=$(pgrep -P "$upstream_pid" | head -n 1) || die "no nginx worker process"

# --- load ----------------------------------------------------------------------------------

path=/v1/products
results=$work/results.tsv
: >"$results"
cpus=$(nproc)
tick_us=$((1000000 / $(getconf CLK_TCK)))
echo "== $cpus CPUs; wrk -t1 -c($connection_counts) -d$duration --latency (after a $warmup" \
  "warm-up), keys cycled from $n_keys"

# run_wrk ARGS...: wrk in the background, waited for, so that a signal stops the script at once
# (bash runs a trap only once the foreground command is over).
wrk_pid=""
run_wrk() {
  wrk "$@" &
  wrk_pid=$!
  wait "$wrk_pid"
}

warm_up() {
  run_wrk -t1 -c"$connections" -d"$warmup" -s "$lua" "$1" -- "$secrets" >/dev/null
  # Let the requests still in flight when wrk stopped finish before anything is counted.
  sleep 0.3
}

# CPU accounting, in clock ticks. On a 2-core machine where wrk, nginx and the proxy share the
# CPUs, throughput is largely set by what they all spend per request; the proxy's own CPU time
# per request is the steadier figure of what it costs. The machine's busy time shows whether
# something else (a build, another benchmark) ran at the same time and skewed the figures.
#   proc_ticks PIDS: the processes' user + system time (all threads), summed.
proc_ticks() {
  local stat pid sum=0
  for pid in $1; do
    stat=$(cat "/proc/$pid/stat") || die "process $pid is gone"
    stat=${stat##*) }
    sum=$((sum + $(awk '{ print $12 + $13 }' <<<"$stat")))
  done
  echo "$sum"
}
#   waited_ticks: user + system time of this shell's waited-for children (wrk among them).
waited_ticks() {
  local stat
  stat=$(cat "/proc/$$/stat")
  stat=${stat##*) }
  awk '{ print $14 + $15 }' <<<"$stat"
}
#   machine_ticks: "BUSY TOTAL" over all CPUs since boot.
machine_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}

# measure NAME LABEL URL SERVER_PID: one wrk run against SERVER_PID (the proxy, or the nginx
# worker for nginx directly); sets `requests`; records a line in the results file. Any non-2xx
# answer or socket error fails the whole benchmark.
measure() {
  local name=$1 label=$2 url=$3 server=$4 out="$work/wrk-$1.txt"
  local summary rps p50 p99 non2xx errors s0 s1 u0 u1 w0 w1 m0 m1 busy total cpu
  s0=$(proc_ticks "$server")
  u0=$(proc_ticks "$nginx_worker")
  w0=$(waited_ticks)
  m0=$(machine_ticks)
  run_wrk -t1 -c"$connections" -d"$duration" --latency -s "$lua" "$url" -- "$secrets" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed against $label"; }
  m1=$(machine_ticks)
  w1=$(waited_ticks)
  u1=$(proc_ticks "$nginx_worker")
  s1=$(proc_ticks "$server")
  summary=$(python3 scripts/bench/wrk_summary.py <"$out") || die "could not read wrk's output"
  read -r rps p50 p99 requests non2xx errors <<<"$summary"
  read -r busy total <<<"$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); print y[1] - x[1], y[2] - x[2] }')"
  # Per request, in microseconds: the server, the upstream nginx (none when it is the server),
  # wrk; then the machine's busy share and what processes other than these three used, in
  # percent of one CPU.
  cpu=$(awk -v tick="$tick_us" -v n="$requests" -v s=$((s1 - s0)) -v u=$((u1 - u0)) \
    -v w=$((w1 - w0)) -v busy="$busy" -v total="$total" -v cpus="$cpus" -v direct="$([ "$server" = "$nginx_worker" ] && echo 1 || echo 0)" '
    BEGIN {
      up = direct ? 0 : u
      printf "%.1f %.1f %.1f %.0f %.0f", s * tick / n, up * tick / n, w * tick / n,
        100 * cpus * busy / total, 100 * cpus * max(0, busy - s - up - w) / total
    }
    function max(a, b) { return a > b ? a : b }')
  read -r cpu_server cpu_upstream cpu_wrk busy_pct other_pct <<<"$cpu"
  printf '   %-36s %6s req/s  p50 %6s ms  p99 %6s ms  (%s requests)\n' \
    "$label" "$rps" "$p50" "$p99" "$requests"
  if [ "$server" = "$nginx_worker" ]; then
    printf '   %-36s CPU per request: nginx %s us, wrk %s us;' "" "$cpu_server" "$cpu_wrk"
  else
    local what=proxy
    [ "$server" != "${server%% *}" ] && what="proxy + redis-server"
    printf '   %-36s CPU per request: %s %s us, nginx %s us, wrk %s us;' "" "$what" \
      "$cpu_server" "$cpu_upstream" "$cpu_wrk"
  fi
  printf ' machine %s%% busy, other processes %s%% (of one CPU)\n' "$busy_pct" "$other_pct"
  if [ "$non2xx" -ne 0 ] || [ "$errors" -ne 0 ]; then
    cat "$out" >&2
    die "$label: $non2xx non-2xx/3xx responses and $errors socket errors (wrk's output above)"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$label" "$rps" "$p50" "$p99" \
    "$requests" "$cpu_server" "$cpu_upstream" "$cpu_wrk" "$other_pct" >>"$results"
}

# outcomes ADMIN_PORT: "ALLOWED OTHER": keygate_requests_total summed over routes.
outcomes() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk '
    /^keygate_requests_total\{/ { if ($0 ~ /outcome="allowed"/) a += $NF; else o += $NF }
    END { printf "%d %d\n", a, o }'
}

# expect_status WANT URL [CURL ARGS...]
expect_status() {
  local want=$1 url=$2 got
  shift 2
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)
  [ "$got" = "$want" ] || die "expected $want, got $got: curl $* $url"
}

# start_keygate LABEL CONFIG PORT ADMIN_PORT LOG ACCESS_LOG: sets keygate_pid once it is ready
# and has shown that it authenticates: good keys (first, middle, last) pass, a bad or missing
# one does not.
start_keygate() {
  local label=$1 config=$2 port=$3 admin=$4 log=$5 access=$6
  local url="http://127.0.0.1:$port$path"
  "$keygate" run -c "$config" >"$access" 2>"$log" &
  keygate_pid=$!
  pids+=("$keygate_pid")
  wait_ready "$label" "http://127.0.0.1:$admin/readyz" "$keygate_pid" "$log"
  expect_status 200 "$url" -H "Authorization: Bearer $(sed -n 1p "$secrets")"
  expect_status 200 "$url" -H "Authorization: Bearer $(sed -n "$((n_keys / 2))p" "$secrets")"
  expect_status 200 "$url" -H "Authorization: Bearer $(sed -n "${n_keys}p" "$secrets")"
  expect_status 401 "$url" -H "Authorization: Bearer sk_live_NOTaKEYnotAkeyNOTaKEYnotAkeyNOTaKEY00"
  expect_status 401 "$url"
}

# measure_keygate NAME LABEL URL ADMIN_PORT PID: `measure`, then a check that keygate counted
# as allowed (its admin /metrics) every request wrk reports, and refused none.
measure_keygate() {
  local name=$1 label=$2 url=$3 admin=$4 pid=$5
  local counts allowed0 other0 allowed1 other1 allowed other
  counts=$(outcomes "$admin") || die "no metrics from $label's admin port"
  read -r allowed0 other0 <<<"$counts"
  measure "$name" "$label" "$url" "$pid"
  sleep 0.3 # the last responses are counted just after they are sent
  counts=$(outcomes "$admin") || die "no metrics from $label's admin port"
  read -r allowed1 other1 <<<"$counts"
  allowed=$((allowed1 - allowed0))
  other=$((other1 - other0))
  # wrk counts the responses it received; keygate also counted the (at most one per connection)
  # requests in flight when wrk stopped.
  echo "   keygate's metrics: +$allowed allowed, +$other refused (wrk: $requests responses)"
  if [ "$allowed" -lt "$requests" ] || [ "$allowed" -gt $((requests + connections)) ] ||
    [ "$other" -ne 0 ]; then
    die "$label counted $allowed allowed and $other refused requests; wrk reported $requests"
  fi
}

# The comparison that matters, bare Pingora against keygate, runs in alternating rounds with
# every process up (each idle while another is loaded), so that a drift in the machine's speed
# during the run reaches all alike; the report takes each one's median round.
start_nginx nginx-proxy
proxy_pid=$nginx_pid
wait_ready "nginx proxy" "http://127.0.0.1:$p_nginx_proxy$path" "$proxy_pid" \
  "$work/nginx-proxy/error.log"
proxy_worker=$(pgrep -P "$proxy_pid" | head -n 1) || die "no nginx proxy worker process"
bare_tls=()
[ "$tls_run" = 1 ] && bare_tls=(--tls-listen "127.0.0.1:$p_bare_tls")
"$bare" -c "$work/keygate.yaml" --listen "127.0.0.1:$p_bare" "${bare_tls[@]}" >"$work/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
wait_ready "bare proxy" "http://127.0.0.1:$p_bare$path" "$bare_pid" "$work/bare.log"
if [ "$tls_run" = 1 ]; then
  wait_ready "bare proxy (TLS)" "https://127.0.0.1:$p_bare_tls$path" "$bare_pid" "$work/bare.log"
fi
access=$work/keygate-access.log
start_keygate "keygate" "$work/keygate.yaml" "$p_kg" "$p_kg_admin" "$work/keygate.log" "$access"
kg_pid=$keygate_pid
if [ "$tls_run" = 1 ]; then
  expect_status 200 "https://127.0.0.1:$p_kg_tls$path" -k \
    -H "Authorization: Bearer $(sed -n 1p "$secrets")"
  expect_status 401 "https://127.0.0.1:$p_kg_tls$path" -k
fi
if [ "$feature_rows" != 0 ]; then
  start_keygate "keygate (access log off)" "$work/keygate-nolog.yaml" "$p_kg2" "$p_kg2_admin" \
    "$work/keygate-nolog.log" /dev/null
  kg2_pid=$keygate_pid
fi
if [ "$feature_rows" = 1 ]; then
  start_keygate "keygate (no access log, no rate headers)" "$work/keygate-minimal.yaml" "$p_kg4" \
    "$p_kg4_admin" "$work/keygate-minimal.log" /dev/null
  kg4_pid=$keygate_pid
fi
if [ "$redis_run" = 1 ]; then
  redis-server --bind 127.0.0.1 --port "$p_redis" --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  start_keygate "keygate (fleet limits, Redis)" "$work/keygate-redis.yaml" "$p_kg3" \
    "$p_kg3_admin" "$work/keygate-redis.log" /dev/null
  kg3_pid=$keygate_pid
fi
# fleet_counts ADMIN_PORT: "WAITED CALLS" so far: decisions that waited on Redis (a subject with
# no lease), and calls to Redis whatever their result.
fleet_counts() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    /^keygate_fleet_decisions_total\{path="waited"\}/ { waited = $2 }
    /^keygate_fleet_redis_calls_total\{/ { calls += $2 }
    END { print waited + 0, calls + 0 }'
}

# Each measured run follows a short warm-up of its own: while the other rows run, a target sits
# idle for several runs' time, long enough for the Redis row's leases to lapse, and without one
# its run would open with every workspace's first request waiting on Redis at once (1,000 of
# about 100,000 requests: the p99 itself). Those cold waits are a real cost, but of a workspace's
# first request after an idle spell, not of steady load: the Redis row prints how many fell
# inside its measured run, and how many calls to Redis it made.
round_warmup=${BENCH_ROUND_WARMUP:-1s}
warm_round() {
  run_wrk -t1 -c"$connections" -d"$round_warmup" -s "$lua" "$1" -- "$secrets" >/dev/null
  sleep 0.3
}
# The access-log-off row, with local limits.
nolog_row() {
  [ "$feature_rows" != 0 ] || return 0
  warm_round "http://127.0.0.1:$p_kg2$path"
  measure_keygate "keygate_nolog@$connections" "keygate, access log off" \
    "http://127.0.0.1:$p_kg2$path" "$p_kg2_admin" "$kg2_pid"
}
# The same keygate with fleet-wide limits on Redis; its server CPU is keygate's and
# redis-server's together: what fleet limits cost here.
redis_row() {
  [ "$redis_run" = 1 ] || return 0
  warm_round "http://127.0.0.1:$p_kg3$path"
  read -r waited0 calls0 <<<"$(fleet_counts "$p_kg3_admin")"
  measure_keygate "keygate_redis@$connections" "keygate, log off, Redis limits" \
    "http://127.0.0.1:$p_kg3$path" "$p_kg3_admin" "$kg3_pid $redis_pid"
  read -r waited1 calls1 <<<"$(fleet_counts "$p_kg3_admin")"
  echo "   in this run: $((calls1 - calls0)) Redis calls (one per" \
    "$((requests / (calls1 - calls0 > 0 ? calls1 - calls0 : 1))) requests)," \
    "$((waited1 - waited0)) decisions waited on Redis"
}
for connections in $connection_counts; do
  echo "== $connections connections"
  echo "-- nginx directly (127.0.0.1:$p_nginx)"
  warm_up "http://127.0.0.1:$p_nginx$path"
  measure "nginx@$connections" "nginx direct" "http://127.0.0.1:$p_nginx$path" "$nginx_worker"
  echo "-- nginx proxy, one worker (127.0.0.1:$p_nginx_proxy)"
  warm_up "http://127.0.0.1:$p_nginx_proxy$path"
  measure "nginx_proxy@$connections" "nginx proxy (1 worker)" \
    "http://127.0.0.1:$p_nginx_proxy$path" "$proxy_worker"
  echo "-- bare Pingora proxy (127.0.0.1:$p_bare) and keygate (127.0.0.1:$p_kg, admin" \
    "$p_kg_admin) as shipped, $rounds alternating rounds, with the other rows"
  for round in $(seq "$rounds"); do
    warm_round "http://127.0.0.1:$p_bare$path"
    measure "bare@$connections" "bare Pingora proxy" "http://127.0.0.1:$p_bare$path" "$bare_pid"
    warm_round "http://127.0.0.1:$p_kg$path"
    measure_keygate "keygate@$connections" "keygate as shipped (log on)" \
      "http://127.0.0.1:$p_kg$path" "$p_kg_admin" "$kg_pid"
    # The Redis row and the local-limits row it is compared with run next to each other, in an
    # order that swaps every round (A B, B A, ...), so that the two runs of a round meet the same
    # state of the machine and neither always runs second, after the other's load.
    if [ $((round % 2)) = 1 ]; then
      nolog_row
      redis_row
    else
      redis_row
      nolog_row
    fi
    if [ "$feature_rows" = 1 ]; then
      warm_round "http://127.0.0.1:$p_kg4$path"
      measure_keygate "keygate_minimal@$connections" "keygate, log off, no rate headers" \
        "http://127.0.0.1:$p_kg4$path" "$p_kg4_admin" "$kg4_pid"
    fi
    if [ "$tls_run" = 1 ]; then
      warm_round "https://127.0.0.1:$p_bare_tls$path"
      measure "bare_tls@$connections" "bare Pingora proxy, TLS" \
        "https://127.0.0.1:$p_bare_tls$path" "$bare_pid"
      warm_round "https://127.0.0.1:$p_kg_tls$path"
      measure_keygate "keygate_tls@$connections" "keygate as shipped, TLS" \
        "https://127.0.0.1:$p_kg_tls$path" "$p_kg_admin" "$kg_pid"
    fi
  done
done
stop "$proxy_pid"
stop "$bare_pid"
# Every request keygate as shipped allowed has its access-log line (written out on its stop).
allowed_total=$(outcomes "$p_kg_admin" | cut -d' ' -f1)
stop "$kg_pid"
lines=$(grep -c '"keygate::access"' "$access" || true)
echo "-- keygate as shipped: access log of $lines lines ($(du -h "$access" | cut -f1))"
[ "$lines" -ge "$allowed_total" ] || die "keygate logged $lines requests of $allowed_total allowed"
if [ "$feature_rows" != 0 ]; then stop "$kg2_pid"; fi
if [ "$feature_rows" = 1 ]; then stop "$kg4_pid"; fi
if [ "$redis_run" = 1 ]; then
  curl -s "http://127.0.0.1:$p_kg3_admin/metrics" | grep -E '^keygate_fleet_(decisions|redis_calls)_total' |
    sed 's/^/   /'
  # Redis's own cost, all rounds and warm-ups together: its CPU time and the script's time per call.
  redis_ticks=$(awk '{print $14 + $15}' "/proc/$redis_pid/stat")
  echo "   redis-server: $(awk -v t="$redis_ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t/hz}') s of CPU;" \
    "$(redis-cli -p "$p_redis" info commandstats | tr -d '\r' | grep -E '^cmdstat_evalsha' || echo 'no evalsha calls')"
  stop "$kg3_pid"
  stop "$redis_pid"
fi

stop "$upstream_pid"
echo
echo "== results ($cpus CPUs; wrk -t1 -d$duration per run; bare Pingora and keygate: median of" \
  "$rounds rounds; $n_keys keys)"
python3 scripts/bench/report.py "$results"
echo
echo "bench-load: done in $((SECONDS - started)) s"
