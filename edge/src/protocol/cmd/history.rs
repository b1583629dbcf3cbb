//! `history`: read a channel's retained publications through the node's
//! `History`. Needs the `hst` capability. `limit` 0 returns only the
//! stream position (Centrifugo semantics), a negative limit the server
//! maximum; a `since` outside the retained window is error 112.

use serde::Deserialize;

use crate::auth::Action;
use crate::channel::{Epoch, Offset, Position};
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::publication::encode;
use crate::upstream::error_for_status;

/// `since` of a history request.
#[derive(Debug, Deserialize)]
pub struct Since {
    /// Offset the reader has.
    #[serde(default)]
    pub offset: u64,
    /// Its epoch.
    #[serde(default)]
    pub epoch: String,
}

/// `history` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
    /// How many (0: none, only the position; negative: server maximum).
    #[serde(default)]
    pub limit: i32,
    /// Publications after this position.
    #[serde(default)]
    pub since: Option<Since>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// 112: the `since` position is no longer in history.
const UNRECOVERABLE: ClientError = ClientError {
    code: 112,
    message: std::borrow::Cow::Borrowed("unrecoverable position"),
    temporary: false,
};

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        client.connected()?;
        let Some(channel) = client.permitted_channel(id, &self.channel, Action::History) else {
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
                let mut publisher = upstream.publisher()?;
                let has_since = self.since.is_some();
                let req = herald_proto::v1::HistoryRequest {
                    channel: channel.to_string(),
                    since: self.since.map(|s| herald_proto::v1::StreamPosition {
                        offset: s.offset,
                        epoch: s.epoch,
                    }),
                    limit: match self.limit {
                        0 => 1,
                        n if n < 0 => 0,
                        n => n as u32,
                    },
                    reverse: self.reverse,
                    linearizable: false,
                };
                let r = publisher
                    .history(req)
                    .await
                    .map_err(|s| error_for_status(&s))?
                    .into_inner();
                if has_since && !r.in_window {
                    return Err(UNRECOVERABLE);
                }
                let pubs: Vec<_> = if self.limit == 0 {
                    vec![]
                } else {
                    r.publications
                        .iter()
                        .map(|p| encode(channel.clone(), p))
                        .collect()
                };
                let position = Position {
                    epoch: Epoch::new(&r.epoch),
                    offset: Offset(r.offset),
                };
                Ok(format.history_reply(id, &pubs, &position))
            };
            let bytes = answer.await.unwrap_or_else(|e| format.error(id, &e));
            let _ = outbox.push(crate::outbox::Item::Frame(bytes));
            drop(permit);
        });
        Ok(())
    }
}
