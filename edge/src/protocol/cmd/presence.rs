//! `presence` and `presence_stats`: the cluster keeps no presence yet, so
//! both answer error 108 (not available) to a client allowed to ask (`prs`
//! capability) and 103 to one that is not.

use serde::Deserialize;

use crate::auth::Action;
use crate::channel::ChannelName;
use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};

/// `presence` / `presence_stats` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Channel name.
    pub channel: String,
}

impl Request {
    pub(super) fn apply(
        self,
        id: u32,
        client: &mut Client,
        _stats: bool,
    ) -> Result<(), Disconnect> {
        client.connected()?;
        let Ok(channel) = ChannelName::new(&self.channel) else {
            client.error(id, &ClientError::UNKNOWN_CHANNEL);
            return Ok(());
        };
        if !client.allows(Action::Presence, &channel) {
            client.error(id, &ClientError::PERMISSION_DENIED);
        } else {
            client.error(id, &ClientError::NOT_AVAILABLE);
        }
        Ok(())
    }
}
