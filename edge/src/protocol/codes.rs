//! Every error and disconnect code a client can see, with the meaning
//! documented in docs/protocol.md. Codes follow the Centrifugo client
//! protocol so existing SDKs react to them as designed: errors below 100
//! and `temporary` errors are retried, disconnect codes 3000..3499 (and
//! 4000..4499) reconnect, 3500..3999 (and 4500..4999) do not.

use std::borrow::Cow;

/// An error reply to one command; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Stable code.
    pub code: u32,
    /// Human-readable message.
    pub message: Cow<'static, str>,
    /// The client should retry the command later.
    pub temporary: bool,
}

const fn e(code: u32, message: &'static str) -> ClientError {
    ClientError {
        code,
        message: Cow::Borrowed(message),
        temporary: false,
    }
}

impl ClientError {
    /// 100: something failed on the edge or upstream.
    pub const INTERNAL: ClientError = e(100, "internal server error");
    /// 101: no token (and anonymous access is off).
    pub const UNAUTHORIZED: ClientError = e(101, "unauthorized");
    /// 102: the channel name is invalid or its namespace unknown.
    pub const UNKNOWN_CHANNEL: ClientError = e(102, "unknown channel");
    /// 103: the token does not allow this on this channel.
    pub const PERMISSION_DENIED: ClientError = e(103, "permission denied");
    /// 104: the command is not one Herald supports.
    pub const METHOD_NOT_FOUND: ClientError = e(104, "method not found");
    /// 105: subscribe to a channel already subscribed on this connection.
    pub const ALREADY_SUBSCRIBED: ClientError = e(105, "already subscribed");
    /// 106: a per-connection limit was reached.
    pub const LIMIT_EXCEEDED: ClientError = e(106, "limit exceeded");
    /// 107: the command's fields are invalid.
    pub const BAD_REQUEST: ClientError = e(107, "bad request");
    /// 108: the feature is not available (e.g. presence).
    pub const NOT_AVAILABLE: ClientError = e(108, "not available");
    /// 109: the token has expired; get a new one.
    pub const TOKEN_EXPIRED: ClientError = e(109, "token expired");
    /// 111: too many requests.
    pub const TOO_MANY_REQUESTS: ClientError = e(111, "too many requests");

    /// Same error with a more specific message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// Same error, marked as worth retrying.
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }
}

/// A reason to close the connection, sent as the WebSocket close code and
/// reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// Close code.
    pub code: u16,
    /// Close reason (short, ASCII).
    pub reason: &'static str,
}

const fn d(code: u16, reason: &'static str) -> Disconnect {
    Disconnect { code, reason }
}

impl Disconnect {
    /// 3001: the edge is shutting down; reconnect (to another edge).
    pub const SHUTDOWN: Disconnect = d(3001, "shutdown");
    /// 3004: internal error; reconnect.
    pub const SERVER_ERROR: Disconnect = d(3004, "internal server error");
    /// 3005: the connection token expired and was not refreshed; reconnect
    /// with a new token.
    pub const EXPIRED: Disconnect = d(3005, "expired");
    /// 3008: the client did not read fast enough; reconnect and recover.
    pub const SLOW: Disconnect = d(3008, "slow");
    /// 3012: no pong to the server's ping in time; reconnect.
    pub const NO_PONG: Disconnect = d(3012, "no pong");
    /// 3500: the token is malformed or its signature does not verify.
    pub const INVALID_TOKEN: Disconnect = d(3500, "invalid token");
    /// 3501: malformed frame, command before connect, or a second connect.
    pub const BAD_REQUEST: Disconnect = d(3501, "bad request");
    /// 3502: no connect command within the connect timeout.
    pub const STALE: Disconnect = d(3502, "stale");
    /// 3503: forced disconnect; do not reconnect.
    pub const FORCE_NO_RECONNECT: Disconnect = d(3503, "force disconnect");
    /// 3504: connection limit (per edge or per user) reached.
    pub const CONNECTION_LIMIT: Disconnect = d(3504, "connection limit");
    /// 3506: binary frame on a JSON connection, or an unsupported
    /// subprotocol.
    pub const INAPPROPRIATE_PROTOCOL: Disconnect = d(3506, "inappropriate protocol");
    /// 1009: a message larger than the edge's limit.
    pub const MESSAGE_TOO_BIG: Disconnect = d(1009, "message too big");
}

/// Unsubscribe push code: the server ended the subscription for good (a
/// `refresh` took away the capability that allowed it); the SDK does not
/// subscribe again.
pub const UNSUBSCRIBE_SERVER: u32 = 2000;

/// Unsubscribe push code: the edge lost continuity of the channel (its
/// history was lost upstream); the SDK resubscribes and recovers.
pub const UNSUBSCRIBE_INSUFFICIENT_STATE: u32 = 2500;

/// Unsubscribe push code: the subscription token expired and was not
/// refreshed with `sub_refresh`; the SDK subscribes again with a new token.
pub const UNSUBSCRIBE_EXPIRED: u32 = 2501;
