//! A local Herald cluster: n `herald-node` processes on loopback, each with
//! its own data directory under one temporary directory, sharing an API key
//! and a channel policy file, with the QUIC delivery plane on as deployed
//! ([`ClusterOptions::quic`]).
//!
//! [`Cluster::start_isolated`] instead puts each node in its own network
//! namespace (see [`crate::network`]), so a test can cut and degrade the
//! links between nodes; [`ClusterOptions::clock_control`] runs every node
//! under libfaketime so a test can jump one node's clock (see
//! [`crate::clock`]); [`ClusterOptions::lazy_disks`] puts every node's
//! data directory on a disk that [`Cluster::power_cut`] can cut the power
//! of (see [`crate::lazyfs`]).
//!
//! Every process log in the cluster's directory (nodes and edges) is
//! scanned for `panicked`: [`crate::Verdict::conclude`] makes each one a
//! violation of the scenario, and dropping a cluster whose logs hold one
//! fails the test even when it ends without a verdict.
//!
//! Dropping a [`Cluster`] kills every node; when the drop happens because a
//! test panicked, the tail of every node's log is printed first (and the
//! temporary directory is kept if `HERALD_KEEP_TEST_DIRS` is set), so a
//! failure in CI can be diagnosed from its output alone.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use herald_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, HistoryRequest, HistoryResponse,
};
use tempfile::TempDir;
use tonic::Status;

use crate::binary;
use crate::client::{self, Admin, Publisher, RotatingPublisher};
use crate::clock;
use crate::disk::{self, SmallDisk};
use crate::lazyfs::{Discarded, LazyMount};
use crate::network::Network;
use crate::process::{NodeLaunch, NodeProc};

/// How to start the nodes of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The channel policy (`[limits]`, `[namespaces.<name>]`) as TOML,
    /// written to a file and passed as `--config` to every node.
    pub policy: Option<String>,
    /// The API key every harness client sends.
    pub api_key: String,
    /// The `--api-key` specs every node accepts (`docs/security.md`). By
    /// default [`ClusterOptions::api_key`] with every scope, so a
    /// plaintext test cluster's nodes, edges and clients share one key.
    pub key_specs: Vec<String>,
    /// The cluster CA, when the nodes serve gRPC over TLS (`--grpc-tls`):
    /// harness clients then connect with TLS and trust it.
    pub tls_ca: Option<PathBuf>,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// `--snapshot-every`, when not the node's default.
    pub snapshot_every: Option<u64>,
    /// `--log` (a `RUST_LOG`-style filter). Defaults to `HERALD_TEST_LOG`
    /// when set, else `info` with openraft's per-message chatter muted so
    /// a failing test's log tails show the node's own story.
    pub log: String,
    /// Further flags for every node.
    pub extra_args: Vec<String>,
    /// Run every node under libfaketime with its own clock file, so
    /// [`Cluster::set_clock`] can move that node's wall clock while it runs
    /// (monotonic time is left alone, as an NTP step would). Needs
    /// [`clock::libfaketime`].
    pub clock_control: bool,
    /// Run every node under libfiu (`fiu-run -x`) so [`Cluster::fail_disk`]
    /// can make one node's disk fail while it runs. Needs
    /// [`disk::libfiu`].
    pub disk_faults: bool,
    /// Give every node a data directory of its own tmpfs of this many
    /// bytes, so [`Cluster::fill_disk`] can fill it up. Needs root.
    pub small_disks: Option<u64>,
    /// Run the QUIC delivery plane on every node, as deployed (the Helm
    /// chart turns it on): `--quic-listen` with a CA and node certificate
    /// made by `herald certs` in the cluster's directory, so the leader
    /// pushes publications to its peers and edges get them from both QUIC
    /// and the local Raft log. On by default; a node whose arguments
    /// already carry `--quic-listen` (a test bringing its own
    /// certificates) is left as it is.
    pub quic: bool,
    /// Put every node's data directory on its own [`LazyMount`], a disk
    /// that loses every write not yet fsynced when [`Cluster::power_cut`]
    /// cuts the power. Needs [`LazyMount::available`].
    pub lazy_disks: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            policy: None,
            api_key: "herald-test-key".to_string(),
            key_specs: vec!["publish+admin+edge+node:herald-test-key".to_string()],
            tls_ca: None,
            // Short Raft timers keep fail-over fast in tests.
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            snapshot_every: None,
            log: std::env::var("HERALD_TEST_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".to_string()),
            extra_args: Vec::new(),
            clock_control: false,
            disk_faults: false,
            small_disks: None,
            quic: true,
            lazy_disks: false,
        }
    }
}

impl ClusterOptions {
    /// These options with `policy` as the channel policy file.
    pub fn with_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = Some(policy.into());
        self
    }
}

/// Hang guard for a single status call: a paused or dying node never answers.
const STATUS_CALL_GUARD: Duration = Duration::from_secs(3);

/// How many log lines of each node a failing test prints.
const LOG_TAIL_LINES: usize = 80;

/// Only one cluster runs at a time in a test process: the CI machines have
/// two cores, and Raft with 300 ms election timeouts elects spuriously when
/// two clusters under load starve each other. Tests in one binary still run
/// on several threads; they queue here.
struct Gate {
    busy: Mutex<bool>,
    freed: Condvar,
}

static GATE: Gate = Gate {
    busy: Mutex::new(false),
    freed: Condvar::new(),
};

/// The directory of the cluster holding the [`Slot`], so the verdict of the
/// scenario running it can scan its logs ([`logged_panics`]).
static RUNNING: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The marker of a Rust panic in a process's log (`thread '..' panicked at`).
const PANIC_MARKER: &str = "panicked";

/// Every line holding `panicked` in the `*.log` files directly in `dir`
/// (one per node and per edge), as `<file>: <line>`.
pub fn panics_in_logs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log") && p.is_file())
        .collect();
    logs.sort();
    let mut found = Vec::new();
    for log in logs {
        let Ok(bytes) = std::fs::read(&log) else {
            continue;
        };
        let name = log
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for line in String::from_utf8_lossy(&bytes).lines() {
            if line.contains(PANIC_MARKER) {
                found.push(format!("{name}: {}", line.trim()));
            }
        }
    }
    found
}

/// The panics logged so far by the processes of the cluster running in this
/// test process (only one runs at a time), one violation each.
pub fn logged_panics() -> Vec<String> {
    let dir = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clone();
    dir.map_or_else(Vec::new, |d| {
        panics_in_logs(&d)
            .into_iter()
            .map(|p| format!("a process panicked: {p}"))
            .collect()
    })
}

/// The right to run a cluster, released on drop.
#[derive(Debug)]
struct Slot(());

impl Slot {
    fn acquire() -> Self {
        let mut busy = GATE.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = GATE.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        Slot(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *GATE.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        GATE.freed.notify_one();
    }
}

/// The ports of a node in its own network namespace (it has the address to
/// itself).
const ISOLATED_GRPC_PORT: u16 = 7100;
const ISOLATED_HTTP_PORT: u16 = 7200;
/// The QUIC (UDP) port of a node in its own network namespace.
const ISOLATED_QUIC_PORT: u16 = 7300;

/// `n` distinct free loopback ports. The listeners are held until all are
/// chosen so the same port is not handed out twice; another process could
/// still take one before the node binds it, which is rare enough on a test
/// machine to accept.
pub(crate) fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(TcpListener::local_addr).collect()
}

/// A set of `herald-node` processes forming one cluster.
pub struct Cluster {
    nodes: BTreeMap<u64, NodeProc>,
    /// Unmounted once the nodes using them are dead.
    small_disks: Vec<SmallDisk>,
    opts: ClusterOptions,
    policy_path: Option<PathBuf>,
    // Field order matters for Drop: processes die (in `drop`) before their
    // disks are unmounted and their network and directory removed, and the
    // slot is released last.
    disks: BTreeMap<u64, LazyMount>,
    net: Option<Network>,
    dir: Option<TempDir>,
    _slot: Slot,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir())
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Cluster {
    /// Start nodes `1..=n` as the initial voters and wait (hang guard: 60 s)
    /// until they agree on a leader. Must be called inside a tokio runtime.
    pub async fn start(n: usize, opts: ClusterOptions) -> anyhow::Result<Self> {
        Self::start_on(n, opts, false).await
    }

    /// [`Cluster::start`] with each node in its own network namespace,
    /// listening on `10.213.<k>.<10 + id>:7100` (gRPC) and `:7200` (HTTP),
    /// reachable from the test process and from each other through one
    /// bridge. Faults between nodes are injected through [`Cluster::net`].
    /// Fails when [`Network::available`] does: check that first and skip.
    pub async fn start_isolated(n: usize, opts: ClusterOptions) -> anyhow::Result<Self> {
        Self::start_on(n, opts, true).await
    }

    async fn start_on(n: usize, opts: ClusterOptions, isolated: bool) -> anyhow::Result<Self> {
        assert!(n > 0, "a cluster needs at least one node");
        let binary = binary::herald_node();
        let slot = Slot::acquire();
        let dir = tempfile::Builder::new()
            .prefix("herald-cluster-")
            .tempdir()?;
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.path().to_path_buf());
        let policy_path = match &opts.policy {
            None => None,
            Some(toml) => {
                let path = dir.path().join("policy.toml");
                std::fs::write(&path, toml)?;
                Some(path)
            }
        };
        let mut net = if isolated {
            Some(Network::create()?)
        } else {
            None
        };
        let (grpc, http): (BTreeMap<u64, SocketAddr>, Vec<SocketAddr>) = match &mut net {
            None => {
                let addrs = free_addrs(2 * n)?;
                (
                    (1..=n as u64).zip(addrs.iter().copied()).collect(),
                    addrs[n..].to_vec(),
                )
            }
            Some(net) => {
                let mut grpc = BTreeMap::new();
                let mut http = Vec::new();
                for id in 1..=n as u64 {
                    let addr = net.add_host(id)?.addr.into();
                    grpc.insert(id, SocketAddr::new(addr, ISOLATED_GRPC_PORT));
                    http.push(SocketAddr::new(addr, ISOLATED_HTTP_PORT));
                }
                (grpc, http)
            }
        };
        let peers = grpc
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            nodes: BTreeMap::new(),
            small_disks: Vec::new(),
            opts,
            policy_path,
            disks: BTreeMap::new(),
            net,
            dir: Some(dir),
            _slot: slot,
        };
        for (i, (&id, &grpc_addr)) in grpc.iter().enumerate() {
            let mut extra = vec![OsString::from("--peers"), peers.clone().into()];
            extra.extend(cluster.opts.extra_args.iter().map(OsString::from));
            cluster.spawn_node(binary, id, grpc_addr, http[i], extra)?;
        }
        if let Err(e) = cluster.wait_for_leader(Duration::from_secs(60)).await {
            // The cluster is dropped here without a panic, so its logs
            // would otherwise never be seen.
            bail!("{e:#}\n{}", cluster.log_tails());
        }
        Ok(cluster)
    }

    fn spawn_node(
        &mut self,
        binary: &Path,
        id: u64,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
        extra: Vec<OsString>,
    ) -> anyhow::Result<&mut NodeProc> {
        let data_dir = self.dir().join(format!("node-{id}"));
        std::fs::create_dir_all(&data_dir)?;
        if let Some(bytes) = self.opts.small_disks {
            self.small_disks.push(SmallDisk::mount(&data_dir, bytes)?);
        }
        if self.opts.lazy_disks && !self.disks.contains_key(&id) {
            // What survives power cuts lives in `node-<id>.disk`.
            let backing = self.dir().join(format!("node-{id}.disk"));
            std::fs::create_dir_all(&backing)?;
            let disk = LazyMount::mount(&backing, &data_dir)
                .with_context(|| format!("node {id}'s lazy disk"))?;
            self.disks.insert(id, disk);
        }
        let log_path = self.dir().join(format!("node-{id}.log"));
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            id.to_string().into(),
            "--data-dir".into(),
            data_dir.clone().into(),
            "--grpc-listen".into(),
            grpc_addr.to_string().into(),
            "--http-listen".into(),
            http_addr.to_string().into(),
            "--api-key".into(),
            self.opts.key_specs.join(",").into(),
            "--heartbeat-ms".into(),
            self.opts.heartbeat_ms.to_string().into(),
            "--election-timeout-ms".into(),
            self.opts.election_timeout_ms.to_string().into(),
            "--log".into(),
            self.opts.log.clone().into(),
        ];
        if let Some(every) = self.opts.snapshot_every {
            args.extend(["--snapshot-every".into(), every.to_string().into()]);
        }
        if let Some(policy) = &self.policy_path {
            args.extend(["--config".into(), policy.clone().into()]);
        }
        // `{id}` in a flag stands for the node's id (per-node certificates).
        let extra: Vec<OsString> = extra
            .into_iter()
            .map(|a| match a.to_str() {
                Some(text) if text.contains("{id}") => text.replace("{id}", &id.to_string()).into(),
                _ => a,
            })
            .collect();
        let brings_quic = extra.iter().any(|a| a == "--quic-listen");
        // A test that brings its own certificates (gRPC over TLS) has the
        // QUIC plane use them too.
        let brings_tls = extra.iter().any(|a| a == "--tls-ca");
        args.extend(extra);
        if self.opts.quic && !brings_quic {
            args.extend(self.quic_args(id, brings_tls)?);
        }
        let (program, command) = match &self.net {
            None => (binary.to_path_buf(), Vec::new()),
            Some(net) => net.command_in(id, binary),
        };
        let (program, mut command) = if self.opts.disk_faults {
            let (wrapper, mut leading) = disk::wrap(self.dir(), program)?;
            leading.extend(command);
            (wrapper, leading)
        } else {
            (program, command)
        };
        command.extend(args);
        let env = if self.opts.clock_control {
            clock::node_env(self.dir(), id)?
        } else {
            Vec::new()
        };
        let launch = NodeLaunch {
            program,
            args: command,
            env,
            grpc_addr,
            http_addr,
            data_dir,
            log_path,
        };
        let node = NodeProc::launch(id, launch).with_context(|| format!("spawning node {id}"))?;
        self.nodes.insert(id, node);
        Ok(self.nodes.get_mut(&id).expect("just inserted"))
    }

    /// The flags turning on the QUIC plane ([`ClusterOptions::quic`]),
    /// making the cluster's certificates on first use. On loopback each
    /// node takes a free UDP port and advertises it; in a network namespace
    /// it listens on its own address's port 7300.
    fn quic_args(&self, id: u64, brings_tls: bool) -> anyhow::Result<Vec<OsString>> {
        let listen = match &self.net {
            None => "127.0.0.1:0".to_string(),
            Some(_) => format!("0.0.0.0:{ISOLATED_QUIC_PORT}"),
        };
        if brings_tls {
            return Ok(vec!["--quic-listen".into(), listen.into()]);
        }
        let tls = self.dir().join("tls");
        if !tls.join("ca.pem").exists() {
            let out = std::process::Command::new(binary::herald_cli())
                .args(["certs", "--out"])
                .arg(&tls)
                .output()
                .context("running herald certs")?;
            if !out.status.success() {
                bail!(
                    "herald certs failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(vec![
            "--quic-listen".into(),
            listen.into(),
            "--tls-ca".into(),
            tls.join("ca.pem").into(),
            "--tls-cert".into(),
            tls.join(format!("node-{id}.pem")).into(),
            "--tls-key".into(),
            tls.join(format!("node-{id}-key.pem")).into(),
        ])
    }

    /// Start node `id` on fresh ports with an empty data directory, joining
    /// the cluster through a running node (`--join`); with `learner` it stays
    /// a non-voting learner (`--learner`). Returns once the process is
    /// started; wait for its membership with [`Cluster::wait_for_member`].
    pub fn add_node(&mut self, id: u64, learner: bool) -> anyhow::Result<&mut NodeProc> {
        let opts = self.opts.clone();
        self.add_node_with(id, learner, &opts)
    }

    /// [`Cluster::add_node`] with other options' `extra_args` for this node
    /// (e.g. certificates from another CA).
    pub fn add_node_with(
        &mut self,
        id: u64,
        learner: bool,
        opts: &ClusterOptions,
    ) -> anyhow::Result<&mut NodeProc> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} already exists");
        }
        let via = self
            .running_ids()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no running node to join through"))?;
        let via = self.nodes[&via].grpc_addr();
        let addrs = match &mut self.net {
            None => free_addrs(2)?,
            Some(net) => {
                let addr = net.add_host(id)?.addr.into();
                vec![
                    SocketAddr::new(addr, ISOLATED_GRPC_PORT),
                    SocketAddr::new(addr, ISOLATED_HTTP_PORT),
                ]
            }
        };
        let mut extra = vec![OsString::from("--join"), via.to_string().into()];
        if learner {
            extra.push("--learner".into());
        }
        extra.extend(opts.extra_args.iter().map(OsString::from));
        self.spawn_node(binary::herald_node(), id, addrs[0], addrs[1], extra)
    }

    /// Start fan-out node `id` (`--fanout`, outside Raft) on fresh ports,
    /// talking to every running node (`--join`), with the cluster's
    /// `extra_args` (QUIC on: [`ClusterOptions::quic`] or QUIC flags in
    /// `extra_args`). Returns once the process is
    /// started; it is ready (`/readyz`) once registered.
    pub fn add_fanout_node(&mut self, id: u64) -> anyhow::Result<&mut NodeProc> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} already exists");
        }
        let voters = self
            .running_ids()
            .into_iter()
            .map(|v| self.nodes[&v].grpc_addr().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let addrs = match &mut self.net {
            None => free_addrs(2)?,
            Some(net) => {
                let addr = net.add_host(id)?.addr.into();
                vec![
                    SocketAddr::new(addr, ISOLATED_GRPC_PORT),
                    SocketAddr::new(addr, ISOLATED_HTTP_PORT),
                ]
            }
        };
        let mut extra = vec![OsString::from("--fanout"), "--join".into(), voters.into()];
        extra.extend(self.opts.extra_args.iter().map(OsString::from));
        self.spawn_node(binary::herald_node(), id, addrs[0], addrs[1], extra)
    }

    /// Where a process other than a node (an edge) runs: the program and
    /// leading arguments that start `binary`, and two addresses for it to
    /// listen on. On loopback those are free ports; in an isolated cluster
    /// the process gets its own network namespace, host `host` (1..=200,
    /// distinct from node ids), on ports 7100 and 7200, so links between it
    /// and the nodes can be cut like links between nodes.
    pub fn place_process(
        &mut self,
        host: u64,
        binary: &Path,
    ) -> anyhow::Result<(PathBuf, Vec<OsString>, [SocketAddr; 2])> {
        match &mut self.net {
            None => {
                let addrs = free_addrs(2)?;
                Ok((binary.to_path_buf(), Vec::new(), [addrs[0], addrs[1]]))
            }
            Some(net) => {
                let addr = net.add_host(host)?.addr.into();
                let (program, args) = net.command_in(host, binary);
                Ok((
                    program,
                    args,
                    [
                        SocketAddr::new(addr, ISOLATED_GRPC_PORT),
                        SocketAddr::new(addr, ISOLATED_HTTP_PORT),
                    ],
                ))
            }
        }
    }

    /// The temporary directory holding data directories, logs and the policy.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    /// The network of a cluster started with [`Cluster::start_isolated`].
    ///
    /// # Panics
    /// When the cluster runs on loopback.
    pub fn net(&self) -> &Network {
        self.net
            .as_ref()
            .expect("the cluster was not started with Cluster::start_isolated")
    }

    /// Whether the nodes run in network namespaces.
    pub fn is_isolated(&self) -> bool {
        self.net.is_some()
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Ids of every node the harness started (running or not).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes whose process is running and not paused.
    pub fn running_ids(&mut self) -> Vec<u64> {
        self.nodes
            .iter_mut()
            .filter_map(|(&id, n)| (n.is_running() && !n.is_paused()).then_some(id))
            .collect()
    }

    /// The node `id`.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The node `id`, to inject a fault or restart it.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Forget node `id` (killing it if still running), e.g. after removing
    /// it from the cluster. Its data and log stay in [`Cluster::dir`].
    pub fn forget_node(&mut self, id: u64) -> Option<NodeProc> {
        self.nodes.remove(&id)
    }

    /// A `Publisher` client for node `id`, authenticated with the cluster's key.
    pub fn publisher(&self, id: u64) -> Publisher {
        client::publisher_tls(
            self.node(id).grpc_addr(),
            Some(&self.opts.api_key),
            self.opts.tls_ca.as_deref(),
        )
    }

    /// A `Publisher` client for node `id` sending `key` (or no key at all).
    pub fn publisher_with_key(&self, id: u64, key: Option<&str>) -> Publisher {
        client::publisher_tls(self.node(id).grpc_addr(), key, self.opts.tls_ca.as_deref())
    }

    /// An `Admin` client for node `id`, authenticated with the cluster's key.
    pub fn admin(&self, id: u64) -> Admin {
        self.admin_with_key(id, Some(&self.opts.api_key))
    }

    /// An `Admin` client for node `id` sending `key` (or no key at all).
    pub fn admin_with_key(&self, id: u64, key: Option<&str>) -> Admin {
        client::admin_tls(self.node(id).grpc_addr(), key, self.opts.tls_ca.as_deref())
    }

    /// A publisher rotating over `ids` (in that order), starting at `start`.
    pub fn rotating_publisher(&self, ids: &[u64], start: usize) -> RotatingPublisher {
        RotatingPublisher::new(
            ids.iter().map(|&id| (id, self.publisher(id))).collect(),
            start,
        )
    }

    /// `ClusterStatus` as node `id` sees it.
    pub async fn status(&self, id: u64) -> Result<ClusterStatusResponse, Status> {
        let mut client = self.publisher(id);
        match tokio::time::timeout(
            STATUS_CALL_GUARD,
            client.cluster_status(ClusterStatusRequest {}),
        )
        .await
        {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "node {id} did not answer ClusterStatus"
            ))),
        }
    }

    /// Node `id`'s local (not linearizable) history of `channel`, oldest
    /// first, at most `limit` publications.
    pub async fn history(
        &self,
        id: u64,
        channel: &str,
        limit: u32,
    ) -> Result<HistoryResponse, Status> {
        let req = HistoryRequest {
            channel: channel.to_string(),
            since: None,
            limit,
            reverse: false,
            linearizable: false,
        };
        self.publisher(id)
            .history(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Fail with the node's log if a node the harness did not stop has exited.
    fn check_no_crash(&mut self) -> anyhow::Result<()> {
        for (id, node) in &mut self.nodes {
            if let Some(status) = node.unexpected_exit() {
                bail!("node {id} exited on its own ({status}); see its log");
            }
        }
        Ok(())
    }

    /// Status of every running node, or the first error.
    async fn statuses(&mut self) -> Result<BTreeMap<u64, ClusterStatusResponse>, String> {
        let mut out = BTreeMap::new();
        // One call per node, each under a hang guard: sequential is simple
        // and bounded.
        for id in self.running_ids() {
            match self.status(id).await {
                Ok(s) => {
                    out.insert(id, s);
                }
                Err(e) => return Err(format!("node {id}: {:?} {}", e.code(), e.message())),
            }
        }
        Ok(out)
    }

    /// Wait until every running node answers `ClusterStatus` naming the same
    /// leader, and that leader reports itself `leader`. Returns its id.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            self.check_no_crash()?;
            match self.statuses().await {
                Err(e) => last = e,
                Ok(all) => {
                    let leaders: BTreeSet<Option<u64>> =
                        all.values().map(|s| s.leader_id).collect();
                    match (leaders.len(), leaders.first().copied().flatten()) {
                        (1, Some(leader)) => match all.get(&leader) {
                            Some(s) if s.state == "leader" => return Ok(leader),
                            Some(s) => {
                                last = format!("named leader {leader} says it is {}", s.state)
                            }
                            None => last = format!("named leader {leader} is not a running node"),
                        },
                        _ => last = format!("no agreement on the leader: {:?}", brief(&all)),
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until nodes `ids` (say, the majority side of a partition) agree
    /// on a leader among them that reports itself `leader`, whatever the
    /// other nodes believe. Returns its id.
    pub async fn wait_for_leader_among(
        &mut self,
        ids: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_no_crash()?;
            let mut all = BTreeMap::new();
            let mut last = String::new();
            for &id in ids {
                match self.status(id).await {
                    Ok(s) => {
                        all.insert(id, s);
                    }
                    Err(e) => last = format!("node {id}: {:?} {}", e.code(), e.message()),
                }
            }
            if all.len() == ids.len() {
                let leaders: BTreeSet<Option<u64>> = all.values().map(|s| s.leader_id).collect();
                if let (1, Some(Some(leader))) = (leaders.len(), leaders.first())
                    && all.get(leader).is_some_and(|s| s.state == "leader")
                {
                    return Ok(*leader);
                }
                last = format!("no agreed leader among {ids:?}: {:?}", brief(&all));
            }
            if Instant::now() >= deadline {
                bail!("no leader among {ids:?} within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until node `id` answers `/readyz` with 200: it knows a leader and
    /// has applied everything it knows to be committed.
    pub async fn wait_ready(&mut self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = self.node(id).http_addr();
        loop {
            self.check_no_crash()?;
            let last = match client::http_get(addr, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("node {id} not ready within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until there is an agreed leader whose whole log is committed,
    /// and every running node has applied exactly the leader's committed
    /// index: after this, local reads on every node see the same state.
    pub async fn wait_converged(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            self.check_no_crash()?;
            match self.statuses().await {
                Err(e) => last = e,
                Ok(all) => {
                    let leader = all.values().find(|s| s.state == "leader");
                    match leader {
                        None => last = format!("no leader: {:?}", brief(&all)),
                        Some(l) => {
                            let target = l.committed_index;
                            let agreed = all.values().all(|s| s.leader_id == Some(l.node_id));
                            if agreed
                                && l.last_log_index == target
                                && all.values().all(|s| s.applied_index == target)
                            {
                                return Ok(());
                            }
                            last = format!(
                                "leader {} committed {target}: {:?}",
                                l.node_id,
                                brief(&all)
                            );
                            for s in all.values().filter(|s| s.applied_index > s.committed_index) {
                                last.push_str(&format!(
                                    "; node {} reports applied_index {} above its committed_index {}",
                                    s.node_id, s.applied_index, s.committed_index
                                ));
                            }
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("not converged within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the leader's `ClusterStatus` lists node `id` with `role`
    /// (`"voter"` or `"learner"`), or does not list it when `role` is `None`.
    /// Returns the leader's status at that moment.
    pub async fn wait_for_member(
        &mut self,
        id: u64,
        role: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<ClusterStatusResponse> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            self.check_no_crash()?;
            match self.statuses().await {
                Err(e) => last = e,
                Ok(all) => match all.values().find(|s| s.state == "leader") {
                    None => last = format!("no leader: {:?}", brief(&all)),
                    Some(s) => {
                        let found = s
                            .members
                            .iter()
                            .find(|m| m.id == id)
                            .map(|m| m.role.as_str());
                        if found == role {
                            return Ok(s.clone());
                        }
                        last = format!(
                            "leader {} lists node {id} as {found:?}; members {:?}",
                            s.node_id,
                            members(s)
                        );
                    }
                },
            }
            if Instant::now() >= deadline {
                bail!("node {id} not {role:?} within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lazy disk under node `id`'s data directory, when the cluster
    /// was started with [`ClusterOptions::lazy_disks`].
    pub fn disk(&self, id: u64) -> Option<&LazyMount> {
        self.disks.get(&id)
    }

    /// A power cut of every machine at once, at a moment when writes are
    /// in flight: every disk is frozen (requests held) as soon as one has
    /// unsynced writes (within `search`; the disks are thawed between
    /// looks), SIGKILL goes to every running node on a lazy disk, all
    /// signals sent before any is reaped (within milliseconds), every write
    /// not yet fsynced is discarded from every disk and every held request
    /// fails, and the nodes are reaped. They stay down; restart them with
    /// [`NodeProc::restart`]: they start from what was durable.
    pub async fn power_cut(&mut self, search: Duration) -> anyhow::Result<PowerCut> {
        if self.disks.is_empty() {
            bail!("power_cut needs a cluster started with lazy_disks");
        }
        let ids: Vec<u64> = self
            .running_ids()
            .into_iter()
            .filter(|id| self.disks.contains_key(id))
            .collect();
        let deadline = Instant::now() + search;
        loop {
            self.disks.values().for_each(LazyMount::freeze);
            let pending: u64 = self.disks.values().map(|d| d.pending().bytes).sum();
            if pending > 0 || Instant::now() >= deadline {
                break;
            }
            self.disks.values().for_each(LazyMount::thaw);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first = Instant::now();
        let mut last = first;
        for &id in &ids {
            let node = self.nodes.get_mut(&id).expect("running");
            node.send_kill()
                .with_context(|| format!("SIGKILL to node {id}"))?;
            last = Instant::now();
        }
        let mut cut = PowerCut {
            killed: ids.clone(),
            spread: last - first,
            ..PowerCut::default()
        };
        for (&id, disk) in &self.disks {
            let lost = disk
                .power_cut()
                .with_context(|| format!("power cut of node {id}'s disk"))?;
            cut.discarded += lost;
            cut.per_node.insert(id, lost);
        }
        for &id in &ids {
            self.nodes.get_mut(&id).expect("running").kill()?;
        }
        Ok(cut)
    }

    /// The last lines of every node's log, headed by the node id.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            out.push_str(&format!(
                "\n----- node {id} ({}) last {LOG_TAIL_LINES} lines -----\n{}\n",
                node.log_path().display(),
                node.log_tail(LOG_TAIL_LINES)
            ));
        }
        out
    }
}

/// What [`Cluster::power_cut`] did.
#[derive(Debug, Clone, Default)]
pub struct PowerCut {
    /// The nodes killed.
    pub killed: Vec<u64>,
    /// Time from the first SIGKILL sent to the last.
    pub spread: Duration,
    /// Everything discarded, summed over the disks.
    pub discarded: Discarded,
    /// What each node's disk discarded.
    pub per_node: BTreeMap<u64, Discarded>,
}

/// `(id, role)` of every member in a status.
pub fn members(status: &ClusterStatusResponse) -> Vec<(u64, String)> {
    status
        .members
        .iter()
        .map(|m| (m.id, m.role.clone()))
        .collect()
}

/// Ids of the voters in a status.
pub fn voters(status: &ClusterStatusResponse) -> BTreeSet<u64> {
    status
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect()
}

fn brief(all: &BTreeMap<u64, ClusterStatusResponse>) -> Vec<String> {
    all.values()
        .map(|s| {
            format!(
                "n{} {} leader={:?} term={} last={} committed={} applied={}",
                s.node_id,
                s.state,
                s.leader_id,
                s.term,
                s.last_log_index,
                s.committed_index,
                s.applied_index
            )
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let panics = panics_in_logs(self.dir());
        if std::thread::panicking() {
            eprintln!(
                "\n===== herald cluster in {} (test panicked) =====",
                self.dir().display()
            );
            eprintln!("{}", self.log_tails());
            if let Some(net) = &self.net {
                eprintln!(
                    "network {}: cuts (from, to) {:?}, impaired hosts {:?}",
                    net.prefix(),
                    net.cuts(),
                    net.impaired()
                );
            }
            if std::env::var_os("HERALD_KEEP_TEST_DIRS").is_some()
                && let Some(dir) = self.dir.take()
            {
                eprintln!("kept {}", dir.keep().display());
            }
        }
        for node in self.nodes.values_mut() {
            let _ = node.kill();
        }
        if !panics.is_empty() && !std::thread::panicking() {
            let dir = self.dir.take().map(TempDir::keep);
            panic!(
                "{} panic(s) in the cluster's process logs (kept in {dir:?}):\n{}",
                panics.len(),
                panics.join("\n")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_any_node_or_edge_log_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node-1.log"),
            "INFO started\nINFO leader 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("edge-101.log"),
            "INFO linked\nthread 'tokio-runtime-worker' panicked at edge/src/hub.rs:1:1:\nboom\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("policy.toml"), "panicked = true\n").unwrap();
        assert_eq!(
            panics_in_logs(dir.path()),
            vec![
                "edge-101.log: thread 'tokio-runtime-worker' panicked at edge/src/hub.rs:1:1:"
                    .to_string()
            ]
        );
        std::fs::write(dir.path().join("edge-101.log"), "INFO linked\n").unwrap();
        assert_eq!(panics_in_logs(dir.path()), Vec::<String>::new());
    }
}
