//! Multi-process tests of the QUIC delivery plane (issue: delivery plane).
//! Each module names the guarantee (`docs/guarantees.md`) or mechanism it proves.
//!
//! | module | proves |
//! |---|---|
//! | `fanout` | the leader pushes a channel only to nodes whose edges subscribed to it (counter-backed); an edge link receives every publication once, in order (guarantee 2) |
//! | `fanout_nodes` | fan-out nodes outside Raft: with 3 voters, 2 fan-out nodes and an edge on each, every WebSocket client receives every publication once, in order (guarantee 2), on a healthy cluster, across a leader SIGKILL and across a cut of UDP between the leader and a fan-out node; a fan-out node receives no channel its edges did not subscribe to (counter-backed); `herald node add --fanout` / `node remove` (a removed node receives nothing more), re-registration after a restart, presence across fan-out nodes |
//! | `ephemeral` | history-size-0 namespaces skip Raft: published on any node, pushed over QUIC to interested nodes, in order, at most once |
//! | `mtls` | a node whose certificate is from another CA is refused by its peers' QUIC endpoints, and delivery to its edges still never gaps |

mod ephemeral;
mod fanout;
mod fanout_nodes;
mod mtls;
mod support;
