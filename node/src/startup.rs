//! How a node with an empty disk finds its cluster: join through a member
//! (`--join`), or follow the static peer list. Only the lowest listed id
//! bootstraps, and only once **every** listed peer has answered that it
//! belongs to no cluster: a peer that does not answer (down, partitioned,
//! slow) may hold the cluster's only copy of acknowledged entries, so
//! silence is never taken for "no cluster". While it waits, the node says
//! why in `/readyz` and `ClusterStatus.joining`.
//!
//! A peer that shows a running cluster decides instead: if the cluster
//! lists this node with this data directory's incarnation, the leader will
//! replicate to it; if it lists this node under another incarnation (the
//! disk was lost) or not at all (the StatefulSet was scaled up), the node
//! asks a member to add it, and the leader re-adds it as a learner that
//! becomes a voter only once it holds the log (`members`).
//!
//! [`decide`] is the whole rule, a pure function of the peers' answers;
//! the rest asks the peers and carries the decision out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1::{AddNodeRequest, ClusterStatusRequest};

use crate::config::NodeConfig;
use crate::grpc::outbound::Outbound;
use crate::raft::NodeInfo;
use crate::replica::Replica;

/// What a listed peer answered about the cluster it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// It is in a cluster: the members, each with the incarnation the
    /// membership records.
    Member(BTreeMap<u64, u64>),
    /// It belongs to no cluster; its own incarnation.
    Uninitialized(u64),
    /// No usable answer, and why.
    Silent(String),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Every listed peer answered that it holds no cluster: initialize one
    /// with these members.
    Bootstrap(BTreeMap<u64, NodeInfo>),
    /// A running cluster does not count this incarnation of this node as a
    /// member: ask the member at this address to add it.
    Join(String),
    /// Wait, and why.
    Wait(String),
}

/// The start-up rule (module doc), for node `me` whose data directory is
/// `incarnation`, given the listed `peers` (id → address, `me` included)
/// and what each other peer answered.
fn decide(
    me: u64,
    incarnation: u64,
    peers: &BTreeMap<u64, String>,
    answers: &BTreeMap<u64, Answer>,
) -> Decision {
    let cluster = answers.values().find_map(|a| match a {
        Answer::Member(members) => Some(members),
        _ => None,
    });
    if let Some(members) = cluster {
        if members.get(&me) == Some(&incarnation) {
            return Decision::Wait(
                "a member of the running cluster; waiting for its leader to replicate to this node"
                    .into(),
            );
        }
        let via = peers
            .iter()
            .find(|(id, _)| matches!(answers.get(id), Some(Answer::Member(_))));
        return match via {
            Some((_, addr)) => Decision::Join(addr.clone()),
            None => Decision::Wait("no member of the running cluster answers".into()),
        };
    }
    let lowest = peers.keys().next().copied();
    if lowest != Some(me) {
        return Decision::Wait(format!(
            "waiting for node {} (the lowest listed id) to bootstrap the cluster",
            lowest.map_or_else(|| "?".into(), |l| l.to_string())
        ));
    }
    let silent: Vec<String> = peers
        .iter()
        .filter(|(id, _)| **id != me)
        .filter_map(|(id, addr)| match answers.get(id) {
            Some(Answer::Uninitialized(_)) | Some(Answer::Member(_)) => None,
            Some(Answer::Silent(why)) => Some(format!("node {id} at {addr}: {why}")),
            None => Some(format!("node {id} at {addr}: not asked")),
        })
        .collect();
    if !silent.is_empty() {
        return Decision::Wait(format!(
            "not bootstrapping until every listed peer answers that it holds no cluster; \
             no answer from {}",
            silent.join("; ")
        ));
    }
    Decision::Bootstrap(
        peers
            .iter()
            .map(|(id, addr)| {
                let incarnation = match answers.get(id) {
                    Some(Answer::Uninitialized(i)) => *i,
                    _ => incarnation,
                };
                (
                    *id,
                    NodeInfo {
                        grpc_addr: addr.clone(),
                        incarnation,
                    },
                )
            })
            .collect(),
    )
}

/// Bootstrap, join or do nothing (already initialized).
pub(crate) async fn bootstrap_or_join(
    config: NodeConfig,
    replica: Arc<Replica>,
    outbound: Outbound,
) {
    let raft = &replica.raft;
    let incarnation = replica.incarnation();
    if !config.join.is_empty() {
        if !initialized(&replica).await {
            join_cluster(&config, &config.join, incarnation, &outbound).await;
        }
        return;
    }
    let mut said = String::new();
    loop {
        if initialized(&replica).await {
            replica.set_joining(String::new());
            return;
        }
        let answers = ask_peers(&config, &outbound).await;
        match decide(config.id, incarnation, &config.peers, &answers) {
            Decision::Bootstrap(members) => match raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(incarnation, "bootstrapped a new cluster");
                }
                Err(e) => tracing::warn!("bootstrap: {e}"),
            },
            Decision::Join(via) => {
                tracing::info!(
                    incarnation,
                    "the running cluster does not count this data directory as a member; \
                     asking {via} to add this node"
                );
                replica.set_joining(format!("asking {via} to add this node"));
                join_cluster(&config, &[via], incarnation, &outbound).await;
            }
            Decision::Wait(why) => {
                if why != said {
                    tracing::info!("start-up: {why}");
                    said.clone_from(&why);
                }
                replica.set_joining(why);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether this node holds a cluster's log (a membership); an error means
/// Raft stopped, and there is nothing left to do.
async fn initialized(replica: &Replica) -> bool {
    replica.raft.is_initialized().await.unwrap_or(true)
}

/// Every other listed peer's answer, asked concurrently.
async fn ask_peers(config: &NodeConfig, outbound: &Outbound) -> BTreeMap<u64, Answer> {
    let asks = config
        .peers
        .iter()
        .filter(|(id, _)| **id != config.id)
        .map(|(id, addr)| async move { (*id, ask(outbound, addr).await) });
    futures::future::join_all(asks).await.into_iter().collect()
}

async fn ask(outbound: &Outbound, addr: &str) -> Answer {
    let mut client = match outbound.publisher(addr) {
        Ok(c) => c,
        Err(e) => return Answer::Silent(e),
    };
    let mut req = tonic::Request::new(ClusterStatusRequest {});
    req.set_timeout(Duration::from_millis(1500));
    match tokio::time::timeout(Duration::from_secs(2), client.cluster_status(req)).await {
        Err(_) => Answer::Silent("timed out".into()),
        Ok(Err(status)) => Answer::Silent(format!("{}: {}", status.code(), status.message())),
        Ok(Ok(status)) => {
            let status = status.into_inner();
            let members: BTreeMap<u64, u64> = status
                .members
                .iter()
                .filter(|m| m.role != "fanout")
                .map(|m| (m.id, m.incarnation))
                .collect();
            if members.is_empty() {
                Answer::Uninitialized(status.incarnation)
            } else {
                Answer::Member(members)
            }
        }
    }
}

/// Ask the members at `through`, in turn, to add this node (this
/// incarnation of it), until one succeeds.
async fn join_cluster(
    config: &NodeConfig,
    through: &[String],
    incarnation: u64,
    outbound: &Outbound,
) {
    let voter = !config.learner;
    let mut attempt = 0u32;
    loop {
        let via = &through[attempt as usize % through.len()];
        attempt += 1;
        let result = match outbound.admin(via) {
            Ok(mut admin) => admin
                .add_node(AddNodeRequest {
                    id: config.id,
                    grpc_addr: config.advertise.clone(),
                    voter,
                    fanout: false,
                    incarnation,
                })
                .await
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => {
                let r = r.into_inner();
                tracing::info!(voters = ?r.voters, learners = ?r.learners, "joined the cluster via {via}");
                return;
            }
            Err(e) => {
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(attempt, "joining via {via}: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> BTreeMap<u64, String> {
        (1..=3).map(|i| (i, format!("10.0.0.{i}:7100"))).collect()
    }

    fn members(list: &[(u64, u64)]) -> Answer {
        Answer::Member(list.iter().copied().collect())
    }

    #[test]
    fn bootstraps_only_when_every_peer_answers_uninitialized() {
        let all = BTreeMap::from([
            (2, Answer::Uninitialized(20)),
            (3, Answer::Uninitialized(30)),
        ]);
        let Decision::Bootstrap(m) = decide(1, 10, &peers(), &all) else {
            panic!("expected a bootstrap");
        };
        let incarnations: Vec<u64> = m.values().map(|n| n.incarnation).collect();
        assert_eq!(incarnations, [10, 20, 30]);
        assert_eq!(m[&3].grpc_addr, "10.0.0.3:7100");

        let one_silent = BTreeMap::from([
            (2, Answer::Uninitialized(20)),
            (3, Answer::Silent("timed out".into())),
        ]);
        match decide(1, 10, &peers(), &one_silent) {
            Decision::Wait(why) => {
                assert!(why.contains("node 3 at 10.0.0.3:7100: timed out"), "{why}")
            }
            other => panic!("bootstrapped with a silent peer: {other:?}"),
        }
        let one_missing = BTreeMap::from([(2, Answer::Uninitialized(20))]);
        assert!(matches!(
            decide(1, 10, &peers(), &one_missing),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn only_the_lowest_id_bootstraps() {
        let all = BTreeMap::from([
            (1, Answer::Uninitialized(10)),
            (3, Answer::Uninitialized(30)),
        ]);
        match decide(2, 20, &peers(), &all) {
            Decision::Wait(why) => assert!(why.contains("node 1"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wiped_member_asks_to_be_replaced() {
        // Node 1's disk was lost: the cluster still lists incarnation 10.
        let answers = BTreeMap::from([
            (2, Answer::Silent("connection refused".into())),
            (3, members(&[(1, 10), (2, 20), (3, 30)])),
        ]);
        assert_eq!(
            decide(1, 11, &peers(), &answers),
            Decision::Join("10.0.0.3:7100".into())
        );
    }

    #[test]
    fn a_listed_member_waits_to_be_replicated_to() {
        let answers = BTreeMap::from([
            (2, members(&[(1, 10), (2, 20), (3, 30)])),
            (3, Answer::Silent("timed out".into())),
        ]);
        assert!(matches!(
            decide(1, 10, &peers(), &answers),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_node_left_out_of_the_cluster_asks_to_join() {
        let answers = BTreeMap::from([
            (1, members(&[(1, 10), (2, 20)])),
            (2, members(&[(1, 10), (2, 20)])),
        ]);
        assert_eq!(
            decide(3, 30, &peers(), &answers),
            Decision::Join("10.0.0.1:7100".into())
        );
    }
}
