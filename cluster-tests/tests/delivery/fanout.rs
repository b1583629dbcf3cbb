//! Interest-filtered fan-out: with edges subscribed to `fan-a` on one
//! follower only, the leader's QUIC pushes reach that follower and carry
//! exactly `fan-a`'s publications; the other follower receives nothing over
//! QUIC. The edge link sees every `fan-a` publication once, in offset order
//! (guarantee 2), whichever path delivered it first.

use std::time::Duration;

use herald_cluster_tests::cluster::Cluster;
use herald_proto::v1::PublishRequest;

use crate::support::{Link, certs, counter, eventually, quic_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_pushes_only_to_interested_nodes() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let mut cluster = Cluster::start(3, quic_options(tls.path())).await.unwrap();
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
    let key = cluster.options().api_key.clone();
    for id in cluster.ids() {
        let http = cluster.node(id).http_addr();
        eventually("every node's QUIC address to be registered", || async {
            counter(http, "herald_peer_registered").await >= 1.0
        })
        .await;
    }

    let mut link = Link::open(cluster.node(x).grpc_addr(), &key).await;
    let ack = link.subscribe("fan-a").await;
    assert_eq!(ack.offset, 0, "a fresh channel starts at offset 0");
    let x_http = cluster.node(x).http_addr();
    eventually("node x to register its interest", || async {
        counter(x_http, "herald_interest_changes_total").await >= 1.0
    })
    .await;

    let mut publisher = cluster.publisher(leader);
    const N: u64 = 200;
    for i in 0..N {
        for channel in ["fan-a", "fan-b"] {
            let req = PublishRequest {
                channel: channel.into(),
                data: format!("{{\"i\":{i}}}").into_bytes().into(),
                ..Default::default()
            };
            publisher.publish(req).await.expect("publish");
        }
    }

    let got = link.publications(N as usize).await;
    let offsets: Vec<u64> = got.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>(), "once each, in order");
    assert!(got.iter().all(|p| p.channel == "fan-a"));

    let leader_http = cluster.node(leader).http_addr();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let received = counter(x_http, "herald_peer_received_publications_total").await;
        if received >= N as f64 {
            break;
        }
        let sent = counter(leader_http, "herald_peer_sent_publications_total").await;
        let dropped = counter(leader_http, "herald_peer_dropped_total").await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {x} received {received} of {N} over QUIC; the leader sent {sent}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives: fan-b was never pushed to x.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counter(x_http, "herald_peer_received_publications_total").await,
        N as f64,
        "node {x} received exactly fan-a's publications over QUIC"
    );
    let y_http = cluster.node(y).http_addr();
    assert_eq!(
        counter(y_http, "herald_peer_received_publications_total").await,
        0.0,
        "node {y} has no subscribers and must receive no channel traffic over QUIC"
    );
    assert_eq!(
        counter(
            cluster.node(leader).http_addr(),
            "herald_peer_sent_publications_total"
        )
        .await,
        N as f64,
        "the leader sent fan-a's publications once, to node {x} only"
    );
}
