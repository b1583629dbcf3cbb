//! The node's gRPC surface: the public `Publisher` and `Admin` services, the
//! internal `Raft` service, API-key authentication, outbound clients, and
//! what a fan-out node serves instead ([`fanout`]).

pub mod admin;
pub mod auth;
pub mod edge_link;
pub mod fanout;
pub mod outbound;
pub mod publisher;
pub mod raft;

/// Metadata key marking a request one node forwarded to another, so a
/// request is forwarded at most once.
pub const FORWARDED: &str = "x-herald-forwarded";

/// Metadata key on `PresenceEvents` from a fan-out node: the receiving voter
/// passes the events on to every other node with interest (except the
/// sender, whose id the value carries).
pub const RELAY_FROM: &str = "x-herald-relay-from";

/// What a node answers when a call it forwarded to the leader failed: the
/// leader's own rejections (they carry a reason) pass through unchanged; a
/// failure of the call itself — the leader died mid-call, its connection
/// reset — becomes the retryable `LEADER_UNREACHABLE`, so the caller
/// retries with the same idempotency key instead of seeing a bare
/// transport error it cannot classify.
pub(crate) fn forwarding_failed(to: &str, s: tonic::Status) -> tonic::Status {
    let answered_by_leader = crate::rejection::reason_of(&s).is_some()
        || !matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        );
    if answered_by_leader {
        return s;
    }
    crate::rejection::Rejection::LeaderUnreachable(format!("{to}: {}", s.message())).into()
}

/// A history page as it travels on the wire.
pub(crate) fn page_to_wire(
    channel: &str,
    page: crate::channels::HistoryPage,
) -> herald_proto::v1::HistoryResponse {
    let epoch = page.epoch.0;
    herald_proto::v1::HistoryResponse {
        publications: page
            .publications
            .into_iter()
            .map(|p| to_wire(channel, &epoch, p))
            .collect(),
        epoch,
        offset: page.offset.0,
        in_window: page.in_window,
        first_offset: page.first_offset.0,
    }
}

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
