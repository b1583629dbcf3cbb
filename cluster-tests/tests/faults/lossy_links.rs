//! Guarantees 1 and 5 over bad links: every node loses 20% of the packets
//! it sends to its peers and delays the rest by 100 ms (netem's `loss 20%
//! delay 100ms`, on each node's sending side, so every peer link is
//! impaired in both directions). Raft's heartbeats, votes and appends all
//! cross those links; publishers still reach every node directly.
//!
//! Progress must continue — publications keep being acknowledged while the
//! links are bad — and the checker must pass: lost and late packets, TCP
//! retransmits and any elections they cause may slow commits down, never
//! lose or duplicate one.
//!
//! Raft timers are set for such a network as an operator would set them
//! for a WAN: openraft gives each AppendEntries (heartbeats included) one
//! heartbeat interval to complete, so `--heartbeat-ms` must exceed the
//! peer round trip (here 200 ms plus TCP retransmits of lost segments).
//! With the tests' usual 50 ms heartbeat every append times out and the
//! cluster stalls; that is a configuration limit, not what this scenario
//! is about.

use std::time::Duration;

use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict};

use crate::Unacknowledged;

const SCENARIO: &str = "lossy_links";

const NETEM: &str = "loss 20% delay 100ms";

/// Five times the impaired round trip.
const HEARTBEAT_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_continues_with_loss_and_delay_on_every_peer_link() {
    if !crate::network_required(SCENARIO) {
        return;
    }
    let opts = ClusterOptions {
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_ms: 5 * HEARTBEAT_MS,
        ..ClusterOptions::default().with_policy(crate::policy("ll", 900))
    };
    let mut cluster = Cluster::start_isolated(3, opts).await.unwrap();
    let ids = cluster.ids();
    let spec = LoadSpec {
        namespace: "ll",
        channels: 20,
        publishers: 8,
        total: u64::MAX,
        pace: Duration::from_millis(2),
        // COMMIT_TIMEOUT is 10 election timeouts (50 s) here.
        attempt_timeout: Duration::from_secs(60),
        patience: Duration::from_secs(240),
    };
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(200, "on healthy links").await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let term_before = cluster.status(leader).await.unwrap().term;

    for &id in &ids {
        cluster.net().netem(id, NETEM).unwrap();
    }
    let acked_before = load.acked();
    eprintln!("{NETEM} on every peer link after {acked_before} acks");
    load.wait_acked_more(150, "with lossy, slow links").await;
    let acked_impaired = load.acked() - acked_before;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(120))
        .await
        .unwrap();
    let term_impaired = cluster.status(leader).await.unwrap().term;
    // The fault took effect: every emulator is alive and dropped and
    // delayed packets (a dead one would leave its links unimpaired).
    let mut violations = Vec::new();
    let (mut dropped, mut delayed) = (0, 0);
    for &id in &ids {
        let (problems, effect) = cluster.net().netem_problems(id);
        violations.extend(problems);
        dropped += effect.dropped;
        delayed += effect.delayed;
        cluster.net().clear_netem(id).unwrap();
    }

    load.wait_acked_more(100, "after the links recovered").await;
    let (ledger, retries, found) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    violations.extend(found);
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("netem", NETEM.replace(' ', "_"))
        .fact("packets_dropped", dropped)
        .fact("packets_delayed", delayed)
        .fact("acked_while_impaired", acked_impaired)
        .fact("terms_while_impaired", term_impaired - term_before)
        .conclude();
}
