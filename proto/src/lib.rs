//! The `herald.v1` wire contracts, generated from `proto/herald/v1/*.proto`.
//!
//! This crate is the one place wire types are defined; binaries and tests
//! import them from here and never redefine a message by hand.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Messages and services of the `herald.v1` package.
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// Encoded `FileDescriptorSet` of every Herald proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("herald_descriptor");

/// The `domain` of every `google.rpc.ErrorInfo` Herald attaches to a status.
pub const ERROR_DOMAIN: &str = "herald.v1";
