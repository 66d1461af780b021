#!/usr/bin/env bash
# Builds keygate and runs it on conf/keygate.yaml in front of a sample upstream, then shows a
# valid, an unknown and a wrong-scope request. `--once` stops everything after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
# Honour CARGO_TARGET_DIR, as cargo does.
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release/keygate"

python3 scripts/echo_upstream.py 9000 &
upstream=$!
access_log="$target_dir/quickstart-access.log"
"$bin" run -c conf/keygate.yaml > "$access_log" &
gate=$!
trap 'kill $gate $upstream 2>/dev/null || true' EXIT

# Ready when keygate answers its public route with the upstream's 200.
for _ in $(seq 100); do
  curl -sf -o /dev/null http://127.0.0.1:8080/health && break
  sleep 0.1
done
if ! curl -sf -o /dev/null http://127.0.0.1:8080/health; then
  echo "keygate (or the sample upstream) did not come up on 127.0.0.1:8080 / :9000; is a port taken?" >&2
  exit 1
fi

show() {
  echo
  printf '$ curl'; printf " %q" "$@"; echo
  curl -s -i "$@" | tr -d '\r'
  echo
}
show -H 'Authorization: Bearer sk_test_DEMOreaderKEYdoNOTuseINproduction01' http://127.0.0.1:8080/v1/products
show -H 'Authorization: Bearer sk_test_UNKNOWNkeyUNKNOWNkeyUNKNOWNkey00' http://127.0.0.1:8080/v1/products
show -X POST -H 'Authorization: Bearer sk_test_DEMOreaderKEYdoNOTuseINproduction01' http://127.0.0.1:8080/v1/products

sleep 0.2
echo
echo "keygate's access log (stdout, one JSON line per request; written to $access_log):"
tail -n 3 "$access_log"
echo
echo "\$ curl -s http://127.0.0.1:9901/metrics | grep keygate_requests_total   # the admin listener"
curl -s http://127.0.0.1:9901/metrics | grep '^keygate_requests_total' | grep -v ' 0$'

if [ "${1:-}" = "--once" ]; then
  exit 0
fi
echo
echo "keygate is listening on 127.0.0.1:8080 (upstream on 127.0.0.1:9000, admin on 127.0.0.1:9901)."
echo "Ctrl-C stops both."
wait $gate
