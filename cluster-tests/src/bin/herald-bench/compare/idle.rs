//! Scenario (d) idle connections: memory per connection at 10,000 and
//! 50,000 clients, each connected and subscribed to one channel, then
//! idle (answering pings).
//!
//! One process may open at most 20,000 files here and one source address
//! has ~28,000 ephemeral ports, so neither side can be one process: the
//! system runs several client-facing servers (Herald edges on one cluster,
//! independent Centrifugo instances, independent nats-servers) and the
//! clients are held by helper processes (`herald-bench hold`), at most
//! [`PER_PROCESS`] each, each from its own loopback address (127.0.0.2,
//! 127.0.0.3, ...). The figure is the growth of all server processes'
//! resident memory over the empty servers, divided by the connections.

use std::net::IpAddr;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::clients::{Subscriber, Subscribers};
use super::systems::{Deployment, System};
use super::{Measure, round};
use crate::crowd::Crowd;
use crate::usage::{self, Watched};
use crate::wsclient::Dialer;

/// Clients one helper process holds (its open-files limit is 20,000).
const PER_PROCESS: usize = 17_000;
/// How long memory gets to settle after the last client connected.
const SETTLE: Duration = Duration::from_secs(5);
/// The channel every idle client subscribes to.
const CHANNEL: &str = "bench.idle";

/// Flags of `herald-bench hold`, the helper that holds idle clients for
/// `compare --scenario idle`.
#[derive(Debug, Args)]
pub(crate) struct HoldArgs {
    /// Speak NATS instead of the Centrifugo client protocol.
    #[arg(long)]
    nats: bool,
    /// WebSocket URLs of the servers, used in turn (repeatable).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Connection token (Centrifugo protocol).
    #[arg(long, default_value = "")]
    token: String,
    /// Clients to open.
    #[arg(long)]
    count: usize,
    /// Local address to connect from.
    #[arg(long)]
    source: IpAddr,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

/// Open `count` clients, print `held <ok> failed <n>`, and keep them until
/// stdin closes.
pub(crate) async fn hold(a: HoldArgs) -> anyhow::Result<ExitCode> {
    super::raise_open_files();
    let mut dialers = Vec::new();
    for url in &a.urls {
        dialers.push(Dialer::new(url, vec![a.source]).await?);
    }
    let subs = Subscribers::from_parts(a.nats, dialers, &a.token);
    let mut crowd = Crowd::new();
    let opened = crowd
        .open(
            0..a.count,
            a.connect_concurrency,
            |index| {
                let subs = subs.clone();
                async move { subs.open(index, CHANNEL).await }
            },
            |_, conn: Subscriber, stop| conn.run(stop, |_| {}),
        )
        .await?;
    let failed: u64 = opened.failed.values().sum();
    println!("held {} failed {failed} {:?}", crowd.alive(), opened.failed);
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    crowd.stop(Duration::from_secs(1)).await;
    Ok(ExitCode::SUCCESS)
}

/// Server memory (KiB) of every watched process.
fn rss_kib(watched: &[Watched]) -> u64 {
    watched
        .iter()
        .filter_map(|w| usage::memory(w.pid))
        .map(|m| m.rss_kib)
        .sum()
}

/// Hold `levels` connections in turn (cumulative) and report the servers'
/// memory per connection at each.
pub(crate) async fn run(
    d: &Deployment,
    levels: &[usize],
    sources: &[IpAddr],
    connect_concurrency: usize,
) -> anyhow::Result<(Value, bool)> {
    if sources.is_empty() {
        bail!("--source-addrs: give at least one address");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = rss_kib(&d.watched);
    let exe = std::env::current_exe().context("locating herald-bench")?;
    let mut holders: Vec<Child> = Vec::new();
    let (mut held, mut failed, mut previous) = (0usize, 0usize, (0usize, base));
    let mut steps = Vec::new();
    let mut ok = true;
    for &level in levels {
        let mut need = level.saturating_sub(held + failed);
        let started = std::time::Instant::now();
        let mut pending = Vec::new();
        while need > 0 {
            let count = need.min(PER_PROCESS);
            need -= count;
            let source = sources[holders.len() % sources.len()].to_string();
            let mut child = spawn_holder(&exe, d, count, &source, connect_concurrency)?;
            let stdout = child.stdout.take().context("holder stdout")?;
            pending.push(tokio::spawn(async move {
                BufReader::new(stdout).lines().next_line().await
            }));
            holders.push(child);
        }
        for line in pending {
            let line = line.await?.ok().flatten().unwrap_or_default();
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(h), Some(f)) = (words.get(1), words.get(3)) else {
                bail!("a holder process failed: {line:?}");
            };
            held += h.parse::<usize>().unwrap_or(0);
            failed += f.parse::<usize>().unwrap_or(0);
            if f != &"0" {
                eprintln!("holder: {line}");
            }
        }
        let ramp = started.elapsed().as_secs_f64();
        let measure = Measure::start(&d.watched);
        tokio::time::sleep(SETTLE).await;
        let usage = measure.finish();
        let rss = rss_kib(&d.watched);
        let per = (rss.saturating_sub(base)) as f64 / held.max(1) as f64;
        let marginal =
            rss.saturating_sub(previous.1) as f64 / held.saturating_sub(previous.0).max(1) as f64;
        previous = (held, rss);
        let step = json!({
            "connections": level,
            "held": held,
            "failed": failed,
            "ramp_secs": round(ramp, 1),
            "servers_rss_mib": round(rss as f64 / 1024.0, 1),
            "kib_per_connection": round(per, 2),
            "marginal_kib_per_connection": round(marginal, 2),
            "usage": usage,
        });
        eprintln!("{}: {step}", d.system.name());
        ok &= failed == 0 && held == level;
        steps.push(step);
    }
    drop(holders);
    Ok((
        json!({
            "servers": d.ws_urls.len(),
            "server_processes": d.watched.len(),
            "baseline_rss_mib": round(base as f64 / 1024.0, 1),
            "steps": steps,
        }),
        ok,
    ))
}

fn spawn_holder(
    exe: &std::path::Path,
    d: &Deployment,
    count: usize,
    source: &str,
    connect_concurrency: usize,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("hold")
        .args(["--count", &count.to_string(), "--source", source])
        .args(["--connect-concurrency", &connect_concurrency.to_string()])
        .args(["--token", &d.token]);
    if d.system == System::Nats {
        cmd.arg("--nats");
    }
    for url in &d.ws_urls {
        cmd.args(["--url", url]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a holder process")
}
