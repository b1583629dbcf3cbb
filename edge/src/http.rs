//! The operations listener: `/metrics` (Prometheus), `/healthz` (the
//! process serves requests; never depends on the cluster) and `/readyz`
//! (ready only while the EdgeLink stream is up, so a load balancer stops
//! sending clients to an edge that cannot deliver).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Edge;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder once per process (a second edge in the
/// same test process shares it).
pub fn install_metrics() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("herald_edge_delivery_latency_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        })
        .clone()
}

#[derive(Clone)]
struct Ops {
    edge: Arc<Edge>,
    metrics: Option<PrometheusHandle>,
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn router(edge: Arc<Edge>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Ops { edge, metrics })
}

async fn render(State(ops): State<Ops>) -> impl IntoResponse {
    metrics::gauge!("herald_edge_connected_clients").set(ops.edge.clients.count() as f64);
    match &ops.metrics {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n".into(),
        ),
    }
}

async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.edge.shutdown.is_shutdown() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        );
    }
    match ops.edge.upstream.linked_node() {
        Some(node) => (StatusCode::OK, format!("ready linked {node}\n")),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no EdgeLink\n".to_string()),
    }
}
