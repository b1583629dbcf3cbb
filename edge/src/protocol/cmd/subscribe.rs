//! `subscribe`: join a channel, optionally recovering from `(epoch,
//! offset)`. Allowed by the connection token's `sub` capability or by a
//! subscription token for exactly this channel and user. The reply (with
//! any recovered publications) is queued by the hub ahead of the channel's
//! live publications; when the subscription token has `exp`, the reply
//! carries `expires` and `ttl` and the subscription ends (unsubscribe push
//! 2501) unless `sub_refresh` extends it in time.

use serde::Deserialize;

use crate::auth::{Action, AuthError};
use crate::channel::{ChannelName, Epoch, Offset, Position};
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};

/// `subscribe` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
    /// Subscription token (private channels).
    #[serde(default)]
    pub token: String,
    /// Recover from `epoch` / `offset`.
    #[serde(default)]
    pub recover: bool,
    /// Epoch of the position to recover from ("" = the current one).
    #[serde(default)]
    pub epoch: String,
    /// Last offset the client has.
    #[serde(default)]
    pub offset: u64,
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        let user = client.connected()?.user.clone();
        let Ok(channel) = ChannelName::new(&self.channel) else {
            client.error(id, &ClientError::UNKNOWN_CHANNEL);
            return Ok(());
        };
        if client.subscriptions.contains_key(&channel) {
            client.error(id, &ClientError::ALREADY_SUBSCRIBED);
            return Ok(());
        }
        if client.subscriptions.len() >= client.edge.settings.limits.max_channels_per_connection {
            client.error(id, &ClientError::LIMIT_EXCEEDED);
            return Ok(());
        }
        let mut expires_at = None;
        if !self.token.is_empty() {
            match client.edge.settings.verifier.subscription(&self.token) {
                Ok(g) if g.channel == channel.as_str() && g.user == user => {
                    expires_at = g.expires_at;
                }
                Ok(_) => {
                    metrics::counter!("herald_edge_auth_failures_total", "reason" => "forbidden")
                        .increment(1);
                    client.error(id, &ClientError::PERMISSION_DENIED);
                    return Ok(());
                }
                Err(AuthError::Expired) => {
                    client.auth_failed(&AuthError::Expired);
                    client.error(id, &ClientError::TOKEN_EXPIRED);
                    return Ok(());
                }
                Err(e) => {
                    client.auth_failed(&e);
                    client.error(id, &ClientError::PERMISSION_DENIED);
                    return Ok(());
                }
            }
        } else if !client.allows(Action::Subscribe, &channel) {
            metrics::counter!("herald_edge_auth_failures_total", "reason" => "forbidden")
                .increment(1);
            client.error(id, &ClientError::PERMISSION_DENIED);
            return Ok(());
        }
        let recover = self.recover.then(|| Position {
            epoch: Epoch::new(&self.epoch),
            offset: Offset(self.offset),
        });
        client.subscriptions.insert(channel.clone(), expires_at);
        if !self.token.is_empty() {
            client.token_subscriptions.insert(channel.clone());
        }
        let hub = client.edge.hub.clone();
        hub.subscribe(&channel, client.id(), client.outbox.clone(), id, recover);
        client.join_presence(&channel);
        Ok(())
    }
}
