//! Guarantee 3 across reclaimed state: channel state shrinks after its
//! namespace's TTL on every node (in memory, in snapshots, after a
//! restart), and a reader resuming from a position in a forgotten channel
//! is told it cannot recover, also once the channel lives again.
//!
//! Many channels of a namespace with a short TTL get a few publications
//! each; a channel of a namespace without TTL gets some too. Past the TTL
//! the leader's sweep must leave only the latter, on every node, and the
//! next snapshot must be a small fraction of the one before.

use std::time::Duration;

use herald_cluster_tests::{Cluster, ClusterOptions, edge::sum_metric};
use herald_proto::v1::{
    ChannelsRequest, HistoryRequest, HistoryResponse, PublishBatchRequest, PublishRequest,
    StreamPosition,
};
use tokio::time::Instant;

const POLICY: &str = r#"
[namespaces.brief]
history_size = 100
history_ttl_secs = 3

[namespaces.keep]
history_size = 100
history_ttl_secs = 0
"#;

const CHANNELS: usize = 200;
const PER_CHANNEL: usize = 3;
const PAYLOAD: usize = 1000;

fn request(channel: &str, i: usize) -> PublishRequest {
    PublishRequest {
        channel: channel.to_string(),
        event_type: "note".to_string(),
        data: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(PAYLOAD))
            .into_bytes()
            .into(),
        content_type: "application/json".to_string(),
        ..PublishRequest::default()
    }
}

async fn metric(cluster: &Cluster, id: u64, name: &str) -> f64 {
    let (status, body) =
        herald_cluster_tests::client::http_get(cluster.node(id).http_addr(), "/metrics")
            .await
            .unwrap_or_else(|e| panic!("node {id} /metrics: {e}"));
    assert_eq!(status, 200, "node {id} /metrics");
    sum_metric(&body, name)
}

async fn brief_channels(cluster: &Cluster, id: u64) -> usize {
    cluster
        .publisher(id)
        .channels(ChannelsRequest {
            pattern: "brief:*".to_string(),
            names: vec![],
        })
        .await
        .unwrap_or_else(|e| panic!("node {id} Channels: {e}"))
        .into_inner()
        .channels
        .len()
}

async fn read_since(
    cluster: &Cluster,
    id: u64,
    channel: &str,
    since: Option<(&str, u64)>,
) -> HistoryResponse {
    cluster
        .publisher(id)
        .history(HistoryRequest {
            channel: channel.to_string(),
            since: since.map(|(epoch, offset)| StreamPosition {
                offset,
                epoch: epoch.to_string(),
            }),
            limit: 100,
            reverse: false,
            linearizable: true,
        })
        .await
        .unwrap_or_else(|e| panic!("node {id} History {channel}: {e}"))
        .into_inner()
}

/// Publish `n` single publications to `keep:x`, enough entries for every
/// node to take a new snapshot.
async fn fill_log(cluster: &Cluster, leader: u64, n: usize) {
    for i in 0..n {
        cluster
            .publisher(leader)
            .publish(request("keep:x", i))
            .await
            .unwrap_or_else(|e| panic!("publish keep:x: {e}"));
    }
}

/// Wait until `check` holds on node `id`, or fail with `what` and its logs.
async fn wait_for<F, Fut>(cluster: &Cluster, id: u64, what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => panic!(
                "node {id}: {what} not within {timeout:?}: {last}\n{}",
                cluster.log_tails()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_state_shrinks_after_ttl_on_every_node_and_no_reader_recovers_across_it() {
    let opts = ClusterOptions {
        snapshot_every: Some(10),
        extra_args: vec!["--sweep-interval-ms".to_string(), "500".to_string()],
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();

    let batch: Vec<PublishRequest> = (0..CHANNELS)
        .flat_map(|c| (0..PER_CHANNEL).map(move |i| request(&format!("brief:c{c}"), i)))
        .collect();
    let results = cluster
        .publisher(leader)
        .publish_batch(PublishBatchRequest {
            publications: batch,
        })
        .await
        .expect("publish batch")
        .into_inner()
        .results;
    let old = results
        .iter()
        .rfind(|r| r.channel == "brief:c0")
        .expect("brief:c0 published")
        .clone();
    assert_eq!(old.offset, PER_CHANNEL as u64);
    fill_log(&cluster, leader, 12).await;
    let retained_bytes = (CHANNELS * PER_CHANNEL * PAYLOAD) as f64;
    let mut before = 0.0f64;
    for id in cluster.ids() {
        wait_for(
            &cluster,
            id,
            "a snapshot holding every channel",
            Duration::from_secs(60),
            || {
                let cluster = &cluster;
                async move {
                    let bytes = metric(cluster, id, "herald_raft_snapshot_bytes").await;
                    (bytes > retained_bytes)
                        .then_some(())
                        .ok_or(format!("herald_raft_snapshot_bytes {bytes}"))
                }
            },
        )
        .await;
        before = before.max(metric(&cluster, id, "herald_raft_snapshot_bytes").await);
    }

    // Past the TTL, every node forgets every channel of the namespace and
    // keeps the one without TTL.
    for id in cluster.ids() {
        wait_for(
            &cluster,
            id,
            "brief:* forgotten",
            Duration::from_secs(60),
            || {
                let cluster = &cluster;
                async move {
                    let left = brief_channels(cluster, id).await;
                    let gauge = metric(cluster, id, "herald_channels").await;
                    (left == 0 && gauge == 1.0).then_some(()).ok_or(format!(
                        "{left} brief channels left, herald_channels {gauge}"
                    ))
                }
            },
        )
        .await;
        assert_eq!(
            read_since(&cluster, id, "keep:x", None)
                .await
                .publications
                .len(),
            12,
            "node {id}: a namespace without TTL keeps its history"
        );
    }

    // The next snapshot holds only live data.
    fill_log(&cluster, leader, 12).await;
    for id in cluster.ids() {
        wait_for(
            &cluster,
            id,
            "a snapshot of live data only",
            Duration::from_secs(60),
            || {
                let cluster = &cluster;
                async move {
                    let bytes = metric(cluster, id, "herald_raft_snapshot_bytes").await;
                    (bytes < before / 5.0).then_some(()).ok_or(format!(
                        "herald_raft_snapshot_bytes {bytes}, before {before}"
                    ))
                }
            },
        )
        .await;
    }

    // A restarted node starts from that snapshot and holds only live data.
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster
        .node_mut(follower)
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    cluster.node_mut(follower).restart().unwrap();
    cluster
        .wait_ready(follower, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        brief_channels(&cluster, follower).await,
        0,
        "restarted node {follower}"
    );

    // A reader resuming in the forgotten channel is told it cannot recover.
    let stale = read_since(&cluster, leader, "brief:c0", Some((&old.epoch, old.offset))).await;
    assert!(!stale.in_window, "recovered across a reset: {stale:?}");
    assert!(stale.publications.is_empty());
    assert_ne!(
        stale.epoch, old.epoch,
        "an empty channel announces its next epoch"
    );
    let empty = (stale.epoch.clone(), stale.offset);
    assert_eq!(empty.1, 0);

    // The channel lives again in that new epoch: the reader that saw it
    // empty continues into it, the one from the old life still cannot.
    let again = cluster
        .publisher(leader)
        .publish(request("brief:c0", 9))
        .await
        .expect("publish again")
        .into_inner();
    assert_eq!((again.offset, &again.epoch), (1, &empty.0));
    for id in cluster.ids() {
        let stale = read_since(&cluster, id, "brief:c0", Some((&old.epoch, old.offset))).await;
        assert!(
            !stale.in_window && stale.publications.is_empty(),
            "node {id}: {stale:?}"
        );
        let fresh = read_since(&cluster, id, "brief:c0", Some((&empty.0, 0))).await;
        assert!(fresh.in_window, "node {id}: {fresh:?}");
        assert_eq!(fresh.publications.len(), 1, "node {id}");
    }
}
