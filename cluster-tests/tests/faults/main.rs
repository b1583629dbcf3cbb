//! The fault suite (issue 5): real `herald-node` and `herald-edge`
//! processes under the faults production sees, each scenario ending with
//! the checkers' verdict on one printed line: the history checker over
//! every node, and the subscriber checker over every recording WebSocket
//! subscriber. One module per scenario, each naming the guarantee of
//! `DESIGN.md` it proves; what each injects and checks is written up in
//! `docs/guarantees.md`.
//!
//! | module | injects | proves |
//! |---|---|---|
//! | `isolated_leader` | the leader cut off from both followers, under load | 1: the minority side acknowledges nothing; the majority elects and keeps acknowledging |
//! | `isolated_follower` | a follower cut off until the leader compacted past it, then healed | 1: it catches up (by snapshot) to an identical history |
//! | `rolling_restart` | SIGTERM, restart, wait ready, for every node and then every edge in turn, twice, under load, with subscribers on both edges | 1 and 5 across graceful node restarts; 2 and 3 for every subscriber across edge restarts |
//! | `wiped_disk` | SIGKILL of the bootstrap node, its data dir deleted, restarted | 1: it rejoins the cluster it belonged to, never forms a second one |
//! | `lossy_links` | 20% loss and 100 ms delay on every peer link, under load | 1 and 5 with progress continuing |
//! | `clock_jump` | the leader's wall clock jumps an hour ahead, then leadership moves | 1 and 5; publication timestamps never go backwards |
//! | `edge_partition` | an edge cut off from its node (both ways, one way), then from every node | 2: the edge notices a silent link (keepalive) and moves; cut off from all, it turns unready and tells clients; subscribers miss nothing |
//! | `reconnect_storm` | 10,000 clients on one edge, the edge killed and restarted | 3 for all of them; `--connection-rate` refuses the surplus (503, 3504); no node falls over |
//! | `power_cut` | every voter SIGKILLed within milliseconds and every write not yet fsynced dropped (a lazy FUSE disk), three times under load, at random moments from a printed seed | 1: every acknowledged publication on every node at its offset; the cluster elects and acknowledges after each cut |
//! | `soak` | kill -9, pause, SIGTERM, partitions (both ways, one way) and netem on nodes, kill -9, pause, SIGTERM and cuts on edges, at random from a printed seed | all of the above, mixed |
//!
//! Scenarios that need network namespaces (root, `ip`, `iptables`) or
//! libfaketime print `SKIPPED <scenario>: <reason>` and pass when the
//! machine lacks them; CI installs what they need. `power_cut` fails
//! without FUSE (`/dev/fuse`, `fusermount3`).

mod clock_jump;
mod edge_partition;
mod isolated_follower;
mod isolated_leader;
mod lossy_links;
mod power_cut;
mod reconnect_storm;
mod rolling_restart;
mod soak;
mod wiped_disk;

use std::time::Duration;

use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::ledger::{self, Ledger};
use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::subscriber::{Record, Tuning};
use herald_cluster_tests::{Cluster, Network, Subscriber, SubscriberOptions, announce, edge_token};

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

/// A scenario's channel policy: namespace `namespace` keeps 10,000
/// publications per channel forever (every publication of a run stays in
/// history, so the checker sees all of them), and a publish retried with
/// its key within `idempotency_window_secs` is stored once.
fn policy(namespace: &str, idempotency_window_secs: u64) -> String {
    format!(
        "[limits]\nidempotency_window_secs = {idempotency_window_secs}\nmax_history_limit = 10000\n\n\
         [namespaces.{namespace}]\nhistory_size = 10000\nhistory_ttl_secs = 0\n"
    )
}

/// The load most scenarios run under: 6 publishers, 2 ms apart, over
/// `channels` channels of `namespace`, until stopped.
fn steady_load(namespace: &'static str, channels: u64) -> LoadSpec {
    LoadSpec {
        namespace,
        channels,
        publishers: 6,
        total: u64::MAX,
        pace: Duration::from_millis(2),
        attempt_timeout: Duration::from_secs(5),
        ..LoadSpec::default()
    }
}

/// Every channel of `spec`, in order.
fn channels_of(spec: &LoadSpec) -> Vec<String> {
    (0..spec.channels).map(|i| spec.channel_of(i)).collect()
}

/// What [`finish_load`] does with publications the load gave up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unacknowledged {
    /// Retry each with its key once the faults are healed (for scenarios
    /// whose faults are expected to outlast a publisher's patience, or that
    /// send probes meant to fail); only those still unacknowledged then
    /// are violations.
    Retry,
    /// Leave them: each is a violation.
    Fail,
}

/// The end of a scenario's load: stop the publishers, deal with what was
/// never acknowledged, wait until every node applied everything, and check
/// every node's history against the ledger. Returns the ledger, the
/// retries and the checker's violations.
async fn finish_load(
    cluster: &mut Cluster,
    load: Load,
    unacknowledged: Unacknowledged,
) -> (Ledger, u64, Vec<String>) {
    load.stop();
    let (mut ledger, mut retries) = load.finish().await;
    if unacknowledged == Unacknowledged::Retry {
        retries += settle_unacknowledged(cluster, &mut ledger, Duration::from_secs(60)).await;
    }
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .unwrap();
    let ids = cluster.ids();
    let violations = ledger::verify_every_node(cluster, &ledger, &ids, 10_000).await;
    (ledger, retries, violations)
}

/// `n` recording subscribers named `<prefix><i>`, each subscribed to
/// `channels`; subscriber `i` connects to `urls[i % len]` first and moves
/// to the next URL on every reconnect. Returns once all are subscribed
/// (hang guard 120 s).
async fn subscribers(
    prefix: &str,
    n: usize,
    urls: &[String],
    channels: &[String],
    tuning: Tuning,
) -> Vec<Subscriber> {
    let subscribers: Vec<Subscriber> = (0..n)
        .map(|i| {
            let mut urls = urls.to_vec();
            let first = i % urls.len();
            urls.rotate_left(first);
            Subscriber::spawn_with(
                SubscriberOptions {
                    name: format!("{prefix}{i}"),
                    urls,
                    token: edge_token(&format!("user-{prefix}{i}")),
                    channels: channels.to_vec(),
                },
                tuning.clone(),
            )
        })
        .collect();
    for s in &subscribers {
        s.wait_subscribed(Duration::from_secs(120)).await.unwrap();
    }
    subscribers
}

/// A violation for every resubscribe answered `recovered: false`, with the
/// positions involved, for scenarios in which no client is ever away long
/// enough to leave the history window.
fn unexpected_not_recovered(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .flat_map(Record::not_recovered_explained)
        .map(|line| format!("recovered: false inside the history window: {line}"))
        .collect()
}

/// The id of the node edge `edge`'s EdgeLink is on, if it is linked.
async fn linked_node(cluster: &Cluster, edge: &EdgeProc) -> Option<u64> {
    let addr = edge.linked_node().await?;
    cluster
        .ids()
        .into_iter()
        .find(|&id| cluster.node(id).grpc_addr().to_string() == addr)
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
