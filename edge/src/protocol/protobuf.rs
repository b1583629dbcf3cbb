//! The Protobuf encoding of the client protocol (the `centrifuge-protobuf`
//! WebSocket subprotocol): binary messages of varint-delimited `Command`s
//! in ([`parse`]), varint-delimited `Reply`s out. The message types are
//! `herald_proto::client_v2`, generated from
//! `proto/centrifugal/client/v2/client.proto`.
//!
//! Commands become the same [`Command`] values the JSON framing produces,
//! so every command behaves identically in both encodings. Publications
//! are encoded once ([`encode`], cached by
//! [`Encoded::proto`](super::publication::Encoded::proto)); replies that
//! embed them (subscribe, history) append the cached bytes as repeated
//! fields instead of encoding them again. Parsing is total: any input
//! yields commands or a [`ProtoError`] (disconnect 3501), never a panic.

use bytes::{Bytes, BytesMut};
use herald_proto::client_v2 as pb;
use herald_proto::v1::Publication;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::cmd::{self, Command};
use super::delimited::{self, DelimitedError};
use super::frame::Framed;
use super::publication::{CLIENT_HEADER, PRESENCE_HEADER, USER_HEADER, is_json_payload, tags};
use crate::channel::ChannelName;

/// A binary message that is not a valid command sequence.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The length prefixes do not cut the message cleanly.
    #[error("bad framing: {0}")]
    Framing(#[from] DelimitedError),
    /// A part is not a `Command`.
    #[error("invalid command: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A command names more than one method.
    #[error("command with more than one method")]
    Ambiguous,
}

/// Parse one binary message into its commands; no part may announce more
/// than `max` bytes.
pub fn parse(message: &Bytes, max: usize) -> Result<Vec<Framed>, ProtoError> {
    delimited::split(message, max)?
        .into_iter()
        .map(|part| {
            let c = pb::Command::decode(part)?;
            Ok(Framed {
                id: c.id,
                command: command(c)?,
            })
        })
        .collect()
}

fn command(c: pb::Command) -> Result<Command, ProtoError> {
    let mut found: Vec<Command> = Vec::with_capacity(1);
    if let Some(r) = c.connect {
        found.push(Command::Connect(cmd::connect::Request {
            token: r.token,
            data: None,
            name: r.name,
            version: r.version,
        }));
    }
    if let Some(r) = c.subscribe {
        found.push(Command::Subscribe(cmd::subscribe::Request {
            channel: r.channel,
            token: r.token,
            recover: r.recover,
            epoch: r.epoch,
            offset: r.offset,
        }));
    }
    if let Some(r) = c.unsubscribe {
        found.push(Command::Unsubscribe(cmd::unsubscribe::Request {
            channel: r.channel,
        }));
    }
    if let Some(r) = c.publish {
        found.push(Command::Publish(cmd::publish::Request::binary(
            r.channel, r.data,
        )));
    }
    if let Some(r) = c.presence {
        found.push(Command::Presence(cmd::presence::Request {
            channel: r.channel,
        }));
    }
    if let Some(r) = c.presence_stats {
        found.push(Command::PresenceStats(cmd::presence::Request {
            channel: r.channel,
        }));
    }
    if let Some(r) = c.history {
        found.push(Command::History(cmd::history::Request {
            channel: r.channel,
            limit: r.limit,
            since: r.since.map(|s| cmd::history::Since {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: r.reverse,
        }));
    }
    if c.ping.is_some() {
        found.push(Command::Ping);
    }
    if c.send.is_some() {
        found.push(Command::Send);
    }
    if let Some(r) = c.rpc {
        found.push(Command::Rpc(cmd::rpc::Request {
            method: r.method,
            data: None,
        }));
    }
    if let Some(r) = c.refresh {
        found.push(Command::Refresh(cmd::refresh::Request { token: r.token }));
    }
    if let Some(r) = c.sub_refresh {
        found.push(Command::SubRefresh(cmd::sub_refresh::Request {
            channel: r.channel,
            token: r.token,
        }));
    }
    match found.len() {
        0 if c.id == 0 => Ok(Command::Pong),
        0 => Ok(Command::Unknown),
        1 => Ok(found.pop().unwrap_or(Command::Unknown)),
        _ => Err(ProtoError::Ambiguous),
    }
}

/// One publication in the Protobuf encoding.
#[derive(Debug)]
pub struct ProtoEncoded {
    /// The encoded `Publication` message (embedded in subscribe and history
    /// results).
    pub publication: Bytes,
    /// The delimited `Reply` with the `pub` (or `join` / `leave`) push.
    pub push: Bytes,
}

/// Append field `tag` holding the encoded message `body`.
pub fn field(out: &mut BytesMut, tag: u32, body: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A delimited `Reply` with `id` whose field `tag` holds `body`.
pub fn reply_with(id: u32, tag: u32, body: &[u8]) -> Bytes {
    let mut reply = BytesMut::with_capacity(body.len() + 16);
    if id != 0 {
        encode_key(1, WireType::Varint, &mut reply);
        encode_varint(u64::from(id), &mut reply);
    }
    field(&mut reply, tag, body);
    delimited::delimit(&reply)
}

/// A delimited `Reply`.
pub fn reply(r: &pb::Reply) -> Bytes {
    delimited::delimit(&r.encode_to_vec())
}

/// Field number of `push` in `Reply`, and of `channel`, `pub`, `join`,
/// `leave` in `Push`.
const REPLY_PUSH: u32 = 4;
const PUSH_CHANNEL: u32 = 2;
const PUSH_PUB: u32 = 4;
const PUSH_JOIN: u32 = 5;
const PUSH_LEAVE: u32 = 6;

/// Encode `p` of `channel`: the payload travels as its own bytes (no
/// JSON or base64 wrapping); a presence event becomes a `join` / `leave`
/// push.
pub fn encode(channel: &ChannelName, p: &Publication) -> ProtoEncoded {
    let (tag, message) = match p.headers.get(PRESENCE_HEADER).map(String::as_str) {
        Some(kind @ ("join" | "leave")) => {
            let info = Some(presence_info(&p.data));
            if kind == "join" {
                (PUSH_JOIN, pb::Join { info }.encode_to_vec())
            } else {
                (PUSH_LEAVE, pb::Leave { info }.encode_to_vec())
            }
        }
        _ => (PUSH_PUB, publication(p).encode_to_vec()),
    };
    let mut push = BytesMut::with_capacity(message.len() + channel.as_str().len() + 8);
    field(&mut push, PUSH_CHANNEL, channel.as_str().as_bytes());
    field(&mut push, tag, &message);
    let mut r = BytesMut::with_capacity(push.len() + 4);
    field(&mut r, REPLY_PUSH, &push);
    ProtoEncoded {
        publication: Bytes::from(message),
        push: delimited::delimit(&r),
    }
}

fn publication(p: &Publication) -> pb::Publication {
    let user = p.headers.get(USER_HEADER);
    let client = p.headers.get(CLIENT_HEADER);
    let info = (user.is_some() || client.is_some()).then(|| pb::ClientInfo {
        user: user.cloned().unwrap_or_default(),
        client: client.cloned().unwrap_or_default(),
        ..Default::default()
    });
    pb::Publication {
        data: p.data.clone(),
        info,
        offset: p.offset,
        tags: tags(p, is_json_payload(p))
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        time: p.published_at_ms,
        epoch: p.epoch.clone(),
    }
}

/// The `ClientInfo` of a presence event (JSON `{"client","user"}`).
fn presence_info(data: &[u8]) -> pb::ClientInfo {
    #[derive(serde::Deserialize, Default)]
    struct Info {
        #[serde(default)]
        client: String,
        #[serde(default)]
        user: String,
    }
    let info: Info = serde_json::from_slice(data).unwrap_or_default();
    pb::ClientInfo {
        user: info.user,
        client: info.client,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command_bytes(commands: &[pb::Command]) -> Bytes {
        let mut out = BytesMut::new();
        for c in commands {
            delimited::join(&mut out, &c.encode_to_vec());
        }
        out.freeze()
    }

    #[test]
    fn several_commands_per_message() {
        let msg = command_bytes(&[
            pb::Command {
                id: 1,
                connect: Some(pb::ConnectRequest {
                    token: "t".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::Command {
                id: 2,
                subscribe: Some(pb::SubscribeRequest {
                    channel: "a".into(),
                    recover: true,
                    offset: 3,
                    epoch: "e".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::Command::default(),
            pb::Command {
                id: 9,
                ..Default::default()
            },
        ]);
        let f = parse(&msg, 1 << 16).unwrap();
        assert_eq!(f.len(), 4);
        assert!(matches!(&f[0].command, Command::Connect(c) if c.token == "t"));
        assert!(
            matches!(&f[1].command, Command::Subscribe(s) if s.recover && s.offset == 3 && s.epoch == "e")
        );
        assert!(matches!(f[2].command, Command::Pong));
        assert!(matches!(f[3].command, Command::Unknown));
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        let two = pb::Command {
            id: 1,
            ping: Some(pb::PingRequest {}),
            send: Some(pb::SendRequest::default()),
            ..Default::default()
        };
        assert!(matches!(
            parse(&command_bytes(&[two]), 1 << 16),
            Err(ProtoError::Ambiguous)
        ));
        // Garbage: a length of 4 followed by an invalid wire type.
        assert!(matches!(
            parse(&Bytes::from_static(&[4, 0xff, 0xff, 0xff, 0xff]), 1 << 16),
            Err(ProtoError::Decode(_))
        ));
        assert!(matches!(
            parse(&Bytes::from_static(&[0x80]), 1 << 16),
            Err(ProtoError::Framing(DelimitedError::TruncatedLength))
        ));
        assert!(matches!(
            parse(&Bytes::from_static(&[0xff, 0xff, 0x7f, 1]), 1 << 16),
            Err(ProtoError::Framing(DelimitedError::TooLong(_)))
        ));
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..64u8)
                .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
                .collect();
            let _ = parse(&Bytes::from(junk), 1 << 16);
        }
    }

    #[test]
    fn a_publication_push_decodes_as_a_reply() {
        let p = Publication {
            channel: "chat:a".into(),
            offset: 7,
            epoch: "e1".into(),
            event_type: "message".into(),
            data: Bytes::from_static(br#"{"n":1}"#),
            content_type: "application/json".into(),
            published_at_ms: 1234,
            headers: [(USER_HEADER.to_string(), "u1".to_string())].into(),
            ..Default::default()
        };
        let e = encode(&ChannelName::new("chat:a").unwrap(), &p);
        let parts = delimited::split(&e.push, 1 << 16).unwrap();
        assert_eq!(parts.len(), 1);
        let r = pb::Reply::decode(parts[0].clone()).unwrap();
        let push = r.push.unwrap();
        assert_eq!(push.channel, "chat:a");
        let got = push.r#pub.unwrap();
        assert_eq!(&got.data[..], br#"{"n":1}"#);
        assert_eq!((got.offset, got.time, got.epoch.as_str()), (7, 1234, "e1"));
        assert_eq!(got.info.unwrap().user, "u1");
        assert_eq!(got.tags["event_type"], "message");
        assert_eq!(pb::Publication::decode(e.publication).unwrap(), {
            let mut again = publication(&p);
            again.info.as_mut().unwrap().client = String::new();
            again
        });
    }

    #[test]
    fn presence_events_become_join_and_leave_pushes() {
        let p = Publication {
            channel: "chat:a".into(),
            data: Bytes::from_static(br#"{"client":"c1","user":"u1"}"#),
            headers: [(PRESENCE_HEADER.to_string(), "leave".to_string())].into(),
            ..Default::default()
        };
        let e = encode(&ChannelName::new("chat:a").unwrap(), &p);
        let part = delimited::split(&e.push, 1 << 16).unwrap().remove(0);
        let push = pb::Reply::decode(part).unwrap().push.unwrap();
        assert!(push.r#pub.is_none() && push.join.is_none());
        let info = push.leave.unwrap().info.unwrap();
        assert_eq!((info.client.as_str(), info.user.as_str()), ("c1", "u1"));
    }

    proptest::proptest! {
        #[test]
        fn mutated_commands_parse_or_err_as_documented(
            id in proptest::num::u32::ANY,
            channel in "[a-z:]{0,30}",
            offset in proptest::num::u64::ANY,
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8),
            cut in proptest::num::usize::ANY,
        ) {
            let msg = command_bytes(&[
                pb::Command {
                    id,
                    subscribe: Some(pb::SubscribeRequest {
                        channel: channel.clone(),
                        recover: true,
                        offset,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                pb::Command {
                    id: id.wrapping_add(1),
                    publish: Some(pb::PublishRequest {
                        channel,
                        data: b"{\"a\":1}".to_vec().into(),
                    }),
                    ..Default::default()
                },
            ]);
            let mut bytes = msg.to_vec();
            for (i, b) in flips {
                let i = i % bytes.len();
                bytes[i] ^= b;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            match parse(&Bytes::from(bytes), 1024) {
                Ok(commands) => proptest::prop_assert!(commands.len() <= 1024),
                Err(ProtoError::Framing(_) | ProtoError::Decode(_) | ProtoError::Ambiguous) => {}
            }
        }
    }
}
