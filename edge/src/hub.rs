//! The hub: which local connections are subscribed to which channel, and
//! the one place publications from the EdgeLink are turned into bytes and
//! handed to them.
//!
//! Owns, per channel: the position delivered to local clients (the last
//! `(epoch, offset)`), the subscribers and their state (waiting for the
//! upstream answer, recovering from history, live), and the decision to
//! subscribe or unsubscribe upstream (once per channel, however many
//! clients). Every publication is encoded once and the same `Bytes` queued
//! to every live subscriber; one arriving at or below the position is a
//! duplicate and dropped, one past a gap makes the channel fill the gap from
//! history first (guarantee 2). A client recovering from its own position
//! gets history up to where the live stream took over, buffered live
//! publications after it, and nothing twice (guarantee 3).
//!
//! Each channel also keeps a [`Ring`] of its newest encoded publications,
//! contiguous and ending at the delivered position, so a recovering client
//! that missed only those is answered at once with the shared bytes, with no
//! history read and no re-encoding. The ring is emptied whenever continuity
//! is in doubt; it is only ever used when its last entry is the delivered
//! position. A recovery the ring cannot answer reads history; while one
//! such read is in flight, later recoverers it covers wait for it, and its
//! answer (when it reaches the delivered position) becomes the ring.
//!
//! It never awaits while holding its lock, and never touches a socket:
//! subscribers are [`Outbox`]es, pushed to without blocking.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use herald_proto::v1::{LinkSubscribed, Publication};
use tokio::sync::mpsc;

use crate::channel::{ChannelName, Epoch, Offset, Position};
use crate::outbox::{Item, Outbox};
use crate::protocol::codes::{ClientError, UNSUBSCRIBE_INSUFFICIENT_STATE};
pub use crate::protocol::publication::Encoded;
use crate::protocol::publication::encode;

/// Identifies one subscriber (a connection) across channels.
pub type SubscriberId = u64;

/// Live publications buffered for one recovering subscriber before it is
/// given up on as too slow to recover.
const RECOVERY_BUFFER: usize = 4096;
/// How often a recovery is retried when the node's history lags the live
/// stream (right after a fail-over) or a history read fails.
const RETRIES: u32 = 5;
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// What the hub (and the presence table) asks of the EdgeLink.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkCommand {
    /// Subscribe upstream (from the current position when known).
    Subscribe {
        /// The channel.
        channel: ChannelName,
        /// Resume after this position.
        since: Option<Position>,
    },
    /// Unsubscribe upstream.
    Unsubscribe(ChannelName),
    /// Presence changes of local clients ([`crate::presence`]).
    Presence(herald_proto::v1::PresenceUpdate),
}

/// One history read's answer.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Publications after the position asked for, ascending.
    pub publications: Vec<Publication>,
    /// The channel's current epoch.
    pub epoch: Epoch,
    /// The channel's newest offset.
    pub offset: Offset,
    /// False when the position cannot be continued without a gap.
    pub in_window: bool,
}

/// Reads channel history from the cluster.
pub trait HistoryReader: Send + Sync + 'static {
    /// Publications of `channel` after `since`, at most `limit`.
    fn read(
        &self,
        channel: ChannelName,
        since: Position,
        limit: u32,
    ) -> BoxFuture<'static, Result<HistoryPage, ClientError>>;
}

/// The answer to a client's subscribe, queued before any live publication
/// of the channel.
#[derive(Debug)]
pub struct SubscribeDone {
    /// The subscribe command's id.
    pub reply_id: u32,
    /// The channel.
    pub channel: ChannelName,
    /// Position the client is at after `publications`.
    pub position: Position,
    /// Whether the client asked to recover.
    pub was_recovering: bool,
    /// Whether everything it missed is in `publications`.
    pub recovered: bool,
    /// The missed publications, ascending.
    pub publications: Vec<Arc<Encoded>>,
}

#[derive(Debug)]
enum SubState {
    /// Waiting for the channel's upstream position (or a gap fill).
    Waiting {
        reply_id: u32,
        recover: Option<Position>,
    },
    /// Reading history; live publications are buffered meanwhile.
    Recovering {
        reply_id: u32,
        since: Position,
        buffer: Vec<Arc<Encoded>>,
        attempt: u32,
    },
    Live,
}

#[derive(Debug)]
struct Subscriber {
    outbox: Arc<Outbox>,
    /// Publications at or below this offset were already given to this
    /// subscriber (in its subscribe reply).
    after: u64,
    state: SubState,
}

/// The newest encoded publications of one channel: contiguous offsets of
/// one epoch, oldest first, at most `cap`.
#[derive(Debug, Default)]
struct Ring(VecDeque<Arc<Encoded>>);

impl Ring {
    /// Append `enc`; whatever it does not continue is dropped first.
    fn push(&mut self, enc: Arc<Encoded>, cap: usize) {
        let continues = self
            .0
            .back()
            .is_none_or(|b| b.epoch == enc.epoch && b.offset.0 + 1 == enc.offset.0);
        if !continues {
            self.0.clear();
        }
        self.0.push_back(enc);
        while self.0.len() > cap {
            self.0.pop_front();
        }
    }

    /// Replace the contents with `pubs` (contiguous, ascending, ending at
    /// the delivered position `pos`) if they reach further back than what
    /// is kept now, keeping the newest `cap`.
    fn seed(&mut self, pubs: &[Arc<Encoded>], pos: &Position, cap: usize) {
        if pubs
            .last()
            .is_none_or(|l| l.epoch != pos.epoch || l.offset != pos.offset)
        {
            return;
        }
        let older = match (self.0.front(), pubs.first()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(f), Some(p)) => p.offset < f.offset,
        };
        if older {
            let skip = pubs.len().saturating_sub(cap);
            self.0 = pubs[skip..].iter().cloned().collect();
        }
    }

    /// Everything after `since` if the ring holds all of it up to `pos`
    /// (its last entry must be `pos`: a ring not ending at the delivered
    /// position is never trusted).
    fn after(&self, since: &Position, pos: &Position) -> Option<Vec<Arc<Encoded>>> {
        let (first, last) = (self.0.front()?, self.0.back()?);
        if last.epoch != pos.epoch
            || last.offset != pos.offset
            || since.epoch != pos.epoch
            || since.offset.0.saturating_add(1) < first.offset.0
            || since.offset > pos.offset
        {
            return None;
        }
        let skip = usize::try_from(since.offset.0 + 1 - first.offset.0).ok()?;
        Some(self.0.iter().skip(skip).cloned().collect())
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Delivered position; `None` until the upstream answers.
    position: Option<Position>,
    /// `Some` while a gap is being filled from history: publications
    /// arriving meanwhile.
    fill: Option<Vec<Publication>>,
    subs: HashMap<SubscriberId, Subscriber>,
    /// The newest delivered publications, for recoveries.
    ring: Ring,
    /// The subscriber whose history read is in flight and the position it
    /// reads after: waiting recoverers it covers do not read themselves.
    reading: Option<(SubscriberId, Position)>,
}

/// Channel → local subscribers. Shared as `Arc<Hub>`.
pub struct Hub {
    channels: Mutex<HashMap<ChannelName, Entry>>,
    link: mpsc::UnboundedSender<LinkCommand>,
    history: Arc<dyn HistoryReader>,
    recover_max: u32,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// What `subscribe` decided, to be carried out once the lock is released.
enum Next {
    Nothing,
    Recover(Position, u32),
}

impl Hub {
    /// A hub that asks `link` for upstream subscriptions and `history` for
    /// missed publications; a subscriber missing more than `recover_max`
    /// publications is told `recovered: false`.
    pub fn new(
        link: mpsc::UnboundedSender<LinkCommand>,
        history: Arc<dyn HistoryReader>,
        recover_max: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            link,
            history,
            recover_max,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChannelName, Entry>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribe `id` to `channel`. The answer (a [`SubscribeDone`] or a
    /// failure) is queued to `outbox`, followed by live publications.
    pub fn subscribe(
        self: &Arc<Self>,
        channel: &ChannelName,
        id: SubscriberId,
        outbox: Arc<Outbox>,
        reply_id: u32,
        recover: Option<Position>,
    ) {
        let next = {
            let mut channels = self.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| {
                let _ = self.link.send(LinkCommand::Subscribe {
                    channel: channel.clone(),
                    since: None,
                });
                metrics::gauge!("herald_edge_channels").increment(1.0);
                Entry::default()
            });
            metrics::gauge!("herald_edge_subscriptions").increment(1.0);
            let sub = Subscriber {
                outbox,
                after: 0,
                state: SubState::Waiting { reply_id, recover },
            };
            entry.subs.insert(id, sub);
            self.start(channel, entry, id)
        };
        self.carry_out(channel, id, next);
    }

    /// Move a waiting subscriber on, if the channel's position is known.
    fn start(&self, channel: &ChannelName, entry: &mut Entry, id: SubscriberId) -> Next {
        let (Some(pos), None) = (&entry.position, &entry.fill) else {
            return Next::Nothing;
        };
        let pos = pos.clone();
        let Some(sub) = entry.subs.get_mut(&id) else {
            return Next::Nothing;
        };
        let SubState::Waiting { reply_id, recover } = &sub.state else {
            return Next::Nothing;
        };
        let reply_id = *reply_id;
        let Some(since) = recover.clone() else {
            Self::go_live(channel, sub, reply_id, pos, false, false, vec![]);
            return Next::Nothing;
        };
        // An empty epoch from a client means "whatever the current one is".
        let since = if since.epoch.is_empty() {
            Position {
                epoch: pos.epoch.clone(),
                offset: since.offset,
            }
        } else {
            since
        };
        if since.epoch == pos.epoch && since.offset > pos.offset {
            // The client saw more than this edge has yet (it came from an
            // edge whose node was further ahead): nothing is missed; go live
            // after the client's offset so nothing is sent twice.
            metrics::counter!("herald_edge_recoveries_total", "recovered" => "true").increment(1);
            Self::go_live(channel, sub, reply_id, since, true, true, vec![]);
            return Next::Nothing;
        }
        let continuous = since.continues_in(&pos.epoch) && since.offset <= pos.offset;
        if !continuous || pos.offset.0 - since.offset.0 > u64::from(self.recover_max) {
            metrics::counter!("herald_edge_recoveries_total", "recovered" => "false").increment(1);
            Self::go_live(channel, sub, reply_id, pos, true, false, vec![]);
            return Next::Nothing;
        }
        if since.offset == pos.offset {
            metrics::counter!("herald_edge_recoveries_total", "recovered" => "true").increment(1);
            Self::go_live(channel, sub, reply_id, pos, true, true, vec![]);
            return Next::Nothing;
        }
        if let Some(pubs) = entry.ring.after(&since, &pos) {
            metrics::counter!("herald_edge_recoveries_total", "recovered" => "true").increment(1);
            metrics::counter!("herald_edge_recovery_reads_total", "source" => "cache").increment(1);
            Self::go_live(channel, sub, reply_id, pos, true, true, pubs);
            return Next::Nothing;
        }
        if let Some((_, reading)) = &entry.reading
            && reading.epoch == since.epoch
            && reading.offset <= since.offset
        {
            // Its answer will be in the ring; `start` runs again then.
            return Next::Nothing;
        }
        entry.reading = Some((id, since.clone()));
        metrics::counter!("herald_edge_recovery_reads_total", "source" => "history").increment(1);
        sub.state = SubState::Recovering {
            reply_id,
            since: since.clone(),
            buffer: Vec::new(),
            attempt: 0,
        };
        Next::Recover(since, 0)
    }

    fn go_live(
        channel: &ChannelName,
        sub: &mut Subscriber,
        reply_id: u32,
        position: Position,
        was_recovering: bool,
        recovered: bool,
        publications: Vec<Arc<Encoded>>,
    ) {
        sub.after = position.offset.0;
        sub.state = SubState::Live;
        let _ = sub.outbox.push(Item::Subscribed(Box::new(SubscribeDone {
            reply_id,
            channel: channel.clone(),
            position,
            was_recovering,
            recovered,
            publications,
        })));
    }

    fn carry_out(self: &Arc<Self>, channel: &ChannelName, id: SubscriberId, next: Next) {
        if let Next::Recover(since, attempt) = next {
            let hub = self.clone();
            let channel = channel.clone();
            let read = self
                .history
                .read(channel.clone(), since.clone(), self.recover_max);
            tokio::spawn(async move {
                if attempt > 0 {
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                let page = read.await;
                hub.finish_recovery(&channel, id, page);
            });
        }
    }

    /// A recovery read finished: apply it to `id`, then let the recoverers
    /// that waited for it go on (most of them from the ring it seeded).
    fn finish_recovery(
        self: &Arc<Self>,
        channel: &ChannelName,
        id: SubscriberId,
        page: Result<HistoryPage, ClientError>,
    ) {
        let (next, waiting) = {
            let mut channels = self.lock();
            let Some(entry) = channels.get_mut(channel) else {
                return;
            };
            let waiting = if entry.reading.as_ref().is_some_and(|(r, _)| *r == id) {
                entry.reading = None;
                true
            } else {
                false
            };
            let next = self.recovered(&mut channels, channel, id, page);
            let nexts = match channels.get_mut(channel) {
                Some(entry) if waiting => self.start_waiting(channel, entry),
                _ => vec![],
            };
            (next, nexts)
        };
        self.carry_out(channel, id, next);
        for (id, next) in waiting {
            self.carry_out(channel, id, next);
        }
    }

    /// Start every subscriber still waiting on `entry`.
    fn start_waiting(&self, channel: &ChannelName, entry: &mut Entry) -> Vec<(SubscriberId, Next)> {
        let ids: Vec<SubscriberId> = entry
            .subs
            .iter()
            .filter(|(_, s)| matches!(s.state, SubState::Waiting { .. }))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .map(|id| (id, self.start(channel, entry, id)))
            .collect()
    }

    /// Apply a recovery read's answer to subscriber `id`.
    fn recovered(
        self: &Arc<Self>,
        channels: &mut HashMap<ChannelName, Entry>,
        channel: &ChannelName,
        id: SubscriberId,
        page: Result<HistoryPage, ClientError>,
    ) -> Next {
        {
            let Some(entry) = channels.get_mut(channel) else {
                return Next::Nothing;
            };
            let Some(pos) = entry.position.clone() else {
                return Next::Nothing;
            };
            let Some(sub) = entry.subs.get_mut(&id) else {
                return Next::Nothing;
            };
            let SubState::Recovering {
                reply_id,
                since,
                buffer,
                attempt,
            } = &mut sub.state
            else {
                return Next::Nothing;
            };
            let reply_id = *reply_id;
            match page {
                Err(e) if *attempt >= RETRIES => {
                    let _ = sub.outbox.push(Item::SubscribeFailed {
                        reply_id,
                        channel: channel.clone(),
                        error: e.temporary(),
                    });
                    entry.subs.remove(&id);
                    metrics::gauge!("herald_edge_subscriptions").decrement(1.0);
                    self.release_if_idle(channels, channel);
                    Next::Nothing
                }
                Err(_) => {
                    *attempt += 1;
                    Next::Recover(since.clone(), *attempt)
                }
                Ok(page) => {
                    let missed_ok = page.in_window && page.epoch == pos.epoch;
                    let mut pubs: Vec<Arc<Encoded>> = Vec::new();
                    let mut last = since.offset.0;
                    if missed_ok {
                        for p in &page.publications {
                            if p.offset == last + 1 && p.epoch == pos.epoch.as_str() {
                                pubs.push(Arc::new(encode(channel.clone(), p)));
                                last = p.offset;
                            }
                        }
                    }
                    // The buffer holds every publication delivered since the
                    // read began, up to `pos`; empty, it covers nothing (the
                    // node's history may lag what this edge delivered).
                    let covered_by_buffer = buffer.first().is_some_and(|b| b.offset.0 <= last + 1);
                    if !missed_ok {
                        metrics::counter!("herald_edge_recoveries_total", "recovered" => "false")
                            .increment(1);
                        Self::go_live(channel, sub, reply_id, pos, true, false, vec![]);
                        Next::Nothing
                    } else if last >= pos.offset.0 || covered_by_buffer {
                        for b in buffer.drain(..) {
                            if b.offset.0 == last + 1 {
                                last = b.offset.0;
                                pubs.push(b);
                            }
                        }
                        let position = Position {
                            epoch: pos.epoch.clone(),
                            offset: Offset(last),
                        };
                        // The reply covers up to `last`; the live stream may
                        // not be there yet (node ahead of this edge).
                        metrics::counter!("herald_edge_recoveries_total", "recovered" => "true")
                            .increment(1);
                        // Contiguous up to the delivered position (and maybe
                        // past it, the node being ahead): what the next
                        // recoverers need, up to that position.
                        let upto = pubs.partition_point(|p| p.offset <= pos.offset);
                        entry
                            .ring
                            .seed(&pubs[..upto], &pos, self.recover_max as usize);
                        Self::go_live(channel, sub, reply_id, position, true, true, pubs);
                        Next::Nothing
                    } else if *attempt < RETRIES {
                        // The node's history is behind what this edge
                        // already delivered (it just took over): read again.
                        *attempt += 1;
                        Next::Recover(since.clone(), *attempt)
                    } else {
                        metrics::counter!("herald_edge_recoveries_total", "recovered" => "false")
                            .increment(1);
                        Self::go_live(channel, sub, reply_id, pos, true, false, vec![]);
                        Next::Nothing
                    }
                }
            }
        }
    }

    /// Remove `id` from `channel`; the last subscriber leaving unsubscribes
    /// upstream.
    pub fn unsubscribe(&self, channel: &ChannelName, id: SubscriberId) {
        let mut channels = self.lock();
        if let Some(entry) = channels.get_mut(channel)
            && entry.subs.remove(&id).is_some()
        {
            metrics::gauge!("herald_edge_subscriptions").decrement(1.0);
        }
        self.release_if_idle(&mut channels, channel);
    }

    fn release_if_idle(&self, channels: &mut HashMap<ChannelName, Entry>, channel: &ChannelName) {
        if channels
            .get(channel)
            .is_some_and(|e| e.subs.is_empty() && e.fill.is_none())
        {
            channels.remove(channel);
            metrics::gauge!("herald_edge_channels").decrement(1.0);
            let _ = self.link.send(LinkCommand::Unsubscribe(channel.clone()));
        }
    }

    /// Every channel with its delivered position, for resubscribing on a
    /// new link.
    pub fn snapshot(&self) -> Vec<(ChannelName, Option<Position>)> {
        self.lock()
            .iter()
            .map(|(c, e)| (c.clone(), e.position.clone()))
            .collect()
    }

    /// Number of channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.lock().len()
    }

    /// A live publication from the link.
    pub fn publication(self: &Arc<Self>, p: Publication) {
        let Ok(channel) = ChannelName::new(&p.channel) else {
            return;
        };
        let enc = Arc::new(encode(channel.clone(), &p));
        let gap_from = {
            let mut channels = self.lock();
            let Some(entry) = channels.get_mut(&channel) else {
                return;
            };
            if entry.position.is_none() {
                return;
            }
            if enc.offset.0 == 0 {
                // Ephemeral: no position, no recovery; to live subscribers only.
                Self::deliver_ephemeral(entry, enc);
                return;
            }
            if let Some(buffered) = &mut entry.fill {
                buffered.push(p);
                return;
            }
            match self.deliver(entry, enc) {
                Ok(()) => return,
                Err(()) => {
                    let from = entry.position.clone();
                    entry.fill = Some(vec![p.clone()]);
                    from.map(|f| (f, Epoch::new(&p.epoch)))
                }
            }
        };
        if let Some((from, epoch)) = gap_from {
            self.start_fill(channel, from, epoch, 0);
        }
    }

    /// Hand an ephemeral publication to every live subscriber.
    fn deliver_ephemeral(entry: &mut Entry, enc: Arc<Encoded>) {
        let mut delivered = 0u64;
        for sub in entry.subs.values_mut() {
            if matches!(sub.state, SubState::Live)
                && sub.outbox.push(Item::Pub(enc.clone())).is_ok()
            {
                delivered += 1;
            }
        }
        metrics::counter!("herald_edge_publications_total").increment(1);
        metrics::counter!("herald_edge_messages_queued_total").increment(delivered);
    }

    /// Hand `enc` to every subscriber if it continues the channel; `Err` if
    /// it is past a gap (or of another epoch).
    fn deliver(&self, entry: &mut Entry, enc: Arc<Encoded>) -> Result<(), ()> {
        let Some(pos) = &entry.position else {
            return Err(());
        };
        if enc.epoch == pos.epoch && enc.offset <= pos.offset {
            metrics::counter!("herald_edge_duplicates_dropped_total").increment(1);
            return Ok(());
        }
        if !(pos.continues_in(&enc.epoch) && enc.offset.0 == pos.offset.0 + 1) {
            return Err(());
        }
        entry.position = Some(enc.position());
        entry.ring.push(enc.clone(), self.recover_max as usize);
        let mut delivered = 0u64;
        for sub in entry.subs.values_mut() {
            match &mut sub.state {
                SubState::Live
                    if enc.offset.0 > sub.after
                        && sub.outbox.push(Item::Pub(enc.clone())).is_ok() =>
                {
                    delivered += 1;
                }
                SubState::Recovering { buffer, .. } => {
                    if buffer.len() < RECOVERY_BUFFER {
                        buffer.push(enc.clone());
                    } else {
                        sub.outbox.close(crate::protocol::codes::Disconnect::SLOW);
                    }
                }
                _ => {}
            }
        }
        metrics::counter!("herald_edge_publications_total").increment(1);
        metrics::counter!("herald_edge_messages_queued_total").increment(delivered);
        Ok(())
    }

    /// The link's answer to a subscribe (first, or after a reconnect).
    pub fn subscribed(self: &Arc<Self>, ls: LinkSubscribed) {
        let Ok(channel) = ChannelName::new(&ls.channel) else {
            return;
        };
        let answer = Position {
            epoch: Epoch::new(&ls.epoch),
            offset: Offset(ls.offset),
        };
        let (nexts, gap) = {
            let mut channels = self.lock();
            let Some(entry) = channels.get_mut(&channel) else {
                let _ = self.link.send(LinkCommand::Unsubscribe(channel.clone()));
                return;
            };
            let mut gap = None;
            match (&entry.position, &mut entry.fill) {
                (None, _) => entry.position = Some(answer.clone()),
                (Some(_), Some(buffered)) => {
                    if !ls.recovered {
                        entry.ring.clear();
                    }
                    buffered.extend(ls.publications);
                }
                (Some(pos), None) => {
                    if !ls.recovered {
                        // The node could not vouch for continuity.
                        entry.ring.clear();
                    }
                    let pos = pos.clone();
                    let mut ok = true;
                    if ls.recovered {
                        for p in ls.publications {
                            let c = channel.clone();
                            if self.deliver(entry, Arc::new(encode(c, &p))).is_err() {
                                ok = false;
                                break;
                            }
                        }
                    }
                    let now = entry.position.clone().unwrap_or(pos);
                    let behind = !(answer.epoch == now.epoch && answer.offset <= now.offset);
                    if !ok || behind {
                        entry.fill = Some(vec![]);
                        gap = Some((now, answer.epoch.clone()));
                    }
                }
            }
            let ids: Vec<SubscriberId> = entry.subs.keys().copied().collect();
            let nexts: Vec<(SubscriberId, Next)> = ids
                .into_iter()
                .map(|id| (id, self.start(&channel, entry, id)))
                .collect();
            (nexts, gap)
        };
        for (id, next) in nexts {
            self.carry_out(&channel, id, next);
        }
        if let Some((from, epoch)) = gap {
            self.start_fill(channel, from, epoch, 0);
        }
    }

    /// The link refused a channel: fail everyone waiting for it.
    pub fn refused(&self, channel: &str, error: ClientError) {
        let Ok(channel) = ChannelName::new(channel) else {
            return;
        };
        let mut channels = self.lock();
        let Some(entry) = channels.remove(&channel) else {
            return;
        };
        metrics::gauge!("herald_edge_channels").decrement(1.0);
        for sub in entry.subs.into_values() {
            metrics::gauge!("herald_edge_subscriptions").decrement(1.0);
            let item = match sub.state {
                SubState::Waiting { reply_id, .. } | SubState::Recovering { reply_id, .. } => {
                    Item::SubscribeFailed {
                        reply_id,
                        channel: channel.clone(),
                        error: error.clone(),
                    }
                }
                SubState::Live => Item::Unsubscribed {
                    channel: channel.clone(),
                    code: UNSUBSCRIBE_INSUFFICIENT_STATE,
                    reason: "insufficient state",
                },
            };
            let _ = sub.outbox.push(item);
        }
    }

    fn start_fill(
        self: &Arc<Self>,
        channel: ChannelName,
        from: Position,
        epoch: Epoch,
        attempt: u32,
    ) {
        metrics::counter!("herald_edge_gap_fills_total").increment(1);
        let since = if from.epoch.is_empty() && from.offset.0 == 0 {
            Position {
                epoch,
                offset: Offset(0),
            }
        } else {
            from
        };
        let read = self
            .history
            .read(channel.clone(), since.clone(), self.recover_max.max(1000));
        let hub = self.clone();
        tokio::spawn(async move {
            if attempt > 0 {
                tokio::time::sleep(RETRY_DELAY).await;
            }
            let page = read.await;
            hub.finish_fill(channel, since, page, attempt);
        });
    }

    fn finish_fill(
        self: &Arc<Self>,
        channel: ChannelName,
        since: Position,
        page: Result<HistoryPage, ClientError>,
        attempt: u32,
    ) {
        let (nexts, retry) = {
            let mut channels = self.lock();
            let Some(entry) = channels.get_mut(&channel) else {
                return;
            };
            let Some(buffered) = entry.fill.take() else {
                return;
            };
            let mut retry = None;
            match page {
                Err(_) if attempt < RETRIES => {
                    entry.fill = Some(buffered);
                    retry = Some(since.clone());
                }
                Ok(page) if page.in_window => {
                    if entry.position.as_ref().is_some_and(|p| p.epoch.is_empty()) {
                        entry.ring.clear();
                        entry.position = Some(since.clone());
                    }
                    let mut all: Vec<Publication> = page.publications;
                    all.extend(buffered);
                    all.sort_by_key(|p| p.offset);
                    let mut gap = false;
                    for p in all {
                        if self
                            .deliver(entry, Arc::new(encode(channel.clone(), &p)))
                            .is_err()
                        {
                            gap = true;
                        }
                    }
                    let behind = entry
                        .position
                        .as_ref()
                        .is_some_and(|p| p.epoch == page.epoch && p.offset < page.offset);
                    if (gap || behind) && attempt < RETRIES {
                        entry.fill = Some(vec![]);
                        retry = entry.position.clone();
                    } else if gap {
                        Self::lose_continuity(&channel, entry, page.epoch, page.offset);
                    }
                }
                Ok(page) => Self::lose_continuity(&channel, entry, page.epoch, page.offset),
                Err(_) => {
                    let pos = entry.position.clone().unwrap_or_default();
                    Self::lose_continuity(&channel, entry, pos.epoch, pos.offset);
                }
            }
            let nexts: Vec<(SubscriberId, Next)> = if entry.fill.is_none() {
                let ids: Vec<SubscriberId> = entry.subs.keys().copied().collect();
                ids.into_iter()
                    .map(|id| (id, self.start(&channel, entry, id)))
                    .collect()
            } else {
                vec![]
            };
            self.release_if_idle(&mut channels, &channel);
            (nexts, retry)
        };
        for (id, next) in nexts {
            self.carry_out(&channel, id, next);
        }
        if let Some(from) = retry {
            let epoch = from.epoch.clone();
            self.start_fill(channel, from, epoch, attempt + 1);
        }
    }

    /// Publications were lost upstream for good: every subscriber that was
    /// live or recovering is unsubscribed with the resubscribe code, so its
    /// SDK recovers from its own position and is told `recovered: false`
    /// (guarantee 3: never silently skipped).
    fn lose_continuity(channel: &ChannelName, entry: &mut Entry, epoch: Epoch, offset: Offset) {
        metrics::counter!("herald_edge_continuity_lost_total").increment(1);
        entry.position = Some(Position { epoch, offset });
        entry.ring.clear();
        entry.reading = None;
        entry.subs.retain(|_, sub| {
            if matches!(sub.state, SubState::Waiting { .. }) {
                return true;
            }
            let _ = sub.outbox.push(Item::Unsubscribed {
                channel: channel.clone(),
                code: UNSUBSCRIBE_INSUFFICIENT_STATE,
                reason: "insufficient state",
            });
            metrics::gauge!("herald_edge_subscriptions").decrement(1.0);
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// History from a vector of publications of one epoch; counts the
    /// reads made for recoveries (gap fills ask for at least 1000).
    #[derive(Default)]
    struct Store(StdMutex<Vec<Publication>>, AtomicUsize);

    impl Store {
        fn push(&self, channel: &str, offset: u64) -> Publication {
            let p = Publication {
                channel: channel.into(),
                offset,
                epoch: "e".into(),
                data: b"{}".to_vec().into(),
                content_type: "application/json".into(),
                ..Default::default()
            };
            self.0.lock().unwrap().push(p.clone());
            p
        }
    }

    impl HistoryReader for Arc<Store> {
        fn read(
            &self,
            channel: ChannelName,
            since: Position,
            limit: u32,
        ) -> BoxFuture<'static, Result<HistoryPage, ClientError>> {
            if limit < 1000 {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
            let all: Vec<Publication> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.channel == channel.as_str())
                .cloned()
                .collect();
            let offset = all.iter().map(|p| p.offset).max().unwrap_or(0);
            let mut publications: Vec<Publication> = all
                .into_iter()
                .filter(|p| p.offset > since.offset.0)
                .collect();
            publications.sort_by_key(|p| p.offset);
            publications.truncate(limit as usize);
            Box::pin(async move {
                Ok(HistoryPage {
                    publications,
                    epoch: Epoch::new("e"),
                    offset: Offset(offset),
                    in_window: since.epoch.as_str() == "e",
                })
            })
        }
    }

    fn setup() -> (Arc<Hub>, Arc<Store>, mpsc::UnboundedReceiver<LinkCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Arc::new(Store::default());
        (Hub::new(tx, Arc::new(store.clone()), 300), store, rx)
    }

    fn answer(channel: &str, offset: u64) -> LinkSubscribed {
        LinkSubscribed {
            channel: channel.into(),
            epoch: "e".into(),
            offset,
            recovered: false,
            publications: vec![],
        }
    }

    /// Offsets a subscriber received: its subscribe reply's publications,
    /// then live ones.
    async fn received(outbox: &Outbox) -> (Option<bool>, Vec<u64>) {
        let mut items = vec![];
        let _ = tokio::time::timeout(Duration::from_millis(50), outbox.next(&mut items)).await;
        let mut recovered = None;
        let mut offsets = vec![];
        for i in items {
            match i {
                Item::Subscribed(d) => {
                    recovered = Some(d.recovered);
                    offsets.extend(d.publications.iter().map(|p| p.offset.0));
                }
                Item::Pub(p) => offsets.push(p.offset.0),
                other => panic!("unexpected {other:?}"),
            }
        }
        (recovered, offsets)
    }

    #[tokio::test]
    async fn one_upstream_subscription_per_channel_and_duplicates_dropped() {
        let (hub, store, mut link) = setup();
        let ch = ChannelName::new("a").unwrap();
        let (o1, o2) = (
            Arc::new(Outbox::new(1 << 20)),
            Arc::new(Outbox::new(1 << 20)),
        );
        hub.subscribe(&ch, 1, o1.clone(), 1, None);
        hub.subscribe(&ch, 2, o2.clone(), 1, None);
        assert!(matches!(link.try_recv(), Ok(LinkCommand::Subscribe { .. })));
        assert!(link.try_recv().is_err());
        hub.subscribed(answer("a", 0));
        let p1 = store.push("a", 1);
        hub.publication(p1.clone());
        hub.publication(p1);
        hub.publication(store.push("a", 2));
        assert_eq!(received(&o1).await, (Some(false), vec![1, 2]));
        assert_eq!(received(&o2).await, (Some(false), vec![1, 2]));
        hub.unsubscribe(&ch, 1);
        assert!(link.try_recv().is_err());
        hub.unsubscribe(&ch, 2);
        assert_eq!(link.try_recv(), Ok(LinkCommand::Unsubscribe(ch)));
    }

    #[tokio::test]
    async fn recovery_joins_history_and_live_without_gap_or_duplicate() {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        let o1 = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 1, o1.clone(), 1, None);
        for i in 1..=5 {
            store.push("a", i);
        }
        hub.subscribed(answer("a", 5));
        // A client at offset 2 recovers 3..=5 while 6 arrives live.
        let o2 = Arc::new(Outbox::new(1 << 20));
        let since = Position {
            epoch: Epoch::new("e"),
            offset: Offset(2),
        };
        hub.subscribe(&ch, 2, o2.clone(), 7, Some(since));
        hub.publication(store.push("a", 6));
        tokio::time::sleep(Duration::from_millis(20)).await;
        hub.publication(store.push("a", 7));
        assert_eq!(received(&o2).await, (Some(true), vec![3, 4, 5, 6, 7]));
        // Too far behind, or another epoch: recovered false, nothing replayed.
        let o3 = Arc::new(Outbox::new(1 << 20));
        let other = Position {
            epoch: Epoch::new("x"),
            offset: Offset(1),
        };
        hub.subscribe(&ch, 3, o3.clone(), 8, Some(other));
        assert_eq!(received(&o3).await, (Some(false), vec![]));
    }

    #[tokio::test]
    async fn a_client_ahead_of_a_lagging_edge_recovers_without_repeats() {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        let o1 = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 1, o1.clone(), 1, None);
        for i in 1..=3 {
            store.push("a", i);
        }
        hub.subscribed(answer("a", 3));
        // The client saw up to 5 through an edge whose node was ahead.
        let o2 = Arc::new(Outbox::new(1 << 20));
        let since = Position {
            epoch: Epoch::new("e"),
            offset: Offset(5),
        };
        hub.subscribe(&ch, 2, o2.clone(), 7, Some(since));
        for i in 4..=6 {
            hub.publication(store.push("a", i));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(received(&o2).await, (Some(true), vec![6]));
    }

    #[tokio::test]
    async fn a_gap_is_filled_from_history() {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 1, o.clone(), 1, None);
        hub.subscribed(answer("a", 0));
        hub.publication(store.push("a", 1));
        store.push("a", 2);
        store.push("a", 3);
        hub.publication(store.push("a", 4));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(received(&o).await, (Some(false), vec![1, 2, 3, 4]));
        // A resubscribe answer after a reconnect that is ahead: filled too.
        store.push("a", 5);
        hub.subscribed(answer("a", 5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(received(&o).await, (None, vec![5]));
    }

    #[tokio::test]
    async fn first_publication_of_a_new_channel_is_not_lost() {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 1, o.clone(), 1, None);
        // The channel did not exist: empty epoch, offset 0.
        hub.subscribed(LinkSubscribed {
            channel: "a".into(),
            ..Default::default()
        });
        hub.publication(store.push("a", 1));
        hub.publication(store.push("a", 2));
        assert_eq!(received(&o).await, (Some(false), vec![1, 2]));
    }

    fn at(offset: u64) -> Option<Position> {
        Some(Position {
            epoch: Epoch::new("e"),
            offset: Offset(offset),
        })
    }

    fn reads(store: &Store) -> usize {
        store.1.load(Ordering::SeqCst)
    }

    /// A channel `a` with one live subscriber (id 1) that was delivered
    /// 1..=n live, so the ring holds them.
    async fn live(n: u64) -> (Arc<Hub>, Arc<Store>, ChannelName) {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        hub.subscribe(&ch, 1, Arc::new(Outbox::new(1 << 20)), 1, None);
        hub.subscribed(answer("a", 0));
        for i in 1..=n {
            hub.publication(store.push("a", i));
        }
        (hub, store, ch)
    }

    /// Guarantee 3 from the ring: the shared encoded publications after the
    /// client's position, no history read, then live ones, nothing twice.
    #[tokio::test]
    async fn a_recovery_within_the_ring_is_answered_without_reading_history() {
        let (hub, store, ch) = live(5).await;
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 2, o.clone(), 7, at(2));
        hub.publication(store.push("a", 6));
        assert_eq!(received(&o).await, (Some(true), vec![3, 4, 5, 6]));
        // From just before the ring's first entry, and from its last.
        let (o0, o5) = (
            Arc::new(Outbox::new(1 << 20)),
            Arc::new(Outbox::new(1 << 20)),
        );
        hub.subscribe(&ch, 3, o0.clone(), 7, at(0));
        hub.subscribe(&ch, 4, o5.clone(), 7, at(6));
        assert_eq!(received(&o0).await, (Some(true), vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(received(&o5).await, (Some(true), vec![]));
        assert_eq!(reads(&store), 0);
    }

    /// A position older than the ring reads history; the answer, reaching
    /// the delivered position, becomes the ring for the next recoverer.
    #[tokio::test]
    async fn a_recovery_older_than_the_ring_reads_history_once() {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        hub.subscribe(&ch, 1, Arc::new(Outbox::new(1 << 20)), 1, None);
        for i in 1..=5 {
            store.push("a", i);
        }
        hub.subscribed(answer("a", 5));
        hub.publication(store.push("a", 6));
        hub.publication(store.push("a", 7));
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 2, o.clone(), 7, at(3));
        assert_eq!(received(&o).await, (Some(true), vec![4, 5, 6, 7]));
        assert_eq!(reads(&store), 1);
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 3, o.clone(), 7, at(4));
        hub.publication(store.push("a", 8));
        assert_eq!(received(&o).await, (Some(true), vec![5, 6, 7, 8]));
        assert_eq!(reads(&store), 1);
    }

    /// An upstream answer that cannot vouch for continuity (`recovered:
    /// false`, e.g. a new node after a fail-over) empties the ring.
    #[tokio::test]
    async fn the_ring_is_emptied_when_the_upstream_cannot_vouch_for_continuity() {
        let (hub, store, ch) = live(5).await;
        hub.subscribed(answer("a", 5));
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 2, o.clone(), 7, at(2));
        assert_eq!(received(&o).await, (Some(true), vec![3, 4, 5]));
        assert_eq!(reads(&store), 1);
    }

    /// A gap that history cannot fill loses continuity: the ring (1, 2)
    /// does not answer across it, and a recoverer history cannot serve
    /// either is told `recovered: false`, never given a silent gap.
    #[tokio::test]
    async fn a_gap_that_cannot_be_filled_is_never_answered_across() {
        let (hub, store, ch) = live(2).await;
        // Offset 3 is in no history: the fill gives up after its retries.
        hub.publication(store.push("a", 4));
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 2, o.clone(), 7, at(1));
        tokio::time::sleep(RETRY_DELAY * (2 * RETRIES + 4)).await;
        hub.publication(store.push("a", 5));
        assert_eq!(received(&o).await, (Some(false), vec![5]));
        assert!(reads(&store) >= 1);
    }

    /// Ring entries are contiguous in one epoch and are used only when the
    /// last is the delivered position.
    #[test]
    fn the_ring_keeps_one_contiguous_run_ending_at_the_position() {
        let enc = |epoch: &str, offset: u64| {
            let p = Publication {
                channel: "a".into(),
                offset,
                epoch: epoch.into(),
                data: b"{}".to_vec().into(),
                content_type: "application/json".into(),
                ..Default::default()
            };
            Arc::new(encode(ChannelName::new("a").unwrap(), &p))
        };
        let pos = |epoch: &str, offset: u64| Position {
            epoch: Epoch::new(epoch),
            offset: Offset(offset),
        };
        let offsets = |v: Option<Vec<Arc<Encoded>>>| {
            v.map(|v| v.iter().map(|e| e.offset.0).collect::<Vec<_>>())
        };
        let mut ring = Ring::default();
        for i in 1..=5 {
            ring.push(enc("e", i), 3);
        }
        assert_eq!(
            offsets(ring.after(&pos("e", 2), &pos("e", 5))),
            Some(vec![3, 4, 5])
        );
        assert_eq!(offsets(ring.after(&pos("e", 1), &pos("e", 5))), None);
        assert_eq!(offsets(ring.after(&pos("e", 3), &pos("e", 6))), None);
        assert_eq!(offsets(ring.after(&pos("x", 3), &pos("e", 5))), None);
        // A new epoch, or a jump, starts the ring over.
        ring.push(enc("f", 1), 3);
        assert_eq!(
            offsets(ring.after(&pos("f", 0), &pos("f", 1))),
            Some(vec![1])
        );
        ring.push(enc("f", 3), 3);
        assert_eq!(offsets(ring.after(&pos("f", 1), &pos("f", 3))), None);
        assert_eq!(
            offsets(ring.after(&pos("f", 2), &pos("f", 3))),
            Some(vec![3])
        );
    }

    /// Recoverers arriving together share one history read, and each gets
    /// exactly what it missed, then the live stream.
    #[tokio::test]
    async fn concurrent_recoverers_share_one_history_read() {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        for i in 1..=5 {
            store.push("a", i);
        }
        let outboxes: Vec<Arc<Outbox>> = (0..20).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        for (id, o) in outboxes.iter().enumerate() {
            hub.subscribe(&ch, id as u64, o.clone(), 1, at(2));
        }
        hub.subscribed(answer("a", 5));
        hub.publication(store.push("a", 6));
        for o in &outboxes {
            assert_eq!(received(o).await, (Some(true), vec![3, 4, 5, 6]));
        }
        assert_eq!(reads(&store), 1);
        // One further behind than the read in flight reads for itself.
        let late = Arc::new(Outbox::new(1 << 20));
        let older = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 100, late.clone(), 1, at(4));
        hub.subscribe(&ch, 101, older.clone(), 1, at(1));
        assert_eq!(received(&late).await, (Some(true), vec![5, 6]));
        assert_eq!(received(&older).await, (Some(true), vec![2, 3, 4, 5, 6]));
        assert_eq!(reads(&store), 2);
    }

    /// A client ahead of this edge is not replayed the ring.
    #[tokio::test]
    async fn a_client_ahead_of_the_ring_gets_only_what_follows_it() {
        let (hub, store, ch) = live(3).await;
        let o = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(&ch, 2, o.clone(), 7, at(5));
        for i in 4..=6 {
            hub.publication(store.push("a", i));
        }
        assert_eq!(received(&o).await, (Some(true), vec![6]));
        assert_eq!(reads(&store), 0);
    }

    /// A history answer reaching past this edge's position (the node is
    /// ahead) still serves the recoverers waiting on it, up to the edge's
    /// position; the rest reaches them live, once.
    #[tokio::test]
    async fn a_read_ahead_of_the_edge_still_serves_the_waiting_recoverers() {
        let (hub, store, _link) = setup();
        let ch = ChannelName::new("a").unwrap();
        for i in 1..=7 {
            store.push("a", i);
        }
        let outboxes: Vec<Arc<Outbox>> = (0..5).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        for (id, o) in outboxes.iter().enumerate() {
            hub.subscribe(&ch, id as u64, o.clone(), 1, at(2));
        }
        hub.subscribed(answer("a", 5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        hub.publication(store.0.lock().unwrap()[5].clone());
        hub.publication(store.0.lock().unwrap()[6].clone());
        for o in &outboxes {
            assert_eq!(received(o).await, (Some(true), vec![3, 4, 5, 6, 7]));
        }
        assert_eq!(reads(&store), 1);
    }
}
