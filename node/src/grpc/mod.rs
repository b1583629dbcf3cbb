//! The node's gRPC surface: the public `Publisher` and `Admin` services, the
//! internal `Raft` service, API-key authentication, and outbound clients.

pub mod admin;
pub mod auth;
pub mod edge_link;
pub mod outbound;
pub mod publisher;
pub mod raft;

/// Metadata key marking a request one node forwarded to another, so a
/// request is forwarded at most once.
pub const FORWARDED: &str = "x-herald-forwarded";

/// A stored publication as it travels on the wire.
pub(crate) fn to_wire(
    channel: &str,
    epoch: &str,
    p: crate::channels::StoredPublication,
) -> herald_proto::v1::Publication {
    herald_proto::v1::Publication {
        channel: channel.to_string(),
        offset: p.offset.0,
        epoch: epoch.to_string(),
        event_type: p.event_type,
        data: p.data,
        content_type: p.content_type,
        idempotency_key: p.idempotency_key,
        headers: p.headers.into_iter().collect(),
        published_at_ms: p.published_at_ms,
    }
}
