#!/usr/bin/env bash
# Builds the Debian packages of keygate and of the reference control plane with cargo-deb:
# target/debian/keygate_<version>-1_<arch>.deb and keygate-control-plane_<version>-1_<arch>.deb.
# What goes in them is in each crate's [package.metadata.deb]; the files made here are the
# shipped ones with the installed paths:
# - keygate.yaml: conf/keygate.yaml with its keys in /etc/keygate/keys.yaml (empty at first),
#   not the quickstart's published demo keys;
# - the systemd units, with the binaries in /usr/bin.
# `--no-build` packages the release binaries already built (the test suite does that).
set -euo pipefail
cd "$(dirname "$0")/.."
build=true
[ "${1:-}" = "--no-build" ] && build=false
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version '^3'
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if $build; then
  cargo build --release --locked -p keygate -p keygate-control-plane
fi
staging="$target/release/package"
mkdir -p "$staging"
sed 's|^  file: keys.example.yaml .*$|  file: keys.yaml                 # /etc/keygate/keys.yaml; edits are picked up live|' \
  conf/keygate.yaml > "$staging/keygate.yaml"
grep -q '^  file: keys.yaml ' "$staging/keygate.yaml" ||
  { echo "package.sh: conf/keygate.yaml no longer names keys.example.yaml as expected" >&2; exit 1; }
cat > "$staging/keys.yaml" <<'KEYS'
# keygate's keys file: no key yet, so every request that needs one gets 401.
# Schema: /usr/share/doc/keygate/snapshot.md. Make entries with `keygate keys new`, or sync
# from a control plane instead (snapshot.control_plane in keygate.yaml).
version: 1
workspaces: []
keys: []
KEYS
for unit in keygate.service keygate-control-plane.service; do
  sed 's|/usr/local/bin/|/usr/bin/|g' "systemd/$unit" > "$staging/$unit"
done
cargo deb --locked --no-build --strip -p keygate
cargo deb --locked --no-build --strip -p keygate-control-plane
