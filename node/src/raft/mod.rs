//! Raft plumbing: openraft's type configuration, the redb-backed log store
//! and its writer thread,
//! the state machine that feeds committed entries to the [`ChannelTable`],
//! and the gRPC network between nodes. Application logic lives in
//! [`crate::channels`]; this module only moves entries and bytes.
//!
//! [`ChannelTable`]: crate::channels::ChannelTable

use serde::{Deserialize, Serialize};

use crate::channels::{Accepted, Proposal};

// openraft's `StorageError` is large, and its trait signatures fix the type.
#[allow(clippy::result_large_err)]
pub mod log_store;
pub mod log_writer;
pub mod network;
pub mod snapshot_data;
#[allow(clippy::result_large_err)]
pub mod state_machine;

/// What Raft knows about a node: where to reach it, and which incarnation
/// of its data directory is the member (a node that lost its disk comes
/// back as a new incarnation and is not that member until re-added).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// host:port of its gRPC API.
    pub grpc_addr: String,
    /// The member's incarnation ([`log_store::LogStore::incarnation`]).
    pub incarnation: u64,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.grpc_addr)
    }
}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Publications accepted together.
    Publish(Proposal),
    /// A node announces its QUIC endpoint.
    RegisterNode {
        /// The node.
        id: u64,
        /// host:port of its QUIC endpoint.
        quic_addr: String,
    },
    /// A node's local subscribers changed: channels gained and lost.
    Interest {
        /// The node.
        node: u64,
        /// Channels it now has subscribers for.
        add: Vec<String>,
        /// Channels it no longer has subscribers for.
        remove: Vec<String>,
    },
    /// A fan-out node (outside Raft) is registered: by an operator
    /// (`started: None`) or by the node itself when it starts (`started`
    /// carries its QUIC address, and any interest it had is withdrawn).
    /// Ignored for an id that is a Raft member.
    RegisterFanout {
        /// The node.
        id: u64,
        /// host:port of its gRPC API.
        grpc_addr: String,
        /// Its QUIC address, when the node itself announces a start.
        started: Option<String>,
    },
    /// Forget a fan-out node: its registry entry, QUIC address and
    /// interest. Ignored for an id that is a Raft member.
    ForgetFanout {
        /// The node.
        id: u64,
    },
    /// Give every channel a new epoch derived from `nonce`, keeping offsets
    /// and history: appended by `herald-node recover` (a lost-quorum
    /// recovery or a restore from a backup), after which continuity with
    /// what clients saw can no longer be proved.
    BumpEpochs {
        /// Seeds the new epochs.
        nonce: u64,
    },
    /// Reclaim state: drop expired publications and forget channels with
    /// nothing left ([`crate::channels::ChannelTable::sweep`]); proposed by
    /// the leader when there is something to reclaim.
    Sweep(crate::channels::Sweep),
}

/// What applying a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    #[default]
    None,
    /// One result per publication of a [`Command::Publish`].
    Published(Vec<Accepted>),
}

openraft::declare_raft_types!(
    /// Herald's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// Storage errors in this configuration.
pub type StorageError = openraft::StorageError<u64>;

/// Encode a value for the wire or disk.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("postcard serialization of owned data cannot fail")
}

/// Decode a value from the wire or disk.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}
