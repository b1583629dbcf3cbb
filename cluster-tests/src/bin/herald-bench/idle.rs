//! `herald-bench idle`: how much memory an idle WebSocket connection costs
//! the edge (and, through it, the nodes).
//!
//! The clients connect with a token and subscribe (to one shared channel, or
//! each to its own), then do nothing but answer the edge's pings. The edge's
//! resident memory is read from `/proc` before the first client and after
//! each level of connections has settled; the growth divided by the number
//! of connections is the cost of one idle connection. Kernel socket buffers
//! are not part of a process's RSS and are not counted.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::crowd::Crowd;
use crate::edge_target::{Target, TargetArgs};
use crate::group_commit;
use crate::report::Say;
use crate::usage::{self, Memory, Watched};
use crate::wsclient::{Conn, Dialer};

/// Issue 3's target for one idle connection.
const TARGET_BYTES: f64 = 8.0 * 1024.0;
/// How long clients get to notice the stop and close before the run ends.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Which channel each client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChannelMode {
    /// Every client subscribes to `<channel>`.
    Shared,
    /// Client n subscribes to `<channel>-<n>`: one upstream subscription
    /// (and replicated membership entry) per client.
    PerClient,
}

/// Flags of `herald-bench idle`.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// Idle connections to hold, one measurement per value
    /// (comma-separated, ascending; each level adds to the previous one).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    connections: Vec<usize>,

    /// One channel for all clients, or one per client.
    #[arg(long, value_enum, default_value_t = ChannelMode::Shared)]
    channel_mode: ChannelMode,

    /// Channel name (the prefix with --channel-mode per-client).
    #[arg(long, default_value = "bench-idle")]
    channel: String,

    /// Handshakes (connect + subscribe) in flight at once while ramping up.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,

    /// Seconds to wait after each level before reading memory (and before
    /// the baseline).
    #[arg(long, default_value_t = 5.0)]
    settle_secs: f64,

    /// Print one JSON document on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,

    /// The CI check: --spawn, 200 connections, 1 s settle; fails if any
    /// connection failed or dropped or the edge's memory could not be read.
    #[arg(long, conflicts_with_all = ["connections", "settle_secs"])]
    smoke: bool,
}

#[derive(Debug)]
struct Settings {
    levels: Vec<usize>,
    mode: ChannelMode,
    channel: String,
    concurrency: usize,
    settle: Duration,
    json: bool,
    smoke: bool,
}

impl Settings {
    fn from_args(a: &IdleArgs) -> anyhow::Result<Self> {
        let (levels, settle) = if a.smoke {
            (vec![200], 1.0)
        } else {
            (a.connections.clone(), a.settle_secs)
        };
        if levels.is_empty() || levels.iter().any(|&n| n == 0 || n > 1_000_000) {
            bail!("--connections: each value must be between 1 and 1000000");
        }
        if levels.windows(2).any(|w| w[0] >= w[1]) {
            bail!("--connections must be ascending");
        }
        if !(1..=10_000).contains(&a.connect_concurrency) {
            bail!("--connect-concurrency must be between 1 and 10000");
        }
        if !(settle.is_finite() && (0.0..=3_600.0).contains(&settle)) {
            bail!("--settle-secs must be between 0 and 3600");
        }
        if a.channel.is_empty() {
            bail!("--channel must not be empty");
        }
        Ok(Self {
            levels,
            mode: a.channel_mode,
            channel: a.channel.clone(),
            concurrency: a.connect_concurrency,
            settle: Duration::from_secs_f64(settle),
            json: a.json,
            smoke: a.smoke,
        })
    }
}

/// Memory of every watched process at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    edge: Memory,
    nodes: Memory,
    bench: Memory,
}

/// One level: the clients open at that point and what memory they cost.
#[derive(Debug)]
struct Level {
    level: usize,
    /// Connected and subscribed, and still connected when memory was read.
    alive: usize,
    /// Clients of this level that could not connect, by reason.
    failed: BTreeMap<String, u64>,
    /// Time to open this level's clients.
    ramp: Duration,
    /// Connect + subscribe time of this level's clients, microseconds.
    open_us: Histogram<u64>,
    memory: Snapshot,
    /// The edge's `herald_edge_connections{transport="websocket"}`.
    edge_gauge: Option<f64>,
    /// The edge's CPU while the level sat idle (100 = one core).
    edge_idle_cpu: f64,
}

/// Run the benchmark; the exit code says whether every client connected
/// and stayed connected.
pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args)?;
    let most = *settings.levels.last().unwrap_or(&0) as u64;
    let target = Target::start(args.target, settings.smoke, most).await?;
    let measured = measure(&settings, &target).await;
    target.stop().await;
    let (doc, ok) = measured?;
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn snapshot(edge: &Watched, nodes: &[Watched]) -> anyhow::Result<Snapshot> {
    let edge = usage::memory(edge.pid)
        .with_context(|| format!("reading the edge's memory (pid {})", edge.pid))?;
    let mut sum = Memory::default();
    for n in nodes {
        if let Some(m) = usage::memory(n.pid) {
            sum.rss_kib += m.rss_kib;
            sum.anon_kib += m.anon_kib;
        }
    }
    Ok(Snapshot {
        edge,
        nodes: sum,
        bench: usage::memory(std::process::id()).unwrap_or_default(),
    })
}

/// `herald_edge_connections{transport="websocket"}` from the edge's
/// `/metrics`.
async fn edge_gauge(metrics: Option<&str>) -> Option<f64> {
    let page = group_commit::metrics_page(metrics?).await?;
    page.lines().find_map(|l| {
        let rest = l.strip_prefix("herald_edge_connections{")?;
        let (labels, value) = rest.split_once('}')?;
        labels
            .contains("transport=\"websocket\"")
            .then(|| value.trim().parse().ok())?
    })
}

async fn measure(settings: &Settings, target: &Target) -> anyhow::Result<(Value, bool)> {
    let say = Say {
        to_stderr: settings.json,
    };
    let edge = target.edge.clone().context(
        "the edge process was not found on this machine; give its --edge-pid (idle measures \
         its memory)",
    )?;
    let dialer = Arc::new(Dialer::new(&target.ws_url, target.sources.clone()).await?);
    let metrics = target.edge_metrics();
    let machine = usage::machine();
    for line in [
        format!(
            "machine: {} CPUs ({}), {:.1} GiB memory",
            machine.cpus,
            machine.cpu_model,
            machine.mem_total_mib as f64 / 1024.0
        ),
        format!(
            "target: {} edge {} (pid {}), {} herald-node processes watched",
            target.kind,
            target.ws_url,
            edge.pid,
            target.nodes.len()
        ),
        format!(
            "open files: benchmark {}, edge {}; clients from {}",
            target.own_files,
            target
                .edge_files
                .map_or("unknown".to_string(), |f| f.to_string()),
            target
                .sources
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        format!(
            "load: {} idle clients ({}), {} handshakes in flight, {:.1} s settle",
            settings
                .levels
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            match settings.mode {
                ChannelMode::Shared => "one shared channel",
                ChannelMode::PerClient => "a channel each",
            },
            settings.concurrency,
            settings.settle.as_secs_f64()
        ),
    ] {
        say.line(&line);
    }

    tokio::time::sleep(settings.settle).await;
    let baseline = snapshot(&edge, &target.nodes)?;
    say.line(&format!(
        "baseline: edge RSS {:.1} MiB (anon {:.1}), nodes RSS {:.1} MiB, benchmark RSS {:.1} MiB",
        mib(baseline.edge.rss_kib),
        mib(baseline.edge.anon_kib),
        mib(baseline.nodes.rss_kib),
        mib(baseline.bench.rss_kib),
    ));
    say.line(TABLE_HEADER);

    let mut crowd = Crowd::new();
    let mut levels: Vec<Level> = Vec::new();
    let mut opened = 0usize;
    for &level in &settings.levels {
        let batch = crowd
            .open(
                opened..level,
                settings.concurrency,
                |index| {
                    let channel = match settings.mode {
                        ChannelMode::Shared => settings.channel.clone(),
                        ChannelMode::PerClient => format!("{}-{index}", settings.channel),
                    };
                    let (dialer, token) = (dialer.clone(), target.token(index));
                    async move {
                        let token = token.map_err(|e| e.to_string())?;
                        dialer.open(index, &token, &channel).await
                    }
                },
                |_, conn: Conn, stop| conn.run(stop, |_| {}),
            )
            .await?;
        let (failed, open_us, ramp) = (batch.failed, batch.open_us, batch.ramp);
        opened = level;

        let idle = usage::Window::start(std::slice::from_ref(&edge));
        let mut window = idle;
        window.track_until(Instant::now() + settings.settle).await;
        let edge_idle_cpu = window.finish("").pop().map_or(0.0, |u| u.cpu_percent);
        let memory = snapshot(&edge, &target.nodes)?;
        let row = Level {
            level,
            alive: crowd.alive(),
            failed,
            ramp,
            open_us,
            memory,
            edge_gauge: edge_gauge(metrics.as_deref()).await,
            edge_idle_cpu,
        };
        say.line(&table_row(&row, levels.last(), &baseline));
        levels.push(row);
    }

    let lost = crowd.lost();
    crowd.stop(STOP_GRACE).await;
    for row in &levels {
        if !row.failed.is_empty() {
            say.line(&format!(
                "  {} clients: failed {}",
                row.level,
                tally(&row.failed)
            ));
        }
    }
    if !lost.is_empty() {
        say.line(&format!(
            "  connections the edge ended while idle: {}",
            tally(&lost)
        ));
    }
    let last = levels.last().context("no level was measured")?;
    let per_conn = per_connection(last.memory.edge.rss_kib, baseline.edge.rss_kib, last.alive);
    if let Some(bytes) = per_conn {
        say.line(&format!(
            "edge memory per idle connection at {}: {:.1} KiB (RSS growth / connections); \
             issue 3 target {:.0} KiB: {}",
            last.alive,
            bytes / 1024.0,
            TARGET_BYTES / 1024.0,
            if bytes <= TARGET_BYTES {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    let failures: u64 = levels.iter().flat_map(|l| l.failed.values()).sum();
    let drops: u64 = lost.values().sum();
    let ok = failures == 0 && drops == 0 && per_conn.is_some();
    if !ok {
        eprintln!(
            "herald-bench: {failures} connections failed, {drops} dropped while idle{}",
            if per_conn.is_none() {
                ", no memory figure"
            } else {
                ""
            }
        );
    }
    Ok((
        json_doc(settings, target, &edge, &baseline, &levels, &lost),
        ok,
    ))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Bytes per connection of a growth from `from_kib` to `to_kib`.
fn per_connection(to_kib: u64, from_kib: u64, connections: usize) -> Option<f64> {
    (connections > 0).then(|| (to_kib as f64 - from_kib as f64) * 1024.0 / connections as f64)
}

fn tally(map: &BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const TABLE_HEADER: &str = "clients  connected  failed  ramp s  open p50 ms  open p99 ms  edge RSS MiB  edge anon MiB  KiB/conn  marginal KiB/conn  edge idle CPU%  nodes RSS MiB  nodes KiB/conn  bench RSS MiB";

fn table_row(row: &Level, previous: Option<&Level>, baseline: &Snapshot) -> String {
    let ms = |q: f64| {
        if row.open_us.is_empty() {
            0.0
        } else {
            row.open_us.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let kib = |b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.1}", b / 1024.0));
    let (prev_kib, prev_alive) = previous.map_or((baseline.edge.rss_kib, 0), |p| {
        (p.memory.edge.rss_kib, p.alive)
    });
    let marginal = per_connection(
        row.memory.edge.rss_kib,
        prev_kib,
        row.alive.saturating_sub(prev_alive),
    );
    format!(
        "{:>7} {:>10} {:>7} {:>7.1} {:>12.1} {:>12.1} {:>13.1} {:>14.1} {:>9} {:>18} {:>15.1} {:>14.1} {:>15} {:>14.1}",
        row.level,
        row.alive,
        row.failed.values().sum::<u64>(),
        row.ramp.as_secs_f64(),
        ms(0.50),
        ms(0.99),
        mib(row.memory.edge.rss_kib),
        mib(row.memory.edge.anon_kib),
        kib(per_connection(
            row.memory.edge.rss_kib,
            baseline.edge.rss_kib,
            row.alive
        )),
        kib(marginal),
        row.edge_idle_cpu,
        mib(row.memory.nodes.rss_kib),
        kib(per_connection(
            row.memory.nodes.rss_kib,
            baseline.nodes.rss_kib,
            row.alive
        )),
        mib(row.memory.bench.rss_kib),
    )
}

fn json_doc(
    settings: &Settings,
    target: &Target,
    edge: &Watched,
    baseline: &Snapshot,
    levels: &[Level],
    lost: &BTreeMap<String, u64>,
) -> Value {
    let machine = usage::machine();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let mem = |m: &Memory| json!({"rss_kib": m.rss_kib, "anon_kib": m.anon_kib});
    json!({
        "mode": "idle",
        "target": target.kind,
        "ws_url": target.ws_url,
        "edge_pid": edge.pid,
        "edge_open_files": target.edge_files,
        "channel_mode": format!("{:?}", settings.mode),
        "machine": {
            "cpus": machine.cpus,
            "cpu_model": machine.cpu_model,
            "mem_total_mib": machine.mem_total_mib,
        },
        "baseline": {
            "edge": mem(&baseline.edge),
            "nodes": mem(&baseline.nodes),
            "bench": mem(&baseline.bench),
        },
        "levels": levels.iter().map(|l| json!({
            "clients": l.level,
            "connected": l.alive,
            "failed": l.failed,
            "ramp_secs": round(l.ramp.as_secs_f64()),
            "open_ms": {
                "p50": if l.open_us.is_empty() { 0.0 } else { l.open_us.value_at_quantile(0.5) as f64 / 1000.0 },
                "p99": if l.open_us.is_empty() { 0.0 } else { l.open_us.value_at_quantile(0.99) as f64 / 1000.0 },
            },
            "edge": mem(&l.memory.edge),
            "nodes": mem(&l.memory.nodes),
            "bench": mem(&l.memory.bench),
            "edge_bytes_per_connection": per_connection(l.memory.edge.rss_kib, baseline.edge.rss_kib, l.alive).map(round),
            "edge_anon_bytes_per_connection": per_connection(l.memory.edge.anon_kib, baseline.edge.anon_kib, l.alive).map(round),
            "nodes_bytes_per_connection": per_connection(l.memory.nodes.rss_kib, baseline.nodes.rss_kib, l.alive).map(round),
            "edge_connections_gauge": l.edge_gauge,
            "edge_idle_cpu_percent": round(l.edge_idle_cpu),
        })).collect::<Vec<_>>(),
        "dropped_while_idle": lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_per_connection() {
        assert_eq!(per_connection(2048, 1024, 128), Some(8192.0));
        assert_eq!(per_connection(2048, 1024, 0), None);
        assert_eq!(per_connection(1000, 1024, 24), Some(-1024.0));
    }
}
