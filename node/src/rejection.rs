//! Every error a gRPC caller can see, each with a stable machine-readable
//! reason (`google.rpc.ErrorInfo.reason`, domain `herald.v1`) and a gRPC
//! status code. The reasons are part of the public contract and listed in
//! `docs/protocol.md`; never rename one.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejection {
    /// The channel name is empty.
    #[error("channel name is empty")]
    ChannelEmpty,
    /// The channel name is longer than the limit.
    #[error("channel name is {len} bytes, the limit is {max}")]
    ChannelTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The channel name has a bad character or shape.
    #[error("invalid channel name: {reason}")]
    ChannelInvalid {
        /// What is wrong.
        reason: &'static str,
    },
    /// The channel's namespace is not configured.
    #[error("unknown namespace `{namespace}`")]
    UnknownNamespace {
        /// The namespace named by the channel.
        namespace: String,
    },
    /// `data` is larger than the limit.
    #[error("payload is {size} bytes, the limit is {max}")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Too many publications in one batch.
    #[error("batch has {size} publications, the limit is {max}")]
    BatchTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A batch mixing ephemeral and history-keeping namespaces.
    #[error("a batch cannot mix ephemeral (history_size 0) and history-keeping channels")]
    MixedEphemeral,
    /// A batch without publications.
    #[error("batch is empty")]
    BatchEmpty,
    /// The idempotency key is too long.
    #[error("idempotency key is longer than {max} bytes")]
    IdempotencyKeyTooLong {
        /// The limit.
        max: usize,
    },
    /// Too many headers.
    #[error("more than {max} headers")]
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// A header name or value is too long.
    #[error("header `{name}`: name longer than {max_name} or value longer than {max_value} bytes")]
    HeaderTooLong {
        /// The header's name (cut to the limit).
        name: String,
        /// Longest name.
        max_name: usize,
        /// Longest value.
        max_value: usize,
    },
    /// The content type is too long.
    #[error("content type is longer than {max} bytes")]
    ContentTypeTooLong {
        /// The limit.
        max: usize,
    },
    /// The event type is too long.
    #[error("event type is longer than {max} bytes")]
    EventTypeTooLong {
        /// The limit.
        max: usize,
    },
    /// The payload breaks its event type's JSON Schema.
    #[error("schema violation at `{path}`: {message}")]
    SchemaViolation {
        /// JSON pointer to the failing value (`""` for the whole document).
        path: String,
        /// The validator's message.
        message: String,
    },
    /// One item of a batch was refused; the whole batch is.
    #[error("publication {index}: {inner}")]
    BatchItem {
        /// Index in the request.
        index: usize,
        /// Why.
        inner: Box<Rejection>,
    },
    /// No leader is known right now (election under way, or no quorum).
    #[error("no Raft leader is known; retry shortly")]
    NoLeader,
    /// This node leads but has not heard from a majority recently.
    #[error("the leader cannot reach a majority of voters; retry shortly")]
    NoQuorum,
    /// The publish was proposed but not committed in time; it may still be
    /// committed. Retry with the same idempotency key.
    #[error(
        "the publish was not committed in time (it may still be); retry with the same idempotency key"
    )]
    CommitTimeout,
    /// The leader is shutting down and handing over.
    #[error("the leader is stepping down; retry shortly")]
    SteppingDown,
    /// Forwarding to the leader failed.
    #[error("could not reach the leader: {0}")]
    LeaderUnreachable(String),
    /// The request named a node or membership change that cannot happen.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// This node's disk failed (a write, an fsync, or no space left): it
    /// acknowledges nothing more until restarted on a working disk. The
    /// publish may still be committed by the other nodes; retry it there
    /// with the same idempotency key.
    #[error("this node's storage failed ({0}); publish through another node")]
    StorageFailed(String),
    /// Raft stopped on this node.
    #[error("raft is shut down on this node: {0}")]
    RaftFatal(String),
    /// The caller sent no API key.
    #[error("missing `authorization: apikey <key>` metadata")]
    ApiKeyMissing,
    /// The API key is not one of the configured keys.
    #[error("API key is not valid")]
    ApiKeyInvalid,
    /// The caller's key or certificate does not carry a role this RPC
    /// accepts (e.g. a publish key calling `Admin` or `Raft`).
    #[error("this call needs the role {needed}; the caller's credentials do not carry it")]
    PermissionDenied {
        /// The accepted roles, `+`-separated (`node+admin`).
        needed: String,
    },
}

impl Rejection {
    /// The stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ChannelEmpty => "CHANNEL_EMPTY",
            Self::ChannelTooLong { .. } => "CHANNEL_TOO_LONG",
            Self::ChannelInvalid { .. } => "CHANNEL_INVALID",
            Self::UnknownNamespace { .. } => "NAMESPACE_UNKNOWN",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::BatchTooLarge { .. } => "BATCH_TOO_LARGE",
            Self::BatchEmpty => "BATCH_EMPTY",
            Self::MixedEphemeral => "BATCH_MIXES_EPHEMERAL",
            Self::IdempotencyKeyTooLong { .. } => "IDEMPOTENCY_KEY_TOO_LONG",
            Self::TooManyHeaders { .. } => "TOO_MANY_HEADERS",
            Self::EventTypeTooLong { .. } => "EVENT_TYPE_TOO_LONG",
            Self::HeaderTooLong { .. } => "HEADER_TOO_LONG",
            Self::ContentTypeTooLong { .. } => "CONTENT_TYPE_TOO_LONG",
            Self::SchemaViolation { .. } => "SCHEMA_VIOLATION",
            Self::BatchItem { inner, .. } => inner.reason(),
            Self::NoLeader => "NO_LEADER",
            Self::SteppingDown => "LEADER_STEPPING_DOWN",
            Self::NoQuorum => "NO_QUORUM",
            Self::CommitTimeout => "COMMIT_TIMEOUT",
            Self::LeaderUnreachable(_) => "LEADER_UNREACHABLE",
            Self::Membership(_) => "MEMBERSHIP_CHANGE_REFUSED",
            Self::RaftFatal(_) => "RAFT_STOPPED",
            Self::StorageFailed(_) => "STORAGE_FAILED",
            Self::ApiKeyMissing => "API_KEY_MISSING",
            Self::ApiKeyInvalid => "API_KEY_INVALID",
            Self::PermissionDenied { .. } => "PERMISSION_DENIED",
        }
    }

    /// The gRPC status code.
    pub fn code(&self) -> Code {
        match self {
            Self::NoLeader
            | Self::NoQuorum
            | Self::CommitTimeout
            | Self::SteppingDown
            | Self::LeaderUnreachable(_)
            | Self::StorageFailed(_)
            | Self::RaftFatal(_) => Code::Unavailable,
            Self::Membership(_) => Code::FailedPrecondition,
            Self::ApiKeyMissing | Self::ApiKeyInvalid => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::BatchItem { inner, .. } => inner.code(),
            _ => Code::InvalidArgument,
        }
    }

    fn metadata(&self) -> Vec<(String, String)> {
        match self {
            Self::SchemaViolation { path, .. } => vec![("path".into(), path.clone())],
            Self::BatchItem { index, inner } => {
                let mut m = inner.metadata();
                m.push(("index".into(), index.to_string()));
                m
            }
            Self::UnknownNamespace { namespace } => vec![("namespace".into(), namespace.clone())],
            Self::PermissionDenied { needed } => vec![("needed".into(), needed.clone())],
            Self::PayloadTooLarge { max, .. }
            | Self::ChannelTooLong { max, .. }
            | Self::BatchTooLarge { max, .. }
            | Self::ContentTypeTooLong { max } => {
                vec![("max".into(), max.to_string())]
            }
            _ => vec![],
        }
    }
}

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Status {
        let mut details = ErrorDetails::with_error_info(
            r.reason(),
            herald_proto::ERROR_DOMAIN,
            r.metadata()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
        if r.code() == Code::Unavailable {
            details.set_retry_info(Some(Duration::from_millis(250)));
        }
        Status::with_error_details(r.code(), r.to_string(), details)
    }
}

/// Read the reason back out of a status, as callers (and tests) do.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}
