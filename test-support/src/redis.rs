//! A real `redis-server` (Debian's package) on a loopback port, for the fleet-wide limits:
//! started empty, with no persistence, killed with SIGKILL when asked (as an outage would) and on
//! drop, and restartable on the same port (empty again, as after a crash without persistence).

use crate::http::{free_port, wait_for_port};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// More `redis-server` arguments, such as `--requirepass`.
    args: Vec<String>,
}

impl Redis {
    /// Starts one; panics when `redis-server` is missing (`scripts/install-deps.sh --test`).
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts one on a given port (one a keygate was told about before Redis was there).
    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    /// Starts one with more `redis-server` arguments (`["--requirepass", "…"]`).
    pub fn start_with(port: u16, args: &[&str]) -> Redis {
        let mut redis = Redis {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install it with scripts/install-deps.sh --test)");
        self.child = Some(child);
        assert!(
            wait_for_port(self.addr, Duration::from_secs(10)),
            "redis-server did not listen on {}",
            self.addr
        );
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// SIGKILL: no goodbye to its clients, as a crash or a lost host.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port, with no data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis-cli` against it; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.addr.port().to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Cluster: three primaries on loopback ports, no replicas, the 16,384 slots split
/// between them by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        // Each node's cluster bus port is a free port of its own: by default it is the port plus
        // 10,000, which another test may hold, or past 65,535 for a port above 55,535.
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let bus = free_port().to_string();
                Redis::start_with(
                    free_port(),
                    &["--cluster-enabled", "yes", "--cluster-port", &bus],
                )
            })
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| n.addr.to_string()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster never reached cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// One node's `redis://…` url: a client learns the others from it.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}
