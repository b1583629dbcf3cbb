//! Guarantee 6 — bad input of any kind gets a clear, documented error code
//! (gRPC status plus `google.rpc.ErrorInfo.reason`), never a crash — and
//! guarantee 5 — an idempotent retry is stored once — on the publish API,
//! plus the API behaviours a backend relies on: forwarding from followers,
//! per-item batch offsets, and `History` reporting a resume position outside
//! the window (the server side of guarantee 3).

use std::fmt::Debug;
use std::time::Duration;

use herald_cluster_tests::{Cluster, ClusterOptions, error_metadata, reason_of};
use herald_proto::v1::{
    HistoryRequest, HistoryResponse, PublishBatchRequest, PublishRequest, RemoveNodeRequest,
    StreamPosition,
};
use tonic::{Code, Response, Status};

const POLICY: &str = r#"
[limits]
max_channel_len = 64
max_payload_bytes = 1024
max_batch = 10
idempotency_window_secs = 900

[namespaces.val]
history_size = 100
history_ttl_secs = 0

[namespaces.win]
history_size = 5
history_ttl_secs = 0

[namespaces.chat]
history_size = 100
history_ttl_secs = 0

[namespaces.chat.schemas.message]
type = "object"
required = ["text"]
properties.text = { type = "string", maxLength = 5 }
"#;

async fn cluster() -> Cluster {
    Cluster::start(3, ClusterOptions::default().with_policy(POLICY))
        .await
        .unwrap()
}

/// The leader and one follower.
async fn leader_and_follower(cluster: &mut Cluster) -> (u64, u64) {
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    (leader, follower)
}

fn publish(channel: &str, data: &[u8]) -> PublishRequest {
    PublishRequest {
        channel: channel.to_string(),
        event_type: "note".to_string(),
        data: data.to_vec().into(),
        content_type: "text/plain".to_string(),
        idempotency_key: String::new(),
        headers: Default::default(),
    }
}

fn message(channel: &str, json: &str, key: &str) -> PublishRequest {
    PublishRequest {
        event_type: "message".to_string(),
        content_type: "application/json".to_string(),
        idempotency_key: key.to_string(),
        ..publish(channel, json.as_bytes())
    }
}

/// The error of a call that must fail with `code` and `reason`.
#[track_caller]
fn rejected<T: Debug>(result: Result<Response<T>, Status>, code: Code, reason: &str) -> Status {
    match result {
        Ok(resp) => panic!(
            "expected {code:?} {reason}, got success: {:?}",
            resp.into_inner()
        ),
        Err(status) => {
            assert_eq!(
                (status.code(), reason_of(&status).as_deref()),
                (code, Some(reason)),
                "wrong rejection: {status:?}"
            );
            status
        }
    }
}

fn since(offset: u64, epoch: &str) -> HistoryRequest {
    HistoryRequest {
        channel: "win:w".to_string(),
        since: Some(StreamPosition {
            offset,
            epoch: epoch.to_string(),
        }),
        limit: 0,
        reverse: false,
        linearizable: true,
    }
}

fn offsets(h: &HistoryResponse) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_returns_the_original_offset_and_is_stored_once() {
    let mut cluster = cluster().await;
    let (leader, follower) = leader_and_follower(&mut cluster).await;
    let mut via_leader = cluster.publisher(leader);
    let mut via_follower = cluster.publisher(follower);

    let first = via_leader
        .publish(message("chat:idem", r#"{"text":"hi"}"#, "k-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.offset, first.duplicate), (1, false));
    let again = via_leader
        .publish(message("chat:idem", r#"{"text":"hi"}"#, "k-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.offset, again.epoch.as_str(), again.duplicate),
        (1, first.epoch.as_str(), true)
    );
    // A retry that lands on another node is recognised too: the window is
    // replicated, not per node.
    let elsewhere = via_follower
        .publish(message("chat:idem", r#"{"text":"hi"}"#, "k-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((elsewhere.offset, elsewhere.duplicate), (1, true));
    let other = via_leader
        .publish(message("chat:idem", r#"{"text":"yo"}"#, "k-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((other.offset, other.duplicate), (2, false));

    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .unwrap();
    for id in cluster.ids() {
        let h = cluster.history(id, "chat:idem", 100).await.unwrap();
        let keys: Vec<(u64, &str)> = h
            .publications
            .iter()
            .map(|p| (p.offset, p.idempotency_key.as_str()))
            .collect();
        assert_eq!(keys, [(1, "k-1"), (2, "k-2")], "history on node {id}");
        assert_eq!(h.offset, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violation_names_the_failing_path() {
    let mut cluster = cluster().await;
    let (_, follower) = leader_and_follower(&mut cluster).await;
    let mut client = cluster.publisher(follower);

    let too_long = client
        .publish(message("chat:s", r#"{"text":"too long"}"#, ""))
        .await;
    let status = rejected(too_long, Code::InvalidArgument, "SCHEMA_VIOLATION");
    assert_eq!(
        error_metadata(&status).get("path").map(String::as_str),
        Some("/text"),
        "{status:?}"
    );

    let missing = client
        .publish(message("chat:s", r#"{"other":1}"#, ""))
        .await;
    let status = rejected(missing, Code::InvalidArgument, "SCHEMA_VIOLATION");
    assert_eq!(
        error_metadata(&status).get("path").map(String::as_str),
        Some(""),
        "{status:?}"
    );

    let not_json = client.publish(message("chat:s", "{", "")).await;
    rejected(not_json, Code::InvalidArgument, "SCHEMA_VIOLATION");

    // Event types without a schema take any payload.
    let free = PublishRequest {
        event_type: "other".to_string(),
        ..publish("chat:s", b"not json")
    };
    let ok = client.publish(free).await.unwrap().into_inner();
    // Nothing rejected was stored: the first accepted publication is offset 1.
    assert_eq!(
        ok.offset, 1,
        "rejected publications must not consume offsets"
    );
    let ok = client
        .publish(message("chat:s", r#"{"text":"fine"}"#, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.offset, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_with_stable_reasons() {
    let mut cluster = cluster().await;
    let (_, follower) = leader_and_follower(&mut cluster).await;
    let mut client = cluster.publisher(follower);

    rejected(
        client.publish(publish("", b"x")).await,
        Code::InvalidArgument,
        "CHANNEL_EMPTY",
    );

    let longest = format!("val:{}", "x".repeat(60));
    assert_eq!(longest.len(), 64);
    client
        .publish(publish(&longest, b"x"))
        .await
        .expect("a 64-byte channel name is within the limit");
    let too_long = format!("val:{}", "x".repeat(61));
    let status = rejected(
        client.publish(publish(&too_long, b"x")).await,
        Code::InvalidArgument,
        "CHANNEL_TOO_LONG",
    );
    assert_eq!(
        error_metadata(&status).get("max").map(String::as_str),
        Some("64")
    );

    rejected(
        client.publish(publish("val:a b", b"x")).await,
        Code::InvalidArgument,
        "CHANNEL_INVALID",
    );

    client
        .publish(publish("val:big", &[b'x'; 1024]))
        .await
        .expect("a 1024-byte payload is within the limit");
    let status = rejected(
        client.publish(publish("val:big", &[b'x'; 1025])).await,
        Code::InvalidArgument,
        "PAYLOAD_TOO_LARGE",
    );
    assert_eq!(
        error_metadata(&status).get("max").map(String::as_str),
        Some("1024")
    );

    let status = rejected(
        client.publish(publish("nope:x", b"x")).await,
        Code::InvalidArgument,
        "NAMESPACE_UNKNOWN",
    );
    assert_eq!(
        error_metadata(&status).get("namespace").map(String::as_str),
        Some("nope")
    );

    let batch = |n: usize| PublishBatchRequest {
        publications: (0..n).map(|_| publish("val:batch", b"x")).collect(),
    };
    let status = rejected(
        client.publish_batch(batch(11)).await,
        Code::InvalidArgument,
        "BATCH_TOO_LARGE",
    );
    assert_eq!(
        error_metadata(&status).get("max").map(String::as_str),
        Some("10")
    );
    // One bad item refuses the whole batch, and says which.
    let mut mixed = batch(3);
    mixed.publications[1].channel = "nope:x".to_string();
    let status = rejected(
        client.publish_batch(mixed).await,
        Code::InvalidArgument,
        "NAMESPACE_UNKNOWN",
    );
    assert_eq!(
        error_metadata(&status).get("index").map(String::as_str),
        Some("1")
    );

    // None of the refused batches stored anything.
    let ok = client
        .publish_batch(batch(10))
        .await
        .expect("a batch of 10 is within the limit")
        .into_inner();
    let got: Vec<u64> = ok.results.iter().map(|r| r.offset).collect();
    assert_eq!(
        got,
        (1..=10).collect::<Vec<_>>(),
        "refused batches must not consume offsets"
    );

    // Every node is still healthy after all that.
    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_api_key_are_unauthenticated() {
    let mut cluster = cluster().await;
    let (leader, follower) = leader_and_follower(&mut cluster).await;
    for id in [leader, follower] {
        let mut anonymous = cluster.publisher_with_key(id, None);
        rejected(
            anonymous.publish(publish("val:a", b"x")).await,
            Code::Unauthenticated,
            "API_KEY_MISSING",
        );
        let history = HistoryRequest {
            channel: "val:a".to_string(),
            ..Default::default()
        };
        rejected(
            anonymous.history(history).await,
            Code::Unauthenticated,
            "API_KEY_MISSING",
        );

        let mut wrong = cluster.publisher_with_key(id, Some("not-the-key"));
        rejected(
            wrong.publish(publish("val:a", b"x")).await,
            Code::Unauthenticated,
            "API_KEY_INVALID",
        );

        let mut admin = herald_cluster_tests::client::admin_at(
            cluster.node(id).grpc_addr(),
            Some("not-the-key"),
        );
        rejected(
            admin.remove_node(RemoveNodeRequest { id: 3 }).await,
            Code::Unauthenticated,
            "API_KEY_INVALID",
        );
    }
    // Nothing above reached the channel or the membership.
    let ok = cluster
        .publisher(follower)
        .publish(publish("val:a", b"x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.offset, 1);
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(herald_cluster_tests::voters(&status), [1, 2, 3].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_follower_is_forwarded_to_the_leader() {
    let mut cluster = cluster().await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        let data = format!("from node {id}");
        let resp = cluster
            .publisher(id)
            .publish(publish("val:fwd", data.as_bytes()))
            .await
            .unwrap()
            .into_inner();
        expected.push((resp.offset, data));
    }
    assert_eq!(expected.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [1, 2]);
    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .unwrap();
    for id in cluster.ids() {
        let h = cluster.history(id, "val:fwd", 100).await.unwrap();
        let got: Vec<(u64, String)> = h
            .publications
            .iter()
            .map(|p| (p.offset, String::from_utf8_lossy(&p.data).into_owned()))
            .collect();
        assert_eq!(got, expected, "history on node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reports_positions_outside_the_window() {
    let mut cluster = cluster().await;
    let (_, follower) = leader_and_follower(&mut cluster).await;
    let mut client = cluster.publisher(follower);
    for i in 1..=10u64 {
        let resp = client
            .publish(publish("win:w", format!("{i}").as_bytes()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.offset, i);
    }
    let all = client
        .history(HistoryRequest {
            since: None,
            ..since(0, "")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (all.offset, all.first_offset),
        (10, 6),
        "window of 5 after 10 publications"
    );
    assert_eq!(offsets(&all), [6, 7, 8, 9, 10]);
    let epoch = all.epoch.clone();

    let recent = client.history(since(7, &epoch)).await.unwrap().into_inner();
    assert!(
        recent.in_window,
        "offset 7 is inside the window: {recent:?}"
    );
    assert_eq!(offsets(&recent), [8, 9, 10]);

    let edge = client.history(since(5, &epoch)).await.unwrap().into_inner();
    assert!(
        edge.in_window,
        "a client at offset 5 missed only 6..=10, all retained: {edge:?}"
    );
    assert_eq!(offsets(&edge), [6, 7, 8, 9, 10]);

    let current = client
        .history(since(10, &epoch))
        .await
        .unwrap()
        .into_inner();
    assert!(
        current.in_window && current.publications.is_empty(),
        "{current:?}"
    );

    let lost = client.history(since(1, &epoch)).await.unwrap().into_inner();
    assert!(
        !lost.in_window,
        "offsets 2..=5 are gone, the caller must be told: {lost:?}"
    );

    let other_epoch = client
        .history(since(8, "not-the-epoch"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !other_epoch.in_window,
        "a position from another epoch is not in the window: {other_epoch:?}"
    );
    assert_eq!(other_epoch.epoch, epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_across_channels_returns_per_item_offsets() {
    let mut cluster = cluster().await;
    let (_, follower) = leader_and_follower(&mut cluster).await;
    let mut client = cluster.publisher(follower);
    let head = client
        .publish(publish("val:b1", b"b1-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(head.offset, 1);

    let items = [
        ("val:b1", "b1-2"),
        ("val:b2", "b2-1"),
        ("val:b1", "b1-3"),
        ("val:b3", "b3-1"),
        ("val:b2", "b2-2"),
    ];
    let req = PublishBatchRequest {
        publications: items
            .iter()
            .map(|(c, d)| publish(c, d.as_bytes()))
            .collect(),
    };
    let resp = client.publish_batch(req).await.unwrap().into_inner();
    let got: Vec<(&str, u64)> = resp
        .results
        .iter()
        .map(|r| (r.channel.as_str(), r.offset))
        .collect();
    assert_eq!(
        got,
        [
            ("val:b1", 2),
            ("val:b2", 1),
            ("val:b1", 3),
            ("val:b3", 1),
            ("val:b2", 2)
        ]
    );
    assert!(resp.results.iter().all(|r| !r.duplicate));

    cluster
        .wait_converged(Duration::from_secs(30))
        .await
        .unwrap();
    for (item, result) in items.iter().zip(&resp.results) {
        let h = cluster.history(follower, item.0, 100).await.unwrap();
        assert_eq!(
            result.epoch, h.epoch,
            "{}: epoch of the batch result",
            item.0
        );
        let stored = h
            .publications
            .iter()
            .find(|p| p.offset == result.offset)
            .map(|p| p.data.as_ref());
        assert_eq!(
            stored,
            Some(item.1.as_bytes()),
            "{} at offset {}",
            item.0,
            result.offset
        );
    }
}
