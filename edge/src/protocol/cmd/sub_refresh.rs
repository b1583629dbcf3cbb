//! `sub_refresh`: a new subscription token for a subscribed channel. It
//! must verify and be for this channel and user; the reply carries its
//! expiry.

use serde::{Deserialize, Serialize};

use super::connect::ttl;
use crate::auth::AuthError;
use crate::channel::ChannelName;
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};

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
                let reply = Reply {
                    expires: g.expires_at.is_some(),
                    ttl: g.expires_at.map(ttl),
                };
                client.reply(id, "sub_refresh", &reply);
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
