//! Every open connection of this edge: admission (edge-wide limit and
//! connection rate), per-user limits, and reaching all of them at shutdown.
//! A [`Registration`] removes itself on drop, so a connection that ends in
//! any way (including a panic) is forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

use crate::config::Limits;
use crate::outbox::Outbox;
use crate::protocol::codes::Disconnect;

#[derive(Debug, Default)]
struct Inner {
    all: HashMap<u64, (Arc<Outbox>, Option<String>)>,
    per_user: HashMap<String, usize>,
    window_start: Option<Instant>,
    window_count: u32,
}

/// The registry.
#[derive(Debug)]
pub struct Clients {
    inner: Arc<Mutex<Inner>>,
    next_id: AtomicU64,
    emptied: Arc<Notify>,
    max: usize,
    max_per_user: usize,
    rate: u32,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `--max-connections` reached.
    #[error("connection limit reached")]
    Full,
    /// `--connection-rate` exceeded this second.
    #[error("connection rate exceeded")]
    Rate,
}

/// One admitted connection; dropping it removes the connection.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    inner: Arc<Mutex<Inner>>,
    emptied: Arc<Notify>,
}

impl Registration {
    /// The connection's id (also its hub subscriber id).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, Some(user))) = g.all.remove(&self.id)
            && let Some(n) = g.per_user.get_mut(&user)
        {
            *n -= 1;
            if *n == 0 {
                g.per_user.remove(&user);
            }
        }
        let empty = g.all.is_empty();
        drop(g);
        if empty {
            self.emptied.notify_waiters();
        }
    }
}

impl Clients {
    /// An empty registry enforcing `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            inner: Arc::default(),
            next_id: AtomicU64::new(1),
            emptied: Arc::new(Notify::new()),
            max: limits.max_connections,
            max_per_user: limits.max_connections_per_user,
            rate: limits.connection_rate,
        }
    }

    /// Check the limits without registering (before an HTTP upgrade).
    pub fn check(&self) -> Result<(), Refused> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if self.max > 0 && g.all.len() >= self.max {
            return Err(Refused::Full);
        }
        if self.rate > 0 {
            let now = Instant::now();
            match g.window_start {
                Some(s) if now.duration_since(s) < Duration::from_secs(1) => {
                    if g.window_count >= self.rate {
                        return Err(Refused::Rate);
                    }
                    g.window_count += 1;
                }
                _ => {
                    g.window_start = Some(now);
                    g.window_count = 1;
                }
            }
        }
        Ok(())
    }

    /// Register a connection.
    pub fn register(&self, outbox: Arc<Outbox>) -> Result<Registration, Refused> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if self.max > 0 && g.all.len() >= self.max {
            return Err(Refused::Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        g.all.insert(id, (outbox, None));
        Ok(Registration {
            id,
            inner: self.inner.clone(),
            emptied: self.emptied.clone(),
        })
    }

    /// Record the user of a connection; refused past the per-user limit.
    pub fn bind_user(&self, reg: &Registration, user: &str) -> Result<(), Disconnect> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = g.per_user.get(user).copied().unwrap_or(0);
        if self.max_per_user > 0 && !user.is_empty() && n >= self.max_per_user {
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        if let Some(entry) = g.all.get_mut(&reg.id) {
            if entry.1.is_some() {
                return Ok(());
            }
            entry.1 = Some(user.to_string());
            *g.per_user.entry(user.to_string()).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Open connections.
    pub fn count(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .len()
    }

    /// Disconnect every connection with `d`.
    pub fn close_all(&self, d: Disconnect) {
        let outboxes: Vec<Arc<Outbox>> = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .values()
            .map(|(o, _)| o.clone())
            .collect();
        for o in outboxes {
            o.close(d);
        }
    }

    /// Wait until no connection is left, at most `grace`.
    pub async fn wait_empty(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.emptied.notified();
            if self.count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// A request refused before it became a connection (HTTP status plus the
/// client-protocol code and message, as JSON).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Client-protocol code.
    pub code: u32,
    /// Message.
    pub message: String,
}

impl Refusal {
    /// A refusal with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "message": self.message}).to_string();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
