//! `publish`: a client publishes to a channel through the node's `Publish`
//! (same validation, same durability as the server API). Allowed only when
//! the token has the `pub` capability on the channel and the channel's
//! namespace has `allow_client_publish`. The publication carries the
//! publisher's user and client id (shown to subscribers as `info`).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::auth::Action;
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::EmptyReply;
use crate::protocol::publication::{CLIENT_HEADER, USER_HEADER};
use crate::upstream::error_for_status;

/// Content type of JSON payloads.
const JSON: &str = "application/json";
/// Content type of Protobuf-client payloads that are not JSON.
const BINARY: &str = "application/octet-stream";

/// `publish` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
    /// The payload: from JSON clients any JSON value (its text), from
    /// Protobuf clients any bytes.
    #[serde(deserialize_with = "json_text")]
    pub data: Bytes,
    /// What the payload is stored as.
    #[serde(skip, default = "json_type")]
    pub content_type: &'static str,
}

fn json_type() -> &'static str {
    JSON
}

fn json_text<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
}

impl Request {
    /// A publish from a Protobuf client: stored as `application/json` when
    /// the bytes are JSON (so JSON subscribers see the value itself), else
    /// as `application/octet-stream`.
    pub fn binary(channel: String, data: Bytes) -> Self {
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok();
        Self {
            channel,
            data,
            content_type: if json { JSON } else { BINARY },
        }
    }
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        let user = client.connected()?.user.clone();
        let Some(channel) = client.permitted_channel(id, &self.channel, Action::Publish) else {
            return Ok(());
        };
        let Some(permit) = client.cluster_call(id) else {
            return Ok(());
        };
        let upstream = client.edge.upstream.clone();
        let outbox = client.outbox.clone();
        let client_id = client.client_id.clone();
        let format = client.format;
        let (data, content_type) = (self.data, self.content_type);
        tokio::spawn(async move {
            let answer = async {
                if !upstream.allows_client_publish(&channel).await? {
                    return Err(ClientError::PERMISSION_DENIED
                        .with_message("namespace does not allow client publish"));
                }
                let mut publisher = upstream.publisher()?;
                let req = herald_proto::v1::PublishRequest {
                    channel: channel.to_string(),
                    event_type: String::new(),
                    data,
                    content_type: content_type.into(),
                    idempotency_key: String::new(),
                    headers: HashMap::from([
                        (USER_HEADER.to_string(), user),
                        (CLIENT_HEADER.to_string(), client_id),
                    ]),
                };
                publisher
                    .publish(req)
                    .await
                    .map_err(|s| error_for_status(&s))?;
                Ok(())
            };
            let bytes = match answer.await {
                Ok(()) => format.reply(id, EmptyReply::Publish),
                Err(e) => format.error(id, &e),
            };
            let _ = outbox.push(crate::outbox::Item::Frame(bytes));
            drop(permit);
        });
        Ok(())
    }
}
