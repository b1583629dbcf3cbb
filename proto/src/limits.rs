//! Message sizes every gRPC client and server of a Herald cluster agrees
//! on.
//!
//! tonic refuses, by default, to decode a message over 4 MiB. Nodes answer
//! history reads and EdgeLink re-subscriptions with many publications in
//! one message, so a receiver left at the default would fail to decode a
//! large backlog, forever (every retry asks for the same backlog). Two
//! rules keep both ends in agreement: every client and server accepts
//! [`MAX_MESSAGE_BYTES`], and nodes cut every answer that carries several
//! publications at [`PAGE_BYTES`] (one publication always fits: it was
//! accepted as part of a request of at most [`MAX_MESSAGE_BYTES`]).

/// Largest gRPC message any Herald client or server sends or accepts
/// (a full `PublishBatch`; history pages stay far below it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most publication bytes a node puts in one answer (a `History` page, an
/// EdgeLink `subscribed`); the first publication is always included.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
