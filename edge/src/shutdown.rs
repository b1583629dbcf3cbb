//! Graceful shutdown as a value passed down: every long-lived task holds a
//! [`Shutdown`] and stops when it fires, instead of consulting a global.

use tokio::sync::watch;

/// Fires [`Shutdown`]s.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Tells a task the edge is stopping.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A trigger and its first listener.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tell every listener.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Whether shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Wait until shutdown begins (at once if it has).
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}
