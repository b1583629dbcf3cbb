//! The SSE transport (`GET /connection/sse?channel=a&channel=b`): a plain
//! EventSource, no SDK. Authentication comes from the request (query
//! `token`, cookie, `Authorization: Bearer`, or anonymous); the channels
//! from repeated `channel` parameters.
//!
//! Every publication is one default (`message`) event whose data is
//! `{"channel":C,"pub":P}` — the same bytes the WebSocket push carries —
//! and whose `id:` is a resume token holding the position of *every*
//! channel of the stream. The browser's automatic reconnect sends it back
//! as `Last-Event-ID` (or `?last_event_id=`), and each channel is recovered
//! from its own position (guarantee 3); a named `subscribed` event tells
//! `recovered` per channel. Owns the HTTP stream only; state lives in
//! [`Client`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use crate::Edge;
use crate::auth::{Action, AuthError, Identity, token_from_request};
use crate::channel::{ChannelName, Epoch, Offset, Position};
use crate::client::{Client, Transport, unix_now};
use crate::clients::Refusal;
use crate::outbox::{Item, Outbox};
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::Format;

/// Encode every channel's position as an opaque event id.
pub fn resume_token(positions: &BTreeMap<ChannelName, Position>) -> String {
    let list: Vec<(&str, &str, u64)> = positions
        .iter()
        .map(|(c, p)| (c.as_str(), p.epoch.as_str(), p.offset.0))
        .collect();
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&list).unwrap_or_default())
}

/// Decode an event id from [`resume_token`]; `None` if it is not one.
pub fn parse_resume_token(s: &str) -> Option<BTreeMap<ChannelName, Position>> {
    let raw = URL_SAFE_NO_PAD.decode(s.trim()).ok()?;
    let list: Vec<(String, String, u64)> = serde_json::from_slice(&raw).ok()?;
    list.into_iter()
        .map(|(c, e, o)| {
            Some((
                ChannelName::new(&c).ok()?,
                Position {
                    epoch: Epoch::new(&e),
                    offset: Offset(o),
                },
            ))
        })
        .collect()
}

/// Write `data` as `data:` lines. Event data is JSON without raw line
/// breaks (payloads are compacted when encoded); should one still hold CR
/// or LF, each line gets its own `data:` field, which EventSource joins
/// with LF: whitespace between JSON tokens, so the value is unchanged and
/// the stream can never be split into a bogus event.
fn data_lines(out: &mut Vec<u8>, data: &[u8]) {
    for line in data
        .split(|&b| b == b'\n')
        .flat_map(|l| l.split(|&b| b == b'\r'))
    {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
}

fn refuse(status: StatusCode, e: &ClientError) -> Refusal {
    Refusal::new(status, e.code, e.message.clone())
}

fn identity(edge: &Edge, token: Option<String>) -> Result<Identity, Refusal> {
    let Some(token) = token else {
        if edge.settings.allow_anonymous {
            return Ok(Identity {
                user: String::new(),
                expires_at: None,
                caps: crate::client::anonymous_caps(&edge.settings),
            });
        }
        metrics::counter!("herald_edge_auth_failures_total", "reason" => "missing").increment(1);
        return Err(refuse(StatusCode::UNAUTHORIZED, &ClientError::UNAUTHORIZED));
    };
    edge.settings.verifier.connection(&token).map_err(|e| {
        metrics::counter!("herald_edge_auth_failures_total", "reason" => e.reason()).increment(1);
        match e {
            AuthError::Expired => refuse(StatusCode::UNAUTHORIZED, &ClientError::TOKEN_EXPIRED),
            AuthError::Missing => refuse(StatusCode::UNAUTHORIZED, &ClientError::UNAUTHORIZED),
            _ => refuse(
                StatusCode::UNAUTHORIZED,
                &ClientError {
                    code: u32::from(Disconnect::INVALID_TOKEN.code),
                    message: Disconnect::INVALID_TOKEN.reason.into(),
                    temporary: false,
                },
            ),
        }
    })
}

/// `GET /connection/sse`.
pub async fn stream(
    State(edge): State<Arc<Edge>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let trust = match crate::ws::admit(&edge, &headers) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let query_token = params
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str());
    let token = token_from_request(
        query_token,
        &headers,
        trust.cookie(&edge.settings.token_cookie),
    );
    let identity = match identity(&edge, token) {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    // The limit is checked on the raw list, before any work per entry, and
    // duplicates are dropped in linear time: a URL with thousands of
    // `channel` parameters costs one count.
    let max = edge.settings.limits.max_channels_per_connection;
    let named = params.iter().filter(|(k, _)| k == "channel");
    if named.clone().count() > max {
        return refuse(
            StatusCode::BAD_REQUEST,
            &ClientError::LIMIT_EXCEEDED.with_message(format!("more than {max} channels")),
        )
        .into_response();
    }
    let mut channels = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, c) in named {
        let Ok(ch) = ChannelName::new(c) else {
            return refuse(StatusCode::BAD_REQUEST, &ClientError::UNKNOWN_CHANNEL).into_response();
        };
        if !identity.caps.allows(Action::Subscribe, ch.as_str()) {
            metrics::counter!("herald_edge_auth_failures_total", "reason" => "forbidden")
                .increment(1);
            return refuse(StatusCode::FORBIDDEN, &ClientError::PERMISSION_DENIED).into_response();
        }
        if seen.insert(ch.clone()) {
            channels.push(ch);
        }
    }
    if channels.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            &ClientError::BAD_REQUEST.with_message("give 1..max channel parameters"),
        )
        .into_response();
    }
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            params
                .iter()
                .find(|(k, _)| k == "last_event_id")
                .map(|(_, v)| v.clone())
        });
    let resume = last_id
        .as_deref()
        .and_then(parse_resume_token)
        .unwrap_or_default();

    let outbox = Arc::new(Outbox::new(edge.settings.limits.client_queue_bytes));
    let Ok(registration) = edge.clients.register(outbox.clone()) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &ClientError::LIMIT_EXCEEDED,
        )
        .into_response();
    };
    if let Err(d) = edge.clients.bind_user(&registration, &identity.user) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &ClientError::LIMIT_EXCEEDED.with_message(d.reason),
        )
        .into_response();
    }
    let ping_every = edge.settings.limits.ping_interval;
    let expires_at = identity.expires_at;
    let mut client = Client::new(
        edge.clone(),
        outbox,
        registration,
        None,
        Transport::Sse,
        Format::Json,
    );
    client.identity = Some(identity);
    let mut positions = BTreeMap::new();
    for (i, ch) in channels.iter().enumerate() {
        let recover = resume.get(ch).cloned();
        if let Some(p) = &recover {
            positions.insert(ch.clone(), p.clone());
        }
        client.subscriptions.insert(ch.clone(), None);
        edge.hub.subscribe(
            ch,
            client.id(),
            client.outbox.clone(),
            i as u32 + 1,
            recover,
        );
        client.join_presence(ch);
    }
    let state = Stream {
        client,
        positions,
        items: Vec::new(),
        ping: tokio::time::interval_at(Instant::now() + ping_every, ping_every),
        expires_at,
        done: false,
        first: true,
    };
    let body = Body::from_stream(futures::stream::unfold(state, |mut s| async move {
        let chunk = s.next().await?;
        Some((Ok::<Bytes, Infallible>(chunk), s))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // A browser hands a page on another origin (the app at app.example.com,
    // the edge at rt.example.com) the stream only if the response names
    // that origin. A trusted origin (same host or listed) gets its name
    // back with credentials, so `new EventSource(url, {withCredentials:
    // true})` sends the token cookie. One admitted only by `*` gets `*`
    // without credentials: it can read a stream it authenticated with a
    // query token, and its cookies were not read (crate::ws::OriginTrust).
    if let Some(origin) = headers.get(header::ORIGIN) {
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        if trust == crate::ws::OriginTrust::Foreign {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    resp
}

struct Stream {
    client: Client,
    positions: BTreeMap<ChannelName, Position>,
    items: Vec<Item>,
    ping: tokio::time::Interval,
    expires_at: Option<i64>,
    done: bool,
    first: bool,
}

impl Stream {
    fn event(&self, out: &mut Vec<u8>, name: Option<&str>, data: &[u8]) {
        if let Some(n) = name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(n.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(resume_token(&self.positions).as_bytes());
        out.push(b'\n');
        data_lines(out, data);
        out.push(b'\n');
    }

    fn disconnect(&mut self, out: &mut Vec<u8>, d: Disconnect) {
        let data = json!({"code": d.code, "reason": d.reason}).to_string();
        out.extend_from_slice(b"event: disconnect\n");
        data_lines(out, data.as_bytes());
        out.push(b'\n');
        self.done = true;
    }

    /// The next chunk of the response, `None` to end it.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = Vec::new();
        if self.first {
            self.first = false;
            out.extend_from_slice(b"retry: 1000\n\n");
            return Some(Bytes::from(out));
        }
        let expiry = self
            .expires_at
            .map(|exp| Instant::now() + Duration::from_secs((exp - unix_now()).max(0) as u64 + 1));
        let outbox = self.client.outbox.clone();
        tokio::select! {
            r = outbox.next(&mut self.items) => {
                if let Err(d) = r {
                    self.disconnect(&mut out, d);
                    return Some(Bytes::from(out));
                }
            }
            _ = self.ping.tick() => {
                out.extend_from_slice(b": ping\n\n");
                return Some(Bytes::from(out));
            }
            _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                self.disconnect(&mut out, Disconnect::EXPIRED);
                return Some(Bytes::from(out));
            }
        }
        let mut pubs = 0u64;
        let items = std::mem::take(&mut self.items);
        for item in items {
            match item {
                Item::Pub(e) => {
                    pubs += 1;
                    if e.offset.0 > 0 {
                        self.positions.insert(e.channel.clone(), e.position());
                    }
                    self.event(&mut out, None, &e.push_body());
                }
                Item::Subscribed(d) => {
                    for p in &d.publications {
                        pubs += 1;
                        self.positions.insert(p.channel.clone(), p.position());
                        self.event(&mut out, None, &p.push_body());
                    }
                    self.positions.insert(d.channel.clone(), d.position.clone());
                    let data = json!({
                        "channel": d.channel.as_str(),
                        "epoch": d.position.epoch.as_str(),
                        "offset": d.position.offset.0,
                        "recovered": d.recovered,
                        "was_recovering": d.was_recovering,
                    })
                    .to_string();
                    self.event(&mut out, Some("subscribed"), data.as_bytes());
                }
                Item::SubscribeFailed { channel, error, .. } => {
                    self.client.dropped(&channel);
                    let data = json!({"channel": channel.as_str(), "code": error.code, "message": error.message}).to_string();
                    self.event(&mut out, Some("error"), data.as_bytes());
                }
                Item::Unsubscribed {
                    channel,
                    code,
                    reason,
                } => {
                    // End the stream: the browser reconnects with its
                    // Last-Event-ID and the channel recovers or reports
                    // `recovered: false`.
                    self.client.dropped(&channel);
                    let data = json!({"channel": channel.as_str(), "code": code, "reason": reason})
                        .to_string();
                    self.event(&mut out, Some("unsubscribed"), data.as_bytes());
                    self.done = true;
                    break;
                }
                Item::Frame(_) => {}
            }
        }
        metrics::counter!("herald_edge_sent_bytes_total", "transport" => "sse")
            .increment(out.len() as u64);
        metrics::counter!("herald_edge_publications_sent_total", "transport" => "sse")
            .increment(pubs);
        Some(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lines_never_hold_a_line_break() {
        let mut out = Vec::new();
        data_lines(&mut out, b"{\"a\":\r\n1,\r\"b\":2}");
        assert_eq!(
            out,
            b"data: {\"a\":\ndata: \ndata: 1,\ndata: \"b\":2}\n".to_vec()
        );
        let mut out = Vec::new();
        data_lines(&mut out, b"{}");
        assert_eq!(out, b"data: {}\n".to_vec());
    }

    #[test]
    fn resume_token_round_trips() {
        let mut m = BTreeMap::new();
        m.insert(
            ChannelName::new("chat:a").unwrap(),
            Position {
                epoch: Epoch::new("e1"),
                offset: Offset(5),
            },
        );
        m.insert(ChannelName::new("b").unwrap(), Position::default());
        let t = resume_token(&m);
        assert_eq!(parse_resume_token(&t).unwrap(), m);
        assert!(parse_resume_token("garbage!").is_none());
    }

    proptest::proptest! {
        #[test]
        fn resume_tokens_round_trip(
            positions in proptest::collection::btree_map(
                "[a-z0-9_-]{1,20}(:[a-z0-9_-]{1,20})?",
                ("[a-zA-Z0-9]{0,12}", proptest::num::u64::ANY),
                0..6,
            ),
        ) {
            let m: BTreeMap<ChannelName, Position> = positions
                .into_iter()
                .map(|(c, (e, o))| {
                    (
                        ChannelName::new(&c).unwrap(),
                        Position { epoch: Epoch::new(&e), offset: Offset(o) },
                    )
                })
                .collect();
            proptest::prop_assert_eq!(parse_resume_token(&resume_token(&m)), Some(m));
        }

        #[test]
        fn any_last_event_id_is_a_position_map_or_none(text in "\\PC{0,120}") {
            if let Some(m) = parse_resume_token(&text) {
                // Only valid channel names get through.
                for c in m.keys() {
                    proptest::prop_assert!(ChannelName::new(c.as_str()).is_ok());
                }
            }
        }

        #[test]
        fn mutated_resume_tokens_never_panic(
            edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::char::any()), 1..5),
        ) {
            let mut m = BTreeMap::new();
            m.insert(
                ChannelName::new("chat:a").unwrap(),
                Position { epoch: Epoch::new("e1"), offset: Offset(5) },
            );
            let mut chars: Vec<char> = resume_token(&m).chars().collect();
            for (i, c) in edits {
                let i = i % chars.len();
                chars[i] = c;
            }
            let mutated: String = chars.into_iter().collect();
            let _ = parse_resume_token(&mutated);
        }
    }
}
