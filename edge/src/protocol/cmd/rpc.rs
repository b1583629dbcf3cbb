//! `rpc`: Herald has no RPC proxy to an application backend, so every call
//! is answered with error 108 (not available).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::client::Client;
use crate::protocol::codes::{ClientError, Disconnect};

/// `rpc` body.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Method name.
    #[serde(default)]
    pub method: String,
    /// Payload.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

impl Request {
    pub(super) fn apply(self, id: u32, client: &mut Client) -> Result<(), Disconnect> {
        client.error(id, &ClientError::NOT_AVAILABLE);
        Ok(())
    }
}
