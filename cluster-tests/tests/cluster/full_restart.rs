//! Guarantee 1 across a whole-cluster outage, and the premise of
//! guarantee 3: a channel's `(epoch, offset)` position and its history are
//! durable, so a client's resume position stays meaningful after every node
//! restarts. Also guarantee 5 across the restart: the idempotency window is
//! replicated state and survives it.
//!
//! The nodes are stopped in the ways real outages stop them: the leader and
//! a follower by SIGTERM (graceful shutdown, must exit cleanly), the last by
//! SIGKILL. Snapshots are taken every few entries so recovery goes through a
//! snapshot plus the log after it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_cluster_tests::{Cluster, ClusterOptions};
use herald_proto::v1::{HistoryResponse, PublishRequest};

use crate::ledger;

const POLICY: &str = r#"
[limits]
idempotency_window_secs = 900

[namespaces.fr]
history_size = 50
history_ttl_secs = 0
"#;

/// Channel name and how many publications it gets; `fr:big` outgrows its
/// 50-publication window so its retained range starts above 1.
const CHANNELS: [(&str, u64); 4] = [("fr:a", 30), ("fr:b", 12), ("fr:c", 1), ("fr:big", 70)];

fn request(channel: &str, i: u64) -> PublishRequest {
    PublishRequest {
        channel: channel.to_string(),
        event_type: "note".to_string(),
        data: format!("{{\"n\":{i}}}").into_bytes().into(),
        content_type: "application/json".to_string(),
        idempotency_key: format!("{channel}/{i}"),
        headers: [("seq".to_string(), i.to_string())].into_iter().collect(),
    }
}

async fn all_histories(cluster: &Cluster) -> BTreeMap<u64, BTreeMap<String, HistoryResponse>> {
    let channels: BTreeSet<String> = CHANNELS.iter().map(|(c, _)| c.to_string()).collect();
    let mut out = BTreeMap::new();
    for id in cluster.ids() {
        out.insert(id, ledger::histories(cluster, id, &channels, 1000).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_offsets_and_epochs_survive_restart_of_every_node() {
    let opts = ClusterOptions {
        snapshot_every: Some(20),
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    for (channel, count) in CHANNELS {
        for i in 1..=count {
            let resp = publisher
                .publish(request(channel, i), Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(
                (resp.offset, resp.duplicate),
                (i, false),
                "publish {i} to {channel}"
            );
        }
    }
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap();
    let before = all_histories(&cluster).await;
    let reference = &before[&1];
    for (id, h) in &before {
        let differ = ledger::differing_channels(reference, h);
        assert!(
            differ.is_empty(),
            "before the restart, nodes 1 and {id} disagree on {differ:?}"
        );
    }
    for (channel, count) in CHANNELS {
        let h = &reference[channel];
        assert_eq!(h.offset, count, "{channel} newest offset");
        assert!(!h.epoch.is_empty(), "{channel} has an epoch");
        let kept = count.min(50);
        assert_eq!(
            h.publications.len() as u64,
            kept,
            "{channel} retained publications"
        );
        assert_eq!(
            h.first_offset,
            count - kept + 1,
            "{channel} oldest retained offset"
        );
    }

    // Stop everything: graceful for the leader and one follower (in that
    // order, so the leader hands over first), a crash for the last node.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let mut order: Vec<u64> = vec![leader];
    order.extend(ids.iter().copied().filter(|&id| id != leader));
    for &id in &order[..2] {
        let status = cluster
            .node_mut(id)
            .terminate(Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            status.success(),
            "node {id} should exit cleanly on SIGTERM, got {status}"
        );
    }
    cluster.node_mut(order[2]).kill().unwrap();

    for &id in &ids {
        cluster.node_mut(id).restart().unwrap();
    }
    cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap();

    let after = all_histories(&cluster).await;
    for id in &ids {
        let differ = ledger::differing_channels(&before[id], &after[id]);
        assert!(
            differ.is_empty(),
            "node {id}: history changed across the restart in {differ:?}"
        );
        let differ = ledger::differing_channels(reference, &after[id]);
        assert!(
            differ.is_empty(),
            "after the restart, nodes 1 and {id} disagree on {differ:?}"
        );
    }

    // A retry of a pre-restart publish is still recognised...
    let resp = publisher
        .publish(request("fr:a", 7), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        resp.duplicate,
        "retrying fr:a/7 after the restart must be a duplicate, got {resp:?}"
    );
    assert_eq!(
        (resp.offset, resp.epoch.as_str()),
        (7, reference["fr:a"].epoch.as_str())
    );

    // ...and new publishes continue each channel at the next offset, same epoch.
    for (channel, count) in CHANNELS {
        let resp = publisher
            .publish(request(channel, count + 1), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            !resp.duplicate,
            "{channel}: a new key must not be a duplicate"
        );
        assert_eq!(
            resp.offset,
            count + 1,
            "{channel}: offset after the restart"
        );
        assert_eq!(
            resp.epoch, reference[channel].epoch,
            "{channel}: epoch changed across the restart"
        );
    }
}
