//! Multi-process tests of the QUIC delivery plane (issue: delivery plane).
//! Each module names the DESIGN.md guarantee or mechanism it proves.
//!
//! | module | proves |
//! |---|---|
//! | `fanout` | the leader pushes a channel only to nodes whose edges subscribed to it (counter-backed); an edge link receives every publication once, in order (guarantee 2) |
//! | `ephemeral` | history-size-0 namespaces skip Raft: published on any node, pushed over QUIC to interested nodes, in order, at most once |
//! | `mtls` | a node whose certificate is from another CA is refused by its peers' QUIC endpoints, and delivery to its edges still never gaps |

mod ephemeral;
mod fanout;
mod mtls;
mod support;
