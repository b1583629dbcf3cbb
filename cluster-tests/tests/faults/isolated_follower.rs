//! Guarantee 1 for a replica that falls far behind: a follower is cut off
//! from the rest of the cluster while the load goes on, and kept cut off
//! until the leader has compacted its log past everything the follower
//! has, so healing can only bring it back by installing a snapshot and
//! replicating the log after it. It must catch up while the load continues,
//! and end with exactly the history of the others.

use std::time::{Duration, Instant};

use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict};

use crate::Unacknowledged;

const SCENARIO: &str = "isolated_follower";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_catches_up_to_an_identical_history() {
    if !crate::network_required(SCENARIO) {
        return;
    }
    let opts = ClusterOptions {
        snapshot_every: Some(100),
        ..ClusterOptions::default().with_policy(crate::policy("if", 900))
    };
    let mut cluster = Cluster::start_isolated(3, opts).await.unwrap();
    let ids = cluster.ids();
    let spec = LoadSpec {
        namespace: "if",
        channels: 20,
        publishers: 6,
        total: u64::MAX,
        pace: Duration::from_millis(2),
        attempt_timeout: Duration::from_secs(2),
        ..LoadSpec::default()
    };
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(300, "before the partition").await;

    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != follower).collect();
    let applied_at_cut = cluster.status(follower).await.unwrap().applied_index;
    cluster.net().partition(&[follower], &others).unwrap();
    eprintln!("cut follower {follower} (applied {applied_at_cut}) off from {others:?}");

    // Hold the partition until the majority's leader purged the log past
    // the follower's position (hang guard), with the load still flowing.
    let deadline = Instant::now() + Duration::from_secs(180);
    let purged = loop {
        load.wait_acked_more(50, "while the follower is cut off")
            .await;
        let leader = cluster
            .wait_for_leader_among(&others, Duration::from_secs(60))
            .await
            .unwrap();
        let s = cluster.status(leader).await.unwrap();
        if s.purged_index > applied_at_cut {
            break s.purged_index;
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader} never purged past {applied_at_cut}: {s:?}"
        );
    };
    eprintln!("leader purged its log up to {purged}; healing");
    cluster.net().heal().unwrap();

    // It must catch up while the load keeps going.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    let target = cluster.status(leader).await.unwrap().committed_index;
    let deadline = Instant::now() + Duration::from_secs(120);
    let caught_up = loop {
        let s = cluster.status(follower).await.unwrap();
        if s.applied_index >= target {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "follower {follower} stuck at applied {} (target {target})",
            s.applied_index
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "follower {follower} applied {} >= {target}, its snapshot at {}",
        caught_up.applied_index, caught_up.snapshot_index
    );
    load.wait_acked_more(200, "after the follower caught up")
        .await;
    let (ledger, retries, mut violations) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    if caught_up.snapshot_index <= applied_at_cut {
        violations.push(format!(
            "follower {follower} caught up without a snapshot past {applied_at_cut} \
             (snapshot at {}), although the leader had purged up to {purged}",
            caught_up.snapshot_index
        ));
    }
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("follower", follower)
        .fact("behind_by_purge", format!("{applied_at_cut}<{purged}"))
        .conclude();
}
