//! A crowd of benchmark clients: opens many at once with a bounded number
//! of handshakes in flight, keeps each one running until told to stop, and
//! counts the clients that could not connect and those the server dropped
//! later. Every WebSocket benchmark (`idle`, `fanout`, `compare`, `hold`)
//! builds on it, whatever protocol its clients speak.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::wsclient::Ended;

/// How the opening of a batch of clients went.
#[derive(Debug)]
pub(crate) struct Opened {
    /// Clients that could not connect, by reason.
    pub(crate) failed: BTreeMap<String, u64>,
    /// Time from starting a client's handshake to its being ready,
    /// microseconds.
    pub(crate) open_us: Histogram<u64>,
    /// Time to open the whole batch.
    pub(crate) ramp: Duration,
}

/// Running clients.
#[derive(Debug)]
pub(crate) struct Crowd {
    clients: JoinSet<()>,
    stop: watch::Sender<bool>,
    alive: Arc<AtomicUsize>,
    lost: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Crowd {
    pub(crate) fn new() -> Self {
        Self {
            clients: JoinSet::new(),
            stop: watch::channel(false).0,
            alive: Arc::default(),
            lost: Arc::default(),
        }
    }

    /// Open clients `indices`, at most `concurrency` handshakes at a time:
    /// `open(index)` connects one, then `run(index, client, stop)` keeps it
    /// until `stop` turns true (or the server ends it). Returns once every
    /// client of the batch is open or has failed.
    pub(crate) async fn open<C, O, OF, R, RF>(
        &mut self,
        indices: Range<usize>,
        concurrency: usize,
        open: O,
        run: R,
    ) -> anyhow::Result<Opened>
    where
        C: Send + 'static,
        O: Fn(usize) -> OF,
        OF: Future<Output = Result<C, String>> + Send + 'static,
        R: Fn(usize, C, watch::Receiver<bool>) -> RF + Clone + Send + 'static,
        RF: Future<Output = Ended> + Send + 'static,
    {
        let started = Instant::now();
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
        for index in indices {
            let permit = gate.clone().acquire_owned().await?;
            let opening = open(index);
            let (run, stop, done) = (run.clone(), self.stop.subscribe(), done_tx.clone());
            let (alive, lost) = (self.alive.clone(), self.lost.clone());
            self.clients.spawn(async move {
                let t0 = Instant::now();
                let opened = opening.await;
                drop(permit);
                let client = match opened {
                    Ok(client) => client,
                    Err(reason) => {
                        let _ = done.send(Err(reason));
                        return;
                    }
                };
                alive.fetch_add(1, Ordering::Relaxed);
                let _ = done.send(Ok(t0.elapsed()));
                drop(done);
                if let Ended::Lost(reason) = run(index, client, stop).await {
                    alive.fetch_sub(1, Ordering::Relaxed);
                    *lost
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(reason)
                        .or_default() += 1;
                }
            });
        }
        drop(done_tx);
        let mut failed = BTreeMap::new();
        let mut open_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .context("a 1 µs to 10 min histogram")?;
        while let Some(outcome) = done_rx.recv().await {
            match outcome {
                Ok(took) => open_us
                    .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1)),
                Err(reason) => *failed.entry(reason).or_default() += 1,
            }
        }
        Ok(Opened {
            failed,
            open_us,
            ramp: started.elapsed(),
        })
    }

    /// Clients connected now.
    pub(crate) fn alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Clients the server ended so far, by reason.
    pub(crate) fn lost(&self) -> BTreeMap<String, u64> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Tell every client to stop, give them `grace` to close, then abort
    /// what is left.
    pub(crate) async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, async {
            while self.clients.join_next().await.is_some() {}
        })
        .await;
        self.clients.abort_all();
    }
}

/// `after` minus `before`, reason by reason (what was lost in between).
pub(crate) fn lost_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(reason, &n)| {
            let new = n - before.get(reason).copied().unwrap_or(0).min(n);
            (new > 0).then(|| (reason.clone(), new))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_failures_and_losses() {
        let mut crowd = Crowd::new();
        let opened = crowd
            .open(
                0..4,
                2,
                |i| async move {
                    if i == 3 {
                        Err("refused".to_string())
                    } else {
                        Ok(i)
                    }
                },
                |_, i, mut stop| async move {
                    if i == 0 {
                        return Ended::Lost("closed 3008".to_string());
                    }
                    let _ = stop.wait_for(|s| *s).await;
                    Ended::Stopped
                },
            )
            .await
            .unwrap();
        assert_eq!(opened.failed.get("refused"), Some(&1));
        assert_eq!(opened.open_us.len(), 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(crowd.alive(), 2);
        let lost = crowd.lost();
        assert_eq!(
            lost_since(&BTreeMap::new(), &lost).get("closed 3008"),
            Some(&1)
        );
        assert!(lost_since(&lost, &lost).is_empty());
        crowd.stop(Duration::from_secs(1)).await;
    }
}
