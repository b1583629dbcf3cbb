//! One client connection's state, whatever its transport: who it is
//! (after connect), what its token allows, which channels it subscribed,
//! and its [`Outbox`]. Commands act on a `Client`; the transport only moves
//! bytes. Dropping a `Client` unsubscribes it everywhere and releases its
//! registration, so no path out of a connection leaks a subscription.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::Edge;
use crate::auth::{Action, AuthError, Capabilities, Identity};
use crate::channel::ChannelName;
use crate::clients::Registration;
use crate::hub::SubscriberId;
use crate::outbox::{Item, Outbox};
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::frame;

/// The transport a client uses (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/connection/websocket`.
    WebSocket,
    /// `/connection/sse`.
    Sse,
}

impl Transport {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// One connection.
#[derive(Debug)]
pub struct Client {
    /// Shared edge state.
    pub edge: Arc<Edge>,
    /// What is written to this client.
    pub outbox: Arc<Outbox>,
    registration: Registration,
    /// The id given to the client in its connect reply.
    pub client_id: String,
    /// Token from the HTTP request (query, cookie or header), used when the
    /// connect command carries none.
    pub http_token: Option<String>,
    /// Set by a successful connect.
    pub identity: Option<Identity>,
    /// Channels this connection subscribed to.
    pub subscriptions: HashMap<ChannelName, ()>,
    /// A connect was answered with an error (101, 109).
    pub connect_refused: bool,
    transport: Transport,
}

impl Client {
    /// A new, not yet connected client.
    pub fn new(
        edge: Arc<Edge>,
        outbox: Arc<Outbox>,
        registration: Registration,
        http_token: Option<String>,
        transport: Transport,
    ) -> Self {
        metrics::gauge!("herald_edge_connections", "transport" => transport.label()).increment(1.0);
        let r: u128 = rand::random();
        let h = format!("{r:032x}");
        let client_id = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        Self {
            edge,
            outbox,
            registration,
            client_id,
            http_token,
            identity: None,
            subscriptions: HashMap::new(),
            connect_refused: false,
            transport,
        }
    }

    /// The hub subscriber id of this connection.
    pub fn id(&self) -> SubscriberId {
        self.registration.id()
    }

    /// Registration in the edge's client registry.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// The identity of a connected client, or the disconnect for a command
    /// sent before connect.
    pub fn connected(&self) -> Result<&Identity, Disconnect> {
        self.identity.as_ref().ok_or(Disconnect::BAD_REQUEST)
    }

    /// Whether the connection's capabilities allow `action` on `channel`.
    pub fn allows(&self, action: Action, channel: &ChannelName) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|i| i.caps.allows(action, channel.as_str()))
    }

    /// Queue bytes for the client.
    pub fn send(&self, b: Bytes) {
        let _ = self.outbox.push(Item::Frame(b));
    }

    /// Queue a reply.
    pub fn reply(&self, id: u32, method: &str, body: &impl Serialize) {
        if id > 0 {
            self.send(frame::reply(id, method, body));
        }
    }

    /// Queue an error reply.
    pub fn error(&self, id: u32, e: &ClientError) {
        self.send(frame::error(id, e));
    }

    /// Count an authentication failure.
    pub fn auth_failed(&self, e: &AuthError) {
        metrics::counter!("herald_edge_auth_failures_total", "reason" => e.reason()).increment(1);
    }

    /// Capabilities of anonymous clients.
    pub fn anonymous_caps(&self) -> Capabilities {
        Capabilities::wildcard(
            &self.edge.settings.anonymous_channels,
            &[Action::Subscribe, Action::History],
        )
    }

    /// Forget a subscription (it ended upstream).
    pub fn forget(&mut self, channel: &ChannelName) {
        if self.subscriptions.remove(channel).is_some() {
            self.edge.hub.unsubscribe(channel, self.id());
            self.edge.presence.leave(channel, &self.client_id);
        }
    }

    /// Enter the channel's presence (after subscribing to it).
    pub fn join_presence(&self, channel: &ChannelName) {
        let user = self.identity.as_ref().map_or("", |i| i.user.as_str());
        self.edge.presence.join(channel, &self.client_id, user);
    }

    /// The hub already removed this subscription (it failed, or the
    /// channel was lost upstream): forget it here too.
    pub fn dropped(&mut self, channel: &ChannelName) {
        if self.subscriptions.remove(channel).is_some() {
            self.edge.presence.leave(channel, &self.client_id);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let id = self.id();
        for channel in self.subscriptions.keys() {
            self.edge.hub.unsubscribe(channel, id);
            self.edge.presence.leave(channel, &self.client_id);
        }
        metrics::gauge!("herald_edge_connections", "transport" => self.transport.label())
            .decrement(1.0);
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
