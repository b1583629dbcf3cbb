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
//! Environment knobs: `HERALD_TEST_LOG` sets the nodes' `--log` filter
//! (default `info,openraft=warn`); `HERALD_KEEP_TEST_DIRS` keeps a failed
//! test's data directories and full logs instead of deleting them.
#![warn(missing_docs)]

pub mod binary;
pub mod client;
pub mod cluster;
pub mod process;

pub use client::{
    Admin, ApiKey, PublishFailure, Publisher, RotatingPublisher, error_metadata, http_get,
    is_retryable, reason_of,
};
pub use cluster::{Cluster, ClusterOptions, members, voters};
pub use process::NodeProc;
