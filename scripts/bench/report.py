#!/usr/bin/env python3
"""Prints the table and the ratios of scripts/bench-load.sh from its results file.

    report.py RESULTS_TSV

Each line of RESULTS_TSV is one run (a target may have several), tab-separated: NAME LABEL
REQUESTS_PER_SEC P50_MS P99_MS REQUESTS SERVER_CPU_US UPSTREAM_CPU_US WRK_CPU_US OTHER_CPU_PCT
(CPU per request; the last in percent of one CPU). NAME is TARGET@CONNECTIONS; a table and
its ratios are printed per CONNECTIONS. TARGETs compared: nginx, nginx_proxy, bare, keygate (as
shipped), keygate_nolog, keygate_minimal, keygate_redis, bare_tls, keygate_tls (any may be
missing).
"""

import statistics
import sys

OTHER_LOAD_WARNING_PCT = 10


def main() -> None:
    # Runs by concurrency, then by target: NAME is `target@connections`.
    runs = {}
    with open(sys.argv[1]) as f:
        for line in f:
            name, label, *numbers = line.rstrip("\n").split("\t")
            target, _, connections = name.partition("@")
            rps, p50, p99, requests, cpu, cpu_up, cpu_wrk, other = map(float, numbers)
            runs.setdefault(connections, {}).setdefault(target, []).append(dict(
                label=label, rps=rps, p50=p50, p99=p99, requests=requests, cpu=cpu,
                cpu_up=cpu_up, cpu_wrk=cpu_wrk, other=other))
    busy = []
    for connections, targets in runs.items():
        busy += report(connections, targets)
    if busy:
        print(f"\nWARNING: other processes used more than {OTHER_LOAD_WARNING_PCT}% of a CPU"
              f" during: {', '.join(busy)}. The machine was not idle; compare with care.")


def report(connections: str, runs: dict) -> list:
    """Prints one concurrency's table and ratios; returns the labels of busy runs."""
    # A target measured in several rounds is summarised by the median of each figure.
    rows = {}
    for name, rs in runs.items():
        row = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "label"}
        row.update(label=rs[0]["label"], rounds=len(rs), requests=int(row["requests"]),
                   other=max(r["other"] for r in rs))
        rows[name] = row

    print(f"\n-- wrk -c{connections}")
    print(f"{'target':<36} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'requests':>9}"
          f" {'server CPU us/req':>18} {'other load':>10} {'runs':>5}")
    for r in rows.values():
        print(f"{r['label']:<36} {r['rps']:>7.0f} {r['p50']:>7.3f} {r['p99']:>7.3f}"
              f" {r['requests']:>9} {r['cpu']:>18.1f} {r['other']:>9.0f}% {r['rounds']:>5}")

    def ratio(a: str, b: str, what: str, cpu: bool = True) -> None:
        if a not in rows or b not in rows:
            return
        x, y = rows[a], rows[b]
        text = (f"{what:<40} throughput x{x['rps'] / y['rps']:.3f}"
                f" ({100 * (x['rps'] / y['rps'] - 1):+.1f}%),"
                f" p50 x{x['p50'] / y['p50']:.2f}, p99 x{x['p99'] / y['p99']:.2f}")
        if cpu:
            text += (f", server CPU per request x{x['cpu'] / y['cpu']:.2f}"
                     f" ({x['cpu'] - y['cpu']:+.1f} us)")
        print(text)
        # Measured in the same rounds: the median of each round's own ratio as well. A drift in
        # the machine's speed from one round to the next reaches both runs of a round alike,
        # so this is the steadier figure when the rounds spread widely.
        xs, ys = runs[a], runs[b]
        if len(xs) == len(ys) > 1:
            tput = sorted(p["rps"] / q["rps"] for p, q in zip(xs, ys))
            p99 = [p["p99"] / q["p99"] for p, q in zip(xs, ys)]
            print(f"{'':<40} round by round: throughput x{statistics.median(tput):.3f}"
                  f" (x{tput[0]:.3f} to x{tput[-1]:.3f}), p99 x{statistics.median(p99):.2f}")

    print()
    ratio("keygate", "bare", "keygate as shipped / bare Pingora:")
    ratio("keygate_nolog", "bare", "keygate, access log off / bare:")
    ratio("keygate_minimal", "bare", "keygate, log off, no headers / bare:")
    ratio("keygate", "keygate_nolog", "access log on / off:")
    ratio("keygate_nolog", "keygate_minimal", "rate-limit headers on / off:")
    ratio("keygate_redis", "keygate_nolog", "fleet limits (Redis) / local:")
    ratio("keygate_tls", "bare_tls", "over TLS: keygate as shipped / bare:")
    ratio("bare_tls", "bare", "bare Pingora, TLS / plain:")
    ratio("bare", "nginx_proxy", "bare Pingora / nginx proxy:")
    ratio("keygate", "nginx_proxy", "keygate as shipped / nginx proxy:")
    return [f"{r['label']} (-c{connections})" for r in rows.values()
            if r["other"] > OTHER_LOAD_WARNING_PCT]


if __name__ == "__main__":
    main()
