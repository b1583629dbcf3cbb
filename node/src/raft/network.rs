//! Raft RPCs to other nodes over their gRPC port. Payloads are openraft's
//! own types in postcard; a transport failure is reported to openraft as
//! `Unreachable` so it backs off instead of spinning.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeInfo, TypeConfig, decode, encode};
use crate::grpc::outbound::{Outbound, RaftClient};
use herald_proto::v1::RaftPayload;

/// Creates one [`PeerNetwork`] per target node.
#[derive(Clone)]
pub struct Network {
    outbound: Outbound,
}

impl Network {
    /// Use these outbound credentials.
    pub fn new(outbound: Outbound) -> Self {
        Self { outbound }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Self::Network {
        PeerNetwork {
            target,
            client: self.outbound.raft(&node.grpc_addr),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerNetwork {
    target: u64,
    client: Result<RaftClient, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

type RpcErr<E> = RPCError<u64, NodeInfo, RaftError<u64, E>>;

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Transport(
                    e.clone(),
                ))));
            }
        };
        let mut request = tonic::Request::new(RaftPayload {
            data: encode(req).into(),
        });
        request.set_timeout(ttl);
        let response = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let payload = match response {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = Transport(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, RaftError<u64, E>> =
            decode(&payload.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr<openraft::error::Infallible>> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr<openraft::error::Infallible>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}
