//! The client listener's HTTP/1 server. `axum::serve` sets no timer, so
//! hyper's header-read timeout never fires there: a client could open
//! sockets and trickle request heads forever. Here every connection gets
//! `--header-read-timeout-secs` to send a whole request head, and every
//! write to its socket `--write-timeout-secs` to make progress — an SSE
//! reader that stopped reading (its TCP window full) is cut off instead of
//! holding its connection, its subscriptions and its registration forever.
//! WebSockets keep their own per-batch write timeout on top.
//!
//! Owns accepting and the socket deadlines; what a request means is the
//! router's.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_io_timeout::TimeoutStream;

use crate::shutdown::Shutdown;

/// Socket deadlines of the client listener.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Longest time to receive a whole request head.
    pub header_read: Duration,
    /// Longest time one write may stay blocked.
    pub write: Duration,
}

/// Serve `app` on `listener` until `stop` fires; then stop accepting and
/// let each connection finish its current request (upgraded WebSockets
/// and SSE streams are ended by the edge's own shutdown).
pub async fn serve(listener: TcpListener, app: Router, deadlines: Deadlines, mut stop: Shutdown) {
    loop {
        let (socket, _) = tokio::select! {
            _ = stop.recv() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: the listener
                    // itself is fine, so back off and go on.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let mut io = TimeoutStream::new(socket);
        io.set_write_timeout(Some(deadlines.write));
        let io = TokioIo::new(Box::pin(io));
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(deadlines.header_read)
                .serve_connection(io, service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("client connection ended: {e}");
                    }
                    return;
                }
                _ = stop.recv() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
}
