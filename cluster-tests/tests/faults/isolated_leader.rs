//! Guarantee 1 — an acknowledged publish is on a majority of voters' disks —
//! when the network cuts the Raft leader off from every follower while
//! publishers keep publishing, in a cluster of five voters (the largest
//! Raft group Herald runs: a majority of three must elect and commit).
//!
//! The cut leader still runs and still believes it leads for a while, so it
//! is the one node that could acknowledge a publish it can never commit. A
//! probe publisher pinned to it sends publications during the partition:
//! none may be acknowledged (the node answers `NO_QUORUM` or
//! `COMMIT_TIMEOUT`). Meanwhile the four followers must elect a leader and
//! keep acknowledging the load, which rotates over all five nodes. After
//! healing, the old leader must have stepped down under the new one, the
//! probes are retried with their keys (each stored once), and the checker
//! verifies every node's history against everything acknowledged.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, ledger, reason_of};

use crate::Unacknowledged;

const SCENARIO: &str = "isolated_leader";

/// Probe publication ids: far above anything the load reaches.
const PROBE_BASE: u64 = 1_000_000_000;
const PROBES: u64 = 20;
const PROBE_CHANNEL: &str = "il:probe";

/// Voters: five, so the majority side is more than a pair.
const VOTERS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_acknowledges_nothing_and_the_majority_moves_on() {
    if !crate::network_required(SCENARIO) {
        return;
    }
    let mut cluster = Cluster::start_isolated(
        VOTERS,
        ClusterOptions::default().with_policy(crate::policy("il", 900)),
    )
    .await
    .unwrap();
    let ids = cluster.ids();
    let spec = LoadSpec {
        namespace: "il",
        channels: 20,
        publishers: 6,
        total: PROBE_BASE,
        pace: Duration::from_millis(2),
        // The cut leader may hold a publish until COMMIT_TIMEOUT (10
        // election timeouts); give up on it sooner and retry elsewhere.
        attempt_timeout: Duration::from_secs(2),
        ..LoadSpec::default()
    };
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(300, "before the partition").await;

    let old = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let old_term = cluster.status(old).await.unwrap().term;
    let majority: Vec<u64> = ids.iter().copied().filter(|&id| id != old).collect();
    cluster.net().partition(&[old], &majority).unwrap();
    eprintln!(
        "cut leader {old} (term {old_term}) off from {majority:?} after {} acks",
        load.acked()
    );

    // The probe runs while the majority elects, and finishes before healing.
    let probe = {
        let mut client = cluster.publisher(old);
        let ledger = load.ledger();
        tokio::spawn(async move {
            let mut acked_by_minority = Vec::new();
            let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
            for id in PROBE_BASE..PROBE_BASE + PROBES {
                ledger.lock().unwrap().sent(id, PROBE_CHANNEL);
                let call = client.publish(ledger::request(id, PROBE_CHANNEL));
                let reason = match tokio::time::timeout(Duration::from_secs(30), call).await {
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        acked_by_minority.push((id, resp.offset));
                        ledger.lock().unwrap().acked(id, &resp);
                        "ACKNOWLEDGED".to_string()
                    }
                    Ok(Err(status)) => {
                        let why =
                            reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code()));
                        ledger.lock().unwrap().failed(id, why.clone());
                        why
                    }
                    Err(_) => {
                        ledger.lock().unwrap().failed(id, "no answer".into());
                        "NO_ANSWER_30S".to_string()
                    }
                };
                *reasons.entry(reason).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (acked_by_minority, reasons)
        })
    };

    let new = cluster
        .wait_for_leader_among(&majority, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!("majority {majority:?} elected {new}");
    load.wait_acked_more(300, "on the majority side").await;
    let (acked_by_minority, reasons) = probe.await.expect("probe task");
    eprintln!("probes to the cut leader answered {reasons:?}");

    cluster.net().heal().unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    let rejoined = cluster.status(old).await.unwrap();
    load.wait_acked_more(200, "after healing").await;
    // The probes failed on purpose: retried with their keys, each is
    // stored once.
    let (ledger, retries, mut violations) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Retry).await;
    for (id, offset) in &acked_by_minority {
        violations.push(format!(
            "the cut-off leader {old} acknowledged probe {id} at offset {offset} during the partition"
        ));
    }
    if new == old {
        violations.push(format!(
            "the majority {majority:?} re-elected the cut-off node {old}"
        ));
    }
    if !(rejoined.term > old_term && rejoined.leader_id == Some(leader)) {
        violations.push(format!(
            "after healing, node {old} (leader in term {old_term}) did not follow leader {leader} in a later term: {rejoined:?}"
        ));
    }
    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}:{n}")).collect();
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact(
            "minority_acks",
            format!("{}/{PROBES}", acked_by_minority.len()),
        )
        .fact("minority_answers", reasons.join(","))
        .fact("voters", VOTERS)
        .fact("leaders", format!("{old}->{new}"))
        .conclude();
}
