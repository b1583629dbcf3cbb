//! The Protobuf client protocol (docs/protocol.md, "Protobuf") with the
//! real `centrifuge` SDK's Protobuf build: connect with a token, subscribe,
//! a client publish, publications from gRPC (guarantee 2), history,
//! presence and presence stats, then the edge the client is on is killed
//! and the client reconnects to a second edge and recovers (guarantee 3):
//! every publication exactly once, in order, `recovered: true`.

use std::time::Duration;

use herald_cluster_tests::{Cluster, ClusterOptions};
use serde_json::json;

use crate::harness::{EdgeProc, POLICY, Script, offsets, publish, token};

const CHANNEL: &str = "pb:stream";

fn policy() -> String {
    format!(
        "{POLICY}\n[namespaces.pb]\nhistory_size = 1000\nhistory_ttl_secs = 600\n\
         allow_client_publish = true\npresence = true\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_sdk_streams_reads_and_recovers_on_another_edge() {
    let cluster = Cluster::start(3, ClusterOptions::default().with_policy(policy()))
        .await
        .expect("cluster starts");
    let mut e1 = EdgeProc::start(&cluster, &[]).await;
    let e2 = EdgeProc::start(&cluster, &[]).await;
    let urls = format!("{},{}", e1.ws_url, e2.ws_url);
    let mut script = Script::spawn("sdk_protobuf.mjs", &[&urls, CHANNEL, &token("alice")]);
    let open = script
        .expect(Duration::from_secs(20), |v| v["event"] == "open")
        .await;
    assert_eq!(open["protocol"], "centrifuge-protobuf", "edge selected it");
    let connected = script
        .expect(Duration::from_secs(20), |v| v["event"] == "connected")
        .await;
    let client_id = connected["client"].as_str().expect("client id").to_string();
    script
        .expect(Duration::from_secs(20), |v| v["event"] == "subscribed")
        .await;

    // Offset 1 from the client itself, 2..=30 through gRPC.
    script.send("publish").await;
    script
        .expect(Duration::from_secs(20), |v| v["event"] == "published")
        .await;
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    for n in 2..=30 {
        publish(&mut publisher, CHANNEL, n).await;
    }
    let last = script.expect_pub(Duration::from_secs(20), 30).await;
    assert_eq!(last["data"], json!({"n": 30}));
    assert_eq!(last["binary"], true, "the payload arrives as bytes");

    script.send("history").await;
    let h = script
        .expect(Duration::from_secs(20), |v| v["event"] == "history")
        .await;
    let pubs = h["publications"].as_array().expect("publications");
    let got: Vec<u64> = pubs.iter().filter_map(|p| p["offset"].as_u64()).collect();
    assert_eq!(got, (1..=30).collect::<Vec<u64>>(), "{h}");
    assert_eq!(pubs[0]["data"], json!({"from": "pb"}));
    assert_eq!(
        pubs[0]["user"], "alice",
        "client publishes carry the publisher"
    );
    assert_eq!(pubs[29]["data"], json!({"n": 30}));
    assert_eq!(h["offset"], 30);
    assert!(!h["epoch"].as_str().unwrap_or_default().is_empty(), "{h}");

    script.send("presence").await;
    let p = script
        .expect(Duration::from_secs(20), |v| v["event"] == "presence")
        .await;
    assert_eq!(
        p["clients"],
        json!([{"client": client_id, "user": "alice"}]),
        "{p}"
    );
    script.send("stats").await;
    let s = script
        .expect(Duration::from_secs(20), |v| v["event"] == "stats")
        .await;
    assert_eq!(
        (s["numClients"].clone(), s["numUsers"].clone()),
        (json!(1), json!(1))
    );

    // Kill the edge: the client reconnects to the second one and recovers
    // what was published meanwhile.
    e1.kill();
    for n in 31..=60 {
        publish(&mut publisher, CHANNEL, n).await;
    }
    script.expect_pub(Duration::from_secs(30), 60).await;
    let summary = script.summary().await;
    assert_eq!(
        offsets(&summary["offsets"]),
        (1..=60).collect::<Vec<u64>>(),
        "each publication once, in order"
    );
    let subs = summary["subscribed"].as_array().expect("subscribed list");
    assert!(subs.len() >= 2, "resubscribed on the second edge: {subs:?}");
    let resumed = subs.last().expect("a resubscribe");
    assert_eq!(resumed["wasRecovering"], true, "{resumed}");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    for p in summary["protocols"].as_array().expect("protocols") {
        assert_eq!(p, "centrifuge-protobuf");
    }
    script.finish().await;
}
