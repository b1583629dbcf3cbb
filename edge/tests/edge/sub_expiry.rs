//! Token expiry after subscribe (docs/protocol.md, "Authentication and
//! capabilities"), with the real SDK in JSON and in Protobuf: subscription
//! tokens with `exp` are announced (`expires`, `ttl`) so the SDK refreshes
//! them with `sub_refresh` (and the connection token with `refresh`); a
//! subscription whose token is not refreshed in time is ended by the edge
//! with the unsubscribe push 2501 and receives nothing more; a refresh with
//! an expired token is refused with error 109 (guarantee 6).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{EdgeProc, SECRET, Script, cluster, publish};

/// Publications sent while the tokens expire and are refreshed (one every
/// 500 ms: a dozen seconds, several 3 s token lifetimes).
const COUNT: u64 = 24;

fn numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|n| n.as_u64().expect("number"))
        .collect()
}

fn check(format: &str, summary: &Value) {
    let refreshing = &summary["refreshing"];
    assert_eq!(
        numbers(&refreshing["offsets"]),
        (1..=COUNT).collect::<Vec<u64>>(),
        "{format}: the refreshing client got everything: {refreshing}"
    );
    assert_eq!(refreshing["state"], "subscribed", "{format}: {refreshing}");
    assert!(refreshing["ended"].is_null(), "{format}: {refreshing}");
    assert_eq!(
        refreshing["events"].as_array().map(Vec::len),
        Some(1),
        "{format}: only its first subscribe, no disconnect: {refreshing}"
    );
    for key in ["subRefreshes", "connRefreshes"] {
        assert!(
            refreshing[key].as_u64() >= Some(2),
            "{format}: {key} {refreshing}"
        );
    }

    let failing = &summary["failing"];
    assert_eq!(
        failing["ended"], 2501,
        "{format}: unsubscribed by the edge as expired: {failing}"
    );
    let before = numbers(&failing["offsets"]);
    assert!(
        !before.is_empty() && before.len() < COUNT as usize,
        "{format}: {failing}"
    );
    assert_eq!(before, (1..=before.len() as u64).collect::<Vec<u64>>());
    assert_eq!(
        numbers(&failing["afterEnd"]),
        Vec::<u64>::new(),
        "{format}: nothing after expiry: {failing}"
    );
    assert_ne!(failing["state"], "subscribed", "{format}: {failing}");

    let stale = &summary["stale"];
    assert_eq!(
        stale["ended"], 109,
        "{format}: sub_refresh with an expired token: {stale}"
    );
    assert_eq!(stale["state"], "unsubscribed", "{format}: {stale}");
    assert_eq!(
        numbers(&stale["afterEnd"]),
        Vec::<u64>::new(),
        "{format}: {stale}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_subscription_tokens_are_refreshed_or_end_the_subscription() {
    let cluster = cluster().await;
    let edge = EdgeProc::start(&cluster, &[]).await;
    let formats = ["json", "protobuf"];
    let mut scripts = Vec::new();
    for f in formats {
        let channel = format!("chat:expiry-{f}");
        let script = Script::spawn("sub_expiry.mjs", &[&edge.ws_url, SECRET, &channel, f]);
        scripts.push((f, channel, script));
    }
    for (_, _, script) in &mut scripts {
        script
            .expect(Duration::from_secs(30), |v| v["event"] == "ready")
            .await;
    }
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    for n in 1..=COUNT {
        for (_, channel, _) in &scripts {
            publish(&mut publisher, channel, n).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (format, _, mut script) in scripts {
        let summary = script.summary().await;
        check(format, &summary);
        script.finish().await;
    }
}
