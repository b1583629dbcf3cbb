//! Herald's edge: terminates client WebSocket (Centrifugo client protocol,
//! JSON or Protobuf) and SSE connections, authenticates them with JWTs, and
//! fans out the publications it receives over one EdgeLink stream from the
//! cluster.
//!
//! Module map: [`config`] (flags → validated settings), [`auth`] (tokens →
//! capabilities), [`upstream`] (the EdgeLink stream and node calls),
//! [`hub`] (channel → local subscribers, encode once), [`outbox`] (one
//! client's bounded queue), [`protocol`] (the client protocol: framing,
//! codes, one file per command), [`client`] (one connection's state),
//! [`ws`] and [`sse`] (the transports), [`server`] (the client listener's
//! socket deadlines), [`budget`] (commands per connection), [`clients`]
//! (every connection, for limits and shutdown), [`http`] (metrics and
//! health).
//!
//! [`run`] is the whole edge given bound listeners and a shutdown signal,
//! so tests start one on `127.0.0.1:0` in a line; `main.rs` only parses
//! flags, binds and waits for SIGTERM.
#![warn(missing_docs)]

pub mod auth;
pub mod budget;
pub mod channel;
pub mod client;
pub mod clients;
pub mod config;
pub mod history;
pub mod http;
pub mod hub;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod upstream;
pub mod ws;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::clients::Clients;
use crate::config::Settings;
use crate::hub::Hub;
use crate::protocol::codes::Disconnect;
use crate::upstream::Upstream;

/// What every connection shares.
#[derive(Debug)]
pub struct Edge {
    /// Validated configuration.
    pub settings: Settings,
    /// Channel → local subscribers.
    pub hub: Arc<Hub>,
    /// The link to the cluster.
    pub upstream: Arc<Upstream>,
    /// Local clients' presence, reported upstream.
    pub presence: Arc<presence::Presence>,
    /// Every open connection.
    pub clients: Clients,
    /// Set once shutdown began: new connections are refused.
    pub shutdown: shutdown::Shutdown,
}

/// The edge's listeners, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// WebSocket and SSE.
    pub client: TcpListener,
    /// Metrics and health.
    pub http: TcpListener,
}

/// The client-facing routes (`/connection/websocket`, `/connection/sse`).
pub fn app(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/connection/websocket", axum::routing::get(ws::upgrade))
        .route("/connection/sse", axum::routing::get(sse::stream))
        .with_state(edge)
}

/// Run the edge until `shutdown` completes: then refuse new connections,
/// tell every client to reconnect elsewhere (3001), wait up to the grace
/// period for them to leave, and return.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = http::install_metrics();
    let (link_tx, link_rx) = tokio::sync::mpsc::unbounded_channel();
    let upstream = Upstream::new(
        settings.nodes.clone(),
        settings.api_key.as_deref(),
        settings.tls.clone(),
    );
    let presence = presence::Presence::new(link_tx.clone(), upstream.clone());
    let hub = Hub::new(
        link_tx,
        Arc::new(history::Paged(Arc::new(upstream.clone()))),
        settings.limits.recover_max,
    );
    let (trigger, stop) = shutdown::channel();
    let grace = settings.shutdown_grace;
    let edge = Arc::new(Edge {
        clients: Clients::new(&settings.limits),
        settings,
        hub: hub.clone(),
        upstream: upstream.clone(),
        presence: presence.clone(),
        shutdown: stop.clone(),
    });
    let link = tokio::spawn(upstream.clone().run(hub, presence, link_rx, stop.clone()));
    let client_app = app(edge.clone());
    let http_app = http::router(edge.clone(), metrics);
    let deadlines = server::Deadlines {
        header_read: edge.settings.limits.header_read_timeout,
        write: edge.settings.limits.write_timeout,
    };
    let client_server = tokio::spawn(server::serve(
        listeners.client,
        client_app,
        deadlines,
        stop.clone(),
    ));
    let mut s2 = stop.clone();
    let http_server = tokio::spawn(async move {
        axum::serve(listeners.http, http_app)
            .with_graceful_shutdown(async move { s2.recv().await })
            .await
    });
    tracing::info!("herald-edge running");
    shutdown.await;
    tracing::info!("shutting down: telling clients to reconnect elsewhere");
    trigger.fire();
    edge.clients.close_all(Disconnect::SHUTDOWN);
    edge.clients.wait_empty(grace).await;
    let _ = link.await;
    let _ = tokio::time::timeout(grace, client_server).await;
    let _ = tokio::time::timeout(grace, http_server).await;
    Ok(())
}
