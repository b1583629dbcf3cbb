//! A `herald dev` cluster started for the benchmark (`--spawn`): the `herald`
//! binary next to `herald-bench`, its printed endpoints, API key, edge URLs
//! and development token, and its shutdown.
//!
//! The cluster must never outlive the benchmark: [`DevCluster::stop`] sends
//! SIGTERM and waits, and dropping an unstopped handle (an error, a panic, a
//! signal) does the same synchronously, then kills whatever is left.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::usage;

/// `herald dev` itself gives up after 60 s without a leader; this only guards
/// against a wedged process.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// `herald dev` gives each node 10 s to hand over leadership and stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `herald dev` and what it printed.
#[derive(Debug)]
pub(crate) struct DevCluster {
    child: Child,
    pid: u32,
    /// gRPC address of every node, from the `node <id> grpc <addr>` lines.
    pub(crate) grpc_addrs: Vec<String>,
    /// From the `api-key <key>` line (the publish key), if it printed one.
    pub(crate) api_key: Option<String>,
    /// From the `edge-key <key>` line: what further edges link with.
    pub(crate) edge_key: Option<String>,
    /// From the `edge 1 websocket <url>` line, if it printed one.
    pub(crate) edge_ws: Option<String>,
    /// From the `edge 1 metrics <url>` line: the edge's operations listener.
    pub(crate) edge_metrics: Option<String>,
    /// From the `token <jwt>` line: a connection token its edge accepts.
    pub(crate) token: Option<String>,
    stopped: bool,
}

/// The `herald` executable: `--herald` if given, else the one in the same
/// directory as this executable (the same cargo target directory).
pub(crate) fn herald_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("locating herald-bench's own executable")?;
    let herald = me.with_file_name("herald");
    if !herald.is_file() {
        bail!(
            "--spawn needs the `herald` binary at {} (build it with `cargo build -p herald-cli`, \
             with the same profile as herald-bench) or --herald <path>",
            herald.display()
        );
    }
    Ok(herald)
}

impl DevCluster {
    /// Start `herald dev` and wait for its `ready` line.
    pub(crate) async fn spawn(herald: &Path, nodes: u64) -> anyhow::Result<Self> {
        Self::spawn_with_policy(herald, nodes, None).await
    }

    /// Start `herald dev` with the channel policy file `policy` (its
    /// `--config`), or its development policy.
    pub(crate) async fn spawn_with_policy(
        herald: &Path,
        nodes: u64,
        policy: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(herald);
        // Plaintext: the benchmark clients and the extra edges speak
        // cleartext gRPC with the printed publish and edge keys.
        command.args(["dev", "--plaintext", "--nodes", &nodes.to_string()]);
        if let Some(policy) = policy {
            command.arg("--config").arg(policy);
        }
        let mut child = command
            // `herald dev` uses these as defaults for its own client flags.
            .env_remove("HERALD_SERVER")
            .env_remove("HERALD_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting `{} dev`", herald.display()))?;
        let pid = child.id().context("`herald dev` exited at once")?;
        let stdout = child.stdout.take().context("`herald dev` stdout")?;
        let mut cluster = Self {
            child,
            pid,
            grpc_addrs: Vec::new(),
            api_key: None,
            edge_key: None,
            edge_ws: None,
            edge_metrics: None,
            token: None,
            stopped: false,
        };
        let mut lines = BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Err(_) => bail!("`herald dev` did not print `ready` within {READY_TIMEOUT:?}"),
                Ok(Err(e)) => return Err(e).context("reading `herald dev` output"),
                Ok(Ok(None)) => {
                    let status = cluster.child.wait().await.ok();
                    cluster.stopped = true;
                    bail!(
                        "`herald dev` exited before it was ready ({}); see its messages above",
                        status.map_or_else(|| "unknown status".to_string(), |s| s.to_string())
                    );
                }
                Ok(Ok(Some(line))) => line,
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ready"] => break,
                ["node", _, "grpc", addr] => cluster.grpc_addrs.push((*addr).to_string()),
                ["api-key", key] => cluster.api_key = Some((*key).to_string()),
                ["edge-key", key] => cluster.edge_key = Some((*key).to_string()),
                // Only the first edge: the benchmarks drive one.
                ["edge", "1", "websocket", url] => cluster.edge_ws = Some((*url).to_string()),
                ["edge", "1", "metrics", url] => cluster.edge_metrics = Some((*url).to_string()),
                ["token", token] => cluster.token = Some((*token).to_string()),
                _ => {}
            }
        }
        if cluster.grpc_addrs.is_empty() {
            bail!("`herald dev` printed `ready` but no `node <id> grpc <addr>` line");
        }
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("herald dev: {line}");
            }
        });
        Ok(cluster)
    }

    /// Process id of `herald dev`; its `herald-node` children are the nodes,
    /// its `herald-edge` child the edge.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, then wait for a graceful exit (killing it after
    /// [`STOP_TIMEOUT`]).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        let nodes = children(self.pid);
        signal(self.pid, Signal::SIGTERM);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => {
                bail!("`herald dev` exited with {status} after SIGTERM; see its messages above")
            }
            Ok(Err(e)) => Err(e).context("waiting for `herald dev`"),
            Err(_) => {
                kill_all(self.pid, &nodes);
                let _ = self.child.wait().await;
                bail!("`herald dev` did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
            }
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        eprintln!("herald-bench: stopping `herald dev` (pid {})", self.pid);
        let nodes = children(self.pid);
        signal(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_all(self.pid, &nodes);
    }
}

/// The node and edge processes `herald dev` started.
fn children(dev: u32) -> Vec<u32> {
    let mut pids = usage::children_named(dev, usage::NODE_COMM);
    pids.extend(usage::children_named(dev, usage::EDGE_COMM));
    pids
}

/// SIGKILL `herald dev` and the nodes and edge it had: a killed `herald dev`
/// cannot stop its children itself.
fn kill_all(dev: u32, nodes: &[u32]) {
    signal(dev, Signal::SIGKILL);
    for &pid in nodes {
        signal(pid, Signal::SIGKILL);
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}
