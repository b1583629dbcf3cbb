//! End to end through the real binaries: `herald dev` starts a 3-node cluster
//! of `herald-node` processes; `herald publish`, `history` and `status` work
//! against it; SIGTERM stops it with exit status 0 and leaves no node behind.
//!
//! The publish retried with the same idempotency key proves DESIGN.md
//! guarantee 5 (stored once) as a user of the CLI sees it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Once, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Only a hang guard: a debug build elects a leader in a few seconds.
const READY_GUARD: Duration = Duration::from_secs(60);
/// `herald dev` gives its nodes 10 s to stop before killing them.
const EXIT_GUARD: Duration = Duration::from_secs(30);

fn herald() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

/// `herald-node` next to `herald`, where `herald dev` looks for it. Cargo
/// builds only this package's binaries for this test, so build the node once
/// if it is missing.
fn node_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = herald().with_file_name(format!("herald-node{}", std::env::consts::EXE_SUFFIX));
    BUILD.call_once(|| {
        if path.is_file() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "-p", "herald-node"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build -p herald-node");
        assert!(
            status.success(),
            "cargo build -p herald-node failed: {status}"
        );
    });
    assert!(
        path.is_file(),
        "herald-node not found at {}",
        path.display()
    );
    path
}

/// A running `herald dev`. Dropped (also on a failed assertion) it stops the
/// cluster the way a user would, then kills whatever is left, so a failing
/// test never leaves nodes running.
struct DevCluster {
    dev: Child,
    lines: mpsc::Receiver<String>,
    node_pids: Vec<i32>,
    grpc: String,
    api_key: String,
}

impl DevCluster {
    fn start(nodes: usize) -> Self {
        let node_bin = node_binary();
        let mut dev = Command::new(herald())
            .args(["dev", "--nodes", &nodes.to_string()])
            .env("HERALD_NODE_BIN", &node_bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting herald dev");
        let stdout = dev.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cluster = Self {
            dev,
            lines,
            node_pids: Vec::new(),
            grpc: String::new(),
            api_key: String::new(),
        };

        let deadline = Instant::now() + READY_GUARD;
        let mut grpc_lines = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match cluster.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!("herald dev printed no `ready` within {READY_GUARD:?}: {e}"),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ready"] => break,
                ["node", _, "grpc", addr] => {
                    grpc_lines += 1;
                    if cluster.grpc.is_empty() {
                        cluster.grpc = (*addr).to_string();
                    }
                }
                ["node", _, "metrics", url] => {
                    assert!(url.starts_with("http://127.0.0.1:"), "{line}")
                }
                ["api-key", key] => cluster.api_key = (*key).to_string(),
                ["data-dir", dir] => assert!(Path::new(dir).is_dir(), "{line}"),
                _ => panic!("unexpected line from herald dev: {line}"),
            }
        }
        assert_eq!(grpc_lines, nodes, "one grpc line per node");
        assert_eq!(
            cluster.api_key.len(),
            32,
            "api key is 16 random bytes in hex"
        );
        cluster.node_pids = children_of(cluster.dev.id());
        assert_eq!(
            cluster.node_pids.len(),
            nodes,
            "herald dev runs one process per node"
        );
        for pid in &cluster.node_pids {
            assert!(
                is_herald_node(*pid),
                "child {pid} of herald dev is not herald-node"
            );
        }
        cluster
    }

    /// Run `herald <args>` against this cluster.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(herald())
            .args(["--server", &self.grpc, "--api-key", &self.api_key])
            .args(args)
            .output()
            .expect("running herald")
    }

    /// Run `herald <args>`, require success, return stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "herald {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.dev.id()).expect("pid fits i32"));
        kill(pid, Signal::SIGTERM).expect("sending SIGTERM to herald dev");
        wait_timeout(&mut self.dev, EXIT_GUARD).expect("herald dev did not exit after SIGTERM")
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if matches!(self.dev.try_wait(), Ok(None)) {
            if let Ok(pid) = i32::try_from(self.dev.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            if wait_timeout(&mut self.dev, EXIT_GUARD).is_none() {
                let _ = self.dev.kill();
                let _ = self.dev.wait();
            }
        }
        for &pid in &self.node_pids {
            if is_herald_node(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Pids whose parent is `parent`, from `/proc/<pid>/stat`.
fn children_of(parent: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Whether `pid` is a live (not zombie) `herald-node`.
fn is_herald_node(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim() == "herald-node" && state != Some("Z")
}

#[test]
fn dev_cluster_serves_the_cli_and_stops_cleanly() {
    let mut cluster = DevCluster::start(3);

    let channel = "room-cli-test";
    let data = r#"{"text":"hello"}"#;
    let publish = [
        channel,
        data,
        "--event-type",
        "message",
        "--idempotency-key",
        "cli-test-1",
        "--header",
        "k=v",
    ];
    let mut args = vec!["publish"];
    args.extend(publish);
    let first = cluster.cli_ok(&args);
    let words: Vec<&str> = first.split_whitespace().collect();
    let (offset, epoch) = match words.as_slice() {
        ["offset", offset, "epoch", epoch] => (
            offset.parse::<u64>().expect("numeric offset"),
            epoch.to_string(),
        ),
        _ => panic!("unexpected publish output: {first:?}"),
    };
    assert!(offset >= 1, "offsets start at 1: {first:?}");

    let retry = cluster.cli_ok(&args);
    assert_eq!(
        retry.trim(),
        format!("offset {offset} epoch {epoch} duplicate"),
        "a retried publish is stored once"
    );

    let history = cluster.cli_ok(&["history", channel, "--linearizable"]);
    let lines: Vec<&str> = history.lines().collect();
    let (last, publications) = lines
        .split_last()
        .expect("history prints at least its position line");
    assert_eq!(
        *last,
        format!("epoch {epoch} offset {offset} in_window true")
    );
    let stored: Vec<serde_json::Value> = publications
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "the duplicate is not stored twice: {history}"
    );
    let p = &stored[0];
    assert_eq!(p["channel"], channel);
    assert_eq!(p["offset"], offset);
    assert_eq!(p["epoch"], epoch.as_str());
    assert_eq!(p["event_type"], "message");
    assert_eq!(p["data"], data);
    assert!(p["published_at_ms"].as_i64().is_some_and(|t| t > 0), "{p}");

    let status = cluster.cli_ok(&["status"]);
    let head = status.lines().next().unwrap_or_default();
    let leader = head
        .split(", ")
        .find_map(|part| part.strip_prefix("leader "))
        .and_then(|rest| {
            rest.split_whitespace()
                .next()
                .and_then(|id| id.parse::<u64>().ok())
        });
    assert!(
        leader.is_some_and(|id| (1..=3).contains(&id)),
        "status shows no leader: {status}"
    );
    assert_eq!(
        status.lines().filter(|l| l.contains(" voter ")).count(),
        3,
        "three voters: {status}"
    );

    let wrong_key = Command::new(herald())
        .args([
            "--server",
            &cluster.grpc,
            "--api-key",
            "not-the-key",
            "status",
        ])
        .output()
        .expect("running herald");
    assert_eq!(wrong_key.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong_key.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("(reason API_KEY_INVALID)"),
        "{stderr}"
    );

    let exit = cluster.terminate();
    assert!(
        exit.success(),
        "herald dev exited with {exit} after SIGTERM"
    );
    for &pid in &cluster.node_pids {
        assert!(
            !is_herald_node(pid),
            "herald-node {pid} outlived herald dev"
        );
    }
}
