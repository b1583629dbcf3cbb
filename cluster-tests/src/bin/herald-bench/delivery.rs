//! `herald-bench delivery`: the delivery plane against the Raft log. Two
//! five-node layouts, started one after the other from the binaries next to
//! `herald-bench` (build them with the same profile):
//! * `quic`: 3 voters with `--delivery quic` and 2 fan-out nodes
//!   (`--fanout`): the leader pushes each publication over QUIC;
//! * `raft-log`: 3 voters and 2 learners, all `--delivery raft-log`: every
//!   node delivers from its own applied log, nothing goes over QUIC.
//!
//! Each node gets an edge linked to it alone, each edge S WebSocket
//! subscribers, each subscribed to every channel. Publications go to the
//! leader over gRPC and carry their send time, so a subscriber measures
//! publish-to-client latency (the commit is in it, the same in both
//! layouts). Two steps: `paced` (a fixed rate, for latency) and `saturated`
//! (C publishers as fast as acks come, for delivered publications/s).
//! Latency is reported for all clients and for those of nodes 4-5 alone:
//! fan-out nodes receive only over QUIC, while voters' clients get whichever
//! of the QUIC push and their own log comes first.
//!
//! `--smoke` is a short run for CI: it fails unless every client received
//! every paced publication in both layouts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use herald_cluster_tests::client::{http_get, publisher_at};
use herald_cluster_tests::edge::{EDGE_JWT_SECRET, edge_token};
use herald_cluster_tests::{NodeLaunch, NodeProc};
use herald_proto::v1::{ClusterStatusRequest, PublishRequest};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fanout::{histogram, unix_us};
use crate::wsclient::Dialer;

const API_KEY: &str = "herald-bench-delivery";
const VOTERS: u64 = 3;
const NODES: u64 = 5;
/// Phases tagged in each payload.
const WARMUP: u64 = 0;
const PACED: u64 = 1;
const SATURATED: u64 = 2;
/// How long deliveries may trail the end of a step.
const DRAIN: Duration = Duration::from_secs(5);

/// Flags of `herald-bench delivery`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeliveryArgs {
    /// Channels; every subscriber subscribes to all of them.
    #[arg(long, default_value_t = 100)]
    channels: u64,
    /// WebSocket subscribers per edge (one edge per node).
    #[arg(long, default_value_t = 2)]
    subscribers_per_edge: usize,
    /// Publications per second of the paced step.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Concurrent publishers of the saturated step.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each step is measured.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// A short run for CI (10 channels, 1 subscriber per edge, 2 s steps);
    /// fails unless every paced publication reached every client.
    #[arg(long)]
    smoke: bool,
}

/// Which five nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Quic,
    RaftLog,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Quic => "quic (3 voters + 2 fan-out)",
            Layout::RaftLog => "raft-log (3 voters + 2 learners)",
        }
    }
}

/// What subscribers saw of one phase.
struct Seen {
    /// Deliveries received before the step's window closed.
    in_window: u64,
    /// All deliveries of the phase.
    delivered: u64,
    /// Latency of every delivery, all clients.
    all_us: Histogram<u64>,
    /// Latency at the clients of nodes 4 and 5.
    outer_us: Histogram<u64>,
}

impl Seen {
    fn new() -> Self {
        Self {
            in_window: 0,
            delivered: 0,
            all_us: histogram(),
            outer_us: histogram(),
        }
    }

    fn merge(&mut self, other: &Seen) -> anyhow::Result<()> {
        self.in_window += other.in_window;
        self.delivered += other.delivered;
        self.all_us.add(&other.all_us)?;
        self.outer_us.add(&other.outer_us)?;
        Ok(())
    }
}

/// One client's tally, per phase.
struct Tally {
    outer: bool,
    window_end_us: Arc<AtomicU64>,
    phases: [Seen; 3],
}

impl Tally {
    fn on_line(&mut self, line: &str) {
        let Some((phase, sent_us)) = stamp(line) else {
            return;
        };
        let now = unix_us();
        let Some(seen) = self.phases.get_mut(phase as usize) else {
            return;
        };
        let latency = now.saturating_sub(sent_us).max(1);
        seen.delivered += 1;
        if now <= self.window_end_us.load(Ordering::Relaxed) {
            seen.in_window += 1;
        }
        seen.all_us.saturating_record(latency);
        if self.outer {
            seen.outer_us.saturating_record(latency);
        }
    }
}

/// `"dl":[phase,sent_us]` in a pushed line.
fn stamp(line: &str) -> Option<(u64, u64)> {
    let start = line.find("\"dl\":[")? + 6;
    let rest = &line[start..];
    let (phase, rest) = rest.split_once(',')?;
    let sent = &rest[..rest.find(']')?];
    Some((phase.trim().parse().ok()?, sent.trim().parse().ok()?))
}

fn request(channel: u64, phase: u64, pad: &str) -> PublishRequest {
    let data = format!("{{\"dl\":[{phase},{}],\"pad\":\"{pad}\"}}", unix_us());
    PublishRequest {
        channel: format!("bench:c{channel}"),
        event_type: "bench".to_string(),
        data: data.into_bytes().into(),
        content_type: "application/json".to_string(),
        ..PublishRequest::default()
    }
}

/// What publishers did in one step.
struct Published {
    acked: u64,
    errors: u64,
}

/// One layout's results.
struct Outcome {
    layout: Layout,
    paced: Seen,
    paced_acked: u64,
    saturated: Seen,
    saturated_acked: u64,
    errors: u64,
    clients: u64,
}

/// The policy every node reads: the benchmark's channels keep some history.
const POLICY: &str = "[namespaces.bench]\nhistory_size = 100\nhistory_ttl_secs = 0\n";

/// Five nodes and their edges; dropping it kills every process.
struct Layer {
    _nodes: Vec<NodeProc>,
    _edges: Vec<NodeProc>,
    grpc: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    ws: Vec<String>,
}

fn free_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(held
        .iter()
        .map(std::net::TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?)
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating herald-bench's own executable")?;
    let path = me.with_file_name(name);
    if !path.is_file() {
        bail!(
            "`{name}` is not at {} (build it with the same profile as herald-bench)",
            path.display()
        );
    }
    Ok(path)
}

async fn start_layer(layout: Layout, dir: &Path) -> anyhow::Result<Layer> {
    let node_bin = sibling("herald-node")?;
    let edge_bin = sibling("herald-edge")?;
    let tls = dir.join("tls");
    let certs = std::process::Command::new(sibling("herald")?)
        .args(["certs", "--out"])
        .arg(&tls)
        .output()
        .context("running herald certs")?;
    if !certs.status.success() {
        bail!("herald certs: {}", String::from_utf8_lossy(&certs.stderr));
    }
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let addrs = free_addrs(4 * NODES as usize)?;
    let (grpc, rest) = addrs.split_at(NODES as usize);
    let (http, rest) = rest.split_at(NODES as usize);
    let (edge_ws, edge_http) = rest.split_at(NODES as usize);
    let peers = (1..=VOTERS)
        .map(|id| format!("{id}={}", grpc[id as usize - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let voters = grpc[..VOTERS as usize]
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let delivery = match layout {
        Layout::Quic => "quic",
        Layout::RaftLog => "raft-log",
    };
    let mut nodes = Vec::new();
    for id in 1..=NODES {
        let i = id as usize - 1;
        let data_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&data_dir)?;
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--grpc-listen".into(),
            grpc[i].to_string(),
            "--http-listen".into(),
            http[i].to_string(),
            "--api-key".into(),
            // One key with every role: the benchmark measures delivery on a
            // plaintext gRPC network, not access control.
            format!("publish+admin+edge+node:{API_KEY}"),
            "--config".into(),
            policy.display().to_string(),
            "--quic-listen".into(),
            "127.0.0.1:0".into(),
            "--tls-ca".into(),
            tls.join("ca.pem").display().to_string(),
            "--tls-cert".into(),
            tls.join(format!("node-{id}.pem")).display().to_string(),
            "--tls-key".into(),
            tls.join(format!("node-{id}-key.pem")).display().to_string(),
            "--log".into(),
            "warn".into(),
        ];
        match (id <= VOTERS, layout) {
            (true, _) => args.extend(["--peers".into(), peers.clone()]),
            (false, Layout::Quic) => {
                args.extend(["--fanout".into(), "--join".into(), voters.clone()])
            }
            (false, Layout::RaftLog) => {
                args.extend(["--join".into(), voters.clone(), "--learner".into()]);
            }
        }
        if id <= VOTERS || layout == Layout::RaftLog {
            args.extend(["--delivery".into(), delivery.into()]);
        }
        nodes.push(NodeProc::launch(
            id,
            NodeLaunch {
                program: node_bin.clone(),
                args: args.into_iter().map(OsString::from).collect(),
                env: Vec::new(),
                grpc_addr: grpc[i],
                http_addr: http[i],
                data_dir,
                log_path: dir.join(format!("node-{id}.log")),
            },
        )?);
    }
    for (i, addr) in http.iter().enumerate() {
        wait_http(*addr, "ready", Duration::from_secs(60))
            .await
            .with_context(|| format!("node {} not ready", i + 1))?;
    }
    let mut edges = Vec::new();
    for id in 1..=NODES {
        let i = id as usize - 1;
        let args: Vec<String> = vec![
            "--listen".into(),
            edge_ws[i].to_string(),
            "--http-listen".into(),
            edge_http[i].to_string(),
            "--nodes".into(),
            grpc[i].to_string(),
            "--api-key".into(),
            API_KEY.into(),
            "--jwt-hs256-secret".into(),
            EDGE_JWT_SECRET.into(),
            "--log".into(),
            "warn".into(),
        ];
        let edge_dir = dir.join(format!("edge-{id}"));
        std::fs::create_dir_all(&edge_dir)?;
        edges.push(NodeProc::launch(
            100 + id,
            NodeLaunch {
                program: edge_bin.clone(),
                args: args.into_iter().map(OsString::from).collect(),
                env: Vec::new(),
                grpc_addr: edge_ws[i],
                http_addr: edge_http[i],
                data_dir: edge_dir,
                log_path: dir.join(format!("edge-{id}.log")),
            },
        )?);
    }
    for (i, addr) in edge_http.iter().enumerate() {
        wait_http(*addr, "ready linked", Duration::from_secs(60))
            .await
            .with_context(|| format!("edge {} not linked", i + 1))?;
    }
    Ok(Layer {
        _nodes: nodes,
        _edges: edges,
        grpc: grpc.to_vec(),
        http: http.to_vec(),
        ws: edge_ws
            .iter()
            .map(|a| format!("ws://{a}/connection/websocket"))
            .collect(),
    })
}

async fn wait_http(addr: SocketAddr, prefix: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, body)) = http_get(addr, "/readyz").await
            && body.starts_with(prefix)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{addr} /readyz not `{prefix}` within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Ok((_, body)) = http_get(addr, "/metrics").await else {
        return 0.0;
    };
    herald_cluster_tests::edge::sum_metric(&body, name)
}

async fn leader(layer: &Layer) -> anyhow::Result<SocketAddr> {
    let mut client = publisher_at(layer.grpc[0], Some(API_KEY));
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await?
        .into_inner();
    let id = status.leader_id.context("no leader")?;
    Ok(layer.grpc[id as usize - 1])
}

/// Publish for `length`: paced at `rate` per second (`concurrency` 0) or
/// with `concurrency` publishers as fast as acks come.
async fn publish(
    leader: SocketAddr,
    channels: u64,
    phase: u64,
    pad: Arc<String>,
    rate: u64,
    concurrency: usize,
    length: Duration,
) -> Published {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let tasks = if concurrency == 0 { 8 } else { concurrency };
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (next, pad) = (next.clone(), pad.clone());
            let mut client = publisher_at(leader, Some(API_KEY));
            let period = (concurrency == 0)
                .then(|| Duration::from_secs_f64(tasks as f64 / rate.max(1) as f64));
            tokio::spawn(async move {
                let mut p = Published {
                    acked: 0,
                    errors: 0,
                };
                let mut tick = period.map(tokio::time::interval);
                while Instant::now() < deadline {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    match client.publish(request(n % channels, phase, &pad)).await {
                        Ok(_) => p.acked += 1,
                        Err(_) => p.errors += 1,
                    }
                }
                p
            })
        })
        .collect();
    let mut total = Published {
        acked: 0,
        errors: 0,
    };
    for h in handles {
        if let Ok(p) = h.await {
            total.acked += p.acked;
            total.errors += p.errors;
        }
    }
    total
}

async fn measure(layout: Layout, s: &Settings) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("herald-bench-delivery-")
        .tempdir()?;
    let layer = start_layer(layout, dir.path()).await?;
    let window_end_us = Arc::new(AtomicU64::new(u64::MAX));
    let (stop_tx, stop) = watch::channel(false);
    let token = edge_token("bench");
    let mut clients = Vec::new();
    for (i, url) in layer.ws.iter().enumerate() {
        let dialer = Dialer::new(url, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]).await?;
        for k in 0..s.subscribers_per_edge {
            let mut conn = dialer
                .connect(k, &token)
                .await
                .map_err(anyhow::Error::msg)?;
            for c in 0..s.channels {
                conn.subscribe(&format!("bench:c{c}"), None)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
            let mut tally = Tally {
                outer: i as u64 >= VOTERS,
                window_end_us: window_end_us.clone(),
                phases: [Seen::new(), Seen::new(), Seen::new()],
            };
            let stop = stop.clone();
            clients.push(tokio::spawn(async move {
                conn.run(stop, |l| tally.on_line(l)).await;
                tally
            }));
        }
    }
    let n_clients = clients.len() as u64;
    // Every node registered its edge's channels (the leader pushes by it).
    for addr in &layer.http {
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(*addr, "herald_interest_changes_total").await < s.channels as f64 {
            if Instant::now() >= deadline {
                bail!("node at {addr} did not register its channels");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let leader = leader(&layer).await?;
    let pad = Arc::new("x".repeat(s.payload_bytes.saturating_sub(40)));
    let warm = publish(
        leader,
        s.channels,
        WARMUP,
        pad.clone(),
        s.rate,
        0,
        s.step / 4,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    window_end_us.store(unix_us() + s.step.as_micros() as u64, Ordering::Relaxed);
    let paced = publish(leader, s.channels, PACED, pad.clone(), s.rate, 0, s.step).await;
    tokio::time::sleep(DRAIN).await;
    window_end_us.store(unix_us() + s.step.as_micros() as u64, Ordering::Relaxed);
    let saturated = publish(leader, s.channels, SATURATED, pad, 0, s.concurrency, s.step).await;
    tokio::time::sleep(DRAIN).await;
    let _ = stop_tx.send(true);
    let mut seen = [Seen::new(), Seen::new(), Seen::new()];
    for c in clients {
        let tally = c.await?;
        for (all, one) in seen.iter_mut().zip(&tally.phases) {
            all.merge(one)?;
        }
    }
    let [_, paced_seen, saturated_seen] = seen;
    Ok(Outcome {
        layout,
        paced: paced_seen,
        paced_acked: paced.acked,
        saturated: saturated_seen,
        saturated_acked: saturated.acked,
        errors: warm.errors + paced.errors + saturated.errors,
        clients: n_clients,
    })
}

struct Settings {
    channels: u64,
    subscribers_per_edge: usize,
    rate: u64,
    concurrency: usize,
    step: Duration,
    payload_bytes: usize,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) async fn run(args: DeliveryArgs) -> anyhow::Result<ExitCode> {
    let s = if args.smoke {
        Settings {
            channels: 10,
            subscribers_per_edge: 1,
            rate: 50,
            concurrency: 4,
            step: Duration::from_secs(2),
            payload_bytes: args.payload_bytes,
        }
    } else {
        Settings {
            channels: args.channels,
            subscribers_per_edge: args.subscribers_per_edge,
            rate: args.rate,
            concurrency: args.concurrency,
            step: Duration::from_secs(args.seconds),
            payload_bytes: args.payload_bytes,
        }
    };
    println!(
        "delivery: 5 nodes, an edge each, {} subscriber(s) per edge on {} channels; paced {}/s, saturated {} publishers; {} s steps; {} B payloads",
        s.subscribers_per_edge,
        s.channels,
        s.rate,
        s.concurrency,
        s.step.as_secs(),
        s.payload_bytes
    );
    let mut outcomes = Vec::new();
    for layout in [Layout::Quic, Layout::RaftLog] {
        let o = measure(layout, &s).await?;
        report(&o, s.step);
        outcomes.push(o);
    }
    let by: BTreeMap<&str, &Outcome> = outcomes
        .iter()
        .map(|o| {
            let key = match o.layout {
                Layout::Quic => "quic",
                Layout::RaftLog => "raft-log",
            };
            (key, o)
        })
        .collect();
    let (q, r) = (by["quic"], by["raft-log"]);
    let secs = s.step.as_secs_f64();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "ratio quic/raft-log: paced p50 {:.2}, p99 {:.2}; paced p50 at nodes 4-5 {:.2}, p99 {:.2}; saturated delivered/s {:.2}, acked/s {:.2}",
        ratio(ms(&q.paced.all_us, 0.5), ms(&r.paced.all_us, 0.5)),
        ratio(ms(&q.paced.all_us, 0.99), ms(&r.paced.all_us, 0.99)),
        ratio(ms(&q.paced.outer_us, 0.5), ms(&r.paced.outer_us, 0.5)),
        ratio(ms(&q.paced.outer_us, 0.99), ms(&r.paced.outer_us, 0.99)),
        ratio(
            q.saturated.in_window as f64 / secs,
            r.saturated.in_window as f64 / secs
        ),
        ratio(q.saturated_acked as f64, r.saturated_acked as f64),
    );
    if args.smoke {
        for o in &outcomes {
            let want = o.paced_acked * o.clients;
            if o.paced.delivered != want || o.paced_acked == 0 {
                eprintln!(
                    "herald-bench delivery: {}: {} of {want} paced deliveries arrived",
                    o.layout.name(),
                    o.paced.delivered
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(o: &Outcome, step: Duration) {
    let secs = step.as_secs_f64();
    let expected = |acked: u64| acked * o.clients;
    println!(
        "{}: {} clients, {} publish errors",
        o.layout.name(),
        o.clients,
        o.errors
    );
    println!(
        "  paced: {:.0} acked/s; publish-to-client p50 {:.2} ms, p99 {:.2} ms (nodes 4-5: p50 {:.2}, p99 {:.2}); delivered {} of {}",
        o.paced_acked as f64 / secs,
        ms(&o.paced.all_us, 0.5),
        ms(&o.paced.all_us, 0.99),
        ms(&o.paced.outer_us, 0.5),
        ms(&o.paced.outer_us, 0.99),
        o.paced.delivered,
        expected(o.paced_acked),
    );
    println!(
        "  saturated: {:.0} acked/s, {:.0} delivered/s in the window; p50 {:.2} ms, p99 {:.2} ms; delivered {} of {}",
        o.saturated_acked as f64 / secs,
        o.saturated.in_window as f64 / secs,
        ms(&o.saturated.all_us, 0.5),
        ms(&o.saturated.all_us, 0.99),
        o.saturated.delivered,
        expected(o.saturated_acked),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_a_push() {
        let req = request(3, PACED, "xx");
        let data = String::from_utf8(req.data.to_vec()).unwrap();
        let line =
            format!(r#"{{"push":{{"channel":"bench:c3","pub":{{"data":{data},"offset":7}}}}}}"#);
        let (phase, sent) = stamp(&line).unwrap();
        assert_eq!(phase, PACED);
        assert!(sent > 0 && sent <= unix_us());
        assert_eq!(stamp(r#"{"push":{}}"#), None);
    }
}
