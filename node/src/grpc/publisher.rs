//! The public `Publisher` service. Thin: requests are validated and turned
//! into Raft proposals by [`Replica`]; a follower forwards publishes (once)
//! to the leader, so callers may use any node.

use std::sync::Arc;
use std::time::Instant;

use herald_proto::v1::publisher_server::Publisher;
use herald_proto::v1::{
    ChannelInfoRequest, ChannelInfoResponse, ChannelSummary, ChannelsRequest, ChannelsResponse,
    ClusterMember, ClusterStatusRequest, ClusterStatusResponse, HistoryRequest, HistoryResponse,
    PresenceEventsRequest, PresenceEventsResponse, PresenceRequest, PresenceResponse,
    PresenceStatsResponse, PublishBatchRequest, PublishBatchResponse, PublishRequest,
    PublishResponse,
};
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::FORWARDED;
use crate::channels::{Accepted, Channel, Epoch, Offset, Since};
use crate::namespace::Namespace;
use crate::rejection::Rejection;
use crate::replica::{PublishOutcome, Replica};

/// Serves `herald.v1.Publisher`.
pub struct PublisherService {
    replica: Arc<Replica>,
}

impl PublisherService {
    /// Serve this replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    /// Validate, commit (here or on the leader) and answer one result per
    /// request item.
    async fn commit(
        &self,
        reqs: Vec<PublishRequest>,
        forwarded: bool,
    ) -> Result<Vec<PublishResponse>, Status> {
        let started = Instant::now();
        let mut result = self.commit_inner(reqs, forwarded).await;
        // A node whose disk failed while this was under way (here, or
        // while it was forwarded to the leader) acknowledges nothing.
        if result.is_ok()
            && let Some(refused) = self.replica.storage_failure()
        {
            result = Err(refused.into());
        }
        let label = match &result {
            Ok(_) => "ok",
            Err(s) => match s.code() {
                tonic::Code::InvalidArgument => "invalid",
                tonic::Code::Unavailable => "unavailable",
                _ => "error",
            },
        };
        metrics::counter!("herald_publishes_total", "result" => label).increment(1);
        if !forwarded {
            metrics::histogram!("herald_publish_duration_seconds", "result" => label)
                .record(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn commit_inner(
        &self,
        reqs: Vec<PublishRequest>,
        forwarded: bool,
    ) -> Result<Vec<PublishResponse>, Status> {
        let limits = &self.replica.namespaces.limits;
        if reqs.is_empty() {
            return Err(Rejection::BatchEmpty.into());
        }
        if reqs.len() > limits.max_batch {
            return Err(Rejection::BatchTooLarge {
                size: reqs.len(),
                max: limits.max_batch,
            }
            .into());
        }
        let single = reqs.len() == 1;
        let mut items = Vec::with_capacity(reqs.len());
        for (index, r) in reqs.iter().enumerate() {
            let item = self
                .replica
                .prepare(
                    r.channel.clone(),
                    r.event_type.clone(),
                    r.data.clone(),
                    r.content_type.clone(),
                    r.idempotency_key.clone(),
                    r.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
                .map_err(|e| {
                    if single {
                        e
                    } else {
                        Rejection::BatchItem {
                            index,
                            inner: Box::new(e),
                        }
                    }
                })?;
            items.push(item);
        }
        match self.replica.publish(items).await? {
            PublishOutcome::Done(accepted) => Ok(accepted.into_iter().map(to_response).collect()),
            PublishOutcome::Forward(_, _) if forwarded => Err(Rejection::NoLeader.into()),
            PublishOutcome::Forward(leader, node) => {
                metrics::counter!("herald_publish_forwards_total").increment(1);
                let mut client = self
                    .replica
                    .outbound
                    .publisher(&node.grpc_addr)
                    .map_err(Rejection::LeaderUnreachable)?;
                let mut req = Request::new(PublishBatchRequest { publications: reqs });
                req.metadata_mut().insert(
                    FORWARDED,
                    tonic::metadata::MetadataValue::from(self.replica.id),
                );
                client
                    .publish_batch(req)
                    .await
                    .map(|r| r.into_inner().results)
                    .map_err(|s| super::forwarding_failed(&format!("node {leader}"), s))
            }
        }
    }
}

/// How long a presence query waits for each other node.
const PRESENCE_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1000);

impl PublisherService {
    /// This node's presence of `channel` merged with every other node's
    /// (voters, learners and registered fan-out nodes); a node that
    /// does not answer within [`PRESENCE_PEER_TIMEOUT`] contributes nothing.
    async fn cluster_presence(
        &self,
        channel: String,
    ) -> Result<Vec<herald_proto::v1::ClientInfo>, Status> {
        let ns = self.replica.namespaces.resolve(&channel)?;
        if !ns.config.presence {
            let details = tonic_types::ErrorDetails::with_error_info(
                "PRESENCE_DISABLED",
                herald_proto::ERROR_DOMAIN,
                std::collections::HashMap::from([("namespace".to_string(), ns.name.clone())]),
            );
            return Err(<Status as tonic_types::StatusExt>::with_error_details(
                tonic::Code::FailedPrecondition,
                format!("namespace {:?} does not have presence enabled", ns.name),
                details,
            ));
        }
        let local = self.replica.presence.local(&channel);
        let fanout = self.replica.fanout_nodes();
        let peers: Vec<String> = self
            .replica
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.grpc_addr.clone()))
            .chain(fanout)
            .filter(|(id, _)| *id != self.replica.id)
            .map(|(_, addr)| addr)
            .collect();
        let calls = peers.into_iter().map(|addr| {
            let client = self.replica.outbound.publisher(&addr);
            let req = PresenceRequest {
                channel: channel.clone(),
            };
            async move {
                let mut client = client.ok()?;
                match tokio::time::timeout(PRESENCE_PEER_TIMEOUT, client.presence_local(req)).await
                {
                    Ok(Ok(r)) => Some(r.into_inner().clients),
                    _ => {
                        metrics::counter!("herald_presence_peer_failures_total").increment(1);
                        None
                    }
                }
            }
        });
        let remote = futures::future::join_all(calls).await;
        Ok(crate::presence::merge(
            std::iter::once(local).chain(remote.into_iter().flatten()),
        ))
    }
}

fn to_response(a: Accepted) -> PublishResponse {
    PublishResponse {
        channel: a.channel,
        offset: a.offset.0,
        epoch: a.epoch.0,
        duplicate: a.duplicate,
        published_at_ms: a.published_at_ms,
    }
}

fn summary(name: &str, namespace: &str, c: &Channel) -> ChannelSummary {
    ChannelSummary {
        channel: name.to_string(),
        namespace: namespace.to_string(),
        epoch: c.epoch.0.clone(),
        offset: c.last_offset.0,
        history_len: c.history().len() as u32,
        last_published_at_ms: c.last_published_at_ms,
    }
}

fn namespace_of(name: &str) -> &str {
    name.split_once(':')
        .map_or(crate::namespace::DEFAULT_NAMESPACE, |(ns, _)| ns)
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn info(ns: &Namespace, channel: ChannelSummary) -> ChannelInfoResponse {
    ChannelInfoResponse {
        channel: Some(channel),
        history_size: ns.config.history_size,
        history_ttl_ms: ns.config.history_ttl_secs * 1000,
        allow_client_publish: ns.config.allow_client_publish,
        presence: ns.config.presence,
        schema_event_types: ns.config.schemas.keys().cloned().collect(),
    }
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let mut out = self.commit(vec![req.into_inner()], forwarded).await?;
        let first = out
            .pop()
            .ok_or_else(|| Status::internal("empty publish result"))?;
        Ok(Response::new(first))
    }

    async fn publish_batch(
        &self,
        req: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let results = self
            .commit(req.into_inner().publications, forwarded)
            .await?;
        Ok(Response::new(PublishBatchResponse { results }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        if r.linearizable {
            match self.replica.leader() {
                Some((id, _)) if id == self.replica.id => self.replica.read_barrier().await?,
                Some(_) if forwarded => return Err(Rejection::NoLeader.into()),
                Some((id, node)) => {
                    let mut client = self
                        .replica
                        .outbound
                        .publisher(&node.grpc_addr)
                        .map_err(Rejection::LeaderUnreachable)?;
                    let mut fwd = Request::new(r);
                    fwd.metadata_mut().insert(
                        FORWARDED,
                        tonic::metadata::MetadataValue::from(self.replica.id),
                    );
                    return client.history(fwd).await.map_err(
                        |s| match crate::rejection::reason_of(&s) {
                            Some(_) => s,
                            None => {
                                Rejection::LeaderUnreachable(format!("node {id}: {}", s.message()))
                                    .into()
                            }
                        },
                    );
                }
                None => return Err(Rejection::NoLeader.into()),
            }
        }
        let since = r.since.map(|s| Since {
            offset: Offset(s.offset),
            epoch: Epoch(s.epoch),
        });
        let page = self
            .replica
            .history(&r.channel, since.as_ref(), r.limit, r.reverse)?;
        Ok(Response::new(super::page_to_wire(&r.channel, page)))
    }

    async fn channels(
        &self,
        req: Request<ChannelsRequest>,
    ) -> Result<Response<ChannelsResponse>, Status> {
        let r = req.into_inner();
        let channels = if r.names.is_empty() {
            self.replica
                .channels(&r.pattern, |name, c| summary(name, namespace_of(name), c))
        } else {
            r.names
                .iter()
                .filter_map(|name| {
                    self.replica
                        .channel(name, |c| summary(name, namespace_of(name), c))
                })
                .collect()
        };
        Ok(Response::new(ChannelsResponse { channels }))
    }

    async fn channel_info(
        &self,
        req: Request<ChannelInfoRequest>,
    ) -> Result<Response<ChannelInfoResponse>, Status> {
        let name = req.into_inner().channel;
        let ns = self.replica.namespaces.resolve(&name)?;
        // A valid channel that holds no state (never published to, or
        // forgotten by a sweep) exists implicitly, at offset 0 of the epoch
        // its next life will have, with its namespace's settings.
        let channel = match self.replica.channel(&name, |c| summary(&name, &ns.name, c)) {
            Some(c) => c,
            None => ChannelSummary {
                channel: name.clone(),
                namespace: ns.name.clone(),
                epoch: self.replica.history(&name, None, 1, false)?.epoch.0,
                ..Default::default()
            },
        };
        Ok(Response::new(info(ns, channel)))
    }

    async fn presence(
        &self,
        req: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        let clients = self.cluster_presence(req.into_inner().channel).await?;
        Ok(Response::new(PresenceResponse { clients }))
    }

    async fn presence_stats(
        &self,
        req: Request<PresenceRequest>,
    ) -> Result<Response<PresenceStatsResponse>, Status> {
        let clients = self.cluster_presence(req.into_inner().channel).await?;
        Ok(Response::new(crate::presence::stats(&clients)))
    }

    async fn presence_local(
        &self,
        req: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        let channel = req.into_inner().channel;
        Ok(Response::new(PresenceResponse {
            clients: self.replica.presence.local(&channel),
        }))
    }

    async fn presence_events(
        &self,
        req: Request<PresenceEventsRequest>,
    ) -> Result<Response<PresenceEventsResponse>, Status> {
        let origin = req
            .metadata()
            .get(super::RELAY_FROM)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let events = req.into_inner().events;
        match origin {
            Some(origin) => self.replica.relay_presence(events, origin),
            None => self.replica.presence_events(events),
        }
        Ok(Response::new(PresenceEventsResponse {}))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let m = self.replica.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| ClusterMember {
                id: *id,
                grpc_addr: node.grpc_addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_string(),
                matched_index: m
                    .replication
                    .as_ref()
                    .map(|r| r.get(id).and_then(|l| *l).map_or(0, |l| l.index))
                    .or_else(|| (*id == self.replica.id).then(|| m.last_log_index.unwrap_or(0))),
                incarnation: node.incarnation,
            })
            .chain(
                self.replica
                    .fanout_nodes()
                    .into_iter()
                    .map(|(id, grpc_addr)| ClusterMember {
                        id,
                        grpc_addr,
                        role: "fanout".to_string(),
                        matched_index: None,
                        incarnation: 0,
                    }),
            )
            .collect();
        let leader_grpc_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.grpc_addr.clone())
            .unwrap_or_default();
        Ok(Response::new(ClusterStatusResponse {
            node_id: self.replica.id,
            state: state_name(m.state).to_string(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: self.replica.committed_index(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            leader_grpc_addr,
            incarnation: self.replica.incarnation(),
            joining: self.replica.joining(),
        }))
    }
}
