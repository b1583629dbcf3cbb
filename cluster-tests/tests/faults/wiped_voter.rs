//! Guarantee 1 when a voter that holds acknowledged entries loses its disk
//! and a quorum is then formed around it. The sequence that loses an
//! acknowledged publication when a wiped node still acts as the member it
//! was (it grants its vote with an empty log):
//!
//! 1. node Z is cut off; the load goes on, so publications are
//!    acknowledged with only A and B holding them;
//! 2. A is killed and its data directory deleted; B is killed;
//! 3. Z's partition heals and A restarts with an empty disk: alive are A
//!    (empty) and Z (behind). If A votes for Z, Z leads a quorum {Z, A}
//!    without the acknowledged entries, and when B returns its log is
//!    overwritten by Z's;
//! 4. B restarts.
//!
//! What must happen instead: A refuses every vote and append addressed to
//! its old incarnation, so no leader is elected until B is back (a
//! majority of the members that hold the log); then the cluster replaces A
//! by its new incarnation (removed, re-added as a learner, promoted once it
//! holds the log) and every node ends with every acknowledged publication.

use std::time::{Duration, Instant};

use herald_cluster_tests::client::http_get;
use herald_cluster_tests::ledger;
use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, voters};

const SCENARIO: &str = "wiped_voter";

/// How long the two survivors {A (wiped), Z (behind)} are watched for a
/// leader that must not appear: many election timeouts.
const WATCH: Duration = Duration::from_secs(8);

/// `herald_raft_refused_total` on node `id` (0 if absent).
async fn refused(cluster: &Cluster, id: u64) -> f64 {
    let Ok((200, body)) = http_get(cluster.node(id).http_addr(), "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .find_map(|l| l.strip_prefix("herald_raft_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_never_elects_a_leader_without_acknowledged_entries() {
    if !crate::network_required(SCENARIO) {
        return;
    }
    let opts = ClusterOptions::default().with_policy(crate::policy("wv", 900));
    let mut cluster = Cluster::start_isolated(3, opts).await.unwrap();
    let ids = cluster.ids();
    let spec = LoadSpec {
        attempt_timeout: Duration::from_secs(2),
        ..crate::steady_load("wv", 20)
    };
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(200, "before the partition").await;

    // 1. Z (a follower) falls behind while A and B acknowledge.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let z = *ids.iter().find(|&&id| id != leader).unwrap();
    let a = *ids.iter().find(|&&id| id != leader && id != z).unwrap();
    let b = leader;
    cluster.net().partition(&[z], &[a, b]).unwrap();
    let z_applied = cluster.status(z).await.unwrap().applied_index;
    load.wait_acked_more(300, "with Z cut off").await;
    load.stop();
    let (ledger, retries) = load.finish().await;
    let b_committed = cluster.status(b).await.unwrap().committed_index;
    eprintln!(
        "Z = node {z} cut off at applied {z_applied}; A = {a} and B = {b} committed {b_committed}"
    );

    // 2. A loses its disk, B crashes.
    cluster.node_mut(a).kill().unwrap();
    cluster.node_mut(a).wipe_data_dir().unwrap();
    cluster.node_mut(b).kill().unwrap();

    // 3. Z heals, A restarts empty: no leader may be elected by the two.
    cluster.net().heal().unwrap();
    cluster.node_mut(a).restart().unwrap();
    let mut violations = Vec::new();
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        for id in [a, z] {
            if let Ok(s) = cluster.status(id).await
                && s.state == "leader"
            {
                violations.push(format!(
                    "node {id} became leader while only the wiped node {a} and the lagging \
                     node {z} were up: {s:?}"
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusals = refused(&cluster, a).await;
    if refusals == 0.0 {
        violations.push(format!(
            "the wiped node {a} refused no raft request addressed to its old incarnation: \
             was it ever asked to vote?"
        ));
    }
    let waiting = cluster
        .status(a)
        .await
        .map(|s| s.joining)
        .unwrap_or_default();
    eprintln!(
        "with B down: no leader among {{{a}, {z}}} for {WATCH:?}; node {a} refused {refusals} \
         raft requests; it says: {waiting:?}"
    );

    // 4. B returns: a leader with the log; A is replaced by its new
    // incarnation and becomes a voter again once it holds the log.
    cluster.node_mut(b).restart().unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(90))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let rejoined = loop {
        let s = cluster.status(leader).await.unwrap();
        let own = cluster.status(a).await.ok();
        let incarnation = own.as_ref().map_or(0, |o| o.incarnation);
        let recorded = s.members.iter().find(|m| m.id == a).map(|m| m.incarnation);
        if voters(&s).contains(&a) && recorded == Some(incarnation) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "node {a} was not re-added as a voter under its new incarnation {incarnation}: \
             leader {leader} records {recorded:?}; {s:?}\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "node {a} is a voter again under its new incarnation: {:?}",
        rejoined.members
    );

    // Every publication acknowledged before the crash, on every node.
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .unwrap();
    violations.extend(ledger::verify_every_node(&cluster, &ledger, &ids, 10_000).await);
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("wiped", a)
        .fact("lagging", z)
        .fact("refused", refusals)
        .conclude();
}
