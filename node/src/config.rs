//! The node's configuration: command-line flags (each with a `HERALD_*`
//! environment twin) for this process, and an optional TOML file for the
//! cluster-wide channel policy (namespaces and limits), which must be the same
//! on every node.
//!
//! Everything is parsed and validated before any socket is bound; an invalid
//! value stops the process with a message naming the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use herald_proto::identity::Identity;

use crate::grpc::auth::{ApiKey, KeySpecError, Scope};
use crate::namespace::{Limits, NamespaceConfig, Namespaces};

/// Flags of `herald-node`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald-node",
    version,
    about = "Herald node: Raft-replicated channels and the gRPC publish API"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// Offline maintenance of a stopped node's data dir instead of running.
    #[command(subcommand)]
    pub offline: Option<Offline>,

    /// This node's Raft id (unique in the cluster, > 0). In a Kubernetes
    /// StatefulSet, `--id-from-hostname` derives it from the pod ordinal instead.
    #[arg(long, env = "HERALD_ID")]
    pub id: Option<u64>,

    /// Take the id from the trailing `-<ordinal>` of the host name, plus one
    /// (pod `herald-node-0` is node 1).
    #[arg(long, env = "HERALD_ID_FROM_HOSTNAME", default_value_t = false)]
    pub id_from_hostname: bool,

    /// Directory for the Raft log, vote and snapshots.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,

    /// Address the gRPC API (publisher, admin, internal Raft) listens on.
    #[arg(long, env = "HERALD_GRPC_LISTEN", default_value = "127.0.0.1:7100")]
    pub grpc_listen: SocketAddr,

    /// Address other nodes use to reach this node's gRPC port (host:port;
    /// a DNS name is fine). Defaults to this node's entry in `--peers`, else
    /// `--grpc-listen`.
    #[arg(long, env = "HERALD_ADVERTISE", default_value = None)]
    pub advertise: Option<String>,

    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "HERALD_HTTP_LISTEN", default_value = "127.0.0.1:7200")]
    pub http_listen: SocketAddr,

    /// The initial voters, `id=host:port,...` (including this node). A node
    /// with an empty data dir whose id is the lowest listed bootstraps the
    /// cluster, unless a listed peer already belongs to one.
    #[arg(long, env = "HERALD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Join an existing cluster through these gRPC addresses (any members,
    /// comma-separated, tried in turn) instead of bootstrapping: the node asks
    /// to be added as a learner and is promoted to voter once caught up
    /// (unless `--learner`). With `--fanout`: the voters it talks to.
    #[arg(long, env = "HERALD_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,

    /// Run as a fan-out node: no Raft log, registered in the cluster through
    /// `--join`, receiving over QUIC only the channels its edges subscribe
    /// to. Needs `--quic-listen` and the TLS flags.
    #[arg(long, env = "HERALD_FANOUT", default_value_t = false)]
    pub fanout: bool,

    /// How this node's edges receive history-keeping publications: `quic`
    /// (pushed by the leader over the QUIC plane; voters also deliver from
    /// their own log) or `raft-log` (only from this node's applied Raft log;
    /// the leader pushes nothing). Give every node the same value.
    #[arg(long, env = "HERALD_DELIVERY", value_enum, default_value_t = DeliveryMode::Quic)]
    pub delivery: DeliveryMode,

    /// With `--join`: stay a non-voting learner.
    #[arg(long, env = "HERALD_LEARNER", default_value_t = false)]
    pub learner: bool,

    /// Optional TOML file with `[limits]` and `[namespaces.<name>]` tables.
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,

    /// API keys accepted in `authorization: apikey <key>` metadata
    /// (comma-separated in the environment), each `<key>` (publish scope)
    /// or `<scope>[+<scope>...]:<key>` with scopes `publish`, `admin`, and,
    /// on a plaintext cluster only, `node` and `edge` (`docs/security.md`).
    /// Without `--grpc-tls`, this node calls other nodes with its first
    /// `node` key.
    #[arg(
        long = "api-key",
        env = "HERALD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// File with one API key spec per line, as `--api-key` (blank lines and
    /// `#` comments ignored), e.g. a mounted Kubernetes Secret. A bare key
    /// is a publish key. Rotate by listing old and new keys together, then
    /// dropping the old.
    #[arg(long, env = "HERALD_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Accept every call without credentials and grant it every role,
    /// Raft included. Insecure: for a single developer's machine only.
    #[arg(long, env = "HERALD_ALLOW_UNAUTHENTICATED", default_value_t = false)]
    pub allow_unauthenticated: bool,

    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "HERALD_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Lower bound of the randomized election timeout in milliseconds (the
    /// upper bound is twice this).
    #[arg(long, env = "HERALD_ELECTION_TIMEOUT_MS", default_value_t = 500)]
    pub election_timeout_ms: u64,

    /// Take a snapshot (and compact the log) after this many log entries.
    #[arg(long, env = "HERALD_SNAPSHOT_EVERY", default_value_t = 5000)]
    pub snapshot_every: u64,

    /// Listen address of the QUIC delivery plane (UDP). Enables the plane;
    /// needs `--tls-ca`, `--tls-cert` and `--tls-key`.
    #[arg(long, env = "HERALD_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,

    /// Address peers dial for QUIC (host:port). Defaults to the host of
    /// `--advertise` with the port of `--quic-listen`.
    #[arg(long, env = "HERALD_QUIC_ADVERTISE")]
    pub quic_advertise: Option<String>,

    /// Serve gRPC over TLS with `--tls-cert`, and call other nodes over
    /// mutual TLS: nodes and edges then prove their role with a certificate
    /// from `--tls-ca` (`herald://node/<id>`, `herald://edge`), and
    /// publishers connect with TLS and an API key. Without it gRPC is
    /// plaintext (development only).
    #[arg(long, env = "HERALD_GRPC_TLS", default_value_t = false)]
    pub grpc_tls: bool,

    /// PEM file of the cluster CA: peers must present a certificate it signed.
    #[arg(long, env = "HERALD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM certificate (chain) of this node, signed by the cluster CA, with
    /// the DNS name `herald-node` and the URI `herald://node/<id>`.
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Transitional: accept one certificate shared by every node, naming no
    /// `herald://node/<id>`. QUIC connections are then not bound to node
    /// ids (a node can speak for another). Not with `--grpc-tls`.
    #[arg(long, env = "HERALD_TLS_SHARED_NODE_CERT", default_value_t = false)]
    pub tls_shared_node_cert: bool,

    /// How long a channel stays registered after its last local subscriber
    /// left, in milliseconds (absorbs flapping clients).
    #[arg(long, env = "HERALD_INTEREST_LINGER_MS", default_value_t = 1000)]
    pub interest_linger_ms: u64,

    /// How often the leader looks for state to reclaim (publications past
    /// their namespace's `history_ttl_secs`, channels with nothing left)
    /// and, if there is any, commits a sweep; 0 never sweeps.
    #[arg(long, env = "HERALD_SWEEP_INTERVAL_MS", default_value_t = 60_000)]
    pub sweep_interval_ms: u64,

    /// Log level filter (`RUST_LOG` syntax).
    #[arg(long, env = "HERALD_LOG", default_value = "info,openraft=warn")]
    pub log: String,
}

/// Offline commands on a stopped voter's data dir (`docs/operations.md`,
/// "Lost quorum" and "Backing up and restoring").
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Offline {
    /// Print what a stopped node's data dir holds: its last log id (the
    /// survivor with the highest term, then index, has the longest log),
    /// vote, membership and channel count. Changes nothing.
    Inspect {
        /// The node's data dir.
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
        data_dir: PathBuf,
    },
    /// Turn a stopped voter's data dir into a one-node cluster that keeps
    /// every log entry it has and gives every channel a new epoch (after a
    /// lost quorum, or on a restored backup). Refuses a data dir in use.
    Recover {
        /// The node's data dir.
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
        data_dir: PathBuf,
        /// This node's Raft id (a voter of the stored membership).
        #[arg(long, env = "HERALD_ID")]
        id: u64,
    },
}

/// Where edges' history-keeping publications come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryMode {
    /// Pushed by the leader over QUIC (plus the local Raft log on members).
    Quic,
    /// Only the local applied Raft log; nothing is pushed over QUIC.
    RaftLog,
}

/// The whole validated configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: u64,
    /// Where Raft state lives.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// gRPC address advertised to peers.
    pub advertise: String,
    /// Metrics/health listen address.
    pub http_listen: SocketAddr,
    /// Initial voters by id.
    pub peers: BTreeMap<u64, String>,
    /// Members to join through (fan-out nodes: the voters to talk to).
    pub join: Vec<String>,
    /// A fan-out node outside Raft.
    pub fanout: bool,
    /// Where edges' publications come from.
    pub delivery: DeliveryMode,
    /// Join as learner only.
    pub learner: bool,
    /// Accepted API keys.
    pub api_keys: Vec<ApiKey>,
    /// Whether calls without a key are accepted.
    pub allow_unauthenticated: bool,
    /// The cluster CA and this node's certificate, when given.
    pub tls: Option<TlsFiles>,
    /// Whether gRPC runs over TLS (mutual TLS between nodes and edges).
    pub grpc_tls: bool,
    /// `--tls-shared-node-cert`: QUIC connections not bound to node ids.
    pub tls_shared_node_cert: bool,
    /// Raft heartbeat.
    pub heartbeat: Duration,
    /// Raft election timeout lower bound.
    pub election_timeout: Duration,
    /// Snapshot cadence in log entries.
    pub snapshot_every: u64,
    /// Channel policy.
    pub namespaces: Namespaces,
    /// The QUIC delivery plane, when enabled.
    pub quic: Option<QuicConfig>,
    /// Linger of channel interest after the last local subscriber left.
    pub interest_linger: Duration,
    /// Cadence of the leader's sweep; zero: never.
    pub sweep_interval: Duration,
}

/// Settings of the QUIC delivery plane.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Address peers dial; `None`: the advertise host with the bound port.
    pub advertise: Option<String>,
    /// Cluster CA.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// The cluster CA and this node's certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Cluster CA.
    pub ca: PathBuf,
    /// This node's certificate, naming `herald://node/<id>`.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A configuration error, naming the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    /// The flag or TOML key.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    namespaces: BTreeMap<String, NamespaceConfig>,
}

impl NodeArgs {
    /// Validate the flags and read the policy file.
    pub fn into_config(self) -> Result<NodeConfig, ConfigError> {
        let id = match (self.id, self.id_from_hostname) {
            (Some(_), true) => {
                return Err(bad(
                    "--id",
                    "give either --id or --id-from-hostname, not both",
                ));
            }
            (Some(0), _) => return Err(bad("--id", "must be greater than 0")),
            (Some(id), false) => id,
            (None, true) => id_from_hostname()?,
            (None, false) => return Err(bad("--id", "required (or --id-from-hostname)")),
        };
        let mut peers = BTreeMap::new();
        for p in &self.peers {
            let (pid, addr) = p
                .split_once('=')
                .ok_or_else(|| bad("--peers", format!("`{p}` is not id=host:port")))?;
            let pid: u64 = pid
                .trim()
                .parse()
                .map_err(|_| bad("--peers", format!("`{pid}` is not a node id")))?;
            if pid == 0 {
                return Err(bad("--peers", "node ids must be greater than 0"));
            }
            check_host_port("--peers", addr.trim())?;
            if peers.insert(pid, addr.trim().to_string()).is_some() {
                return Err(bad("--peers", format!("node id {pid} listed twice")));
            }
        }
        if !peers.is_empty() && !peers.contains_key(&id) {
            return Err(bad("--peers", format!("does not list this node's id {id}")));
        }
        if peers.is_empty() && self.join.is_empty() {
            return Err(bad(
                "--peers",
                "give --peers (bootstrap) or --join (existing cluster)",
            ));
        }
        for j in &self.join {
            check_host_port("--join", j)?;
        }
        if self.fanout {
            if !peers.is_empty() {
                return Err(bad(
                    "--peers",
                    "a fan-out node is not a Raft member; give the voters with --join",
                ));
            }
            if self.learner {
                return Err(bad("--learner", "not with --fanout"));
            }
            if self.quic_listen.is_none() {
                return Err(bad("--quic-listen", "required with --fanout"));
            }
            if self.delivery == DeliveryMode::RaftLog {
                return Err(bad(
                    "--delivery",
                    "a fan-out node has no Raft log; it delivers from QUIC only",
                ));
            }
        }
        // Without --advertise, peers reach this node where --peers says it is
        // (a StatefulSet's stable DNS name), else at the listen address.
        let advertise = self
            .advertise
            .or_else(|| peers.get(&id).cloned())
            .unwrap_or_else(|| self.grpc_listen.to_string());
        check_host_port("--advertise", &advertise)?;
        if let Some(listed) = peers.get(&id)
            && listed != &advertise
            && self.grpc_listen.to_string() != *listed
        {
            return Err(bad(
                "--peers",
                format!("lists {listed} for this node, but it advertises {advertise}"),
            ));
        }
        let mut specs: Vec<(&'static str, String)> = self
            .api_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .map(|k| ("--api-key", k))
            .collect();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad("--api-keys-file", format!("{}: {e}", path.display())))?;
            specs.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| ("--api-keys-file", l.to_string())),
            );
        }
        let mut api_keys = Vec::with_capacity(specs.len());
        for (field, spec) in specs {
            let key: ApiKey = spec
                .parse()
                .map_err(|e: KeySpecError| bad(field, e.to_string()))?;
            if self.grpc_tls
                && (key.scopes().contains(Scope::Node) || key.scopes().contains(Scope::Edge))
            {
                return Err(bad(
                    field,
                    "with --grpc-tls, nodes and edges prove their role with certificates; a node or edge key is refused",
                ));
            }
            api_keys.push(key);
        }
        if api_keys.is_empty() && !self.allow_unauthenticated {
            return Err(bad(
                "--api-key",
                "no API key configured; give --api-key / --api-keys-file, or --allow-unauthenticated",
            ));
        }
        if !self.grpc_tls
            && !self.allow_unauthenticated
            && !api_keys.iter().any(|k| k.scopes().contains(Scope::Node))
        {
            return Err(bad(
                "--api-key",
                "without --grpc-tls, nodes call each other with a node key: give one as node:<key> (or use --grpc-tls)",
            ));
        }
        if self.heartbeat_ms == 0 {
            return Err(bad("--heartbeat-ms", "must be greater than 0"));
        }
        if self.election_timeout_ms <= self.heartbeat_ms * 2 {
            return Err(bad(
                "--election-timeout-ms",
                "must be more than twice --heartbeat-ms",
            ));
        }
        if self.snapshot_every < 10 {
            return Err(bad("--snapshot-every", "must be at least 10"));
        }
        let policy = match &self.config {
            None => PolicyFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("--config", format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| bad(format!("--config {}", path.display()), e.to_string()))?
            }
        };
        let namespaces = Namespaces::new(policy.limits.unwrap_or_default(), policy.namespaces)?;
        let tls = match (self.tls_ca, self.tls_cert, self.tls_key) {
            (None, None, None) => None,
            (None, ..) => return Err(bad("--tls-ca", "required with --tls-cert and --tls-key")),
            (_, None, _) => return Err(bad("--tls-cert", "required with --tls-ca")),
            (_, _, None) => return Err(bad("--tls-key", "required with --tls-ca")),
            (Some(ca), Some(cert), Some(key)) => {
                crate::peer::tls::PeerTls::load(&ca, &cert, &key)
                    .map_err(|e| bad(e.field, format!("{}: {}", e.path, e.reason)))?;
                check_node_identity(id, &cert, self.tls_shared_node_cert)?;
                Some(TlsFiles { ca, cert, key })
            }
        };
        if self.tls_shared_node_cert && self.grpc_tls {
            return Err(bad(
                "--tls-shared-node-cert",
                "not with --grpc-tls: nodes prove who they are by their own certificate",
            ));
        }
        if self.grpc_tls && tls.is_none() {
            return Err(bad(
                "--tls-ca",
                "required with --grpc-tls (with --tls-cert and --tls-key)",
            ));
        }
        let quic = match (self.quic_listen, &tls) {
            (None, Some(_)) if !self.grpc_tls => {
                return Err(bad(
                    "--quic-listen",
                    "required when TLS files are given (or --grpc-tls)",
                ));
            }
            (None, _) => None,
            (Some(_), None) => return Err(bad("--tls-ca", "required with --quic-listen")),
            (Some(listen), Some(files)) => {
                if let Some(a) = &self.quic_advertise {
                    check_host_port("--quic-advertise", a)?;
                }
                Some(QuicConfig {
                    listen,
                    advertise: self.quic_advertise,
                    ca: files.ca.clone(),
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                })
            }
        };
        Ok(NodeConfig {
            id,
            data_dir: self.data_dir,
            grpc_listen: self.grpc_listen,
            advertise,
            http_listen: self.http_listen,
            peers,
            join: self.join,
            fanout: self.fanout,
            delivery: self.delivery,
            learner: self.learner,
            api_keys,
            allow_unauthenticated: self.allow_unauthenticated,
            tls,
            grpc_tls: self.grpc_tls,
            tls_shared_node_cert: self.tls_shared_node_cert,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            snapshot_every: self.snapshot_every,
            namespaces,
            quic,
            interest_linger: Duration::from_millis(self.interest_linger_ms),
            sweep_interval: Duration::from_millis(self.sweep_interval_ms),
        })
    }
}

/// The certificate must name this node (`herald://node/<id>`): peers bind
/// a connection to the node id its certificate names.
fn check_node_identity(id: u64, cert: &std::path::Path, shared: bool) -> Result<(), ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_file_iter(cert)
        .ok()
        .and_then(|mut certs| certs.next())
        .and_then(Result::ok)
        .ok_or_else(|| bad("--tls-cert", format!("{}: no certificate", cert.display())))?;
    match crate::identity::of_certificate(&leaf) {
        Some(Identity::Node(named)) if named == id => Ok(()),
        None if shared => Ok(()),
        other => Err(bad(
            "--tls-cert",
            format!(
                "{} names {}, but this is node {id} (it must carry the URI {})",
                cert.display(),
                match other {
                    Some(Identity::Node(n)) => herald_proto::identity::node_uri(n),
                    Some(Identity::Edge) => herald_proto::identity::EDGE_URI.to_string(),
                    None => "no herald:// identity".to_string(),
                },
                herald_proto::identity::node_uri(id)
            ),
        )),
    }
}

fn check_host_port(field: &str, s: &str) -> Result<(), ConfigError> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(bad(field, format!("`{s}` is not host:port"))),
    }
}

fn id_from_hostname() -> Result<u64, ConfigError> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .ok_or_else(|| bad("--id-from-hostname", "no HOSTNAME and no /etc/hostname"))?;
    let ordinal = host
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .ok_or_else(|| {
            bad(
                "--id-from-hostname",
                format!("host name `{host}` does not end in -<ordinal>"),
            )
        })?;
    Ok(ordinal + 1)
}

impl ConfigError {
    /// Build an error for a TOML key of the policy file.
    pub fn policy(field: impl Into<String>, reason: impl Into<String>) -> Self {
        bad(field, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut all = vec!["herald-node"];
        all.extend(args);
        NodeArgs::try_parse_from(all).unwrap().into_config()
    }

    fn field(args: &[&str]) -> String {
        parse(args).unwrap_err().field
    }

    #[test]
    fn help_never_prints_api_keys_from_the_environment() {
        use clap::CommandFactory;
        let cmd = NodeArgs::command();
        let keys = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == "HERALD_API_KEYS"))
            .expect("--api-key reads HERALD_API_KEYS");
        assert!(keys.is_hide_env_values_set());
    }

    #[test]
    fn valid_static_cluster() {
        let c = parse(&[
            "--id",
            "2",
            "--peers",
            "1=a:1,2=b:2,3=c:3",
            "--api-key",
            "k,node:n",
        ])
        .unwrap();
        assert_eq!(c.peers.len(), 3);
        // Peers reach it at its --peers entry (e.g. a StatefulSet DNS name).
        assert_eq!(c.advertise, "b:2");
    }

    #[test]
    fn each_bad_value_names_its_field() {
        assert_eq!(
            field(&["--peers", "1=a:1", "--api-key", "k,node:n"]),
            "--id"
        );
        assert_eq!(
            field(&["--id", "0", "--peers", "1=a:1", "--api-key", "k,node:n"]),
            "--id"
        );
        assert_eq!(
            field(&["--id", "4", "--peers", "1=a:1", "--api-key", "k,node:n"]),
            "--peers"
        );
        assert_eq!(
            field(&["--id", "1", "--peers", "1=nohost", "--api-key", "k,node:n"]),
            "--peers"
        );
        assert_eq!(
            field(&["--id", "1", "--peers", "x=a:1", "--api-key", "k,node:n"]),
            "--peers"
        );
        assert_eq!(field(&["--id", "1", "--api-key", "k,node:n"]), "--peers");
        assert_eq!(field(&["--id", "1", "--peers", "1=a:1"]), "--api-key");
        assert_eq!(
            field(&[
                "--id",
                "1",
                "--peers",
                "1=a:1",
                "--api-key",
                "k,node:n",
                "--heartbeat-ms",
                "400"
            ]),
            "--election-timeout-ms"
        );
        assert!(
            field(&[
                "--id",
                "1",
                "--peers",
                "1=a:1",
                "--api-key",
                "k,node:n",
                "--config",
                "/nonexistent"
            ])
            .starts_with("--config")
        );
    }

    #[test]
    fn fanout_nodes_join_voters_over_quic() {
        let quic = [
            "--quic-listen",
            "127.0.0.1:0",
            "--tls-ca",
            "/nonexistent/ca.pem",
        ];
        let base = ["--id", "9", "--fanout", "--api-key", "k,node:n"];
        let with = |more: &[&str]| {
            let mut a: Vec<&str> = base.to_vec();
            a.extend(more);
            field(&a)
        };
        assert_eq!(with(&["--peers", "9=a:1"]), "--peers");
        assert_eq!(with(&["--join", "a:1,b:2"]), "--quic-listen");
        assert_eq!(with(&["--join", "a:1", "--learner"]), "--learner");
        let mut raft_log = vec!["--join", "a:1", "--delivery", "raft-log"];
        raft_log.extend(quic);
        assert_eq!(with(&raft_log), "--delivery");
        let mut ok = vec!["--join", "a:1,b:2"];
        ok.extend(quic);
        // Past the role checks, the TLS files are what is missing.
        assert_eq!(with(&ok), "--tls-cert");
        let voter = parse(&["--id", "1", "--join", "a:1,b:2", "--api-key", "k,node:n"]).unwrap();
        assert_eq!(voter.join, vec!["a:1", "b:2"]);
        assert!(!voter.fanout);
        assert_eq!(voter.delivery, DeliveryMode::Quic);
    }

    #[test]
    fn policy_file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let p = path.to_str().unwrap();
        let with_policy = |text: &str| {
            std::fs::write(&path, text).unwrap();
            parse(&[
                "--id",
                "1",
                "--peers",
                "1=a:1",
                "--api-key",
                "k,node:n",
                "--config",
                p,
            ])
            .unwrap_err()
        };
        let e = with_policy("[namespaces.chat]\nhistory_sise = 3\n");
        assert!(e.reason.contains("history_sise"), "{e}");
        let e = with_policy("[namespaces.chat.schemas.m]\ntype = 7\n");
        assert_eq!(e.field, "namespaces.chat.schemas.m");
    }

    #[test]
    fn key_scopes_and_transport() {
        let base = ["--id", "1", "--peers", "1=a:1"];
        let with = |more: &[&str]| {
            let mut a: Vec<&str> = base.to_vec();
            a.extend(more);
            parse(&a)
        };
        // Plaintext: the node needs a node key to call its peers.
        let e = with(&["--api-key", "k"]).unwrap_err();
        assert_eq!(e.field, "--api-key");
        assert!(e.reason.contains("node:<key>"), "{e}");
        let e = with(&["--api-key", "root:k,node:n"]).unwrap_err();
        assert!(e.reason.contains("unknown scope `root`"), "{e}");
        let c = with(&["--api-key", "k,admin:a,node:n"]).unwrap();
        assert_eq!(c.api_keys.len(), 3);
        // TLS: node and edge keys are refused; certificates carry roles.
        let e = with(&["--grpc-tls", "--api-key", "k"]).unwrap_err();
        assert_eq!(e.field, "--tls-ca");
        let e = with(&["--grpc-tls", "--api-key", "k,edge:e"]).unwrap_err();
        assert!(e.reason.contains("certificates"), "{e}");
        // A key file keeps working: bare lines are publish keys.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# keys\nold-key\nadmin:adm\n\nnode:n\n").unwrap();
        let c = with(&["--api-keys-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.api_keys.len(), 3);
        assert_eq!(
            c.api_keys[0].scopes(),
            crate::grpc::auth::Scopes::only(Scope::Publish)
        );
    }

    /// A CA and a certificate for `uri`, as PEM files in `dir`.
    fn ca_and_cert(dir: &std::path::Path, uri: &str) -> [String; 3] {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["herald-node".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::URI(uri.to_string().try_into().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let paths = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f).display().to_string());
        std::fs::write(&paths[0], ca_cert.pem()).unwrap();
        std::fs::write(&paths[1], cert.pem()).unwrap();
        std::fs::write(&paths[2], key.serialize_pem()).unwrap();
        paths
    }

    #[test]
    fn a_certificate_must_name_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key] = ca_and_cert(dir.path(), "herald://node/3");
        let run = |id: &str| {
            parse(&[
                "--id",
                id,
                "--join",
                "a:1",
                "--api-key",
                "k",
                "--grpc-tls",
                "--tls-ca",
                &ca,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ])
        };
        assert!(run("3").is_ok());
        let e = run("4").unwrap_err();
        assert_eq!(e.field, "--tls-cert");
        assert!(e.reason.contains("herald://node/3"), "{e}");
        // A shared certificate naming nobody, only when asked for, and not
        // with gRPC TLS.
        let shared = tempfile::tempdir().unwrap();
        let [sca, scert, skey] = ca_and_cert(shared.path(), "https://example.com");
        let with_shared = |more: &[&str]| {
            let mut a = vec![
                "--id",
                "3",
                "--join",
                "a:1",
                "--api-key",
                "k,node:n",
                "--quic-listen",
                "127.0.0.1:0",
                "--tls-ca",
                &sca,
                "--tls-cert",
                &scert,
                "--tls-key",
                &skey,
            ];
            a.extend(more);
            parse(&a)
        };
        assert_eq!(with_shared(&[]).unwrap_err().field, "--tls-cert");
        assert!(with_shared(&["--tls-shared-node-cert"]).is_ok());
        let e = parse(&[
            "--id",
            "3",
            "--join",
            "a:1",
            "--api-key",
            "k",
            "--grpc-tls",
            "--tls-ca",
            &sca,
            "--tls-cert",
            &scert,
            "--tls-key",
            &skey,
            "--tls-shared-node-cert",
        ])
        .unwrap_err();
        assert_eq!(e.field, "--tls-shared-node-cert");
        let [ca2, edge, edge_key] = ca_and_cert(dir.path(), "herald://edge");
        let e = parse(&[
            "--id",
            "3",
            "--join",
            "a:1",
            "--api-key",
            "k",
            "--grpc-tls",
            "--tls-ca",
            &ca2,
            "--tls-cert",
            &edge,
            "--tls-key",
            &edge_key,
        ])
        .unwrap_err();
        assert_eq!(e.field, "--tls-cert");
    }
}
