//! Guarantee 6 for the Protobuf protocol, from raw WebSocket clients (no
//! SDK, so the bytes are exactly the malformed ones): garbage bytes, a
//! truncated length varint, a length beyond the message limit, a text
//! frame on a Protobuf connection, a command before connect, an unknown
//! command, and an oversized frame each get their documented answer
//! (docs/protocol.md, "Protobuf"), while a JSON watcher and a Protobuf
//! watcher on the same edge keep receiving everything and answering pings.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use herald_proto::client_v2 as pb;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{EdgeProc, cluster, publish, token};

const WATCH: &str = "chat:pb-watch";

type Ws = WebSocketStream<TcpStream>;

/// Open a WebSocket to `url`, offering the Protobuf subprotocol or not.
async fn open(url: &str, protobuf: bool) -> Ws {
    let mut req = url.into_client_request().expect("request");
    if protobuf {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "centrifuge-protobuf".parse().expect("header"),
        );
    }
    let addr = req.uri().authority().expect("authority").to_string();
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket handshake");
    let selected = resp.headers().get("sec-websocket-protocol");
    assert_eq!(
        selected.map(|v| v.to_str().unwrap_or_default()),
        protobuf.then_some("centrifuge-protobuf")
    );
    ws
}

fn delimited(commands: &[pb::Command]) -> Bytes {
    let mut out = Vec::new();
    for c in commands {
        c.encode_length_delimited(&mut out).expect("encode");
    }
    Bytes::from(out)
}

fn replies(data: &[u8]) -> Vec<pb::Reply> {
    let mut buf = data;
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(pb::Reply::decode_length_delimited(&mut buf).expect("a reply"));
    }
    out
}

fn connect_command(id: u32) -> pb::Command {
    pb::Command {
        id,
        connect: Some(pb::ConnectRequest {
            token: token("mallory"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Read until a reply with `id` (hang guard 10 s).
async fn reply_to(ws: &mut Ws, id: u32) -> pb::Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no reply to {id}"))
            .expect("socket open")
            .expect("read");
        if let Message::Binary(b) = msg
            && let Some(r) = replies(&b).into_iter().find(|r| r.id == id)
        {
            return r;
        }
    }
}

/// A connected Protobuf connection.
async fn connected(url: &str) -> Ws {
    let mut ws = open(url, true).await;
    ws.send(Message::Binary(delimited(&[connect_command(1)])))
        .await
        .expect("send connect");
    let r = reply_to(&mut ws, 1).await;
    assert!(r.connect.is_some(), "connected: {r:?}");
    ws
}

/// The close code the edge ends the connection with (None: no close frame,
/// the TCP connection just ended).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the edge closes the connection")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return None,
        }
    }
}

/// What a watcher saw: publication offsets, and how it ended.
#[derive(Default)]
struct Seen {
    offsets: Vec<u64>,
    closed: Option<String>,
    pings: u32,
}

/// A watcher subscribed to [`WATCH`] that answers every server ping,
/// reading in the background.
async fn watcher(url: &str, protobuf: bool) -> Arc<Mutex<Seen>> {
    let mut ws = open(url, protobuf).await;
    if protobuf {
        let subscribe = pb::Command {
            id: 2,
            subscribe: Some(pb::SubscribeRequest {
                channel: WATCH.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        ws.send(Message::Binary(delimited(&[connect_command(1), subscribe])))
            .await
            .expect("send");
        let r = reply_to(&mut ws, 2).await;
        assert!(r.subscribe.is_some(), "subscribed: {r:?}");
    } else {
        let text = format!(
            "{}\n{}",
            serde_json::json!({"id": 1, "connect": {"token": token("watcher")}}),
            serde_json::json!({"id": 2, "subscribe": {"channel": WATCH}})
        );
        ws.send(Message::Text(text.into())).await.expect("send");
        loop {
            let msg = ws.next().await.expect("open").expect("read");
            if msg.to_text().unwrap_or_default().contains("\"id\":2,") {
                break;
            }
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = ws.next().await {
            let pong = match msg {
                Ok(Message::Binary(b)) => {
                    let mut pong = false;
                    for r in replies(&b) {
                        if r == pb::Reply::default() {
                            pong = true;
                        } else if let Some(p) = r.push.and_then(|p| p.r#pub) {
                            out.lock().unwrap().offsets.push(p.offset);
                        }
                    }
                    pong.then(|| Message::Binary(Bytes::from_static(&[0])))
                }
                Ok(Message::Text(t)) => {
                    let mut pong = false;
                    for line in t.lines() {
                        let v: serde_json::Value = serde_json::from_str(line).expect("json");
                        if v == serde_json::json!({}) {
                            pong = true;
                        } else if let Some(o) = v["push"]["pub"]["offset"].as_u64() {
                            out.lock().unwrap().offsets.push(o);
                        }
                    }
                    pong.then(|| Message::Text("{}".into()))
                }
                Ok(Message::Close(f)) => {
                    out.lock().unwrap().closed = Some(format!("{f:?}"));
                    break;
                }
                Ok(_) => None,
                Err(e) => {
                    out.lock().unwrap().closed = Some(e.to_string());
                    break;
                }
            };
            if let Some(p) = pong {
                out.lock().unwrap().pings += 1;
                if ws.send(p).await.is_err() {
                    break;
                }
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protobuf_input_is_answered_and_disturbs_no_one_else() {
    let cluster = cluster().await;
    let edge = EdgeProc::start(&cluster, &["--ping-interval-secs", "2"]).await;
    let url = edge.ws_url.clone();
    let json_watcher = watcher(&url, false).await;
    let pb_watcher = watcher(&url, true).await;
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    for n in 1..=10 {
        publish(&mut publisher, WATCH, n).await;
    }

    // A length of 5, then bytes that are no Command (wire type 7).
    let mut ws = connected(&url).await;
    let garbage = Bytes::from_static(&[5, 0xff, 0xff, 0xff, 0xff, 0xff]);
    ws.send(Message::Binary(garbage)).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3501), "garbage");

    // A length prefix cut in the middle of its varint.
    let mut ws = connected(&url).await;
    let truncated = Bytes::from_static(&[0x96, 0x80]);
    ws.send(Message::Binary(truncated)).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3501), "truncated varint");

    // A length of 1 GiB (the message limit is 64 KiB), in a small frame.
    let mut ws = connected(&url).await;
    let mut oversized = Vec::new();
    prost::encoding::encode_varint(1 << 30, &mut oversized);
    oversized.extend_from_slice(&[0x08, 0x01]);
    ws.send(Message::Binary(oversized.into()))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3501), "oversized length");

    // JSON text on a Protobuf connection.
    let mut ws = connected(&url).await;
    ws.send(Message::Text("{\"id\":2,\"ping\":{}}".into()))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3506), "text frame");

    // A subscribe before connect.
    let mut ws = open(&url, true).await;
    let early = pb::Command {
        id: 1,
        subscribe: Some(pb::SubscribeRequest {
            channel: WATCH.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    ws.send(Message::Binary(delimited(&[early])))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(3501), "before connect");

    // A frame over --max-message-bytes: 1009, or the TCP connection ends.
    let mut ws = connected(&url).await;
    let huge = Bytes::from(vec![0u8; 10 * 1024 * 1024]);
    let _ = ws.send(Message::Binary(huge)).await;
    let code = close_code(&mut ws).await;
    assert!(code.is_none() || code == Some(1009), "huge frame: {code:?}");

    // An unknown command (an id, no method): error 104, the connection
    // stays usable.
    let mut ws = connected(&url).await;
    let unknown = pb::Command {
        id: 7,
        ..Default::default()
    };
    let ping = pb::Command {
        id: 8,
        ping: Some(pb::PingRequest {}),
        ..Default::default()
    };
    ws.send(Message::Binary(delimited(&[unknown, ping])))
        .await
        .expect("send");
    let e = reply_to(&mut ws, 7).await.error.expect("an error reply");
    assert_eq!((e.code, e.message.as_str()), (104, "method not found"));
    assert!(reply_to(&mut ws, 8).await.ping.is_some(), "still answers");

    for n in 11..=20 {
        publish(&mut publisher, WATCH, n).await;
    }
    // Long enough for the last publications and a few ping rounds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = [&json_watcher, &pb_watcher].iter().all(|w| {
            let w = w.lock().unwrap();
            w.offsets.len() >= 20 && w.pings >= 2
        });
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, w) in [("json", &json_watcher), ("protobuf", &pb_watcher)] {
        let w = w.lock().unwrap();
        assert_eq!(w.offsets, (1..=20).collect::<Vec<u64>>(), "{name} watcher");
        assert!(w.closed.is_none(), "{name} watcher closed: {:?}", w.closed);
        assert!(w.pings >= 2, "{name} watcher answered pings: {}", w.pings);
    }
}
