//! `herald dev`: a whole cluster on loopback (nodes and one edge), for
//! trying Herald and for the README quick start.
//!
//! Owns the life of its child processes: it plans them (ids, free ports, one
//! API key, one token secret, one data directory), starts them, prints how
//! to reach them and a development token, waits until the nodes have
//! elected a leader and the edge is linked to one, and stops every one of
//! them on Ctrl-C, SIGTERM, a child's death or its own start-up error. It
//! must never exit leaving a child running: every path out of [`run`] goes
//! through [`Supervisor::stop`], and each child is also killed when its
//! handle is dropped (a panic).
//!
//! Each kind of process is a [`ProcessSpec`] (a label, a command line, a log
//! file and the endpoints to print), made by [`node_specs`] or
//! [`edge_spec`]; a kind with its own notion of ready has its own probe in
//! [`wait_ready`].

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use herald_proto::v1::ClusterStatusRequest;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep, timeout};

use crate::client::{Connection, Server};

/// How long children get to shut down gracefully (a node hands over
/// leadership first) before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often children are checked for an unexpected exit, and the cluster
/// for readiness.
const POLL: Duration = Duration::from_millis(200);
/// Upper bound of one readiness probe, so one wedged node cannot stall the
/// others' probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// File in the data directory recording each node's ports, so a kept
/// directory can be started again: the Raft membership stored there names
/// those addresses.
const PORTS_FILE: &str = "ports";

/// `HERALD_*` variables `herald-node` reads that `herald dev` does not set by
/// flag; inherited from the user's shell they would change what the dev
/// cluster is (e.g. `HERALD_JOIN` instead of bootstrapping).
const NODE_ENV_CLEARED: &[&str] = &[
    "HERALD_ID_FROM_HOSTNAME",
    "HERALD_ADVERTISE",
    "HERALD_JOIN",
    "HERALD_LEARNER",
    "HERALD_API_KEYS_FILE",
    "HERALD_ALLOW_UNAUTHENTICATED",
];

/// `HERALD_*` variables `herald-edge` reads that would make the printed
/// development token useless (another key, a required `aud` or `iss`) or
/// open the edge to anonymous clients. Limits and `HERALD_ALLOWED_ORIGINS`
/// stay inheritable: a developer's page on another port needs the latter.
const EDGE_ENV_CLEARED: &[&str] = &[
    "HERALD_JWT_PUBLIC_KEY_FILE",
    "HERALD_JWKS_FILE",
    "HERALD_JWT_AUDIENCE",
    "HERALD_JWT_ISSUER",
    "HERALD_ALLOW_ANONYMOUS",
    "HERALD_ANONYMOUS_CHANNELS",
    "HERALD_TLS_CA",
    "HERALD_TLS_CERT",
    "HERALD_TLS_KEY",
];

/// The `sub` of the printed development token.
const DEV_USER: &str = "dev";
/// How long the printed development token is valid.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// How many nodes (all voters) to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=15))]
    nodes: u64,
    /// Keep data and logs in this directory (created if missing, never
    /// removed). Starting again on the same directory resumes that cluster.
    /// Default: a fresh temporary directory, removed on exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Do not remove the temporary data directory on exit.
    #[arg(long)]
    keep_data: bool,
    /// Give up if the nodes have not agreed on a leader within this many
    /// seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
    /// Channel policy (namespaces and limits) for every node. Default: a
    /// development policy with the `default` and `chat` namespaces, written
    /// to `<data-dir>/policy.toml`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Plaintext gRPC between nodes, edges and clients, with keys for the
    /// node and edge roles instead of certificates. Insecure: for tools
    /// that cannot speak TLS. Default: gRPC over TLS from the dev CA.
    #[arg(long)]
    plaintext: bool,
}

/// The policy `herald dev` runs with unless `--config` is given: generous
/// history, client publish and presence on `chat:`, and a schema on its
/// `message` events so validation can be tried.
const DEV_POLICY: &str = r#"# Written by `herald dev`.
[namespaces.default]
history_size = 100
history_ttl_secs = 600

[namespaces.chat]
history_size = 300
history_ttl_secs = 3600
allow_client_publish = true
presence = true

[namespaces.chat.schemas.message]
type = "object"
required = ["text"]
properties.text = { type = "string", maxLength = 2000 }
"#;

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    // Handlers first: a Ctrl-C during start-up must stop the children, not
    // kill this process and orphan them.
    let mut signals = Signals::new()?;
    let node_bin = sibling_binary("herald-node", "HERALD_NODE_BIN")?;
    let edge_bin = sibling_binary("herald-edge", "HERALD_EDGE_BIN")?;
    let data = DataDir::new(args.data_dir, args.keep_data)?;
    // One key per role (`docs/security.md`): a publish key and an admin key
    // for the user, an edge key for edges, and a node key the nodes use
    // between themselves and never print.
    let keys = DevKeys::generate()?;
    let api_key = keys.publish.clone();
    // A fresh secret each run: the edge keeps no state, so a token from an
    // earlier run has no reason to keep working.
    let jwt_secret = random_hex(32).context("reading /dev/urandom for the token secret")?;
    let token = dev_token(&jwt_secret, SystemTime::now())?;
    let nodes = node_plan(data.path(), args.nodes)?;
    let edge = edge_plan(&nodes)?;
    let policy = match args.config {
        Some(path) => path,
        None => {
            let path = data.path().join("policy.toml");
            std::fs::write(&path, DEV_POLICY)
                .with_context(|| format!("writing {}", path.display()))?;
            path
        }
    };
    // A throwaway CA for the QUIC delivery plane; kept with the data so a
    // restarted dev cluster keeps trusting itself.
    let tls_dir = data.path().join("tls");
    let tls = if nodes
        .iter()
        .all(|n| tls_dir.join(format!("node-{}.pem", n.id)).exists())
    {
        crate::certs::CertSet::existing(&tls_dir)
    } else {
        crate::certs::generate(&tls_dir, nodes.iter().map(|n| n.id))?
    };
    let secure = !args.plaintext;
    let mut specs = node_specs(
        &node_bin,
        data.path(),
        &nodes,
        &keys.node_specs(secure),
        &policy,
    );
    for (spec, node) in specs.iter_mut().zip(&nodes) {
        spec.args.extend(quic_args(&tls, node.id));
        if secure {
            spec.args.push("--grpc-tls".into());
        }
    }
    let mut edge_spec = edge_spec(&edge_bin, data.path(), &edge, &nodes, &jwt_secret);
    if secure {
        let (cert, key) = tls.edge();
        edge_spec.args.extend([
            "--tls-ca".into(),
            tls.ca.clone().into(),
            "--tls-cert".into(),
            cert.into(),
            "--tls-key".into(),
            key.into(),
        ]);
    } else {
        edge_spec
            .args
            .extend(["--api-key".into(), keys.edge.clone().into()]);
    }
    specs.push(edge_spec);
    let tls_ca = secure.then(|| tls.ca.clone());
    let probes = nodes
        .iter()
        .map(|n| {
            Server::new(n.grpc.clone(), Some(api_key.clone()))
                .with_tls_ca(tls_ca.clone())
                .connect_lazy()
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut supervisor = Supervisor::default();
    let ready_timeout = Duration::from_secs(args.ready_timeout_secs);
    let outcome = async {
        for spec in &specs {
            supervisor.spawn(spec)?;
        }
        let mut banner = String::new();
        for spec in &specs {
            for (name, value) in &spec.endpoints {
                writeln!(banner, "{} {name} {value}", spec.label)?;
            }
        }
        writeln!(banner, "api-key {api_key}")?;
        writeln!(banner, "admin-key {}", keys.admin)?;
        match &tls_ca {
            Some(ca) => writeln!(banner, "tls-ca {}", ca.display())?,
            None => writeln!(banner, "edge-key {}", keys.edge)?,
        }
        writeln!(banner, "token {token}")?;
        writeln!(banner, "data-dir {}", data.path().display())?;
        say(&banner);

        tokio::select! {
            ready = timeout(ready_timeout, wait_ready(&probes, &edge.http)) => match ready {
                Ok(()) => say("ready\n"),
                Err(_) => bail!(
                    "the cluster was not ready (a leader elected, the edge linked) within {}s; \
                     logs are in {}",
                    ready_timeout.as_secs(),
                    data.path().display()
                ),
            },
            exit = supervisor.next_exit() => return Ok(exit.report()),
            () = signals.recv() => return Ok(Ended::Stopped),
        }
        tokio::select! {
            exit = supervisor.next_exit() => Ok(exit.report()),
            () = signals.recv() => Ok(Ended::Stopped),
        }
    }
    .await;
    supervisor.stop(&mut signals).await;
    // After a failure the logs are what the user needs next.
    let data = if matches!(outcome, Ok(Ended::Stopped)) {
        data
    } else {
        data.keep()
    };
    if data.is_kept() {
        eprintln!("data and logs kept in {}", data.path().display());
    }
    drop(data);
    match outcome? {
        Ended::Stopped => Ok(ExitCode::SUCCESS),
        Ended::ChildExited => Ok(ExitCode::FAILURE),
    }
}

/// The dev cluster's API keys, one per role.
struct DevKeys {
    publish: String,
    admin: String,
    edge: String,
    node: String,
}

impl DevKeys {
    fn generate() -> anyhow::Result<Self> {
        let key = || random_hex(16).context("reading /dev/urandom for an API key");
        Ok(Self {
            publish: key()?,
            admin: key()?,
            edge: key()?,
            node: key()?,
        })
    }

    /// The nodes' `--api-key` value: with TLS, nodes and edges prove their
    /// role with certificates, so only the publish and admin keys.
    fn node_specs(&self, secure: bool) -> String {
        if secure {
            format!("publish:{},admin:{}", self.publish, self.admin)
        } else {
            format!(
                "publish:{},admin:{},edge:{},node:{}",
                self.publish, self.admin, self.edge, self.node
            )
        }
    }
}

/// Why a running `herald dev` ends.
enum Ended {
    /// Ctrl-C or SIGTERM: a normal exit.
    Stopped,
    /// A child died on its own; it has been reported.
    ChildExited,
}

/// Write startup lines to stdout and flush at once: scripts and tests read
/// them while `herald dev` keeps running. A closed stdout is not a reason to
/// stop the cluster, so write errors are ignored.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The executable `name` next to this one (how `cargo build` and release
/// archives lay them out), unless the environment variable `env` names
/// another.
fn sibling_binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().context("locating the herald executable")?;
            exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !path.is_file() {
        bail!(
            "{name} not found at {} (build it, or set {env})",
            path.display()
        );
    }
    Ok(path)
}

/// Hex of `len` bytes from the kernel's CSPRNG.
fn random_hex(len: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes))?;
    Ok(bytes
        .iter()
        .fold(String::with_capacity(2 * len), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }))
}

/// An HS256 connection token for the dev edge: user [`DEV_USER`], valid for
/// [`DEV_TOKEN_TTL`] from `now`, allowed to subscribe, publish, and read
/// history and presence on every channel (the edge's `caps` claim; the
/// namespace policy still decides whether clients may publish).
fn dev_token(secret: &str, now: SystemTime) -> anyhow::Result<String> {
    let exp = (now + DEV_TOKEN_TTL)
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let claims = serde_json::json!({
        "sub": DEV_USER,
        "exp": exp,
        "caps": [{
            "channels": ["*"],
            "match": "wildcard",
            "allow": ["sub", "pub", "hst", "prs"],
        }],
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .context("making the token signing key")?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .context("signing the development token")
}

/// Where the cluster's data and logs live, and whether they outlive it.
enum DataDir {
    /// Removed when dropped.
    Temp(TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn new(given: Option<PathBuf>, keep: bool) -> anyhow::Result<Self> {
        if let Some(dir) = given {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir = dir
                .canonicalize()
                .with_context(|| format!("resolving {}", dir.display()))?;
            return Ok(Self::Kept(dir));
        }
        let temp = tempfile::Builder::new()
            .prefix("herald-dev-")
            .tempdir()
            .context("creating a temporary data directory")?;
        Ok(if keep {
            Self::Kept(temp.keep())
        } else {
            Self::Temp(temp)
        })
    }

    fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Kept(p) => p,
        }
    }

    /// Stop the directory from being removed on drop.
    fn keep(self) -> Self {
        match self {
            Self::Temp(t) => Self::Kept(t.keep()),
            kept @ Self::Kept(_) => kept,
        }
    }

    fn is_kept(&self) -> bool {
        matches!(self, Self::Kept(_))
    }
}

/// One node's identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodePlan {
    id: u64,
    grpc: String,
    http: String,
}

/// Ids `1..=count` with free loopback ports, or the ports recorded by an
/// earlier run in the same directory.
fn node_plan(dir: &Path, count: u64) -> anyhow::Result<Vec<NodePlan>> {
    let ports_path = dir.join(PORTS_FILE);
    if ports_path.exists() {
        let text = std::fs::read_to_string(&ports_path)
            .with_context(|| format!("reading {}", ports_path.display()))?;
        let plan =
            parse_ports(&text).with_context(|| format!("reading {}", ports_path.display()))?;
        if plan.len() as u64 != count {
            bail!(
                "{} holds a cluster of {} nodes; start it with --nodes {} or use another --data-dir",
                dir.display(),
                plan.len(),
                plan.len()
            );
        }
        return Ok(plan);
    }
    let ports = free_ports(2 * count as usize)?;
    let plan: Vec<NodePlan> = (1..=count)
        .zip(ports.chunks(2))
        .map(|(id, p)| NodePlan {
            id,
            grpc: format!("127.0.0.1:{}", p[0]),
            http: format!("127.0.0.1:{}", p[1]),
        })
        .collect();
    std::fs::write(&ports_path, format_ports(&plan))
        .with_context(|| format!("writing {}", ports_path.display()))?;
    Ok(plan)
}

/// Ports the kernel reports free right now. All listeners are held until
/// every port is known, so no port is handed out twice.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free loopback ports")
}

fn format_ports(plan: &[NodePlan]) -> String {
    plan.iter()
        .map(|n| format!("{} {} {}\n", n.id, n.grpc, n.http))
        .collect()
}

fn parse_ports(text: &str) -> anyhow::Result<Vec<NodePlan>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [id, grpc, http] => Ok(NodePlan {
                    id: id
                        .parse()
                        .with_context(|| format!("bad node id in `{line}`"))?,
                    grpc: (*grpc).to_string(),
                    http: (*http).to_string(),
                }),
                _ => bail!("`{line}` is not `<id> <grpc addr> <http addr>`"),
            }
        })
        .collect()
}

/// The edge's two listeners: clients (WebSocket, SSE) and operations
/// (`/metrics`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct EdgePlan {
    listen: String,
    http: String,
}

/// Two free loopback ports for the edge, fresh on every start (an edge
/// keeps nothing between runs), avoiding the nodes' ports: a kept cluster's
/// ports are free until its nodes start, so the kernel may offer them.
fn edge_plan(nodes: &[NodePlan]) -> anyhow::Result<EdgePlan> {
    let taken: Vec<&str> = nodes
        .iter()
        .flat_map(|n| [n.grpc.as_str(), n.http.as_str()])
        .collect();
    for _ in 0..16 {
        let ports = free_ports(2)?;
        let plan = EdgePlan {
            listen: format!("127.0.0.1:{}", ports[0]),
            http: format!("127.0.0.1:{}", ports[1]),
        };
        if !taken.contains(&plan.listen.as_str()) && !taken.contains(&plan.http.as_str()) {
            return Ok(plan);
        }
    }
    bail!("finding free loopback ports for the edge: the kernel keeps offering the nodes' ports")
}

/// How to run one child, and what to tell the user about it.
#[derive(Debug, Clone)]
struct ProcessSpec {
    /// How the output names it: `node 3`.
    label: String,
    program: PathBuf,
    args: Vec<OsString>,
    env_remove: &'static [&'static str],
    /// Its stdout and stderr.
    log: PathBuf,
    /// `(name, value)` pairs printed as `<label> <name> <value>`.
    endpoints: Vec<(&'static str, String)>,
}

fn node_specs(
    bin: &Path,
    dir: &Path,
    nodes: &[NodePlan],
    api_key: &str,
    policy: &Path,
) -> Vec<ProcessSpec> {
    let peers = nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.grpc))
        .collect::<Vec<_>>()
        .join(",");
    nodes
        .iter()
        .map(|n| {
            let data_dir = dir.join(format!("node-{}", n.id));
            let args: Vec<OsString> = vec![
                "--id".into(),
                n.id.to_string().into(),
                "--data-dir".into(),
                data_dir.into(),
                "--grpc-listen".into(),
                n.grpc.clone().into(),
                "--http-listen".into(),
                n.http.clone().into(),
                "--peers".into(),
                peers.clone().into(),
                "--api-key".into(),
                api_key.into(),
                "--config".into(),
                policy.into(),
            ];
            ProcessSpec {
                label: format!("node {}", n.id),
                program: bin.to_path_buf(),
                args,
                env_remove: NODE_ENV_CLEARED,
                log: dir.join(format!("node-{}.log", n.id)),
                endpoints: vec![
                    ("grpc", n.grpc.clone()),
                    ("metrics", format!("http://{}/metrics", n.http)),
                ],
            }
        })
        .collect()
}

/// Edge 1, linked to every node (it moves to the next when its node fails),
/// accepting HS256 tokens signed with `jwt_secret`.
fn edge_spec(
    bin: &Path,
    dir: &Path,
    edge: &EdgePlan,
    nodes: &[NodePlan],
    jwt_secret: &str,
) -> ProcessSpec {
    let node_addrs = nodes
        .iter()
        .map(|n| n.grpc.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<OsString> = vec![
        "--listen".into(),
        edge.listen.clone().into(),
        "--http-listen".into(),
        edge.http.clone().into(),
        "--nodes".into(),
        node_addrs.into(),
        "--jwt-hs256-secret".into(),
        jwt_secret.into(),
    ];
    ProcessSpec {
        label: "edge 1".to_string(),
        program: bin.to_path_buf(),
        args,
        env_remove: EDGE_ENV_CLEARED,
        log: dir.join("edge-1.log"),
        endpoints: vec![
            (
                "websocket",
                format!("ws://{}/connection/websocket", edge.listen),
            ),
            ("sse", format!("http://{}/connection/sse", edge.listen)),
            ("metrics", format!("http://{}/metrics", edge.http)),
        ],
    }
}

/// Flags enabling the QUIC delivery plane on a loopback port of its own.
fn quic_args(tls: &crate::certs::CertSet, id: u64) -> Vec<OsString> {
    let (cert, key) = tls.node(id);
    vec![
        "--quic-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-ca".into(),
        tls.ca.clone().into(),
        "--tls-cert".into(),
        cert.into(),
        "--tls-key".into(),
        key.into(),
    ]
}

/// Resolves once every node answers `ClusterStatus` with the same leader,
/// that leader has applied at least one entry (so it can serve publishes),
/// and the edge at `edge_http` reports its EdgeLink up (so a client that
/// connects now can subscribe).
async fn wait_ready(nodes: &[Connection], edge_http: &str) {
    loop {
        if cluster_ready(nodes).await && edge_ready(edge_http).await {
            return;
        }
        sleep(POLL).await;
    }
}

/// Whether `GET /readyz` on the edge's operations listener answers 200.
async fn edge_ready(addr: &str) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(head)
    };
    // `HTTP/1.1 200` is exactly 12 bytes.
    matches!(timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(head)) if head.ends_with(b" 200"))
}

async fn cluster_ready(nodes: &[Connection]) -> bool {
    let mut leader = None;
    let mut leader_applied = false;
    for conn in nodes {
        let mut client = conn.publisher();
        let call = client.cluster_status(ClusterStatusRequest {});
        let Ok(Ok(status)) = timeout(PROBE_TIMEOUT, call).await else {
            return false;
        };
        let status = status.into_inner();
        let Some(id) = status.leader_id else {
            return false;
        };
        if leader.is_some_and(|l| l != id) {
            return false;
        }
        leader = Some(id);
        if status.node_id == id && status.applied_index > 0 {
            leader_applied = true;
        }
    }
    leader_applied
}

/// Ctrl-C and SIGTERM, as one stream of "stop" requests.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// A running child.
struct Supervised {
    label: String,
    log: PathBuf,
    child: Child,
}

/// A child that exited while it should have been running.
struct Exit {
    label: String,
    status: ExitStatus,
    log: PathBuf,
}

impl Exit {
    fn report(&self) -> Ended {
        eprintln!(
            "{} exited: {}, log: {}",
            self.label,
            self.status,
            self.log.display()
        );
        Ended::ChildExited
    }
}

/// The children of this `herald dev`, and the one way they are stopped.
#[derive(Default)]
struct Supervisor {
    children: Vec<Supervised>,
}

impl Supervisor {
    fn spawn(&mut self, spec: &ProcessSpec) -> anyhow::Result<()> {
        let log = std::fs::File::create(&spec.log)
            .with_context(|| format!("creating {}", spec.log.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a terminal's Ctrl-C reaches only `herald
            // dev`, which then stops the children in order instead of them
            // all dying at once mid-handover.
            .process_group(0)
            // The last resort if this process panics.
            .kill_on_drop(true);
        for var in spec.env_remove {
            command.env_remove(var);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.label, spec.program.display()))?;
        self.children.push(Supervised {
            label: spec.label.clone(),
            log: spec.log.clone(),
            child,
        });
        Ok(())
    }

    /// Resolves when any child exits; never resolves while all run.
    async fn next_exit(&mut self) -> Exit {
        loop {
            for s in &mut self.children {
                if let Ok(Some(status)) = s.child.try_wait() {
                    return Exit {
                        label: s.label.clone(),
                        status,
                        log: s.log.clone(),
                    };
                }
            }
            sleep(POLL).await;
        }
    }

    /// SIGTERM every child, wait up to [`STOP_GRACE`] (cut short by another
    /// Ctrl-C), then SIGKILL what is left and reap everything.
    async fn stop(&mut self, signals: &mut Signals) {
        for s in &self.children {
            if let Some(pid) = s.child.id().and_then(|id| i32::try_from(id).ok()) {
                // ESRCH only means it already exited; it is reaped below.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        let all_exited = async {
            for s in &mut self.children {
                let _ = s.child.wait().await;
            }
        };
        tokio::select! {
            () = all_exited => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = signals.recv() => {}
        }
        for s in &mut self.children {
            if matches!(s.child.try_wait(), Ok(None)) {
                eprintln!(
                    "{} did not stop within {}s; killing it",
                    s.label,
                    STOP_GRACE.as_secs()
                );
                let _ = s.child.kill().await;
            }
        }
        self.children.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_file_round_trips() {
        let plan = vec![
            NodePlan {
                id: 1,
                grpc: "127.0.0.1:4001".into(),
                http: "127.0.0.1:4002".into(),
            },
            NodePlan {
                id: 2,
                grpc: "127.0.0.1:4003".into(),
                http: "127.0.0.1:4004".into(),
            },
        ];
        assert_eq!(parse_ports(&format_ports(&plan)).unwrap(), plan);
        assert!(parse_ports("1 127.0.0.1:1\n").is_err());
        assert!(parse_ports("x a b\n").is_err());
    }

    #[test]
    fn fresh_plan_has_distinct_ports_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let plan = node_plan(dir.path(), 3).unwrap();
        let mut addrs: Vec<&str> = plan
            .iter()
            .flat_map(|n| [n.grpc.as_str(), n.http.as_str()])
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), 6);
        assert_eq!(node_plan(dir.path(), 3).unwrap(), plan);
        assert!(node_plan(dir.path(), 5).is_err());
    }

    #[test]
    fn node_specs_list_every_peer_and_print_endpoints() {
        let plan = vec![
            NodePlan {
                id: 1,
                grpc: "127.0.0.1:4001".into(),
                http: "127.0.0.1:4002".into(),
            },
            NodePlan {
                id: 2,
                grpc: "127.0.0.1:4003".into(),
                http: "127.0.0.1:4004".into(),
            },
        ];
        let specs = node_specs(
            Path::new("/bin/herald-node"),
            Path::new("/d"),
            &plan,
            "k",
            Path::new("/d/policy.toml"),
        );
        assert_eq!(specs[1].label, "node 2");
        assert_eq!(specs[1].log, Path::new("/d/node-2.log"));
        let args: Vec<String> = specs[1]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--id",
                "2",
                "--data-dir",
                "/d/node-2",
                "--grpc-listen",
                "127.0.0.1:4003",
                "--http-listen",
                "127.0.0.1:4004",
                "--peers",
                "1=127.0.0.1:4001,2=127.0.0.1:4003",
                "--api-key",
                "k",
                "--config",
                "/d/policy.toml"
            ]
        );
        assert_eq!(
            specs[0].endpoints,
            [
                ("grpc", "127.0.0.1:4001".to_string()),
                ("metrics", "http://127.0.0.1:4002/metrics".to_string())
            ]
        );
    }

    #[test]
    fn dev_policy_is_valid_toml_with_chat() {
        let v: toml::Value = toml::from_str(DEV_POLICY).unwrap();
        assert!(
            v["namespaces"]["chat"]["allow_client_publish"]
                .as_bool()
                .unwrap()
        );
    }

    #[test]
    fn api_key_is_32_hex_digits() {
        let key = random_hex(16).unwrap();
        assert_eq!(key.len(), 32);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(key, random_hex(16).unwrap());
    }

    #[test]
    fn edge_links_to_every_node_and_prints_its_urls() {
        let nodes = vec![
            NodePlan {
                id: 1,
                grpc: "127.0.0.1:4001".into(),
                http: "127.0.0.1:4002".into(),
            },
            NodePlan {
                id: 2,
                grpc: "127.0.0.1:4003".into(),
                http: "127.0.0.1:4004".into(),
            },
        ];
        let plan = EdgePlan {
            listen: "127.0.0.1:5001".into(),
            http: "127.0.0.1:5002".into(),
        };
        let spec = edge_spec(
            Path::new("/bin/herald-edge"),
            Path::new("/d"),
            &plan,
            &nodes,
            "s",
        );
        assert_eq!(spec.label, "edge 1");
        assert_eq!(spec.log, Path::new("/d/edge-1.log"));
        let args: Vec<String> = spec
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--listen",
                "127.0.0.1:5001",
                "--http-listen",
                "127.0.0.1:5002",
                "--nodes",
                "127.0.0.1:4001,127.0.0.1:4003",
                "--jwt-hs256-secret",
                "s"
            ]
        );
        assert_eq!(
            spec.endpoints,
            [
                (
                    "websocket",
                    "ws://127.0.0.1:5001/connection/websocket".to_string()
                ),
                ("sse", "http://127.0.0.1:5001/connection/sse".to_string()),
                ("metrics", "http://127.0.0.1:5002/metrics".to_string())
            ]
        );
    }

    #[test]
    fn edge_ports_avoid_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = node_plan(dir.path(), 3).unwrap();
        let edge = edge_plan(&nodes).unwrap();
        assert_ne!(edge.listen, edge.http);
        for n in &nodes {
            for addr in [&edge.listen, &edge.http] {
                assert!(addr != &n.grpc && addr != &n.http, "{addr} is a node's");
            }
        }
    }

    #[test]
    fn dev_token_allows_everything_for_a_day() {
        let now = SystemTime::now();
        let token = dev_token("secret", now).unwrap();
        let key = jsonwebtoken::DecodingKey::from_secret(b"secret").unwrap();
        let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
            .unwrap()
            .claims;
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(claims["sub"], "dev");
        assert_eq!(claims["exp"], now_secs + 24 * 3600);
        assert_eq!(
            claims["caps"],
            serde_json::json!([{
                "channels": ["*"],
                "match": "wildcard",
                "allow": ["sub", "pub", "hst", "prs"]
            }])
        );
        let wrong = jsonwebtoken::DecodingKey::from_secret(b"other").unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &wrong, &validation).is_err());
    }
}
