//! Guarantee 1 at start-up: a node bootstraps a cluster only on explicit
//! answers. Node 1 — the lowest id, the one that bootstraps from an empty
//! disk — loses its disk and restarts while cut off from both peers. Its
//! peers' silence must not read as "no cluster": it must not initialize a
//! second cluster (which would mint new epochs and a history of its own),
//! must say in `/readyz` why it waits, and once the partition heals it
//! rejoins the cluster it belonged to, under a new incarnation.

use std::time::{Duration, Instant};

use herald_cluster_tests::client::http_get;
use herald_cluster_tests::load::Load;
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, voters};

use crate::Unacknowledged;

const SCENARIO: &str = "bootstrap_partition";

/// What a node logs when it initializes a cluster (`node/src/startup.rs`).
const BOOTSTRAP_LINE: &str = "bootstrapped a new cluster";

/// How long the cut-off node is watched for a bootstrap that must not
/// happen.
const WATCH: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_empty_node_never_bootstraps_a_second_cluster() {
    if !crate::network_required(SCENARIO) {
        return;
    }
    let opts = ClusterOptions::default().with_policy(crate::policy("bp", 900));
    let mut cluster = Cluster::start_isolated(3, opts).await.unwrap();
    let ids = cluster.ids();
    let first = ids[0];
    let others: Vec<u64> = ids[1..].to_vec();
    let load = Load::start(&cluster, &others, crate::steady_load("bp", 20));
    load.wait_acked_more(300, "before the wipe").await;

    cluster.node_mut(first).kill().unwrap();
    cluster.node_mut(first).wipe_data_dir().unwrap();
    cluster.net().partition(&[first], &others).unwrap();
    let log_before = std::fs::read_to_string(cluster.node(first).log_path())
        .unwrap_or_default()
        .len();
    cluster.node_mut(first).restart().unwrap();
    eprintln!("node {first} wiped and restarted, cut off from {others:?}");

    let mut violations = Vec::new();
    tokio::time::sleep(WATCH).await;
    load.wait_acked_more(100, "while node 1 is cut off").await;
    let log = std::fs::read_to_string(cluster.node(first).log_path()).unwrap_or_default();
    if log[log_before.min(log.len())..].contains(BOOTSTRAP_LINE) {
        violations.push(format!(
            "node {first} bootstrapped a cluster while its peers could not answer"
        ));
    }
    let readyz = http_get(cluster.node(first).http_addr(), "/readyz").await;
    match &readyz {
        Ok((503, body)) if body.contains("not bootstrapping until every listed peer answers") => {}
        other => violations.push(format!(
            "node {first}'s /readyz does not say why it waits: {other:?}"
        )),
    }
    eprintln!("node {first} while cut off: /readyz {readyz:?}");

    cluster.net().heal().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let leader = cluster
            .wait_for_leader_among(&others, Duration::from_secs(60))
            .await
            .unwrap();
        let s = cluster.status(leader).await.unwrap();
        let own = cluster
            .status(first)
            .await
            .map(|s| s.incarnation)
            .unwrap_or(0);
        let recorded = s
            .members
            .iter()
            .find(|m| m.id == first)
            .map(|m| m.incarnation);
        if voters(&s).contains(&first) && recorded == Some(own) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {first} did not rejoin as a voter under incarnation {own}: {s:?}\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.wait_acked_more(200, "after the rejoin").await;
    let (ledger, retries, found) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    violations.extend(found);
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("wiped", first)
        .fact("watched_secs", WATCH.as_secs())
        .conclude();
}
