//! Guarantees 1 and 5 across a rolling restart of every node, and 2 and 3
//! across a rolling restart of every edge — what every deploy does — with
//! publishers and subscribers running throughout.
//!
//! Each node in turn gets SIGTERM (it stops taking publishes with the
//! retryable `LEADER_STEPPING_DOWN`, hands leadership over if it leads, and
//! must exit cleanly), is started again on the same data directory, and the
//! next one goes only once it answers `/readyz` and the cluster has
//! acknowledged more publications; the edges linked to it move to another
//! node. Then each of the two edges in turn gets SIGTERM (it tells its
//! clients to reconnect elsewhere, code 3001, and must exit cleanly), is
//! started again on its port, and the next goes once it is linked and more
//! was acknowledged. Two rounds, so every node restarts twice (once or more
//! as the leader) and every edge twice.
//!
//! Four recording subscribers on twenty channels, spread over both edges,
//! follow their edge's shutdown to the other edge and resubscribe with
//! `recover`; each must end with every acknowledged publication exactly
//! once, in order. A restart is over in seconds, far inside the history
//! window, so a `recovered: false` is a violation here.

use std::time::Duration;

use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::load::Load;
use herald_cluster_tests::subscriber::{Tuning, finish_subscribers};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict};

use crate::Unacknowledged;

const SCENARIO: &str = "rolling_restart";

/// How long a process may take to exit after SIGTERM before it is killed
/// (and the scenario fails): a node steps down within 5 s, an edge gives
/// its clients 5 s to leave.
const GRACE: Duration = Duration::from_secs(15);

/// A violation unless `exit` is a clean exit. A process that does not exit
/// in time was killed by the harness, so the scenario can go on.
fn unclean(what: &str, exit: std::io::Result<std::process::ExitStatus>) -> Option<String> {
    match exit {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("{what} exited with {status} on SIGTERM")),
        Err(e) => Some(format!("{what} on SIGTERM: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node_and_every_edge_under_load() {
    // Snapshots every few hundred entries, as a long-lived cluster has them:
    // each node restarts from a snapshot plus the log after it.
    let opts = ClusterOptions {
        snapshot_every: Some(200),
        ..ClusterOptions::default().with_policy(crate::policy("rr", 900))
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let mut edges = vec![
        EdgeProc::start(&mut cluster, 101, &[1, 2, 3], &[])
            .await
            .unwrap(),
        EdgeProc::start(&mut cluster, 102, &[2, 3, 1], &[])
            .await
            .unwrap(),
    ];
    let spec = crate::steady_load("rr", 20);
    let channels = crate::channels_of(&spec);
    let urls: Vec<String> = edges.iter().map(EdgeProc::ws_url).collect();
    let subscribers = crate::subscribers("s", 4, &urls, &channels, Tuning::default()).await;
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(200, "before the first restart").await;

    let mut violations = Vec::new();
    let mut leaders = Vec::new();
    let mut restarted = Vec::new();
    for _round in 0..2 {
        for &id in &ids {
            let leader = cluster
                .wait_for_leader(Duration::from_secs(60))
                .await
                .unwrap();
            leaders.push(leader);
            let exit = cluster.node_mut(id).terminate(GRACE).await;
            violations.extend(unclean(&format!("node {id}"), exit));
            cluster.node_mut(id).restart().unwrap();
            cluster
                .wait_ready(id, Duration::from_secs(60))
                .await
                .unwrap();
            eprintln!(
                "node {id} (leader was {leader}) restarted and ready after {} acks",
                load.acked()
            );
            load.wait_acked_more(200, &format!("after restarting node {id}"))
                .await;
            restarted.push(format!("n{id}"));
        }
        for edge in &mut edges {
            let id = edge.id();
            let exit = edge.process().terminate(GRACE).await;
            violations.extend(unclean(&format!("edge {id}"), exit));
            edge.process().restart().unwrap();
            let node = edge.wait_linked(Duration::from_secs(60)).await.unwrap();
            eprintln!(
                "edge {id} restarted and linked to {node} after {} acks",
                load.acked()
            );
            load.wait_acked_more(200, &format!("after restarting edge {id}"))
                .await;
            restarted.push(format!("e{id}"));
        }
    }
    let (ledger, retries, found) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    violations.extend(found);
    let (tally, found, records) =
        finish_subscribers(subscribers, &ledger, Duration::from_secs(120)).await;
    violations.extend(found);
    violations.extend(crate::unexpected_not_recovered(&records));
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("restarted", restarted.join(","))
        .fact(
            "leader_before_each",
            format!("{leaders:?}").replace(' ', ""),
        )
        .subscribers(&tally)
        .conclude();
}
