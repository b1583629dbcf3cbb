//! Harness for multi-process Herald tests: it builds the real binaries, starts
//! `herald-node` processes on free loopback ports with their own data
//! directories, injects faults with signals (SIGKILL, SIGTERM, SIGSTOP), and
//! talks to the nodes over their public gRPC API.
//!
//! Like nats.rs' test server helper, every process the harness starts is
//! killed when its handle is dropped, also when a test panics; a panicking
//! test additionally prints the tail of every node's log.
//!
//! Timeouts in this crate are hang guards, never assertions about speed: the
//! machines that run these tests are shared and noisy.
//!
//! Fault injection beyond signals: [`Cluster::start_isolated`] runs each
//! node in its own network namespace so links can be cut or degraded
//! ([`network`]), [`ClusterOptions::clock_control`] lets a test jump one
//! node's wall clock ([`clock`]), [`ClusterOptions::disk_faults`] and
//! [`ClusterOptions::small_disks`] let it fail or fill one node's disk
//! ([`disk`]), and [`ClusterOptions::lazy_disks`] puts every node's data
//! directory on a FUSE disk that loses unsynced writes in a
//! [`Cluster::power_cut`] ([`lazyfs`]). The [`load`] of careful publishers writes a
//! [`ledger`] that the history checker compares with every node's history;
//! each scenario ends with a printed [`verdict::Verdict`].
//!
//! Environment knobs: `HERALD_TEST_LOG` sets the nodes' `--log` filter
//! (default `info,openraft=warn`); `HERALD_KEEP_TEST_DIRS` keeps a failed
//! test's data directories and full logs instead of deleting them;
//! `HERALD_LIBFAKETIME` points at libfaketime when it is not where Debian
//! puts it; `HERALD_TEST_UNSUPPORTED` declares capabilities a kind of
//! machine lacks on purpose (otherwise a scenario that cannot run fails,
//! see [`machine`]).
#![warn(missing_docs)]

pub mod binary;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod disk;
pub mod edge;
pub mod lazyfs;
pub mod ledger;
pub mod load;
pub mod machine;
pub mod network;
pub mod process;
pub mod rng;
pub mod subscriber;
pub mod verdict;

pub use client::{
    Admin, ApiKey, PublishFailure, Publisher, RotatingPublisher, error_metadata, http_get,
    is_retryable, reason_of,
};
pub use cluster::{Cluster, ClusterOptions, PowerCut, members, voters};
pub use edge::{EdgeProc, edge_token};
pub use network::Network;
pub use process::{NodeLaunch, NodeProc};
pub use subscriber::{Subscriber, SubscriberOptions, check_subscriber};
pub use verdict::{Verdict, announce};
