//! The three systems under test, started by the benchmark for one scenario
//! and stopped when the [`Deployment`] is dropped (every child process is
//! spawned with `kill_on_drop`, `herald dev` stops through its own handle).
//!
//! * **Herald**: `herald dev` (3 nodes, Raft) plus the benchmark's own
//!   `herald-edge` processes linked to it (1, or several for the idle
//!   scenario), all accepting HS256 tokens signed with one secret.
//! * **Centrifugo**: one process with the memory engine for delivery and
//!   recovery; with the Redis engine (a Redis primary with `appendfsync
//!   always` and two replicas) for durable publishing; several independent
//!   processes for idle connections.
//! * **NATS**: a 3-server cluster with JetStream and a WebSocket listener on
//!   each; several independent servers for idle connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::nats::{NatsTcp, js_ok};
use crate::dev::{self, DevCluster};
use crate::leader::{ApiKey, Leader};
use crate::usage::{self, Watched};

/// How long a started server gets to accept connections.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// The secret every system verifies client tokens with.
pub(crate) const TOKEN_SECRET: &str = "herald-bench-compare-secret-of-32-bytes";
/// Centrifugo's HTTP API key.
pub(crate) const API_KEY: &str = "herald-bench-compare-key";
/// History kept per channel on every system that keeps one: the same as the
/// `default` namespace of `herald dev`.
const HISTORY_SIZE: u32 = 100;
/// The JetStream stream that stores durable publications (`durable.>`) and
/// the reconnect storm's channel (`storm.>`).
pub(crate) const STREAM: &str = "BENCH";

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum System {
    Herald,
    Centrifugo,
    Nats,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Herald => "herald",
            System::Centrifugo => "centrifugo",
            System::Nats => "nats",
        }
    }
}

/// What a scenario needs started.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layout {
    /// Delivery and recovery: the system's replicated setup where it has
    /// one (Herald, NATS), Centrifugo's single in-memory node.
    Delivery,
    /// Replicated, acknowledged publishing (Centrifugo with Redis).
    Durable,
    /// `n` independent client-facing servers (memory per connection).
    Idle(usize),
}

/// Where publishes go.
#[derive(Debug, Clone)]
pub(crate) enum PublishTarget {
    /// gRPC `Publish` to the Raft leader.
    Herald(Leader),
    /// `POST /api/publish`.
    Centrifugo(SocketAddr),
    /// Core NATS publish (no ack) or, with `jetstream`, a publish to a
    /// stream's subject acknowledged by the stream.
    Nats { addr: SocketAddr, jetstream: bool },
}

/// Herald's channel policy with `--herald-ephemeral`: channels of the
/// default namespace keep no history, so publications skip Raft and go
/// straight to the subscribers' nodes (at most once, like core NATS).
const EPHEMERAL_POLICY: &str = "[namespaces.default]\nhistory_size = 0\n";

/// Where the binaries are, and how to run Herald.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) herald: PathBuf,
    /// Run Herald's default namespace without history.
    pub(crate) herald_ephemeral: bool,
    pub(crate) centrifugo: PathBuf,
    pub(crate) nats: PathBuf,
    pub(crate) redis: PathBuf,
}

/// A running system.
#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) system: System,
    /// Client WebSocket URLs (one per client-facing server).
    pub(crate) ws_urls: Vec<String>,
    /// Connection token (Centrifugo protocol clients).
    pub(crate) token: String,
    pub(crate) publish: PublishTarget,
    /// The server processes whose CPU and memory are reported.
    pub(crate) watched: Vec<Watched>,
    children: Vec<Child>,
    dev: Option<DevCluster>,
    _dir: tempfile::TempDir,
}

impl Deployment {
    /// Start `system` as `layout` needs it and wait until it serves.
    pub(crate) async fn start(
        system: System,
        layout: Layout,
        bins: &Binaries,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a temporary directory for the servers")?;
        let mut d = Self {
            system,
            ws_urls: Vec::new(),
            token: String::new(),
            publish: PublishTarget::Centrifugo(SocketAddr::from(([127, 0, 0, 1], 0))),
            watched: Vec::new(),
            children: Vec::new(),
            dev: None,
            _dir: dir,
        };
        match system {
            System::Herald => d.start_herald(layout, bins).await?,
            System::Centrifugo => d.start_centrifugo(layout, bins).await?,
            System::Nats => d.start_nats(layout, bins).await?,
        }
        d.watched = d.watched.iter().map(|w| usage::watched(w.pid)).collect();
        Ok(d)
    }

    /// Stop what was started: `herald dev` gracefully, the rest by kill.
    pub(crate) async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        if let Some(dev) = self.dev.take()
            && let Err(e) = dev.stop().await
        {
            eprintln!("herald-bench: warning: {e:#}");
        }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn spawn(&mut self, program: &Path, args: &[String], log: &str) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.dir().join(log))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().context("the process exited at once")?;
        self.children.push(child);
        Ok(pid)
    }

    async fn start_herald(&mut self, layout: Layout, bins: &Binaries) -> anyhow::Result<()> {
        let policy = bins
            .herald_ephemeral
            .then(|| self.dir().join("policy.toml"));
        if let Some(path) = &policy {
            std::fs::write(path, EPHEMERAL_POLICY)?;
        }
        let dev = DevCluster::spawn_with_policy(&bins.herald, 3, policy.as_deref()).await?;
        self.watched = usage::children_named(dev.pid(), usage::NODE_COMM)
            .into_iter()
            .map(usage::watched)
            .collect();
        let edge_key = dev.edge_key.clone().unwrap_or_default();
        let nodes = dev.grpc_addrs.join(",");
        let leader = Leader::follow(
            dev.grpc_addrs.clone(),
            ApiKey::new(dev.api_key.as_deref())?,
            START_PATIENCE,
        )
        .await?;
        self.dev = Some(dev);
        let edge = bins.herald.with_file_name("herald-edge");
        let edges = match layout {
            Layout::Idle(n) => n,
            _ => 1,
        };
        for i in 0..edges {
            let (listen, http) = (free_addr()?, free_addr()?);
            let args: Vec<String> = [
                "--listen",
                &listen.to_string(),
                "--http-listen",
                &http.to_string(),
                "--nodes",
                &nodes,
                "--api-key",
                &edge_key,
                "--jwt-hs256-secret",
                TOKEN_SECRET,
                "--log",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let pid = self.spawn(&edge, &args, &format!("edge-{i}.log"))?;
            wait_http_ok(http, "/readyz").await?;
            self.watched.push(usage::watched(pid));
            self.ws_urls
                .push(format!("ws://{listen}/connection/websocket"));
        }
        self.token = token(true)?;
        self.publish = PublishTarget::Herald(leader);
        Ok(())
    }

    async fn start_centrifugo(&mut self, layout: Layout, bins: &Binaries) -> anyhow::Result<()> {
        let mut engine = serde_json::json!({"type": "memory"});
        if let Layout::Durable = layout {
            let primary = free_addr()?;
            self.start_redis(bins, primary, None).await?;
            for _ in 0..2 {
                let replica = free_addr()?;
                self.start_redis(bins, replica, Some(primary)).await?;
            }
            engine = serde_json::json!({"type": "redis", "redis": {"address": [format!("redis://{primary}")]}});
        }
        let instances = match layout {
            Layout::Idle(n) => n,
            _ => 1,
        };
        for i in 0..instances {
            let addr = free_addr()?;
            let config = serde_json::json!({
                "http_server": {"address": "127.0.0.1", "port": addr.port()},
                "log": {"level": "error"},
                "health": {"enabled": true},
                "http_api": {"key": API_KEY},
                "client": {"token": {"hmac_secret_key": TOKEN_SECRET}},
                "engine": engine,
                "channel": {"without_namespace": {
                    "history_size": HISTORY_SIZE,
                    "history_ttl": "600s",
                    "force_recovery": true,
                    "allow_subscribe_for_client": true
                }}
            });
            let path = self.dir().join(format!("centrifugo-{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
            let args = vec!["--config".to_string(), path.display().to_string()];
            let pid = self.spawn(&bins.centrifugo, &args, &format!("centrifugo-{i}.log"))?;
            wait_http_ok(addr, "/health").await?;
            self.watched.push(usage::watched(pid));
            self.ws_urls
                .push(format!("ws://{addr}/connection/websocket"));
            if i == 0 {
                self.publish = PublishTarget::Centrifugo(addr);
            }
        }
        self.token = token(false)?;
        Ok(())
    }

    async fn start_redis(
        &mut self,
        bins: &Binaries,
        addr: SocketAddr,
        primary: Option<SocketAddr>,
    ) -> anyhow::Result<()> {
        let data = self.dir().join(format!("redis-{}", addr.port()));
        std::fs::create_dir_all(&data)?;
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--dir",
            &data.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = primary {
            args.extend([
                "--replicaof".to_string(),
                p.ip().to_string(),
                p.port().to_string(),
            ]);
        }
        let pid = self.spawn(&bins.redis, &args, &format!("redis-{}.log", addr.port()))?;
        wait_tcp(addr).await?;
        self.watched.push(usage::watched(pid));
        Ok(())
    }

    async fn start_nats(&mut self, layout: Layout, bins: &Binaries) -> anyhow::Result<()> {
        let (servers, clustered) = match layout {
            Layout::Idle(n) => (n, false),
            _ => (3, true),
        };
        let client: Vec<SocketAddr> = (0..servers)
            .map(|_| free_addr())
            .collect::<Result<_, _>>()?;
        let routes: Vec<SocketAddr> = (0..servers)
            .map(|_| free_addr())
            .collect::<Result<_, _>>()?;
        for i in 0..servers {
            let ws = free_addr()?;
            let mut config = format!(
                "server_name: n{i}\nlisten: \"{}\"\nwebsocket {{\n  listen: \"{ws}\"\n  no_tls: true\n}}\n",
                client[i]
            );
            if clustered {
                let store = self.dir().join(format!("js-{i}"));
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| format!("\"nats-route://{r}\""))
                    .collect();
                config.push_str(&format!(
                    "jetstream {{\n  store_dir: \"{}\"\n}}\ncluster {{\n  name: bench\n  listen: \"{}\"\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes[i],
                    others.join(", ")
                ));
            }
            let path = self.dir().join(format!("nats-{i}.conf"));
            std::fs::write(&path, config)?;
            let args = vec!["-c".to_string(), path.display().to_string()];
            let pid = self.spawn(&bins.nats, &args, &format!("nats-{i}.log"))?;
            wait_tcp(ws).await?;
            self.watched.push(usage::watched(pid));
            self.ws_urls.push(format!("ws://{ws}"));
        }
        if clustered {
            create_stream(client[0]).await?;
        }
        self.publish = PublishTarget::Nats {
            addr: client[0],
            jetstream: matches!(layout, Layout::Durable),
        };
        Ok(())
    }
}

/// Create the R3 file stream, retrying while the JetStream cluster elects
/// its meta leader.
async fn create_stream(addr: SocketAddr) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "name": STREAM,
        "subjects": ["durable.>", "storm.>"],
        "num_replicas": 3,
        "storage": "file",
        "max_msgs_per_subject": HISTORY_SIZE,
    });
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut conn) = NatsTcp::connect(addr).await {
            let subject = format!("$JS.API.STREAM.CREATE.{STREAM}");
            match conn.request(&subject, config.to_string().as_bytes()).await {
                Ok(reply) => match js_ok(&reply) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("could not create the JetStream stream {STREAM} (3 replicas): {last}")
}

/// A connection token for every client: HS256 with [`TOKEN_SECRET`]; for
/// Herald with the `caps` claim that allows subscribing to every channel.
fn token(caps: bool) -> anyhow::Result<String> {
    let exp = crate::fanout::unix_us() / 1_000_000 + 24 * 3600;
    let mut claims = serde_json::json!({"sub": "bench", "exp": exp});
    if caps {
        claims["caps"] =
            serde_json::json!([{"channels": ["*"], "match": "wildcard", "allow": ["sub"]}]);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes())?;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )?)
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

async fn wait_tcp(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing accepted connections on {addr} within {START_PATIENCE:?}")
}

/// Wait until `GET path` on `addr` answers 200.
async fn wait_http_ok(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if http_ok(addr, path).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("GET http://{addr}{path} did not answer 200 within {START_PATIENCE:?}")
}

async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

/// The default binaries: `herald` next to this executable, the peers on
/// `PATH`.
pub(crate) fn binaries(
    herald: Option<&Path>,
    herald_ephemeral: bool,
    centrifugo: PathBuf,
) -> anyhow::Result<Binaries> {
    Ok(Binaries {
        herald: dev::herald_binary(herald)?,
        herald_ephemeral,
        centrifugo,
        nats: PathBuf::from("nats-server"),
        redis: PathBuf::from("redis-server"),
    })
}
