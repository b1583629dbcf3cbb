//! This node's channel interest, registered in Raft so the leader knows
//! where to push. Counts local subscriptions (edge links) per channel;
//! registers a channel when its first subscriber arrives and withdraws it
//! once it has had none for the linger time, in batches, so a flapping
//! client does not cause a Raft write per connect.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::raft::Command;
use crate::replica::Replica;

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
}

impl Interest {
    /// Start the registrar for this replica.
    pub fn spawn(replica: Arc<Replica>, linger: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(replica, rx, linger));
        Self { tx }
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

async fn run(replica: Arc<Replica>, mut rx: mpsc::UnboundedReceiver<Change>, linger: Duration) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut idle_since: HashMap<String, Instant> = HashMap::new();
    // What the replicated table says about this node: after a restart it may
    // list channels nobody here wants any more; they linger out like others.
    let mut registered: BTreeSet<String> = replica.with_delivery(|d| d.channels_of(replica.id));
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
                let cmd = Command::Interest { node: replica.id, add: add.clone(), remove: remove.clone() };
                match replica.submit(cmd).await {
                    Ok(()) => {
                        metrics::counter!("herald_interest_changes_total").increment((add.len() + remove.len()) as u64);
                        registered.extend(add);
                        for c in remove {
                            registered.remove(&c);
                            idle_since.remove(&c);
                        }
                    }
                    Err(e) => tracing::debug!("registering channel interest: {e}; will retry"),
                }
            }
        }
    }
}
