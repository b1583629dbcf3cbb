//! The internal `Raft` service: decodes openraft requests sent by peers,
//! hands them to the local Raft, and encodes the result (including Raft's
//! own errors, which the caller re-raises as remote errors).

use std::sync::Arc;

use herald_proto::v1::RaftPayload;
use herald_proto::v1::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};

use crate::raft::{Command, Raft, decode, encode};

/// Serves Raft RPCs to peers.
pub struct RaftService {
    raft: Arc<Raft>,
}

impl RaftService {
    /// Serve this Raft.
    pub fn new(raft: Raft) -> Self {
        Self {
            raft: Arc::new(raft),
        }
    }
}

fn bad_payload(e: postcard::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        let res = self.raft.append_entries(rpc).await;
        Ok(Response::new(RaftPayload {
            data: encode(&res).into(),
        }))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        let res = self.raft.vote(rpc).await;
        Ok(Response::new(RaftPayload {
            data: encode(&res).into(),
        }))
    }

    async fn submit(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let cmd: Command = decode(&req.into_inner().data).map_err(bad_payload)?;
        // Publishes go through validation on the Publisher service, never here.
        if matches!(cmd, Command::Publish(_)) {
            return Err(Status::invalid_argument(
                "publishes are not accepted on Submit",
            ));
        }
        match self.raft.client_write(cmd).await {
            Ok(_) => Ok(Response::new(RaftPayload {
                data: Default::default(),
            })),
            Err(e) => Err(Status::unavailable(format!("not committed: {e}"))),
        }
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        let res = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(RaftPayload {
            data: encode(&res).into(),
        }))
    }
}
