//! Group commit for publishes: concurrent publish calls are gathered into
//! one Raft entry, so throughput is not bounded by one fsync per message.
//! Entries are submitted to Raft in arrival order and several may be in
//! flight at once; the queue in front is bounded, so a flood of publishers
//! waits here instead of growing memory.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::ClientWriteError;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::channels::{Accepted, NewPublication, Proposal};
use crate::raft::{Command, CommandResult, NodeInfo, Raft};

/// Most publications in one Raft entry.
const MAX_ITEMS_PER_ENTRY: usize = 2048;
/// Most entries submitted to Raft and not yet applied. Few: the leader
/// fsyncs entry by entry, so publishes that wait for a slot share the next
/// entry (and its fsync) instead of queueing their own.
const MAX_IN_FLIGHT: usize = 4;
/// Publish calls that may wait for a slot.
const QUEUE: usize = 4096;

/// Why a proposal did not produce results.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// This node is not the leader; the leader if known.
    NotLeader(Option<(u64, NodeInfo)>),
    /// Raft is shut down here.
    Stopped(String),
}

struct Pending {
    items: Vec<NewPublication>,
    reply: oneshot::Sender<Result<Vec<Accepted>, ProposeError>>,
}

/// Handle to the group-commit task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Start the task; it ends when every handle is dropped.
    pub fn spawn(raft: Raft, idempotency_window_ms: u64) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx, idempotency_window_ms));
        Self { tx }
    }

    /// Propose publications as one atomic unit and wait until applied.
    pub async fn propose(&self, items: Vec<NewPublication>) -> Result<Vec<Accepted>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { items, reply })
            .await
            .map_err(|_| ProposeError::Stopped("proposer stopped".into()))?;
        rx.await
            .map_err(|_| ProposeError::Stopped("proposal dropped".into()))?
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, idempotency_window_ms: u64) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut last_ms = 0i64;
    while let Some(first) = rx.recv().await {
        // Wait for a slot first: while waiting, more publishes queue up and
        // join this entry.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut n = first.items.len();
        let mut batch = vec![first];
        while n < MAX_ITEMS_PER_ENTRY {
            match rx.try_recv() {
                Ok(p) => {
                    n += p.items.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // The log's clock never runs backwards, even if this node's does.
        last_ms = last_ms.max(now_ms());
        let mut items = Vec::with_capacity(n);
        let mut waiters = Vec::with_capacity(batch.len());
        for p in batch {
            waiters.push((p.items.len(), p.reply));
            items.extend(p.items);
        }
        metrics::histogram!("herald_publish_batch_items").record(items.len() as f64);
        let proposal = Proposal {
            published_at_ms: last_ms,
            nonce: rand::random(),
            idempotency_window_ms,
            items,
        };
        match raft.client_write_ff(Command::Publish(proposal)).await {
            Err(fatal) => {
                for (_, reply) in waiters {
                    let _ = reply.send(Err(ProposeError::Stopped(fatal.to_string())));
                }
            }
            Ok(result) => {
                tokio::spawn(async move {
                    let outcome = match result.await {
                        Ok(Ok(resp)) => match resp.data {
                            CommandResult::Published(accepted) => Ok(accepted),
                            CommandResult::None => {
                                Err(ProposeError::Stopped("unexpected apply result".into()))
                            }
                        },
                        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                            Err(ProposeError::NotLeader(f.leader_id.zip(f.leader_node)))
                        }
                        Ok(Err(e)) => Err(ProposeError::Stopped(e.to_string())),
                        Err(e) => Err(ProposeError::Stopped(e.to_string())),
                    };
                    drop(slot);
                    match outcome {
                        Ok(accepted) => {
                            let mut it = accepted.into_iter();
                            for (count, reply) in waiters {
                                let _ = reply.send(Ok(it.by_ref().take(count).collect()));
                            }
                        }
                        Err(e) => {
                            for (_, reply) in waiters {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        }
    }
}
