//! Who belongs to the Raft group: adding a node (a learner first, a voter
//! only once it holds the log), replacing a member that came back with a
//! new incarnation, and removing one. Leader only; the `Admin` service
//! forwards calls here.
//!
//! A member is a node id *and* the incarnation of its data directory
//! ([`NodeInfo::incarnation`]). A node whose disk was lost restarts with the
//! same id but a new incarnation: it no longer holds the entries it
//! acknowledged nor remembers the votes it cast, so it must not be counted
//! as the member it was. Peers address every Raft RPC to the incarnation
//! the membership names, and the node refuses the others
//! (`grpc::raft`); here the cluster replaces the old member by the new
//! incarnation: removed (which needs a quorum of the remaining voters),
//! added back as a learner, and promoted only once the leader has
//! replicated the log to it.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_proto::v1::ClusterStatusRequest;
use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};

use crate::grpc::outbound::Outbound;
use crate::raft::{NodeInfo, Raft};
use crate::rejection::Rejection;

/// Add node `id` at `grpc_addr` (as a learner that catches up, then, if
/// `voter`, a voter), or replace the member `id` if it has another
/// incarnation. `incarnation` 0: ask the node itself.
pub(crate) async fn add(
    raft: &Raft,
    outbound: &Outbound,
    id: u64,
    grpc_addr: String,
    voter: bool,
    incarnation: u64,
) -> Result<(), Rejection> {
    if id == 0 {
        return Err(Rejection::Membership(
            "node id must be greater than 0".into(),
        ));
    }
    let incarnation = match incarnation {
        0 => incarnation_of(outbound, id, &grpc_addr).await?,
        i => i,
    };
    let node = NodeInfo {
        grpc_addr,
        incarnation,
    };
    let existing = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .cloned();
    match existing {
        Some(old) if old.grpc_addr != node.grpc_addr => {
            return Err(Rejection::Membership(format!(
                "node {id} is already a member at {}; remove it first",
                old.grpc_addr
            )));
        }
        Some(old) if old.incarnation == node.incarnation => {}
        Some(old) => {
            tracing::warn!(
                id,
                old = old.incarnation,
                new = node.incarnation,
                "node {id} came back with a new incarnation (its data directory was lost); \
                 replacing the member: removed, then re-added as a learner"
            );
            remove(raft, id).await?;
            raft.add_learner(id, node, true)
                .await
                .map_err(membership_error)?;
        }
        None => {
            raft.add_learner(id, node, true)
                .await
                .map_err(membership_error)?;
        }
    }
    let is_voter = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == id);
    if voter && !is_voter {
        caught_up(raft, id).await?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
    }
    Ok(())
}

/// Wait until the leader has replicated to learner `id` everything up to
/// the membership entry that lists it; refuse (retryably) if that takes
/// too long or leadership moves, so a learner is never promoted before it
/// holds every entry committed before it joined.
async fn caught_up(raft: &Raft, id: u64) -> Result<(), Rejection> {
    const PATIENCE: Duration = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (leader, needed, matched) = {
            let m = raft.metrics();
            let m = m.borrow();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten());
            (
                m.replication.is_some(),
                m.membership_config.log_id().map_or(0, |l| l.index),
                matched,
            )
        };
        if !leader {
            return Err(Rejection::NoLeader);
        }
        if matched.is_some_and(|m| m.index >= needed) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Rejection::Membership(format!(
                "node {id} has not caught up with the log within {PATIENCE:?}; retry"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Remove node `id` from the group entirely (voter or learner); removing a
/// node that is not a member succeeds.
pub(crate) async fn remove(raft: &Raft, id: u64) -> Result<(), Rejection> {
    let membership = raft.metrics().borrow().membership_config.clone();
    let membership = membership.membership();
    if membership.get_node(&id).is_none() {
        return Ok(());
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(Rejection::Membership("cannot remove the last voter".into()));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.change_membership(change, false)
        .await
        .map_err(membership_error)?;
    Ok(())
}

/// Voter and learner ids.
pub(crate) fn ids(raft: &Raft) -> (Vec<u64>, Vec<u64>) {
    let m = raft.metrics().borrow().membership_config.clone();
    let ms = m.membership();
    (ms.voter_ids().collect(), ms.learner_ids().collect())
}

/// The incarnation of the node serving at `grpc_addr`, which must be node
/// `id`.
async fn incarnation_of(outbound: &Outbound, id: u64, grpc_addr: &str) -> Result<u64, Rejection> {
    let unreachable = |e: String| {
        Rejection::Membership(format!(
            "asking the node at {grpc_addr} for its incarnation: {e}"
        ))
    };
    let mut client = outbound.publisher(grpc_addr).map_err(unreachable)?;
    let mut req = tonic::Request::new(ClusterStatusRequest {});
    req.set_timeout(Duration::from_secs(3));
    let status = client
        .cluster_status(req)
        .await
        .map_err(|s| unreachable(s.message().to_string()))?
        .into_inner();
    if status.node_id != id {
        return Err(Rejection::Membership(format!(
            "the node at {grpc_addr} is node {}, not node {id}",
            status.node_id
        )));
    }
    if status.incarnation == 0 {
        return Err(Rejection::Membership(format!(
            "the node at {grpc_addr} did not say its incarnation (a fan-out node?)"
        )));
    }
    Ok(status.incarnation)
}

fn membership_error(e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> Rejection {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Rejection::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Rejection::Membership(match c {
                ChangeMembershipError::InProgress(_) => {
                    "another membership change is in progress; retry".into()
                }
                other => other.to_string(),
            })
        }
        RaftError::Fatal(f) => Rejection::RaftFatal(f.to_string()),
    }
}
