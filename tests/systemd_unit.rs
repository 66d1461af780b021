//! The shipped systemd units (keygate's and the reference control plane's), checked by systemd's
//! own tools: each verifies (with the built binaries and files in place of the installed ones),
//! and each sandbox scores at most 2.0 on `systemd-analyze security` (lower is better; systemd
//! calls ≤ 2.0 "OK" and ≤ 1.0 "SAFE").

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// `name` from `systemd/`, written into `dir` with each `(installed, here)` path replaced.
fn unit_in(dir: &Path, name: &str, paths: &[(&str, String)]) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    let mut unit = std::fs::read_to_string(shipped).unwrap();
    for (installed, here) in paths {
        unit = unit.replace(installed, here);
    }
    let path = dir.join(name);
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn keygates_unit_verifies_and_its_sandbox_scores_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/keygate.yaml");
    let unit = unit_in(
        dir.path(),
        "keygate.service",
        &[
            ("/usr/local/bin/keygate", BIN.to_owned()),
            ("/etc/keygate/keygate.yaml", config.display().to_string()),
        ],
    );
    verify_and_score(&unit);
}

#[test]
fn the_control_planes_unit_verifies_and_its_sandbox_scores_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let binary = keygate_test_support::cp::sibling_binary(BIN);
    let env = dir.path().join("env");
    std::fs::write(&env, "KEYGATE_CP_ADMIN_TOKEN=x\n").unwrap();
    let unit = unit_in(
        dir.path(),
        "keygate-control-plane.service",
        &[
            (
                "/usr/local/bin/keygate-control-plane",
                binary.display().to_string(),
            ),
            ("/etc/keygate-control-plane/env", env.display().to_string()),
        ],
    );
    verify_and_score(&unit);
}

fn verify_and_score(unit: &Path) {
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
}
