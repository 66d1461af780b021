//! The shipped systemd units, checked with systemd's own tools (`systemd-analyze`).

use std::path::Path;
use std::process::Command;

/// Asserts that `unit` verifies without a word from `systemd-analyze verify`, and that its
/// sandbox scores at most 2.0 on `systemd-analyze security --offline=true` (lower is better;
/// systemd calls ≤ 2.0 "OK" and ≤ 1.0 "SAFE"). Returns the score.
pub fn verify_and_score(unit: &Path) -> f64 {
    let name = unit.file_name().unwrap().to_str().unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (scripts/install-deps.sh --test installs systemd)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split(&format!("Overall exposure level for {name}: "))
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{report}"));
    assert!(score <= 2.0, "{name}: exposure {score}:\n{report}");
    score
}
