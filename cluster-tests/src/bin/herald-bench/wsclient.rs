//! One benchmark client: a WebSocket connection to an edge speaking the
//! Centrifugo client protocol v2 (JSON), as `docs/protocol.md` ("Client
//! protocol (edge)") describes it: `connect` with a token, `subscribe` to a
//! channel, answer the edge's `{}` pings, and hand every other message to
//! the benchmark.
//!
//! Many thousands of these run in one process, so each keeps its buffers
//! small ([`READ_BUFFER`]) and does no JSON parsing after the handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Read buffer of each benchmark client. tungstenite's default (128 KiB,
/// zero-filled before the first read) would cost the benchmark process
/// over a GiB at 10,000 clients.
const READ_BUFFER: usize = 4096;
/// The largest message a client accepts from the edge.
const MAX_MESSAGE: usize = 1 << 20;
/// TCP connect, WebSocket handshake, and each of the connect and subscribe
/// replies must come within this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How to reach the edge.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    url: String,
    server: SocketAddr,
    sources: Vec<IpAddr>,
}

impl Dialer {
    /// `url` is `ws://host:port/connection/websocket`; clients connect from
    /// `sources` in turn (each address has its own ephemeral port range).
    pub(crate) async fn new(url: &str, sources: Vec<IpAddr>) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("ws://") else {
            bail!("the WebSocket URL must start with ws:// (the benchmark speaks no TLS): {url}");
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        let server = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        if sources.is_empty() {
            bail!("--source-addrs: give at least one local address");
        }
        if let Some(bad) = sources.iter().find(|s| s.is_ipv4() != server.is_ipv4()) {
            bail!("--source-addrs: {bad} cannot reach {server} (different address family)");
        }
        Ok(Self {
            url: url.to_string(),
            server,
            sources,
        })
    }

    /// Open client number `index`: connect with `token`, subscribe to
    /// `channel`. On failure, a short reason for the error tally.
    pub(crate) async fn open(
        &self,
        index: usize,
        token: &str,
        channel: &str,
    ) -> Result<Conn, String> {
        let mut conn = self.connect(index, token).await?;
        conn.subscribe(channel, None).await?;
        Ok(conn)
    }

    /// Open client number `index` and send `connect` with `token`, without
    /// subscribing.
    pub(crate) async fn connect(&self, index: usize, token: &str) -> Result<Conn, String> {
        let ws = self.websocket(index).await?;
        let mut conn = Conn { ws, next_id: 2 };
        let connect =
            serde_json::json!({"id": 1, "connect": {"token": token, "name": "herald-bench"}});
        conn.command(1, "connect", connect).await?;
        Ok(conn)
    }

    /// A WebSocket to the server from the source address of client number
    /// `index`, with the small buffers many thousands of clients need; the
    /// protocol spoken over it is the caller's.
    pub(crate) async fn websocket(
        &self,
        index: usize,
    ) -> Result<WebSocketStream<TcpStream>, String> {
        let source = self.sources[index % self.sources.len()];
        let tcp = tokio::time::timeout(STEP_TIMEOUT, self.tcp(source))
            .await
            .map_err(|_| "tcp connect: timeout".to_string())?
            .map_err(|e| format!("tcp connect: {}", io_reason(&e)))?;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let (ws, _) = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio_tungstenite::client_async_with_config(self.url.as_str(), tcp, Some(config)),
        )
        .await
        .map_err(|_| "websocket handshake: timeout".to_string())?
        .map_err(|e| match e {
            WsError::Http(response) => {
                format!("websocket handshake: HTTP {}", response.status().as_u16())
            }
            other => format!("websocket handshake: {}", ws_reason(&other)),
        })?;
        Ok(ws)
    }

    async fn tcp(&self, source: IpAddr) -> std::io::Result<TcpStream> {
        let socket = if self.server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(self.server).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// How a client's connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The benchmark told it to stop.
    Stopped,
    /// The edge ended it: a close frame's code (`closed 3008`), a reset or
    /// an EOF.
    Lost(String),
}

/// A connected, subscribed client.
#[derive(Debug)]
pub(crate) struct Conn {
    ws: WebSocketStream<TcpStream>,
    /// Id of the next command.
    next_id: u64,
}

impl Conn {
    /// Subscribe to `channel`; with `recover` (`offset`, `epoch`), ask for
    /// the publications missed since that position. The reply's `subscribe`
    /// object (`recovered`, `publications`, `offset`, `epoch`).
    pub(crate) async fn subscribe(
        &mut self,
        channel: &str,
        recover: Option<(u64, &str)>,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut body = serde_json::json!({"channel": channel});
        if let Some((offset, epoch)) = recover {
            body["recover"] = Value::Bool(true);
            body["offset"] = offset.into();
            body["epoch"] = epoch.into();
        }
        let mut reply = self
            .command(
                id,
                "subscribe",
                serde_json::json!({"id": id, "subscribe": body}),
            )
            .await?;
        Ok(reply
            .get_mut("subscribe")
            .map(Value::take)
            .unwrap_or_default())
    }

    /// Send `body` and wait for the reply with `id`; an error reply or a
    /// close is the failure's reason.
    async fn command(&mut self, id: u64, method: &str, body: Value) -> Result<Value, String> {
        self.ws
            .send(Message::text(body.to_string()))
            .await
            .map_err(|e| format!("{method}: send: {}", ws_reason(&e)))?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no reply"))?;
            let text = match msg {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!(
                        "{method}: closed {}",
                        frame.map_or(1005, |f| u16::from(f.code))
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: {}", ws_reason(&e))),
                None => return Err(format!("{method}: eof")),
            };
            for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
                if line == "{}" {
                    self.pong().await.map_err(|e| format!("{method}: {e}"))?;
                    continue;
                }
                let Ok(reply) = serde_json::from_str::<Value>(line) else {
                    return Err(format!("{method}: reply is not JSON"));
                };
                if reply.get("id").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                if let Some(error) = reply.get("error") {
                    return Err(format!(
                        "{method}: error {}",
                        error.get("code").and_then(Value::as_u64).unwrap_or(0)
                    ));
                }
                return Ok(reply);
            }
        }
    }

    async fn pong(&mut self) -> Result<(), String> {
        self.ws
            .send(Message::text("{}"))
            .await
            .map_err(|e| format!("pong: {}", ws_reason(&e)))
    }

    /// Stay connected until `stop` turns true, answering pings and giving
    /// every other message (one JSON object per line) to `on_line`.
    pub(crate) async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut on_line: impl FnMut(&str),
    ) -> Ended {
        loop {
            let msg = tokio::select! {
                biased;
                changed = stop.wait_for(|s| *s) => {
                    let _ = changed;
                    return Ended::Stopped;
                }
                msg = self.ws.next() => msg,
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    for line in text.as_str().split('\n') {
                        if line == "{}" {
                            if let Err(e) = self.pong().await {
                                return Ended::Lost(e);
                            }
                        } else if !line.is_empty() {
                            on_line(line);
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ended::Lost(format!(
                        "closed {}",
                        frame.map_or(1005, |f| u16::from(f.code))
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Lost(ws_reason(&e)),
                None => return Ended::Lost("eof".to_string()),
            }
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        // EMFILE / ENFILE: the benchmark's own open-files limit.
        Some(24) | Some(23) => "too many open files".to_string(),
        // EADDRNOTAVAIL: the source address ran out of ephemeral ports (or is
        // not configured).
        Some(99) => "no free local port (add --source-addrs)".to_string(),
        _ => e.kind().to_string(),
    }
}

fn ws_reason(e: &WsError) -> String {
    match e {
        WsError::Io(io) => io_reason(io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_string(),
        WsError::Protocol(p) => format!("protocol: {p}"),
        WsError::Capacity(c) => format!("capacity: {c}"),
        other => other.to_string(),
    }
}
