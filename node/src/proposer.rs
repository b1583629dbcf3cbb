//! Group commit for publishes: concurrent publish calls are gathered into
//! one Raft entry, so throughput is not bounded by one fsync per message.
//! Entries are submitted to Raft in arrival order and several may be in
//! flight at once; the queue in front is bounded, so a flood of publishers
//! waits here instead of growing memory.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::ClientWriteError;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

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
    pub fn spawn(
        raft: Raft,
        idempotency_window_ms: u64,
        log_clock: watch::Receiver<(i64, Instant)>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx, idempotency_window_ms, log_clock));
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

/// How far a new leader may stamp ahead of the log's clock plus the time
/// really passed since it saw it move (clocks of healthy nodes differ a
/// little).
const CLOCK_SLACK_MS: i64 = 1000;

/// The time to stamp a proposal with: this node's wall clock, but never
/// before the log's clock or the last stamp, and never further ahead than
/// the time that really passed (monotonic clock) since the last stamp this
/// node made, or, after leadership changed, since it saw the log's clock
/// move. A leader whose wall clock jumps forward would otherwise expire
/// idempotency keys and history early for everyone.
pub(crate) fn stamp(anchor: Option<(i64, Instant)>, log_clock: (i64, Instant)) -> i64 {
    let (log_ms, seen_at) = log_clock;
    let elapsed = |at: Instant| at.elapsed().as_millis() as i64;
    let limit = match anchor {
        Some((ms, at)) if ms >= log_ms => ms + elapsed(at),
        _ if log_ms > 0 => log_ms + elapsed(seen_at) + CLOCK_SLACK_MS,
        _ => i64::MAX,
    };
    let last = anchor.map_or(0, |(ms, _)| ms);
    now_ms().min(limit).max(last).max(log_ms)
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    idempotency_window_ms: u64,
    log_clock: watch::Receiver<(i64, Instant)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut anchor: Option<(i64, Instant)> = None;
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
        let stamped = stamp(anchor, *log_clock.borrow());
        anchor = Some((stamped, Instant::now()));
        let mut items = Vec::with_capacity(n);
        let mut waiters = Vec::with_capacity(batch.len());
        for p in batch {
            waiters.push((p.items.len(), p.reply));
            items.extend(p.items);
        }
        metrics::histogram!("herald_publish_batch_items").record(items.len() as f64);
        let proposal = Proposal {
            published_at_ms: stamped,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_follow_the_wall_clock_but_not_its_jumps() {
        let now = now_ms();
        // A log clock seen just now at the true time: the wall clock rules.
        let t = stamp(None, (now, Instant::now()));
        assert!((t - now).abs() < 500, "{t} vs {now}");
        // A log clock an hour ahead of this node (a previous leader's clock
        // ran fast): never go back.
        assert!(stamp(None, (now + 3_600_000, Instant::now())) >= now + 3_600_000);
        // This node's clock jumped an hour ahead of the log's: capped, once
        // by the slack, then by real time only, however many stamps follow.
        let behind = now - 3_600_000;
        let mut anchor = None;
        for _ in 0..100 {
            let t = stamp(anchor, (behind, Instant::now()));
            anchor = Some((t, Instant::now()));
        }
        let t = anchor.unwrap().0;
        assert!(t <= behind + CLOCK_SLACK_MS + 500, "{t} vs {behind}");
    }
}
