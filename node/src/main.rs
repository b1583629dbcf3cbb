//! `herald-node`: parse and validate every flag, bind, run until SIGTERM or
//! Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use herald_node::config::{NodeArgs, Offline};
use herald_node::{Listeners, run, telemetry};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = NodeArgs::parse();
    if let Some(offline) = args.offline.take() {
        return offline_command(offline).await;
    }
    let log = args.log.clone();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-node: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&log).unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    match start(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `inspect` and `recover`: print what the data dir holds or what was done.
async fn offline_command(command: Offline) -> ExitCode {
    let result = match command {
        Offline::Inspect { data_dir } => herald_node::recovery::inspect(&data_dir)
            .await
            .map(|s| s.to_string()),
        Offline::Recover { data_dir, id } => herald_node::recovery::recover(
            &data_dir,
            id,
            rand::random(),
        )
        .await
        .map(|r| {
            format!(
                "{r}\nrecovered: start this node alone, then add the others with empty data dirs"
            )
        }),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start(config: herald_node::config::NodeConfig) -> anyhow::Result<()> {
    let prometheus = telemetry::install()?;
    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--grpc-listen {}: {e}", config.grpc_listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--http-listen {}: {e}", config.http_listen))?;
    run(
        config,
        Listeners { grpc, http },
        prometheus,
        shutdown_signal(),
    )
    .await
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
