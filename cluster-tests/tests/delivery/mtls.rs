//! Mutual TLS on the delivery plane: a node whose certificate comes from
//! another CA is refused by its peers, and they by it. Delivery to its edge
//! links still has no gap, because every voter also applies the Raft log.

use std::time::Duration;

use herald_cluster_tests::cluster::Cluster;
use herald_proto::v1::PublishRequest;

use crate::support::{Link, certs, counter, eventually, quic_args, quic_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_a_foreign_ca_is_refused() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let foreign = tempfile::tempdir().unwrap();
    certs(foreign.path());
    let mut cluster = Cluster::start(3, quic_options(tls.path())).await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();

    // Node 4 joins with certificates from the foreign CA.
    let mut opts = cluster.options().clone();
    opts.extra_args = quic_args(foreign.path());
    cluster.add_node_with(4, true, &opts).unwrap();
    cluster
        .wait_for_member(4, Some("learner"), Duration::from_secs(30))
        .await
        .unwrap();
    let key = cluster.options().api_key.clone();
    let mut link = Link::open(cluster.node(4).grpc_addr(), &key).await;
    link.subscribe("mtls").await;
    let http4 = cluster.node(4).http_addr();
    eventually("node 4 to register its interest", || async {
        counter(http4, "herald_interest_changes_total").await >= 1.0
    })
    .await;

    let mut publisher = cluster.publisher(leader);
    for i in 0..20 {
        let req = PublishRequest {
            channel: "mtls".into(),
            data: format!("{{\"i\":{i}}}").into_bytes().into(),
            ..Default::default()
        };
        publisher.publish(req).await.expect("publish");
    }
    // The edge link still sees every publication once, in order (from the
    // Raft log node 4 replicates as a learner).
    let got = link.publications(20).await;
    assert_eq!(
        got.iter().map(|p| p.offset).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );

    eventually("node 4 to refuse the leader's certificate", || async {
        counter(http4, "herald_peer_refused_total").await >= 1.0
    })
    .await;
    assert_eq!(
        counter(http4, "herald_peer_received_publications_total").await,
        0.0,
        "nothing may arrive over a connection from another CA"
    );
}
