//! Reloads and a binary upgrade (SIGHUP) under steady load, counted: no failed request and no
//! reset connection. A refused config changes nothing. Through the real binary, with clients on
//! kept-alive and on fresh connections.

mod common;

use common::http::{Connection, Echo, Request};
use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const KEY: &str = "sk_live_UPGRADEKEY000000000000000000000001";

fn keys() -> Keys {
    Keys::new(1)
        .workspace("ws", WorkspaceKind::Live)
        .key("key_up", KEY, Some("ws"), Some(&["*"]))
}

/// What each test here starts from: an upstream, and a copy of this build's binary in a
/// directory of its own (beside the upgrade socket), which a test may replace as a package
/// upgrade does. `marker` makes the copy's bytes its own.
struct Upgradable {
    up: Echo,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Upgradable {
    fn new(marker: &str) -> Upgradable {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("keygate");
        install_binary(&binary, marker);
        Upgradable {
            up: Echo::start(),
            dir,
            binary,
        }
    }

    /// keygate from the copy, with a grace period long enough for in-flight requests.
    fn start(&self) -> Keygate {
        self.start_configured(|_| {})
    }

    /// As [`Upgradable::start`], with a TLS listener for `localhost` besides: keygate, the
    /// listener's address and the CA file that signs its certificate.
    fn start_with_tls(&self) -> (Keygate, std::net::SocketAddr, PathBuf) {
        let certs = self.dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let (ca, cert, key) = keygate_test_support::tls::make_ca_and_leaf(&certs, "DNS:localhost");
        let mut tls_addr = None;
        let kg = self.start_configured(|c| {
            tls_addr = Some(tls_listener(c, &cert, &key));
        });
        (kg, tls_addr.unwrap(), ca)
    }

    fn start_configured(&self, change: impl FnOnce(&mut ConfigFile)) -> Keygate {
        let sock = self.dir.path().join("upgrade.sock").display().to_string();
        Keygate::start(Setup {
            binary: Some(self.binary.clone()),
            ..Setup::new(&self.up, &keys()).config(|c| {
                c.server.upgrade_sock = Some(sock);
                c.server.grace_period_seconds = Some(5);
                change(c);
            })
        })
    }
}

/// A copy of this build's binary at `path`, as a package upgrade would put a new one there: a
/// new file renamed into place. `marker` makes each copy's bytes differ (ELF ignores a tail).
fn install_binary(path: &Path, marker: &str) {
    let mut bytes = std::fs::read(BIN).unwrap();
    bytes.extend_from_slice(marker.as_bytes());
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet waited for by its parent) is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// SIGHUP to `pid`; returns the process that took over once `pid` has exited.
fn reload(pid: u32) -> u32 {
    signal("-HUP", pid);
    let mut successor = None;
    let took = within(Duration::from_secs(30), || {
        successor = successor.or_else(|| children(pid).first().copied());
        successor.is_some() && !alive(pid)
    });
    assert!(
        took.is_some(),
        "keygate {pid} did not hand over (successor {successor:?})"
    );
    successor.unwrap()
}

fn signal(signal: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// Stops the process serving at the end of a test (not the harness's child after a reload).
struct Last(u32);

impl Drop for Last {
    fn drop(&mut self) {
        signal("-INT", self.0);
        within(Duration::from_secs(10), || !alive(self.0));
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Requests as fast as one client goes until `stop`: on one kept-alive connection at a time
/// (a new one when the server says `Connection: close`), or on a fresh connection each.
/// Any answer but 200, and any error on the connection, counts as a failure.
fn load(addr: std::net::SocketAddr, kept_alive: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let auth = bearer(KEY);
    let mut conn: Option<Connection> = None;
    let mut failures = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let req = Request::get("/v1/me").header("Authorization", &auth);
        let result = if kept_alive {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(Connection::open(addr).expect("connect")),
            };
            c.send(&req)
        } else {
            common::http::send(addr, &req)
        };
        match result {
            Ok(r) if r.status == 200 => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = None;
                }
            }
            other => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                failures.push(format!("{:?}", other.map(|r| r.status)));
                conn = None;
            }
        }
    }
    assert!(failures.is_empty(), "kept_alive={kept_alive}: {failures:?}");
}

#[test]
fn ten_reloads_and_a_binary_upgrade_under_load_fail_no_request() {
    let fx = Upgradable::new("first");
    let kg = fx.start();
    let mut last = Last(kg.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = [true, true, false]
        .into_iter()
        .map(|kept_alive| {
            let (stop, tally, addr) = (stop.clone(), tally.clone(), kg.addr);
            thread::spawn(move || load(addr, kept_alive, stop, tally))
        })
        .collect();
    let started = Instant::now();
    thread::sleep(Duration::from_millis(300));

    for _ in 0..10 {
        last.0 = reload(last.0);
    }
    // A package upgrade puts a new binary at the same path; the next reload runs it.
    install_binary(&fx.binary, "second");
    last.0 = reload(last.0);
    let running = std::fs::metadata(format!("/proc/{}/exe", last.0)).unwrap();
    let installed = std::fs::metadata(&fx.binary).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(running.ino(), installed.ino(), "the new binary runs");
    thread::sleep(Duration::from_millis(300));

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client saw failures");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!("{ok} requests in {elapsed:.1} s over 11 hand-overs, {failed} failed");
    assert_eq!(failed, 0);
    assert!(
        ok as f64 / elapsed >= 1_000.0,
        "{ok} requests in {elapsed:.1} s"
    );
    // The last process serves, and its successor chain left no process behind.
    assert!(alive(last.0));
    assert!(children(last.0).is_empty());
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);
}

#[test]
fn a_refused_config_leaves_the_running_keygate_serving() {
    let fx = Upgradable::new("only");
    let kg = fx.start();
    let _last = Last(kg.pid());
    let good = std::fs::read_to_string(kg.config_path()).unwrap();
    std::fs::write(
        kg.config_path(),
        format!("{good}\nlisten_everywhere: true\n"),
    )
    .unwrap();

    signal("-HUP", kg.pid());
    let said = within(Duration::from_secs(10), || {
        kg.log().contains("reload failed")
    });
    assert!(said.is_some(), "{}", kg.log());
    let log = kg.log();
    assert!(
        log.contains("listen_everywhere"),
        "the reason names the field: {log}"
    );
    assert!(alive(kg.pid()) && children(kg.pid()).is_empty());
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);

    // Fixed, the next reload goes through.
    std::fs::write(kg.config_path(), good).unwrap();
    let next = reload(kg.pid());
    let _last = Last(next);
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);
}

/// Under systemd: `RELOADING=1` from the old process, then `MAINPID=` of the new one with
/// `READY=1`, so that `systemctl reload` returns once the new process serves and systemd follows
/// it as the service's main process.
#[test]
fn systemd_hears_the_reload_and_the_new_main_process() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let up = Echo::start();
    let keys = keys();
    let binary = dir.path().join("keygate");
    install_binary(&binary, "notify");
    let sock = dir.path().join("upgrade.sock").display().to_string();
    let kg = Keygate::start(Setup {
        binary: Some(binary),
        env: vec![("NOTIFY_SOCKET", path.display().to_string())],
        ..Setup::new(&up, &keys).config(|c| c.server.upgrade_sock = Some(sock))
    });
    let mut last = Last(kg.pid());
    assert!(next().starts_with(&format!("MAINPID={}\nREADY=1\n", kg.pid())));
    signal("-HUP", kg.pid());
    assert_eq!(next(), "RELOADING=1");
    // The main process names its successor, which then says it is ready.
    let named = next();
    let successor = children(kg.pid());
    assert_eq!(successor.len(), 1, "{successor:?}");
    last.0 = successor[0];
    assert_eq!(named, format!("MAINPID={}", successor[0]));
    let ready = next();
    assert!(
        ready.starts_with(&format!("MAINPID={}\nREADY=1\n", successor[0])),
        "{ready}"
    );
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);
}

/// A second reload right after the first (systemd already names the new process the main one
/// while it still starts): the new process must not die of the SIGHUP, and carries it out once
/// it serves.
#[test]
fn a_reload_sent_to_the_starting_new_process_is_carried_out_after_it() {
    let fx = Upgradable::new("twice");
    let kg = fx.start();
    let mut last = Last(kg.pid());
    let sock = fx.dir.path().join("upgrade.sock");
    let _ = std::fs::remove_file(&sock);

    signal("-HUP", kg.pid());
    // The moment the old process says MAINPID= of the new one: its upgrade socket is there.
    let mut successor = None;
    let ready = within(Duration::from_secs(30), || {
        successor = children(kg.pid()).first().copied();
        successor.is_some() && sock.exists()
    });
    assert!(ready.is_some(), "no new process waiting for the sockets");
    let successor = successor.unwrap();
    signal("-HUP", successor);
    last.0 = successor;

    // The first hand-over completes, and the new process then reloads in its turn.
    let third = reload_done(kg.pid(), successor);
    last.0 = third;
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);
}

/// Waits for `old` to exit and `successor` to have handed over to a process of its own.
fn reload_done(old: u32, successor: u32) -> u32 {
    let mut third = None;
    let done = within(Duration::from_secs(40), || {
        third = third.or_else(|| children(successor).first().copied());
        !alive(old) && third.is_some() && !alive(successor)
    });
    assert!(
        done.is_some(),
        "old alive {}, successor alive {}, its successor {third:?}",
        alive(old),
        alive(successor)
    );
    third.unwrap()
}

/// Starts a reload of `kg`, opens 40 connections (`open`) while both processes accept, waits
/// until the old process has begun to stop, then sends each its request (`send`): the answers.
fn late_in_the_hand_over<C>(
    kg: &Keygate,
    last: &mut Last,
    open: impl Fn() -> C,
    send: impl Fn(&mut C) -> String,
) -> Vec<String> {
    signal("-HUP", kg.pid());
    let waiting = within(Duration::from_secs(30), || {
        kg.log().contains("the new keygate is taking over")
    });
    assert!(waiting.is_some(), "{}", kg.log());
    last.0 = children(kg.pid())[0];
    // Both processes accept now; some of these land on the old one.
    thread::sleep(Duration::from_millis(500));
    let mut silent: Vec<C> = (0..40).map(|_| open()).collect();
    let stopping = within(Duration::from_secs(15), || {
        kg.log().contains("Graceful shutdown started")
    });
    assert!(stopping.is_some(), "{}", kg.log());
    thread::sleep(Duration::from_millis(300));
    silent.iter_mut().map(send).collect()
}

/// Clients that connected during the hand-over but send their request only once the old
/// process has begun to stop: Pingora would drop each connection the old process accepted
/// whose request had not arrived, and keygate holds them until it has (`Bounded::process_new`).
#[test]
fn a_connection_whose_request_comes_late_in_the_hand_over_is_answered() {
    let fx = Upgradable::new("late");
    let kg = fx.start();
    let mut last = Last(kg.pid());
    let auth = bearer(KEY);
    let answers = late_in_the_hand_over(
        &kg,
        &mut last,
        || Connection::open(kg.addr).unwrap(),
        |c| match c.send(&Request::get("/v1/me").header("Authorization", &auth)) {
            Ok(r) => r.status.to_string(),
            Err(e) => e.to_string(),
        },
    );
    assert!(answers.iter().all(|a| a == "200"), "{answers:?}");
}

/// The same over TLS, where the first bytes cannot be peeked: clients that finished their
/// handshake with the old process during the hand-over, and send their request only once it
/// has begun to stop, are answered (keygate reads their first bytes ahead and keeps them).
#[test]
fn a_tls_connection_whose_request_comes_late_in_the_hand_over_is_answered() {
    let fx = Upgradable::new("late-tls");
    let (kg, tls_addr, ca) = fx.start_with_tls();
    let mut last = Last(kg.pid());
    let request = format!(
        "GET /v1/me HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        bearer(KEY)
    );
    let answers = late_in_the_hand_over(
        &kg,
        &mut last,
        || keygate_test_support::tls::TlsClient::connect(tls_addr, &ca, "localhost").unwrap(),
        |c| match c.exchange(request.as_bytes()) {
            Ok(raw) => String::from_utf8_lossy(&raw[..raw.len().min(12)]).into_owned(),
            Err(e) => e.to_string(),
        },
    );
    assert!(answers.iter().all(|a| a == "HTTP/1.1 200"), "{answers:?}");
}

/// curl over TLS until `stop`, `batch` requests per run on one connection (kept alive, or
/// replaced when the server closes it or says GOAWAY): the status of each request, and
/// whether each curl run ended well.
fn curl_tls(
    addr: std::net::SocketAddr,
    ca: &Path,
    protocol: &'static str,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let urls = dir.path().join("urls");
    let entry = format!(
        "url = \"https://localhost:{}/v1/me\"\noutput = /dev/null\n",
        addr.port()
    );
    std::fs::write(&urls, entry.repeat(200)).unwrap();
    let (mut codes, mut errors) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let out = std::process::Command::new("curl")
            .args(["-sS", protocol, "--max-time", "30", "--cacert"])
            .arg(ca)
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
            .args(["-H", &format!("Authorization: {}", bearer(KEY))])
            .args(["-w", "%{http_code}\n", "-K"])
            .arg(&urls)
            .output()
            .unwrap();
        codes.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
        if !out.status.success() {
            errors.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    (codes, errors)
}

/// Reloads with clients on the TLS listener: HTTP/2 and HTTP/1.1 on kept-alive connections
/// (curl), and a fresh TLS connection per request; none fails.
#[test]
fn reloads_under_tls_load_fail_no_request() {
    let fx = Upgradable::new("tls-load");
    let (kg, tls_addr, ca) = fx.start_with_tls();
    let mut last = Last(kg.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let curls: Vec<_> = ["--http2", "--http1.1"]
        .into_iter()
        .map(|protocol| {
            let (stop, ca) = (stop.clone(), ca.clone());
            thread::spawn(move || curl_tls(tls_addr, &ca, protocol, stop))
        })
        .collect();
    let fresh = {
        let (stop, ca) = (stop.clone(), ca.clone());
        thread::spawn(move || {
            let request = format!(
                "GET /v1/me HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                bearer(KEY)
            );
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer =
                    keygate_test_support::tls::TlsClient::connect(tls_addr, &ca, "localhost")
                        .and_then(|mut c| c.exchange(request.as_bytes()))
                        .map(|raw| String::from_utf8_lossy(&raw[..raw.len().min(12)]).into_owned());
                answers.push(answer.unwrap_or_else(|e| e.to_string()));
            }
            answers
        })
    };
    thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        last.0 = reload(last.0);
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let mut summary = Vec::new();
    for (protocol, curl) in ["HTTP/2", "HTTP/1.1"].into_iter().zip(curls) {
        let (codes, errors) = curl.join().unwrap();
        let failed: Vec<_> = codes.iter().filter(|c| *c != "200").collect();
        assert!(
            failed.is_empty() && errors.is_empty(),
            "{protocol}: {failed:?} {errors:?}"
        );
        summary.push(format!("{protocol} kept alive: {}", codes.len()));
    }
    let answers = fresh.join().unwrap();
    let failed: Vec<_> = answers.iter().filter(|a| *a != "HTTP/1.1 200").collect();
    assert!(failed.is_empty(), "fresh TLS connections: {failed:?}");
    summary.push(format!("fresh TLS connections: {}", answers.len()));
    eprintln!("3 reloads, no failure: {}", summary.join(", "));
    assert!(summary.iter().all(|s| !s.ends_with(": 0")), "{summary:?}");
}
