//! Guarantee 6 for malformed input: invalid JSON, binary garbage, an
//! unknown command, a command before connect, a 10 MiB frame and 10,000
//! subscribes in a burst each get their documented answer, while a second
//! client on the same edge keeps receiving everything.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{EdgeProc, Script, cluster, offsets, publish, token};

const WATCH: &str = "chat:watch";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_disturbs_no_one_else() {
    let cluster = cluster().await;
    let edge = EdgeProc::start(&cluster, &[]).await;
    let tok = token("mallory");
    let mut script = Script::spawn("bad_input.mjs", &[&edge.ws_url, &tok, WATCH]);
    script
        .expect(Duration::from_secs(20), |v| v["event"] == "ready")
        .await;
    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    // Publications flow to the watcher while the abuse goes on.
    for n in 1..=10 {
        publish(&mut publisher, WATCH, n).await;
    }
    let mut cases: HashMap<String, Value> = HashMap::new();
    loop {
        let v = script
            .expect(Duration::from_secs(120), |v| {
                v.get("case").is_some() || v["event"] == "cases-done"
            })
            .await;
        if v["event"] == "cases-done" {
            break;
        }
        cases.insert(v["case"].as_str().unwrap_or_default().to_string(), v);
    }
    for n in 11..=20 {
        publish(&mut publisher, WATCH, n).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let summary = script.summary().await;

    assert_eq!(cases["invalid_json"]["closed"]["code"], 3501);
    assert_eq!(cases["binary_garbage"]["closed"]["code"], 3506);
    assert_eq!(cases["subscribe_before_connect"]["closed"]["code"], 3501);
    // Over --max-message-bytes: the socket is closed (1009 when the close
    // frame gets through, else the TCP connection just ends).
    let huge = cases["huge_frame"]["closed"]["code"].as_u64().unwrap_or(0);
    assert!(huge == 1009 || huge == 1006, "{}", cases["huge_frame"]);
    assert_eq!(
        cases["unknown_command"]["reply"],
        json!({"id": 7, "error": {"code": 104, "message": "method not found"}})
    );
    assert_eq!(cases["unknown_command"]["still_open"], true);
    let burst = &cases["subscribe_burst"];
    assert_eq!(burst["answered"], 10000, "{burst}");
    // The first 200 (the command burst) are carried out: 128 subscribed,
    // the rest over the channel limit (106); beyond the burst, commands
    // are refused with 111 before anything else is checked.
    assert_eq!(burst["codes"]["subscribe"], 128, "{burst}");
    let limited = burst["codes"]["error 106"].as_u64().unwrap_or(0);
    let throttled = burst["codes"]["error 111"].as_u64().unwrap_or(0);
    assert!(throttled > 0, "{burst}");
    assert_eq!(limited + throttled, 10000 - 128, "{burst}");
    assert!(burst["closed"].is_null(), "{burst}");

    assert_eq!(offsets(&summary["offsets"]), (1..=20).collect::<Vec<u64>>());
    assert!(summary["closed"].is_null(), "the watcher stayed connected");
    script.finish().await;
}
