//! Guarantee 3 for a crowd, and the edge's admission control: 10,000
//! WebSocket clients on one edge (four channels, 2,500 each) while
//! publishers keep publishing; the edge is killed with SIGKILL, stays down
//! while more is published, and is restarted on its port — so all 10,000
//! reconnect at once, each resubscribing with `recover` from its own
//! position. The clients back off with jitter as the SDKs do.
//!
//! The edge runs with `--connection-rate 500`: it must refuse the surplus
//! before the upgrade with the documented HTTP 503 and code 3504 (counted
//! in `herald_edge_connections_refused_total`) rather than take every
//! handshake, subscribe and history read at once. No node may fall over:
//! every node keeps running and ends ready (how often a node reported
//! unready under the storm is printed, not judged: readiness follows Raft
//! heartbeats, which a starved two-core machine can delay). And every
//! client must come back: each resubscribe answered `recovered: true`,
//! every acknowledged publication of its channel received exactly once, in
//! order, the ones published while it was away included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::machine::{self, Capability};
use herald_cluster_tests::subscriber::{Subscriber, SubscriberOptions, Tuning, finish_subscribers};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, edge_token, http_get};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::Unacknowledged;

const SCENARIO: &str = "reconnect_storm";

const CLIENTS: usize = 10_000;
/// `--connection-rate` of the edge: new connections a second.
const RATE: &str = "500";
const EDGE: u64 = 101;
/// Hang guard for connecting, reconnecting and catching up.
const GUARD: Duration = Duration::from_secs(150);

/// Raise this process's open-files limit to at least `needed` (children
/// inherit it: the edge holds as many sockets as the test).
fn raise_fd_limit(needed: u64) -> Result<(), String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft >= needed {
        return Ok(());
    }
    let hard = hard.max(needed);
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| {
        format!("the open-files limit is {soft} and cannot be raised to {needed}: {e}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_reconnect_at_once_are_rate_limited_and_all_recover() {
    if !machine::require(
        SCENARIO,
        Capability::OpenFiles,
        raise_fd_limit(CLIENTS as u64 + 4_000),
    ) {
        return;
    }
    // Raft timers for a machine the storm keeps busy (as in `soak`).
    let opts = ClusterOptions {
        heartbeat_ms: 150,
        election_timeout_ms: 1000,
        ..ClusterOptions::default().with_policy(crate::policy("rs", 900))
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let mut edge = EdgeProc::start(&mut cluster, EDGE, &ids, &["--connection-rate", RATE])
        .await
        .unwrap();
    // About ten publications a second: a client away for the whole storm
    // misses far fewer than `--recover-max` (300) of its channel.
    let spec = LoadSpec {
        namespace: "rs",
        channels: 4,
        publishers: 2,
        total: u64::MAX,
        pace: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(5),
        ..LoadSpec::default()
    };
    let channels = crate::channels_of(&spec);
    let connecting = Instant::now();
    let clients: Vec<Subscriber> = (0..CLIENTS)
        .map(|i| {
            Subscriber::spawn_with(
                SubscriberOptions {
                    name: format!("c{i}"),
                    urls: vec![edge.ws_url()],
                    token: edge_token(&format!("user-{i}")),
                    channels: vec![channels[i % channels.len()].clone()],
                },
                Tuning::crowd(),
            )
        })
        .collect();
    for c in &clients {
        let left = GUARD.saturating_sub(connecting.elapsed());
        c.wait_subscribed(left).await.unwrap();
    }
    let connected_in = connecting.elapsed();
    eprintln!("{CLIENTS} clients subscribed in {connected_in:?}");

    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(40, "before the edge restart").await;
    let watch = NodeWatch::start(&cluster);
    edge.process().kill().unwrap();
    let before: Vec<u64> = clients.iter().map(Subscriber::sessions).collect();
    load.wait_acked_more(40, "with the edge down").await;
    edge.process().restart().unwrap();
    let storm = Instant::now();
    edge.wait_linked(Duration::from_secs(60)).await.unwrap();
    loop {
        let behind = clients
            .iter()
            .zip(&before)
            .filter(|(c, was)| c.sessions() <= **was)
            .count();
        if behind == 0 {
            break;
        }
        assert!(
            storm.elapsed() < GUARD,
            "{behind} of {CLIENTS} clients not reconnected {GUARD:?} after the restart:\n{}",
            edge.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reconnected_in = storm.elapsed();
    eprintln!("all {CLIENTS} clients reconnected in {reconnected_in:?}");
    load.wait_acked_more(20, "after the storm").await;
    let refused_by_edge = edge
        .metric("herald_edge_connections_refused_total")
        .await
        .unwrap();
    let (unready_samples, samples) = watch.stop().await;

    let mut violations = Vec::new();
    for &id in &ids {
        if let Some(status) = cluster.node_mut(id).unexpected_exit() {
            violations.push(format!("node {id} exited during the storm ({status})"));
        } else if let Err(e) = cluster.wait_ready(id, Duration::from_secs(60)).await {
            violations.push(format!("node {id} after the storm: {e:#}"));
        }
    }
    let (ledger, retries, found) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    violations.extend(found);
    let (tally, found, records) = finish_subscribers(clients, &ledger, GUARD).await;
    violations.extend(found);
    violations.extend(crate::unexpected_not_recovered(&records));
    let mut refusals = 0;
    let mut endings: BTreeMap<String, usize> = BTreeMap::new();
    for (r, &was) in records.iter().zip(&before) {
        for d in &r.disconnects {
            *endings.entry(ending_kind(d)).or_default() += 1;
        }
        for refusal in r.refusals() {
            refusals += 1;
            if !(refusal.starts_with("503 ") && refusal.contains("\"code\":3504")) {
                violations.push(format!(
                    "client {} was refused with {refusal:?}, not 503 and code 3504",
                    r.name
                ));
            }
        }
        if r.sessions <= was || r.recovered() == 0 {
            violations.push(format!(
                "client {} never resubscribed with recovered: true after the restart \
                 ({} sessions, {was} before it)",
                r.name, r.sessions
            ));
        }
    }
    eprintln!("why client sessions and attempts ended: {endings:#?}");
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("clients", CLIENTS)
        .fact("connection_rate", RATE)
        .fact(
            "connected_in",
            format!("{:.1}s", connected_in.as_secs_f64()),
        )
        .fact(
            "reconnected_in",
            format!("{:.1}s", reconnected_in.as_secs_f64()),
        )
        .fact("refused_by_edge_after_restart", refused_by_edge)
        .fact("refusals_seen_by_clients", refusals)
        .fact(
            "node_unready_samples",
            format!("{unready_samples}/{samples}"),
        )
        .subscribers(&tally)
        .violation_if(
            refused_by_edge == 0.0,
            format!(
                "the restarted edge refused no connection although {CLIENTS} came back at once \
                 with --connection-rate {RATE}"
            ),
        )
        .conclude();
}

/// A disconnect reason without its URL, numbers and details, for a tally.
fn ending_kind(disconnect: &str) -> String {
    let why = disconnect
        .split_once("/connection/websocket: ")
        .map_or(disconnect, |(_, w)| w);
    why.chars()
        .take(48)
        .filter(|c| !c.is_ascii_digit())
        .collect()
}

/// Samples every node's `/readyz` twice a second until stopped.
struct NodeWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl NodeWatch {
    fn start(cluster: &Cluster) -> Self {
        let addrs: Vec<_> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.node(id).http_addr())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut bad, mut all) = (0, 0);
            while !flag.load(Ordering::SeqCst) {
                for &addr in &addrs {
                    all += 1;
                    if !matches!(http_get(addr, "/readyz").await, Ok((200, _))) {
                        bad += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (bad, all)
        });
        Self { stop, task }
    }

    /// Unready samples and all samples.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("node watch task")
    }
}
