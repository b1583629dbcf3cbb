//! Herald node: Raft-replicated channels, durable history and the gRPC
//! publish API; or, with `--fanout`, a fan-out node outside Raft that serves
//! edges from what the leader pushes to it ([`fanout_node`]).
//!
//! [`run`] takes bound listeners and a shutdown future, so tests and the
//! `herald` command start nodes on ephemeral ports in one call; `main.rs`
//! only parses flags and binds.

pub mod channels;
pub mod config;
pub mod disk;
pub mod fanout_node;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod members;
pub mod membership;
pub mod namespace;
pub mod peer;
pub mod presence;
pub mod proposer;
pub mod raft;
pub mod recovery;
pub mod rejection;
pub mod replica;
mod startup;
pub mod sweeper;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_proto::v1::admin_server::AdminServer;
use herald_proto::v1::edge_link_server::EdgeLinkServer;
use herald_proto::v1::publisher_server::PublisherServer;
use herald_proto::v1::raft_server::RaftServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::config::{DeliveryMode, NodeConfig, QuicConfig};
use crate::fanout_node::FanoutNode;
use crate::grpc::auth::{Credentials, Guarded};
use crate::grpc::outbound::Outbound;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachine;
use crate::replica::Replica;

/// The node's bound sockets.
pub struct Listeners {
    /// gRPC (publisher, admin, raft).
    pub grpc: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: TcpListener,
}

/// Largest gRPC message accepted from publishers (a full batch) and sent
/// or received on EdgeLink streams (`herald_proto::limits`).
const MAX_API_MESSAGE: usize = herald_proto::limits::MAX_MESSAGE_BYTES;
/// Largest Raft message (snapshots travel in chunks below this).
const MAX_RAFT_MESSAGE: usize = 256 * 1024 * 1024;

/// Run a node until `shutdown` resolves; then hand leadership over, stop
/// serving, and stop Raft. A fan-out node (`--fanout`) just stops serving.
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.fanout {
        return run_fanout(config, listeners, prometheus, shutdown).await;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let db_path = config.data_dir.join("herald.redb");
    let (db, disk) =
        disk::open(&db_path).with_context(|| format!("opening {}", db_path.display()))?;
    let db = Arc::new(db);
    let log = LogStore::open(db.clone(), disk).context("opening the raft log")?;
    let sm = StateMachine::open(db).context("opening the state machine")?;
    let raft_config = openraft::Config {
        cluster_name: "herald".into(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: config.election_timeout.as_millis() as u64,
        election_timeout_max: config.election_timeout.as_millis() as u64 * 2,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: 1000,
        max_payload_entries: 512,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let outbound = Outbound::for_node(&config)?;
    let raft = raft::Raft::new(
        config.id,
        Arc::new(raft_config),
        Network::new(outbound.clone()),
        log.clone(),
        sm.clone(),
    )
    .await
    .context("starting raft")?;
    let replica = Arc::new(Replica::new(
        config.id,
        raft.clone(),
        config.namespaces.clone(),
        outbound.clone(),
        &sm,
        log.clone(),
        config.election_timeout,
    ));

    let keys = Credentials::new(config.api_keys.clone(), config.allow_unauthenticated);
    let publisher = PublisherServer::new(grpc::publisher::PublisherService::new(replica.clone()))
        .max_decoding_message_size(MAX_API_MESSAGE);
    let (plane, interest) = match &config.quic {
        None => (None, None),
        Some(q) => {
            let mut tls = peer::tls::PeerTls::load(&q.ca, &q.cert, &q.key)?;
            tls.bind_node_ids = !config.tls_shared_node_cert;
            let plane = peer::PeerPlane::bind(config.id, q.listen, tls, replica.delivery_sender())
                .with_context(|| format!("--quic-listen {}", q.listen))?;
            replica.attach_plane(plane.clone());
            let quic_addr = quic_advertise(&config, q, &plane)?;
            // With `raft-log` delivery every node delivers from its own log:
            // the leader pushes nothing (ephemeral publications and presence
            // events still travel over QUIC).
            if config.delivery == DeliveryMode::Quic {
                tokio::spawn(peer::fanout::run(
                    plane.clone(),
                    replica.clone(),
                    replica.subscribe_published(),
                ));
            }
            tokio::spawn(register_quic(replica.clone(), quic_addr));
            let interest = peer::interest::Interest::spawn(
                replica.clone(),
                config.interest_linger,
                std::future::ready(()),
            );
            (Some(plane), Some(interest))
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let edge_link = EdgeLinkServer::new(grpc::edge_link::EdgeLinkService::new(
        replica.clone(),
        interest,
        stop_rx,
    ))
    .max_decoding_message_size(MAX_API_MESSAGE);
    let admin = AdminServer::new(grpc::admin::AdminService::new(replica.clone()));
    let me = raft::network::Addressee {
        id: config.id,
        incarnation: log.incarnation(),
    };
    let raft_rpc = RaftServer::new(grpc::raft::RaftService::new(raft.clone(), me))
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);

    let routes = base_routes()
        .await?
        .add_service(Guarded::new(publisher, keys.clone()))
        .add_service(Guarded::new(admin, keys.clone()))
        .add_service(Guarded::new(edge_link, keys.clone()))
        .add_service(Guarded::new(raft_rpc, keys));
    let serving = Serving::start(
        routes,
        listeners,
        http::router(replica.clone(), prometheus),
        stop_tx,
        server_tls(&config)?,
    )?;
    let membership_task = tokio::spawn(startup::bootstrap_or_join(
        config.clone(),
        replica.clone(),
        outbound,
    ));
    let sweeper = tokio::spawn(sweeper::run(
        replica.clone(),
        sm.clone(),
        config.namespaces.clone(),
        config.sweep_interval,
    ));
    tracing::info!(id = config.id, grpc = %config.grpc_listen, http = %config.http_listen, "node started");

    shutdown.await;
    tracing::info!("shutting down");
    membership_task.abort();
    sweeper.abort();
    replica.step_down(Duration::from_secs(5)).await;
    serving.stop().await;
    if let Some(p) = plane {
        p.close();
    }
    let _ = raft.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The QUIC address peers dial: `--quic-advertise`, else the advertised
/// gRPC host with the bound port.
fn quic_advertise(
    config: &NodeConfig,
    q: &QuicConfig,
    plane: &peer::PeerPlane,
) -> anyhow::Result<String> {
    let bound = plane.local_addr()?;
    let quic_addr = q.advertise.clone().unwrap_or_else(|| {
        let host = config
            .advertise
            .rsplit_once(':')
            .map_or("127.0.0.1", |(h, _)| h);
        format!("{host}:{}", bound.port())
    });
    tracing::info!(%bound, advertise = %quic_addr, "QUIC delivery plane listening");
    Ok(quic_addr)
}

/// Run a fan-out node until `shutdown` resolves: no Raft, no disk; QUIC in,
/// edge links out, everything else asked of the voters at `--join`.
async fn run_fanout(
    config: NodeConfig,
    listeners: Listeners,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Some(q) = &config.quic else {
        anyhow::bail!("--quic-listen: required with --fanout");
    };
    let outbound = Outbound::for_node(&config)?;
    let node = Arc::new(FanoutNode::new(
        config.id,
        config.advertise.clone(),
        config.namespaces.clone(),
        outbound,
        config.join.clone(),
    ));
    let mut tls = peer::tls::PeerTls::load(&q.ca, &q.cert, &q.key)?;
    tls.bind_node_ids = !config.tls_shared_node_cert;
    let plane = peer::PeerPlane::bind(config.id, q.listen, tls, node.delivery_sender())
        .with_context(|| format!("--quic-listen {}", q.listen))?;
    let quic_addr = quic_advertise(&config, q, &plane)?;
    let maintain = tokio::spawn(node.clone().maintain(quic_addr));
    let interest =
        peer::interest::Interest::spawn(node.clone(), config.interest_linger, node.registered());
    let tails = tokio::spawn(fanout_node::watch_tails(node.clone(), interest.clone()));

    let keys = Credentials::new(config.api_keys.clone(), config.allow_unauthenticated);
    let publisher = PublisherServer::new(grpc::fanout::FanoutPublisher::new(node.clone()))
        .max_decoding_message_size(MAX_API_MESSAGE);
    let admin = AdminServer::new(grpc::fanout::FanoutAdmin::new(node.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let edge_link = EdgeLinkServer::new(grpc::edge_link::EdgeLinkService::new(
        node.clone(),
        Some(interest),
        stop_rx,
    ))
    .max_decoding_message_size(MAX_API_MESSAGE);
    let routes = base_routes()
        .await?
        .add_service(Guarded::new(publisher, keys.clone()))
        .add_service(Guarded::new(admin, keys.clone()))
        .add_service(Guarded::new(edge_link, keys));
    let serving = Serving::start(
        routes,
        listeners,
        http::router(node.clone(), prometheus),
        stop_tx,
        server_tls(&config)?,
    )?;
    tracing::info!(id = config.id, grpc = %config.grpc_listen, http = %config.http_listen, "fan-out node started");

    shutdown.await;
    tracing::info!("shutting down");
    maintain.abort();
    tails.abort();
    serving.stop().await;
    plane.close();
    tracing::info!("stopped");
    Ok(())
}

/// Announce this node's QUIC address in the replicated registry (again
/// whenever it differs, e.g. after a restart on another port).
async fn register_quic(replica: Arc<Replica>, quic_addr: String) {
    loop {
        let current = replica.with_delivery(|d| d.quic_addr(replica.id).map(String::from));
        if current.as_deref() == Some(quic_addr.as_str()) {
            metrics::gauge!("herald_peer_registered").set(1.0);
            return;
        }
        let cmd = raft::Command::RegisterNode {
            id: replica.id,
            quic_addr: quic_addr.clone(),
        };
        if let Err(e) = replica.submit(cmd).await {
            tracing::debug!("registering the QUIC address: {e}; will retry");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What every node serves besides its own API: gRPC health (with
/// `herald.v1.Publisher` serving) and reflection.
async fn base_routes() -> anyhow::Result<Routes> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(
            <PublisherServer<grpc::publisher::PublisherService> as NamedService>::NAME,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    Ok(Routes::new(health_service).add_service(reflection))
}

/// With `--grpc-tls`: serve with this node's certificate, and verify a
/// client certificate against the cluster CA when one is offered
/// (publishers come with an API key and no certificate; nodes and edges
/// with one, which [`Guarded`] reads their role from).
fn server_tls(config: &NodeConfig) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(files), true) = (&config.tls, config.grpc_tls) else {
        return Ok(None);
    };
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
            .client_ca_root(Certificate::from_pem(read(&files.ca)?))
            .client_auth_optional(true),
    ))
}

/// The gRPC and operations listeners, serving until [`Serving::stop`].
struct Serving {
    stop: watch::Sender<bool>,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Serving {
    /// Serve `routes` (TCP_NODELAY on every connection) and `ops` until
    /// `stop` is sent; services watching `stop` end their streams then.
    fn start(
        routes: Routes,
        listeners: Listeners,
        ops: axum::Router,
        stop: watch::Sender<bool>,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> anyhow::Result<Self> {
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("gRPC TLS")?;
        }
        let grpc = builder.add_routes(routes).serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            stopped(stop.subscribe()),
        );
        let http = axum::serve(listeners.http, ops)
            .with_graceful_shutdown(stopped(stop.subscribe()))
            .into_future();
        Ok(Self {
            grpc: tokio::spawn(grpc),
            http: tokio::spawn(http),
            stop,
        })
    }

    /// Stop accepting, and wait for open calls to finish, but not forever:
    /// a call that never ends (a client's stream we cannot close) must not
    /// keep the process alive past the orchestrator's grace period.
    async fn stop(self) {
        const GRACE: Duration = Duration::from_secs(5);
        let _ = self.stop.send(true);
        let abort = self.grpc.abort_handle();
        if tokio::time::timeout(GRACE, self.grpc).await.is_err() {
            tracing::warn!("open gRPC calls did not finish within {GRACE:?}; closing them");
            abort.abort();
        }
        let _ = self.http.await;
    }
}
