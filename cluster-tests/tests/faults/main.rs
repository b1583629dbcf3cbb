//! The fault suite (issue 5): real `herald-node` and `herald-edge`
//! processes under the faults production sees, each scenario ending with
//! the checkers' verdict on one printed line: the history checker over
//! every node, and the subscriber checker over every recording WebSocket
//! subscriber. One module per scenario, each naming the guarantee of
//! `docs/guarantees.md` it proves; what each injects and checks is written up in
//! `docs/guarantees.md`.
//!
//! | module | injects | proves |
//! |---|---|---|
//! | `isolated_leader` | the leader cut off from both followers, under load | 1: the minority side acknowledges nothing; the majority elects and keeps acknowledging |
//! | `isolated_follower` | a follower cut off until the leader compacted past it, then healed | 1: it catches up (by snapshot) to an identical history |
//! | `rolling_restart` | SIGTERM, restart, wait ready, for every node and then every edge in turn, twice, under load, with subscribers on both edges | 1 and 5 across graceful node restarts; 2 and 3 for every subscriber across edge restarts |
//! | `lost_quorum` | SIGKILL of two of three voters, their data dirs deleted; `herald-node recover` on the survivor, the two back with empty disks | 1: every acknowledged publication survives on every node; 3: every channel's epoch changes once and resuming subscribers are told `recovered: false` |
//! | `wiped_disk` | SIGKILL of the bootstrap node, its data dir deleted, restarted | 1: it rejoins the cluster it belonged to, never forms a second one |
//! | `wiped_voter` | a lagging node and a voter whose disk was wiped left alone after the voters holding the newest acknowledged entries crashed | 1: the wiped voter refuses to vote as its old incarnation, so no leader is elected without the acknowledged entries; it is re-added as a learner and promoted |
//! | `bootstrap_partition` | the bootstrap node restarted with an empty disk while cut off from every peer | 1: it never initializes a second cluster while a peer is silent, and says why in `/readyz`; once healed it rejoins |
//! | `lossy_links` | 20% loss and 100 ms delay on every peer link, under load | 1 and 5 with progress continuing |
//! | `clock_jump` | the leader's wall clock jumps an hour ahead, then leadership moves | 1 and 5; publication timestamps never go backwards |
//! | `edge_partition` | an edge cut off from its node (both ways, one way), then from every node | 2: the edge notices a silent link (keepalive) and moves; cut off from all, it turns unready and tells clients; subscribers miss nothing |
//! | `reconnect_storm` | 10,000 clients on one edge, the edge killed and restarted | 3 for all of them; `--connection-rate` refuses the surplus (503, 3504); no node falls over |
//! | `disk_failure` | EIO on fsync, EIO on write (libfiu), a full disk (tmpfs filled with a ballast), each on a follower and then the leader, under load; disk mended, node restarted | 1: the failed node reports it and acknowledges nothing (`STORAGE_FAILED`); the others go on; it recovers from its last durable commit and catches up |
//! | `restore` | the whole cluster lost after publications acknowledged past a backup copy; the copy restored on one node with `herald-node recover`, the others back with empty disks | 3: every epoch changes, the publications after the backup are on no node, resuming subscribers that saw them are told `recovered: false` |
//! | `power_cut` | every voter SIGKILLed within milliseconds and every write not yet fsynced dropped (a lazy FUSE disk), three times under load, at random moments from a printed seed | 1: every acknowledged publication on every node at its offset; the cluster elects and acknowledges after each cut |
//! | `soak` | kill -9, pause, SIGTERM, partitions (both ways, one way) and netem on nodes, kill -9, pause, SIGTERM and cuts on edges, at random from a printed seed | all of the above, mixed |
//!
//! Every scenario runs with the QUIC delivery plane on, as deployed. A
//! scenario that needs network namespaces (root, `ip`, `iptables`),
//! libfaketime, libfiu, FUSE (`/dev/fuse`, `fusermount3`) or a high open-files limit fails when the machine
//! lacks it; `scripts/test` installs what they need. Only a machine kind
//! declared unsupported (`HERALD_TEST_UNSUPPORTED=network,clock,open-files`)
//! prints `UNSUPPORTED <scenario>: <reason>` and passes. At the end of
//! every scenario each node's and edge's log is scanned for `panicked`.

mod bootstrap_partition;
mod clock_jump;
mod disk_failure;
mod edge_partition;
mod isolated_follower;
mod isolated_leader;
mod lossy_links;
mod lost_quorum;
mod power_cut;
mod reconnect_storm;
mod restore;
mod rolling_restart;
mod soak;
mod wiped_disk;
mod wiped_voter;

use std::collections::BTreeMap;
use std::time::Duration;

use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::ledger::{self, Ledger};
use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::machine::{self, Capability};
use herald_cluster_tests::subscriber::{Event, Record, Tuning};
use herald_cluster_tests::{Cluster, Network, Subscriber, SubscriberOptions, edge_token};

/// Whether `scenario` runs: network namespaces are usable here, or the
/// machine is declared unsupported for them (`HERALD_TEST_UNSUPPORTED`);
/// otherwise the scenario fails (see [`machine`]).
fn network_required(scenario: &str) -> bool {
    machine::require(scenario, Capability::Network, Network::available())
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
    /// Retry each whose outcome is unknown with its key once the faults
    /// are healed (for scenarios whose faults are expected to outlast a
    /// publisher's patience, or that send probes meant to fail); final
    /// failures, and those still unacknowledged then, are violations.
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

/// Violations unless, on every channel of `new_epochs`, the first
/// subscribe reply `record` got in the new epoch was a resume answered
/// `recovered: false`: the client was told its position no longer holds.
fn told_of_new_epochs(record: &Record, new_epochs: &BTreeMap<String, String>) -> Vec<String> {
    let mut bad = Vec::new();
    for (channel, new) in new_epochs {
        let events = record.channels.get(channel).map_or(&[][..], Vec::as_slice);
        let first = events.iter().find_map(|e| match e {
            Event::Subscribed {
                epoch,
                recovering,
                recovered,
                ..
            } if epoch == new => Some((*recovering, *recovered)),
            _ => None,
        });
        match first {
            Some((true, false)) => {}
            Some((recovering, recovered)) => bad.push(format!(
                "subscriber {} {channel}: first told of the new epoch {new:?} by a subscribe \
                 with recovering={recovering} recovered={recovered}, not a resume answered recovered: false",
                record.name
            )),
            None => bad.push(format!(
                "subscriber {} {channel}: never told of the new epoch {new:?}",
                record.name
            )),
        }
    }
    bad
}

/// Each channel's `(epoch, newest offset)` on node `id`.
async fn positions(
    cluster: &Cluster,
    id: u64,
    channels: &[String],
) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for c in channels {
        let h = cluster
            .history(id, c, 1)
            .await
            .unwrap_or_else(|e| panic!("History({c}) on node {id}: {e:?}"));
        out.insert(c.clone(), (h.epoch, h.offset));
    }
    out
}

/// `epoch <channel> <old> -> <new> at offset <n>` lines of `recover`'s report.
fn printed_epochs(report: &str) -> BTreeMap<String, (String, String)> {
    report
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("epoch ")?.split_whitespace();
            let (channel, old, _, new) = (w.next()?, w.next()?, w.next()?, w.next()?);
            Some((channel.to_string(), (old.to_string(), new.to_string())))
        })
        .collect()
}

/// Run `herald-node <command> --data-dir <node id's data dir> --id <id>`
/// (an offline command, `inspect` or `recover`) to completion.
fn herald_node_offline(cluster: &Cluster, id: u64, command: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(herald_cluster_tests::binary::herald_node());
    cmd.arg(command)
        .arg("--data-dir")
        .arg(cluster.node(id).data_dir());
    if command == "recover" {
        cmd.args(["--id", &id.to_string()]);
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running herald-node {command}: {e}"))
}

/// The runbook's recovery of a stopped node: `herald-node recover` on its
/// data dir (which must succeed), then the node started alone until it
/// leads. Returns what `recover` printed.
async fn recover_and_lead(cluster: &mut Cluster, id: u64) -> String {
    let recovered = herald_node_offline(cluster, id, "recover");
    let report = String::from_utf8_lossy(&recovered.stdout).to_string();
    eprintln!(
        "recover:\n{report}{}",
        String::from_utf8_lossy(&recovered.stderr)
    );
    assert!(recovered.status.success(), "recover failed");
    cluster.node_mut(id).restart().unwrap();
    cluster
        .wait_for_leader_among(&[id], Duration::from_secs(60))
        .await
        .unwrap();
    report
}

/// Each channel's epoch change from `before` to `after` (channel → (epoch,
/// newest offset)), and a violation unless `recover` printed exactly those.
fn epoch_changes(
    report: &str,
    before: &BTreeMap<String, (String, u64)>,
    after: &BTreeMap<String, (String, u64)>,
) -> (BTreeMap<String, (String, String)>, Option<String>) {
    let changes: BTreeMap<String, (String, String)> = before
        .iter()
        .map(|(c, (old, _))| (c.clone(), (old.clone(), after[c].0.clone())))
        .collect();
    let printed = printed_epochs(report);
    let violation = (printed != changes).then(|| {
        format!("recover printed epoch changes {printed:?}, the node applied {changes:?}")
    });
    (changes, violation)
}

/// Start the nodes `ids` again (their data dirs are empty) and wait until
/// the cluster has made each a voter.
async fn rejoin_empty(cluster: &mut Cluster, ids: &[u64]) {
    for &id in ids {
        cluster.node_mut(id).restart().unwrap();
    }
    for &id in ids {
        cluster
            .wait_for_member(id, Some("voter"), Duration::from_secs(120))
            .await
            .unwrap();
    }
}

/// Publish ids `first..first + n` of `spec`'s channels one at a time
/// through `nodes` (retrying with the key, patience 60 s each), writing
/// every outcome to `ledger`. Returns the retries made.
async fn publish_each(
    cluster: &Cluster,
    nodes: &[u64],
    ledger: &mut Ledger,
    spec: &LoadSpec,
    first: u64,
    n: u64,
) -> u64 {
    let mut publisher = cluster
        .rotating_publisher(nodes, 0)
        .with_attempt_timeout(Duration::from_secs(5));
    for id in first..first + n {
        let channel = spec.channel_of(id);
        ledger.sent(id, &channel);
        match publisher
            .publish(ledger::request(id, &channel), Duration::from_secs(60))
            .await
        {
            Ok(resp) => ledger.acked(id, &resp),
            Err(failure) => ledger.record_failure(id, &failure),
        }
    }
    publisher.retries
}

/// The id of the node edge `edge`'s EdgeLink is on, if it is linked.
async fn linked_node(cluster: &Cluster, edge: &EdgeProc) -> Option<u64> {
    let addr = edge.linked_node().await?;
    cluster
        .ids()
        .into_iter()
        .find(|&id| cluster.node(id).grpc_addr().to_string() == addr)
}

/// Retry every publication of `ledger` whose outcome is unknown (the
/// publisher ran out of patience on errors the protocol calls safe to
/// retry; see [`Ledger::retryable`]), with its own idempotency key,
/// through any node, until acknowledged (hang guard `patience` each).
/// Final failures are left alone: each stays a violation. Returns the
/// retries made.
async fn settle_unacknowledged(cluster: &Cluster, ledger: &mut Ledger, patience: Duration) -> u64 {
    let mut publisher = cluster
        .rotating_publisher(&cluster.ids(), 0)
        .with_attempt_timeout(Duration::from_secs(10));
    for (id, channel) in ledger.retryable() {
        match publisher
            .publish(ledger::request(id, &channel), patience)
            .await
        {
            Ok(resp) => ledger.acked(id, &resp),
            Err(failure) => ledger.record_failure(id, &failure),
        }
    }
    publisher.retries
}
