//! `herald-bench`: the load generator for a Herald cluster.
//!
//! `herald-bench publish` drives the gRPC `Publish` path of a running cluster
//! (`--server`) or of a `herald dev` cluster it starts itself (`--spawn`),
//! one step per concurrency level, and reports acknowledged publishes per
//! second, ack latency percentiles, errors by reason, and the node processes'
//! CPU and memory. `--smoke` is the short run CI uses so the tool cannot rot.
//!
//! `herald-bench idle` holds thousands of idle WebSocket clients on an edge
//! and reports the edge's (and nodes') memory per connection;
//! `herald-bench fanout` puts S subscribers on one channel, publishes at
//! stepped rates through gRPC and reports delivered messages/s, end-to-end
//! latency and the processes' CPU and memory. Both take `--smoke` too.
//!
//! `herald-bench compare` runs one scenario of the side-by-side comparison
//! (broadcast, channels, durable, idle, storm) against Herald, Centrifugo or
//! NATS, which it starts itself; `bench/compare` runs them all and writes
//! `docs/benchmarks.md`. `herald-bench hold` is its helper process for idle
//! clients.
//!
//! This file only parses the command line and maps the outcome to an exit
//! code; each step of the work lives in its own module.

mod compare;
mod crowd;
mod delivery;
mod dev;
mod edge_target;
mod fanout;
mod group_commit;
mod idle;
mod leader;
mod publish;
mod report;
mod usage;
mod wsclient;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for a Herald cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish as fast as N concurrent publishers can, one step per N, and
    /// report throughput, ack latency and the nodes' CPU and memory.
    Publish(publish::PublishArgs),
    /// Hold N idle WebSocket clients on an edge and report its memory per
    /// connection (and the nodes').
    Idle(idle::IdleArgs),
    /// S WebSocket subscribers on one channel, publications through gRPC
    /// at stepped rates: delivered messages/s, end-to-end latency, CPU and
    /// memory.
    Fanout(fanout::FanoutArgs),
    /// Five nodes with an edge each: QUIC fan-out (3 voters + 2 fan-out
    /// nodes) against delivery from the Raft log (3 voters + 2 learners).
    Delivery(delivery::DeliveryArgs),
    /// One scenario of the side-by-side comparison (broadcast, channels,
    /// durable, idle, storm) against Herald, Centrifugo or NATS, started by
    /// the benchmark; one JSON document out.
    Compare(compare::CompareArgs),
    /// Hold idle clients for `compare --scenario idle` (a helper process).
    #[command(hide = true)]
    Hold(compare::idle::HoldArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let work = async {
            match cli.command {
                Command::Publish(args) => publish::run(args).await,
                Command::Idle(args) => idle::run(args).await,
                Command::Fanout(args) => fanout::run(args).await,
                Command::Delivery(args) => delivery::run(args).await,
                Command::Compare(args) => compare::run(args).await,
                Command::Hold(args) => compare::idle::hold(args).await,
            }
        };
        // On Ctrl-C or SIGTERM the work future is dropped, which stops a
        // spawned `herald dev` (see `dev::DevCluster`'s `Drop`) before exiting.
        let interrupted = async {
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        };
        tokio::select! {
            outcome = work => match outcome {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("herald-bench: {e:#}");
                    ExitCode::FAILURE
                }
            },
            name = interrupted => {
                eprintln!("herald-bench: {name}, stopping");
                ExitCode::from(130)
            }
        }
    })
}
