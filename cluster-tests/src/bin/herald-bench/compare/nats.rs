//! A minimal NATS client, enough for the comparison: the text protocol
//! (`INFO`, `CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`, `+OK`/`-ERR`) over
//! WebSocket frames (subscribers, as a browser would connect) or over TCP
//! (publishers, and JetStream's request/reply API).
//!
//! The server may split one protocol message over several frames or reads,
//! so bytes go through one [`Parser`] whatever carries them.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::wsclient::{Dialer, Ended};

/// What a client sends first: no `+OK` per command, no headers.
const CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\"name\":\"herald-bench\"}\r\n";
/// Each request (subscribe confirmation, JetStream reply) must be answered
/// within this long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// One protocol message from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A publication: subject and payload.
    Msg {
        subject: String,
        payload: Vec<u8>,
    },
    Ping,
    Pong,
    /// `-ERR` with the server's reason.
    Err(String),
    /// `INFO`, `+OK`: nothing to act on.
    Other,
}

/// Splits the byte stream into [`Event`]s.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    start: usize,
}

impl Parser {
    /// Append bytes as they arrived.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived.
    pub(crate) fn next(&mut self) -> Option<Event> {
        let rest = &self.buf[self.start..];
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&rest[..eol]).unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        let op = words.next().unwrap_or("").to_ascii_uppercase();
        let event = match op.as_str() {
            "MSG" => {
                let fields: Vec<&str> = words.collect();
                let (subject, len) = match fields.as_slice() {
                    [subject, _sid, len] | [subject, _sid, _, len] => {
                        ((*subject).to_string(), len.parse::<usize>().unwrap_or(0))
                    }
                    _ => {
                        return Some(self.consume(eol + 2, Event::Err(format!("bad MSG: {line}"))));
                    }
                };
                let body = eol + 2;
                if rest.len() < body + len + 2 {
                    return None;
                }
                let payload = rest[body..body + len].to_vec();
                return Some(self.consume(body + len + 2, Event::Msg { subject, payload }));
            }
            "PING" => Event::Ping,
            "PONG" => Event::Pong,
            "-ERR" => Event::Err(line[4..].trim().to_string()),
            _ => Event::Other,
        };
        Some(self.consume(eol + 2, event))
    }

    fn consume(&mut self, n: usize, event: Event) -> Event {
        self.start += n;
        event
    }
}

/// A subscriber over the server's WebSocket listener.
#[derive(Debug)]
pub(crate) struct NatsWs {
    ws: WebSocketStream<TcpStream>,
    parser: Parser,
}

impl NatsWs {
    /// Connect client number `index` and subscribe to `subject`; the
    /// server's `PONG` to a following `PING` confirms the subscription.
    pub(crate) async fn open(dialer: &Dialer, index: usize, subject: &str) -> Result<Self, String> {
        let ws = dialer.websocket(index).await?;
        let mut conn = Self {
            ws,
            parser: Parser::default(),
        };
        conn.send(&format!("{CONNECT}SUB {subject} 1\r\nPING\r\n"))
            .await?;
        conn.until_pong().await?;
        Ok(conn)
    }

    /// Send raw protocol text.
    pub(crate) async fn send(&mut self, text: &str) -> Result<(), String> {
        self.ws
            .send(Message::binary(text.as_bytes().to_vec()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn until_pong(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.event())
                .await
                .map_err(|_| "no PONG".to_string())??
            {
                Event::Pong => return Ok(()),
                Event::Err(e) => return Err(format!("-ERR {e}")),
                _ => {}
            }
        }
    }

    /// The next event, answering the server's pings on the way.
    pub(crate) async fn event(&mut self) -> Result<Event, String> {
        loop {
            if let Some(event) = self.parser.next() {
                if event == Event::Ping {
                    self.send("PONG\r\n").await?;
                    continue;
                }
                return Ok(event);
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => self.parser.push(&b),
                Some(Ok(Message::Text(t))) => self.parser.push(t.as_bytes()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!(
                        "closed {}",
                        frame.map_or(1005, |f| u16::from(f.code))
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("eof".to_string()),
            }
        }
    }

    /// Stay subscribed until `stop`, giving every payload to `on_payload`.
    pub(crate) async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut on_payload: impl FnMut(&str),
    ) -> Ended {
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                event = self.event() => event,
            };
            match event {
                Ok(Event::Msg { payload, .. }) => {
                    on_payload(std::str::from_utf8(&payload).unwrap_or(""));
                }
                Ok(Event::Err(e)) => return Ended::Lost(format!("-ERR {e}")),
                Ok(_) => {}
                Err(e) => return Ended::Lost(e),
            }
        }
    }
}

/// A TCP connection for publishing and for JetStream requests.
#[derive(Debug)]
pub(crate) struct NatsTcp {
    stream: TcpStream,
    parser: Parser,
    inbox: String,
    next_reply: u64,
}

impl NatsTcp {
    /// Connect, and subscribe to a private inbox for replies.
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let inbox = format!(
            "_INBOX.bench{}x{}",
            std::process::id(),
            crate::fanout::unix_us()
        );
        let mut conn = Self {
            stream,
            parser: Parser::default(),
            inbox,
            next_reply: 0,
        };
        let hello = format!("{CONNECT}SUB {}.* 1\r\nPING\r\n", conn.inbox);
        conn.stream.write_all(hello.as_bytes()).await?;
        loop {
            match conn.event().await.map_err(anyhow::Error::msg)? {
                Event::Pong => return Ok(conn),
                Event::Err(e) => anyhow::bail!("nats-server refused the connection: {e}"),
                _ => {}
            }
        }
    }

    /// Publish without waiting for anything (core NATS: at most once).
    pub(crate) async fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<(), String> {
        let mut frame = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Publish with a reply subject and wait for the reply: a JetStream
    /// publish acknowledgement or an API answer.
    pub(crate) async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.next_reply += 1;
        let reply = format!("{}.{}", self.inbox, self.next_reply);
        let mut frame = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.event())
                .await
                .map_err(|_| "TIMEOUT".to_string())??;
            match event {
                Event::Msg { subject, payload } if subject == reply => return Ok(payload),
                Event::Err(e) => return Err(format!("-ERR {e}")),
                _ => {}
            }
        }
    }

    async fn event(&mut self) -> Result<Event, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(event) = self.parser.next() {
                if event == Event::Ping {
                    self.stream
                        .write_all(b"PONG\r\n")
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    continue;
                }
                return Ok(event);
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("eof".to_string());
            }
            self.parser.push(&chunk[..n]);
        }
    }
}

/// A JetStream acknowledgement (`{"stream":..,"seq":..}`) or API answer
/// without an `error` member.
pub(crate) fn js_ok(reply: &[u8]) -> Result<serde_json::Value, String> {
    let v: serde_json::Value =
        serde_json::from_slice(reply).map_err(|_| "reply is not JSON".to_string())?;
    match v.get("error") {
        Some(e) => Err(format!(
            "jetstream error {}",
            e.get("err_code")
                .or(e.get("code"))
                .cloned()
                .unwrap_or_default()
        )),
        None => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_reads() {
        let mut p = Parser::default();
        p.push(b"INFO {}\r\nMSG a.b 1 5\r\nhel");
        assert_eq!(p.next(), Some(Event::Other));
        assert_eq!(p.next(), None);
        p.push(b"lo\r\nPING\r\nMSG r 1 in.1 2\r\nok\r\n");
        assert_eq!(
            p.next(),
            Some(Event::Msg {
                subject: "a.b".into(),
                payload: b"hello".to_vec()
            })
        );
        assert_eq!(p.next(), Some(Event::Ping));
        assert_eq!(
            p.next(),
            Some(Event::Msg {
                subject: "r".into(),
                payload: b"ok".to_vec()
            })
        );
        assert_eq!(p.next(), None);
    }

    #[test]
    fn jetstream_errors_are_failures() {
        assert!(js_ok(br#"{"stream":"B","seq":3}"#).is_ok());
        assert!(js_ok(br#"{"error":{"code":503,"err_code":10008}}"#).is_err());
    }
}
