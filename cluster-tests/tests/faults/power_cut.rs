//! Guarantee 1 — an acknowledged publish is fsynced on a majority of
//! voters — when every voter loses power at once.
//!
//! Every other crash in the suite is a SIGKILL, which keeps the kernel's
//! page cache: a write the node never fsynced still reaches the disk. Here
//! each node's data directory is on a lazy disk (`cluster-tests/src/lazyfs.rs`)
//! that keeps every write since the file's last `fsync`/`fdatasync` in
//! memory. Under load, at a random moment from a printed seed (the first
//! one after it at which a disk has unsynced writes: the disks are frozen
//! then), all three voters get SIGKILL within milliseconds of each other,
//! every write not yet synced is discarded from every disk, and the nodes
//! start again from what is durable. Three such cuts in one run; after each the
//! cluster must elect a leader and keep acknowledging. At the end the
//! checker reads every node's history: every acknowledged publication must
//! be there, at the offset its acknowledgement named, on every node — an
//! acknowledgement given before the data was on a majority's disks would
//! show up as a lost or re-used offset. The cuts must have discarded
//! something (the verdict's `lost_unsynced_*`), or the fault was not shown
//! to happen.

use std::time::Duration;

use herald_cluster_tests::lazyfs::{Discarded, LazyMount};
use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::rng::SplitMix64;
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, announce};

use crate::Unacknowledged;

const SCENARIO: &str = "power_cut";

/// Power cuts in one run.
const CUTS: u32 = 3;

/// `HERALD_POWER_CUT_SEED` replays a run's schedule of cuts.
const SEED_VAR: &str = "HERALD_POWER_CUT_SEED";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_voter_loses_power_at_once_and_nothing_acknowledged_is_lost() {
    // Never skipped: without FUSE the scenario cannot show anything.
    if let Err(why) = LazyMount::available() {
        panic!("{SCENARIO} needs FUSE (/dev/fuse and fusermount3, Debian package fuse3): {why}");
    }
    let seed = match std::env::var(SEED_VAR) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={v:?} is not a number")),
        Err(_) => SplitMix64::fresh_seed(),
    };
    announce(format!(
        "{SCENARIO}: seed={seed} (replay: {SEED_VAR}={seed} cargo test -p herald-cluster-tests --test faults {SCENARIO})"
    ));
    let mut rng = SplitMix64::new(seed);

    let opts = ClusterOptions {
        // Every write goes through the test process: slower disks, so
        // gentler timers than the suite's usual 50/300 ms.
        heartbeat_ms: 100,
        election_timeout_ms: 1000,
        // Snapshots and log purges happen between the cuts too.
        snapshot_every: Some(300),
        lazy_disks: true,
        ..ClusterOptions::default().with_policy(crate::policy("pc", 900))
    };
    let mut cluster = Cluster::start(3, opts).await.unwrap();
    let ids = cluster.ids();
    let load = Load::start(
        &cluster,
        &ids,
        LoadSpec {
            attempt_timeout: Duration::from_secs(3),
            ..crate::steady_load("pc", 20)
        },
    );
    load.wait_acked_more(200, "before the first cut").await;

    let mut discarded = Discarded::default();
    let mut max_spread = Duration::ZERO;
    for n in 1..=CUTS {
        let after = Duration::from_millis(rng.between(100..=1500));
        tokio::time::sleep(after).await;
        let acked = load.acked();
        // The cut itself waits for a moment with writes in flight.
        let cut = cluster.power_cut(Duration::from_secs(10)).await.unwrap();
        discarded += cut.discarded;
        max_spread = max_spread.max(cut.spread);
        eprintln!(
            "cut {n}: {after:?} after the last recovery, {acked} acked; killed {:?} within {:?}; \
             discarded {:?}",
            cut.killed, cut.spread, cut.per_node
        );
        // Dark for a moment, then every node starts from its durable disk.
        tokio::time::sleep(Duration::from_millis(rng.between(0..=500))).await;
        for &id in &cut.killed {
            cluster.node_mut(id).restart().unwrap();
        }
        let leader = cluster
            .wait_for_leader(Duration::from_secs(60))
            .await
            .unwrap();
        load.wait_acked_more(100, &format!("after cut {n}")).await;
        eprintln!("cut {n}: leader {leader}, {} acked", load.acked());
    }

    let (ledger, retries, mut violations) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    if discarded.bytes == 0 {
        violations.push(format!(
            "the {CUTS} power cuts discarded no unsynced write: the fault was not shown to happen"
        ));
    }
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("seed", seed)
        .fact("cuts", CUTS)
        .fact("lost_unsynced_bytes", discarded.bytes)
        .fact("lost_unsynced_writes", discarded.writes)
        .fact("kill_spread_us", max_spread.as_micros())
        .conclude();
}
