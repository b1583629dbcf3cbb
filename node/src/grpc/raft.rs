//! The internal `Raft` service: decodes openraft requests sent by peers,
//! hands them to the local Raft, and encodes the result (including Raft's
//! own errors, which the caller re-raises as remote errors).
//!
//! A vote, append or snapshot is served only when it is addressed to this
//! node's current incarnation. A node that lost its data directory lost
//! the entries it acknowledged and the votes it cast; answering as the
//! member it used to be could elect a leader without an acknowledged entry
//! or commit an entry on a forgotten promise. It is refused
//! (`FAILED_PRECONDITION`) until the membership names its new incarnation.

use std::sync::Arc;

use herald_proto::v1::RaftPayload;
use herald_proto::v1::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};

use crate::raft::network::{ADDRESSEE, Addressee};
use crate::raft::{Command, Raft, decode, encode};

/// Serves Raft RPCs to peers.
pub struct RaftService {
    raft: Arc<Raft>,
    me: Addressee,
}

impl RaftService {
    /// Serve this Raft, as the member `me`.
    pub fn new(raft: Raft, me: Addressee) -> Self {
        Self {
            raft: Arc::new(raft),
            me,
        }
    }

    /// Refuse a request meant for another node or another incarnation.
    fn addressed_to_me<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let named = req
            .metadata()
            .get(ADDRESSEE)
            .ok_or_else(|| format!("no {ADDRESSEE} header"))
            .and_then(|v| v.to_str().map_err(|e| e.to_string()))
            .and_then(str::parse::<Addressee>);
        let why = match named {
            Ok(to) if to == self.me => return Ok(()),
            Ok(to) if to.id != self.me.id => format!("addressed to node {}", to.id),
            Ok(to) => format!(
                "addressed to incarnation {} of node {}; this data directory is incarnation {} \
                 (the node lost its disk and waits to be re-added)",
                to.incarnation, to.id, self.me.incarnation
            ),
            Err(e) => e,
        };
        metrics::counter!("herald_raft_refused_total").increment(1);
        tracing::debug!("refusing a raft request: {why}");
        Err(Status::failed_precondition(format!(
            "refused by node {}: {why}",
            self.me
        )))
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
        self.addressed_to_me(&req)?;
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        let res = self.raft.append_entries(rpc).await;
        Ok(Response::new(RaftPayload {
            data: encode(&res).into(),
        }))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.addressed_to_me(&req)?;
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
        self.addressed_to_me(&req)?;
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        let res = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(RaftPayload {
            data: encode(&res).into(),
        }))
    }
}
