#!/usr/bin/env python3
"""Prints the secrets of a bench work directory's first N workspaces (run in that directory).

scripts/bench/gen_keys.py deals the keys round-robin over the workspaces, so key i belongs to
workspace i % workspaces. Loading only a few workspaces' keys keeps their limiter state hot in
cache (scripts/ab-load.sh), or keeps each workspace's request rate near the full benchmark's
when the load is slower (scripts/count-instructions.sh under callgrind).
"""
import json
import sys

first = int(sys.argv[1])
workspaces = len(json.load(open("keys.json"))["workspaces"])
for i, line in enumerate(open("secrets.txt")):
    if i % workspaces < first:
        print(line, end="")
