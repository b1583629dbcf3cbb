//! What the WebSocket benchmarks (`idle`, `fanout`) drive: a `herald dev`
//! cluster with its edge, started by the benchmark (`--spawn`), or an edge
//! and cluster that already run (`--ws-url`, `--server`); the connection
//! tokens; the edge and node processes to watch; and the open-files limits
//! that thousands of sockets need.
//!
//! Open files: every client is one socket in the benchmark and one in the
//! edge. The benchmark raises its own soft limit to its hard limit with
//! `setrlimit`; a `herald dev` it starts (and so the edge and nodes) inherits
//! that limit. An edge started by someone else keeps its own limit, which is
//! checked (`/proc/<pid>/limits`) before any client connects.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::dev::{self, DevCluster};
use crate::usage::{self, Watched};

/// Sockets and files a process needs besides the clients' sockets (listeners,
/// the links to the nodes, logs, the runtime).
const FILES_HEADROOM: u64 = 256;
/// Lifetime of the tokens minted with `--jwt-hs256-secret`.
const MINTED_TOKEN_SECS: u64 = 24 * 3600;

/// Flags shared by `idle` and `fanout`: what to connect to.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// Start a local cluster and edge with `herald dev` (the `herald` binary
    /// next to this one), use the edge URL and token it prints, and stop it
    /// at the end.
    #[arg(long)]
    spawn: bool,

    /// With --spawn: the `herald` binary to run instead of the one next to
    /// this executable.
    #[arg(long, value_name = "PATH")]
    herald: Option<PathBuf>,

    /// With --spawn: how many nodes `herald dev` runs.
    #[arg(long, default_value_t = 3)]
    nodes: u64,

    /// WebSocket URL of a running edge
    /// (`ws://host:port/connection/websocket`), instead of --spawn.
    #[arg(long, value_name = "URL", conflicts_with = "spawn")]
    ws_url: Option<String>,

    /// With --ws-url: one connection token for every client.
    #[arg(long, env = "HERALD_BENCH_TOKEN", conflicts_with = "jwt_hs256_secret")]
    token: Option<String>,

    /// With --ws-url: mint an HS256 token for each client (user
    /// `bench-<n>`, allowed to subscribe to every channel) with the edge's
    /// `--jwt-hs256-secret`.
    #[arg(long, env = "HERALD_BENCH_JWT_HS256_SECRET")]
    jwt_hs256_secret: Option<String>,

    /// With --ws-url: process id of the edge, when it cannot be found by
    /// its `--listen` flag (started with `HERALD_LISTEN`, or in a
    /// container).
    #[arg(long, value_name = "PID")]
    edge_pid: Option<u32>,

    /// With --ws-url: gRPC address of a node of the edge's cluster
    /// (repeatable); `fanout` publishes through it, and the node processes
    /// listening there are watched.
    #[arg(long = "server", value_name = "HOST:PORT", conflicts_with = "spawn")]
    servers: Vec<String>,

    /// With --server: API key sent as `authorization: apikey <key>`.
    #[arg(long, env = "HERALD_API_KEY")]
    api_key: Option<String>,

    /// Local addresses the clients connect from, in turn
    /// (comma-separated). Each loopback address (127.0.0.1, 127.0.0.2, ...)
    /// has its own ~28,000 ephemeral ports towards one edge port.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    source_addrs: Vec<IpAddr>,
}

/// Where client tokens come from.
enum Tokens {
    /// The same token for every client.
    Shared(Arc<str>),
    /// One minted per client.
    Mint(jsonwebtoken::EncodingKey),
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tokens::Shared(_) => "Tokens::Shared",
            Tokens::Mint(_) => "Tokens::Mint",
        })
    }
}

/// A running target: the edge, its cluster, and how to reach them.
#[derive(Debug)]
pub(crate) struct Target {
    cluster: Option<DevCluster>,
    /// `spawn` or `servers`, for the report.
    pub(crate) kind: &'static str,
    pub(crate) ws_url: String,
    pub(crate) sources: Vec<IpAddr>,
    tokens: Tokens,
    /// gRPC addresses of nodes (for publishing).
    pub(crate) grpc: Vec<String>,
    pub(crate) api_key: Option<String>,
    /// The edge process, when found on this machine.
    pub(crate) edge: Option<Watched>,
    /// The node processes, when found on this machine.
    pub(crate) nodes: Vec<Watched>,
    /// The benchmark's own open-files limit after raising it.
    pub(crate) own_files: u64,
    /// The edge's open-files limit.
    pub(crate) edge_files: Option<u64>,
}

impl Target {
    /// Raise the open-files limit for `clients` sockets, then start or find
    /// the target. `spawn` forces `--spawn` (the smoke runs).
    pub(crate) async fn start(a: TargetArgs, spawn: bool, clients: u64) -> anyhow::Result<Self> {
        let needed = clients + FILES_HEADROOM;
        let own_files = raise_open_files(needed)?;
        let mut target = if a.spawn || spawn {
            if !(1..=15).contains(&a.nodes) {
                bail!("--nodes must be between 1 and 15");
            }
            let herald = dev::herald_binary(a.herald.as_deref())?;
            eprintln!(
                "herald-bench: starting `{} dev --nodes {}`",
                herald.display(),
                a.nodes
            );
            let cluster = DevCluster::spawn(&herald, a.nodes).await?;
            let (Some(ws_url), Some(token)) = (cluster.edge_ws.clone(), cluster.token.clone())
            else {
                bail!(
                    "`herald dev` printed no `edge 1 websocket <url>` and `token <jwt>` lines \
                     (an older `herald`?); start an edge yourself and use --ws-url with \
                     --token or --jwt-hs256-secret"
                );
            };
            let mut nodes: Vec<Watched> = usage::children_named(cluster.pid(), usage::NODE_COMM)
                .into_iter()
                .map(usage::watched)
                .collect();
            nodes.sort_by_key(|w| (w.node_id, w.pid));
            let edge = usage::children_named(cluster.pid(), usage::EDGE_COMM)
                .into_iter()
                .next()
                .map(usage::watched);
            Self {
                kind: "spawn",
                ws_url,
                sources: a.source_addrs,
                tokens: Tokens::Shared(token.into()),
                grpc: cluster.grpc_addrs.clone(),
                api_key: cluster.api_key.clone(),
                edge,
                nodes,
                own_files,
                edge_files: None,
                cluster: Some(cluster),
            }
        } else {
            let Some(ws_url) = a.ws_url else {
                bail!(
                    "give --spawn, or --ws-url <url> of a running edge (with --token or \
                     --jwt-hs256-secret)"
                );
            };
            let tokens = match (a.token, a.jwt_hs256_secret) {
                (Some(t), _) => Tokens::Shared(t.into()),
                (None, Some(secret)) if !secret.is_empty() => Tokens::Mint(
                    jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
                        .context("--jwt-hs256-secret: making the signing key")?,
                ),
                _ => bail!("--ws-url needs --token or --jwt-hs256-secret"),
            };
            let edge = match a.edge_pid {
                Some(pid) => Some(usage::watched(pid)),
                None => find_edge(&ws_url),
            };
            let mut nodes: Vec<Watched> = usage::all_named(usage::NODE_COMM)
                .into_iter()
                .map(usage::watched)
                .filter(|w| w.serves(&a.servers))
                .collect();
            nodes.sort_by_key(|w| (w.node_id, w.pid));
            Self {
                cluster: None,
                kind: "servers",
                ws_url,
                sources: a.source_addrs,
                tokens,
                grpc: a.servers,
                api_key: a.api_key,
                edge,
                nodes,
                own_files,
                edge_files: None,
            }
        };
        if let Some(edge) = &target.edge {
            target.edge_files = usage::open_files_limit(edge.pid);
            if let Some(limit) = target.edge_files
                && limit < needed
            {
                bail!(
                    "the edge (pid {}) may open only {limit} files, fewer than the {needed} \
                     that {clients} clients need. Start it with a higher limit: \
                     `prlimit --nofile={needed} herald-edge ...`, or `ulimit -n {needed}` in \
                     the shell that starts it (root can also raise it in place: \
                     `prlimit --pid {} --nofile={needed}`)",
                    edge.pid,
                    edge.pid
                );
            }
        }
        Ok(target)
    }

    /// The connection token for client `index`.
    pub(crate) fn token(&self, index: usize) -> anyhow::Result<Arc<str>> {
        match &self.tokens {
            Tokens::Shared(t) => Ok(t.clone()),
            Tokens::Mint(key) => {
                let exp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("the system clock is before 1970")?
                    .as_secs()
                    + MINTED_TOKEN_SECS;
                let claims = serde_json::json!({
                    "sub": format!("bench-{index}"),
                    "exp": exp,
                    "caps": [{"channels": ["*"], "match": "wildcard", "allow": ["sub"]}],
                });
                let token = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims,
                    key,
                )
                .context("signing a client token")?;
                Ok(token.into())
            }
        }
    }

    /// The edge's operations listener (`host:port` of its `/metrics`).
    pub(crate) fn edge_metrics(&self) -> Option<String> {
        if let Some(url) = self.cluster.as_ref().and_then(|c| c.edge_metrics.as_ref()) {
            let rest = url.strip_prefix("http://").unwrap_or(url);
            return Some(rest.split('/').next().unwrap_or(rest).to_string());
        }
        self.edge.as_ref().and_then(|e| e.http_listen.clone())
    }

    /// Stop what the benchmark started.
    pub(crate) async fn stop(self) {
        if let Some(cluster) = self.cluster
            && let Err(e) = cluster.stop().await
        {
            eprintln!("herald-bench: warning: {e:#}");
        }
    }
}

/// The `herald-edge` process on this machine whose `--listen` is the URL's
/// address (or the same port on every interface).
fn find_edge(ws_url: &str) -> Option<Watched> {
    let rest = ws_url.strip_prefix("ws://")?;
    let authority = rest.split('/').next()?;
    let (_, port) = authority.rsplit_once(':')?;
    let host_of = |a: &str| a.rsplit_once(':').map(|(h, _)| h.to_string());
    let candidates: Vec<u32> = usage::all_named(usage::EDGE_COMM)
        .into_iter()
        .filter(|&pid| {
            usage::cmdline_flag(pid, "--listen").is_some_and(|listen| {
                listen == authority
                    || (listen.ends_with(&format!(":{port}"))
                        && matches!(host_of(&listen).as_deref(), Some("0.0.0.0" | "[::]" | "::")))
            })
        })
        .collect();
    match candidates.as_slice() {
        [pid] => Some(usage::watched(*pid)),
        _ => None,
    }
}

/// Raise this process's soft open-files limit to its hard limit; fail with
/// what to do when even that is below `needed`. Returns the new limit.
fn raise_open_files(needed: u64) -> anyhow::Result<u64> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-files limit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .context("raising the open-files limit to its hard limit")?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-files limit")?;
    if soft < needed {
        bail!(
            "this process may open only {soft} files (hard limit {hard}), fewer than the \
             {needed} the clients need; raise the hard limit first (as root: \
             `ulimit -Hn {needed}`, or `prlimit --nofile={needed}:{needed} herald-bench ...`)"
        );
    }
    Ok(soft)
}
