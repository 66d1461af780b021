#!/usr/bin/env python3
"""Reads the output of `wrk --latency` on stdin and prints one line for the shell:

    REQUESTS_PER_SEC P50_MS P99_MS REQUESTS NON_2XX_3XX SOCKET_ERRORS

Exits 1 when the output lacks what is needed (wrk failed, or ran without --latency).
"""

import re
import sys

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def latency_ms(text: str, percentile: str) -> float:
    m = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    if not m:
        raise ValueError(f"no {percentile}% line (was wrk run with --latency?)")
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def main() -> None:
    text = sys.stdin.read()
    try:
        rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
        total = re.search(r"^\s*(\d+) requests in ", text, re.M)
        if not rps or not total:
            raise ValueError("no Requests/sec or request count")
        p50, p99 = latency_ms(text, "50"), latency_ms(text, "99")
    except ValueError as e:
        sys.stderr.write(f"wrk_summary: {e}; wrk said:\n{text}")
        sys.exit(1)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    print(
        f"{float(rps.group(1)):.0f} {p50:.3f} {p99:.3f} {total.group(1)}"
        f" {non2xx.group(1) if non2xx else 0} {sum(map(int, sock.groups())) if sock else 0}"
    )


if __name__ == "__main__":
    main()
