//! This node's channel interest, registered in Raft so the leader knows
//! where to push. Counts local subscriptions (edge links) per channel;
//! registers a channel when its first subscriber arrives and withdraws it
//! once it has had none for the linger time, in batches, so a flapping
//! client does not cause a Raft write per connect.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::raft::Command;
use crate::rejection::Rejection;

/// Where interest is registered: the replicated table, through the leader.
pub trait Registry: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> u64;
    /// Channels the replicated table lists for this node now.
    fn registered(&self) -> BTreeSet<String>;
    /// Commit a command through the leader.
    fn submit(&self, cmd: Command) -> impl Future<Output = Result<(), Rejection>> + Send;
}

/// How often pending changes are flushed to Raft.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

enum Change {
    Add(String),
    Remove(String),
}

/// Handle to the registrar task; cheap to clone.
#[derive(Clone)]
pub struct Interest {
    tx: mpsc::UnboundedSender<Change>,
    registered: Arc<Mutex<BTreeSet<String>>>,
}

impl Interest {
    /// Start the registrar once `start` resolves (changes queue meanwhile).
    pub fn spawn<R: Registry>(
        registry: Arc<R>,
        linger: Duration,
        start: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let registered = Arc::new(Mutex::new(BTreeSet::new()));
        let shared = registered.clone();
        tokio::spawn(async move {
            start.await;
            run(registry, rx, linger, shared).await;
        });
        Self { tx, registered }
    }

    /// Channels committed as this node's interest.
    pub fn registered(&self) -> Vec<String> {
        self.registered
            .lock()
            .expect("interest lock poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// One more local subscriber for `channel`.
    pub fn add(&self, channel: &str) {
        let _ = self.tx.send(Change::Add(channel.to_string()));
    }

    /// One local subscriber fewer for `channel`.
    pub fn remove(&self, channel: &str) {
        let _ = self.tx.send(Change::Remove(channel.to_string()));
    }
}

async fn run<R: Registry>(
    registry: Arc<R>,
    mut rx: mpsc::UnboundedReceiver<Change>,
    linger: Duration,
    shared: Arc<Mutex<BTreeSet<String>>>,
) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut idle_since: HashMap<String, Instant> = HashMap::new();
    // What the replicated table says about this node: after a restart it may
    // list channels nobody here wants any more; they linger out like others.
    let mut registered: BTreeSet<String> = registry.registered();
    shared
        .lock()
        .expect("interest lock poisoned")
        .clone_from(&registered);
    for c in &registered {
        idle_since.insert(c.clone(), Instant::now());
    }
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            change = rx.recv() => match change {
                Some(Change::Add(c)) => {
                    *counts.entry(c.clone()).or_default() += 1;
                    idle_since.remove(&c);
                }
                Some(Change::Remove(c)) => {
                    let n = counts.entry(c.clone()).or_default();
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.remove(&c);
                        idle_since.insert(c, Instant::now());
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                let add: Vec<String> =
                    counts.keys().filter(|c| !registered.contains(*c)).cloned().collect();
                let remove: Vec<String> = idle_since
                    .iter()
                    .filter(|(c, at)| at.elapsed() >= linger && registered.contains(*c))
                    .map(|(c, _)| c.clone())
                    .collect();
                if add.is_empty() && remove.is_empty() {
                    continue;
                }
                let cmd = Command::Interest { node: registry.node_id(), add: add.clone(), remove: remove.clone() };
                match registry.submit(cmd).await {
                    Ok(()) => {
                        metrics::counter!("herald_interest_changes_total").increment((add.len() + remove.len()) as u64);
                        registered.extend(add);
                        for c in remove {
                            registered.remove(&c);
                            idle_since.remove(&c);
                        }
                        shared.lock().expect("interest lock poisoned").clone_from(&registered);
                    }
                    Err(e) => tracing::debug!("registering channel interest: {e}; will retry"),
                }
            }
        }
    }
}
