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

/// The identities the cluster CA vouches for, written in a certificate as a
/// subject-alternative-name URI: `herald://node/<id>` for node `<id>` (a
/// voter, learner or fan-out node), `herald://edge` for any edge. Nodes
/// decide what a TLS peer may call from this alone (`docs/security.md`), so
/// the format is part of the contract between whoever issues certificates
/// (`herald certs`, the Helm chart, cert-manager) and the nodes.
pub mod identity {
    /// URI scheme of every identity.
    pub const SCHEME: &str = "herald";
    /// The identity of every edge.
    pub const EDGE_URI: &str = "herald://edge";

    /// The identity of node `id`.
    pub fn node_uri(id: u64) -> String {
        format!("herald://node/{id}")
    }

    /// Who a certificate's URI names.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Identity {
        /// Node `id`.
        Node(u64),
        /// An edge.
        Edge,
    }

    /// The identity a URI names, if it is one (`herald://node/0` and any
    /// other shape is not).
    pub fn parse(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("herald://")?;
        if rest == "edge" {
            return Some(Identity::Edge);
        }
        let id = rest.strip_prefix("node/")?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse().ok().filter(|&id| id > 0).map(Identity::Node)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trip_and_refusals() {
            assert_eq!(parse(&node_uri(3)), Some(Identity::Node(3)));
            assert_eq!(parse(EDGE_URI), Some(Identity::Edge));
            for bad in [
                "herald://node/0",
                "herald://node/",
                "herald://node/+3",
                "herald://node/3/x",
                "herald://edges",
                "https://node/3",
                "herald://node/99999999999999999999999",
            ] {
                assert_eq!(parse(bad), None, "{bad}");
            }
        }
    }
}
