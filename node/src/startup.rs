//! How a node with an empty disk finds its cluster: join through a member
//! (`--join`), or bootstrap from the static peer list, but only as the
//! lowest listed id and only when no listed peer already belongs to a
//! cluster (a node whose disk was wiped must rejoin, never fork a new one).
//! A listed peer that finds a running cluster without it asks to be added.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_proto::v1::{AddNodeRequest, ClusterStatusRequest};

use crate::config::NodeConfig;
use crate::grpc::outbound::Outbound;
use crate::raft::{NodeInfo, Raft};

/// Bootstrap, join or do nothing (already initialized).
pub(crate) async fn bootstrap_or_join(config: NodeConfig, raft: Raft, outbound: Outbound) {
    match raft.is_initialized().await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            tracing::error!("raft stopped before start-up: {e}");
            return;
        }
    }
    if !config.join.is_empty() {
        join_cluster(&config, &config.join, &outbound).await;
        return;
    }
    let lowest = config.peers.keys().next().copied();
    if lowest != Some(config.id) {
        tracing::info!("waiting for the bootstrap node to contact this one");
        join_if_left_out(&config, &raft, &outbound).await;
        return;
    }
    loop {
        match any_peer_in_cluster(&config, &outbound).await {
            Some((peer, _)) => {
                tracing::info!(
                    peer,
                    "a peer already belongs to a cluster; waiting to be replicated to"
                );
                join_if_left_out(&config, &raft, &outbound).await;
                return;
            }
            None => {
                let members: BTreeMap<u64, NodeInfo> = config
                    .peers
                    .iter()
                    .map(|(id, addr)| {
                        (
                            *id,
                            NodeInfo {
                                grpc_addr: addr.clone(),
                            },
                        )
                    })
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => {
                        tracing::info!("bootstrapped a new cluster");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("bootstrap: {e}");
                        if raft.is_initialized().await.unwrap_or(true) {
                            return;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A node listed in `--peers` may not be a member (the StatefulSet was
/// scaled up after the cluster formed): once a peer shows a cluster that
/// does not include this node, ask it to add us, as `--join` would.
async fn join_if_left_out(config: &NodeConfig, raft: &Raft, outbound: &Outbound) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        if let Some((_, members)) = any_peer_in_cluster(config, outbound).await
            && !members.contains(&config.id)
        {
            let via = config
                .peers
                .iter()
                .find(|(id, _)| members.contains(id))
                .map(|(_, addr)| addr.clone());
            if let Some(via) = via {
                tracing::info!(
                    "not a member of the running cluster; asking {via} to add this node"
                );
                join_cluster(config, &[via], outbound).await;
                return;
            }
        }
    }
}

/// The first listed peer that belongs to a cluster, with its member ids.
async fn any_peer_in_cluster(config: &NodeConfig, outbound: &Outbound) -> Option<(u64, Vec<u64>)> {
    for (id, addr) in &config.peers {
        if *id == config.id {
            continue;
        }
        let Ok(mut client) = outbound.publisher(addr) else {
            continue;
        };
        let mut req = tonic::Request::new(ClusterStatusRequest {});
        req.set_timeout(Duration::from_millis(500));
        let answer = tokio::time::timeout(Duration::from_secs(1), client.cluster_status(req)).await;
        if let Ok(Ok(status)) = answer {
            let members: Vec<u64> = status.into_inner().members.iter().map(|m| m.id).collect();
            if !members.is_empty() {
                return Some((*id, members));
            }
        }
    }
    None
}

/// Ask the members at `through`, in turn, to add this node.
async fn join_cluster(config: &NodeConfig, through: &[String], outbound: &Outbound) {
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
