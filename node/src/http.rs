//! The operations listener: `/metrics` (Prometheus text), `/healthz`
//! (process is up and its disk has not failed; never depends on cluster
//! health, so a liveness probe on it never restarts a node for a quorum
//! problem, but does restart one whose storage failed, which only a restart
//! recovers from) and `/readyz` (a Raft member: a leader is known and this
//! node has applied everything it knows is committed; a fan-out node:
//! registered and a voter answers).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::replica::Replica;

/// What the operations listener asks the node.
pub trait Ops: Send + Sync + 'static {
    /// `Ok` while the process can work at all; else why only a restart
    /// helps.
    fn liveness(&self) -> Result<(), String> {
        Ok(())
    }
    /// `Ok` when ready to serve, else why not.
    fn readiness(&self) -> Result<(), String>;
    /// Bring gauges up to date before a scrape.
    fn refresh_metrics(&self);
}

impl Ops for Replica {
    fn liveness(&self) -> Result<(), String> {
        match self.log_disk().failure() {
            None => Ok(()),
            Some(f) => Err(format!("storage failed: {f}")),
        }
    }

    fn readiness(&self) -> Result<(), String> {
        if self.is_ready() {
            return Ok(());
        }
        self.liveness()?;
        let joining = self.joining();
        if !joining.is_empty() {
            return Err(joining);
        }
        let m = self.metrics();
        Err(match m.current_leader {
            None => "no leader known".to_string(),
            Some(l) if l == m.id && self.applied_index() >= self.committed_index() => {
                "leader without a quorum".to_string()
            }
            Some(_) => format!(
                "applied {} of committed {}",
                self.applied_index(),
                self.committed_index()
            ),
        })
    }

    fn refresh_metrics(&self) {
        crate::telemetry::refresh(self);
    }
}

struct OpsState<O> {
    node: Arc<O>,
    prometheus: PrometheusHandle,
}

impl<O> Clone for OpsState<O> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            prometheus: self.prometheus.clone(),
        }
    }
}

/// The operations router.
pub fn router<O: Ops>(node: Arc<O>, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<O>))
        .route("/healthz", get(live::<O>))
        .route("/readyz", get(ready::<O>))
        .with_state(OpsState { node, prometheus })
}

async fn metrics<O: Ops>(State(ops): State<OpsState<O>>) -> String {
    ops.node.refresh_metrics();
    ops.prometheus.render()
}

async fn live<O: Ops>(State(ops): State<OpsState<O>>) -> (StatusCode, String) {
    match ops.node.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}\n")),
    }
}

async fn ready<O: Ops>(State(ops): State<OpsState<O>>) -> (StatusCode, String) {
    match ops.node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
