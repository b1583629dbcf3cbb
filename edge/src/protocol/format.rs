//! The two wire formats a WebSocket connection may speak — JSON (the
//! default) and Protobuf (subprotocol `centrifuge-protobuf`) — and every
//! server message written in either: command replies ([`ReplyBody`]),
//! errors, pings, pushes, and the subscribe and history results that embed
//! publications encoded once ([`Encoded`]).
//!
//! Commands build one reply value and never look at the format; this
//! module is the only place that branches on it.

use bytes::{Bytes, BytesMut};
use herald_proto::client_v2 as pb;
use prost::Message;
use serde::Serialize;

use super::codes::ClientError;
use super::frame;
use super::protobuf::{self, field};
use crate::channel::{ChannelName, Position};
use crate::hub::{Encoded, SubscribeDone};

/// The subprotocol that selects Protobuf.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// A connection's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Newline-delimited JSON in text messages.
    #[default]
    Json,
    /// Varint-delimited Protobuf in binary messages.
    Protobuf,
}

/// The result of a command, in both formats: serde for JSON, a field of
/// `Reply` for Protobuf.
pub trait ReplyBody: Serialize {
    /// The JSON key of the result (`connect`, `refresh`, ...).
    fn method(&self) -> &'static str;
    /// Set the matching field of a Protobuf `Reply`.
    fn into_proto(self, reply: &mut pb::Reply);
}

/// Results with no fields.
#[derive(Debug, Clone, Copy)]
pub enum EmptyReply {
    /// `unsubscribe`.
    Unsubscribe,
    /// `publish`.
    Publish,
    /// `ping`.
    Ping,
}

impl Serialize for EmptyReply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl ReplyBody for EmptyReply {
    fn method(&self) -> &'static str {
        match self {
            EmptyReply::Unsubscribe => "unsubscribe",
            EmptyReply::Publish => "publish",
            EmptyReply::Ping => "ping",
        }
    }

    fn into_proto(self, reply: &mut pb::Reply) {
        match self {
            EmptyReply::Unsubscribe => reply.unsubscribe = Some(pb::UnsubscribeResult {}),
            EmptyReply::Publish => reply.publish = Some(pb::PublishResult {}),
            EmptyReply::Ping => reply.ping = Some(pb::PingResult {}),
        }
    }
}

/// Field numbers of `Reply.subscribe` / `.history`, and of the repeated
/// `publications` inside their results.
const REPLY_SUBSCRIBE: u32 = 6;
const REPLY_HISTORY: u32 = 11;
const SUBSCRIBE_PUBLICATIONS: u32 = 7;
const HISTORY_PUBLICATIONS: u32 = 1;

/// The empty `Reply`, delimited: the server's ping in Protobuf.
const PROTO_PING: &[u8] = &[0];

impl Format {
    /// The reply to command `id`.
    pub fn reply(self, id: u32, body: impl ReplyBody) -> Bytes {
        match self {
            Format::Json => frame::reply(id, body.method(), &body),
            Format::Protobuf => {
                let mut r = pb::Reply {
                    id,
                    ..Default::default()
                };
                body.into_proto(&mut r);
                protobuf::reply(&r)
            }
        }
    }

    /// The error reply to command `id`.
    pub fn error(self, id: u32, e: &ClientError) -> Bytes {
        match self {
            Format::Json => frame::error(id, e),
            Format::Protobuf => protobuf::reply(&pb::Reply {
                id,
                error: Some(pb::Error {
                    code: e.code,
                    message: e.message.to_string(),
                    temporary: e.temporary,
                }),
                ..Default::default()
            }),
        }
    }

    /// The server's ping.
    pub fn ping(self) -> Bytes {
        match self {
            Format::Json => Bytes::from_static(frame::PING.as_bytes()),
            Format::Protobuf => Bytes::from_static(PROTO_PING),
        }
    }

    /// A live publication's push (shared bytes).
    pub fn publication(self, e: &Encoded) -> Bytes {
        match self {
            Format::Json => e.ws_push.clone(),
            Format::Protobuf => e.proto().push.clone(),
        }
    }

    /// The `unsubscribe` push.
    pub fn unsubscribe_push(self, channel: &ChannelName, code: u32, reason: &str) -> Bytes {
        match self {
            Format::Json => frame::unsubscribe_push(channel, code, reason),
            Format::Protobuf => protobuf::reply(&pb::Reply {
                push: Some(pb::Push {
                    channel: channel.to_string(),
                    unsubscribe: Some(pb::Unsubscribe {
                        code,
                        reason: reason.to_string(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// The reply to a subscribe, with its recovered publications; `ttl`
    /// (seconds) when the subscription token expires.
    pub fn subscribe_reply(self, d: &SubscribeDone, ttl: Option<u32>) -> Bytes {
        match self {
            Format::Json => frame::subscribe_reply(d, ttl),
            Format::Protobuf => {
                let result = pb::SubscribeResult {
                    expires: ttl.is_some(),
                    ttl: ttl.unwrap_or(0),
                    recoverable: true,
                    positioned: true,
                    epoch: d.position.epoch.as_str().to_string(),
                    offset: d.position.offset.0,
                    was_recovering: d.was_recovering,
                    recovered: d.recovered,
                    publications: vec![],
                };
                let pubs = d.publications.iter().map(|p| &**p);
                with_publications(
                    d.reply_id,
                    REPLY_SUBSCRIBE,
                    &result,
                    SUBSCRIBE_PUBLICATIONS,
                    pubs,
                )
            }
        }
    }

    /// The reply to a history command.
    pub fn history_reply(self, id: u32, pubs: &[Encoded], position: &Position) -> Bytes {
        match self {
            Format::Json => frame::history_reply(id, pubs, position),
            Format::Protobuf => {
                let result = pb::HistoryResult {
                    publications: vec![],
                    epoch: position.epoch.as_str().to_string(),
                    offset: position.offset.0,
                };
                with_publications(
                    id,
                    REPLY_HISTORY,
                    &result,
                    HISTORY_PUBLICATIONS,
                    pubs.iter(),
                )
            }
        }
    }
}

/// A delimited `Reply` whose field `tag` is `result` plus `pubs` (already
/// encoded, shared) as its repeated field `pubs_tag`: Protobuf lets a
/// repeated field's elements follow the other fields, so the cached bytes
/// are appended instead of decoded and encoded again.
fn with_publications<'a>(
    id: u32,
    tag: u32,
    result: &impl Message,
    pubs_tag: u32,
    pubs: impl Iterator<Item = &'a Encoded>,
) -> Bytes {
    let mut body = BytesMut::from(&result.encode_to_vec()[..]);
    for p in pubs {
        field(&mut body, pubs_tag, &p.proto().publication);
    }
    protobuf::reply_with(id, tag, &body)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_proto::v1::Publication;

    use super::*;
    use crate::channel::{Epoch, Offset};
    use crate::protocol::delimited::split;
    use crate::protocol::publication::encode;

    fn encoded(offset: u64) -> Encoded {
        let p = Publication {
            channel: "a".into(),
            offset,
            epoch: "e".into(),
            data: Bytes::from(format!("{{\"n\":{offset}}}")),
            content_type: "application/json".into(),
            ..Default::default()
        };
        encode(ChannelName::new("a").unwrap(), &p)
    }

    fn decode(framed: &Bytes) -> pb::Reply {
        let mut parts = split(framed, 1 << 20).unwrap();
        assert_eq!(parts.len(), 1);
        pb::Reply::decode(parts.remove(0)).unwrap()
    }

    #[test]
    fn protobuf_pushes_are_encoded_once_and_shared() {
        let e = encoded(1);
        let (a, b) = (
            Format::Protobuf.publication(&e),
            Format::Protobuf.publication(&e),
        );
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same buffer for every client");
        assert_eq!(
            Format::Json.publication(&e).as_ptr(),
            e.ws_push.as_ptr(),
            "JSON shares its arrival encoding"
        );
        assert_eq!(decode(&a).push.unwrap().r#pub.unwrap().offset, 1);
    }

    #[test]
    fn subscribe_and_history_results_embed_the_cached_publications() {
        let done = SubscribeDone {
            reply_id: 3,
            channel: ChannelName::new("a").unwrap(),
            position: Position {
                epoch: Epoch::new("e"),
                offset: Offset(2),
            },
            was_recovering: true,
            recovered: true,
            publications: vec![Arc::new(encoded(1)), Arc::new(encoded(2))],
        };
        let r = decode(&Format::Protobuf.subscribe_reply(&done, Some(5)));
        assert_eq!(r.id, 3);
        let s = r.subscribe.unwrap();
        assert!(s.expires && s.recovered && s.was_recovering && s.recoverable);
        assert_eq!((s.ttl, s.offset, s.epoch.as_str()), (5, 2, "e"));
        let offsets: Vec<u64> = s.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [1, 2]);
        assert_eq!(&s.publications[1].data[..], b"{\"n\":2}");

        let json: serde_json::Value =
            serde_json::from_slice(&Format::Json.subscribe_reply(&done, Some(5))).unwrap();
        assert_eq!(json["subscribe"]["expires"], true);
        assert_eq!(json["subscribe"]["ttl"], 5);
        assert_eq!(json["subscribe"]["publications"][1]["data"]["n"], 2);
        let json: serde_json::Value =
            serde_json::from_slice(&Format::Json.subscribe_reply(&done, None)).unwrap();
        assert!(json["subscribe"].get("expires").is_none());

        let pubs = [encoded(4), encoded(5)];
        let pos = Position {
            epoch: Epoch::new("e"),
            offset: Offset(9),
        };
        let h = decode(&Format::Protobuf.history_reply(8, &pubs, &pos));
        assert_eq!(h.id, 8);
        let h = h.history.unwrap();
        assert_eq!(
            (h.offset, h.epoch.as_str(), h.publications.len()),
            (9, "e", 2)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&Format::Json.history_reply(8, &pubs, &pos)).unwrap();
        assert_eq!(json["history"]["publications"][0]["offset"], 4);
        assert_eq!(json["history"]["offset"], 9);
    }

    #[test]
    fn errors_pings_and_empty_results_in_both_formats() {
        let e = ClientError::TOKEN_EXPIRED.temporary();
        let r = decode(&Format::Protobuf.error(4, &e)).error.unwrap();
        assert_eq!(
            (r.code, r.message.as_str(), r.temporary),
            (109, "token expired", true)
        );
        assert_eq!(decode(&Format::Protobuf.ping()), pb::Reply::default());
        assert_eq!(&Format::Json.ping()[..], b"{}");
        assert!(
            decode(&Format::Protobuf.reply(2, EmptyReply::Unsubscribe))
                .unsubscribe
                .is_some()
        );
        assert_eq!(
            &Format::Json.reply(2, EmptyReply::Publish)[..],
            br#"{"id":2,"publish":{}}"#
        );
        let ch = ChannelName::new("a").unwrap();
        let u = decode(&Format::Protobuf.unsubscribe_push(&ch, 2501, "subscription expired"))
            .push
            .unwrap();
        assert_eq!(u.channel, "a");
        assert_eq!(u.unsubscribe.unwrap().code, 2501);
    }
}
