#!/usr/bin/env python3
"""Writes a keys file for scripts/bench-load.sh, and the secrets its hashes stand for.

    gen_keys.py KEYS_JSON SECRETS_TXT [KEYS] [WORKSPACES]

KEYS (default 10,000) live keys spread round-robin over WORKSPACES (default 1,000) live
workspaces, each key `sk_live_` + 40 random letters and digits, stored as its SHA-256 hex. Every
key's scopes grant `products:read`, in one of several spellings (plain, wildcards, a list) so
that scope matching does real work. The secrets go one a line to SECRETS_TXT (mode 0600), in
key order, for wrk's Lua script. The keys file is JSON: keygate reads it as such by its name.
"""

import hashlib
import json
import os
import secrets
import string
import sys

ALPHABET = string.ascii_letters + string.digits
SCOPES = [
    ["products:read"],
    ["products:*"],
    ["*:read"],
    ["bookings:read", "products:read", "products:write"],
]


def main() -> None:
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__)
    keys_path, secrets_path = sys.argv[1], sys.argv[2]
    n_keys = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    n_workspaces = int(sys.argv[4]) if len(sys.argv) > 4 else 1_000
    workspaces = [{"id": f"ws_bench_{w:04}", "type": "live"} for w in range(n_workspaces)]
    keys, lines = [], []
    for i in range(n_keys):
        secret = "sk_live_" + "".join(secrets.choice(ALPHABET) for _ in range(40))
        lines.append(secret)
        keys.append(
            {
                "id": f"key_bench_{i:05}",
                "hash": hashlib.sha256(secret.encode()).hexdigest(),
                "workspace": workspaces[i % n_workspaces]["id"],
                "scopes": SCOPES[i % len(SCOPES)],
            }
        )
    with open(keys_path, "w") as f:
        json.dump({"version": 1, "workspaces": workspaces, "keys": keys}, f)
    fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
