//! Cluster-wide presence (docs/protocol.md, "Presence") with the real
//! `centrifuge` SDK: two edges linked to different nodes; `presence` and
//! `presence_stats` from a client on edge A list the clients of both
//! edges; joins and leaves on edge B reach a client on edge A as `join` /
//! `leave` pushes; when the node edge B is linked to dies (and B has no
//! other node to go to), B's clients vanish from presence within a bounded
//! time, and come back once B relinks after the node restarts.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_cluster_tests::{Cluster, ClusterOptions, http_get};

use crate::harness::{POLICY, SECRET, Script, herald_edge, token};

const CHANNEL: &str = "room:lobby";
/// How long a dead node's clients may stay listed (one peer timeout of 1 s
/// plus slack for a loaded CI machine).
const BOUND: Duration = Duration::from_secs(5);

fn policy() -> String {
    format!("{POLICY}\n[namespaces.room]\nhistory_size = 10\npresence = true\n")
}

/// An edge linked to exactly the nodes given, in that order.
struct Edge {
    child: std::process::Child,
    ws_url: String,
    http: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

impl Edge {
    async fn start(cluster: &Cluster, nodes: &[u64]) -> Self {
        let nodes: Vec<String> = nodes
            .iter()
            .map(|id| cluster.node(*id).grpc_addr().to_string())
            .collect();
        let (listen, http) = (free_addr(), free_addr());
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("edge.log");
        let child = Command::new(herald_edge())
            .args(["--listen", &listen.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--nodes", &nodes.join(",")])
            .args(["--api-key", &cluster.options().api_key])
            .args(["--jwt-hs256-secret", SECRET])
            .args(["--log", "info,herald_edge=debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn herald-edge");
        let edge = Self {
            child,
            ws_url: format!("ws://{listen}/connection/websocket"),
            http,
            log,
            _dir: dir,
        };
        edge.wait_linked(Duration::from_secs(30)).await;
        edge
    }

    async fn wait_linked(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = http_get(self.http, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "edge not linked:\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- herald-edge log tail ---\n{}", self.tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start an SDK client in [`CHANNEL`] and return it with its client id.
async fn join(edge: &Edge, user: &str) -> (Script, String) {
    let tok = token(user);
    let mut s = Script::spawn("presence.mjs", &[&edge.ws_url, CHANNEL, &tok]);
    let connected = s
        .expect(Duration::from_secs(20), |v| v["event"] == "connected")
        .await;
    s.expect(Duration::from_secs(20), |v| v["event"] == "subscribed")
        .await;
    let id = connected["client"].as_str().expect("client id").to_string();
    (s, id)
}

/// Ask `presence` until the listed client ids equal `want` (hang guard
/// `within`); returns how long it took.
async fn presence_becomes(s: &mut Script, want: &BTreeSet<String>, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        s.send("presence").await;
        let v = s
            .expect(Duration::from_secs(10), |v| {
                v["event"] == "presence" || v["event"] == "callerror"
            })
            .await;
        let got: BTreeSet<String> = v["clients"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["client"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if &got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "presence is {got:?} (last answer {v}), expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(list: &[&String]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_across_edges_and_a_dying_node() {
    let mut cluster = Cluster::start(3, ClusterOptions::default().with_policy(policy()))
        .await
        .expect("cluster starts");
    let nodes = cluster.ids();
    let (n1, n2) = (nodes[0], nodes[1]);
    let edge_a = Edge::start(&cluster, &[n1]).await;
    let edge_b = Edge::start(&cluster, &[n2]).await;

    let (mut alice, alice_id) = join(&edge_a, "alice").await;
    let (mut bob, bob_id) = join(&edge_b, "bob").await;
    let (mut carol, carol_id) = join(&edge_b, "carol").await;

    // A join on edge B (node 2) reaches alice on edge A (node 1).
    alice
        .expect(Duration::from_secs(10), |v| {
            v["event"] == "join" && v["client"] == carol_id.as_str() && v["user"] == "carol"
        })
        .await;
    let everyone = ids(&[&alice_id, &bob_id, &carol_id]);
    presence_becomes(&mut alice, &everyone, Duration::from_secs(10)).await;
    // The same answer from edge B.
    presence_becomes(&mut carol, &everyone, Duration::from_secs(10)).await;
    alice.send("stats").await;
    let stats = alice
        .expect(Duration::from_secs(10), |v| v["event"] == "stats")
        .await;
    assert_eq!(
        (stats["numClients"].as_u64(), stats["numUsers"].as_u64()),
        (Some(3), Some(3))
    );

    // Bob leaves: alice gets a leave push and bob is gone from presence.
    bob.send("unsubscribe").await;
    alice
        .expect(Duration::from_secs(10), |v| {
            v["event"] == "leave" && v["client"] == bob_id.as_str()
        })
        .await;
    let after_bob = ids(&[&alice_id, &carol_id]);
    presence_becomes(&mut alice, &after_bob, Duration::from_secs(5)).await;

    // A namespace without presence answers 108.
    alice.send("presence chat:x").await;
    let refused = alice
        .expect(Duration::from_secs(10), |v| v["event"] == "callerror")
        .await;
    assert_eq!(refused["code"], 108, "{refused}");

    // The node edge B is linked to dies; B has nowhere else to go, so its
    // client (carol) leaves presence within the bound.
    cluster.node_mut(n2).kill().expect("kill node 2");
    let took = presence_becomes(&mut alice, &ids(&[&alice_id]), BOUND).await;
    eprintln!("carol gone from presence {took:?} after node {n2} died");
    alice.send("stats").await;
    let stats = alice
        .expect(Duration::from_secs(10), |v| v["event"] == "stats")
        .await;
    assert_eq!(stats["numClients"].as_u64(), Some(1), "{stats}");

    // The node comes back; edge B relinks and re-sends its presence.
    cluster.node_mut(n2).restart().expect("restart node 2");
    edge_b.wait_linked(Duration::from_secs(30)).await;
    alice
        .expect(Duration::from_secs(20), |v| {
            v["event"] == "join" && v["client"] == carol_id.as_str()
        })
        .await;
    presence_becomes(&mut alice, &after_bob, Duration::from_secs(10)).await;

    for s in [alice, bob, carol] {
        let mut s = s;
        s.send("quit").await;
        s.finish().await;
    }
}
