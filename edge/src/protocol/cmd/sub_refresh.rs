//! `sub_refresh`: a new subscription token for a subscribed channel. It
//! must verify and be for this channel and user; its expiry replaces the
//! subscription's (enforced by the connection's task, see
//! [`Client::expire_subscriptions`]) and the reply carries it.

use herald_proto::client_v2 as pb;
use serde::{Deserialize, Serialize};

use super::connect::ttl;
use crate::auth::AuthError;
use crate::channel::ChannelName;
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::ReplyBody;

/// `sub_refresh` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
    /// The new subscription token.
    #[serde(default)]
    pub token: String,
}

#[derive(Serialize)]
struct Reply {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    expires: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
}

impl ReplyBody for Reply {
    fn method(&self) -> &'static str {
        "sub_refresh"
    }

    fn into_proto(self, reply: &mut pb::Reply) {
        reply.sub_refresh = Some(pb::SubRefreshResult {
            expires: self.expires,
            ttl: self.ttl.unwrap_or(0),
        });
    }
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        let user = client.connected()?.user.clone();
        let Ok(channel) = ChannelName::new(&self.channel) else {
            client.error(id, &ClientError::UNKNOWN_CHANNEL);
            return Ok(());
        };
        if !client.subscriptions.contains_key(&channel) {
            client.error(id, &ClientError::BAD_REQUEST.with_message("not subscribed"));
            return Ok(());
        }
        match client.edge.settings.verifier.subscription(&self.token) {
            Ok(g) if g.channel == channel.as_str() && g.user == user => {
                client.subscriptions.insert(channel, g.expires_at);
                let reply = Reply {
                    expires: g.expires_at.is_some(),
                    ttl: g.expires_at.map(ttl),
                };
                client.reply(id, reply);
            }
            Ok(_) => client.error(id, &ClientError::PERMISSION_DENIED),
            Err(AuthError::Expired) => client.error(id, &ClientError::TOKEN_EXPIRED),
            Err(e) => {
                client.auth_failed(&e);
                client.error(id, &ClientError::PERMISSION_DENIED);
            }
        }
        Ok(())
    }
}
