//! A publish load like a fleet of careful backends produces: several
//! concurrent publishers, each publication with a unique id and idempotency
//! key, retried with that key on the next node until acknowledged, every
//! outcome written to a [`Ledger`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::Cluster;
use crate::ledger::{self, Ledger};

/// The shape of a load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Channels are `<namespace>:ch-<i>`.
    pub namespace: &'static str,
    /// Publication `id` goes to channel `id % channels`.
    pub channels: u64,
    /// Concurrent publishers.
    pub publishers: usize,
    /// Publications in all; the load ends after these (or on [`Load::stop`]).
    pub total: u64,
    /// Pause of each publisher between its publishes.
    pub pace: Duration,
    /// Per-attempt timeout before retrying on the next node.
    pub attempt_timeout: Duration,
    /// How long one publication is retried before it counts as failed: a
    /// hang guard, longer than any fault the scenario holds.
    pub patience: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            namespace: "load",
            channels: 100,
            publishers: 8,
            total: 1_000,
            pace: Duration::ZERO,
            attempt_timeout: Duration::from_secs(10),
            patience: PATIENCE,
        }
    }
}

impl LoadSpec {
    /// The channel publication `id` goes to.
    pub fn channel_of(&self, id: u64) -> String {
        format!("{}:ch-{}", self.namespace, id % self.channels)
    }
}

/// A running load.
pub struct Load {
    done: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    tasks: Vec<JoinHandle<u64>>,
}

/// Default patience per publication: a hang guard, since a healthy cluster
/// re-elects in well under a second.
pub const PATIENCE: Duration = Duration::from_secs(60);

impl Load {
    /// Start publishing to `nodes` (publisher `p` starts at `nodes[p % len]`).
    pub fn start(cluster: &Cluster, nodes: &[u64], spec: LoadSpec) -> Self {
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let tasks = (0..spec.publishers)
            .map(|p| {
                let mut client = cluster
                    .rotating_publisher(nodes, p)
                    .with_attempt_timeout(spec.attempt_timeout);
                let (next, done, acked, stop, ledger, spec) = (
                    next.clone(),
                    done.clone(),
                    acked.clone(),
                    stop.clone(),
                    ledger.clone(),
                    spec.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let id = next.fetch_add(1, Ordering::SeqCst);
                        if id >= spec.total {
                            break;
                        }
                        let channel = spec.channel_of(id);
                        ledger.lock().unwrap().sent(id, &channel);
                        match client
                            .publish(ledger::request(id, &channel), spec.patience)
                            .await
                        {
                            Ok(resp) => {
                                ledger.lock().unwrap().acked(id, &resp);
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(failure) => ledger.lock().unwrap().record_failure(id, &failure),
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                        if !spec.pace.is_zero() {
                            tokio::time::sleep(spec.pace).await;
                        }
                    }
                    client.retries
                })
            })
            .collect();
        Self {
            done,
            acked,
            stop,
            ledger,
            tasks,
        }
    }

    /// The shared ledger, to record publications sent outside the load
    /// (use ids the load never reaches: it counts up from 0 to `total`).
    pub fn ledger(&self) -> Arc<Mutex<Ledger>> {
        self.ledger.clone()
    }

    /// Publishes finished so far (acknowledged or given up).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Publishes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Wait until `target` publishes finished; fail after `guard` (a hang
    /// guard: the cluster stopped making progress).
    pub async fn wait_done(&self, target: u64, guard: Duration, what: &str) {
        let deadline = Instant::now() + guard;
        while self.done() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {target} publishes finished within {guard:?}",
                self.done()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `more` further publishes are acknowledged (hang guard 120 s).
    pub async fn wait_acked_more(&self, more: u64, what: &str) {
        let target = self.acked() + more;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: publishing stalled at {} acknowledgements",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ask the publishers to stop after their current publish.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Wait for every publisher to finish; the ledger and the total retries.
    pub async fn finish(self) -> (Ledger, u64) {
        let mut retries = 0;
        for task in self.tasks {
            retries += task.await.expect("publisher task panicked");
        }
        let ledger = Arc::try_unwrap(self.ledger)
            .unwrap_or_else(|_| panic!("publishers are done"))
            .into_inner()
            .unwrap();
        (ledger, retries)
    }
}
