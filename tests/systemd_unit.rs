//! The shipped systemd units (keygate's and the reference control plane's), checked by systemd's
//! own tools: each verifies (with the built binaries and files in place of the installed ones),
//! and each sandbox scores at most 2.0 on `systemd-analyze security` (lower is better; systemd
//! calls ≤ 2.0 "OK" and ≤ 1.0 "SAFE").

use keygate_test_support::systemd::verify_and_score;
use std::path::Path;

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
