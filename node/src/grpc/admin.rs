//! The `Admin` service: runtime membership changes (Raft members and fan-out
//! nodes; forwarded to the leader from any node) and the internal leadership
//! hand-off.

use std::sync::Arc;

use herald_proto::v1::admin_server::Admin;
use herald_proto::v1::{
    AddNodeRequest, AddNodeResponse, CampaignRequest, CampaignResponse, RemoveNodeRequest,
    RemoveNodeResponse,
};
use tonic::{Request, Response, Status};

use super::FORWARDED;
use crate::rejection::Rejection;
use crate::replica::Replica;

/// Serves `herald.v1.Admin`.
pub struct AdminService {
    replica: Arc<Replica>,
}

impl AdminService {
    /// Serve this replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    /// The leader's admin client when this node is not the leader.
    fn forward_target(
        &self,
        forwarded: bool,
    ) -> Result<Option<crate::grpc::outbound::AdminClient>, Status> {
        match self.replica.leader() {
            Some((id, _)) if id == self.replica.id => Ok(None),
            Some(_) if forwarded => Err(Rejection::NoLeader.into()),
            Some((_, node)) => Ok(Some(
                self.replica
                    .outbound
                    .admin(&node.grpc_addr)
                    .map_err(Rejection::LeaderUnreachable)?,
            )),
            None => Err(Rejection::NoLeader.into()),
        }
    }

    fn fanout_ids(&self) -> Vec<u64> {
        self.replica
            .fanout_nodes()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn mark<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            FORWARDED,
            tonic::metadata::MetadataValue::from(self.replica.id),
        );
        r
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        if let Some(mut leader) = self.forward_target(forwarded)? {
            return leader.add_node(self.mark(r)).await;
        }
        if r.fanout {
            self.replica.add_fanout(r.id, r.grpc_addr).await?;
        } else {
            self.replica
                .add_node(r.id, r.grpc_addr, r.voter, r.incarnation)
                .await?;
        }
        let (voters, learners) = self.replica.members();
        let fanout = self.fanout_ids();
        Ok(Response::new(AddNodeResponse {
            voters,
            learners,
            fanout,
        }))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        if let Some(mut leader) = self.forward_target(forwarded)? {
            return leader.remove_node(self.mark(r)).await;
        }
        self.replica.remove_node(r.id).await?;
        let (voters, learners) = self.replica.members();
        let fanout = self.fanout_ids();
        Ok(Response::new(RemoveNodeResponse {
            voters,
            learners,
            fanout,
        }))
    }

    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.replica.campaign(req.into_inner().from_leader);
        Ok(Response::new(CampaignResponse { started: true }))
    }
}
