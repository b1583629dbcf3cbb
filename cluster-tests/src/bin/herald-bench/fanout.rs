//! `herald-bench fanout`: S WebSocket subscribers on one channel, one
//! publisher through gRPC at a fixed rate per step; what reaches the
//! subscribers, how fast, and what it costs the edge and the nodes.
//!
//! Each publication's JSON data carries `"hb":[step, seq, sent_us, measured]`
//! (`sent_us`: Unix microseconds when the publish was issued). A subscriber
//! finds that array in the pushed text without parsing the JSON, and records
//! receive time − `sent_us` (same machine, same clock) in an HDR histogram:
//! publisher → node → Raft commit → EdgeLink → edge → WebSocket → client.
//! It also checks that each push's `offset` follows the previous one (gaps
//! and duplicates are errors).
//!
//! The publisher is open-loop: publishes are issued on schedule whatever the
//! acks do, up to `--max-in-flight` outstanding (beyond that a publication is
//! skipped and counted). Only publications issued inside the measured window
//! (after the warm-up) are counted; after the window the step waits up to
//! `--drain-secs` for their deliveries.
//!
//! Two delivery figures per step: **received/s**, the publications all
//! subscribers together received inside the measured window (throughput,
//! whatever step they belong to), and **delivered %**, how many of the
//! window's acknowledged publications × subscribers had arrived by the end
//! of the drain (completeness). Latency covers the latter. A step in which
//! the edge disconnected subscribers (slow consumers, code 3008) ends the
//! run: later steps would measure fewer subscribers.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use herald_proto::v1::PublishRequest;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::crowd::{Crowd, lost_since};
use crate::edge_target::{Target, TargetArgs};
use crate::leader::{ApiKey, Leader};
use crate::publish::{reason, retryable};
use crate::report::Say;
use crate::usage::{self, Usage, Watched};
use crate::wsclient::{Conn, Dialer};

/// How long to wait for the cluster to have a leader.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);
/// A publish not acknowledged within this long counts as `TIMEOUT`.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Latencies above this are recorded as this (microseconds).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Subscribers share this many tallies (one lock each), so recording is
/// never contended across cores.
const SHARDS: usize = 32;
/// How long clients get to notice the stop before the run ends.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Flags of `herald-bench fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// WebSocket subscribers, all on one channel.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,

    /// Publications per second, one step per value (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000")]
    rates: Vec<u32>,

    /// Measured seconds per step, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// Seconds of publishing before each step's measurement starts.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,

    /// Longest wait after a step for its publications to be delivered.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,

    /// Stop stepping after the first step whose delivery p99 is above this
    /// many milliseconds (0: run every step).
    #[arg(long, default_value_t = 0.0)]
    stop_above_p99_ms: f64,

    /// The channel (a prefix `ns:` puts it in namespace `ns`).
    #[arg(long, default_value = "bench-fanout")]
    channel: String,

    /// Size of each publication's JSON `data`.
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,

    /// Publishes awaiting their ack at once; beyond, a publication is
    /// skipped (and counted).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,

    /// Handshakes (connect + subscribe) in flight at once while the
    /// subscribers connect.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,

    /// Print one JSON document on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,

    /// The CI check: --spawn, 50 subscribers, one step of 50 publications/s
    /// for 2 s after 0.5 s; fails unless every subscriber received every
    /// publication, in order.
    #[arg(long, conflicts_with_all = ["subscribers", "rates", "duration_secs", "warmup_secs"])]
    smoke: bool,
}

#[derive(Debug)]
struct Settings {
    subscribers: usize,
    rates: Vec<u32>,
    duration: Duration,
    warmup: Duration,
    drain: Duration,
    stop_above_p99_ms: f64,
    channel: String,
    payload_bytes: usize,
    max_in_flight: usize,
    connect_concurrency: usize,
    json: bool,
    smoke: bool,
}

impl Settings {
    fn from_args(a: &FanoutArgs) -> anyhow::Result<Self> {
        let (subscribers, rates, duration, warmup) = if a.smoke {
            (50, vec![50], 2.0, 0.5)
        } else {
            (
                a.subscribers,
                a.rates.clone(),
                a.duration_secs,
                a.warmup_secs,
            )
        };
        if !(1..=1_000_000).contains(&subscribers) {
            bail!("--subscribers must be between 1 and 1000000");
        }
        if rates.is_empty() || rates.iter().any(|&r| r == 0 || r > 1_000_000) {
            bail!("--rates: each value must be between 1 and 1000000");
        }
        for (name, v, max) in [
            ("--duration-secs", duration, 86_400.0),
            ("--warmup-secs", warmup, 3_600.0),
            ("--drain-secs", a.drain_secs, 3_600.0),
        ] {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                bail!("{name} must be between 0 and {max}");
            }
        }
        if duration <= 0.0 {
            bail!("--duration-secs must be greater than 0");
        }
        if !(a.stop_above_p99_ms.is_finite() && a.stop_above_p99_ms >= 0.0) {
            bail!("--stop-above-p99-ms must be 0 or more");
        }
        if a.channel.is_empty() {
            bail!("--channel must not be empty");
        }
        if a.payload_bytes > 60 * 1024 {
            bail!("--payload-bytes must be at most 61440 (the node's limit is 64 KiB)");
        }
        if !(1..=100_000).contains(&a.max_in_flight) {
            bail!("--max-in-flight must be between 1 and 100000");
        }
        if !(1..=10_000).contains(&a.connect_concurrency) {
            bail!("--connect-concurrency must be between 1 and 10000");
        }
        Ok(Self {
            subscribers,
            rates,
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(warmup),
            drain: Duration::from_secs_f64(a.drain_secs),
            stop_above_p99_ms: a.stop_above_p99_ms,
            channel: a.channel.clone(),
            payload_bytes: a.payload_bytes,
            max_in_flight: a.max_in_flight,
            connect_concurrency: a.connect_concurrency,
            json: a.json,
            smoke: a.smoke,
        })
    }
}

/// Now, in Unix microseconds: what every benchmark publication carries.
pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A latency histogram, 1 µs to 60 s at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("1 µs to 60 s at 3 significant digits is a valid histogram")
}

/// `"hb":[step,seq,sent_us,measured]` found in a pushed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heartbeat {
    step: usize,
    sent_us: u64,
    measured: bool,
}

fn heartbeat(line: &str) -> Option<Heartbeat> {
    let start = line.find("\"hb\":[")? + 6;
    let rest = &line[start..];
    let body = &rest[..rest.find(']')?];
    let mut it = body.split(',').map(|f| f.trim().parse::<u64>());
    let step = usize::try_from(it.next()?.ok()?).ok()?;
    let _seq = it.next()?.ok()?;
    let sent_us = it.next()?.ok()?;
    let measured = it.next()?.ok()? == 1;
    Some(Heartbeat {
        step,
        sent_us,
        measured,
    })
}

/// The number after `"offset":`, if the line has one.
fn offset(line: &str) -> Option<u64> {
    let start = line.find("\"offset\":")? + 9;
    let digits: &str = &line[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// What subscribers saw of one step.
#[derive(Debug)]
pub(crate) struct StepSeen {
    /// Measured publications received (summed over subscribers).
    pub(crate) delivered: u64,
    /// Delivery latency of those, microseconds.
    pub(crate) latency_us: Histogram<u64>,
    /// Offsets skipped / repeated, in messages of this step.
    pub(crate) gaps: u64,
    pub(crate) duplicates: u64,
}

impl StepSeen {
    fn new() -> Self {
        Self {
            delivered: 0,
            latency_us: histogram(),
            gaps: 0,
            duplicates: 0,
        }
    }

    fn merge(&mut self, other: &StepSeen) -> anyhow::Result<()> {
        self.delivered += other.delivered;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")
    }
}

/// The tally a group of subscribers share.
#[derive(Debug, Default)]
struct Shard {
    /// Publications received, of any step (for the throughput inside a
    /// window).
    received: u64,
    /// Steps below this were already collected; late messages of theirs
    /// are dropped.
    first_open: usize,
    steps: BTreeMap<usize, StepSeen>,
}

/// Every subscriber's tally, sharded.
#[derive(Debug)]
pub(crate) struct Tallies {
    shards: Vec<Mutex<Shard>>,
}

impl Tallies {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[i % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Publications received so far, of any step.
    pub(crate) fn received(&self) -> u64 {
        (0..SHARDS).map(|i| self.shard(i).received).sum()
    }

    /// Measured deliveries of `step` so far.
    pub(crate) fn delivered(&self, step: usize) -> u64 {
        (0..SHARDS)
            .map(|i| self.shard(i).steps.get(&step).map_or(0, |s| s.delivered))
            .sum()
    }

    /// Take `step`'s tallies; later messages of it are not counted.
    pub(crate) fn collect(&self, step: usize) -> anyhow::Result<StepSeen> {
        let mut total = StepSeen::new();
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            shard.first_open = shard.first_open.max(step + 1);
            if let Some(seen) = shard.steps.remove(&step) {
                total.merge(&seen)?;
            }
        }
        Ok(total)
    }
}

/// One subscriber's view: records each publication it receives.
pub(crate) struct Subscriber {
    tallies: Arc<Tallies>,
    index: usize,
    last_offset: u64,
}

impl Subscriber {
    /// Subscriber number `index`, recording into `tallies`.
    pub(crate) fn new(tallies: Arc<Tallies>, index: usize) -> Self {
        Self {
            tallies,
            index,
            last_offset: 0,
        }
    }

    /// Record one pushed line (or NATS payload) carrying a heartbeat.
    pub(crate) fn on_line(&mut self, line: &str) {
        let Some(hb) = heartbeat(line) else {
            return;
        };
        let latency = unix_us().saturating_sub(hb.sent_us).max(1);
        let (mut gaps, mut duplicates) = (0, 0);
        if let Some(off) = offset(line) {
            if self.last_offset != 0 {
                if off <= self.last_offset {
                    duplicates = 1;
                } else {
                    gaps = off - self.last_offset - 1;
                }
            }
            self.last_offset = self.last_offset.max(off);
        }
        let mut shard = self.tallies.shard(self.index);
        shard.received += 1;
        if hb.step < shard.first_open {
            return;
        }
        let seen = shard.steps.entry(hb.step).or_insert_with(StepSeen::new);
        seen.gaps += gaps;
        seen.duplicates += duplicates;
        if hb.measured {
            seen.delivered += 1;
            seen.latency_us.saturating_record(latency);
        }
    }
}

/// What the publisher did in one step (measured window only).
#[derive(Debug)]
struct Published {
    /// Issued inside the window.
    sent: u64,
    acked: u64,
    ack_us: Histogram<u64>,
    /// Failed publishes by reason, plus `SKIPPED` ones (no in-flight slot).
    errors: BTreeMap<String, u64>,
}

/// One step's results.
#[derive(Debug)]
struct Step {
    rate: u32,
    measured: Duration,
    /// Subscribers connected when the step started.
    subscribers: usize,
    published: Published,
    /// Publications (of any step) received inside the measured window.
    received_in_window: u64,
    seen: StepSeen,
    /// Subscribers the edge disconnected during the step, by reason.
    lost: BTreeMap<String, u64>,
    edge: Option<Usage>,
    nodes: Vec<Usage>,
    bench: Option<Usage>,
    machine_cpu: Option<f64>,
}

impl Step {
    fn secs(&self) -> f64 {
        self.measured.as_secs_f64().max(1e-9)
    }

    fn expected(&self) -> u64 {
        self.published.acked * self.subscribers as u64
    }

    fn received_per_sec(&self) -> f64 {
        self.received_in_window as f64 / self.secs()
    }

    fn delivered_percent(&self) -> Option<f64> {
        let e = self.expected();
        (e > 0).then(|| self.seen.delivered as f64 * 100.0 / e as f64)
    }

    fn e2e_ms(&self, q: f64) -> f64 {
        if self.seen.latency_us.is_empty() {
            0.0
        } else {
            self.seen.latency_us.value_at_quantile(q) as f64 / 1000.0
        }
    }

    fn e2e_max_ms(&self) -> f64 {
        if self.seen.latency_us.is_empty() {
            0.0
        } else {
            self.seen.latency_us.max() as f64 / 1000.0
        }
    }

    fn ack_ms(&self, q: f64) -> f64 {
        if self.published.ack_us.is_empty() {
            0.0
        } else {
            self.published.ack_us.value_at_quantile(q) as f64 / 1000.0
        }
    }

    fn errors(&self) -> u64 {
        self.published.errors.values().sum::<u64>()
            + self.seen.gaps
            + self.seen.duplicates
            + self.lost.values().sum::<u64>()
    }

    fn nodes_cpu(&self) -> f64 {
        self.nodes.iter().map(|n| n.cpu_percent).sum()
    }

    fn nodes_rss(&self) -> f64 {
        self.nodes.iter().map(|n| n.rss_mib).sum()
    }

    fn other_cpu(&self) -> Option<f64> {
        let known = self.nodes_cpu()
            + self.edge.as_ref().map_or(0.0, |e| e.cpu_percent)
            + self.bench.as_ref().map_or(0.0, |b| b.cpu_percent);
        self.machine_cpu.map(|m| (m - known).max(0.0))
    }
}

/// Run the benchmark; the exit code says whether every step delivered
/// something (with --smoke: everything, in order).
pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args)?;
    let target = Target::start(args.target, settings.smoke, settings.subscribers as u64).await?;
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

/// What every publish shares.
struct Plan {
    channel: String,
    pad: String,
}

impl Plan {
    fn request(&self, step: usize, seq: u64, measured: bool) -> PublishRequest {
        let head = format!(
            "{{\"hb\":[{step},{seq},{},{}],\"pad\":\"",
            unix_us(),
            u8::from(measured)
        );
        let pad_len = self.pad.len().saturating_sub(head.len() + 2);
        let data = format!("{head}{}\"}}", &self.pad[..pad_len]);
        PublishRequest {
            channel: self.channel.clone(),
            event_type: "bench".to_string(),
            data: data.into_bytes().into(),
            content_type: "application/json".to_string(),
            ..PublishRequest::default()
        }
    }
}

async fn measure(settings: &Settings, target: &Target) -> anyhow::Result<(Value, bool)> {
    let say = Say {
        to_stderr: settings.json,
    };
    if target.grpc.is_empty() {
        bail!("fanout publishes through gRPC: give --server <host:port> of a node");
    }
    let plan = Arc::new(Plan {
        channel: settings.channel.clone(),
        pad: "x".repeat(settings.payload_bytes),
    });
    let mut leader = Leader::follow(
        target.grpc.clone(),
        ApiKey::new(target.api_key.as_deref())?,
        STARTUP_PATIENCE,
    )
    .await?;
    // One publish before anyone subscribes: a wrong key or channel stops
    // the run with the server's reason.
    let mut route = leader.route();
    tokio::time::timeout(
        CALL_TIMEOUT,
        route.client.publish(plan.request(0, 0, false)),
    )
    .await
    .context("the first publish got no answer")?
    .map_err(|s| anyhow::anyhow!("the first publish failed: {} ({})", s.message(), reason(&s)))?;

    let machine = usage::machine();
    let mut watched: Vec<Watched> = target.nodes.clone();
    let edge = target.edge.clone();
    if let Some(e) = &edge {
        watched.push(e.clone());
    }
    for line in [
        format!(
            "machine: {} CPUs ({}), {:.1} GiB memory",
            machine.cpus,
            machine.cpu_model,
            machine.mem_total_mib as f64 / 1024.0
        ),
        format!(
            "target: {} edge {} ({}), {} herald-node processes watched, leader {}",
            target.kind,
            target.ws_url,
            edge.as_ref()
                .map_or("process not found".to_string(), |e| format!(
                    "pid {}",
                    e.pid
                )),
            target.nodes.len(),
            route.addr
        ),
        format!(
            "load: {} subscribers on `{}`, {}-byte payloads, {:.1} s per step after {:.1} s \
             warm-up, up to {:.1} s drain",
            settings.subscribers,
            settings.channel,
            settings.payload_bytes,
            settings.duration.as_secs_f64(),
            settings.warmup.as_secs_f64(),
            settings.drain.as_secs_f64()
        ),
    ] {
        say.line(&line);
    }

    // Subscribers.
    let dialer = Arc::new(Dialer::new(&target.ws_url, target.sources.clone()).await?);
    let tallies = Arc::new(Tallies::new());
    let mut crowd = Crowd::new();
    let opened = crowd
        .open(
            0..settings.subscribers,
            settings.connect_concurrency,
            |index| {
                let (dialer, channel) = (dialer.clone(), settings.channel.clone());
                let token = target.token(index);
                async move {
                    dialer
                        .open(index, &token.map_err(|e| e.to_string())?, &channel)
                        .await
                }
            },
            {
                let tallies = tallies.clone();
                move |index, conn: Conn, stop| {
                    let mut subscriber = Subscriber::new(tallies.clone(), index);
                    async move { conn.run(stop, |l| subscriber.on_line(l)).await }
                }
            },
        )
        .await?;
    let failed = opened.failed;
    let connected = crowd.alive();
    say.line(&format!(
        "subscribers: {connected} of {} connected and subscribed in {:.1} s{}",
        settings.subscribers,
        opened.ramp.as_secs_f64(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", tally(&failed))
        }
    ));
    if connected == 0 {
        bail!("no subscriber could connect: {}", tally(&failed));
    }
    say.line(TABLE_HEADER);

    let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
    let mut steps: Vec<Step> = Vec::new();
    for (index, &rate) in settings.rates.iter().enumerate() {
        let subscribers = crowd.alive();
        let lost_before = crowd.lost();
        let start = Instant::now();
        let window_start = start + settings.warmup;
        let window_end = window_start + settings.duration;
        let publisher = tokio::spawn(publish_step(
            plan.clone(),
            leader.clone(),
            in_flight.clone(),
            settings.max_in_flight,
            index,
            rate,
            start,
            window_start,
            window_end,
        ));
        tokio::time::sleep_until(window_start).await;
        let received_before = tallies.received();
        let machine_cpu = usage::MachineCpu::start();
        let mut processes = usage::Window::start(&watched);
        let bench = usage::Window::start(&[usage::watched(std::process::id())]);
        processes.track_until(window_end).await;
        let received_in_window = tallies.received().saturating_sub(received_before);
        let mut usage = processes.finish(&route.addr);
        let bench = bench.finish("").pop();
        let machine_cpu = machine_cpu.finish();
        let edge_usage = match &edge {
            Some(e) => usage
                .iter()
                .position(|u| u.pid == e.pid)
                .map(|i| usage.remove(i)),
            None => None,
        };
        let published = publisher.await.context("the publisher task failed")??;
        let expected = published.acked * subscribers as u64;
        let drain_until = Instant::now() + settings.drain;
        while Instant::now() < drain_until && tallies.delivered(index) < expected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seen = tallies.collect(index)?;
        let lost_now = lost_since(&lost_before, &crowd.lost());
        let step = Step {
            rate,
            measured: window_end - window_start,
            subscribers,
            published,
            received_in_window,
            seen,
            lost: lost_now,
            edge: edge_usage,
            nodes: usage,
            bench,
            machine_cpu,
        };
        say.line(&table_row(&step));
        let p99 = step.e2e_ms(0.99);
        let dropped: u64 = step.lost.values().sum();
        steps.push(step);
        leader.refresh(&mut route);
        if settings.stop_above_p99_ms > 0.0 && p99 > settings.stop_above_p99_ms {
            say.line(&format!(
                "stopping: p99 {p99:.1} ms is above --stop-above-p99-ms {}",
                settings.stop_above_p99_ms
            ));
            break;
        }
        if dropped > 0 && !settings.smoke {
            say.line(&format!(
                "stopping: the edge disconnected {dropped} subscribers in this step; later \
                 steps would measure fewer"
            ));
            break;
        }
    }
    crowd.stop(STOP_GRACE).await;

    for s in &steps {
        for line in details(s) {
            say.line(&line);
        }
    }
    let ok = if settings.smoke {
        failed.is_empty()
            && steps.iter().all(|s| {
                s.published.acked > 0
                    && s.errors() == 0
                    && s.seen.delivered == s.expected()
                    && s.subscribers == settings.subscribers
            })
    } else {
        steps.iter().all(|s| s.seen.delivered > 0)
    };
    if !ok {
        eprintln!(
            "herald-bench: {}",
            if settings.smoke {
                "smoke check failed: not every subscriber received every publication in order"
            } else {
                "a step delivered nothing"
            }
        );
    }
    Ok((json_doc(settings, target, &failed, &steps), ok))
}

/// Publish at `rate` from `start` until `window_end`; count what was issued
/// inside `[window_start, window_end)`, and wait for its acks.
#[allow(clippy::too_many_arguments)]
async fn publish_step(
    plan: Arc<Plan>,
    leader: Leader,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    step: usize,
    rate: u32,
    start: Instant,
    window_start: Instant,
    window_end: Instant,
) -> anyhow::Result<Published> {
    let acks: Arc<Mutex<Published>> = Arc::new(Mutex::new(Published {
        sent: 0,
        acked: 0,
        ack_us: histogram(),
        errors: BTreeMap::new(),
    }));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut issued = 0u64;
    let mut leader = leader;
    let mut route = leader.route();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= window_end {
            break;
        }
        leader.refresh(&mut route);
        let due = ((now - start).as_secs_f64() * f64::from(rate)) as u64;
        let measured = now >= window_start;
        while issued < due {
            let seq = issued;
            issued += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                if measured {
                    let mut a = acks.lock().unwrap_or_else(|e| e.into_inner());
                    a.sent += 1;
                    *a.errors.entry("SKIPPED".to_string()).or_default() += 1;
                }
                continue;
            };
            let req = plan.request(step, seq, measured);
            let (mut client, generation) = (route.client.clone(), route.generation);
            let (acks, leader) = (acks.clone(), leader.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let outcome = tokio::time::timeout(CALL_TIMEOUT, client.publish(req)).await;
                let took = sent.elapsed();
                let failure = match outcome {
                    Ok(Ok(_)) => None,
                    Ok(Err(status)) => Some(status),
                    Err(_) => Some(tonic::Status::deadline_exceeded("no ack")),
                };
                if let Some(status) = &failure
                    && retryable(status)
                {
                    // Open loop: no retry, the next publications go to the
                    // leader found again.
                    leader.report_stale(generation);
                }
                if !measured {
                    return;
                }
                // The slot is released after counting (at the end of the
                // task), so the step's totals are complete once every slot
                // is back.
                let _permit = permit;
                let mut a = acks.lock().unwrap_or_else(|e| e.into_inner());
                a.sent += 1;
                match failure {
                    None => {
                        a.acked += 1;
                        a.ack_us.saturating_record(
                            u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1),
                        );
                    }
                    Some(status) => *a.errors.entry(reason(&status)).or_default() += 1,
                }
            });
        }
    }
    // Every outstanding publish holds a slot: having them all back means
    // every ack (or error) of this step is counted.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let slots = in_flight
        .acquire_many(all)
        .await
        .context("the in-flight gate closed")?;
    drop(slots);
    let mut a = acks.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Published {
        sent: a.sent,
        acked: a.acked,
        ack_us: std::mem::replace(&mut a.ack_us, histogram()),
        errors: std::mem::take(&mut a.errors),
    })
}

fn tally(map: &BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const TABLE_HEADER: &str = "  rate/s  acked/s  ack p50 ms  ack p99 ms  subs   received/s  delivered%  p50 ms  p90 ms  p99 ms  max ms  errors  edge CPU%  edge RSS MiB  nodes CPU%  nodes RSS MiB  bench CPU%  other CPU%";

fn table_row(s: &Step) -> String {
    let opt =
        |v: Option<f64>, places: usize| v.map_or("-".to_string(), |v| format!("{v:.places$}"));
    format!(
        "{:>8} {:>8.0} {:>11.2} {:>11.2} {:>5} {:>12.0} {:>11} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7} {:>10} {:>13} {:>11.0} {:>14.1} {:>11.0} {:>11}",
        s.rate,
        s.published.acked as f64 / s.secs(),
        s.ack_ms(0.50),
        s.ack_ms(0.99),
        s.subscribers,
        s.received_per_sec(),
        opt(s.delivered_percent(), 1),
        s.e2e_ms(0.50),
        s.e2e_ms(0.90),
        s.e2e_ms(0.99),
        s.e2e_max_ms(),
        s.errors(),
        opt(s.edge.as_ref().map(|e| e.cpu_percent), 0),
        opt(s.edge.as_ref().map(|e| e.rss_mib), 1),
        s.nodes_cpu(),
        s.nodes_rss(),
        s.bench.as_ref().map_or(0.0, |b| b.cpu_percent),
        opt(s.other_cpu(), 0),
    )
}

fn details(s: &Step) -> Vec<String> {
    let mut parts = Vec::new();
    if !s.published.errors.is_empty() {
        parts.push(format!("publish errors {}", tally(&s.published.errors)));
    }
    if s.seen.gaps > 0 || s.seen.duplicates > 0 {
        parts.push(format!(
            "offset gaps {} duplicates {}",
            s.seen.gaps, s.seen.duplicates
        ));
    }
    if !s.lost.is_empty() {
        parts.push(format!("subscribers disconnected {}", tally(&s.lost)));
    }
    if parts.is_empty() {
        return Vec::new();
    }
    vec![format!("  rate {}: {}", s.rate, parts.join("; "))]
}

fn json_doc(
    settings: &Settings,
    target: &Target,
    failed: &BTreeMap<String, u64>,
    steps: &[Step],
) -> Value {
    let machine = usage::machine();
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    let usage = |u: &Usage| {
        json!({
            "pid": u.pid,
            "node_id": u.node_id,
            "leader": u.is_leader,
            "cpu_percent": round(u.cpu_percent, 1),
            "rss_mib": round(u.rss_mib, 1),
            "rss_peak_mib": round(u.rss_peak_mib, 1),
        })
    };
    json!({
        "mode": "fanout",
        "target": target.kind,
        "ws_url": target.ws_url,
        "subscribers": settings.subscribers,
        "subscribe_failures": failed,
        "channel": settings.channel,
        "payload_bytes": settings.payload_bytes,
        "duration_secs": settings.duration.as_secs_f64(),
        "warmup_secs": settings.warmup.as_secs_f64(),
        "machine": {
            "cpus": machine.cpus,
            "cpu_model": machine.cpu_model,
            "mem_total_mib": machine.mem_total_mib,
        },
        "steps": steps.iter().map(|s| json!({
            "rate": s.rate,
            "subscribers": s.subscribers,
            "published": s.published.sent,
            "acked": s.published.acked,
            "acked_per_sec": round(s.published.acked as f64 / s.secs(), 1),
            "ack_latency_ms": {
                "p50": round(s.ack_ms(0.50), 3),
                "p99": round(s.ack_ms(0.99), 3),
            },
            "publish_errors": s.published.errors,
            "expected_deliveries": s.expected(),
            "delivered": s.seen.delivered,
            "received_in_window": s.received_in_window,
            "received_per_sec": round(s.received_per_sec(), 1),
            "delivered_percent": s.delivered_percent().map(|p| round(p, 2)),
            "latency_ms": {
                "p50": round(s.e2e_ms(0.50), 3),
                "p90": round(s.e2e_ms(0.90), 3),
                "p99": round(s.e2e_ms(0.99), 3),
                "max": round(s.e2e_max_ms(), 3),
            },
            "offset_gaps": s.seen.gaps,
            "offset_duplicates": s.seen.duplicates,
            "subscribers_disconnected": s.lost,
            "edge": s.edge.as_ref().map(usage),
            "nodes": s.nodes.iter().map(usage).collect::<Vec<_>>(),
            "bench": s.bench.as_ref().map(usage),
            "machine_cpu_percent": s.machine_cpu.map(|m| round(m, 1)),
            "other_cpu_percent": s.other_cpu().map(|o| round(o, 1)),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_and_offset_from_a_push() {
        let line = r#"{"push":{"channel":"bench-fanout","pub":{"data":{"hb":[3,17,1700000000123456,1],"pad":"xx"},"offset":42,"epoch":"e","time":1}}}"#;
        assert_eq!(
            heartbeat(line),
            Some(Heartbeat {
                step: 3,
                sent_us: 1_700_000_000_123_456,
                measured: true
            })
        );
        assert_eq!(offset(line), Some(42));
        assert_eq!(heartbeat(r#"{"id":2,"subscribe":{}}"#), None);
    }

    #[test]
    fn payload_has_the_requested_size() {
        let plan = Plan {
            channel: "c".to_string(),
            pad: "x".repeat(128),
        };
        let req = plan.request(1, 2, true);
        assert_eq!(req.data.len(), 128);
        let v: Value = serde_json::from_slice(&req.data).unwrap();
        assert_eq!(v["hb"][0], 1);
        assert_eq!(v["hb"][3], 1);
    }

    #[test]
    fn gaps_and_duplicates_are_counted() {
        let tallies = Arc::new(Tallies::new());
        let mut s = Subscriber {
            tallies: tallies.clone(),
            index: 0,
            last_offset: 0,
        };
        let push = |off: u64| {
            format!(r#"{{"push":{{"pub":{{"data":{{"hb":[0,0,1,1]}},"offset":{off}}}}}}}"#)
        };
        for off in [5, 6, 8, 8, 9] {
            s.on_line(&push(off));
        }
        let seen = tallies.collect(0).unwrap();
        assert_eq!(seen.delivered, 5);
        assert_eq!((seen.gaps, seen.duplicates), (1, 1));
        // Collected steps no longer count.
        s.on_line(&push(10));
        assert_eq!(tallies.delivered(0), 0);
    }
}
