//! `herald`: the operator's command for a Herald cluster.
//!
//! This file only parses the command line, dispatches to the module that owns
//! each subcommand, and turns any failure into one `error: ...` line on stderr
//! with exit status 1. What each command does lives in its own module.
//!
//! A failed call ends its line with `(reason <REASON>)`: the server's stable
//! `ErrorInfo.reason` (`NO_LEADER`, `SCHEMA_VIOLATION`, ...), or the gRPC code
//! (`UNAVAILABLE` when the address cannot be reached) when the server gave
//! none. Failures of the CLI itself (a missing `herald-node`, an unwritable
//! data directory) have no server reason and print without one.

mod certs;
mod client;
mod dev;
mod history;
mod node;
mod publish;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::Server;

/// Command line of `herald`.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: local dev cluster, publish, history, status, membership"
)]
struct Cli {
    /// gRPC address (host:port) of any node of the cluster.
    #[arg(
        long,
        global = true,
        env = "HERALD_SERVER",
        default_value = "127.0.0.1:7100"
    )]
    server: String,

    /// API key sent as `authorization: apikey <key>` on every call.
    #[arg(long, global = true, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// PEM cluster CA: call `--server` over TLS (a node started with
    /// `--grpc-tls`), trusting only this CA. Required for `https://`.
    #[arg(long, global = true, env = "HERALD_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a throwaway cluster CA and node certificate (QUIC plane).
    Certs(certs::CertsArgs),
    /// Run a local cluster (3 nodes and an edge) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Publish one event to a channel.
    Publish(publish::PublishArgs),
    /// Print a channel's retained publications, one JSON object per line.
    History(history::HistoryArgs),
    /// Print the Raft and membership status of the node at `--server`.
    Status,
    /// Change the cluster's membership.
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = Server::new(cli.server, cli.api_key).with_tls_ca(cli.tls_ca);
    let outcome = match cli.command {
        Command::Certs(args) => certs::run(args).map(|()| ExitCode::SUCCESS),
        Command::Dev(args) => dev::run(args).await,
        Command::Publish(args) => publish::run(&server, args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::History(args) => history::run(&server, args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Status => status::run(&server).await.map(|()| ExitCode::SUCCESS),
        Command::Node { command } => node::run(&server, command)
            .await
            .map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
