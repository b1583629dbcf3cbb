//! Where publishes go: the Raft leader, found through `ClusterStatus`.
//!
//! Any node accepts a publish and forwards it to the leader, but that extra
//! hop is not what the benchmark measures, so publishers talk to the leader
//! directly. One background task owns the answer: publishers read the current
//! [`Route`] from a `watch` channel and, after an `UNAVAILABLE`, ask the task
//! to look again. Many publishers failing at once cause one lookup, not one
//! each, and nothing is locked on the publish path.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_proto::v1::ClusterStatusRequest;
use herald_proto::v1::publisher_client::PublisherClient;
use tokio::sync::{mpsc, watch};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// A publisher client carrying the API key.
pub(crate) type Client = PublisherClient<InterceptedService<Channel, ApiKey>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound of one `ClusterStatus` probe, so a stopped node cannot stall
/// the lookup.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between lookups while no node names a leader (an election).
const RETRY: Duration = Duration::from_millis(100);
/// A leader that moved without publishes failing (the old one forwards) is
/// noticed within this long.
const RECHECK: Duration = Duration::from_secs(5);

/// Adds `authorization: apikey <key>` to each request, when a key is set.
#[derive(Debug, Clone)]
pub(crate) struct ApiKey(Option<AsciiMetadataValue>);

impl ApiKey {
    pub(crate) fn new(key: Option<&str>) -> anyhow::Result<Self> {
        match key.filter(|k| !k.is_empty()) {
            None => Ok(Self(None)),
            Some(k) if k.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(Self(Some(MetadataValue::try_from(format!("apikey {k}"))?)))
            }
            Some(_) => bail!("--api-key must be printable ASCII without spaces"),
        }
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The leader as last resolved.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Bumped on every change, so a stale report about an old route is
    /// ignored.
    pub(crate) generation: u64,
    /// The leader's gRPC address as the cluster advertises it.
    pub(crate) addr: String,
    pub(crate) client: Client,
}

/// Handle the publishers share.
#[derive(Debug, Clone)]
pub(crate) struct Leader {
    current: watch::Receiver<Route>,
    stale: mpsc::Sender<u64>,
    /// gRPC addresses of the cluster's members when the leader was first
    /// found.
    members: Vec<String>,
}

impl Leader {
    /// Find the leader through `seeds` (any nodes), waiting up to `patience`
    /// for one to be elected, then keep following it until every handle is
    /// dropped.
    pub(crate) async fn follow(
        seeds: Vec<String>,
        key: ApiKey,
        patience: Duration,
    ) -> anyhow::Result<Self> {
        let mut finder = Finder {
            seeds,
            key,
            probes: HashMap::new(),
            members: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + patience;
        let (addr, client) = loop {
            let found = match finder.locate(None).await {
                Ok(addr) => finder.connect(&addr).await.map(|c| (addr, c)),
                Err(e) => Err(e),
            };
            match found {
                Ok(found) => break found,
                Err(Lookup::Refused(e)) => return Err(e),
                Err(Lookup::NotYet(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(e).context(format!("no leader found within {patience:?}"));
                }
                Err(Lookup::NotYet(_)) => tokio::time::sleep(RETRY).await,
            }
        };
        let members = finder.members.clone();
        let (route_tx, current) = watch::channel(Route {
            generation: 0,
            addr,
            client,
        });
        let (stale, stale_rx) = mpsc::channel(1);
        tokio::spawn(finder.run(route_tx, stale_rx));
        Ok(Self {
            current,
            stale,
            members,
        })
    }

    /// The current route; cheap (the client shares one connection).
    pub(crate) fn route(&mut self) -> Route {
        self.current.borrow_and_update().clone()
    }

    /// Replace `route` if the leader moved since it was taken.
    pub(crate) fn refresh(&mut self, route: &mut Route) {
        if self.current.has_changed().unwrap_or(false) {
            *route = self.route();
        }
    }

    /// Say that `generation`'s leader answered `UNAVAILABLE`.
    pub(crate) fn report_stale(&self, generation: u64) {
        // Full means a lookup is already requested.
        let _ = self.stale.try_send(generation);
    }

    /// The members' gRPC addresses, as the cluster advertises them.
    pub(crate) fn members(&self) -> &[String] {
        &self.members
    }
}

/// The lookup, owned by the background task.
struct Finder {
    seeds: Vec<String>,
    key: ApiKey,
    /// Lazily connected clients for `ClusterStatus`, by address: seeds and
    /// every member the cluster reported.
    probes: HashMap<String, Client>,
    /// Members in the last `ClusterStatus` answer.
    members: Vec<String>,
}

impl Finder {
    async fn run(mut self, routes: watch::Sender<Route>, mut stale: mpsc::Receiver<u64>) {
        loop {
            let current = routes.borrow().clone();
            // After a report, reconnect even to the same address: the old
            // connection may be what failed.
            let forced = tokio::select! {
                report = stale.recv() => match report {
                    None => return,
                    Some(generation) if generation != current.generation => continue,
                    Some(_) => true,
                },
                _ = tokio::time::sleep(RECHECK) => false,
                _ = routes.closed() => return,
            };
            loop {
                let found = match self.locate(Some(&current.addr)).await {
                    Ok(addr) if addr == current.addr && !forced => break,
                    Ok(addr) => self.connect(&addr).await.map(|c| (addr, c)),
                    Err(e) => Err(e),
                };
                match found {
                    Ok((addr, client)) => {
                        routes.send_replace(Route {
                            generation: current.generation + 1,
                            addr,
                            client,
                        });
                        break;
                    }
                    Err(_) if forced && !routes.is_closed() => tokio::time::sleep(RETRY).await,
                    Err(_) => break,
                }
            }
        }
    }

    /// Ask nodes (the last leader first) until one names the leader.
    async fn locate(&mut self, last: Option<&str>) -> Result<String, Lookup> {
        let mut known: Vec<String> = self.probes.keys().cloned().collect();
        known.sort();
        let mut order: Vec<String> = Vec::new();
        for addr in last
            .map(str::to_string)
            .into_iter()
            .chain(self.seeds.iter().cloned())
            .chain(known)
        {
            if !order.contains(&addr) {
                order.push(addr);
            }
        }
        let mut last_error = anyhow::anyhow!("no node to ask");
        for addr in order {
            let probe = match self.probes.get(&addr) {
                Some(p) => p.clone(),
                None => {
                    let channel = endpoint(&addr).map_err(Lookup::Refused)?.connect_lazy();
                    let p = client(channel, &self.key);
                    self.probes.insert(addr.clone(), p.clone());
                    p
                }
            };
            let status = match tokio::time::timeout(
                PROBE_TIMEOUT,
                probe.clone().cluster_status(ClusterStatusRequest {}),
            )
            .await
            {
                Ok(Ok(s)) => s.into_inner(),
                Ok(Err(e))
                    if matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied) =>
                {
                    return Err(Lookup::Refused(anyhow::anyhow!(
                        "ClusterStatus on {addr}: {}",
                        e.message()
                    )));
                }
                Ok(Err(e)) => {
                    last_error = anyhow::anyhow!("ClusterStatus on {addr}: {}", e.message());
                    continue;
                }
                Err(_) => {
                    last_error = anyhow::anyhow!(
                        "ClusterStatus on {addr}: no answer within {PROBE_TIMEOUT:?}"
                    );
                    continue;
                }
            };
            if !status.members.is_empty() {
                self.members = status.members.iter().map(|m| m.grpc_addr.clone()).collect();
            }
            for m in &status.members {
                if !m.grpc_addr.is_empty()
                    && !self.probes.contains_key(&m.grpc_addr)
                    && let Ok(e) = endpoint(&m.grpc_addr)
                {
                    self.probes
                        .insert(m.grpc_addr.clone(), client(e.connect_lazy(), &self.key));
                }
            }
            if status.leader_grpc_addr.is_empty() {
                last_error = anyhow::anyhow!("node {} ({addr}) knows no leader", status.node_id);
                continue;
            }
            return Ok(status.leader_grpc_addr);
        }
        Err(Lookup::NotYet(last_error))
    }

    /// A dedicated connection to the leader for the publishers.
    async fn connect(&self, leader: &str) -> Result<Client, Lookup> {
        match endpoint(leader).map_err(Lookup::Refused)?.connect().await {
            Ok(channel) => Ok(client(channel, &self.key)),
            Err(e) => Err(Lookup::NotYet(anyhow::anyhow!(
                "connecting to leader {leader}: {e}"
            ))),
        }
    }
}

/// Why no leader was found.
enum Lookup {
    /// The cluster refused us (a wrong API key); waiting will not help.
    Refused(anyhow::Error),
    /// No node answered or named a leader yet.
    NotYet(anyhow::Error),
}

fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)
        .with_context(|| format!("`{addr}` is not host:port"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

fn client(channel: Channel, key: &ApiKey) -> Client {
    PublisherClient::with_interceptor(channel, key.clone())
}
