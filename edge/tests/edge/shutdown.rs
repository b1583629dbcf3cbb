//! Graceful shutdown (`docs/operations.md`, "Shutdown"): on SIGTERM the edge tells its
//! clients to reconnect elsewhere (disconnect 3001, which the SDK answers by
//! reconnecting) and exits within its grace period.

use std::time::{Duration, Instant};

use crate::harness::{EdgeProc, Script, cluster, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_to_reconnect_and_exits() {
    let cluster = cluster().await;
    let mut edge = EdgeProc::start(&cluster, &["--shutdown-grace-secs", "3"]).await;
    let tok = token("bob");
    let mut script = Script::spawn("sdk_stream.mjs", &[&edge.ws_url, "chat:bye", &tok]);
    script
        .expect(Duration::from_secs(20), |v| v["event"] == "subscribed")
        .await;
    let started = Instant::now();
    edge.terminate();
    let v = script
        .expect(Duration::from_secs(10), |v| {
            v["event"] == "connecting" && v["code"] != 0
        })
        .await;
    assert_eq!(v["code"], 3001, "{v}");
    assert_eq!(v["reason"], "shutdown", "{v}");
    assert!(edge.wait_exit(Duration::from_secs(10)), "edge exited");
    assert!(started.elapsed() < Duration::from_secs(10));
    script.send("done").await;
    script.finish().await;
}
