//! The `herald.v1` wire contracts, generated from `proto/herald/v1/*.proto`,
//! and the edge's Protobuf client protocol (`proto/centrifugal/client/v2`).
//!
//! This crate is the one place wire types are defined; binaries and tests
//! import them from here and never redefine a message by hand.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Messages and services of the `herald.v1` package.
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// The Centrifugo client protocol v2 in Protobuf (package
/// `centrifugal.client.v2`, `proto/centrifugal/client/v2/client.proto`):
/// what the edge speaks under the `centrifuge-protobuf` WebSocket
/// subprotocol.
pub mod client_v2 {
    tonic::include_proto!("centrifugal.client.v2");
}

pub mod limits;
pub mod payload;

/// Encoded `FileDescriptorSet` of every Herald proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("herald_descriptor");

/// The `domain` of every `google.rpc.ErrorInfo` Herald attaches to a status.
pub const ERROR_DOMAIN: &str = "herald.v1";
