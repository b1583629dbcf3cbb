//! `herald-edge`: parse and validate the whole configuration, bind, run
//! until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use herald_edge::config::Config;
use herald_edge::{Listeners, run};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let settings = match config.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald-edge: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match serve(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: herald_edge::config::Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("--listen {}", settings.listen))?;
    let http = TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| format!("--http-listen {}", settings.http_listen))?;
    println!(
        "edge websocket ws://{}/connection/websocket",
        client.local_addr()?
    );
    println!("edge sse http://{}/connection/sse", client.local_addr()?);
    println!("edge http http://{}", http.local_addr()?);
    let mut term = signal(SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run(settings, Listeners { client, http }, stop).await
}
