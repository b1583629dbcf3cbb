//! Guarantees 1 and 5 when the leader freezes instead of dying: SIGSTOP (a
//! long GC pause, a stalled VM) keeps its sockets open, so calls to it hang
//! rather than fail, and when it wakes up it still believes it leads. The
//! others must elect a new leader and keep acknowledging; the woken node
//! must step down, and nothing it had in flight may leak into history as a
//! duplicate or a gap.

use std::time::Duration;

use herald_cluster_tests::{Cluster, ClusterOptions};

use crate::ledger;
use crate::load::{Load, LoadSpec};

const POLICY: &str = r#"
[limits]
idempotency_window_secs = 900

[namespaces.lp]
history_size = 1000
history_ttl_secs = 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_is_replaced_and_steps_down_on_waking() {
    let mut cluster = Cluster::start(3, ClusterOptions::default().with_policy(POLICY))
        .await
        .unwrap();
    let spec = LoadSpec {
        namespace: "lp",
        channels: 20,
        publishers: 8,
        total: 3_000,
        pace: Duration::ZERO,
        // Calls to the frozen node hang; give up on them quickly and retry
        // elsewhere with the same key.
        attempt_timeout: Duration::from_secs(2),
        patience: crate::load::PATIENCE,
    };
    let total = spec.total;
    let load = Load::start(&cluster, &cluster.ids(), spec);

    load.wait_done(total / 3, Duration::from_secs(180), "before the pause")
        .await;
    let frozen = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let frozen_term = cluster.status(frozen).await.unwrap().term;
    cluster.node_mut(frozen).pause().unwrap();
    // Paused nodes do not count as running: this waits for the other two to
    // agree on a new leader.
    let successor = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(successor, frozen);
    eprintln!(
        "froze leader {frozen} after {} publishes; {successor} took over",
        load.done()
    );

    let target = (load.done() + total / 3).min(total);
    load.wait_done(
        target,
        Duration::from_secs(180),
        "with the old leader frozen",
    )
    .await;
    cluster.node_mut(frozen).resume().unwrap();
    eprintln!("woke node {frozen} after {} publishes", load.done());

    let (ledger, retries) = load.finish().await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap();
    let woken = cluster.status(frozen).await.unwrap();
    assert!(
        woken.term > frozen_term && woken.leader_id == Some(leader),
        "the woken node led in term {frozen_term}; it must have moved to a later term under the current leader {leader}: {woken:?}"
    );
    eprintln!(
        "{} acknowledged, {retries} retries, {} answered as duplicates",
        ledger.acked_count(),
        ledger.duplicates
    );
    ledger::assert_every_node_agrees(&cluster, &ledger, &cluster.ids(), 1000).await;
    ledger::assert_all_acknowledged(&ledger);
    assert_eq!(ledger.acked_count() as u64, total);
}
