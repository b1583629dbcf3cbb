//! One module per client-protocol command: each defines the command's
//! request body (parsed by [`super::frame`] from JSON or built by
//! [`super::protobuf`]) and how it applies itself to a [`Client`]; its
//! reply is one value that [`super::format`] writes in the client's
//! format. A command answers through the client's outbox; one that
//! needs the cluster (publish, history) does so from its own task, so a
//! slow node never stalls the connection's delivery.

use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::EmptyReply;

pub mod connect;
pub mod history;
pub mod presence;
pub mod publish;
pub mod refresh;
pub mod rpc;
pub mod sub_refresh;
pub mod subscribe;
pub mod unsubscribe;

/// A parsed command.
#[derive(Debug)]
pub enum Command {
    /// `connect`.
    Connect(connect::Request),
    /// `subscribe`.
    Subscribe(subscribe::Request),
    /// `unsubscribe`.
    Unsubscribe(unsubscribe::Request),
    /// `publish`.
    Publish(publish::Request),
    /// `presence`.
    Presence(presence::Request),
    /// `presence_stats`.
    PresenceStats(presence::Request),
    /// `history`.
    History(history::Request),
    /// `ping` (with an id; answered with an empty `ping` result).
    Ping,
    /// `send` (asynchronous message to the server; dropped).
    Send,
    /// `rpc`.
    Rpc(rpc::Request),
    /// `refresh`.
    Refresh(refresh::Request),
    /// `sub_refresh`.
    SubRefresh(sub_refresh::Request),
    /// `{}`: the client's answer to the server's ping.
    Pong,
    /// A command with an id but no method Herald knows.
    Unknown,
}

impl Command {
    /// Carry the command out. `Err` closes the connection with that code.
    pub fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        if client.identity.is_none() && !matches!(self, Command::Connect(_) | Command::Pong) {
            if client.connect_refused {
                // Commands batched behind a refused connect: the SDK is
                // already tearing down; answer, do not disconnect.
                client.error(id, &ClientError::UNAUTHORIZED);
                return Ok(());
            }
            // Anything but connect before connect is a protocol violation.
            return Err(Disconnect::BAD_REQUEST);
        }
        // A pong answers the server's ping and costs nothing; everything
        // else is paid for (crate::budget).
        if !matches!(self, Command::Pong) && !client.within_budget(id) {
            return Ok(());
        }
        match self {
            Command::Connect(r) => r.apply(id, client),
            Command::Subscribe(r) => r.apply(id, client),
            Command::Unsubscribe(r) => r.apply(id, client),
            Command::Publish(r) => r.apply(id, client),
            Command::Presence(r) => r.apply(id, client, false),
            Command::PresenceStats(r) => r.apply(id, client, true),
            Command::History(r) => r.apply(id, client),
            Command::Ping => {
                client.reply(id, EmptyReply::Ping);
                Ok(())
            }
            Command::Send | Command::Pong => Ok(()),
            Command::Rpc(r) => r.apply(id, client),
            Command::Refresh(r) => r.apply(id, client),
            Command::SubRefresh(r) => r.apply(id, client),
            Command::Unknown => {
                client.error(id, &ClientError::METHOD_NOT_FOUND);
                Ok(())
            }
        }
    }
}
