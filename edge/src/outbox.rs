//! A connection's outbound queue: what the hub and the command handlers
//! want written to one client, bounded in bytes.
//!
//! Producers (the hub's fan-out, command tasks) push without awaiting and
//! without ever blocking on a slow socket; the connection's own task drains
//! everything queued in one go and writes it with a single flush. When a
//! push would take the queue past its byte limit, the queue closes itself
//! with the slow-consumer disconnect (3008) instead of growing: memory per
//! client is bounded (guarantee 4) and the client resumes by recovery. A
//! single item over the whole limit is taken only into an empty queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::hub::{Encoded, SubscribeDone};
use crate::protocol::codes::{ClientError, Disconnect};

/// One thing to write.
#[derive(Debug)]
pub enum Item {
    /// A complete encoded message (a reply, an error, a ping).
    Frame(Bytes),
    /// A live publication, encoded once for every subscriber.
    Pub(Arc<Encoded>),
    /// A subscribe finished: the reply (with recovered publications) comes
    /// before any live publication of the channel.
    Subscribed(Box<SubscribeDone>),
    /// A subscribe failed upstream.
    SubscribeFailed {
        /// The subscribe command's id.
        reply_id: u32,
        /// Its channel.
        channel: crate::channel::ChannelName,
        /// What to answer.
        error: ClientError,
    },
    /// The channel is gone for this client (e.g. its history was lost and
    /// it must resubscribe).
    Unsubscribed {
        /// The channel.
        channel: crate::channel::ChannelName,
        /// Why (client protocol unsubscribe code).
        code: u32,
        /// Human-readable reason.
        reason: &'static str,
    },
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Frame(b) => b.len(),
            Item::Pub(e) => e.ws_push.len(),
            Item::Subscribed(d) => {
                128 + d
                    .publications
                    .iter()
                    .map(|p| p.ws_push.len())
                    .sum::<usize>()
            }
            Item::SubscribeFailed { .. } | Item::Unsubscribed { .. } => 128,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Item>,
    bytes: usize,
    closed: Option<Disconnect>,
}

/// The bounded queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    limit: usize,
}

/// The queue is closed (overflowed or told to disconnect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Outbox {
    /// A queue holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            limit,
        }
    }

    /// Queue an item. On overflow the queue closes with the slow-consumer
    /// disconnect and drops what it held.
    pub fn push(&self, item: Item) -> Result<(), Closed> {
        let size = item.size();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.closed.is_some() {
            return Err(Closed);
        }
        // One item larger than the whole limit (a recovery answer carrying
        // a large backlog) is still accepted when nothing else is queued:
        // it is bounded by `--recover-max`, and refusing it would make the
        // client reconnect into the same refusal forever.
        if s.bytes + size > self.limit && !(s.bytes == 0 && s.queue.is_empty()) {
            s.closed = Some(Disconnect::SLOW);
            s.queue.clear();
            s.bytes = 0;
            drop(s);
            metrics::counter!("herald_edge_slow_consumer_disconnects_total").increment(1);
            self.ready.notify_one();
            return Err(Closed);
        }
        s.bytes += size;
        s.queue.push_back(item);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Close with `d` (the first close wins); what is queued is dropped.
    pub fn close(&self, d: Disconnect) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.closed.is_none() {
            s.closed = Some(d);
            s.queue.clear();
            s.bytes = 0;
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Whether the queue has been closed.
    pub fn is_closed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
            .is_some()
    }

    /// Wait for items and move all of them into `out`; `Err` once closed.
    /// Only the connection's own task calls this (one consumer).
    pub async fn next(&self, out: &mut Vec<Item>) -> Result<(), Disconnect> {
        loop {
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(d) = s.closed {
                    return Err(d);
                }
                if !s.queue.is_empty() {
                    out.extend(s.queue.drain(..));
                    s.bytes = 0;
                    return Ok(());
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_with_slow_consumer() {
        let o = Outbox::new(10);
        o.push(Item::Frame(Bytes::from_static(b"12345"))).unwrap();
        o.push(Item::Frame(Bytes::from_static(b"12345"))).unwrap();
        assert_eq!(o.push(Item::Frame(Bytes::from_static(b"1"))), Err(Closed));
        let mut out = vec![];
        assert_eq!(o.next(&mut out).await, Err(Disconnect::SLOW));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn one_item_over_the_limit_fits_only_an_empty_queue() {
        let o = Outbox::new(4);
        o.push(Item::Frame(Bytes::from_static(b"123456"))).unwrap();
        assert_eq!(o.push(Item::Frame(Bytes::from_static(b"1"))), Err(Closed));
        let o = Outbox::new(4);
        o.push(Item::Frame(Bytes::from_static(b"1"))).unwrap();
        assert_eq!(
            o.push(Item::Frame(Bytes::from_static(b"123456"))),
            Err(Closed)
        );
    }

    #[tokio::test]
    async fn drains_in_order_and_frees_space() {
        let o = Arc::new(Outbox::new(10));
        let o2 = o.clone();
        let t = tokio::spawn(async move {
            let mut out = vec![];
            o2.next(&mut out).await.unwrap();
            out.len()
        });
        o.push(Item::Frame(Bytes::from_static(b"1234567890")))
            .unwrap();
        assert_eq!(t.await.unwrap(), 1);
        o.push(Item::Frame(Bytes::from_static(b"1234567890")))
            .unwrap();
    }
}
