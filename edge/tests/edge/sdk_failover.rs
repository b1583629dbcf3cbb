//! Guarantees 2 and 3 with the real `centrifuge` SDK: every publication
//! arrives once and in order while the node the edge is linked to is
//! killed (the edge relinks and resumes upstream, the client notices
//! nothing), and when the edge itself is killed (the client reconnects to a
//! second edge and recovers: `recovered: true`).

use std::time::Duration;

use herald_cluster_tests::http_get;

use crate::harness::{EdgeProc, Script, cluster, node_id, offsets, publish, token};

const CHANNEL: &str = "chat:failover";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publication_once_in_order_across_node_and_edge_failover() {
    let mut cluster = cluster().await;
    let mut e1 = EdgeProc::start(&cluster, &[]).await;
    let e2 = EdgeProc::start(&cluster, &[]).await;
    let urls = format!("{},{}", e1.ws_url, e2.ws_url);
    let tok = token("alice");
    let mut script = Script::spawn("sdk_stream.mjs", &[&urls, CHANNEL, &tok]);
    script
        .expect(Duration::from_secs(20), |v| v["event"] == "subscribed")
        .await;
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);

    // Live delivery.
    for n in 1..=30 {
        publish(&mut publisher, CHANNEL, n).await;
    }
    script.expect_pub(Duration::from_secs(20), 30).await;

    // Kill the node edge 1 is linked to; keep publishing meanwhile.
    let linked = e1.linked_node().await.expect("edge 1 linked");
    let victim = node_id(&cluster, &linked);
    cluster.node_mut(victim).kill().expect("kill node");
    let survivors: Vec<u64> = ids.iter().copied().filter(|i| *i != victim).collect();
    let mut publisher = cluster.rotating_publisher(&survivors, 0);
    for n in 31..=60 {
        publish(&mut publisher, CHANNEL, n).await;
    }
    script.expect_pub(Duration::from_secs(30), 60).await;
    let relinked = e1.linked_node().await.expect("edge 1 relinked");
    assert_ne!(relinked, linked, "edge 1 moved to another node");

    // Kill edge 1 itself: the client moves to edge 2 and recovers.
    e1.kill();
    for n in 61..=90 {
        publish(&mut publisher, CHANNEL, n).await;
    }
    script.expect_pub(Duration::from_secs(30), 90).await;
    let summary = script.summary().await;
    let got = offsets(&summary["offsets"]);
    assert_eq!(
        got,
        (1..=90).collect::<Vec<u64>>(),
        "each publication once, in order"
    );
    let subs = summary["subscribed"].as_array().expect("subscribed list");
    assert!(
        subs.len() >= 2,
        "resubscribed after the edge died: {subs:?}"
    );
    let last = subs.last().expect("a resubscribe");
    assert_eq!(last["wasRecovering"], true, "{last}");
    assert_eq!(last["recovered"], true, "{last}");
    let (status, metrics) = http_get(e2.http, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for needle in [
        "herald_edge_recoveries_total{recovered=\"true\"}",
        "herald_edge_delivery_latency_seconds_bucket",
        "herald_edge_publications_sent_total{transport=\"websocket\"}",
        "herald_edge_upstream_linked 1",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }
}
