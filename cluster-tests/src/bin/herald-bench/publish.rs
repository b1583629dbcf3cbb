//! `herald-bench publish`: N concurrent publishers, each sending one publish
//! at a time to the leader and waiting for its ack, for one step per N.
//!
//! A publisher measures what a backend calling `Publish` sees: the time from
//! sending the request to receiving the offset. Every publish has its own
//! idempotency key, as a careful backend's would. Warm-up publishes (and
//! acks that arrive after a step's window) are sent but not counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use herald_proto::v1::PublishRequest;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::dev::{self, DevCluster};
use crate::group_commit;
use crate::leader::{ApiKey, Leader};
use crate::report::{self, RunInfo, Say, StepReport};
use crate::usage::{self, Watched};

/// How long to wait for the cluster to have a leader and accept a first
/// publish.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);
/// A publish not acknowledged within this long counts as a `TIMEOUT` error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an `UNAVAILABLE` when the server sent no `RetryInfo`.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
/// Latencies above this are recorded as this (microseconds).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Flags of `herald-bench publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// gRPC address (host:port) of a node of the cluster to load; repeat for
    /// several. Publishes go to the leader, found through these.
    #[arg(long = "server", value_name = "HOST:PORT", conflicts_with_all = ["spawn", "smoke"])]
    servers: Vec<String>,

    /// API key sent as `authorization: apikey <key>` (with --server; --spawn
    /// uses the key `herald dev` prints).
    #[arg(long, env = "HERALD_API_KEY")]
    api_key: Option<String>,

    /// Start a local cluster with `herald dev` (the `herald` binary next to
    /// this one), load it, and stop it at the end.
    #[arg(long)]
    spawn: bool,

    /// With --spawn: the `herald` binary to run instead of the one next to
    /// this executable.
    #[arg(long, value_name = "PATH")]
    herald: Option<PathBuf>,

    /// With --spawn: how many nodes `herald dev` runs.
    #[arg(long, default_value_t = 3)]
    nodes: u64,

    /// Concurrent publishers, one step per value (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,

    /// Measured seconds per step, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// Seconds of load before each step's measurement starts.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,

    /// Publishes rotate over this many channels.
    #[arg(long, default_value_t = 100)]
    channels: usize,

    /// Channel names are `<prefix>-<n>`; a prefix `ns:name` puts them in
    /// namespace `ns`.
    #[arg(long, default_value = "bench")]
    channel_prefix: String,

    /// Size of each publication's `data`.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,

    /// Print one JSON document on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,

    /// The CI check: --spawn, one step of concurrency 1 for 2 s after 0.5 s
    /// of warm-up; fails if no publish was acknowledged.
    #[arg(long, conflicts_with_all = ["concurrency", "duration_secs", "warmup_secs"])]
    smoke: bool,
}

/// The validated settings of a run.
#[derive(Debug)]
struct Settings {
    target: Target,
    steps: Vec<usize>,
    duration: Duration,
    warmup: Duration,
    channels: usize,
    channel_prefix: String,
    payload_bytes: usize,
    json: bool,
}

#[derive(Debug)]
enum Target {
    Spawn {
        herald: Option<PathBuf>,
        nodes: u64,
    },
    Servers {
        addrs: Vec<String>,
        api_key: Option<String>,
    },
}

impl Settings {
    fn from_args(a: PublishArgs) -> anyhow::Result<Self> {
        let (steps, duration_secs, warmup_secs) = if a.smoke {
            (vec![1], 2.0, 0.5)
        } else {
            (a.concurrency, a.duration_secs, a.warmup_secs)
        };
        if steps.is_empty() || steps.iter().any(|&c| c == 0 || c > 100_000) {
            bail!("--concurrency: each value must be between 1 and 100000");
        }
        if !(duration_secs.is_finite() && duration_secs > 0.0 && duration_secs <= 86_400.0) {
            bail!("--duration-secs must be greater than 0 and at most 86400");
        }
        if !(warmup_secs.is_finite() && (0.0..=3_600.0).contains(&warmup_secs)) {
            bail!("--warmup-secs must be between 0 and 3600");
        }
        if a.channels == 0 {
            bail!("--channels must be at least 1");
        }
        if a.channel_prefix.is_empty() {
            bail!("--channel-prefix must not be empty");
        }
        if a.payload_bytes > 16 << 20 {
            bail!("--payload-bytes must be at most 16 MiB");
        }
        let target = if a.spawn || a.smoke {
            if !(1..=15).contains(&a.nodes) {
                bail!("--nodes must be between 1 and 15");
            }
            Target::Spawn {
                herald: a.herald,
                nodes: a.nodes,
            }
        } else if a.servers.is_empty() {
            bail!("give --server <host:port> (repeatable) to load a running cluster, or --spawn");
        } else {
            Target::Servers {
                addrs: a.servers,
                api_key: a.api_key,
            }
        };
        Ok(Self {
            target,
            steps,
            duration: Duration::from_secs_f64(duration_secs),
            warmup: Duration::from_secs_f64(warmup_secs),
            channels: a.channels,
            channel_prefix: a.channel_prefix,
            payload_bytes: a.payload_bytes,
            json: a.json,
        })
    }
}

/// Run the benchmark; the exit code says whether every step had acks.
pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(args)?;
    let (cluster, seeds, api_key) = match &settings.target {
        Target::Spawn { herald, nodes } => {
            let herald = dev::herald_binary(herald.as_deref())?;
            eprintln!(
                "herald-bench: starting `{} dev --nodes {nodes}`",
                herald.display()
            );
            let cluster = DevCluster::spawn(&herald, *nodes).await?;
            let (seeds, key) = (cluster.grpc_addrs.clone(), cluster.api_key.clone());
            (Some(cluster), seeds, key)
        }
        Target::Servers { addrs, api_key } => (None, addrs.clone(), api_key.clone()),
    };
    let measured = measure(
        &settings,
        seeds,
        api_key,
        cluster.as_ref().map(DevCluster::pid),
    )
    .await;
    if let Some(cluster) = cluster
        && let Err(e) = cluster.stop().await
    {
        eprintln!("herald-bench: warning: {e:#}");
    }
    let (run, steps) = measured?;
    if settings.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&run, &steps))?
        );
    }
    let idle: Vec<String> = steps
        .iter()
        .filter(|s| s.acked == 0)
        .map(|s| s.concurrency.to_string())
        .collect();
    if idle.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "herald-bench: no publish was acknowledged at concurrency {}",
            idle.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

async fn measure(
    settings: &Settings,
    seeds: Vec<String>,
    api_key: Option<String>,
    dev_pid: Option<u32>,
) -> anyhow::Result<(RunInfo, Vec<StepReport>)> {
    let say = Say {
        to_stderr: settings.json,
    };
    let key = ApiKey::new(api_key.as_deref())?;
    let mut leader = Leader::follow(seeds, key, STARTUP_PATIENCE).await?;
    let plan = Arc::new(Plan::new(settings));
    first_publish(&plan, &mut leader).await?;

    // Other clusters may run on this machine (tests, another `herald dev`):
    // only this cluster's nodes are watched.
    let mut watched: Vec<Watched> = match dev_pid {
        Some(pid) => usage::children_named(pid, usage::NODE_COMM)
            .into_iter()
            .map(usage::watched)
            .collect(),
        None => usage::all_named(usage::NODE_COMM)
            .into_iter()
            .map(usage::watched)
            .filter(|w| w.serves(leader.members()))
            .collect(),
    };
    watched.sort_by_key(|w| (w.node_id, w.pid));

    let run = RunInfo {
        target: if dev_pid.is_some() {
            "spawn"
        } else {
            "servers"
        },
        leader: leader.route().addr,
        channels: settings.channels,
        payload_bytes: settings.payload_bytes,
        duration: settings.duration,
        warmup: settings.warmup,
        machine: usage::machine(),
    };
    for line in report::preamble(&run, watched.len()) {
        say.line(&line);
    }
    say.line(report::TABLE_HEADER);
    let mut steps = Vec::with_capacity(settings.steps.len());
    for (index, &concurrency) in settings.steps.iter().enumerate() {
        let step = step(settings, &plan, &leader, &watched, index, concurrency).await?;
        say.line(&report::table_row(&step));
        steps.push(step);
    }
    for step in &steps {
        for line in report::details(step) {
            say.line(&line);
        }
    }
    Ok((run, steps))
}

/// What every publish shares; each one differs only in channel and key.
#[derive(Debug)]
struct Plan {
    /// Makes idempotency keys unique across runs against the same cluster.
    run_id: String,
    channels: Vec<String>,
    /// Cloning it shares the payload bytes instead of copying them.
    template: PublishRequest,
}

impl Plan {
    fn new(settings: &Settings) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let payload: Vec<u8> = (0..settings.payload_bytes)
            .map(|i| (i % 251) as u8)
            .collect();
        Self {
            run_id: format!("{:x}{:x}", nanos, std::process::id()),
            channels: (0..settings.channels)
                .map(|i| format!("{}-{i}", settings.channel_prefix))
                .collect(),
            template: PublishRequest {
                event_type: "bench".to_string(),
                data: payload.into(),
                content_type: "application/octet-stream".to_string(),
                ..PublishRequest::default()
            },
        }
    }

    fn request(&self, channel: usize, key: String) -> PublishRequest {
        let mut req = self.template.clone();
        req.channel = self.channels[channel % self.channels.len()].clone();
        req.idempotency_key = key;
        req
    }
}

/// One publish before any step, so a wrong key, payload or channel prefix
/// stops the run with the server's reason instead of producing a table of
/// errors.
async fn first_publish(plan: &Plan, leader: &mut Leader) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_PATIENCE;
    loop {
        let mut route = leader.route();
        let req = plan.request(0, format!("{}-first", plan.run_id));
        let status = match tokio::time::timeout(CALL_TIMEOUT, route.client.publish(req)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded("no answer"),
        };
        if !retryable(&status) || Instant::now() >= deadline {
            bail!(
                "the first publish to {} failed: {} (reason {})",
                route.addr,
                status.message(),
                reason(&status)
            );
        }
        leader.report_stale(route.generation);
        tokio::time::sleep(backoff(&status)).await;
    }
}

/// The part of a step that is measured.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: Instant,
    end: Instant,
}

async fn step(
    settings: &Settings,
    plan: &Arc<Plan>,
    leader: &Leader,
    watched: &[Watched],
    index: usize,
    concurrency: usize,
) -> anyhow::Result<StepReport> {
    let start = Instant::now() + settings.warmup;
    let span = Span {
        start,
        end: start + settings.duration,
    };
    let mut publishers = JoinSet::new();
    for worker in 0..concurrency {
        publishers.spawn(publisher(worker, index, plan.clone(), leader.clone(), span));
    }
    let leader_addr = leader.clone().route().addr;
    let leader_http = watched
        .iter()
        .find(|w| w.grpc_listen.as_deref() == Some(leader_addr.as_str()))
        .and_then(|w| w.http_listen.clone());
    tokio::time::sleep_until(span.start).await;
    let batches_before = match &leader_http {
        Some(http) => group_commit::scrape(http).await,
        None => None,
    };
    let machine = usage::MachineCpu::start();
    let mut nodes = usage::Window::start(watched);
    let bench = usage::Window::start(&[usage::watched(std::process::id())]);
    nodes.track_until(span.end).await;
    let batches_after = match (&leader_http, batches_before) {
        (Some(http), Some(_)) => group_commit::scrape(http).await,
        _ => None,
    };
    let grouping = batches_before
        .zip(batches_after)
        .and_then(|(before, after)| group_commit::since(before, after));
    let nodes = nodes.finish(&leader_addr);
    let bench = bench.finish("").pop();
    let machine_cpu_percent = machine.finish();

    let mut total = Tally::new();
    while let Some(tally) = publishers.join_next().await {
        total.merge(tally.context("a publisher task failed")?)?;
    }
    Ok(StepReport {
        concurrency,
        measured: span.end - span.start,
        acked: total.acked,
        latency_us: total.latency_us,
        errors: total.errors,
        nodes,
        bench,
        grouping,
        machine_cpu_percent,
    })
}

/// What one publisher saw within the measured span.
struct Tally {
    acked: u64,
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            acked: 0,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("1 µs to 60 s at 3 significant digits is a valid histogram"),
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.acked += other.acked;
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")?;
        for (reason, n) in other.errors {
            *self.errors.entry(reason).or_default() += n;
        }
        Ok(())
    }
}

/// One publisher: publish, wait for the ack, repeat, until the span ends.
async fn publisher(
    worker: usize,
    step: usize,
    plan: Arc<Plan>,
    mut leader: Leader,
    span: Span,
) -> Tally {
    let mut tally = Tally::new();
    let mut route = leader.route();
    for seq in 0u64.. {
        let sent = Instant::now();
        if sent >= span.end {
            break;
        }
        let req = plan.request(
            worker.wrapping_add(seq as usize),
            format!("{}-{step}-{worker}-{seq}", plan.run_id),
        );
        let outcome = tokio::time::timeout(CALL_TIMEOUT, route.client.publish(req)).await;
        let done = Instant::now();
        let counted = done >= span.start && done < span.end;
        let failure = match outcome {
            Ok(Ok(_)) => {
                if counted {
                    tally.acked += 1;
                    let us = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                    tally.latency_us.saturating_record(us.max(1));
                }
                None
            }
            Ok(Err(status)) => Some(status),
            Err(_) => Some(Status::deadline_exceeded("no ack within the call timeout")),
        };
        if let Some(status) = failure {
            if counted {
                *tally.errors.entry(reason(&status)).or_default() += 1;
            }
            if retryable(&status) {
                leader.report_stale(route.generation);
                tokio::time::sleep(backoff(&status)).await;
            }
        }
        leader.refresh(&mut route);
    }
    tally
}

/// Errors after which the leader may have moved or the connection broken.
pub(crate) fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded
    )
}

fn backoff(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or(DEFAULT_BACKOFF)
        .min(Duration::from_secs(1))
}

/// The server's stable reason, or the gRPC code (`DEADLINE_EXCEEDED`, ...)
/// when it gave none (the call never reached a node, or timed out here).
pub(crate) fn reason(status: &Status) -> String {
    if let Some(info) = status
        .get_details_error_info()
        .filter(|i| !i.reason.is_empty())
    {
        return info.reason;
    }
    let mut name = String::new();
    for (i, ch) in format!("{:?}", status.code()).chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(ch.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_falls_back_to_the_code_name() {
        assert_eq!(reason(&Status::deadline_exceeded("x")), "DEADLINE_EXCEEDED");
        assert_eq!(reason(&Status::unavailable("x")), "UNAVAILABLE");
    }

    #[test]
    fn reason_prefers_error_info() {
        let status = Status::with_error_details(
            Code::Unavailable,
            "no leader",
            tonic_types::ErrorDetails::with_error_info("NO_LEADER", "herald.v1", []),
        );
        assert_eq!(reason(&status), "NO_LEADER");
    }
}
