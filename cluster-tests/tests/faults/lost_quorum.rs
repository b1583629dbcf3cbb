//! Guarantees 1 and 3 when a majority of voters is lost for good: two of
//! three voters are killed with SIGKILL and their data directories deleted.
//! Raft cannot elect a leader, and the survivor alone acknowledges nothing.
//! The operator stops the survivor, runs `herald-node recover` on its data
//! dir (a one-node cluster keeping every entry it had), starts it, and
//! brings the lost nodes back with empty disks (`docs/operations.md`,
//! "Lost quorum").
//!
//! The load is quiesced first and every node has applied the leader's
//! commit index, so the survivor holds every acknowledged publication: the
//! history checker then finds each one, at its offset, on every node, and
//! every node holds the same history. The recovery cannot prove that
//! clients saw nothing beyond the survivor's log, so every channel's epoch
//! changes exactly once: the old epoch before, one new epoch on every node
//! after (the one `recover` printed), and every publication acknowledged
//! after the recovery in it. Two recording subscribers on an edge, which
//! subscribed once the channels existed (so they hold an epoch), resume
//! across the recovery and are told `recovered: false` on every channel —
//! never a silent rewind.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::ledger;
use herald_cluster_tests::load::Load;
use herald_cluster_tests::subscriber::{Event, Record, Tuning, finish_subscribers};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, voters};

const SCENARIO: &str = "lost_quorum";

/// Probe publication ids, and those of the publications after the
/// recovery: far above anything the load reaches.
const PROBE_BASE: u64 = 1_000_000_000;
const PROBES: u64 = 5;
const AFTER_BASE: u64 = 2_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_majority_recovered_from_the_survivor_with_every_acknowledged_publication() {
    // Snapshots every 100 entries: the survivor's data is a snapshot plus
    // the log after it, and recovery replays both.
    let opts = ClusterOptions {
        snapshot_every: Some(100),
        ..ClusterOptions::default().with_policy(crate::policy("lq", 900))
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let survivor = ids[2];
    let lost: Vec<u64> = ids[..2].to_vec();
    let edge = EdgeProc::start(&mut cluster, 101, &[survivor, lost[0], lost[1]], &[])
        .await
        .unwrap();
    let spec = crate::steady_load("lq", 10);
    let channels = crate::channels_of(&spec);
    let load = Load::start(&cluster, &ids, spec.clone());
    // Subscribe once every channel exists, so each subscriber holds an
    // epoch: a client that subscribed before a channel's first publication
    // holds none, and a resume without an epoch means "the current one"
    // (docs/operations.md, "Lost quorum").
    load.wait_acked_more(100, "before subscribing").await;
    let subscribers =
        crate::subscribers("s", 2, &[edge.ws_url()], &channels, Tuning::default()).await;
    load.wait_acked_more(500, "before the loss").await;

    // Quiesce: nothing in flight, every node applied the leader's commit.
    load.stop();
    let (mut ledger, mut retries) = load.finish().await;
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .unwrap();
    let before = crate::positions(&cluster, survivor, &channels).await;
    let newest: BTreeMap<String, u64> = before.iter().map(|(c, p)| (c.clone(), p.1)).collect();
    for s in &subscribers {
        s.wait_for(&newest, Duration::from_secs(60)).await.unwrap();
    }

    let mut violations = Vec::new();
    // The command refuses a data dir a running node holds.
    let in_use = crate::herald_node_offline(&cluster, survivor, "recover");
    if in_use.status.success() {
        violations.push(format!(
            "recover ran on the data dir of running node {survivor}: {}",
            String::from_utf8_lossy(&in_use.stdout)
        ));
    }

    for &id in &lost {
        cluster.node_mut(id).kill().unwrap();
        cluster.node_mut(id).wipe_data_dir().unwrap();
    }
    eprintln!("killed nodes {lost:?} and deleted their data dirs; survivor {survivor}");

    // The survivor alone acknowledges nothing.
    let mut probe = cluster.publisher(survivor);
    let mut probe_acks = 0;
    for id in PROBE_BASE..PROBE_BASE + PROBES {
        let channel = spec.channel_of(id);
        ledger.sent(id, &channel);
        let call = probe.publish(ledger::request(id, &channel));
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), call).await {
            probe_acks += 1;
            violations.push(format!(
                "the survivor alone acknowledged probe {id} at offset {}",
                resp.into_inner().offset
            ));
        }
    }

    // The runbook: stop the survivor, recover its data dir, start it alone.
    let exit = cluster
        .node_mut(survivor)
        .terminate(Duration::from_secs(15))
        .await;
    eprintln!("survivor {survivor} stopped: {exit:?}");
    let inspected = crate::herald_node_offline(&cluster, survivor, "inspect");
    eprintln!(
        "inspect:\n{}{}",
        String::from_utf8_lossy(&inspected.stdout),
        String::from_utf8_lossy(&inspected.stderr)
    );
    let report = crate::recover_and_lead(&mut cluster, survivor).await;
    let alone = cluster.status(survivor).await.unwrap();
    if voters(&alone) != [survivor].into() {
        violations.push(format!(
            "after recover, voters are {:?}, not the survivor alone",
            voters(&alone)
        ));
    }
    let after = crate::positions(&cluster, survivor, &channels).await;
    let (changes, printed_wrong) = crate::epoch_changes(&report, &before, &after);
    violations.extend(printed_wrong);
    for (c, (old_epoch, old_offset)) in &before {
        if after[c].1 < *old_offset {
            violations.push(format!(
                "{c}: newest offset {} after recover, {old_offset} before",
                after[c].1
            ));
        }
        if after[c].0 == *old_epoch {
            violations.push(format!("{c}: epoch {old_epoch:?} kept across the recovery"));
        }
    }

    // It acknowledges alone, then with the lost nodes back on empty disks.
    retries +=
        crate::publish_each(&cluster, &[survivor], &mut ledger, &spec, AFTER_BASE, 100).await;
    crate::rejoin_empty(&mut cluster, &lost).await;
    eprintln!("nodes {lost:?} are voters again");
    retries += crate::publish_each(&cluster, &ids, &mut ledger, &spec, AFTER_BASE + 100, 100).await;
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .unwrap();

    // Exactly one change: the final epoch is the one right after recovery.
    let last = crate::positions(&cluster, survivor, &channels).await;
    for (c, (new, _)) in &after {
        if last[c].0 != *new {
            violations.push(format!(
                "{c}: epoch {new:?} after the recovery changed again to {:?}",
                last[c].0
            ));
        }
    }
    violations.extend(ledger.carry_over_epochs(&changes));
    violations.extend(ledger::verify_every_node(&cluster, &ledger, &ids, 10_000).await);
    let (tally, found, records) =
        finish_subscribers(subscribers, &ledger, Duration::from_secs(120)).await;
    violations.extend(found);
    let new_epochs: BTreeMap<String, String> = changes
        .iter()
        .map(|(c, (_, n))| (c.clone(), n.clone()))
        .collect();
    for r in &records {
        violations.extend(crate::told_of_new_epochs(r, &new_epochs));
    }
    let kept = report
        .lines()
        .find_map(|l| l.strip_prefix("entries_kept "))
        .unwrap_or("?")
        .to_string();
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("survivor", survivor)
        .fact("leader_after", survivor)
        .fact("probe_acks", format!("{probe_acks}/{PROBES}"))
        .fact("entries_kept", kept)
        .fact("epochs_changed", changes.len())
        .subscribers(&tally)
        .conclude();
}

/// The planted bugs of [`crate::told_of_new_epochs`]: a resume answered
/// `recovered: true` in the new epoch, and a client never told of it.
#[test]
fn told_of_new_epochs_catches_silent_rewinds() {
    let subscribed = |epoch: &str, recovering, recovered| Event::Subscribed {
        epoch: epoch.into(),
        offset: 5,
        recovering,
        recovered,
    };
    let record = |events: Vec<Event>| Record {
        name: "t".into(),
        channels: [("a".to_string(), events)].into(),
        ..Record::default()
    };
    let new: BTreeMap<String, String> = [("a".to_string(), "new".to_string())].into();
    let told = record(vec![
        subscribed("old", false, false),
        subscribed("new", true, false),
    ]);
    assert!(crate::told_of_new_epochs(&told, &new).is_empty());
    let silent = record(vec![
        subscribed("old", false, false),
        subscribed("new", true, true),
    ]);
    assert_eq!(crate::told_of_new_epochs(&silent, &new).len(), 1);
    let never = record(vec![subscribed("old", false, false)]);
    assert_eq!(crate::told_of_new_epochs(&never, &new).len(), 1);
}
