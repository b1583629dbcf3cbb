//! The EdgeLink client: this edge's one multiplexed gRPC stream to a node.
//!
//! Owns the connection to the cluster: which node the edge is linked to,
//! reconnecting to the next one from `--nodes` (with backoff) when the
//! stream fails, and resubscribing every channel the hub holds from the
//! position it last delivered, so the node replays exactly what was missed.
//! Whatever arrives is handed to the [`Hub`] in stream order; the hub drops
//! anything at or below its position, so a replay never duplicates.
//!
//! Publish and history calls from clients go to the same node over the same
//! HTTP/2 connection. This module never holds client state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use herald_proto::limits::MAX_MESSAGE_BYTES;
use herald_proto::v1::edge_link_client::EdgeLinkClient;
use herald_proto::v1::edge_message::Msg as EdgeMsg;
use herald_proto::v1::node_message::Msg as NodeMsg;
use herald_proto::v1::publisher_client::PublisherClient;
use herald_proto::v1::{
    ChannelInfoRequest, EdgeMessage, HistoryRequest, LinkSubscribe, LinkUnsubscribe, StreamPosition,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::channel::{ChannelName, Epoch, Offset, Position};
use crate::hub::{HistoryPage, HistoryReader, Hub, LinkCommand};
use crate::presence::Presence;
use crate::protocol::codes::ClientError;
use crate::shutdown::Shutdown;

/// First wait after a failed round over every node; doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Messages buffered towards the node.
const OUTBOUND: usize = 1024;
/// Hang guard for one unary call (publish, history).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `authorization: apikey <key>` to every call.
#[derive(Debug, Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A `Publisher` client on the linked node.
pub type Publisher = PublisherClient<InterceptedService<Channel, ApiKey>>;

/// The link to the cluster. Shared as `Arc<Upstream>`.
#[derive(Debug)]
pub struct Upstream {
    nodes: Vec<String>,
    key: ApiKey,
    tls: Option<ClientTlsConfig>,
    current: RwLock<Option<(String, Channel)>>,
    linked: AtomicBool,
    /// Namespace → (`allow_client_publish`, `presence`, when learnt).
    publish_policy: Mutex<HashMap<String, (bool, bool, Instant)>>,
}

/// How long a namespace's `allow_client_publish` is trusted before it is
/// asked again.
const POLICY_TTL: Duration = Duration::from_secs(30);

impl Upstream {
    /// A link that will try `nodes` (URLs) in order, over TLS with `tls`
    /// (`https://` nodes).
    pub fn new(
        nodes: Vec<String>,
        api_key: Option<&str>,
        tls: Option<ClientTlsConfig>,
    ) -> Arc<Self> {
        let key = api_key.and_then(|k| format!("apikey {k}").parse().ok());
        Arc::new(Self {
            nodes,
            key: ApiKey(key),
            tls,
            current: RwLock::new(None),
            linked: AtomicBool::new(false),
            publish_policy: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the EdgeLink stream is up.
    pub fn is_linked(&self) -> bool {
        self.linked.load(Ordering::Acquire)
    }

    /// The node the edge is linked to.
    pub fn linked_node(&self) -> Option<String> {
        if !self.is_linked() {
            return None;
        }
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(n, _)| n.clone())
    }

    /// A `Publisher` client on the linked node.
    pub fn publisher(&self) -> Result<Publisher, ClientError> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some((_, ch)) if self.is_linked() => Ok(PublisherClient::with_interceptor(
                ch.clone(),
                self.key.clone(),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)),
            _ => Err(ClientError::INTERNAL
                .with_message("no node reachable")
                .temporary()),
        }
    }

    /// Whether the channel's namespace allows client publishes (asked with
    /// `ChannelInfo`, cached per namespace for [`POLICY_TTL`]).
    pub async fn allows_client_publish(&self, channel: &ChannelName) -> Result<bool, ClientError> {
        Ok(self.policy(channel).await?.0)
    }

    /// Whether the channel's namespace has presence on (cached like
    /// [`Self::allows_client_publish`]).
    pub async fn presence_enabled(&self, channel: &ChannelName) -> Result<bool, ClientError> {
        Ok(self.policy(channel).await?.1)
    }

    /// The cached presence flag of the channel's namespace, if known.
    pub fn cached_presence(&self, channel: &ChannelName) -> Option<bool> {
        self.publish_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace_of(channel))
            .filter(|(_, _, at)| at.elapsed() < POLICY_TTL)
            .map(|(_, presence, _)| *presence)
    }

    async fn policy(&self, channel: &ChannelName) -> Result<(bool, bool), ClientError> {
        let namespace = namespace_of(channel).to_string();
        if let Some((allowed, presence, at)) = self
            .publish_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&namespace)
            && at.elapsed() < POLICY_TTL
        {
            return Ok((*allowed, *presence));
        }
        let mut client = self.publisher()?;
        let req = ChannelInfoRequest {
            channel: channel.to_string(),
        };
        let info = tokio::time::timeout(CALL_TIMEOUT, client.channel_info(req))
            .await
            .map_err(|_| ClientError::INTERNAL.temporary())?
            .map_err(|s| error_for_status(&s))?
            .into_inner();
        self.publish_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                namespace,
                (info.allow_client_publish, info.presence, Instant::now()),
            );
        Ok((info.allow_client_publish, info.presence))
    }

    /// Keep a link up until `shutdown`, feeding `hub`.
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<Hub>,
        presence: Arc<Presence>,
        mut commands: mpsc::UnboundedReceiver<LinkCommand>,
        mut shutdown: Shutdown,
    ) {
        let mut index = 0usize;
        let mut backoff = MIN_BACKOFF;
        while !shutdown.is_shutdown() {
            let node = self.nodes[index % self.nodes.len()].clone();
            let outcome = tokio::select! {
                r = self.session(&node, &hub, &presence, &mut commands) => r,
                _ = shutdown.recv() => break,
            };
            let was_linked = self.linked.swap(false, Ordering::AcqRel);
            metrics::gauge!("herald_edge_upstream_linked").set(0.0);
            match outcome {
                Ok(()) => tracing::warn!(%node, "EdgeLink stream ended; moving to the next node"),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "EdgeLink failed; moving to the next node")
                }
            }
            if was_linked {
                metrics::counter!("herald_edge_upstream_reconnects_total").increment(1);
                backoff = MIN_BACKOFF;
            }
            index += 1;
            let pause = if was_linked {
                Duration::ZERO
            } else if index.is_multiple_of(self.nodes.len()) {
                let b = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                b
            } else {
                Duration::from_millis(20)
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.recv() => break,
            }
        }
        self.linked.store(false, Ordering::Release);
    }

    async fn session(
        &self,
        node: &str,
        hub: &Arc<Hub>,
        presence: &Presence,
        commands: &mut mpsc::UnboundedReceiver<LinkCommand>,
    ) -> Result<(), String> {
        let mut endpoint = Endpoint::from_shared(node.to_string()).map_err(|e| e.to_string())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS: {e}"))?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = EdgeLinkClient::with_interceptor(channel.clone(), self.key.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<EdgeMessage>(OUTBOUND);
        let mut inbound = client
            .link(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("link: {}", s.message()))?
            .into_inner();
        // Commands queued before this stream are covered by the snapshot.
        while commands.try_recv().is_ok() {}
        let channels = hub.snapshot();
        let present = presence.snapshot();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some((node.to_string(), channel));
        self.linked.store(true, Ordering::Release);
        metrics::gauge!("herald_edge_upstream_linked").set(1.0);
        tracing::info!(%node, channels = channels.len(), "EdgeLink up");
        let send_all = async {
            for (c, since) in channels {
                tx.send(subscribe(&c, since.as_ref()))
                    .await
                    .map_err(|_| "link closed".to_string())?;
            }
            for u in present {
                tx.send(EdgeMessage {
                    msg: Some(EdgeMsg::Presence(u)),
                })
                .await
                .map_err(|_| "link closed".to_string())?;
            }
            Ok::<(), String>(())
        };
        // Resubscribing must not wait for the node to read (it reads while
        // answering), so the answers are consumed concurrently.
        let mut send_all = std::pin::pin!(send_all);
        let mut resubscribed = false;
        loop {
            tokio::select! {
                r = &mut send_all, if !resubscribed => { r?; resubscribed = true; }
                cmd = commands.recv(), if resubscribed => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    let msg = match cmd {
                        LinkCommand::Subscribe { channel, since } => subscribe(&channel, since.as_ref()),
                        LinkCommand::Unsubscribe(c) => EdgeMessage {
                            msg: Some(EdgeMsg::Unsubscribe(LinkUnsubscribe { channel: c.to_string() })),
                        },
                        LinkCommand::Presence(u) => EdgeMessage { msg: Some(EdgeMsg::Presence(u)) },
                    };
                    tx.send(msg).await.map_err(|_| "link closed".to_string())?;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => dispatch(hub, m),
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(format!("stream: {} {}", s.code(), s.message())),
                },
            }
        }
    }
}

fn namespace_of(channel: &ChannelName) -> &str {
    channel.as_str().split_once(':').map_or("", |(ns, _)| ns)
}

fn subscribe(channel: &ChannelName, since: Option<&Position>) -> EdgeMessage {
    EdgeMessage {
        msg: Some(EdgeMsg::Subscribe(LinkSubscribe {
            channel: channel.to_string(),
            since: since.map(|p| StreamPosition {
                offset: p.offset.0,
                epoch: p.epoch.as_str().to_string(),
            }),
            recover_limit: 0,
        })),
    }
}

fn dispatch(hub: &Arc<Hub>, m: herald_proto::v1::NodeMessage) {
    match m.msg {
        Some(NodeMsg::Publication(p)) => hub.publication(p),
        Some(NodeMsg::Subscribed(s)) => hub.subscribed(s),
        Some(NodeMsg::Error(e)) => {
            tracing::debug!(channel = %e.channel, reason = %e.reason, "EdgeLink refused a channel");
            hub.refused(&e.channel, error_for_reason(&e.reason, &e.message));
        }
        None => {}
    }
}

/// The client error for a node rejection reason (docs/protocol.md).
pub fn error_for_reason(reason: &str, message: &str) -> ClientError {
    match reason {
        "CHANNEL_EMPTY" | "CHANNEL_TOO_LONG" | "CHANNEL_INVALID" | "NAMESPACE_UNKNOWN"
        | "CHANNEL_NOT_FOUND" => ClientError::UNKNOWN_CHANNEL.with_message(message.to_string()),
        "PAYLOAD_TOO_LARGE"
        | "IDEMPOTENCY_KEY_TOO_LONG"
        | "TOO_MANY_HEADERS"
        | "EVENT_TYPE_TOO_LONG"
        | "SCHEMA_VIOLATION" => {
            ClientError::BAD_REQUEST.with_message(format!("{reason}: {message}"))
        }
        "PRESENCE_DISABLED" => ClientError::NOT_AVAILABLE,
        "NO_LEADER" | "LEADER_STEPPING_DOWN" | "LEADER_UNREACHABLE" | "RAFT_STOPPED" => {
            ClientError::INTERNAL
                .with_message(reason.to_string())
                .temporary()
        }
        _ => ClientError::INTERNAL.with_message(reason.to_string()),
    }
}

/// The client error for a failed gRPC call.
pub fn error_for_status(s: &Status) -> ClientError {
    let reason = tonic_types::StatusExt::get_error_details(s)
        .error_info()
        .map(|i| i.reason.clone());
    match reason {
        Some(r) => error_for_reason(&r, s.message()),
        None => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                ClientError::INTERNAL.temporary()
            }
            _ => ClientError::INTERNAL,
        },
    }
}

impl HistoryReader for Arc<Upstream> {
    fn read(
        &self,
        channel: ChannelName,
        since: Position,
        limit: u32,
    ) -> BoxFuture<'static, Result<HistoryPage, ClientError>> {
        let client = self.publisher();
        Box::pin(async move {
            let mut client = client?;
            let req = HistoryRequest {
                channel: channel.to_string(),
                since: Some(StreamPosition {
                    offset: since.offset.0,
                    epoch: since.epoch.as_str().to_string(),
                }),
                limit,
                reverse: false,
                linearizable: false,
            };
            let r = tokio::time::timeout(CALL_TIMEOUT, client.history(req))
                .await
                .map_err(|_| ClientError::INTERNAL.temporary())?
                .map_err(|s| error_for_status(&s))?
                .into_inner();
            Ok(HistoryPage {
                publications: r.publications,
                epoch: Epoch::new(&r.epoch),
                offset: Offset(r.offset),
                in_window: r.in_window,
            })
        })
    }
}
