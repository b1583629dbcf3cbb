//! `presence` and `presence_stats`: the clients subscribed to a channel on
//! every edge of the cluster, through the node's `Presence` /
//! `PresenceStats`. Needs the `prs` capability (else 103) and a namespace
//! with `presence = true` (else 108, not available).

use herald_proto::client_v2 as pb;
use serde::{Deserialize, Serialize};

use crate::auth::Action;
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::ReplyBody;
use crate::upstream::error_for_status;

/// Hang guard for the cluster-wide query.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `presence` / `presence_stats` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client, stats: bool) -> Result<(), Disconnect> {
        client.connected()?;
        let Some(channel) = client.permitted_channel(id, &self.channel, Action::Presence) else {
            return Ok(());
        };
        let Some(permit) = client.cluster_call(id) else {
            return Ok(());
        };
        let upstream = client.edge.upstream.clone();
        let outbox = client.outbox.clone();
        let format = client.format;
        tokio::spawn(async move {
            let answer = async {
                if !upstream.presence_enabled(&channel).await? {
                    return Err(ClientError::NOT_AVAILABLE
                        .with_message("presence is not enabled for this namespace"));
                }
                let mut publisher = upstream.publisher()?;
                let req = herald_proto::v1::PresenceRequest {
                    channel: channel.to_string(),
                };
                let timeout = |_| ClientError::INTERNAL.temporary();
                if stats {
                    let r = tokio::time::timeout(CALL_TIMEOUT, publisher.presence_stats(req))
                        .await
                        .map_err(timeout)?
                        .map_err(|s| error_for_status(&s))?
                        .into_inner();
                    let stats = StatsReply {
                        num_clients: r.num_clients,
                        num_users: r.num_users,
                    };
                    Ok(format.reply(id, stats))
                } else {
                    let r = tokio::time::timeout(CALL_TIMEOUT, publisher.presence(req))
                        .await
                        .map_err(timeout)?
                        .map_err(|s| error_for_status(&s))?
                        .into_inner();
                    Ok(format.reply(id, PresenceReply(r.clients)))
                }
            };
            let bytes = answer.await.unwrap_or_else(|e| format.error(id, &e));
            let _ = outbox.push(crate::outbox::Item::Frame(bytes));
            drop(permit);
        });
        Ok(())
    }
}

/// `presence_stats` result.
#[derive(Serialize)]
struct StatsReply {
    num_clients: u32,
    num_users: u32,
}

impl ReplyBody for StatsReply {
    fn method(&self) -> &'static str {
        "presence_stats"
    }

    fn into_proto(self, reply: &mut pb::Reply) {
        reply.presence_stats = Some(pb::PresenceStatsResult {
            num_clients: self.num_clients,
            num_users: self.num_users,
        });
    }
}

/// `presence` result: `{"presence": {<client id>: <ClientInfo>}}`.
struct PresenceReply(Vec<herald_proto::v1::ClientInfo>);

impl Serialize for PresenceReply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let presence: serde_json::Map<String, serde_json::Value> =
            self.0.iter().map(|c| (c.client.clone(), info(c))).collect();
        serde_json::json!({ "presence": presence }).serialize(s)
    }
}

impl ReplyBody for PresenceReply {
    fn method(&self) -> &'static str {
        "presence"
    }

    fn into_proto(self, reply: &mut pb::Reply) {
        let presence = self
            .0
            .into_iter()
            .map(|c| {
                let info = pb::ClientInfo {
                    user: c.user,
                    client: c.client.clone(),
                    conn_info: c.conn_info,
                    chan_info: c.chan_info,
                };
                (c.client, info)
            })
            .collect();
        reply.presence = Some(pb::PresenceResult { presence });
    }
}

/// Centrifugo's `ClientInfo` JSON.
fn info(c: &herald_proto::v1::ClientInfo) -> serde_json::Value {
    let mut v = serde_json::json!({ "client": c.client, "user": c.user });
    for (k, raw) in [("conn_info", &c.conn_info), ("chan_info", &c.chan_info)] {
        if let Ok(j) = serde_json::from_slice::<serde_json::Value>(raw) {
            v[k] = j;
        }
    }
    v
}
