//! `herald-bench compare`: one scenario of issue #7 against one system —
//! Herald, Centrifugo or NATS — started by the benchmark with the same
//! parameters for each, so `bench/compare` can put the three side by side.
//!
//! Scenarios: `broadcast` (one channel, stepped rates), `channels` (a
//! channel per subscriber), `durable` (acknowledged publishes at 1, 16, 256
//! publishers), `idle` (memory per connection, clients held by helper
//! processes, see [`idle`]) and `storm` (every client reconnects at once and
//! recovers what it missed). `--smoke` is a few-second check of a scenario.
//!
//! The result is one JSON document (stdout, or `--out`); progress goes to
//! stderr.

mod clients;
mod delivery;
mod durable;
mod http_api;
pub(crate) mod idle;
mod nats;
mod storm;
mod systems;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::usage::{self, Watched};
use clients::Subscribers;
use systems::{Deployment, Layout, System};

/// A scenario of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    Broadcast,
    Channels,
    Durable,
    Idle,
    Storm,
}

/// Flags of `herald-bench compare`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The system to start and measure.
    #[arg(long, value_enum, default_value = "herald")]
    system: System,

    /// The scenario to run.
    #[arg(long, value_enum)]
    scenario: Scenario,

    /// broadcast, channels: subscribers (channels: also the number of
    /// channels, one subscriber each).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,

    /// broadcast, channels: publications per second, one step per value.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,200,500,1000,2000,5000"
    )]
    rates: Vec<u32>,

    /// broadcast, channels: stop after the first step whose delivery p99 is
    /// above this (ms).
    #[arg(long, default_value_t = 100.0)]
    stop_above_p99_ms: f64,

    /// Measured seconds per step.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// Unmeasured seconds before each step's window.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,

    /// broadcast, channels: longest wait for a step's deliveries.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,

    /// Size of each publication's JSON data.
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,

    /// broadcast, channels: publishing connections (open-loop lanes).
    #[arg(long, default_value_t = 32)]
    lanes: usize,

    /// durable: concurrent publishers, one step per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    publishers: Vec<usize>,

    /// idle: total connections, one level per value (cumulative).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    connections: Vec<usize>,

    /// idle: client-facing server processes (edges, Centrifugo instances,
    /// nats-servers).
    #[arg(long, default_value_t = 3)]
    servers: usize,

    /// storm: clients that reconnect at once.
    #[arg(long, default_value_t = 5000)]
    clients: usize,

    /// storm: publications each client misses while disconnected.
    #[arg(long, default_value_t = 100)]
    missed: usize,

    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,

    /// Local addresses clients connect from, in turn (idle: one per helper
    /// process, in turn).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    source_addrs: Vec<IpAddr>,

    /// The `herald` binary (default: next to this executable).
    #[arg(long)]
    herald: Option<PathBuf>,

    /// Herald: run the default namespace without history (ephemeral:
    /// publications skip Raft), the like-for-like setup for core NATS.
    #[arg(long)]
    herald_ephemeral: bool,

    /// The `centrifugo` binary.
    #[arg(long, default_value = "centrifugo")]
    centrifugo: PathBuf,

    /// Write the JSON result here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,

    /// A few seconds of the scenario at a small scale (Herald in CI);
    /// fails unless everything was delivered / acknowledged / recovered.
    #[arg(long)]
    smoke: bool,
}

/// Run one scenario against one system.
pub(crate) async fn run(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let bins = systems::binaries(
        a.herald.as_deref(),
        a.herald_ephemeral,
        a.centrifugo.clone(),
    )?;
    raise_open_files();
    let layout = match a.scenario {
        Scenario::Durable => Layout::Durable,
        Scenario::Idle => Layout::Idle(if a.smoke { 2 } else { a.servers }),
        _ => Layout::Delivery,
    };
    let deployment = Deployment::start(a.system, layout, &bins).await?;
    let outcome = scenario(&a, &deployment).await;
    deployment.stop().await;
    let (result, ok) = outcome?;
    let doc = json!({
        "scenario": a.scenario.to_possible_value().map(|v| v.get_name().to_string()),
        "system": a.system.name(),
        "smoke": a.smoke,
        "machine": machine(),
        "result": result,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    match &a.out {
        Some(path) => std::fs::write(path, text)?,
        None => println!("{text}"),
    }
    if !ok {
        eprintln!(
            "herald-bench: compare {:?} on {}: check failed",
            a.scenario,
            a.system.name()
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn scenario(a: &CompareArgs, d: &Deployment) -> anyhow::Result<(Value, bool)> {
    let secs = |s: f64| Duration::from_secs_f64(s);
    match a.scenario {
        Scenario::Broadcast | Scenario::Channels => {
            let (subscribers, rates, duration, warmup) = if a.smoke {
                let n = if a.scenario == Scenario::Broadcast {
                    50
                } else {
                    200
                };
                (n, vec![50], 2.0, 0.5)
            } else {
                (
                    a.subscribers,
                    a.rates.clone(),
                    a.duration_secs,
                    a.warmup_secs,
                )
            };
            let p = delivery::Delivery {
                subscribers,
                channels: if a.scenario == Scenario::Broadcast {
                    1
                } else {
                    subscribers
                },
                rates,
                duration: secs(duration),
                warmup: secs(warmup),
                drain: secs(a.drain_secs),
                stop_above_p99_ms: if a.smoke { 0.0 } else { a.stop_above_p99_ms },
                payload_bytes: a.payload_bytes,
                lanes: a.lanes,
                max_in_flight: 4096,
                connect_concurrency: a.connect_concurrency,
            };
            let subs = Subscribers::new(d, &a.source_addrs).await?;
            delivery::run(d, &p, &subs, a.smoke).await
        }
        Scenario::Durable => {
            let (levels, warmup, duration) = if a.smoke {
                (vec![1, 16], 0.5, 1.0)
            } else {
                (a.publishers.clone(), a.warmup_secs, a.duration_secs)
            };
            durable::run(d, &levels, secs(warmup), secs(duration), a.payload_bytes).await
        }
        Scenario::Idle => {
            let levels = if a.smoke {
                vec![200]
            } else {
                a.connections.clone()
            };
            idle::run(d, &levels, &a.source_addrs, a.connect_concurrency).await
        }
        Scenario::Storm => {
            let (clients, missed) = if a.smoke {
                (100, 20)
            } else {
                (a.clients, a.missed)
            };
            let subs = Subscribers::new(d, &a.source_addrs).await?;
            storm::run(d, &subs, clients, missed, a.connect_concurrency, a.smoke).await
        }
    }
}

/// Raise the soft open-files limit to the hard one; servers started
/// afterwards inherit it.
pub(crate) fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn machine() -> Value {
    let m = usage::machine();
    json!({"cpus": m.cpus, "cpu_model": m.cpu_model, "mem_total_mib": m.mem_total_mib})
}

/// `x` rounded to `places` decimals.
pub(crate) fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// Quantile `q` of a microsecond histogram, in milliseconds (`q` = 1: the
/// maximum); 0 when empty.
pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let us = if q >= 1.0 {
        h.max()
    } else {
        h.value_at_quantile(q)
    };
    round(us as f64 / 1000.0, 3)
}

/// CPU and memory of the servers, the benchmark and the rest of the machine
/// over a window.
pub(crate) struct Measure {
    servers: usage::Window,
    bench: usage::Window,
    machine: usage::MachineCpu,
}

impl Measure {
    pub(crate) fn start(servers: &[Watched]) -> Self {
        Self {
            servers: usage::Window::start(servers),
            bench: usage::Window::start(&[usage::watched(std::process::id())]),
            machine: usage::MachineCpu::start(),
        }
    }

    /// The window as JSON: CPU in percent of one core, RSS in MiB.
    pub(crate) fn finish(self) -> Value {
        let servers = self.servers.finish("");
        let bench = self.bench.finish("").pop().map_or(0.0, |b| b.cpu_percent);
        let cpu: f64 = servers.iter().map(|s| s.cpu_percent).sum();
        let rss: f64 = servers.iter().map(|s| s.rss_mib).sum();
        let machine = self.machine.finish();
        json!({
            "servers_cpu_percent": round(cpu, 1),
            "servers_rss_mib": round(rss, 1),
            "bench_cpu_percent": round(bench, 1),
            "other_cpu_percent": machine.map(|m| round((m - cpu - bench).max(0.0), 1)),
        })
    }
}
