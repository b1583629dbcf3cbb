//! One client connection's state, whatever its transport: who it is
//! (after connect), what its token allows, which channels it subscribed
//! (and until when, for subscription tokens with `exp`), its wire format,
//! and its [`Outbox`]. Commands act on a `Client`; the transport only moves
//! bytes. Dropping a `Client` unsubscribes it everywhere and releases its
//! registration, so no path out of a connection leaks a subscription.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Edge;
use crate::auth::{Action, AuthError, Capabilities, Identity};
use crate::budget::CommandBudget;
use crate::channel::ChannelName;
use crate::clients::Registration;
use crate::hub::SubscriberId;
use crate::outbox::{Item, Outbox};
use crate::protocol::codes::{ClientError, Disconnect, UNSUBSCRIBE_EXPIRED, UNSUBSCRIBE_SERVER};
use crate::protocol::format::{Format, ReplyBody};

/// How long after a token's `exp` the edge waits for its refresh before
/// ending the connection (3005) or the subscription (2501). The SDKs ask
/// for a new token only when the announced `ttl` has run out, so without
/// it every refresh would race the deadline.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(3);

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
    /// Channels this connection subscribed to, with the `exp` (Unix
    /// seconds) of the subscription token that allowed it, if any.
    pub subscriptions: HashMap<ChannelName, Option<i64>>,
    /// The wire format of replies and pushes.
    pub format: Format,
    /// A connect was answered with an error (101, 109).
    pub connect_refused: bool,
    /// Subscriptions allowed by a subscription token rather than the
    /// connection token's capabilities (a `refresh` does not re-check them).
    pub token_subscriptions: HashSet<ChannelName>,
    budget: CommandBudget,
    cluster_calls: Arc<Semaphore>,
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
        format: Format,
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
        let limits = &edge.settings.limits;
        let budget = CommandBudget::new(limits.command_rate, limits.command_burst, Instant::now());
        let cluster_calls = Arc::new(Semaphore::new(limits.cluster_calls));
        Self {
            edge,
            outbox,
            registration,
            client_id,
            http_token,
            identity: None,
            subscriptions: HashMap::new(),
            format,
            connect_refused: false,
            token_subscriptions: HashSet::new(),
            budget,
            cluster_calls,
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

    /// The channel a command names, when it is valid and the connection's
    /// capabilities allow `action` on it; otherwise the error reply is sent
    /// (and a refusal counted) and `None` returned.
    pub fn permitted_channel(&self, id: u32, name: &str, action: Action) -> Option<ChannelName> {
        let Ok(channel) = ChannelName::new(name) else {
            self.error(id, &ClientError::UNKNOWN_CHANNEL);
            return None;
        };
        if !self.allows(action, &channel) {
            metrics::counter!("herald_edge_auth_failures_total", "reason" => "forbidden")
                .increment(1);
            self.error(id, &ClientError::PERMISSION_DENIED);
            return None;
        }
        Some(channel)
    }

    /// Spend one command of the connection's budget; over it, the command
    /// is answered with 111 and `false` returned.
    pub fn within_budget(&mut self, id: u32) -> bool {
        if self.budget.take(Instant::now()) {
            return true;
        }
        metrics::counter!("herald_edge_commands_throttled_total", "reason" => "rate").increment(1);
        self.error(id, &ClientError::TOO_MANY_REQUESTS);
        false
    }

    /// A slot for one command that waits on the cluster (publish, history,
    /// presence), held by its task until answered; when the connection
    /// already has `--client-cluster-calls` in flight, the command is
    /// answered with 111 and `None` returned.
    pub fn cluster_call(&self, id: u32) -> Option<OwnedSemaphorePermit> {
        match self.cluster_calls.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                metrics::counter!("herald_edge_commands_throttled_total", "reason" => "cluster_calls")
                    .increment(1);
                self.error(id, &ClientError::TOO_MANY_REQUESTS);
                None
            }
        }
    }

    /// End every subscription the connection's (new) capabilities no
    /// longer allow, after a `refresh` narrowed them: unsubscribe push 2000,
    /// after which the SDK does not subscribe again. Subscriptions allowed
    /// by a subscription token stand on that token and are kept.
    pub fn revoke_disallowed(&mut self) {
        let revoked: Vec<ChannelName> = self
            .subscriptions
            .keys()
            .filter(|c| !self.token_subscriptions.contains(*c))
            .filter(|c| !self.allows(Action::Subscribe, c))
            .cloned()
            .collect();
        for channel in revoked {
            metrics::counter!("herald_edge_subscriptions_revoked_total").increment(1);
            self.forget(&channel);
            self.send(self.format.unsubscribe_push(
                &channel,
                UNSUBSCRIBE_SERVER,
                "permission revoked",
            ));
        }
    }

    /// Queue bytes for the client.
    pub fn send(&self, b: Bytes) {
        let _ = self.outbox.push(Item::Frame(b));
    }

    /// Queue a reply.
    pub fn reply(&self, id: u32, body: impl ReplyBody) {
        if id > 0 {
            self.send(self.format.reply(id, body));
        }
    }

    /// Queue an error reply.
    pub fn error(&self, id: u32, e: &ClientError) {
        self.send(self.format.error(id, e));
    }

    /// Seconds left on `channel`'s subscription token, when it expires.
    pub fn subscription_ttl(&self, channel: &ChannelName) -> Option<u32> {
        self.subscriptions
            .get(channel)
            .copied()
            .flatten()
            .map(crate::protocol::cmd::connect::ttl)
    }

    /// The earliest subscription-token `exp` (Unix seconds).
    pub fn next_subscription_expiry(&self) -> Option<i64> {
        self.subscriptions.values().flatten().min().copied()
    }

    /// End every subscription whose token expired more than
    /// [`EXPIRY_GRACE`] before `now` without a `sub_refresh`: the client
    /// gets the unsubscribe push 2501 and its SDK subscribes again with a
    /// new token.
    pub fn expire_subscriptions(&mut self, now: i64) {
        let grace = EXPIRY_GRACE.as_secs() as i64;
        let expired: Vec<ChannelName> = self
            .subscriptions
            .iter()
            .filter(|(_, exp)| exp.is_some_and(|e| e + grace <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            metrics::counter!("herald_edge_subscriptions_expired_total").increment(1);
            self.forget(&channel);
            self.send(self.format.unsubscribe_push(
                &channel,
                UNSUBSCRIBE_EXPIRED,
                "subscription expired",
            ));
        }
    }

    /// Count an authentication failure.
    pub fn auth_failed(&self, e: &AuthError) {
        metrics::counter!("herald_edge_auth_failures_total", "reason" => e.reason()).increment(1);
    }

    /// Capabilities of anonymous clients.
    pub fn anonymous_caps(&self) -> Capabilities {
        anonymous_caps(&self.edge.settings)
    }

    /// Forget a subscription (it ended upstream).
    pub fn forget(&mut self, channel: &ChannelName) {
        self.token_subscriptions.remove(channel);
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
        self.token_subscriptions.remove(channel);
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

/// What anonymous clients may do: subscribe to `--anonymous-channels`
/// (none by default), and read their history with `--anonymous-history`;
/// never publish or query presence.
pub fn anonymous_caps(settings: &crate::config::Settings) -> Capabilities {
    let actions: &[Action] = if settings.anonymous_history {
        &[Action::Subscribe, Action::History]
    } else {
        &[Action::Subscribe]
    };
    Capabilities::wildcard(&settings.anonymous_channels, actions)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
