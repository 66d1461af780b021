//! Shared by the benches that report memory (not a bench target itself: Cargo only takes
//! `benches/*.rs` and `benches/*/main.rs`).

/// The process's peak resident set so far, in bytes (`VmHWM`; 0 where /proc is missing).
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
