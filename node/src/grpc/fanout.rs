//! What a fan-out node serves besides `EdgeLink`: `Publisher` and `Admin`
//! answered by the voters. Publishes go once to the leader (or a voter that
//! forwards them), reads to the first voter that answers; only presence of
//! this node's own edges is answered here.

use std::sync::Arc;

use herald_proto::v1::admin_server::Admin;
use herald_proto::v1::publisher_server::Publisher;
use herald_proto::v1::{
    AddNodeRequest, AddNodeResponse, CampaignRequest, CampaignResponse, ChannelInfoRequest,
    ChannelInfoResponse, ChannelsRequest, ChannelsResponse, ClusterStatusRequest,
    ClusterStatusResponse, HistoryRequest, HistoryResponse, PresenceEventsRequest,
    PresenceEventsResponse, PresenceRequest, PresenceResponse, PresenceStatsResponse,
    PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse, RemoveNodeRequest,
    RemoveNodeResponse,
};
use tonic::{Request, Response, Status};

use crate::fanout_node::FanoutNode;

/// Serves `herald.v1.Publisher` on a fan-out node.
pub struct FanoutPublisher {
    node: Arc<FanoutNode>,
}

impl FanoutPublisher {
    /// Serve for this node.
    pub fn new(node: Arc<FanoutNode>) -> Self {
        Self { node }
    }
}

/// A read passed to the voters unchanged.
macro_rules! ask {
    ($node:expr, $method:ident, $req:expr) => {{
        let req = $req.into_inner();
        $node
            .ask(|mut c| {
                let req = req.clone();
                async move { c.$method(req).await }
            })
            .await
    }};
}

#[tonic::async_trait]
impl Publisher for FanoutPublisher {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        metrics::counter!("herald_publish_forwards_total").increment(1);
        self.node
            .forward_target()?
            .publish(req.into_inner())
            .await
            .map_err(|s| super::forwarding_failed("the voter forwarded to", s))
    }

    async fn publish_batch(
        &self,
        req: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        metrics::counter!("herald_publish_forwards_total").increment(1);
        self.node
            .forward_target()?
            .publish_batch(req.into_inner())
            .await
            .map_err(|s| super::forwarding_failed("the voter forwarded to", s))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        ask!(self.node, history, req)
    }

    async fn channels(
        &self,
        req: Request<ChannelsRequest>,
    ) -> Result<Response<ChannelsResponse>, Status> {
        ask!(self.node, channels, req)
    }

    async fn channel_info(
        &self,
        req: Request<ChannelInfoRequest>,
    ) -> Result<Response<ChannelInfoResponse>, Status> {
        ask!(self.node, channel_info, req)
    }

    /// The answering voter's view of the cluster, as seen from this node.
    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let mut status = ask!(self.node, cluster_status, req)?.into_inner();
        status.node_id = self.node.id;
        status.state = "fanout".to_string();
        Ok(Response::new(status))
    }

    /// Cluster-wide: the voter asked merges every node's, this one's too.
    async fn presence(
        &self,
        req: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        ask!(self.node, presence, req)
    }

    async fn presence_stats(
        &self,
        req: Request<PresenceRequest>,
    ) -> Result<Response<PresenceStatsResponse>, Status> {
        ask!(self.node, presence_stats, req)
    }

    async fn presence_local(
        &self,
        req: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        let channel = req.into_inner().channel;
        Ok(Response::new(PresenceResponse {
            clients: self.node.presence.local(&channel),
        }))
    }

    async fn presence_events(
        &self,
        req: Request<PresenceEventsRequest>,
    ) -> Result<Response<PresenceEventsResponse>, Status> {
        self.node.presence_events(req.into_inner().events);
        Ok(Response::new(PresenceEventsResponse {}))
    }
}

/// Serves `herald.v1.Admin` on a fan-out node: membership changes go to the
/// voters; it never campaigns.
pub struct FanoutAdmin {
    node: Arc<FanoutNode>,
}

impl FanoutAdmin {
    /// Serve for this node.
    pub fn new(node: Arc<FanoutNode>) -> Self {
        Self { node }
    }

    fn admin(&self) -> Result<crate::grpc::outbound::AdminClient, Status> {
        let (_, addr) = self
            .node
            .leader()
            .ok_or_else(|| Status::from(crate::rejection::Rejection::NoLeader))?;
        self.node
            .outbound
            .admin(&addr)
            .map_err(|e| crate::rejection::Rejection::LeaderUnreachable(e).into())
    }
}

#[tonic::async_trait]
impl Admin for FanoutAdmin {
    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        self.admin()?.add_node(req.into_inner()).await
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        self.admin()?.remove_node(req.into_inner()).await
    }

    async fn campaign(
        &self,
        _: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        Ok(Response::new(CampaignResponse { started: false }))
    }
}
