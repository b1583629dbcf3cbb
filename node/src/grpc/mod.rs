//! The node's gRPC surface: the public `Publisher` and `Admin` services, the
//! internal `Raft` service, API-key authentication, and outbound clients.

pub mod admin;
pub mod auth;
pub mod outbound;
pub mod publisher;
pub mod raft;

/// Metadata key marking a request one node forwarded to another, so a
/// request is forwarded at most once.
pub const FORWARDED: &str = "x-herald-forwarded";
