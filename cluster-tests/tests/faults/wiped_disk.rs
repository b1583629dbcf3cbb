//! Guarantee 1 when a voter loses its disk: node 1 — the node that
//! bootstraps the cluster from an empty data directory — is killed with
//! SIGKILL, its data directory deleted, and started again with the same
//! flags while the other two keep acknowledging the load.
//!
//! An empty disk and the lowest id in `--peers` is exactly the situation in
//! which node 1 would bootstrap a cluster; it must instead notice that its
//! peers already form one, and be brought back by the leader (by snapshot:
//! the leader has compacted its log). It must never form a second cluster:
//! no `bootstrapped a new cluster` in its log after the wipe, it ends in the
//! cluster's term under the cluster's leader, and every channel's epoch and
//! history on it equal the others' (a second cluster would mint new epochs).

use std::time::{Duration, Instant};

use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, voters};

use crate::Unacknowledged;

const SCENARIO: &str = "wiped_disk";

/// What node 1 logs when it initializes a cluster (`node/src/startup.rs`).
const BOOTSTRAP_LINE: &str = "bootstrapped a new cluster";

/// The part of a node's log written since its last start by the harness.
fn log_since_last_start(cluster: &Cluster, id: u64) -> String {
    let log = std::fs::read_to_string(cluster.node(id).log_path()).unwrap_or_default();
    match log.rfind("===== harness: start #") {
        Some(at) => log[at..].to_string(),
        None => log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_rejoins_and_never_forms_a_second_cluster() {
    let opts = ClusterOptions {
        snapshot_every: Some(100),
        ..ClusterOptions::default().with_policy(crate::policy("wd", 900))
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let wiped = ids[0];
    let others: Vec<u64> = ids[1..].to_vec();
    let spec = LoadSpec {
        namespace: "wd",
        channels: 20,
        publishers: 6,
        total: u64::MAX,
        pace: Duration::from_millis(2),
        attempt_timeout: Duration::from_secs(3),
        ..LoadSpec::default()
    };
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(500, "before the wipe").await;

    let leader_before = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    cluster.node_mut(wiped).kill().unwrap();
    cluster.node_mut(wiped).wipe_data_dir().unwrap();
    eprintln!("killed node {wiped} (leader was {leader_before}) and wiped its data dir");
    let leader = cluster
        .wait_for_leader_among(&others, Duration::from_secs(60))
        .await
        .unwrap();
    load.wait_acked_more(300, "with node 1 gone").await;
    let cluster_status = cluster.status(leader).await.unwrap();
    let target = cluster_status.committed_index;

    cluster.node_mut(wiped).restart().unwrap();
    let mut violations = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = 0;
    let rejoined = loop {
        if let Ok(s) = cluster.status(wiped).await {
            samples += 1;
            // While the cluster replaces the wiped member by its new
            // incarnation, its voters are the cluster's without it; any
            // other voter would be a second cluster.
            if !s.members.is_empty() && !voters(&s).is_subset(&voters(&cluster_status)) {
                violations.push(format!(
                    "wiped node {wiped} reported a membership other than the cluster's: {s:?}"
                ));
                break s;
            }
            if s.applied_index >= target && s.leader_id.is_some() {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "wiped node {wiped} did not catch up to {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "node {wiped} rejoined: applied {} (target {target}), snapshot at {}, {samples} status samples",
        rejoined.applied_index, rejoined.snapshot_index
    );
    load.wait_acked_more(300, "after the rejoin").await;
    let (ledger, retries, found) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    violations.extend(found);
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();

    if log_since_last_start(&cluster, wiped).contains(BOOTSTRAP_LINE) {
        violations.push(format!(
            "wiped node {wiped} logged {BOOTSTRAP_LINE:?} after restarting with an empty disk"
        ));
    }
    let after = cluster.status(wiped).await.unwrap();
    let leader_status = cluster.status(leader).await.unwrap();
    if after.leader_id != Some(leader) || after.term != leader_status.term {
        violations.push(format!(
            "wiped node {wiped} is not in the cluster's term {} under leader {leader}: {after:?}",
            leader_status.term
        ));
    }
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("wiped", wiped)
        .fact("rejoined_at", rejoined.applied_index)
        .conclude();
}
