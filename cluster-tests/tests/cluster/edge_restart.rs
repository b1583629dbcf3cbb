//! Guarantees 2 and 3 from the subscriber's side, through real edges:
//! WebSocket subscribers spread over two `herald-edge` processes keep
//! receiving while publishers load ten channels; one edge is killed with
//! SIGKILL and restarted on its port, then the node the other edge is
//! linked to is killed. Every subscriber reconnects (its clients move to
//! the other edge), resubscribes with `recover` from the last
//! `(epoch, offset)` it saw, and must end with every acknowledged
//! publication of every channel exactly once, in offset order — or have
//! been told `recovered: false`, which this scenario does not expect.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::subscriber::{Subscriber, SubscriberOptions, check_subscriber};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, edge_token};

use crate::load::{Load, LoadSpec};

const POLICY: &str = r#"
[namespaces.er]
history_size = 5000
history_ttl_secs = 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_publication_across_edge_and_node_crashes() {
    let mut cluster = Cluster::start(3, ClusterOptions::default().with_policy(POLICY))
        .await
        .unwrap();
    let mut edges = [
        EdgeProc::start(&mut cluster, 101, &[1, 2, 3], &[])
            .await
            .unwrap(),
        EdgeProc::start(&mut cluster, 102, &[2, 3, 1], &[])
            .await
            .unwrap(),
    ];
    let spec = LoadSpec {
        namespace: "er",
        channels: 10,
        publishers: 4,
        total: 3000,
        pace: Duration::from_millis(5),
        attempt_timeout: Duration::from_secs(10),
        patience: crate::load::PATIENCE,
    };
    let channels: Vec<String> = (0..spec.channels).map(|i| spec.channel_of(i)).collect();
    let urls = [edges[0].ws_url(), edges[1].ws_url()];
    let subscribers: Vec<Subscriber> = (0..4)
        .map(|i| {
            let first = i % 2;
            Subscriber::spawn(SubscriberOptions {
                name: format!("s{i}"),
                urls: vec![urls[first].clone(), urls[1 - first].clone()],
                token: edge_token(&format!("user-{i}")),
                channels: channels.clone(),
            })
        })
        .collect();
    for s in &subscribers {
        s.wait_subscribed(Duration::from_secs(30)).await.unwrap();
    }

    let total = spec.total;
    let load = Load::start(&cluster, &cluster.ids(), spec);
    load.wait_done(total / 4, Duration::from_secs(180), "before the edge crash")
        .await;
    edges[0].process().kill().unwrap();
    load.wait_done(total / 2, Duration::from_secs(180), "with edge 101 down")
        .await;
    edges[0].process().restart().unwrap();
    edges[0].wait_linked(Duration::from_secs(60)).await.unwrap();
    let linked = edges[1].linked_node().await.expect("edge 102 is linked");
    let victim = cluster
        .ids()
        .into_iter()
        .find(|id| cluster.node(*id).grpc_addr().to_string() == linked)
        .expect("edge 102 links to a cluster node");
    cluster.node_mut(victim).kill().unwrap();
    load.wait_done(3 * total / 4, Duration::from_secs(180), "with a node down")
        .await;
    cluster.node_mut(victim).restart().unwrap();
    let (ledger, retries) = load.finish().await;

    let newest: BTreeMap<String, u64> = channels
        .iter()
        .filter_map(|c| Some((c.clone(), ledger.newest_acked_offset(c)?)))
        .collect();
    let mut violations = Vec::new();
    let (mut received, mut recovered, mut not_recovered, mut sessions) = (0, 0, 0, 0);
    for s in subscribers {
        if let Err(e) = s.wait_for(&newest, Duration::from_secs(60)).await {
            violations.push(format!("{e:#}"));
        }
        let record = s.stop().await;
        received += record.received();
        recovered += record.recovered();
        not_recovered += record.not_recovered();
        sessions += record.sessions;
        violations.extend(check_subscriber(&ledger, &record));
    }
    Verdict::new("edge_restart", &ledger, retries, violations)
        .fact("subscribers", 4)
        .fact("received", received)
        .fact("sessions", sessions)
        .fact("recovered", recovered)
        .fact("not_recovered", not_recovered)
        .violation_if(
            not_recovered > 0,
            "a resubscribe inside the history window was answered recovered: false",
        )
        .conclude();
}
