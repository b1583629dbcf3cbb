//! Safe framing (guarantee 1: every acknowledged publication reaches every
//! subscriber): a payload's bytes can never break the frame that carries
//! it, and no backlog within the history window is too large to deliver.
//!
//! * JSON payloads with raw CR / LF between their tokens, published
//!   through gRPC, reach the npm `centrifuge` SDK, `centrifuge-python` and
//!   an EventSource parsed intact, live and through a recovery.
//! * A backlog of 90 publications of 60 KiB (more than tonic's default
//!   4 MiB per message, and more than a client queue holds) reaches the
//!   subscriber of an edge killed while they were published and started
//!   again.

use std::collections::HashMap;
use std::time::Duration;

use herald_proto::v1::PublishRequest;
use serde_json::Value;

use crate::harness::{EdgeProc, Script, cluster, token};

const WITHIN: Duration = Duration::from_secs(60);

/// Valid JSON with raw line breaks between tokens, and escaped ones inside
/// strings.
fn payload(n: u64) -> Vec<u8> {
    match n % 4 {
        0 => format!("{{\"n\":{n},\n\"text\":\"lf\"}}"),
        1 => format!("{{\"n\":{n},\r\"text\":\"cr\"}}"),
        2 => format!("{{\r\n  \"n\": {n},\r\n  \"text\": \"line one\\nline two\"\r\n}}\r\n"),
        _ => format!("\n{{\"n\":{n},\"text\":\"cr \\r lf \\n crlf \\r\\n\"}}\n"),
    }
    .into_bytes()
}

async fn publish(
    publisher: &mut herald_cluster_tests::RotatingPublisher,
    channel: &str,
    n: u64,
    data: Vec<u8>,
) {
    let req = PublishRequest {
        channel: channel.to_string(),
        event_type: String::new(),
        data: data.into(),
        content_type: "application/json".into(),
        idempotency_key: format!("{channel}-{n}"),
        headers: HashMap::new(),
    };
    let ack = publisher
        .publish(req, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("publish {n} to {channel}: {e}"));
    assert_eq!(ack.offset, n, "offsets follow publication order");
}

/// The first line so far that satisfies `pred`, or the next one.
async fn seen_or_expect(c: &mut Script, pred: impl Fn(&Value) -> bool) -> Value {
    match c.seen.iter().find(|v| pred(v)) {
        Some(v) => v.clone(),
        None => c.expect(WITHIN, pred).await,
    }
}

/// The `received` list of a summary: offset and data of each publication.
fn received(summary: &Value) -> Vec<(u64, Value)> {
    summary["received"]
        .as_array()
        .expect("received")
        .iter()
        .map(|r| (r["offset"].as_u64().expect("offset"), r["data"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_breaks_in_payloads_reach_every_sdk_intact_also_through_recovery() {
    let cluster = cluster().await;
    let edge = EdgeProc::start(&cluster, &[]).await;
    let channel = "chat:framing";
    let tok = token("framing-user");
    let mut clients = vec![
        Script::spawn("framing_sdk.mjs", &[&edge.ws_url, channel, &tok]),
        Script::spawn_python("framing_sdk.py", &[&edge.ws_url, channel, &tok]),
        Script::spawn("framing_sse.mjs", &[&edge.sse_url, &tok, channel]),
    ];
    for c in &mut clients {
        c.expect(WITHIN, |v| v["event"] == "subscribed").await;
    }
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    for n in 1..=4 {
        publish(&mut publisher, channel, n, payload(n)).await;
    }
    for c in &mut clients {
        c.expect_pub(WITHIN, 4).await;
        c.send("cut").await;
        c.expect(WITHIN, |v| v["event"] == "cut").await;
    }
    // Published while every client is away: recovered on return.
    for n in 5..=8 {
        publish(&mut publisher, channel, n, payload(n)).await;
    }
    for c in &mut clients {
        c.send("resume").await;
        // SDKs differ in whether recovered publications or the subscribed
        // event come first.
        let s = seen_or_expect(c, |v| {
            v["event"] == "subscribed" && v["wasRecovering"] == true
        })
        .await;
        assert_eq!(s["recovered"], true, "{s}");
        seen_or_expect(c, |v| v["event"] == "pub" && v["offset"] == 8).await;
    }
    let want: Vec<(u64, Value)> = (1..=8)
        .map(|n| (n, serde_json::from_slice(&payload(n)).expect("valid JSON")))
        .collect();
    for (name, mut c) in ["npm centrifuge", "centrifuge-python", "EventSource"]
        .into_iter()
        .zip(clients)
    {
        let summary = c.summary().await;
        assert_eq!(received(&summary), want, "{name}");
        if let Some(broken) = summary.get("broken") {
            assert_eq!(broken, &Value::Array(vec![]), "{name}: unparsable events");
        }
        c.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_reaches_the_subscriber_of_a_restarted_edge() {
    let cluster = cluster().await;
    let mut edge = EdgeProc::start(&cluster, &[]).await;
    let channel = "chat:backlog";
    let tok = token("backlog-user");
    let mut sdk = Script::spawn("framing_sdk.mjs", &[&edge.ws_url, channel, &tok]);
    sdk.expect(WITHIN, |v| v["event"] == "subscribed").await;
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    let pad = "x".repeat(60 * 1024);
    let big = |n: u64| format!("{{\"n\":{n},\"pad\":\"{pad}\"}}").into_bytes();
    for n in 1..=100 {
        if n == 11 {
            sdk.expect_pub(WITHIN, 10).await;
            edge.kill();
        }
        publish(&mut publisher, channel, n, big(n)).await;
    }
    edge.restart().await;
    let s = sdk
        .expect(Duration::from_secs(120), |v| {
            v["event"] == "subscribed" && v["wasRecovering"] == true
        })
        .await;
    assert_eq!(s["recovered"], true, "{s}");
    sdk.expect_pub(Duration::from_secs(120), 100).await;
    let summary = sdk.summary().await;
    let got = received(&summary);
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=100).collect::<Vec<u64>>());
    for (offset, data) in got {
        assert_eq!(data["n"], offset);
        assert_eq!(data["pad"].as_str().map(str::len), Some(pad.len()));
    }
    sdk.finish().await;
}
