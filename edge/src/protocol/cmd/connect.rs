//! `connect`: authenticate the connection. The token comes from the
//! command, else from the HTTP request (query `token`, cookie,
//! `Authorization: Bearer`). Missing → error 101; expired → error 109
//! (the SDK fetches a new token); malformed or wrong key → disconnect 3500.

use herald_proto::client_v2 as pb;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::{AuthError, Identity};
use crate::client::{Client, unix_now};
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::ReplyBody;

/// `connect` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Connection JWT.
    #[serde(default)]
    pub token: String,
    /// Custom data (accepted, unused).
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// Client SDK name.
    #[serde(default)]
    pub name: String,
    /// Client SDK version.
    #[serde(default)]
    pub version: String,
}

#[derive(Serialize)]
struct Reply<'a> {
    client: &'a str,
    version: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    expires: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    ping: u64,
    pong: bool,
}

impl ReplyBody for Reply<'_> {
    fn method(&self) -> &'static str {
        "connect"
    }

    fn into_proto(self, reply: &mut pb::Reply) {
        reply.connect = Some(pb::ConnectResult {
            client: self.client.to_string(),
            version: self.version.to_string(),
            expires: self.expires,
            ttl: self.ttl.unwrap_or(0),
            ping: self.ping as u32,
            pong: self.pong,
        });
    }
}

/// Seconds until `exp`, at least 1.
pub fn ttl(exp: i64) -> u32 {
    (exp - unix_now()).clamp(1, i64::from(u32::MAX)) as u32
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        if client.identity.is_some() {
            return Err(Disconnect::BAD_REQUEST);
        }
        let token = if self.token.is_empty() {
            client.http_token.clone().unwrap_or_default()
        } else {
            self.token
        };
        let identity = if token.is_empty() {
            if !client.edge.settings.allow_anonymous {
                client.auth_failed(&AuthError::Missing);
                client.connect_refused = true;
                client.error(id, &ClientError::UNAUTHORIZED);
                return Ok(());
            }
            Identity {
                user: String::new(),
                expires_at: None,
                caps: client.anonymous_caps(),
            }
        } else {
            match client.edge.settings.verifier.connection(&token) {
                Ok(i) => i,
                Err(e) => {
                    client.auth_failed(&e);
                    return match e {
                        AuthError::Expired => {
                            client.connect_refused = true;
                            client.error(id, &ClientError::TOKEN_EXPIRED);
                            Ok(())
                        }
                        AuthError::Missing => {
                            client.connect_refused = true;
                            client.error(id, &ClientError::UNAUTHORIZED);
                            Ok(())
                        }
                        _ => Err(Disconnect::INVALID_TOKEN),
                    };
                }
            }
        };
        client
            .edge
            .clients
            .bind_user(client.registration(), &identity.user)?;
        let reply = Reply {
            client: &client.client_id,
            version: concat!("herald ", env!("CARGO_PKG_VERSION")),
            expires: identity.expires_at.is_some(),
            ttl: identity.expires_at.map(ttl),
            ping: client.edge.settings.limits.ping_interval.as_secs(),
            pong: true,
        };
        client.reply(id, reply);
        client.identity = Some(identity);
        Ok(())
    }
}
