//! Raft RPCs to other nodes over their gRPC port. Payloads are openraft's
//! own types in postcard; a transport failure is reported to openraft as
//! `Unreachable` so it backs off instead of spinning. Every request names
//! the member it is meant for ([`Addressee`]: node id and incarnation, from
//! the membership), so a node that lost its disk refuses to act as the
//! member it used to be.

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

/// Metadata key on every Raft RPC: the [`Addressee`] the sender's
/// membership names for the receiving node.
pub const ADDRESSEE: &str = "x-herald-raft-addressee";

/// The member a Raft RPC is addressed to: `<node id>.<incarnation>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressee {
    /// The node id.
    pub id: u64,
    /// The incarnation of its data directory.
    pub incarnation: u64,
}

impl std::fmt::Display for Addressee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.incarnation)
    }
}

impl std::str::FromStr for Addressee {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("malformed raft addressee {s:?} (want <id>.<incarnation>)");
        let (id, incarnation) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            id: id.parse().map_err(|_| bad())?,
            incarnation: incarnation.parse().map_err(|_| bad())?,
        })
    }
}

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
        let addressee = Addressee {
            id: target,
            incarnation: node.incarnation,
        };
        PeerNetwork {
            target,
            addressee: tonic::metadata::MetadataValue::try_from(addressee.to_string())
                .expect("digits and a dot are valid metadata"),
            client: self.outbound.raft(&node.grpc_addr),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerNetwork {
    target: u64,
    addressee: tonic::metadata::AsciiMetadataValue,
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
        request
            .metadata_mut()
            .insert(ADDRESSEE, self.addressee.clone());
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

#[cfg(test)]
mod tests {
    use super::Addressee;

    #[test]
    fn addressee_round_trips_and_rejects_garbage() {
        let a = Addressee {
            id: 3,
            incarnation: u64::MAX,
        };
        assert_eq!(a.to_string().parse::<Addressee>(), Ok(a));
        for bad in ["", "3", "3.", ".7", "x.7", "3.y", "3.7.1", "-1.2"] {
            assert!(bad.parse::<Addressee>().is_err(), "{bad:?} accepted");
        }
    }
}
