//! The shipped systemd unit, checked by systemd's own tools: it verifies (with the built binary
//! in place of the installed one), and its sandbox scores at most 2.0 on
//! `systemd-analyze security` (lower is better; systemd calls ≤ 2.0 "OK" and ≤ 1.0 "SAFE").

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
const UNIT: &str = include_str!("../systemd/keygate.service");

/// The unit with the test's binary and config in place of the installed ones.
fn unit_in(dir: &Path) -> std::path::PathBuf {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/keygate.yaml");
    let unit = UNIT
        .replace("/usr/local/bin/keygate", BIN)
        .replace("/etc/keygate/keygate.yaml", &config.display().to_string());
    let path = dir.join("keygate.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_unit_verifies_and_its_sandbox_scores_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_in(dir.path());
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (scripts/install-deps.sh --test installs systemd)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for keygate.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{report}"));
    assert!(score <= 2.0, "exposure {score}:\n{report}");
}
