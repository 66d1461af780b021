//! The Debian packages: built by `scripts/package.sh` from this build's release binaries,
//! installed on this machine with `dpkg -i` (as root, or through `sudo -n`), checked as an
//! operator would use them, reinstalled over an edited config, and purged. This test installs
//! and removes the `keygate` and `keygate-control-plane` packages of the machine it runs on.

use keygate_test_support::http;
use keygate_test_support::systemd::verify_and_score;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// `program` run as root: directly when this is root, else through `sudo -n`.
fn as_root(program: &str) -> Command {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", program]);
        sudo
    }
}

fn ok(mut command: Command) -> String {
    let out: Output = command.output().expect("command runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// The target directory this build's binaries are in (`…/release/keygate`).
fn target_dir() -> PathBuf {
    Path::new(BIN)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The two packages, built from the binaries the test suite runs.
fn build_packages() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut package = Command::new(root.join("scripts/package.sh"));
    package
        .arg("--no-build")
        .env("CARGO_TARGET_DIR", target_dir());
    ok(package);
    let debs = target_dir().join("debian");
    let find = |prefix: &str| {
        std::fs::read_dir(&debs)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(prefix) && name.ends_with(".deb")
            })
            .unwrap_or_else(|| panic!("no {prefix}*.deb in {}", debs.display()))
    };
    (find("keygate_"), find("keygate-control-plane_"))
}

fn mode_owner(path: &str) -> String {
    let out = as_root("stat")
        .args(["-c", "%a %U %G"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_packages_install_run_keep_an_edited_config_and_purge() {
    let (keygate_deb, control_plane_deb) = build_packages();
    let mut install = as_root("dpkg");
    install.arg("-i").arg(&keygate_deb).arg(&control_plane_deb);
    ok(install);

    // What dpkg knows: the two config files are conffiles.
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f", "${Conffiles}", "keygate"]);
    let conffiles = ok(query);
    for file in ["/etc/keygate/keygate.yaml", "/etc/keygate/keys.yaml"] {
        assert!(
            conffiles.contains(file),
            "{file} not a conffile: {conffiles}"
        );
    }

    // The user, its state directory, and who may read the keys file.
    let mut user = Command::new("getent");
    user.args(["passwd", "keygate"]);
    assert!(ok(user).contains("/usr/sbin/nologin"));
    assert_eq!(mode_owner("/var/lib/keygate"), "700 keygate keygate");
    assert_eq!(mode_owner("/etc/keygate/keys.yaml"), "640 root keygate");

    // The installed binary is stripped and checks the installed config: no key at first (the
    // quickstart's published demo keys are not shipped).
    let mut sections = Command::new("readelf");
    sections.args(["-S", "/usr/bin/keygate"]);
    let sections = ok(sections);
    assert!(
        !sections.contains(".debug_line") && !sections.contains(".debug_info"),
        "not stripped: {sections}"
    );
    let mut check = Command::new("/usr/bin/keygate");
    check.args(["check", "-c", "/etc/keygate/keygate.yaml"]);
    assert!(ok(check).contains("0 keys"));

    // The units verify and score, with the installed paths.
    for unit in ["keygate.service", "keygate-control-plane.service"] {
        let path = Path::new("/lib/systemd/system").join(unit);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("/usr/bin/")
        );
        verify_and_score(&path);
    }

    // keygate runs as its user on the installed files (a TLS key or keys file it could not read
    // would stop it here), and serves: ready, and a 401 for the demo key.
    let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let mut run = as_root("runuser");
    run.args(["-u", "keygate", "--", "/usr/bin/keygate", "run", "-c"])
        .arg("/etc/keygate/keygate.yaml");
    let mut keygate = run
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Both listeners: the admin one may be up a moment before the proxy's.
    let proxy: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let listening = http::wait_for_port(admin, Duration::from_secs(10))
        && http::wait_for_port(proxy, Duration::from_secs(10));
    let served = listening.then(|| {
        let ready = http::get(admin, "/readyz", &[]).status;
        let demo = http::get(
            proxy,
            "/v1/me",
            &[(
                "Authorization",
                "Bearer sk_test_DEMOreaderKEYdoNOTuseINproduction01",
            )],
        )
        .status;
        (ready, demo)
    });
    let mut stop = as_root("pkill");
    stop.args(["-TERM", "-u", "keygate", "-x", "keygate"]);
    let _ = stop.output();
    let _ = keygate.wait();
    assert_eq!(served, Some((200, 401)));

    // The control plane's tokens: made once, root's alone, two different ones.
    assert_eq!(
        mode_owner("/etc/keygate-control-plane/env"),
        "600 root root"
    );
    let mut cat = as_root("cat");
    cat.arg("/etc/keygate-control-plane/env");
    let env = ok(cat);
    let tokens: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v))
        .collect();
    assert_eq!(tokens.len(), 2, "{} lines", env.lines().count());
    assert!(
        tokens
            .iter()
            .all(|t| t.len() == 48 && t.bytes().all(|b| b.is_ascii_hexdigit()))
    );
    assert_ne!(tokens[0], tokens[1]);

    // Reinstalled (an upgrade) over an edited config: the edit and the tokens are kept.
    let mut edit = as_root("sh");
    edit.args([
        "-c",
        "echo '# edited by the operator' >> /etc/keygate/keygate.yaml",
    ]);
    ok(edit);
    let mut reinstall = as_root("dpkg");
    reinstall
        .args(["-i", "--force-confold"])
        .arg(&keygate_deb)
        .arg(&control_plane_deb);
    ok(reinstall);
    let config = std::fs::read_to_string("/etc/keygate/keygate.yaml").unwrap();
    assert!(config.ends_with("# edited by the operator\n"));
    let mut cat = as_root("cat");
    cat.arg("/etc/keygate-control-plane/env");
    // Compared, never printed: they are secrets.
    assert!(
        ok(cat) == env,
        "the control plane's tokens changed on reinstall"
    );

    // Purged: nothing of either is left but the user.
    let mut purge = as_root("dpkg");
    purge.args(["--purge", "keygate", "keygate-control-plane"]);
    ok(purge);
    for path in [
        "/usr/bin/keygate",
        "/usr/bin/keygate-control-plane",
        "/etc/keygate",
        "/etc/keygate-control-plane",
        "/var/lib/keygate",
        "/lib/systemd/system/keygate.service",
    ] {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
}
