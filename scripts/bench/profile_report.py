#!/usr/bin/env python3
"""Per-request figures for scripts/profile-vs-bare.sh (the bare proxy's and keygate's) and
scripts/ab-load.sh (two keygates').

  profile_report.py syscalls STRACE_BARE REQUESTS STRACE_KEYGATE REQUESTS
  profile_report.py samples PERF_DATA_BARE REQUESTS PERF_DATA_KEYGATE REQUESTS [NAME NAME]

`strace -c` summaries give calls per request; `perf record -e cpu-clock -F 2000` data give
sampled CPU per request (a sample is 500 us), summed by kind of code, then the functions whose
cost differs most. NAME NAME label the two columns (bare, keygate).
"""
import re
import subprocess
import sys

SAMPLE_US = 500.0  # perf record -F 2000

# Kinds of code, by symbol, first match wins. "headers" is the http crate's header maps and
# Pingora's header API, which every header keygate adds or removes goes through.
KINDS = [
    ("headers", r"^http::header|pingora_http|HeaderName|header_value|StandardHeader|parse_hdr"),
    ("allocator", r"mi_|malloc|free|__rust_alloc|__rust_dealloc|realloc|no_alloc_shim"),
    ("keygate", r"keygate"),
    ("bytes", r"^bytes::"),
    ("tokio, mio", r"tokio|mio"),
    ("pingora", r"pingora"),
    ("prometheus", r"prometheus"),
    ("memcpy and the like", r"memmove|memcmp|memcpy|memchr|memset"),
    ("sha2", r"sha2|sha256"),
    ("fmt", r"core::fmt|fmt::"),
]


def kind(space, symbol):
    if space == "k":
        return "kernel"
    for name, pattern in KINDS:
        if re.search(pattern, symbol):
            return name
    return "other"


def syscalls(path):
    calls = {}
    for line in open(path):
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def samples(path):
    """Samples by (space, symbol) from `perf report`'s listing of a perf.data file."""
    listing = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "-g", "none", "--sort", "dso,sym",
         "--stdio", "-F", "overhead,sample,dso,sym"],
        capture_output=True, text=True, check=True).stdout
    counts = {}
    pattern = re.compile(r"\s*[\d.]+%\s+(\d+)\s+\S+\s+\[(.)\]\s+(.*)")
    for line in listing.splitlines():
        m = pattern.match(line)
        if m:
            key = (m.group(2), m.group(3).strip())
            counts[key] = counts.get(key, 0) + int(m.group(1))
    return counts


def main():
    mode, bare_path, bare_n, kg_path, kg_n = sys.argv[1:6]
    bare_n, kg_n = int(bare_n), int(kg_n)
    name_b, name_k = sys.argv[6:8] if len(sys.argv) >= 8 else ("bare", "keygate")
    if mode == "syscalls":
        bare, kg = syscalls(bare_path), syscalls(kg_path)
        print(f"{'system call':<20} {'bare':>8} {'keygate':>8}   ({bare_n} and {kg_n} requests)")
        for name in sorted(set(bare) | set(kg), key=lambda n: -kg.get(n, 0)):
            b, k = bare.get(name, 0) / bare_n, kg.get(name, 0) / kg_n
            if b >= 0.005 or k >= 0.005:
                print(f"{name:<20} {b:8.3f} {k:8.3f}")
        print(f"{'all':<20} {sum(bare.values()) / bare_n:8.3f} {sum(kg.values()) / kg_n:8.3f}")
        return
    # Sampled CPU per request, in us, by function.
    bare = {key: n * SAMPLE_US / bare_n for key, n in samples(bare_path).items()}
    kg = {key: n * SAMPLE_US / kg_n for key, n in samples(kg_path).items()}
    kinds = {}
    for table, column in ((bare, 0), (kg, 1)):
        for key, us in table.items():
            kinds.setdefault(kind(*key), [0.0, 0.0])[column] += us
    print(f"{'code':<22} {name_b + ' us':>8} {name_k + ' us':>10} {'difference':>10}")
    for name, (b, k) in sorted(kinds.items(), key=lambda item: item[1][0] - item[1][1]):
        print(f"{name:<22} {b:8.1f} {k:10.1f} {k - b:+10.1f}")
    total_b, total_k = sum(bare.values()), sum(kg.values())
    print(f"{'all':<22} {total_b:8.1f} {total_k:10.1f} {total_k - total_b:+10.1f}")
    print(f"\nfunctions that differ most ({name_k} - {name_b}, us per request):")
    rows = sorted(((kg.get(key, 0) - bare.get(key, 0), key) for key in set(bare) | set(kg)),
                  reverse=True)
    for diff, (space, symbol) in rows[:25]:
        print(f"  {diff:+6.2f}  [{space}] {symbol[:110]}")

if __name__ == "__main__":
    main()
