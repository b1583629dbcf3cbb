//! Guarantee 6 for tokens: each bad token gets its documented code
//! (docs/protocol.md), and a token in the query string or a cookie works
//! (browsers cannot set WebSocket headers).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{EdgeProc, SECRET, Script, cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_their_documented_codes() {
    let cluster = cluster().await;
    let edge = EdgeProc::start(&cluster, &[]).await;
    let mut script = Script::spawn("auth.mjs", &[&edge.ws_url, SECRET]);
    let mut cases: HashMap<String, Value> = HashMap::new();
    while cases.len() < 9 {
        let v = script
            .expect(Duration::from_secs(30), |v| v.get("case").is_some())
            .await;
        cases.insert(v["case"].as_str().unwrap_or_default().to_string(), v);
    }
    let outcome = |c: &str| (cases[c]["outcome"].clone(), cases[c]["code"].clone());
    // No token: connect error 101, the SDK stops (no reconnect).
    assert_eq!(outcome("missing"), ("disconnected".into(), 101.into()));
    // Not a JWT / signed with another key: disconnect 3500.
    assert_eq!(outcome("malformed"), ("disconnected".into(), 3500.into()));
    assert_eq!(outcome("wrong_key"), ("disconnected".into(), 3500.into()));
    // Expired: connect error 109 (the SDK would fetch a new token).
    assert_eq!(outcome("expired"), ("connect-error".into(), 109.into()));
    // A channel the token's caps do not cover: subscribe error 103.
    assert_eq!(
        outcome("forbidden_channel"),
        ("unsubscribed".into(), 103.into())
    );
    // Expiry while connected without a refresh: disconnect 3005.
    assert_eq!(
        outcome("expires_while_connected"),
        ("closed".into(), 3005.into())
    );
    for ok in ["valid", "query_token", "cookie_token"] {
        assert_eq!(cases[ok]["outcome"], "subscribed", "{ok}: {}", cases[ok]);
    }
    script.finish().await;
}
