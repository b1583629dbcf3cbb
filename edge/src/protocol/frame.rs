//! Framing: a client message is one or more JSON commands separated by
//! newlines; the edge answers with one JSON object per reply or push.
//!
//! Parsing is total: any input yields commands or a [`FrameError`] (the
//! connection is then closed with 3501), never a panic. Each command's
//! body is parsed by its own module in [`super::cmd`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::cmd::Command;
use super::codes::ClientError;
use super::publication::write_str;
use crate::channel::{ChannelName, Position};
use crate::hub::SubscribeDone;

/// A message that is not a valid command sequence.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A line is not a JSON object of the command shape.
    #[error("invalid command JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A command names more than one method.
    #[error("command with more than one method")]
    Ambiguous,
}

/// One command with its id.
#[derive(Debug)]
pub struct Framed {
    /// Id for the reply; 0 for commands that expect none.
    pub id: u32,
    /// The command.
    pub command: Command,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(default)]
    id: u32,
    #[serde(borrow, default)]
    connect: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unsubscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    publish: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence_stats: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ping: Option<&'a RawValue>,
    #[serde(borrow, default)]
    send: Option<&'a RawValue>,
    #[serde(borrow, default)]
    rpc: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refresh: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sub_refresh: Option<&'a RawValue>,
}

fn body<'a, T: Deserialize<'a>>(v: &'a RawValue) -> Result<T, FrameError> {
    // `null` bodies count as empty objects.
    if v.get() == "null" {
        return Ok(serde_json::from_str("{}")?);
    }
    Ok(serde_json::from_str(v.get())?)
}

fn one(raw: &Raw<'_>) -> Result<Command, FrameError> {
    use super::cmd::*;
    let mut found: Vec<Command> = Vec::with_capacity(1);
    if let Some(v) = raw.connect {
        found.push(Command::Connect(body::<connect::Request>(v)?));
    }
    if let Some(v) = raw.subscribe {
        found.push(Command::Subscribe(body::<subscribe::Request>(v)?));
    }
    if let Some(v) = raw.unsubscribe {
        found.push(Command::Unsubscribe(body::<unsubscribe::Request>(v)?));
    }
    if let Some(v) = raw.publish {
        found.push(Command::Publish(body::<publish::Request>(v)?));
    }
    if let Some(v) = raw.presence {
        found.push(Command::Presence(body::<presence::Request>(v)?));
    }
    if let Some(v) = raw.presence_stats {
        found.push(Command::PresenceStats(body::<presence::Request>(v)?));
    }
    if let Some(v) = raw.history {
        found.push(Command::History(body::<history::Request>(v)?));
    }
    if raw.ping.is_some() {
        found.push(Command::Ping);
    }
    if raw.send.is_some() {
        found.push(Command::Send);
    }
    if let Some(v) = raw.rpc {
        found.push(Command::Rpc(body::<rpc::Request>(v)?));
    }
    if let Some(v) = raw.refresh {
        found.push(Command::Refresh(body::<refresh::Request>(v)?));
    }
    if let Some(v) = raw.sub_refresh {
        found.push(Command::SubRefresh(body::<sub_refresh::Request>(v)?));
    }
    match found.len() {
        0 if raw.id == 0 => Ok(Command::Pong),
        0 => Ok(Command::Unknown),
        1 => Ok(found.pop().unwrap_or(Command::Unknown)),
        _ => Err(FrameError::Ambiguous),
    }
}

/// Parse one text message into its commands.
pub fn parse(text: &str) -> Result<Vec<Framed>, FrameError> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let raw: Raw<'_> = serde_json::from_str(line)?;
        let command = one(&raw)?;
        out.push(Framed {
            id: raw.id,
            command,
        });
    }
    Ok(out)
}

/// `{}`: the server's ping (and the client's pong).
pub const PING: &str = "{}";

/// `{"id":id,"<method>":<body>}`.
pub fn reply(id: u32, method: &str, body: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b"\":");
    let _ = serde_json::to_writer(&mut out, body);
    out.push(b'}');
    Bytes::from(out)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u32,
    message: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    temporary: bool,
}

/// `{"id":id,"error":{"code":..,"message":..}}`.
pub fn error(id: u32, e: &ClientError) -> Bytes {
    reply(
        id,
        "error",
        &ErrorBody {
            code: e.code,
            message: &e.message,
            temporary: e.temporary,
        },
    )
}

/// Append `[P1,P2,...]` from encoded publications.
pub fn write_publications<'a>(
    out: &mut Vec<u8>,
    pubs: impl Iterator<Item = &'a crate::hub::Encoded>,
) {
    out.push(b'[');
    for (i, p) in pubs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&p.pub_json());
    }
    out.push(b']');
}

/// The reply to a subscribe, with its recovered publications; `expires`
/// and `ttl` when the subscription token expires in `ttl` seconds.
pub fn subscribe_reply(d: &SubscribeDone, ttl: Option<u32>) -> Bytes {
    let size: usize = d.publications.iter().map(|p| p.ws_push.len()).sum();
    let mut out = Vec::with_capacity(160 + size);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(d.reply_id.to_string().as_bytes());
    out.extend_from_slice(b",\"subscribe\":{");
    if let Some(ttl) = ttl {
        out.extend_from_slice(b"\"expires\":true,\"ttl\":");
        out.extend_from_slice(ttl.to_string().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"recoverable\":true,\"positioned\":true,\"epoch\":");
    write_str(&mut out, d.position.epoch.as_str());
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(d.position.offset.0.to_string().as_bytes());
    if d.was_recovering {
        out.extend_from_slice(b",\"was_recovering\":true");
    }
    if d.recovered {
        out.extend_from_slice(b",\"recovered\":true");
    }
    if !d.publications.is_empty() {
        out.extend_from_slice(b",\"publications\":");
        write_publications(&mut out, d.publications.iter().map(|p| &**p));
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The reply to a history command: `publications`, then the channel's
/// `epoch` and newest `offset`.
pub fn history_reply(id: u32, pubs: &[crate::hub::Encoded], position: &Position) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"history\":{\"publications\":");
    write_publications(&mut out, pubs.iter());
    out.extend_from_slice(b",\"epoch\":");
    write_str(&mut out, position.epoch.as_str());
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(position.offset.0.to_string().as_bytes());
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// `{"push":{"channel":C,"unsubscribe":{"code":..,"reason":..}}}`.
pub fn unsubscribe_push(channel: &ChannelName, code: u32, reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"push\":{\"channel\":");
    write_str(&mut out, channel.as_str());
    out.extend_from_slice(b",\"unsubscribe\":{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(b",\"reason\":");
    write_str(&mut out, reason);
    out.extend_from_slice(b"}}}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_commands_per_message() {
        let f = parse("{\"id\":1,\"connect\":{\"token\":\"t\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"a\",\"recover\":true,\"offset\":3,\"epoch\":\"e\"}}\n{}\n").unwrap();
        assert_eq!(f.len(), 3);
        assert!(matches!(f[0].command, Command::Connect(_)));
        assert!(matches!(&f[1].command, Command::Subscribe(s) if s.recover && s.offset == 3));
        assert!(matches!(f[2].command, Command::Pong));
    }

    #[test]
    fn bad_input_is_an_error_or_unknown_never_a_panic() {
        assert!(parse("{not json").is_err());
        assert!(parse("[1,2]").is_err());
        assert!(parse("{\"id\":1,\"subscribe\":{\"channel\":5}}").is_err());
        assert!(parse("{\"id\":1,\"connect\":{},\"subscribe\":{}}").is_err());
        assert!(matches!(
            parse("{\"id\":3,\"frobnicate\":{}}").unwrap()[0].command,
            Command::Unknown
        ));
        for s in [
            "",
            "\n\n",
            "null",
            "{\"id\":-1}",
            "{\"id\":1,\"connect\":null}",
        ] {
            let _ = parse(s);
        }
    }

    #[test]
    fn error_reply_shape() {
        let b = error(4, &ClientError::PERMISSION_DENIED);
        assert_eq!(
            &b[..],
            br#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#
        );
    }

    /// A command line with one random character inserted, removed or
    /// replaced at `at`.
    fn mutate(line: &str, at: usize, op: u8, c: char) -> String {
        let mut chars: Vec<char> = line.chars().collect();
        let i = at % (chars.len() + 1);
        match op % 3 {
            0 => chars.insert(i, c),
            1 if i < chars.len() => {
                chars.remove(i);
            }
            _ if i < chars.len() => chars[i] = c,
            _ => chars.push(c),
        }
        chars.into_iter().collect()
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_errs_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn mutated_commands_parse_or_err_never_panic(
            which in 0usize..4,
            edits in proptest::collection::vec((0usize..200, 0u8..3, proptest::char::any()), 1..6),
        ) {
            let valid = [
                "{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"js\"}}",
                "{\"id\":2,\"subscribe\":{\"channel\":\"chat:a\",\"recover\":true,\"offset\":3,\"epoch\":\"e\"}}",
                "{\"id\":3,\"publish\":{\"channel\":\"chat:a\",\"data\":{\"n\":[1,2,{\"x\":null}]}}}",
                "{\"id\":4,\"history\":{\"channel\":\"a\",\"limit\":-1,\"since\":{\"offset\":1,\"epoch\":\"e\"}}}",
            ];
            let mut line = valid[which].to_string();
            for (at, op, c) in edits {
                line = mutate(&line, at, op, c);
            }
            match parse(&line) {
                Ok(f) => proptest::prop_assert!(f.len() <= line.split('\n').count()),
                Err(FrameError::Json(_) | FrameError::Ambiguous) => {}
            }
        }

        #[test]
        fn subscribe_commands_round_trip(
            id in 1u32..,
            channel in "[a-z0-9:_-]{1,40}",
            offset in proptest::num::u64::ANY,
            epoch in "[a-zA-Z0-9]{0,12}",
        ) {
            let line = serde_json::json!({"id": id, "subscribe": {
                "channel": channel, "recover": true, "offset": offset, "epoch": epoch}})
                .to_string();
            let f = parse(&line).unwrap();
            proptest::prop_assert_eq!(f.len(), 1);
            proptest::prop_assert_eq!(f[0].id, id);
            let Command::Subscribe(s) = &f[0].command else {
                return Err(proptest::test_runner::TestCaseError::fail("not a subscribe"));
            };
            proptest::prop_assert_eq!(&s.channel, &channel);
            proptest::prop_assert_eq!(s.offset, offset);
            proptest::prop_assert_eq!(&s.epoch, &epoch);
        }
    }
}
