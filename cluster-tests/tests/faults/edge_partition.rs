//! Guarantees 2 and 3 when the network, not a process, fails between an
//! edge and the cluster. The edge runs in its own network namespace;
//! recording subscribers (connected to it from the test process, which is
//! never cut off) listen on ten channels while publishers load them.
//!
//! 1. The link between the edge and the node its EdgeLink is on is cut
//!    both ways: nothing arrives, nothing errors. The edge must notice on
//!    its own (HTTP/2 keepalive pings on the EdgeLink connection, every 2 s,
//!    3 s to answer: a silent link is declared dead within about 5 s) and
//!    move to another node, resubscribing every channel from the position
//!    it delivered; subscribers keep receiving while the cut lasts.
//! 2. The same with the link cut one way only (the node's packets never
//!    reach the edge; the edge's still reach the node).
//! 3. The node the edge is linked to cut off from the other nodes (the
//!    edge still reaches it): that node loses its leader (or, leading, its
//!    quorum) and turns unready; after 5 s unready it ends its edge links
//!    with `UNAVAILABLE`, and the edge moves to a node of the majority
//!    instead of leaving its clients starved until the partition heals.
//! 4. The edge cut off from every node: `/readyz` turns 503 (`no EdgeLink`)
//!    so a load balancer stops sending it clients; connected clients keep
//!    their connections and are told on every command that needs the
//!    cluster (error 100, `temporary: true`, so the SDKs retry); after
//!    healing the edge links again and its subscribers receive everything
//!    published meanwhile.
//!
//! Every subscriber must end with every acknowledged publication exactly
//! once, in order, over one unbroken session: the edge absorbs each fault
//! for its clients, none of them is disconnected.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use herald_cluster_tests::edge::EdgeProc;
use herald_cluster_tests::load::Load;
use herald_cluster_tests::subscriber::{Tuning, finish_subscribers};
use herald_cluster_tests::{Cluster, ClusterOptions, Subscriber, Verdict, edge_token};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::Unacknowledged;

const SCENARIO: &str = "edge_partition";

/// The edge's host id in the network.
const EDGE: u64 = 101;

/// Hang guard for the edge noticing a cut and for catching up.
const GUARD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cut_off_from_its_node_moves_on_and_cut_off_from_all_turns_unready() {
    if !crate::network_required(SCENARIO) {
        return;
    }
    let opts = ClusterOptions::default().with_policy(crate::policy("ep", 900));
    let mut cluster = Cluster::start_isolated(3, opts).await.unwrap();
    let ids = cluster.ids();
    let edge = EdgeProc::start(&mut cluster, EDGE, &ids, &[])
        .await
        .unwrap();
    let spec = crate::steady_load("ep", 10);
    let channels = crate::channels_of(&spec);
    let subscribers =
        crate::subscribers("s", 3, &[edge.ws_url()], &channels, Tuning::default()).await;
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(200, "before the first cut").await;

    let (from, to, took) = cut_linked_node(&cluster, &edge, Cut::BothWays).await;
    let both_ways = format!("{from}->{to}_in_{:.1}s", took.as_secs_f64());
    eprintln!("both ways: edge moved {both_ways}");
    load.wait_acked_more(200, "with the edge cut off from a node")
        .await;
    catch_up(&load, &subscribers, "while cut off both ways").await;
    cluster.net().heal().unwrap();

    let (from, to, took) = cut_linked_node(&cluster, &edge, Cut::NodeToEdge).await;
    let one_way = format!("{from}->{to}_in_{:.1}s", took.as_secs_f64());
    eprintln!("one way: edge moved {one_way}");
    load.wait_acked_more(200, "with a node's packets to the edge lost")
        .await;
    catch_up(&load, &subscribers, "while cut off one way").await;
    cluster.net().heal().unwrap();

    let (from, to, took) = cut_linked_node(&cluster, &edge, Cut::NodeFromMajority).await;
    let minority = format!("{from}->{to}_in_{:.1}s", took.as_secs_f64());
    eprintln!("node cut off from the majority: edge moved {minority}");
    load.wait_acked_more(200, "with the edge's first node in a minority")
        .await;
    catch_up(&load, &subscribers, "while its first node is in a minority").await;
    cluster.net().heal().unwrap();

    cluster.net().partition(&[EDGE], &ids).unwrap();
    let cut = Instant::now();
    let unready = loop {
        match edge.readyz().await {
            Ok((200, _)) => {}
            Ok((status, body)) => break format!("{status} {}", body.trim()),
            Err(e) => panic!("edge {EDGE} /readyz failed while cut off: {e}"),
        }
        assert!(
            cut.elapsed() < GUARD,
            "edge {EDGE} still ready {GUARD:?} after being cut off from every node:\n{}",
            edge.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let unready_after = cut.elapsed();
    eprintln!("cut off from every node: /readyz {unready:?} after {unready_after:?}");
    let answer = history_reply(&edge.ws_url(), &channels[0]).await.unwrap();
    load.wait_acked_more(300, "with the edge cut off from every node")
        .await;
    cluster.net().heal().unwrap();
    let relinked = edge.wait_linked(GUARD).await.unwrap();
    eprintln!("healed: edge linked to {relinked}");

    let (ledger, retries, mut violations) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Fail).await;
    let (tally, found, records) =
        finish_subscribers(subscribers, &ledger, Duration::from_secs(120)).await;
    violations.extend(found);
    violations.extend(crate::unexpected_not_recovered(&records));
    for r in records.iter().filter(|r| r.sessions != 1) {
        violations.push(format!(
            "subscriber {} was disconnected ({} sessions): {:?}",
            r.name, r.sessions, r.disconnects
        ));
    }
    let told = answer["error"]["code"] == 100 && answer["error"]["temporary"] == true;
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("failover_both_ways", both_ways)
        .fact("failover_one_way", one_way)
        .fact("failover_from_minority", minority)
        .fact(
            "unready_after",
            format!("{:.1}s", unready_after.as_secs_f64()),
        )
        .fact(
            "cut_off_answer",
            format!(
                "{}{}",
                answer["error"]["code"],
                if answer["error"]["temporary"] == true {
                    "_temporary"
                } else {
                    ""
                }
            ),
        )
        .subscribers(&tally)
        .violation_if(
            !unready.starts_with("503"),
            format!("/readyz of the cut-off edge answered {unready:?}, not 503"),
        )
        .violation_if(
            !told,
            format!(
                "a client's history command on the cut-off edge was answered {answer}, \
                 not error 100 temporary"
            ),
        )
        .conclude();
}

/// Which packets a cut drops.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Everything between the edge and the node.
    BothWays,
    /// The node's packets to the edge only.
    NodeToEdge,
    /// The node from the other nodes; the edge still reaches it.
    NodeFromMajority,
}

/// Cut the edge from the node its EdgeLink is on and wait (hang guard
/// [`GUARD`]) until it is linked to another node. Returns the two nodes and
/// how long the move took.
async fn cut_linked_node(cluster: &Cluster, edge: &EdgeProc, cut: Cut) -> (u64, u64, Duration) {
    let from = crate::linked_node(cluster, edge)
        .await
        .expect("the edge is linked before the cut");
    match cut {
        Cut::BothWays => cluster.net().partition(&[EDGE], &[from]),
        Cut::NodeToEdge => cluster.net().partition_oneway(from, EDGE),
        Cut::NodeFromMajority => {
            let others: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != from).collect();
            cluster.net().partition(&[from], &others)
        }
    }
    .unwrap();
    let start = Instant::now();
    loop {
        if let Some(to) = crate::linked_node(cluster, edge).await
            && to != from
        {
            return (from, to, start.elapsed());
        }
        assert!(
            start.elapsed() < GUARD,
            "edge {EDGE} not linked to another node {GUARD:?} after being cut off ({cut:?}) \
             from node {from}:\n{}",
            edge.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every subscriber has reached what the load has acknowledged
/// so far on every channel.
async fn catch_up(load: &Load, subscribers: &[Subscriber], what: &str) {
    let newest: BTreeMap<String, u64> = {
        let ledger = load.ledger();
        let ledger = ledger.lock().unwrap();
        ledger
            .channels()
            .into_iter()
            .filter_map(|c| {
                let newest = ledger.newest_acked_offset(&c)?;
                Some((c, newest))
            })
            .collect()
    };
    for s in subscribers {
        if let Err(e) = s.wait_for(&newest, GUARD).await {
            panic!("{what}: {e:#}");
        }
    }
}

/// Connect a fresh client to `url` and ask for `channel`'s newest
/// publication; the reply to the `history` command (hang guard 30 s).
async fn history_reply(url: &str, channel: &str) -> anyhow::Result<Value> {
    let exchange = async {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| anyhow!("not a ws:// URL: {url}"))?;
        let tcp = tokio::net::TcpStream::connect(authority).await?;
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .context("WebSocket handshake")?;
        let commands = [
            json!({"id": 1, "connect": {"token": edge_token("probe")}}),
            json!({"id": 2, "history": {"channel": channel, "limit": 1}}),
        ];
        for command in commands {
            let id = command["id"].clone();
            ws.send(Message::text(command.to_string())).await?;
            loop {
                let text = match ws.next().await {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("read error: {e}"),
                    None => bail!("the edge closed the connection"),
                };
                let replies: Vec<Value> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                if let Some(reply) = replies.into_iter().find(|r| r["id"] == id) {
                    if id == 2 {
                        return Ok(reply);
                    }
                    break;
                }
            }
        }
        Err(anyhow!("no reply to the history command"))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| anyhow!("no reply within 30 s"))?
}
