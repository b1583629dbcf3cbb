//! Prometheus metrics: the recorder, the latency buckets, and the Raft
//! gauges refreshed from openraft's metrics on every scrape.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;

use crate::replica::Replica;

/// Install the global recorder (once per process).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .set_buckets_for_metric(
            Matcher::Full("herald_publish_batch_items".into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            ],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "herald_publishes_total",
        "Publish and PublishBatch calls by result"
    );
    describe_histogram!(
        "herald_publish_duration_seconds",
        "Publish latency seen by the caller's node"
    );
    describe_histogram!(
        "herald_publish_batch_items",
        "Publications per Raft entry (group commit)"
    );
    describe_counter!(
        "herald_publish_forwards_total",
        "Publishes forwarded to the leader"
    );
    describe_counter!(
        "herald_publications_applied_total",
        "Publications applied to the state machine"
    );
    describe_counter!(
        "herald_raft_log_appended_entries_total",
        "Entries appended to the local Raft log"
    );
    describe_counter!(
        "herald_raft_refused_total",
        "Raft votes, appends and snapshots refused because they were addressed \
         to another incarnation of this node (it lost its disk) or another node"
    );
    describe_counter!(
        "herald_raft_snapshots_total",
        "Snapshots built or installed"
    );
    describe_counter!(
        "herald_grpc_auth_failures_total",
        "gRPC calls refused for their API key, by reason"
    );
    describe_counter!(
        "herald_storage_failures_total",
        "Failed operations on the database file, by op (read, write, fsync, resize, stat) and error (eio, enospc, other)"
    );
    describe_gauge!(
        "herald_storage_failed",
        "1 once a disk operation failed: the node acknowledges nothing until restarted"
    );
    describe_gauge!("herald_raft_term", "Current Raft term");
    describe_gauge!("herald_raft_leader_id", "Id of the known leader, 0 if none");
    describe_gauge!("herald_raft_is_leader", "1 on the leader");
    describe_gauge!(
        "herald_raft_commit_index",
        "Highest committed log index known here"
    );
    describe_gauge!("herald_raft_applied_index", "Last applied log index");
    describe_gauge!("herald_raft_last_log_index", "Last log index");
    describe_gauge!(
        "herald_raft_log_entries",
        "Entries in the local log (after compaction)"
    );
    describe_gauge!(
        "herald_raft_snapshot_index",
        "Log index of the latest snapshot"
    );
    describe_gauge!("herald_channels", "Channels in the state machine");
    describe_gauge!(
        "herald_history_publications",
        "Publications retained in every channel's history"
    );
    describe_counter!(
        "herald_sweeps_total",
        "Sweeps this node committed as leader"
    );
    describe_counter!(
        "herald_swept_channels_total",
        "Channels forgotten by sweeps (nothing left past their TTL)"
    );
    describe_counter!(
        "herald_swept_publications_total",
        "Publications dropped by sweeps (older than their namespace's TTL)"
    );
    describe_gauge!(
        "herald_peer_registered",
        "1 once this node's QUIC address is in the replicated registry"
    );
    describe_counter!(
        "herald_peer_sent_publications_total",
        "Publications pushed to a peer over QUIC"
    );
    describe_counter!(
        "herald_peer_sent_bytes_total",
        "Bytes pushed to a peer over QUIC"
    );
    describe_counter!(
        "herald_peer_dropped_total",
        "Publications not pushed because the peer's stream queue was full or it was unreachable"
    );
    describe_counter!(
        "herald_peer_received_publications_total",
        "Publications received from a peer over QUIC"
    );
    describe_counter!(
        "herald_peer_received_bytes_total",
        "Bytes received from a peer over QUIC"
    );
    describe_counter!(
        "herald_peer_refused_total",
        "QUIC connections refused (TLS handshake failed, e.g. a certificate from another CA)"
    );
    describe_counter!(
        "herald_peer_fanout_lagged_total",
        "Applied publications the fan-out task skipped because it lagged"
    );
    describe_gauge!("herald_peer_rtt_seconds", "QUIC round-trip time per peer");
    describe_gauge!("herald_peer_cwnd_bytes", "QUIC congestion window per peer");
    describe_histogram!(
        "herald_peer_commit_to_receive_seconds",
        "Time from the leader's proposal to receipt over QUIC"
    );
    describe_counter!(
        "herald_interest_changes_total",
        "Channel interest registrations and withdrawals committed for this node"
    );
    describe_counter!(
        "herald_fanout_tail_checks_total",
        "Fan-out node: channels found behind the cluster's newest offset and caught up from a voter"
    );
    describe_gauge!("herald_edge_links", "Open EdgeLink streams");
    describe_counter!(
        "herald_edge_link_gap_fills_total",
        "Gaps in an edge link's stream filled from history"
    );
}

/// Copy Raft's view into the gauges.
pub fn refresh(r: &Replica) {
    let m = r.metrics();
    metrics::gauge!("herald_raft_term").set(m.current_term as f64);
    metrics::gauge!("herald_raft_leader_id").set(m.current_leader.unwrap_or(0) as f64);
    metrics::gauge!("herald_raft_is_leader").set(if m.state == ServerState::Leader {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("herald_raft_commit_index").set(r.committed_index() as f64);
    metrics::gauge!("herald_raft_applied_index").set(m.last_applied.map_or(0, |l| l.index) as f64);
    metrics::gauge!("herald_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("herald_raft_log_entries").set(r.log_entries() as f64);
    metrics::gauge!("herald_raft_snapshot_index").set(m.snapshot.map_or(0, |l| l.index) as f64);
    metrics::gauge!("herald_channels").set(r.channel_count() as f64);
}
