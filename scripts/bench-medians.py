#!/usr/bin/env python3
"""Prints the median (and mean) of every criterion benchmark under target/criterion, from the
last `cargo bench` run: criterion prints mean estimates; docs/performance.md quotes medians."""
import glob
import json
import os

root = os.path.join(os.path.dirname(__file__), "..", "target", "criterion")
for path in sorted(glob.glob(os.path.join(root, "**", "new", "estimates.json"), recursive=True)):
    with open(path) as f:
        d = json.load(f)
    name = os.path.relpath(os.path.dirname(os.path.dirname(path)), root)
    print(f"{d['median']['point_estimate']:10.1f} ns median  {d['mean']['point_estimate']:10.1f} ns mean  {name}")
