//! `herald status`: what the node at `--server` knows about the cluster, for
//! a human reading a terminal.
//!
//! Owns only the rendering of `ClusterStatus`; matched indexes are known to
//! the leader alone, so on a follower they show as `-`. Fan-out nodes are
//! listed with the role `fanout`; asked directly, one shows no log line.

use std::fmt::Write;

use herald_proto::v1::{ClusterStatusRequest, ClusterStatusResponse};

use crate::client::Server;

pub(crate) async fn run(server: &Server) -> anyhow::Result<()> {
    let conn = server.connect().await?;
    let status = conn
        .publisher()
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(|s| conn.error(s))?
        .into_inner();
    print!("{}", render(&status));
    Ok(())
}

fn render(s: &ClusterStatusResponse) -> String {
    let mut out = String::new();
    let leader = match s.leader_id {
        Some(id) if s.leader_grpc_addr.is_empty() => format!("leader {id}"),
        Some(id) => format!("leader {id} at {}", s.leader_grpc_addr),
        None => "no leader".to_string(),
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "node {}: {}, {leader}, term {}",
        s.node_id, s.state, s.term
    );
    if !s.joining.is_empty() {
        let _ = writeln!(out, "not in a cluster yet: {}", s.joining);
    }
    // A fan-out node holds no Raft log.
    if s.state != "fanout" {
        let _ = writeln!(
            out,
            "log: last {}, committed {}, applied {}, snapshot {}, purged {}",
            s.last_log_index, s.committed_index, s.applied_index, s.snapshot_index, s.purged_index
        );
    }
    let _ = writeln!(out, "members:");
    let width = s
        .members
        .iter()
        .map(|m| m.grpc_addr.len())
        .max()
        .unwrap_or(0);
    for m in &s.members {
        let matched = m
            .matched_index
            .map_or_else(|| "-".to_string(), |i| i.to_string());
        let me = if m.id == s.node_id {
            "  (this node)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:>3}  {:<7}  {:<width$}  matched {matched}{me}",
            m.id, m.role, m.grpc_addr
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::ClusterMember;

    #[test]
    fn renders_leader_indexes_and_members() {
        let s = ClusterStatusResponse {
            node_id: 1,
            state: "leader".into(),
            leader_id: Some(1),
            term: 2,
            last_log_index: 5,
            committed_index: 5,
            applied_index: 5,
            members: vec![
                ClusterMember {
                    id: 1,
                    grpc_addr: "127.0.0.1:7100".into(),
                    role: "voter".into(),
                    matched_index: Some(5),
                    ..Default::default()
                },
                ClusterMember {
                    id: 4,
                    grpc_addr: "10.0.0.4:7100".into(),
                    role: "learner".into(),
                    matched_index: None,
                    ..Default::default()
                },
            ],
            snapshot_index: 0,
            purged_index: 0,
            leader_grpc_addr: "127.0.0.1:7100".into(),
            ..Default::default()
        };
        assert_eq!(
            render(&s),
            "node 1: leader, leader 1 at 127.0.0.1:7100, term 2\n\
             log: last 5, committed 5, applied 5, snapshot 0, purged 0\n\
             members:\n    \
               1  voter    127.0.0.1:7100  matched 5  (this node)\n    \
               4  learner  10.0.0.4:7100   matched -\n"
        );
    }

    #[test]
    fn renders_a_fanout_node() {
        let s = ClusterStatusResponse {
            node_id: 5,
            state: "fanout".into(),
            leader_id: Some(1),
            term: 3,
            members: vec![ClusterMember {
                id: 5,
                grpc_addr: "10.0.0.5:7100".into(),
                role: "fanout".into(),
                matched_index: None,
                ..Default::default()
            }],
            leader_grpc_addr: "10.0.0.1:7100".into(),
            ..Default::default()
        };
        assert_eq!(
            render(&s),
            "node 5: fanout, leader 1 at 10.0.0.1:7100, term 3\n\
             members:\n    \
               5  fanout   10.0.0.5:7100  matched -  (this node)\n"
        );
    }

    #[test]
    fn renders_missing_leader() {
        let s = ClusterStatusResponse {
            node_id: 2,
            state: "candidate".into(),
            ..Default::default()
        };
        assert!(render(&s).starts_with("node 2: candidate, no leader, term 0\n"));
    }

    #[test]
    fn renders_why_a_node_waits() {
        let s = ClusterStatusResponse {
            node_id: 1,
            state: "learner".into(),
            joining: "waiting for peer 3 to answer".into(),
            ..Default::default()
        };
        assert!(render(&s).contains("\nnot in a cluster yet: waiting for peer 3 to answer\n"));
    }
}
