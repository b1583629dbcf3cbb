//! `publish`: a client publishes to a channel through the node's `Publish`
//! (same validation, same durability as the server API). Allowed only when
//! the token has the `pub` capability on the channel and the channel's
//! namespace has `allow_client_publish`. The publication carries the
//! publisher's user and client id (shown to subscribers as `info`).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::Action;
use crate::channel::ChannelName;
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::frame;
use crate::protocol::publication::{CLIENT_HEADER, USER_HEADER};
use crate::upstream::error_for_status;

/// `publish` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
    /// The payload: any JSON value, stored as `application/json`.
    pub data: Box<RawValue>,
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        let user = client.connected()?.user.clone();
        let Ok(channel) = ChannelName::new(&self.channel) else {
            client.error(id, &ClientError::UNKNOWN_CHANNEL);
            return Ok(());
        };
        if !client.allows(Action::Publish, &channel) {
            metrics::counter!("herald_edge_auth_failures_total", "reason" => "forbidden")
                .increment(1);
            client.error(id, &ClientError::PERMISSION_DENIED);
            return Ok(());
        }
        let upstream = client.edge.upstream.clone();
        let outbox = client.outbox.clone();
        let client_id = client.client_id.clone();
        let data = self.data.get().as_bytes().to_vec();
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
                    data: data.into(),
                    content_type: "application/json".into(),
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
                Ok(()) => frame::reply(id, "publish", &serde_json::json!({})),
                Err(e) => frame::error(id, &e),
            };
            let _ = outbox.push(crate::outbox::Item::Frame(bytes));
        });
        Ok(())
    }
}
