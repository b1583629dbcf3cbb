//! The `EdgeLink` service: one long-lived stream per edge. The edge names
//! the channels it wants (once each, however many of its clients want them)
//! with the position it last delivered; this node replays what the edge
//! missed from history, then forwards every publication it applies for
//! those channels, exactly once and in offset order.
//!
//! Positions are tracked per channel: a publication at or below the
//! position is a duplicate and dropped; one past a gap (this stream lagged
//! behind the apply loop, or a snapshot was installed) triggers a fill from
//! history first. If history no longer holds the gap, the edge is told with
//! `recovered: false`, never silently skipped (guarantee 3).
//!
//! A link ends with `UNAVAILABLE` — and the edge moves to another node —
//! when this node stops, and when it has been unready (no leader, cut off
//! from the majority, far behind) for [`UNREADY_LIMIT`]: a node on the
//! minority side of a partition would otherwise keep its edges linked and
//! their clients silently starved until the partition healed.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1::edge_link_server::EdgeLink;
use herald_proto::v1::edge_message::Msg as EdgeMsg;
use herald_proto::v1::node_message::Msg as NodeMsg;
use herald_proto::v1::{
    EdgeMessage, HistoryResponse, LinkError, LinkSubscribe, LinkSubscribed, NodeMessage,
    PresenceUpdate, Publication,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::channels::{Epoch, Offset, Since};
use crate::peer::interest::Interest;
use crate::rejection::Rejection;
use crate::replica::Replica;

/// Messages buffered towards one edge before this node stops reading the
/// apply stream for it (it then catches up from history).
const OUTBOUND: usize = 4096;
/// How often a session retries gap fills whose history read failed (a
/// fan-out node reads history from a voter, which may be unreachable).
const RETRY_FILLS: Duration = Duration::from_secs(1);
/// How long a node may stay unready before it sends its edges elsewhere:
/// longer than an election, so a leader change does not move every edge.
const UNREADY_LIMIT: Duration = Duration::from_secs(5);
/// How often a session checks its node's readiness.
const READINESS_CHECK: Duration = Duration::from_millis(500);

/// Where a session reads history from.
pub trait HistorySource: Send + Sync {
    /// Publications after `since` (or the newest position when `None`).
    fn read(
        &self,
        channel: &str,
        since: Option<Since>,
        limit: u32,
    ) -> impl Future<Output = Result<HistoryResponse, Rejection>> + Send;
    /// Most publications one read returns.
    fn max_limit(&self) -> u32;
}

impl<T: HistorySource> HistorySource for Arc<T> {
    fn read(
        &self,
        channel: &str,
        since: Option<Since>,
        limit: u32,
    ) -> impl Future<Output = Result<HistoryResponse, Rejection>> + Send {
        (**self).read(channel, since, limit)
    }

    fn max_limit(&self) -> u32 {
        (**self).max_limit()
    }
}

impl<T: HistorySource> HistorySource for &T {
    fn read(
        &self,
        channel: &str,
        since: Option<Since>,
        limit: u32,
    ) -> impl Future<Output = Result<HistoryResponse, Rejection>> + Send {
        (**self).read(channel, since, limit)
    }

    fn max_limit(&self) -> u32 {
        (**self).max_limit()
    }
}

impl HistorySource for Replica {
    async fn read(
        &self,
        channel: &str,
        since: Option<Since>,
        limit: u32,
    ) -> Result<HistoryResponse, Rejection> {
        let page = self.history(channel, since.as_ref(), limit, false)?;
        Ok(super::page_to_wire(channel, page))
    }

    fn max_limit(&self) -> u32 {
        self.namespaces.limits.max_history_limit
    }
}

/// What an edge link is served from: a Raft replica, or a fan-out node that
/// reads history from a voter.
pub trait LinkBackend: HistorySource + crate::http::Ops + 'static {
    /// Every publication this node hands to its edge links from now on.
    fn subscribe_delivery(&self) -> broadcast::Receiver<Arc<Vec<Publication>>>;
    /// A new link's presence handle.
    fn new_presence_link(&self) -> u64;
    /// An edge's presence update.
    fn presence_update(&self, link: u64, u: PresenceUpdate);
    /// A link ended: its clients leave.
    fn presence_link_ended(&self, link: u64);
}

impl LinkBackend for Replica {
    fn subscribe_delivery(&self) -> broadcast::Receiver<Arc<Vec<Publication>>> {
        Replica::subscribe_delivery(self)
    }

    fn new_presence_link(&self) -> u64 {
        self.presence.new_link()
    }

    fn presence_update(&self, link: u64, u: PresenceUpdate) {
        Replica::presence_update(self, link, u);
    }

    fn presence_link_ended(&self, link: u64) {
        Replica::presence_link_ended(self, link);
    }
}

#[derive(Debug, Clone)]
struct Position {
    epoch: String,
    offset: u64,
}

/// One edge's subscriptions and delivered positions. Pure: it turns inputs
/// into the messages to send, so it is tested without a stream.
pub struct Session<H> {
    source: H,
    positions: HashMap<String, Position>,
    /// Channels whose gap fill could not read history; retried.
    unfilled: BTreeSet<String>,
    /// Channels subscribed with more backlog than one answer holds.
    behind: BTreeSet<String>,
}

impl<H: HistorySource> Session<H> {
    /// A session with no subscriptions.
    pub fn new(source: H) -> Self {
        Self {
            source,
            positions: HashMap::new(),
            unfilled: BTreeSet::new(),
            behind: BTreeSet::new(),
        }
    }

    /// Subscribe (or re-subscribe) a channel.
    pub async fn subscribe(&mut self, s: LinkSubscribe) -> NodeMessage {
        let limit = match s.recover_limit {
            0 => self.source.max_limit(),
            n => n.min(self.source.max_limit()),
        };
        let since = s.since.map(|p| Since {
            offset: Offset(p.offset),
            epoch: Epoch(p.epoch),
        });
        // Without a position, only the current one is needed.
        let limit = if since.is_some() { limit } else { 1 };
        let page = match self.source.read(&s.channel, since.clone(), limit).await {
            Ok(p) => p,
            Err(r) => {
                return message(NodeMsg::Error(LinkError {
                    channel: s.channel,
                    reason: r.reason().to_string(),
                    message: r.to_string(),
                }));
            }
        };
        let epoch = page.epoch.clone();
        let (recovered, publications, offset) = match since {
            None => (false, vec![], page.offset),
            Some(since) => {
                let last = page.publications.last().map(|p| p.offset);
                let backlog = page.offset.saturating_sub(since.offset.0);
                match last {
                    _ if !page.in_window => (false, vec![], page.offset),
                    None => (true, vec![], page.offset),
                    Some(last) if last == page.offset => (true, page.publications, last),
                    // Cut by bytes, not by count: the rest follows as
                    // publications ([`Session::catch_up`]).
                    Some(last) if backlog <= u64::from(limit) => {
                        self.behind.insert(s.channel.clone());
                        (true, page.publications, last)
                    }
                    Some(_) => (false, vec![], page.offset),
                }
            }
        };
        self.unfilled.remove(&s.channel);
        self.positions.insert(
            s.channel.clone(),
            Position {
                epoch: epoch.clone(),
                offset,
            },
        );
        message(NodeMsg::Subscribed(LinkSubscribed {
            channel: s.channel,
            epoch,
            offset,
            recovered,
            publications,
        }))
    }

    /// Send the rest of every backlog a `subscribed` answer could not hold
    /// (its publications are cut at [`herald_proto::limits::PAGE_BYTES`]), as publications right
    /// after it.
    pub async fn catch_up(&mut self, out: &mut Vec<NodeMessage>) {
        for channel in std::mem::take(&mut self.behind) {
            self.fill(&channel, out).await;
        }
    }

    /// Stop forwarding a channel; false if it was not subscribed.
    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        self.unfilled.remove(channel);
        self.positions.remove(channel).is_some()
    }

    /// Whether a channel is subscribed.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.positions.contains_key(channel)
    }

    /// Every subscribed channel.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.positions.keys().map(String::as_str)
    }

    /// Forward what this edge wants of one applied batch.
    pub async fn deliver(&mut self, batch: &[Publication], out: &mut Vec<NodeMessage>) {
        for p in batch {
            let Some(pos) = self.positions.get_mut(&p.channel) else {
                continue;
            };
            if p.offset == 0 {
                // Ephemeral: no position to keep, nothing to fill.
                out.push(message(NodeMsg::Publication(p.clone())));
                continue;
            }
            if pos.epoch.is_empty() && pos.offset == 0 {
                // Subscribed before the channel's first publication.
                pos.epoch = p.epoch.clone();
            }
            if p.epoch == pos.epoch && p.offset <= pos.offset {
                continue;
            }
            if p.epoch == pos.epoch && p.offset == pos.offset + 1 {
                self.positions.insert(
                    p.channel.clone(),
                    Position {
                        epoch: p.epoch.clone(),
                        offset: p.offset,
                    },
                );
                out.push(message(NodeMsg::Publication(p.clone())));
            } else {
                // A gap (or a new epoch): fill from history, which by now
                // holds this publication too.
                self.fill(&p.channel.clone(), out).await;
            }
        }
    }

    /// Bring every channel up to date from history (after this stream
    /// lagged behind the apply loop).
    pub async fn resync(&mut self, out: &mut Vec<NodeMessage>) {
        let channels: Vec<String> = self.positions.keys().cloned().collect();
        for c in channels {
            self.fill(&c, out).await;
        }
    }

    /// Whether some gap fill is waiting for history to answer.
    pub fn has_unfilled(&self) -> bool {
        !self.unfilled.is_empty()
    }

    /// Retry the gap fills whose history read failed.
    pub async fn retry_unfilled(&mut self, out: &mut Vec<NodeMessage>) {
        let channels: Vec<String> = self.unfilled.iter().cloned().collect();
        for c in channels {
            self.fill(&c, out).await;
        }
    }

    async fn fill(&mut self, channel: &str, out: &mut Vec<NodeMessage>) {
        metrics::counter!("herald_edge_link_gap_fills_total").increment(1);
        while let Some(pos) = self.positions.get(channel).cloned() {
            let since = Since {
                offset: Offset(pos.offset),
                epoch: Epoch(pos.epoch),
            };
            let read = self
                .source
                .read(channel, Some(since), self.source.max_limit())
                .await;
            let Ok(page) = read else {
                self.unfilled.insert(channel.to_string());
                return;
            };
            self.unfilled.remove(channel);
            let epoch = page.epoch.clone();
            if !page.in_window {
                // Lost for good: say so, and continue from the current position.
                let current = Position {
                    epoch: epoch.clone(),
                    offset: page.offset,
                };
                self.positions.insert(channel.to_string(), current);
                out.push(message(NodeMsg::Subscribed(LinkSubscribed {
                    channel: channel.to_string(),
                    epoch,
                    offset: page.offset,
                    recovered: false,
                    publications: vec![],
                })));
                return;
            }
            let Some(last) = page.publications.last().map(|p| p.offset) else {
                return;
            };
            for p in page.publications {
                out.push(message(NodeMsg::Publication(p)));
            }
            self.positions.insert(
                channel.to_string(),
                Position {
                    epoch,
                    offset: last,
                },
            );
            if last >= page.offset {
                return;
            }
        }
    }
}

fn message(m: NodeMsg) -> NodeMessage {
    NodeMessage { msg: Some(m) }
}

/// Serves `herald.v1.EdgeLink` from a replica or a fan-out node.
pub struct EdgeLinkService<B> {
    backend: Arc<B>,
    interest: Option<Interest>,
    stop: watch::Receiver<bool>,
}

impl<B: LinkBackend> EdgeLinkService<B> {
    /// Serve this backend; with `interest`, channels edges subscribe to are
    /// registered so the leader pushes them here over QUIC. Every link
    /// ends once `stop` turns true.
    pub fn new(backend: Arc<B>, interest: Option<Interest>, stop: watch::Receiver<bool>) -> Self {
        Self {
            backend,
            interest,
            stop,
        }
    }
}

#[tonic::async_trait]
impl<B: LinkBackend> EdgeLink for EdgeLinkService<B> {
    type LinkStream = ReceiverStream<Result<NodeMessage, Status>>;

    async fn link(
        &self,
        req: Request<Streaming<EdgeMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND);
        // Listen before the first history read, so nothing applied in between
        // is missed (duplicates are dropped by position).
        let delivery = self.backend.subscribe_delivery();
        tokio::spawn(run_session(
            self.backend.clone(),
            self.interest.clone(),
            inbound,
            delivery,
            tx,
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn run_session<B: LinkBackend>(
    backend: Arc<B>,
    interest: Option<Interest>,
    mut inbound: Streaming<EdgeMessage>,
    mut delivery: broadcast::Receiver<Arc<Vec<Publication>>>,
    tx: mpsc::Sender<Result<NodeMessage, Status>>,
    mut stop: watch::Receiver<bool>,
) {
    metrics::gauge!("herald_edge_links").increment(1.0);
    let mut readiness = tokio::time::interval(READINESS_CHECK);
    let mut unready_since: Option<tokio::time::Instant> = None;
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let mut session = Session::new(backend.clone());
    let link = backend.new_presence_link();
    let mut retry = tokio::time::interval(RETRY_FILLS);
    let mut out = Vec::new();
    'session: loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(EdgeMessage { msg: Some(EdgeMsg::Subscribe(s)) })) => {
                    let new = !session.is_subscribed(&s.channel);
                    let answer = session.subscribe(s).await;
                    if let (true, Some(i), Some(NodeMsg::Subscribed(ok))) = (new, &interest, &answer.msg) {
                        i.add(&ok.channel);
                    }
                    out.push(answer);
                    session.catch_up(&mut out).await;
                }
                Ok(Some(EdgeMessage { msg: Some(EdgeMsg::Unsubscribe(u)) })) => {
                    if session.unsubscribe(&u.channel)
                        && let Some(i) = &interest
                    {
                        i.remove(&u.channel);
                    }
                }
                Ok(Some(EdgeMessage { msg: Some(EdgeMsg::Presence(u)) })) => {
                    backend.presence_update(link, u);
                }
                Ok(Some(EdgeMessage { msg: None })) => {}
                Ok(None) | Err(_) => break 'session,
            },
            batch = delivery.recv() => match batch {
                Ok(batch) => session.deliver(&batch, &mut out).await,
                Err(broadcast::error::RecvError::Lagged(_)) => session.resync(&mut out).await,
                Err(broadcast::error::RecvError::Closed) => break 'session,
            },
            _ = retry.tick(), if session.has_unfilled() => session.retry_unfilled(&mut out).await,
            () = &mut stopping => {
                let _ = tx.send(Err(Status::unavailable("node shutting down"))).await;
                break 'session;
            }
            _ = readiness.tick() => match backend.readiness() {
                Ok(()) => unready_since = None,
                Err(why) => {
                    let since = *unready_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= UNREADY_LIMIT {
                        metrics::counter!("herald_edge_links_shed_total").increment(1);
                        let msg = format!("node unready for {UNREADY_LIMIT:?}: {why}");
                        let _ = tx.send(Err(Status::unavailable(msg))).await;
                        break 'session;
                    }
                }
            },
        }
        for m in out.drain(..) {
            if tx.send(Ok(m)).await.is_err() {
                break 'session;
            }
        }
    }
    if let Some(i) = &interest {
        for c in session.channels() {
            i.remove(c);
        }
    }
    backend.presence_link_ended(link);
    metrics::gauge!("herald_edge_links").decrement(1.0);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use bytes::Bytes;
    use herald_proto::v1::StreamPosition;

    use super::*;
    use crate::channels::{ChannelTable, NewPublication, Proposal};

    /// History straight from a channel table, as the node reads it.
    #[derive(Default)]
    struct Table(Mutex<ChannelTable>, Mutex<i64>);

    impl Table {
        /// Publish `n` to `channel`; returns what the apply loop would broadcast.
        fn publish(&self, channel: &str, n: usize) -> Vec<Publication> {
            let mut at = self.1.lock().unwrap();
            *at += 1;
            let items: Vec<NewPublication> = (0..n)
                .map(|_| NewPublication {
                    channel: channel.into(),
                    event_type: String::new(),
                    data: Bytes::from_static(b"{}"),
                    content_type: "application/json".into(),
                    idempotency_key: String::new(),
                    headers: BTreeMap::new(),
                    history_size: 5,
                    history_ttl_ms: 0,
                })
                .collect();
            let accepted = self.0.lock().unwrap().apply(&Proposal {
                published_at_ms: *at,
                nonce: 7,
                idempotency_window_ms: 0,
                items,
            });
            accepted
                .into_iter()
                .map(|a| Publication {
                    channel: a.channel,
                    offset: a.offset.0,
                    epoch: a.epoch.0,
                    ..Default::default()
                })
                .collect()
        }
    }

    impl HistorySource for Table {
        async fn read(
            &self,
            channel: &str,
            since: Option<Since>,
            limit: u32,
        ) -> Result<HistoryResponse, Rejection> {
            let page = self.0.lock().unwrap().history(
                channel,
                since.as_ref(),
                limit as usize,
                false,
                0,
                0,
            );
            Ok(crate::grpc::page_to_wire(channel, page))
        }
        fn max_limit(&self) -> u32 {
            100
        }
    }

    /// History that fails while `down`, as a voter out of reach does for a
    /// fan-out node.
    #[derive(Default)]
    struct Flaky {
        table: Table,
        down: std::sync::atomic::AtomicBool,
    }

    impl HistorySource for Flaky {
        async fn read(
            &self,
            channel: &str,
            since: Option<Since>,
            limit: u32,
        ) -> Result<HistoryResponse, Rejection> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Rejection::NoLeader);
            }
            self.table.read(channel, since, limit).await
        }
        fn max_limit(&self) -> u32 {
            100
        }
    }

    /// History whose pages hold at most 2 publications, as a node's pages
    /// cut by bytes do for large publications.
    struct Cut(Table);

    impl HistorySource for Cut {
        async fn read(
            &self,
            channel: &str,
            since: Option<Since>,
            limit: u32,
        ) -> Result<HistoryResponse, Rejection> {
            let mut page = self.0.read(channel, since, limit).await?;
            page.publications.truncate(2);
            Ok(page)
        }
        fn max_limit(&self) -> u32 {
            100
        }
    }

    #[tokio::test]
    async fn a_backlog_larger_than_one_answer_follows_it_in_order() {
        let t = Cut(Table::default());
        let epoch = t.0.publish("a", 5)[0].epoch.clone();
        let mut s = Session::new(&t);
        let answer = subscribed(s.subscribe(sub("a", Some((0, &epoch)))).await);
        assert!(answer.recovered);
        assert_eq!(answer.offset, 2, "the position after what it holds");
        let held: Vec<u64> = answer.publications.iter().map(|p| p.offset).collect();
        assert_eq!(held, vec![1, 2]);
        let mut out = vec![];
        s.catch_up(&mut out).await;
        assert_eq!(offsets(&out), vec![3, 4, 5]);
        s.deliver(&t.0.publish("a", 1), &mut out).await;
        assert_eq!(offsets(&out), vec![3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_fill_that_cannot_read_history_is_retried() {
        use std::sync::atomic::Ordering::Relaxed;
        let f = Flaky::default();
        f.table.publish("a", 1);
        let mut s = Session::new(&f);
        subscribed(s.subscribe(sub("a", None)).await);
        f.down.store(true, Relaxed);
        // Offset 2 never arrives; 3 does, while history is out of reach.
        f.table.publish("a", 1);
        let mut out = vec![];
        s.deliver(&f.table.publish("a", 1), &mut out).await;
        assert!(offsets(&out).is_empty(), "nothing may jump the gap");
        assert!(s.has_unfilled());
        s.retry_unfilled(&mut out).await;
        assert!(s.has_unfilled(), "still out of reach");
        f.down.store(false, Relaxed);
        s.retry_unfilled(&mut out).await;
        assert_eq!(offsets(&out), vec![2, 3]);
        assert!(!s.has_unfilled());
    }

    fn offsets(out: &[NodeMessage]) -> Vec<u64> {
        out.iter()
            .filter_map(|m| match &m.msg {
                Some(NodeMsg::Publication(p)) => Some(p.offset),
                _ => None,
            })
            .collect()
    }

    fn subscribed(m: NodeMessage) -> LinkSubscribed {
        match m.msg {
            Some(NodeMsg::Subscribed(s)) => s,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    fn sub(channel: &str, since: Option<(u64, &str)>) -> LinkSubscribe {
        LinkSubscribe {
            channel: channel.into(),
            since: since.map(|(offset, epoch)| StreamPosition {
                offset,
                epoch: epoch.into(),
            }),
            recover_limit: 0,
        }
    }

    #[tokio::test]
    async fn live_publications_once_in_order_with_gaps_filled() {
        let t = Table::default();
        t.publish("a", 2);
        let mut s = Session::new(&t);
        let ack = subscribed(s.subscribe(sub("a", None)).await);
        assert_eq!(ack.offset, 2);
        assert!(!ack.recovered);
        let mut out = vec![];
        let b1 = t.publish("a", 1);
        s.deliver(&b1, &mut out).await;
        // The same batch again (a re-delivery) is dropped.
        s.deliver(&b1, &mut out).await;
        assert_eq!(offsets(&out), vec![3]);
        // Offsets 4 and 5 never reached this session (it lagged); 6 arrives.
        t.publish("a", 2);
        let b3 = t.publish("a", 1);
        s.deliver(&b3, &mut out).await;
        assert_eq!(offsets(&out), vec![3, 4, 5, 6]);
        // Channels not subscribed are not forwarded.
        let other = t.publish("b", 1);
        s.deliver(&other, &mut out).await;
        assert_eq!(offsets(&out), vec![3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_channel_subscribed_before_its_first_publication() {
        let t = Table::default();
        let mut s = Session::new(&t);
        let ack = subscribed(s.subscribe(sub("new", None)).await);
        assert_eq!((ack.epoch.as_str(), ack.offset), ("", 0));
        let mut out = vec![];
        s.deliver(&t.publish("new", 1), &mut out).await;
        assert_eq!(offsets(&out), vec![1]);
        // A gap right at the start is filled from history too.
        let mut s = Session::new(&t);
        subscribed(s.subscribe(sub("newer", None)).await);
        t.publish("newer", 2);
        let mut out = vec![];
        s.deliver(&t.publish("newer", 1), &mut out).await;
        assert_eq!(offsets(&out), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn recovery_inside_and_outside_the_window() {
        let t = Table::default();
        t.publish("a", 3);
        let mut s = Session::new(&t);
        let epoch = subscribed(s.subscribe(sub("a", None)).await).epoch;
        let ok = subscribed(s.subscribe(sub("a", Some((1, &epoch)))).await);
        assert!(ok.recovered);
        assert_eq!(
            ok.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![2, 3]
        );
        t.publish("a", 10);
        // History keeps 5: offsets 9..=13; a client at 2 cannot be recovered.
        let lost = subscribed(s.subscribe(sub("a", Some((2, &epoch)))).await);
        assert!(!lost.recovered);
        assert_eq!(lost.offset, 13);
        assert!(lost.publications.is_empty());
        let wrong_epoch = subscribed(s.subscribe(sub("a", Some((12, "nope")))).await);
        assert!(!wrong_epoch.recovered);
    }

    #[tokio::test]
    async fn resync_after_lag_and_unfillable_gap_is_reported() {
        let t = Table::default();
        t.publish("a", 1);
        let mut s = Session::new(&t);
        subscribed(s.subscribe(sub("a", None)).await);
        t.publish("a", 3);
        let mut out = vec![];
        s.resync(&mut out).await;
        assert_eq!(offsets(&out), vec![2, 3, 4]);
        // Ten more while this session was not reading: history holds only 5.
        t.publish("a", 10);
        let mut out = vec![];
        s.resync(&mut out).await;
        let lost = subscribed(out.remove(0));
        assert!(!lost.recovered);
        assert_eq!(lost.offset, 14);
    }
}
