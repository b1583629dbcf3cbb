//! Fan-out nodes (outside Raft, no log): 3 voters and 2 fan-out nodes, an
//! edge on each of the 5, two WebSocket subscribers per edge, each
//! subscribed to all 100 channels, publications through gRPC on every node
//! with idempotency keys. Every client receives every publication exactly
//! once, in order, with no `recovered: false` (guarantee 2, checked with
//! `check_subscriber` against the publishers' ledger):
//! * on a healthy cluster, where a fan-out node also receives none of a
//!   channel its edges did not subscribe to (counter-backed);
//! * while the leader is SIGKILLed mid-stream;
//! * while UDP (the QUIC plane) between the leader and one fan-out node is
//!   cut for some seconds: its clients keep up through history read over
//!   TCP, and nothing is missing once healed.
//!
//! And the operator's side: `herald node add --fanout` / `node remove`, a
//! restart that registers a new QUIC address; and cluster-wide presence
//! with clients on a fan-out node.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use herald_cluster_tests::ledger::{self, Ledger};
use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::machine::{self, Capability};
use herald_cluster_tests::{
    Cluster, ClusterOptions, EdgeProc, Network, Publisher, Subscriber, SubscriberOptions, announce,
    check_subscriber, edge_token,
};

use crate::support::{Link, certs, counter, eventually, quic_args};

const POLICY: &str = r#"
[limits]
idempotency_window_secs = 900
max_history_limit = 10000

[namespaces.fo]
history_size = 5000
history_ttl_secs = 0

[namespaces.quiet]
history_size = 100

[namespaces.room]
history_size = 10
presence = true
"#;

const VOTERS: usize = 3;
const FANOUT: [u64; 2] = [4, 5];
const CHANNELS: u64 = 100;
const SUBSCRIBERS_PER_EDGE: usize = 2;
/// Edge `k` runs as network host `EDGE_HOST + k` in an isolated cluster.
const EDGE_HOST: u64 = 20;

/// Three voters, two fan-out nodes, an edge on each, subscribers on each
/// edge subscribed to every channel.
struct Setup {
    cluster: Cluster,
    _edges: Vec<EdgeProc>,
    subscribers: Vec<Subscriber>,
}

fn channel(i: u64) -> String {
    format!("fo:ch-{i}")
}

async fn start(tls: &Path, isolated: bool) -> Setup {
    let mut extra = quic_args(tls);
    if isolated {
        // Each node has an address of its own; peers dial it on this port.
        extra[1] = "0.0.0.0:7300".into();
    }
    let opts = ClusterOptions {
        extra_args: extra,
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = if isolated {
        Cluster::start_isolated(VOTERS, opts).await.unwrap()
    } else {
        Cluster::start(VOTERS, opts).await.unwrap()
    };
    for id in FANOUT {
        cluster.add_fanout_node(id).unwrap();
    }
    for id in FANOUT {
        if let Err(e) = cluster.wait_ready(id, Duration::from_secs(60)).await {
            panic!("{e:#}\n{}", cluster.log_tails());
        }
    }
    let status = cluster.status(1).await.unwrap();
    let fanout_listed: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.role == "fanout")
        .map(|m| m.id)
        .collect();
    assert_eq!(
        fanout_listed, FANOUT,
        "ClusterStatus lists the fan-out nodes"
    );

    let ids = cluster.ids();
    let mut edges = Vec::new();
    for &id in &ids {
        // Linked to its own node first; the others are its failover list.
        let mut nodes = vec![id];
        nodes.extend(ids.iter().copied().filter(|n| *n != id));
        let edge = EdgeProc::start(&mut cluster, EDGE_HOST + id, &nodes, &[])
            .await
            .unwrap_or_else(|e| panic!("edge on node {id}: {e:#}"));
        edges.push(edge);
    }
    let urls: Vec<String> = edges.iter().map(EdgeProc::ws_url).collect();
    let channels: Vec<String> = (0..CHANNELS).map(channel).collect();
    let mut subscribers = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        for n in 0..SUBSCRIBERS_PER_EDGE {
            // Reconnects (none expected) move on to the other edges.
            let mut own = urls.clone();
            own.rotate_left(k);
            let name = format!("node{id}-sub{n}");
            subscribers.push(Subscriber::spawn(SubscriberOptions {
                token: edge_token(&name),
                name,
                urls: own,
                channels: channels.clone(),
            }));
        }
    }
    for s in &subscribers {
        s.wait_subscribed(Duration::from_secs(60)).await.unwrap();
    }
    // Every node registered its edge's channels, so the leader pushes them.
    for &id in &ids {
        let http = cluster.node(id).http_addr();
        eventually(
            "every node to register interest in every channel",
            || async { counter(http, "herald_interest_changes_total").await >= CHANNELS as f64 },
        )
        .await;
    }
    Setup {
        cluster,
        _edges: edges,
        subscribers,
    }
}

fn load_spec(total: u64) -> LoadSpec {
    LoadSpec {
        namespace: "fo",
        channels: CHANNELS,
        publishers: 4,
        total,
        attempt_timeout: Duration::from_secs(3),
        ..LoadSpec::default()
    }
}

/// The newest acknowledged offset of every channel.
fn newest(ledger: &Ledger) -> BTreeMap<String, u64> {
    ledger
        .channels()
        .into_iter()
        .filter_map(|c| Some((c.clone(), ledger.newest_acked_offset(&c)?)))
        .collect()
}

/// Every subscriber reaches every acknowledged publication, then its record
/// shows each exactly once, in order, with no unrecoverable resubscribe.
async fn check_every_subscriber(setup: Setup, ledger: &Ledger) {
    ledger::assert_all_acknowledged(ledger);
    let want = newest(ledger);
    assert_eq!(
        want.len(),
        CHANNELS as usize,
        "every channel was published to"
    );
    for s in &setup.subscribers {
        if let Err(e) = s.wait_for(&want, Duration::from_secs(60)).await {
            panic!("{e:#}\n{}", setup.cluster.log_tails());
        }
    }
    let mut received = 0;
    for s in setup.subscribers {
        let record = s.stop().await;
        let violations = check_subscriber(ledger, &record);
        ledger::assert_no_violations(&record.name, &violations);
        assert_eq!(
            record.not_recovered(),
            0,
            "{}: an edge could not recover a channel",
            record.name
        );
        received += record.received();
    }
    let per_client: usize = want.values().map(|o| *o as usize).sum();
    assert_eq!(
        received,
        per_client * (VOTERS + FANOUT.len()) * SUBSCRIBERS_PER_EDGE,
        "every client received every publication exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_on_voters_and_fanout_nodes_gets_every_publication_once() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let setup = start(tls.path(), false).await;
    let cluster = &setup.cluster;
    let leader = cluster.status(1).await.unwrap().leader_id.unwrap();
    // A channel only a voter other than the leader subscribed to.
    let voter = (1..=VOTERS as u64).find(|v| *v != leader).unwrap();
    let mut quiet = Link::open(cluster.node(voter).grpc_addr(), &cluster.options().api_key).await;
    quiet.subscribe("quiet:voters-only").await;
    let voter_http = cluster.node(voter).http_addr();
    eventually("the voter to register the quiet channel", || async {
        counter(voter_http, "herald_interest_changes_total").await > CHANNELS as f64
    })
    .await;

    const TOTAL: u64 = 1000;
    const QUIET: u64 = 50;
    let load = Load::start(cluster, &cluster.ids(), load_spec(TOTAL));
    let mut publisher = cluster.publisher(FANOUT[0]);
    for i in 0..QUIET {
        // Through a fan-out node, which forwards to the leader.
        publisher
            .publish(ledger::request(1_000_000 + i, "quiet:voters-only"))
            .await
            .expect("publish through a fan-out node");
    }
    let (ledger, _) = load.finish().await;
    let got = quiet.publications(QUIET as usize).await;
    assert_eq!(
        got.iter().map(|p| p.offset).collect::<Vec<_>>(),
        (1..=QUIET).collect::<Vec<_>>()
    );

    // Counter-backed interest filtering: each fan-out node receives over
    // QUIC exactly the `fo` publications (its edges' channels), none of the
    // quiet channel's, which the subscribed voter does receive.
    let leader_http = cluster.node(leader).http_addr();
    for id in FANOUT {
        let http = cluster.node(id).http_addr();
        eventually(
            "the fan-out node to receive every fo publication",
            || async {
                counter(http, "herald_peer_received_publications_total").await >= TOTAL as f64
            },
        )
        .await;
    }
    eventually(
        "the voter to receive the quiet channel over QUIC",
        || async {
            counter(voter_http, "herald_peer_received_publications_total").await
                >= (TOTAL + QUIET) as f64
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in FANOUT {
        let http = cluster.node(id).http_addr();
        assert_eq!(
            counter(http, "herald_peer_received_publications_total").await,
            TOTAL as f64,
            "fan-out node {id} received exactly its channels' publications over QUIC"
        );
    }
    assert_eq!(
        counter(leader_http, "herald_peer_dropped_total").await,
        0.0,
        "nothing was dropped on a healthy cluster"
    );
    check_every_subscriber(setup, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_misses_anything_when_the_leader_is_killed_mid_stream() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let mut setup = start(tls.path(), false).await;
    let leader = setup.cluster.status(1).await.unwrap().leader_id.unwrap();
    let load = Load::start(&setup.cluster, &setup.cluster.ids(), load_spec(1500));
    load.wait_acked_more(400, "before the kill").await;
    setup.cluster.node_mut(leader).kill().unwrap();
    announce(format!(
        "killed leader {leader} after {} acks",
        load.acked()
    ));
    let (ledger, retries) = load.finish().await;
    let new_leader = setup
        .cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    assert!(retries > 0, "publishers must have met the dead leader");
    check_every_subscriber(setup, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_misses_anything_while_quic_to_a_fanout_node_is_cut() {
    if !machine::require(
        "fanout_nodes udp cut",
        Capability::Network,
        Network::available(),
    ) {
        return;
    }
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let setup = start(tls.path(), true).await;
    let cluster = &setup.cluster;
    let leader = cluster.status(1).await.unwrap().leader_id.unwrap();
    let cut = FANOUT[0];
    let cut_http = cluster.node(cut).http_addr();
    let spec = LoadSpec {
        pace: Duration::from_millis(5),
        ..load_spec(u64::MAX)
    };
    let load = Load::start(cluster, &cluster.ids(), spec);
    load.wait_acked_more(300, "before the cut").await;

    cluster.net().cut_udp(leader, cut).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received_at_cut = counter(cut_http, "herald_peer_received_publications_total").await;
    let acked_at_cut = load.acked();
    load.wait_acked_more(300, "during the cut").await;
    // While QUIC is cut, the fan-out node's clients still reach everything
    // acknowledged so far: gaps are filled from history over TCP.
    let want = newest(&load.ledger().lock().unwrap());
    // Subscribers are spawned in node order, SUBSCRIBERS_PER_EDGE each.
    let first = (cut as usize - 1) * SUBSCRIBERS_PER_EDGE;
    for s in &setup.subscribers[first..first + SUBSCRIBERS_PER_EDGE] {
        if let Err(e) = s.wait_for(&want, Duration::from_secs(30)).await {
            panic!("during the cut: {e:#}\n{}", cluster.log_tails());
        }
    }
    let received_in_cut =
        counter(cut_http, "herald_peer_received_publications_total").await - received_at_cut;
    let acked_in_cut = (load.acked() - acked_at_cut) as f64;
    assert!(
        received_in_cut < acked_in_cut,
        "the cut must stop QUIC: node {cut} received {received_in_cut} of {acked_in_cut} over QUIC"
    );
    announce(format!(
        "UDP cut {leader}<->{cut}: {received_in_cut} of {acked_in_cut} arrived over QUIC; clients kept up"
    ));

    cluster.net().heal().unwrap();
    load.wait_acked_more(300, "after healing").await;
    load.stop();
    let (ledger, _) = load.finish().await;
    check_every_subscriber(setup, &ledger).await;
}

/// `herald node add --fanout` / `node remove` and the Admin RPCs behind
/// them: registration is listed, ids never collide with Raft members, and a
/// removed fan-out node stops receiving at once (counter-backed) and turns
/// unready; removal is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_nodes_are_added_listed_and_removed() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let opts = ClusterOptions {
        extra_args: quic_args(tls.path()),
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = Cluster::start(VOTERS, opts).await.unwrap();
    let key = cluster.options().api_key.clone();
    let cli = |args: &[&str], server: std::net::SocketAddr| {
        let out = std::process::Command::new(herald_cluster_tests::binary::herald_cli())
            .args(["--server", &server.to_string(), "--api-key", &key])
            .args(args)
            .output()
            .expect("running herald");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let via = cluster.node(2).grpc_addr();
    let (ok, out) = cli(&["node", "add", "--fanout", "6", "127.0.0.1:1"], via);
    assert!(ok, "{out}");
    assert!(out.contains("fanout 6"), "{out}");
    // Ids are shared: a voter cannot be a fan-out node, nor the other way.
    let (ok, out) = cli(&["node", "add", "--fanout", "1", "127.0.0.1:1"], via);
    assert!(!ok && out.contains("MEMBERSHIP_CHANGE_REFUSED"), "{out}");
    let (ok, out) = cli(&["node", "add", "--learner", "6", "127.0.0.1:1"], via);
    assert!(!ok && out.contains("MEMBERSHIP_CHANGE_REFUSED"), "{out}");

    let id = FANOUT[0];
    cluster.add_fanout_node(id).unwrap();
    if let Err(e) = cluster.wait_ready(id, Duration::from_secs(60)).await {
        panic!("{e:#}\n{}", cluster.log_tails());
    }
    let (ok, out) = cli(&["status"], cluster.node(id).grpc_addr());
    assert!(ok, "{out}");
    assert!(
        out.starts_with(&format!("node {id}: fanout, leader ")),
        "{out}"
    );
    assert!(out.contains(&format!("{id}  fanout")), "{out}");
    assert!(out.contains("6  fanout"), "{out}");

    let http = cluster.node(id).http_addr();
    let mut link = Link::open(cluster.node(id).grpc_addr(), &key).await;
    link.subscribe("fo:admin").await;
    eventually("the fan-out node to register its interest", || async {
        counter(http, "herald_interest_changes_total").await >= 1.0
    })
    .await;
    let leader = cluster.status(1).await.unwrap().leader_id.unwrap();
    let mut publisher = cluster.publisher(leader);
    publish_and_receive(&mut publisher, &mut link, http, 0..10).await;

    // Restarted (on a new QUIC port): it registers again, and the leader
    // pushes to the new address.
    drop(link);
    cluster.node_mut(id).kill().unwrap();
    cluster.node_mut(id).restart().unwrap();
    if let Err(e) = cluster.wait_ready(id, Duration::from_secs(60)).await {
        panic!("{e:#}\n{}", cluster.log_tails());
    }
    let mut link = Link::open(cluster.node(id).grpc_addr(), &key).await;
    assert_eq!(link.subscribe("fo:admin").await.offset, 10);
    eventually("the restarted node to register its interest", || async {
        counter(http, "herald_interest_changes_total").await >= 1.0
    })
    .await;
    publish_and_receive(&mut publisher, &mut link, http, 10..15).await;

    // Removed through the fan-out node itself (forwarded to the leader).
    let (ok, out) = cli(
        &["node", "remove", &id.to_string()],
        cluster.node(id).grpc_addr(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("fanout 6"), "{out}");
    let (ok, out) = cli(&["node", "remove", &id.to_string()], via);
    assert!(ok, "removal is idempotent: {out}");
    let (ok, out) = cli(&["node", "remove", "6"], via);
    assert!(ok && out.contains("fanout -"), "{out}");
    let status = cluster.status(leader).await.unwrap();
    assert!(
        status.members.iter().all(|m| m.id != id),
        "{:?}",
        status.members
    );
    eventually("the removed node to turn unready", || async {
        matches!(
            herald_cluster_tests::client::http_get(http, "/readyz").await,
            Ok((503, body)) if body.contains("removed")
        )
    })
    .await;
    let received = counter(http, "herald_peer_received_publications_total").await;
    for i in 15..25 {
        publisher
            .publish(ledger::request(i, "fo:admin"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counter(http, "herald_peer_received_publications_total").await,
        received,
        "the leader pushes nothing to a removed fan-out node"
    );
}

/// Presence spans fan-out nodes: a client of a fan-out node's edge is listed
/// by a query on any node, and its join reaches a client of a voter (relayed
/// through a voter, since a fan-out node does not hold the interest table).
/// Publish ledger ids `ids` to `fo:admin` (offsets `ids.start + 1..=ids.end`
/// on a fresh channel) and check that the fan-out node's `link` receives
/// exactly those, pushed to it over QUIC (its counter since its last start).
async fn publish_and_receive(
    publisher: &mut Publisher,
    link: &mut Link,
    http: std::net::SocketAddr,
    ids: std::ops::Range<u64>,
) {
    for i in ids.clone() {
        publisher
            .publish(ledger::request(i, "fo:admin"))
            .await
            .unwrap();
    }
    let n = ids.end - ids.start;
    let got = link.publications(n as usize).await;
    assert_eq!(
        got.iter().map(|p| p.offset).collect::<Vec<_>>(),
        (ids.start + 1..=ids.end).collect::<Vec<_>>()
    );
    eventually("the pushes to arrive over QUIC", || async {
        counter(http, "herald_peer_received_publications_total").await >= n as f64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_includes_clients_of_fanout_nodes() {
    let tls = tempfile::tempdir().unwrap();
    certs(tls.path());
    let opts = ClusterOptions {
        extra_args: quic_args(tls.path()),
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = Cluster::start(VOTERS, opts).await.unwrap();
    let key = cluster.options().api_key.clone();
    let id = FANOUT[0];
    cluster.add_fanout_node(id).unwrap();
    if let Err(e) = cluster.wait_ready(id, Duration::from_secs(60)).await {
        panic!("{e:#}\n{}", cluster.log_tails());
    }
    for node in cluster.ids() {
        let http = cluster.node(node).http_addr();
        eventually("every node's QUIC address to be registered", || async {
            counter(http, "herald_peer_registered").await >= 1.0
        })
        .await;
    }
    const ROOM: &str = "room:lobby";
    let mut watcher = Link::open(cluster.node(2).grpc_addr(), &key).await;
    watcher.subscribe(ROOM).await;
    let mut fan = Link::open(cluster.node(id).grpc_addr(), &key).await;
    fan.subscribe(ROOM).await;
    for node in [2, id] {
        let http = cluster.node(node).http_addr();
        eventually("both nodes to register the room", || async {
            counter(http, "herald_interest_changes_total").await >= 1.0
        })
        .await;
    }
    fan.presence(herald_proto::v1::PresenceUpdate {
        channel: ROOM.into(),
        joined: vec![herald_proto::v1::ClientInfo {
            client: "c-on-fanout".into(),
            user: "alice".into(),
            ..Default::default()
        }],
        left: vec![],
    })
    .await;
    match watcher.next().await {
        herald_proto::v1::node_message::Msg::Publication(p) => {
            assert_eq!(p.offset, 0);
            assert_eq!(
                p.headers.get("herald-presence").map(String::as_str),
                Some("join")
            );
            assert!(String::from_utf8_lossy(&p.data).contains("alice"));
        }
        other => panic!("expected the join event, got {other:?}"),
    }
    for node in [1, id] {
        let clients = cluster
            .publisher(node)
            .presence(herald_proto::v1::PresenceRequest {
                channel: ROOM.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .clients;
        assert_eq!(
            clients
                .iter()
                .map(|c| c.client.as_str())
                .collect::<Vec<_>>(),
            vec!["c-on-fanout"],
            "presence asked on node {node}"
        );
    }
}
