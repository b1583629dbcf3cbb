//! Ephemeral namespaces (history size 0) skip Raft: the node that receives
//! the publish hands it to its own edge links and pushes it over QUIC to the
//! nodes with interest. At most once, ordered per publisher; nothing is
//! stored, so no offset is given.

use std::time::Duration;

use herald_cluster_tests::client::reason_of;
use herald_cluster_tests::cluster::Cluster;
use herald_proto::v1::{PublishBatchRequest, PublishRequest};

use crate::support::{Link, certs, counter, eventually, quic_options};

const POLICY: &str = r#"
[namespaces.live]
history_size = 0
"#;

fn publish(channel: &str, i: u64) -> PublishRequest {
    PublishRequest {
        channel: channel.into(),
        data: format!("{{\"i\":{i}}}").into_bytes().into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_publications_skip_raft_and_arrive_in_order() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let mut cluster = Cluster::start(3, quic_options(tls.path()).with_policy(POLICY))
        .await
        .unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let (x, y) = (followers[0], followers[1]);
    for id in cluster.ids() {
        let http = cluster.node(id).http_addr();
        eventually("every node's QUIC address to be registered", || async {
            counter(http, "herald_peer_registered").await >= 1.0
        })
        .await;
    }
    let key = cluster.options().api_key.clone();
    let mut link = Link::open(cluster.node(x).grpc_addr(), &key).await;
    link.subscribe("live:feed").await;
    let x_http = cluster.node(x).http_addr();
    eventually("node x to register its interest", || async {
        counter(x_http, "herald_interest_changes_total").await >= 1.0
    })
    .await;
    let applied_before = counter(
        cluster.node(leader).http_addr(),
        "herald_publications_applied_total",
    )
    .await;

    // Published on y, a node without subscribers: it pushes to x over QUIC.
    let mut publisher = cluster.publisher(y);
    const N: u64 = 50;
    for i in 0..N {
        let r = publisher
            .publish(publish("live:feed", i))
            .await
            .expect("publish")
            .into_inner();
        assert_eq!(
            (r.offset, r.epoch.as_str()),
            (0, ""),
            "ephemeral publications have no position"
        );
    }
    let got = link.publications(N as usize).await;
    let order: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.data).into_owned())
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("{{\"i\":{i}}}")).collect();
    assert_eq!(
        order, expected,
        "every ephemeral publication once, in publish order"
    );
    assert!(got.iter().all(|p| p.offset == 0));

    assert_eq!(
        counter(
            cluster.node(leader).http_addr(),
            "herald_publications_applied_total"
        )
        .await,
        applied_before,
        "ephemeral publications must not go through Raft"
    );
    assert_eq!(
        counter(
            cluster.node(y).http_addr(),
            "herald_publications_ephemeral_total"
        )
        .await,
        N as f64
    );

    let mixed = PublishBatchRequest {
        publications: vec![publish("live:feed", 0), publish("kept", 0)],
    };
    let err = publisher
        .publish_batch(mixed)
        .await
        .expect_err("a mixed batch is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason_of(&err).as_deref(), Some("BATCH_MIXES_EPHEMERAL"));
}
