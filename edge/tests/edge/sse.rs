//! Guarantee 3 over SSE with a plain EventSource: two channels, the
//! connection cut, a reconnect with `Last-Event-ID`, and neither channel
//! has a gap or a duplicate.

use std::time::Duration;

use crate::harness::{EdgeProc, Script, cluster, offsets, publish, token};

const A: &str = "chat:sse-a";
const B: &str = "sse-b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_every_channel_from_last_event_id() {
    let cluster = cluster().await;
    let edge = EdgeProc::start(&cluster, &[]).await;
    let tok = token("sse-user");
    let mut script = Script::spawn("sse_resume.mjs", &[&edge.sse_url, &tok, A, B]);
    for _ in 0..2 {
        script
            .expect(Duration::from_secs(20), |v| v["event"] == "subscribed")
            .await;
    }
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    for n in 1..=10 {
        publish(&mut publisher, A, n).await;
        publish(&mut publisher, B, n).await;
    }
    script
        .expect(Duration::from_secs(20), |v| {
            v["channel"] == B && v["offset"] == 10
        })
        .await;
    script.send("cut").await;
    // Published while the client is away.
    for n in 11..=20 {
        publish(&mut publisher, A, n).await;
        publish(&mut publisher, B, n).await;
    }
    for _ in 0..2 {
        let s = script
            .expect(Duration::from_secs(20), |v| {
                v["event"] == "subscribed" && v["was_recovering"] == true
            })
            .await;
        assert_eq!(s["recovered"], true, "{s}");
    }
    script
        .expect(Duration::from_secs(20), |v| {
            v["channel"] == B && v["offset"] == 20
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = script.summary().await;
    let want: Vec<u64> = (1..=20).collect();
    assert_eq!(offsets(&summary["received"][A]), want, "channel {A}");
    assert_eq!(offsets(&summary["received"][B]), want, "channel {B}");
    script.finish().await;
}
