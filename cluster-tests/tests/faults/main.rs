//! The fault suite (issue 5): real `herald-node` processes under the faults
//! production sees, each scenario ending with the history checker's verdict
//! on one printed line. One module per scenario, each naming the guarantee
//! of `DESIGN.md` it proves; what each injects and checks is written up in
//! `docs/guarantees.md`.
//!
//! | module | injects | proves |
//! |---|---|---|
//! | `isolated_leader` | the leader cut off from both followers, under load | 1: the minority side acknowledges nothing; the majority elects and keeps acknowledging |
//! | `isolated_follower` | a follower cut off until the leader compacted past it, then healed | 1: it catches up (by snapshot) to an identical history |
//! | `rolling_restart` | SIGTERM, restart, wait ready, for every node in turn, under load | 1 and 5 across graceful restarts |
//! | `wiped_disk` | SIGKILL of the bootstrap node, its data dir deleted, restarted | 1: it rejoins the cluster it belonged to, never forms a second one |
//! | `lossy_links` | 20% loss and 100 ms delay on every peer link, under load | 1 and 5 with progress continuing |
//! | `clock_jump` | the leader's wall clock jumps an hour ahead, then leadership moves | 1 and 5; publication timestamps never go backwards |
//! | `soak` | kill -9, pause, partitions (both ways, one way) and netem at random from a printed seed | all of the above, mixed |
//!
//! Scenarios that need network namespaces (root, `ip`, `iptables`) or
//! libfaketime print `SKIPPED <scenario>: <reason>` and pass when the
//! machine lacks them; CI installs what they need.

mod clock_jump;
mod isolated_follower;
mod isolated_leader;
mod lossy_links;
mod rolling_restart;
mod soak;
mod wiped_disk;

use std::time::Duration;

use herald_cluster_tests::ledger::{self, Ledger};
use herald_cluster_tests::{Cluster, Network, announce};

/// Whether network namespaces are usable here; if not, say so and why.
fn network_or_skip(scenario: &str) -> bool {
    match Network::available() {
        Ok(()) => true,
        Err(why) => {
            announce(format!("SKIPPED {scenario}: {why}"));
            false
        }
    }
}

/// Retry every publication of `ledger` that was never acknowledged, with
/// its own idempotency key, through any node, until acknowledged (hang
/// guard `patience` each). Returns the retries made.
async fn settle_unacknowledged(cluster: &Cluster, ledger: &mut Ledger, patience: Duration) -> u64 {
    let mut publisher = cluster
        .rotating_publisher(&cluster.ids(), 0)
        .with_attempt_timeout(Duration::from_secs(10));
    for (id, channel) in ledger.unacknowledged() {
        match publisher
            .publish(ledger::request(id, &channel), patience)
            .await
        {
            Ok(resp) => ledger.acked(id, &resp),
            Err(failure) => ledger.failed(id, failure.to_string()),
        }
    }
    publisher.retries
}
