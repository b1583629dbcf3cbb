//! Guarantee 2 at fan-out scale: 2 edges × 1,000 clients on one channel,
//! 1,000 publications; every client receives every publication, in order.
//! Each edge subscribes upstream once and encodes each publication once.

use std::collections::HashMap;
use std::time::Duration;

use herald_proto::v1::{PublishBatchRequest, PublishRequest};

use crate::harness::{EdgeProc, Script, cluster, token};

const CHANNEL: &str = "fanout";
const PER_EDGE: usize = 1000;
const PUBLICATIONS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_thousand_clients_each_receive_everything_in_order() {
    let cluster = cluster().await;
    let e1 = EdgeProc::start(&cluster, &[]).await;
    let e2 = EdgeProc::start(&cluster, &[]).await;
    let urls = format!("{},{}", e1.ws_url, e2.ws_url);
    let tok = token("fan");
    let per_edge = PER_EDGE.to_string();
    let expected = PUBLICATIONS.to_string();
    let mut script = Script::spawn("fanout.mjs", &[&urls, CHANNEL, &tok, &per_edge, &expected]);
    script
        .expect(Duration::from_secs(120), |v| v["event"] == "ready")
        .await;
    let mut publisher = cluster.publisher(cluster.ids()[0]);
    for batch in 0..(PUBLICATIONS / 50) {
        let publications = (0..50)
            .map(|i| PublishRequest {
                channel: CHANNEL.into(),
                event_type: String::new(),
                data: format!("{{\"n\":{}}}", batch * 50 + i + 1)
                    .into_bytes()
                    .into(),
                content_type: "application/json".into(),
                idempotency_key: String::new(),
                headers: HashMap::new(),
            })
            .collect();
        publisher
            .publish_batch(PublishBatchRequest { publications })
            .await
            .expect("publish batch");
    }
    let summary = script
        .expect(Duration::from_secs(240), |v| v["event"] == "summary")
        .await;
    assert_eq!(summary["subscribed"], 2 * PER_EDGE, "{summary}");
    assert_eq!(summary["complete"], 2 * PER_EDGE, "{summary}");
    assert_eq!(summary["outOfOrder"], 0, "{summary}");
    assert_eq!(summary["closed"], 0, "{summary}");
    script.finish().await;
}
