//! Encoding a publication once per wire format into the bytes every
//! subscriber of that format receives.
//!
//! The JSON push `{"push":{"channel":C,"pub":P}}` is built once per
//! publication, on arrival; the publication object `P` (embedded in
//! subscribe and history replies) and the push body `{"channel":C,"pub":P}`
//! (an SSE event's data) are slices of the same buffer. The Protobuf
//! encoding ([`Encoded::proto`]) is built the first time a Protobuf client
//! needs it, once, and shared the same way. No subscriber ever causes a
//! serialization of its own.

use std::sync::OnceLock;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use herald_proto::v1::Publication;

use crate::channel::{ChannelName, Epoch, Offset, Position};

/// Header a client publish carries with the publisher's user id.
pub const USER_HEADER: &str = "herald-user";
/// Header a client publish carries with the publisher's client id.
pub const CLIENT_HEADER: &str = "herald-client";

/// A publication encoded for clients.
#[derive(Debug)]
pub struct Encoded {
    /// Its channel.
    pub channel: ChannelName,
    /// Its position.
    pub offset: Offset,
    /// Its channel's epoch.
    pub epoch: Epoch,
    /// Unix ms taken by the Raft leader.
    pub published_at_ms: i64,
    /// `{"push":{"channel":C,"pub":P}}`.
    pub ws_push: Bytes,
    /// The same bytes as a WebSocket text payload (validated once).
    pub ws_text: Utf8Bytes,
    pub_start: usize,
    /// What the Protobuf encoding is made from.
    source: Publication,
    proto: OnceLock<super::protobuf::ProtoEncoded>,
}

const PUSH_PREFIX: &[u8] = b"{\"push\":";

impl Encoded {
    /// The publication object `P`.
    pub fn pub_json(&self) -> Bytes {
        self.ws_push.slice(self.pub_start..self.ws_push.len() - 2)
    }

    /// `{"channel":C,"pub":P}`.
    pub fn push_body(&self) -> Bytes {
        self.ws_push
            .slice(PUSH_PREFIX.len()..self.ws_push.len() - 1)
    }

    /// The Protobuf encoding, built on first use and then shared.
    pub fn proto(&self) -> &super::protobuf::ProtoEncoded {
        self.proto
            .get_or_init(|| super::protobuf::encode(&self.channel, &self.source))
    }

    /// Where a reader is after this publication.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

fn is_json_type(ct: &str) -> bool {
    let base = ct.split(';').next().unwrap_or("").trim();
    base.is_empty() || base == "application/json" || base.ends_with("+json")
}

/// Header of a presence event from the node (`join` or `leave`); its data
/// is the client's info as JSON.
pub const PRESENCE_HEADER: &str = "herald-presence";

/// Encode `p` (whose channel name is already validated as `channel`).
/// A presence event becomes a `join` / `leave` push instead of `pub`.
pub fn encode(channel: ChannelName, p: &Publication) -> Encoded {
    if let Some(kind) = p.headers.get(PRESENCE_HEADER)
        && (kind == "join" || kind == "leave")
    {
        return encode_presence(channel, kind, p);
    }
    let mut out = Vec::with_capacity(p.data.len() + channel.as_str().len() + 128);
    out.extend_from_slice(PUSH_PREFIX);
    out.extend_from_slice(b"{\"channel\":");
    write_str(&mut out, channel.as_str());
    out.extend_from_slice(b",\"pub\":");
    let pub_start = out.len();
    out.extend_from_slice(b"{\"data\":");
    let json = is_json_payload(p);
    if json {
        // Nodes store JSON compact; this also covers publications stored
        // before they did, so a line break never splits a client frame.
        out.extend_from_slice(&safe_json(&p.data));
    } else {
        match std::str::from_utf8(&p.data) {
            Ok(s) => write_str(&mut out, s),
            Err(_) => {
                use base64::Engine as _;
                write_str(
                    &mut out,
                    &base64::engine::general_purpose::STANDARD.encode(&p.data),
                );
            }
        }
    }
    // Ephemeral publications (offset 0) carry no position: omitting it keeps
    // SDKs from resetting the position they resume from.
    if p.offset > 0 {
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(p.offset.to_string().as_bytes());
    }
    if !p.epoch.is_empty() {
        out.extend_from_slice(b",\"epoch\":");
        write_str(&mut out, &p.epoch);
    }
    if p.published_at_ms > 0 {
        out.extend_from_slice(b",\"time\":");
        out.extend_from_slice(p.published_at_ms.to_string().as_bytes());
    }
    let user = p.headers.get(USER_HEADER);
    let client = p.headers.get(CLIENT_HEADER);
    let mut tags = tags(p, json);
    if std::str::from_utf8(&p.data).is_err() && !json {
        tags.push(("encoding", "base64"));
    }
    if !tags.is_empty() {
        tags.sort_unstable();
        out.extend_from_slice(b",\"tags\":{");
        for (i, (k, v)) in tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&mut out, k);
            out.push(b':');
            write_str(&mut out, v);
        }
        out.push(b'}');
    }
    if user.is_some() || client.is_some() {
        out.extend_from_slice(b",\"info\":{\"user\":");
        write_str(&mut out, user.map_or("", String::as_str));
        out.extend_from_slice(b",\"client\":");
        write_str(&mut out, client.map_or("", String::as_str));
        out.push(b'}');
    }
    out.extend_from_slice(b"}}}");
    let ws_push = Bytes::from(out);
    // Every piece written above is UTF-8 (JSON text or escaped strings).
    let ws_text = Utf8Bytes::try_from(ws_push.clone()).unwrap_or_else(|_| Utf8Bytes::from("{}"));
    Encoded {
        channel,
        offset: Offset(p.offset),
        epoch: Epoch::new(&p.epoch),
        published_at_ms: p.published_at_ms,
        ws_push,
        ws_text,
        pub_start,
        source: p.clone(),
        proto: OnceLock::new(),
    }
}

/// Whether the payload goes to JSON clients as itself (JSON content type,
/// and it parses).
pub fn is_json_payload(p: &Publication) -> bool {
    is_json_type(&p.content_type)
        && serde_json::from_slice::<serde::de::IgnoredAny>(&p.data).is_ok()
}

/// A publication's tags: its headers (without the publisher's identity),
/// its event type, and its content type when the payload is not JSON.
pub fn tags(p: &Publication, json: bool) -> Vec<(&str, &str)> {
    let mut tags: Vec<(&str, &str)> = p
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != USER_HEADER && k.as_str() != CLIENT_HEADER)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !p.event_type.is_empty() && !p.headers.contains_key("event_type") {
        tags.push(("event_type", &p.event_type));
    }
    if !json && !p.content_type.is_empty() && !p.headers.contains_key("content_type") {
        tags.push(("content_type", &p.content_type));
    }
    tags
}

/// `{"push":{"channel":C,"join":{"info":I}}}` (or `leave`).
fn encode_presence(channel: ChannelName, kind: &str, p: &Publication) -> Encoded {
    let mut out = Vec::with_capacity(p.data.len() + channel.as_str().len() + 48);
    out.extend_from_slice(PUSH_PREFIX);
    out.extend_from_slice(b"{\"channel\":");
    write_str(&mut out, channel.as_str());
    out.push(b',');
    write_str(&mut out, kind);
    out.push(b':');
    let pub_start = out.len();
    out.extend_from_slice(b"{\"info\":");
    if serde_json::from_slice::<serde::de::IgnoredAny>(&p.data).is_ok() {
        out.extend_from_slice(&safe_json(&p.data));
    } else {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"}}}");
    let ws_push = Bytes::from(out);
    let ws_text = Utf8Bytes::try_from(ws_push.clone()).unwrap_or_else(|_| Utf8Bytes::from("{}"));
    Encoded {
        channel,
        offset: Offset(0),
        epoch: Epoch::default(),
        published_at_ms: p.published_at_ms,
        ws_push,
        ws_text,
        pub_start,
        source: p.clone(),
        proto: OnceLock::new(),
    }
}

/// Valid JSON `data` with no raw CR or LF: compacted when it has any
/// (line breaks can only sit between tokens), else borrowed as is.
fn safe_json(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if herald_proto::payload::has_line_break(data) {
        herald_proto::payload::compact_json(data)
    } else {
        std::borrow::Cow::Borrowed(data)
    }
}

/// Append `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping, straight into the buffer.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(data: &[u8], ct: &str) -> Publication {
        Publication {
            channel: "chat:a".into(),
            offset: 7,
            epoch: "e1".into(),
            event_type: "message".into(),
            data: data.to_vec().into(),
            content_type: ct.into(),
            published_at_ms: 1234,
            headers: [(USER_HEADER.to_string(), "u1".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn json_payload_is_embedded_and_slices_are_valid_json() {
        let e = encode(
            ChannelName::new("chat:a").unwrap(),
            &publication(br#"{"text":"hi"}"#, "application/json"),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.ws_push).unwrap();
        assert_eq!(v["push"]["channel"], "chat:a");
        assert_eq!(v["push"]["pub"]["data"]["text"], "hi");
        assert_eq!(v["push"]["pub"]["offset"], 7);
        assert_eq!(v["push"]["pub"]["epoch"], "e1");
        assert_eq!(v["push"]["pub"]["info"]["user"], "u1");
        assert_eq!(v["push"]["pub"]["tags"]["event_type"], "message");
        let p: serde_json::Value = serde_json::from_slice(&e.pub_json()).unwrap();
        assert_eq!(p, v["push"]["pub"]);
        let b: serde_json::Value = serde_json::from_slice(&e.push_body()).unwrap();
        assert_eq!(b, v["push"]);
    }

    #[test]
    fn line_breaks_in_json_payloads_never_reach_the_frame() {
        let e = encode(
            ChannelName::new("chat:a").unwrap(),
            &publication(b"{\"n\":\r\n 2, \"s\": \"a\\nb\"}\n", "application/json"),
        );
        assert!(!herald_proto::payload::has_line_break(&e.ws_push));
        let v: serde_json::Value = serde_json::from_slice(&e.ws_push).unwrap();
        assert_eq!(
            v["push"]["pub"]["data"],
            serde_json::json!({"n": 2, "s": "a\nb"})
        );
        let p = Publication {
            data: b"{\"client\":\n\"c1\"}".to_vec().into(),
            headers: [(PRESENCE_HEADER.to_string(), "join".to_string())].into(),
            ..Default::default()
        };
        let e = encode(ChannelName::new("chat:a").unwrap(), &p);
        assert!(!herald_proto::payload::has_line_break(&e.ws_push));
    }

    #[test]
    fn presence_events_become_join_and_leave_pushes() {
        let p = Publication {
            channel: "chat:a".into(),
            data: br#"{"client":"c1","user":"u1"}"#.to_vec().into(),
            headers: [(PRESENCE_HEADER.to_string(), "leave".to_string())].into(),
            ..Default::default()
        };
        let e = encode(ChannelName::new("chat:a").unwrap(), &p);
        let v: serde_json::Value = serde_json::from_slice(&e.ws_push).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"push": {"channel": "chat:a", "leave": {"info": {"client": "c1", "user": "u1"}}}})
        );
        let b: serde_json::Value = serde_json::from_slice(&e.push_body()).unwrap();
        assert_eq!(b, v["push"]);
        assert_eq!(e.offset.0, 0);
    }

    #[test]
    fn non_json_payloads_become_strings() {
        let e = encode(
            ChannelName::new("a").unwrap(),
            &publication(b"plain \"text\"", "text/plain"),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.ws_push).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "plain \"text\"");
        assert_eq!(v["push"]["pub"]["tags"]["content_type"], "text/plain");
        let e = encode(
            ChannelName::new("a").unwrap(),
            &publication(&[0xff, 0x00], "application/octet-stream"),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.ws_push).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "/wA=");
        assert_eq!(v["push"]["pub"]["tags"]["encoding"], "base64");
        // Invalid JSON under a JSON content type is sent as a string too.
        let e = encode(
            ChannelName::new("a").unwrap(),
            &publication(b"{nope", "application/json"),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.ws_push).unwrap();
        assert_eq!(v["push"]["pub"]["data"], "{nope");
    }
}
