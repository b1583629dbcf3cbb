//! Guarantee 3 across a restore from a backup: the whole cluster is lost
//! and restored from a copy of one node's `herald.redb` taken earlier, the
//! way `docs/operations.md` ("Backing up and restoring") describes: stop a
//! node, copy the file, start it; later, put the copy in one node's empty
//! data dir, run `herald-node recover`, start it, and bring the others
//! back with empty disks.
//!
//! Publications acknowledged after the backup are gone; a client that saw
//! them must not resume as if nothing happened. So every channel's epoch
//! changes (the offsets the backup held stay, later publications reuse the
//! offsets of the lost ones in the new epoch), no node holds a lost
//! publication, every publication acknowledged up to the backup and after
//! the restore is on every node at its offset, and two recording
//! subscribers that received the lost publications are told
//! `recovered: false` on every channel when they resume.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::ledger::{self, payload_id};
use herald_cluster_tests::load::Load;
use herald_cluster_tests::subscriber::{Tuning, finish_subscribers};
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, voters};

const SCENARIO: &str = "restore";

/// Ids of the publications acknowledged after the backup (lost by the
/// restore), and of those after the restore.
const LOST_BASE: u64 = 1_000_000_000;
const LOST: u64 = 50;
const AFTER_BASE: u64 = 2_000_000_000;
const AFTER: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_backup_bumps_every_epoch_and_tells_clients() {
    let opts = ClusterOptions {
        snapshot_every: Some(100),
        ..ClusterOptions::default().with_policy(crate::policy("rs", 900))
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let (restored, backed_up) = (ids[0], ids[2]);
    let edge = EdgeProc::start(&mut cluster, 101, &ids, &[]).await.unwrap();
    let spec = crate::steady_load("rs", 10);
    let channels = crate::channels_of(&spec);
    let load = Load::start(&cluster, &ids, spec.clone());
    // Subscribers hold an epoch once the channels exist (see `lost_quorum`).
    load.wait_acked_more(100, "before subscribing").await;
    let subscribers =
        crate::subscribers("s", 2, &[edge.ws_url()], &channels, Tuning::default()).await;
    load.wait_acked_more(300, "before the backup").await;
    load.stop();
    let (mut ledger, mut retries) = load.finish().await;
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .unwrap();

    // Back up: stop a node, copy its database, start it again.
    let at_backup = crate::positions(&cluster, backed_up, &channels).await;
    cluster
        .node_mut(backed_up)
        .terminate(Duration::from_secs(15))
        .await
        .unwrap();
    let backup = cluster.dir().join("backup.redb");
    std::fs::copy(
        cluster.node(backed_up).data_dir().join("herald.redb"),
        &backup,
    )
    .unwrap();
    cluster.node_mut(backed_up).restart().unwrap();
    cluster
        .wait_ready(backed_up, Duration::from_secs(60))
        .await
        .unwrap();

    // Publications after the backup, received by the subscribers.
    retries += crate::publish_each(&cluster, &ids, &mut ledger, &spec, LOST_BASE, LOST).await;
    let before_loss = crate::positions(&cluster, backed_up, &channels).await;
    let newest: BTreeMap<String, u64> = before_loss.iter().map(|(c, p)| (c.clone(), p.1)).collect();
    for s in &subscribers {
        s.wait_for(&newest, Duration::from_secs(60)).await.unwrap();
    }

    // Every node and disk lost; restore the backup on one node.
    for &id in &ids {
        cluster.node_mut(id).kill().unwrap();
        cluster.node_mut(id).wipe_data_dir().unwrap();
    }
    std::fs::copy(
        &backup,
        cluster.node(restored).data_dir().join("herald.redb"),
    )
    .unwrap();
    let report = crate::recover_and_lead(&mut cluster, restored).await;
    let mut violations = Vec::new();
    let after = crate::positions(&cluster, restored, &channels).await;
    let (changes, printed_wrong) = crate::epoch_changes(&report, &at_backup, &after);
    violations.extend(printed_wrong);
    for (c, (_, offset)) in &at_backup {
        if after[c].1 != *offset {
            violations.push(format!(
                "{c}: newest offset {} after the restore, {offset} in the backup",
                after[c].1
            ));
        }
    }
    crate::rejoin_empty(&mut cluster, &ids[1..]).await;
    let status = cluster.status(restored).await.unwrap();
    if voters(&status) != ids.iter().copied().collect() {
        violations.push(format!("voters after the restore: {:?}", voters(&status)));
    }
    retries += crate::publish_each(&cluster, &ids, &mut ledger, &spec, AFTER_BASE, AFTER).await;
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .unwrap();

    // The lost publications are on no node; everything else is, once.
    ledger.forget_acks(LOST_BASE..LOST_BASE + LOST);
    let mut lost_found = 0;
    for &id in &ids {
        for c in &channels {
            let h = cluster.history(id, c, 10_000).await.unwrap();
            for p in &h.publications {
                if payload_id(&p.data).is_some_and(|i| (LOST_BASE..LOST_BASE + LOST).contains(&i)) {
                    lost_found += 1;
                    violations.push(format!(
                        "node {id} {c}@{}: holds a publication acknowledged after the backup",
                        p.offset
                    ));
                }
            }
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
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("restored_on", restored)
        .fact("lost_after_backup", LOST)
        .fact("lost_found", lost_found)
        .fact("epochs_changed", changes.len())
        .subscribers(&tally)
        .conclude();
}
