//! Guarantee 1 under runtime membership changes: while publishers keep
//! publishing, a fourth node joins (`--join`, caught up as a learner, then
//! promoted to voter) and another node is removed with the Admin
//! `RemoveNode` RPC. No acknowledged publication may be lost, the new node
//! must hold exactly the same history as the others, and every remaining
//! node must report the new voter set.
//!
//! Snapshots are taken often and the join waits until the leader has
//! purged log entries, so the new node can only catch up by installing a
//! snapshot and then replicating the log after it: the path a node joining
//! a long-lived cluster takes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald_cluster_tests::{Cluster, ClusterOptions, is_retryable, voters};
use herald_proto::v1::RemoveNodeRequest;

use crate::ledger;
use crate::load::{Load, LoadSpec};

const POLICY: &str = r#"
[limits]
idempotency_window_secs = 900
max_history_limit = 10000

[namespaces.mb]
history_size = 10000
history_ttl_secs = 0
"#;

/// Wait (hang guard: 180 s) until the leader has compacted its log, so a
/// joining node cannot be served from the log alone.
async fn wait_for_purge(cluster: &mut Cluster) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let leader = cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .unwrap();
        let status = cluster.status(leader).await.unwrap();
        if status.purged_index > 0 {
            eprintln!(
                "leader {leader}: snapshot at {}, purged up to {}, log at {}",
                status.snapshot_index, status.purged_index, status.last_log_index
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "with --snapshot-every 100 the leader never purged its log: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_voter_and_remove_node_under_load() {
    let opts = ClusterOptions {
        snapshot_every: Some(100),
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let original = cluster.ids();
    // A steady stream, not a flood: the scenario is about membership, and
    // two cores also run four nodes. The total only bounds history growth.
    let spec = LoadSpec {
        namespace: "mb",
        channels: 10,
        publishers: 4,
        total: 40_000,
        pace: Duration::from_millis(2),
        attempt_timeout: Duration::from_secs(10),
        patience: crate::load::PATIENCE,
    };
    let load = Load::start(&cluster, &original, spec);
    load.wait_acked_more(200, "before the join").await;
    wait_for_purge(&mut cluster).await;

    // Join node 4 as a voter.
    cluster.add_node(4, false).unwrap();
    let status = cluster
        .wait_for_member(4, Some("voter"), Duration::from_secs(90))
        .await
        .unwrap();
    let expected: BTreeSet<u64> = [1, 2, 3, 4].into();
    assert_eq!(voters(&status), expected, "voters after node 4 joined");
    load.wait_acked_more(200, "after the join").await;

    // Remove a follower among the original three, asking the new node (any
    // node accepts Admin calls and forwards them to the leader).
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let victim = *original.iter().rev().find(|&&id| id != leader).unwrap();
    let expected: BTreeSet<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != victim)
        .collect();
    let mut admin = cluster.admin(4);
    let deadline = Instant::now() + Duration::from_secs(60);
    let removed = loop {
        match admin.remove_node(RemoveNodeRequest { id: victim }).await {
            Ok(resp) => break resp.into_inner(),
            Err(e) if is_retryable(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("RemoveNode({victim}) via node 4: {e:?}"),
        }
    };
    assert_eq!(
        removed.voters.iter().copied().collect::<BTreeSet<_>>(),
        expected,
        "RemoveNode's voters"
    );
    assert!(
        !removed.learners.contains(&victim),
        "node {victim} removed but still a learner: {removed:?}"
    );
    cluster
        .wait_for_member(victim, None, Duration::from_secs(60))
        .await
        .unwrap();
    cluster.node_mut(victim).kill().unwrap();
    load.wait_acked_more(200, "after the removal").await;

    load.stop();
    let (ledger, retries) = load.finish().await;
    cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap();

    let remaining = cluster.running_ids();
    assert_eq!(remaining.iter().copied().collect::<BTreeSet<_>>(), expected);
    for &id in &remaining {
        let status = cluster.status(id).await.unwrap();
        assert_eq!(voters(&status), expected, "voters as node {id} sees them");
        assert!(
            status.members.iter().all(|m| m.id != victim),
            "node {id} still lists removed node {victim}: {:?}",
            status.members
        );
    }

    eprintln!(
        "{} acknowledged, {retries} retries, {} answered as duplicates",
        ledger.acked_count(),
        ledger.duplicates
    );
    ledger::assert_every_node_agrees(&cluster, &ledger, &remaining, 10_000).await;
    ledger::assert_all_acknowledged(&ledger);
}
