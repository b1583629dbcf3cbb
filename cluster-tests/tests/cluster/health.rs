//! The operations contract of `docs/guarantees.md` (health and readiness): liveness never
//! depends on cluster health, readiness does. A node that has lost its
//! quorum keeps answering `/healthz` with 200 (a liveness probe must never
//! restart nodes for a quorum problem) but must answer `/readyz` with 503,
//! so a Service stops routing publishers to a node that cannot commit, and
//! must refuse publishes rather than acknowledge what no majority stored
//! (guarantee 1). Once the quorum is back it is ready again. `/metrics`
//! serves Prometheus text; the standard gRPC health service reports
//! `herald.v1.Publisher` serving.

use std::time::{Duration, Instant};

use herald_cluster_tests::{Cluster, ClusterOptions, http_get};
use herald_proto::v1::PublishRequest;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Poll `path` on node `id` until it answers `status` (hang guard 30 s).
async fn wait_for_status(cluster: &Cluster, id: u64, path: &str, status: u16) -> String {
    let addr = cluster.node(id).http_addr();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = http_get(addr, path).await;
        match &got {
            Ok((code, body)) if *code == status => return body.clone(),
            _ => assert!(
                Instant::now() < deadline,
                "node {id} {path}: wanted {status}, last answer {got:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start a cluster, check every node's operations endpoints, then kill the
/// two nodes other than the one `pick` chooses given the leader, and check
/// the survivor: alive, not ready, refusing publishes; then heal.
async fn quorum_loss(pick: impl Fn(u64, &[u64]) -> u64) {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    cluster
        .wait_converged(Duration::from_secs(60))
        .await
        .unwrap();
    for id in cluster.ids() {
        let addr = cluster.node(id).http_addr();
        let (code, _) = http_get(addr, "/healthz").await.unwrap();
        assert_eq!(code, 200, "node {id} /healthz");
        wait_for_status(&cluster, id, "/readyz", 200).await;
        let health = HealthClient::new(herald_cluster_tests::client::channel(
            cluster.node(id).grpc_addr(),
        ))
        .check(HealthCheckRequest {
            service: "herald.v1.Publisher".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("node {id} grpc.health.v1 Check: {e}"));
        assert_eq!(
            health.into_inner().status,
            ServingStatus::Serving as i32,
            "node {id} gRPC health of herald.v1.Publisher"
        );
        let (code, metrics) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(code, 200, "node {id} /metrics");
        assert!(
            metrics.contains("# TYPE herald_"),
            "node {id} /metrics has no herald_ series:\n{metrics}"
        );
    }

    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let survivor = pick(leader, &cluster.ids());
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != survivor)
        .collect();
    for &id in &others {
        cluster.node_mut(id).kill().unwrap();
    }

    let publish = PublishRequest {
        channel: "orphan".to_string(),
        data: b"{}".to_vec().into(),
        ..Default::default()
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        cluster.publisher(survivor).publish(publish),
    )
    .await;
    match &outcome {
        Ok(Err(status)) => eprintln!("publish to node {survivor} without quorum: {status:?}"),
        Err(_) => eprintln!("publish to node {survivor} without quorum: no answer within 30 s"),
        Ok(Ok(_)) => {}
    }
    if let Ok(Ok(resp)) = outcome {
        panic!(
            "node {survivor} (leader was {leader}) acknowledged a publish with no quorum: {:?}",
            resp.into_inner()
        );
    }

    let why = wait_for_status(&cluster, survivor, "/readyz", 503).await;
    eprintln!("node {survivor} /readyz without quorum: {}", why.trim());
    for _ in 0..5 {
        let (code, _) = http_get(cluster.node(survivor).http_addr(), "/healthz")
            .await
            .unwrap();
        assert_eq!(code, 200, "/healthz must not depend on the quorum");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for &id in &others {
        cluster.node_mut(id).restart().unwrap();
    }
    cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    for id in cluster.ids() {
        wait_for_status(&cluster, id, "/readyz", 200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_without_quorum_is_alive_but_not_ready() {
    quorum_loss(|leader, ids| *ids.iter().find(|&&id| id != leader).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_without_quorum_is_alive_but_not_ready() {
    quorum_loss(|leader, _| leader).await;
}
