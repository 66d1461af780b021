#!/usr/bin/env bash
# Checks the units' system-call filter against what the binaries really call. keygate runs on
# conf/keygate.yaml under strace while it serves allowed, refused and public requests, reloads
# its keys file, answers the admin endpoints, notifies systemd, reloads itself on SIGHUP (a new
# process taking over the sockets), serves again and stops on SIGTERM; the
# reference control plane while it creates a workspace and keys, serves snapshots and a
# long-poll, rotates and revokes a key, and stops. Then it lists every system call made that
# the units' SystemCallFilter= (both the same) would refuse.
# Needs strace and systemd-analyze. Exit status 1 when one would be refused.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release/keygate"
cp_bin="$target_dir/release/keygate-control-plane"
[ -x "$bin" ] && [ -x "$cp_bin" ] || cargo build --release --locked
work=$(mktemp -d)
upstream= gate= cp=
trap 'kill $upstream $gate $cp 2>/dev/null || true; rm -rf "$work"' EXIT

cp conf/keygate.yaml conf/keys.example.yaml "$work/"
python3 scripts/echo_upstream.py 9000 &
upstream=$!
python3 - "$work/notify.sock" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    s.recv(4096)
PY
listener=$!
sleep 0.3
NOTIFY_SOCKET="$work/notify.sock" WATCHDOG_USEC=200000 \
  strace -f -qq -o "$work/strace" -e trace=all "$bin" run -c "$work/keygate.yaml" >"$work/access.log" 2>"$work/keygate.log" &
gate=$!
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:8080/health && break; sleep 0.1; done
good='Authorization: Bearer sk_test_DEMOreaderKEYdoNOTuseINproduction01'
for _ in $(seq 50); do
  curl -s -o /dev/null -H "$good" http://127.0.0.1:8080/v1/products
  curl -s -o /dev/null -H 'Authorization: Bearer sk_test_UNKNOWNkeyUNKNOWNkeyUNKNOWNkey00' http://127.0.0.1:8080/v1/products
  curl -s -o /dev/null -X POST -H "$good" http://127.0.0.1:8080/v1/products
done
curl -s -o /dev/null http://127.0.0.1:9901/metrics
curl -s -o /dev/null http://127.0.0.1:9901/status
cp "$work/keys.example.yaml" "$work/keys.new" && mv "$work/keys.new" "$work/keys.example.yaml"
sleep 2
# A reload: the old process starts the new one (traced too: strace -f), hands the sockets over
# and exits; the new one serves.
old=$(pgrep -P $gate keygate)
kill -HUP "$old"
for _ in $(seq 200); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
new=$(pgrep -f "keygate run --upgrade -c $work/keygate.yaml")
for _ in $(seq 10); do
  curl -s -o /dev/null -H "$good" http://127.0.0.1:8080/v1/products
done
kill -TERM "$new" 2>/dev/null || kill -TERM $gate
wait $gate || true
kill $listener 2>/dev/null || true

cat >"$work/check.py" <<'PY'
import re, subprocess, sys
used = set()
for line in open(sys.argv[1]):
    m = re.match(r'^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]', line)
    if m and not line.split()[1].startswith('+++') and not line.split()[1].startswith('---'):
        used.add(m.group(1))
groups, current = {}, None
for line in subprocess.run(['systemd-analyze', 'syscall-filter'], capture_output=True, text=True).stdout.splitlines():
    if line.startswith('@'):
        current = groups.setdefault(line.strip(), set())
    elif current is not None and line.strip() and not line.strip().startswith('#'):
        current.add(line.strip())
def expand(name, seen=()):
    out = set()
    for item in groups.get(name, ()):
        out |= expand(item, seen + (name,)) if item.startswith('@') else {item}
    return out
allowed = expand('@system-service') - expand('@privileged') - expand('@resources')
refused = sorted(s for s in used if s not in allowed and s not in ('exit', 'exit_group', 'execve'))
print(f"{sys.argv[2]}: {len(used)} distinct system calls made: {' '.join(sorted(used))}")
print(f"refused by the unit's filter: {refused or 'none'}")
sys.exit(1 if refused else 0)
PY
status=0
python3 "$work/check.py" "$work/strace" keygate || status=1

# The reference control plane.
export KEYGATE_CP_ADMIN_TOKEN=syscalls-admin-token-0001 KEYGATE_CP_SYNC_TOKEN=syscalls-sync-token-00001
# As an unprivileged user, as the unit's DynamicUser runs it: SQLite calls fchown (refused by
# the filter, and harmless) only when it runs as root.
chmod 0777 "$work"
setpriv --reuid=65534 --regid=65534 --clear-groups \
  strace -f -qq -o "$work/strace-cp" -e trace=all \
  "$cp_bin" --db "$work/cp.sqlite" --listen 127.0.0.1:17070 2>"$work/cp.log" &
cp=$!
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:17070/healthz && break; sleep 0.1; done
admin=(-s -o /dev/null -H "Authorization: Bearer $KEYGATE_CP_ADMIN_TOKEN")
curl "${admin[@]}" -d '{"id":"ws","type":"live"}' http://127.0.0.1:17070/v1/workspaces
key=$(curl -s -H "Authorization: Bearer $KEYGATE_CP_ADMIN_TOKEN" -d '{"workspace":"ws","template":"read-only"}' \
  http://127.0.0.1:17070/v1/api-keys | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])')
curl -s -o /dev/null -H "Authorization: Bearer $KEYGATE_CP_SYNC_TOKEN" 'http://127.0.0.1:17070/v1/snapshot'
curl -s -o /dev/null -H "Authorization: Bearer $KEYGATE_CP_SYNC_TOKEN" 'http://127.0.0.1:17070/v1/snapshot?since=2&wait=1s'
curl "${admin[@]}" -d '{"expires_in_seconds":60}' "http://127.0.0.1:17070/v1/api-keys/$key/rotate"
curl "${admin[@]}" -X DELETE "http://127.0.0.1:17070/v1/api-keys/$key"
curl "${admin[@]}" http://127.0.0.1:17070/v1/api-keys
kill -TERM "$(pgrep -f -n "^$cp_bin" || echo $cp)"
wait $cp || true
python3 "$work/check.py" "$work/strace-cp" keygate-control-plane || status=1
exit $status
