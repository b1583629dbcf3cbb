//! Guarantee 1 — an acknowledged publish to a history channel survives any
//! minority of node crashes — and guarantee 5 — a publish retried with the
//! same idempotency key is stored once — while the Raft leader is killed
//! with SIGKILL in the middle of a publish load and later restarted.
//!
//! 32 publishers send 10,000 publications over 100 channels. Each one has a
//! unique idempotency key and is retried with that key, on the next node, on
//! every transport error or `UNAVAILABLE`, exactly as a careful backend
//! would. Afterwards every node's history must hold each acknowledged
//! publication exactly once at its acknowledged offset, offsets `1..=n`
//! without gaps, and nothing twice.

use std::time::Duration;

use herald_cluster_tests::{Cluster, ClusterOptions};

use crate::ledger;
use crate::load::{Load, LoadSpec};

const POLICY: &str = r#"
[limits]
idempotency_window_secs = 900

[namespaces.lc]
history_size = 1000
history_ttl_secs = 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publications_survive_leader_sigkill() {
    let mut cluster = Cluster::start(3, ClusterOptions::default().with_policy(POLICY))
        .await
        .unwrap();
    let spec = LoadSpec {
        namespace: "lc",
        channels: 100,
        publishers: 32,
        total: 10_000,
        pace: Duration::ZERO,
        attempt_timeout: Duration::from_secs(10),
        patience: crate::load::PATIENCE,
    };
    let total = spec.total;
    let load = Load::start(&cluster, &cluster.ids(), spec);

    load.wait_done(total / 2, Duration::from_secs(180), "before the crash")
        .await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    cluster.node_mut(leader).kill().unwrap();
    eprintln!("killed leader {leader} after {} publishes", load.done());

    // The two survivors are a majority: the load must keep completing.
    let target = (load.done() + total / 5).min(total);
    load.wait_done(target, Duration::from_secs(180), "with the old leader dead")
        .await;
    cluster.node_mut(leader).restart().unwrap();
    eprintln!("restarted node {leader} after {} publishes", load.done());

    let (ledger, retries) = load.finish().await;
    cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "{} acknowledged, {retries} retries, {} answered as duplicates",
        ledger.acked_count(),
        ledger.duplicates
    );
    ledger::assert_every_node_agrees(&cluster, &ledger, &cluster.ids(), 1000).await;
    // Safety holds; now liveness: with the leader back, nothing should have
    // been left unacknowledged.
    ledger::assert_all_acknowledged(&ledger);
    assert_eq!(ledger.acked_count() as u64, total);
}
