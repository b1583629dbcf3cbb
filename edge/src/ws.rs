//! The WebSocket transport (`GET /connection/websocket`): admission checks
//! before the upgrade (shutdown, origin, limits), the choice of wire format
//! (JSON, or Protobuf when the client offers the `centrifuge-protobuf`
//! subprotocol), then one task per connection that reads frames into
//! commands and writes the client's [`Outbox`], sends pings, and enforces
//! the connect timeout, connection and subscription token expiry and
//! dead-peer detection.
//!
//! Owns the socket and nothing else: what a command means lives in
//! [`crate::protocol::cmd`], what a client is in [`crate::client`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use serde::Deserialize;
use tokio::time::{Instant, sleep_until};

use crate::Edge;
use crate::auth::token_from_request;
use crate::client::{Client, EXPIRY_GRACE, Transport, unix_now};
use crate::clients::Refusal;
use crate::config::Origins;
use crate::outbox::{Item, Outbox};
use crate::protocol::codes::{ClientError, Disconnect};
use crate::protocol::format::{Format, PROTOBUF_SUBPROTOCOL};
use crate::protocol::{frame, protobuf};

/// Longest a batch of writes may take before the client is considered
/// stuck (a full TCP window) and dropped as slow.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Query parameters of the upgrade request.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Connection token (browsers cannot set headers on a WebSocket).
    pub token: Option<String>,
}

/// How a request's `Origin` was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginTrust {
    /// No `Origin`: not a page in a browser, so its cookies are its own.
    Absent,
    /// The request's own host, or an origin on `--allowed-origins`.
    Trusted,
    /// Admitted only by `--allowed-origins *`: a page on any site, to whose
    /// requests the browser still attaches the edge's cookies. The token
    /// cookie is never read for it (cross-site hijacking); a token in the
    /// query, the connect command or a header still works.
    Foreign,
}

impl OriginTrust {
    /// The token cookie's name when the request may be authenticated by
    /// it.
    pub fn cookie(self, name: &str) -> Option<&str> {
        (self != OriginTrust::Foreign).then_some(name)
    }
}

/// How far the request's `Origin` is trusted; `None` when it may not open
/// a connection at all.
pub fn origin_trust(origins: &Origins, headers: &HeaderMap) -> Option<OriginTrust> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Some(OriginTrust::Absent);
    };
    let origin = origin
        .to_str()
        .ok()?
        .trim_end_matches('/')
        .to_ascii_lowercase();
    if let Some(host) = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let host = host.to_ascii_lowercase();
        let bare = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if bare == Some(host.as_str()) {
            return Some(OriginTrust::Trusted);
        }
    }
    match origins {
        Origins::List(list) if list.contains(&origin) => Some(OriginTrust::Trusted),
        Origins::List(_) => None,
        Origins::Any => Some(OriginTrust::Foreign),
    }
}

/// Refusals before an upgrade, as HTTP responses; otherwise how far the
/// request's origin is trusted.
pub fn admit(edge: &Edge, headers: &HeaderMap) -> Result<OriginTrust, Refusal> {
    if edge.shutdown.is_shutdown() {
        let d = Disconnect::SHUTDOWN;
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            d.code.into(),
            d.reason,
        ));
    }
    let Some(trust) = origin_trust(&edge.settings.origins, headers) else {
        metrics::counter!("herald_edge_auth_failures_total", "reason" => "origin").increment(1);
        let e = ClientError::PERMISSION_DENIED;
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            e.code,
            "origin not allowed",
        ));
    };
    if let Err(e) = edge.clients.check() {
        metrics::counter!("herald_edge_connections_refused_total").increment(1);
        let d = Disconnect::CONNECTION_LIMIT;
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            d.code.into(),
            e.to_string(),
        ));
    }
    Ok(trust)
}

/// `GET /connection/websocket`.
pub async fn upgrade(
    State(edge): State<Arc<Edge>>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let trust = match admit(&edge, &headers) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let token = token_from_request(
        q.token.as_deref(),
        &headers,
        trust.cookie(&edge.settings.token_cookie),
    );
    let max = edge.settings.limits.max_message_bytes;
    let ws = ws.protocols([PROTOBUF_SUBPROTOCOL]);
    let format = if ws.selected_protocol().is_some() {
        Format::Protobuf
    } else {
        Format::Json
    };
    // tungstenite's default 128 KiB read buffer is zero-filled before every
    // read, so all of it is resident per connection and re-zeroed on every
    // wake-up (docs/benchmarks.md, idle connections); 1 KiB grows as needed.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve(edge, socket, token, format))
}

async fn close(socket: &mut WebSocket, d: Disconnect) {
    let frame = CloseFrame {
        code: d.code,
        reason: Utf8Bytes::from_static(d.reason),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// When `exp` (Unix seconds) plus the grace period is reached.
fn deadline(exp: i64) -> Instant {
    let left = (exp + EXPIRY_GRACE.as_secs() as i64 - unix_now()).max(0) as u64;
    Instant::now() + Duration::from_secs(left)
}

async fn serve(edge: Arc<Edge>, mut socket: WebSocket, token: Option<String>, format: Format) {
    let outbox = Arc::new(Outbox::new(edge.settings.limits.client_queue_bytes));
    let registration = match edge.clients.register(outbox.clone()) {
        Ok(r) => r,
        Err(_) => return close(&mut socket, Disconnect::CONNECTION_LIMIT).await,
    };
    let limits = edge.settings.limits.clone();
    let mut client = Client::new(
        edge,
        outbox,
        registration,
        token,
        Transport::WebSocket,
        format,
    );
    let connect_deadline = Instant::now() + limits.connect_timeout;
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    let mut heard_since_ping = true;
    let mut items = Vec::new();
    let outcome: Option<Disconnect> = loop {
        let expiry = client
            .identity
            .as_ref()
            .and_then(|i| i.expires_at)
            .map(deadline);
        let sub_expiry = client.next_subscription_expiry().map(deadline);
        tokio::select! {
            r = client.outbox.next(&mut items) => match r {
                Err(d) => break Some(d),
                Ok(()) => match tokio::time::timeout(WRITE_TIMEOUT, write(&mut socket, &mut client, &mut items)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(())) => break None,
                    Err(_) => {
                        metrics::counter!("herald_edge_slow_consumer_disconnects_total").increment(1);
                        break None;
                    }
                },
            },
            msg = socket.recv() => match msg {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) => {
                    // The one read error a client can provoke on purpose is
                    // an oversized message; anything else is a broken socket.
                    let too_big = e.to_string().contains("Space limit exceeded");
                    break too_big.then_some(Disconnect::MESSAGE_TOO_BIG);
                }
                Some(Ok(Message::Text(text))) => {
                    heard_since_ping = true;
                    metrics::counter!("herald_edge_received_bytes_total").increment(text.len() as u64);
                    if client.format != Format::Json {
                        break Some(Disconnect::INAPPROPRIATE_PROTOCOL);
                    }
                    if let Err(d) = handle(&mut client, &text) {
                        break Some(d);
                    }
                }
                Some(Ok(Message::Binary(data))) => {
                    heard_since_ping = true;
                    metrics::counter!("herald_edge_received_bytes_total").increment(data.len() as u64);
                    if client.format != Format::Protobuf {
                        break Some(Disconnect::INAPPROPRIATE_PROTOCOL);
                    }
                    if let Err(d) = handle_binary(&mut client, &data, limits.max_message_bytes) {
                        break Some(d);
                    }
                }
                Some(Ok(_)) => heard_since_ping = true,
            },
            _ = ping.tick() => {
                if client.identity.is_none() {
                    continue;
                }
                if !heard_since_ping {
                    break Some(Disconnect::NO_PONG);
                }
                heard_since_ping = false;
                client.send(client.format.ping());
            }
            _ = sleep_until(connect_deadline), if client.identity.is_none() => break Some(Disconnect::STALE),
            _ = sleep_until(expiry.unwrap_or(connect_deadline)), if expiry.is_some() => {
                let exp = client.identity.as_ref().and_then(|i| i.expires_at);
                if exp.is_some_and(|e| e + EXPIRY_GRACE.as_secs() as i64 <= unix_now()) {
                    break Some(Disconnect::EXPIRED);
                }
            }
            _ = sleep_until(sub_expiry.unwrap_or(connect_deadline)), if sub_expiry.is_some() => {
                client.expire_subscriptions(unix_now());
            }
        }
    };
    if let Some(d) = outcome {
        close(&mut socket, d).await;
    }
}

fn handle(client: &mut Client, text: &str) -> Result<(), Disconnect> {
    let commands = frame::parse(text).map_err(|_| Disconnect::BAD_REQUEST)?;
    for c in commands {
        c.command.apply(c.id, client)?;
    }
    Ok(())
}

fn handle_binary(client: &mut Client, data: &bytes::Bytes, max: usize) -> Result<(), Disconnect> {
    let commands = protobuf::parse(data, max).map_err(|e| {
        tracing::debug!(client = %client.client_id, "bad protobuf message: {e}");
        Disconnect::BAD_REQUEST
    })?;
    for c in commands {
        c.command.apply(c.id, client)?;
    }
    Ok(())
}

/// One queued item as a WebSocket message in the client's format.
fn message(client: &mut Client, item: Item) -> Result<Message, ()> {
    let format = client.format;
    let bytes = match item {
        Item::Pub(e) => {
            if format == Format::Json {
                return Ok(Message::Text(e.ws_text.clone()));
            }
            format.publication(&e)
        }
        Item::Frame(b) => b,
        Item::Subscribed(d) => format.subscribe_reply(&d, client.subscription_ttl(&d.channel)),
        Item::SubscribeFailed {
            reply_id,
            channel,
            error,
        } => {
            client.dropped(&channel);
            format.error(reply_id, &error)
        }
        Item::Unsubscribed {
            channel,
            code,
            reason,
        } => {
            client.dropped(&channel);
            format.unsubscribe_push(&channel, code, reason)
        }
    };
    match format {
        Format::Json => Utf8Bytes::try_from(bytes)
            .map(Message::Text)
            .map_err(|_| ()),
        Format::Protobuf => Ok(Message::Binary(bytes)),
    }
}

async fn write(
    socket: &mut WebSocket,
    client: &mut Client,
    items: &mut Vec<Item>,
) -> Result<(), ()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut bytes = 0usize;
    let mut pubs = 0u64;
    for item in items.drain(..) {
        match &item {
            Item::Pub(e) => {
                pubs += 1;
                if e.published_at_ms > 0 {
                    metrics::histogram!("herald_edge_delivery_latency_seconds")
                        .record((now_ms - e.published_at_ms).max(0) as f64 / 1000.0);
                }
            }
            Item::Subscribed(d) => pubs += d.publications.len() as u64,
            _ => {}
        }
        let msg = message(client, item)?;
        bytes += match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        socket.feed(msg).await.map_err(|_| ())?;
    }
    socket.flush().await.map_err(|_| ())?;
    metrics::counter!("herald_edge_sent_bytes_total", "transport" => "websocket")
        .increment(bytes as u64);
    metrics::counter!("herald_edge_publications_sent_total", "transport" => "websocket")
        .increment(pubs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", "rt.example.com".parse().unwrap());
        if let Some(o) = origin {
            h.insert("origin", o.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookies_count_only_for_origins_that_are_not_any_site() {
        let any = Origins::Any;
        let listed = Origins::List(vec!["https://app.example.com".into()]);
        let t = |o: &Origins, origin| origin_trust(o, &headers(origin));
        assert_eq!(t(&any, None), Some(OriginTrust::Absent));
        assert_eq!(t(&listed, None), Some(OriginTrust::Absent));
        assert_eq!(
            t(&any, Some("https://rt.example.com")),
            Some(OriginTrust::Trusted)
        );
        assert_eq!(
            t(&listed, Some("https://App.example.com/")),
            Some(OriginTrust::Trusted)
        );
        assert_eq!(t(&listed, Some("https://evil.example")), None);
        let foreign = t(&any, Some("https://evil.example"));
        assert_eq!(foreign, Some(OriginTrust::Foreign));
        assert_eq!(foreign.unwrap().cookie("herald_token"), None);
        assert_eq!(
            OriginTrust::Trusted.cookie("herald_token"),
            Some("herald_token")
        );
    }
}
