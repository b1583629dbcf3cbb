//! Guarantees 1 and 5 across a rolling restart — what every deploy does:
//! each node in turn gets SIGTERM (it stops taking publishes with the
//! retryable `LEADER_STEPPING_DOWN`, hands leadership over if it leads, and
//! must exit cleanly), is started again on the same data directory, and
//! the next one goes only once it answers `/readyz` and the cluster has
//! acknowledged more publications. The publishers never stop; a publish
//! interrupted by a restart is retried with its key on another node. Two
//! rounds, so every node restarts twice, once or more as the leader.

use std::time::Duration;

use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, ledger};

const SCENARIO: &str = "rolling_restart";

const POLICY: &str = r#"
[limits]
idempotency_window_secs = 900
max_history_limit = 10000

[namespaces.rr]
history_size = 10000
history_ttl_secs = 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node_under_load() {
    // Snapshots every few hundred entries, as a long-lived cluster has them:
    // each node restarts from a snapshot plus the log after it.
    let opts = ClusterOptions {
        snapshot_every: Some(200),
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let spec = LoadSpec {
        namespace: "rr",
        channels: 20,
        publishers: 6,
        total: u64::MAX,
        pace: Duration::from_millis(2),
        attempt_timeout: Duration::from_secs(5),
        ..LoadSpec::default()
    };
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(200, "before the first restart").await;

    let mut violations = Vec::new();
    let mut leaders = Vec::new();
    let order: Vec<u64> = ids.iter().chain(ids.iter()).copied().collect();
    for &id in &order {
        let leader = cluster
            .wait_for_leader(Duration::from_secs(60))
            .await
            .unwrap();
        leaders.push(leader);
        let status = cluster
            .node_mut(id)
            .terminate(Duration::from_secs(30))
            .await
            .unwrap();
        if !status.success() {
            violations.push(format!("node {id} exited with {status} on SIGTERM"));
        }
        cluster.node_mut(id).restart().unwrap();
        cluster
            .wait_ready(id, Duration::from_secs(60))
            .await
            .unwrap();
        eprintln!(
            "node {id} (leader was {leader}) restarted and ready after {} acks",
            load.acked()
        );
        load.wait_acked_more(200, &format!("after restarting node {id}"))
            .await;
    }
    load.stop();
    let (ledger, retries) = load.finish().await;
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap();
    violations.extend(ledger::verify_every_node(&cluster, &ledger, &ids, 10_000).await);
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("restarted", format!("{order:?}"))
        .fact("leader_before_each", format!("{leaders:?}"))
        .conclude();
}
