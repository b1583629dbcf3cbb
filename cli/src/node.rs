//! `herald node add|remove`: runtime membership changes (Raft members and
//! fan-out nodes) through the Admin service (any node forwards them to the
//! Raft leader).
//!
//! Owns only the flags and the printed membership; the safety of a change
//! (e.g. never removing the last voter) is the server's to enforce.

use clap::Subcommand;
use herald_proto::v1::{AddNodeRequest, RemoveNodeRequest};

use crate::client::Server;

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Add a node: it catches up as a learner, then becomes a voter.
    Add {
        /// The new node's id (its `--id`).
        id: u64,
        /// Address other nodes and clients use to reach its gRPC port.
        grpc_addr: String,
        /// Keep it a non-voting learner.
        #[arg(long, conflicts_with = "fanout")]
        learner: bool,
        /// Register a fan-out node (started with `herald-node --fanout`):
        /// outside Raft, it receives only the channels its edges subscribe to.
        #[arg(long)]
        fanout: bool,
    },
    /// Remove a node from the cluster (a voter, a learner or a fan-out node).
    Remove {
        /// The node's id.
        id: u64,
    },
}

pub(crate) async fn run(server: &Server, command: NodeCommand) -> anyhow::Result<()> {
    let conn = server.connect().await?;
    let mut admin = conn.admin();
    let (voters, learners, fanout) = match command {
        NodeCommand::Add {
            id,
            grpc_addr,
            learner,
            fanout,
        } => {
            let request = AddNodeRequest {
                id,
                grpc_addr,
                voter: !learner && !fanout,
                fanout,
                // The leader asks the node for its incarnation.
                incarnation: 0,
            };
            let r = admin
                .add_node(request)
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            (r.voters, r.learners, r.fanout)
        }
        NodeCommand::Remove { id } => {
            let r = admin
                .remove_node(RemoveNodeRequest { id })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            (r.voters, r.learners, r.fanout)
        }
    };
    println!(
        "voters {} learners {} fanout {}",
        ids(&voters),
        ids(&learners),
        ids(&fanout)
    );
    Ok(())
}

fn ids(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "-".to_string();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}
