//! The operations listener: `/metrics` (Prometheus text), `/healthz`
//! (process is up; never depends on cluster health, so a liveness probe on
//! it never restarts a node for a quorum problem) and `/readyz` (a leader is
//! known and this node has applied everything it knows is committed).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::replica::Replica;

#[derive(Clone)]
struct Ops {
    replica: Arc<Replica>,
    prometheus: PrometheusHandle,
}

/// The operations router.
pub fn router(replica: Arc<Replica>, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Ops {
            replica,
            prometheus,
        })
}

async fn metrics(State(ops): State<Ops>) -> String {
    crate::telemetry::refresh(&ops.replica);
    ops.prometheus.render()
}

async fn ready(State(ops): State<Ops>) -> (StatusCode, String) {
    let r = &ops.replica;
    if r.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        let m = r.metrics();
        let why = match m.current_leader {
            None => "no leader known".to_string(),
            Some(l) if l == m.id && r.applied_index() >= r.committed_index() => {
                "leader without a quorum".to_string()
            }
            Some(_) => format!(
                "applied {} of committed {}",
                r.applied_index(),
                r.committed_index()
            ),
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    }
}
