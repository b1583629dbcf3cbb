//! `unsubscribe`: leave a channel. Always succeeds; the last local
//! subscriber leaving makes the hub unsubscribe upstream.

use serde::Deserialize;

use crate::channel::ChannelName;
use crate::client::Client;
use crate::protocol::codes::Disconnect;
use crate::protocol::format::EmptyReply;

/// `unsubscribe` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        client.connected()?;
        if let Ok(channel) = ChannelName::new(&self.channel) {
            client.forget(&channel);
        }
        client.reply(id, EmptyReply::Unsubscribe);
        Ok(())
    }
}
