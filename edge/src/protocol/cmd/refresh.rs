//! `refresh`: replace the connection token before it expires. The new token
//! must be valid and for the same user; its capabilities and expiry replace
//! the old ones, and every subscription the new capabilities no longer
//! allow ends at once (unsubscribe push 2000), so a narrower token never
//! keeps receiving what it lost. An expired token is error 109, an invalid
//! one or another user's disconnect 3500.

use herald_proto::client_v2 as pb;
use serde::{Deserialize, Serialize};

use super::connect::ttl;
use crate::auth::AuthError;
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::ReplyBody;

/// `refresh` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// The new connection token.
    #[serde(default)]
    pub token: String,
}

#[derive(Serialize)]
struct Reply<'a> {
    client: &'a str,
    version: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    expires: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
}

impl ReplyBody for Reply<'_> {
    fn method(&self) -> &'static str {
        "refresh"
    }

    fn into_proto(self, reply: &mut pb::Reply) {
        reply.refresh = Some(pb::RefreshResult {
            client: self.client.to_string(),
            version: self.version.to_string(),
            expires: self.expires,
            ttl: self.ttl.unwrap_or(0),
        });
    }
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        let user = client.connected()?.user.clone();
        let identity = match client.edge.settings.verifier.connection(&self.token) {
            Ok(i) => i,
            Err(e) => {
                client.auth_failed(&e);
                return match e {
                    AuthError::Expired => {
                        client.error(id, &ClientError::TOKEN_EXPIRED);
                        Ok(())
                    }
                    _ => Err(Disconnect::INVALID_TOKEN),
                };
            }
        };
        if identity.user != user {
            return Err(Disconnect::INVALID_TOKEN);
        }
        let reply = Reply {
            client: &client.client_id,
            version: concat!("herald ", env!("CARGO_PKG_VERSION")),
            expires: identity.expires_at.is_some(),
            ttl: identity.expires_at.map(ttl),
        };
        client.reply(id, reply);
        client.identity = Some(identity);
        client.revoke_disallowed();
        Ok(())
    }
}
