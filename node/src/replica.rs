//! One node's replica of the cluster: Raft, the applied channel state, the
//! policy, and the operations the gRPC services expose (publish, read,
//! membership, status). Services stay thin; this is where a request meets
//! Raft.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_proto::v1::Publication;
use openraft::error::RaftError;
use openraft::{RaftMetrics, ServerState};
use tokio::sync::{broadcast, watch};

use crate::channels::{Accepted, Channel, HistoryPage, NewPublication, Since};
use crate::grpc::outbound::Outbound;
use crate::namespace::Namespaces;
use crate::proposer::{ProposeError, Proposer};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::{Applied, StateMachine};
use crate::raft::{NodeInfo, Raft};
use crate::rejection::Rejection;

/// Where a publish ended up.
pub enum PublishOutcome {
    /// Committed and applied here.
    Done(Vec<Accepted>),
    /// This node is not the leader; forward to this one.
    Forward(u64, NodeInfo),
}

/// The node's replica handle; shared by every service.
pub struct Replica {
    /// This node's id.
    pub id: u64,
    /// The Raft handle.
    pub raft: Raft,
    /// Channel policy.
    pub namespaces: Namespaces,
    /// Calls to other nodes.
    pub outbound: Outbound,
    state: Arc<RwLock<Applied>>,
    applied: watch::Receiver<u64>,
    committed: Arc<AtomicU64>,
    log: LogStore,
    proposer: Proposer,
    stepping_down: AtomicBool,
    election_timeout: Duration,
    commit_timeout: Duration,
    published: broadcast::Sender<Arc<Vec<Publication>>>,
    delivery: broadcast::Sender<Arc<Vec<Publication>>>,
    plane: std::sync::OnceLock<Arc<crate::peer::PeerPlane>>,
    /// Presence reported by this node's edges (in memory, not Raft).
    pub presence: crate::presence::Presence,
    presence_forwarder: crate::presence::Forwarder,
    joining: std::sync::Mutex<String>,
}

/// Batches of publications an edge link may fall behind by before it
/// catches up from history.
const DELIVERY_BACKLOG: usize = 4096;

/// A snapshot of Raft's view, for status and health.
pub type Metrics = RaftMetrics<u64, NodeInfo>;

impl Replica {
    /// Assemble the replica.
    pub fn new(
        id: u64,
        raft: Raft,
        namespaces: Namespaces,
        outbound: Outbound,
        sm: &StateMachine,
        log: LogStore,
        election_timeout: Duration,
    ) -> Self {
        let committed = log.committed_index();
        let (state, applied, published) = (sm.state(), sm.applied_index(), sm.published());
        // What edge links read: everything applied here, plus what peers push
        // over QUIC (often earlier); links drop duplicates by offset.
        let (delivery, _) = broadcast::channel(DELIVERY_BACKLOG);
        let mut from_apply = published.subscribe();
        let to_links = delivery.clone();
        tokio::spawn(async move {
            loop {
                match from_apply.recv().await {
                    Ok(b) => {
                        let _ = to_links.send(b);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let window_ms = namespaces.limits.idempotency_window_secs * 1000;
        let proposer = Proposer::spawn(raft.clone(), window_ms, sm.log_clock());
        Self {
            id,
            raft,
            namespaces,
            outbound,
            state,
            applied,
            committed,
            log,
            proposer,
            stepping_down: AtomicBool::new(false),
            election_timeout,
            commit_timeout: election_timeout * 10,
            published,
            delivery,
            plane: std::sync::OnceLock::new(),
            presence: crate::presence::Presence::default(),
            presence_forwarder: crate::presence::Forwarder::default(),
            joining: std::sync::Mutex::default(),
        }
    }

    /// Listen to every publication this node applies from now on.
    pub fn subscribe_published(&self) -> broadcast::Receiver<Arc<Vec<Publication>>> {
        self.published.subscribe()
    }

    /// What edge links deliver from: applied here or received from peers.
    pub fn subscribe_delivery(&self) -> broadcast::Receiver<Arc<Vec<Publication>>> {
        self.delivery.subscribe()
    }

    /// Where the delivery plane puts what it receives.
    pub fn delivery_sender(&self) -> broadcast::Sender<Arc<Vec<Publication>>> {
        self.delivery.clone()
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Read the replicated channel membership.
    pub fn with_delivery<T>(
        &self,
        f: impl FnOnce(&crate::membership::ChannelMembership) -> T,
    ) -> T {
        f(&self.state.read().expect("state lock poisoned").delivery)
    }

    /// Commit an internal command (node registry, channel interest) through
    /// the leader, wherever it is.
    pub async fn submit(&self, cmd: crate::raft::Command) -> Result<(), Rejection> {
        self.refuse_on_failed_storage()?;
        match self.leader() {
            None => Err(Rejection::NoLeader),
            Some((id, _)) if id == self.id => match self.raft.client_write(cmd).await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(_)) => Err(Rejection::NoLeader),
                Err(RaftError::Fatal(f)) => Err(Rejection::RaftFatal(f.to_string())),
            },
            Some((id, node)) => {
                let mut client = self
                    .outbound
                    .raft(&node.grpc_addr)
                    .map_err(Rejection::LeaderUnreachable)?;
                let payload = herald_proto::v1::RaftPayload {
                    data: crate::raft::encode(&cmd).into(),
                };
                client.submit(payload).await.map(|_| ()).map_err(|s| {
                    Rejection::LeaderUnreachable(format!("node {id}: {}", s.message()))
                })
            }
        }
    }

    /// Raft's current metrics.
    pub fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// The leader and its address, if one is known.
    pub fn leader(&self) -> Option<(u64, NodeInfo)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Highest committed log index this node knows.
    pub fn committed_index(&self) -> u64 {
        // Only applied entries are ever committed: after a restart the stored
        // commit index may lag what the snapshot and log replay applied.
        self.committed
            .load(Ordering::Relaxed)
            .max(self.applied_index())
    }

    /// Entries in the local log.
    pub fn log_entries(&self) -> u64 {
        self.log.len()
    }

    /// Last applied log index.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The disk under this node's log and state.
    pub fn log_disk(&self) -> &crate::disk::DiskHealth {
        self.log.disk()
    }

    /// Why this node must acknowledge nothing, if its disk failed.
    pub fn storage_failure(&self) -> Option<Rejection> {
        let failure = self.log.disk().failure()?;
        Some(Rejection::StorageFailed(failure.to_string()))
    }

    fn refuse_on_failed_storage(&self) -> Result<(), Rejection> {
        self.storage_failure().map_or(Ok(()), Err)
    }

    /// Ready: a leader is known and everything known committed is applied.
    pub fn is_ready(&self) -> bool {
        let m = self.metrics();
        self.storage_failure().is_none()
            && m.current_leader.is_some()
            && m.running_state.is_ok()
            && !self.leader_without_quorum(&m)
            && self.applied_index() >= self.committed_index()
            && !self.stepping_down.load(Ordering::Relaxed)
    }

    /// True on a leader that has not heard from a majority for longer than
    /// the lease: it keeps its role (openraft does) but cannot commit.
    fn leader_without_quorum(&self, m: &Metrics) -> bool {
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_none_or(|ms| u128::from(ms) > self.election_timeout.as_millis() * 2)
    }

    /// Validate one publication against the policy, ready for Raft.
    pub fn prepare(
        &self,
        channel: String,
        event_type: String,
        data: bytes::Bytes,
        content_type: String,
        idempotency_key: String,
        headers: BTreeMap<String, String>,
    ) -> Result<NewPublication, Rejection> {
        let content_type = if content_type.is_empty() {
            "application/json".to_string()
        } else {
            content_type
        };
        let ns = self.namespaces.check_publish(
            &channel,
            &event_type,
            &content_type,
            &data,
            &idempotency_key,
            &headers,
        )?;
        // Stored compact, so no client frame built from it can be split by
        // a line break between its tokens (`docs/protocol.md`, Payloads).
        let data = if crate::namespace::is_json(&content_type)
            && serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok()
        {
            match herald_proto::payload::compact_json(&data) {
                std::borrow::Cow::Borrowed(_) => data,
                std::borrow::Cow::Owned(c) => bytes::Bytes::from(c),
            }
        } else {
            data
        };
        Ok(NewPublication {
            channel,
            event_type,
            data,
            content_type,
            idempotency_key,
            headers,
            history_size: ns.config.history_size,
            history_ttl_ms: ns.config.history_ttl_secs.saturating_mul(1000),
        })
    }

    /// Use this QUIC plane for ephemeral publications.
    pub fn attach_plane(&self, plane: Arc<crate::peer::PeerPlane>) {
        let _ = self.plane.set(plane);
    }

    /// Deliver publications of ephemeral namespaces (history size 0) without
    /// Raft: to this node's edge links and, over QUIC, to every node with
    /// interest. At most once; ordered per publisher (one node sends a
    /// channel's publications on one stream per peer). `None` when the batch
    /// is not ephemeral or there is no QUIC plane (then Raft carries it).
    fn publish_ephemeral(
        &self,
        items: &[NewPublication],
    ) -> Option<Result<Vec<Accepted>, Rejection>> {
        let plane = self.plane.get()?;
        let ephemeral = items.iter().filter(|i| i.history_size == 0).count();
        if ephemeral == 0 {
            return None;
        }
        if ephemeral != items.len() {
            return Some(Err(Rejection::MixedEphemeral));
        }
        let now = now_ms();
        let pubs: Vec<Publication> = items
            .iter()
            .map(|i| Publication {
                channel: i.channel.clone(),
                offset: 0,
                epoch: String::new(),
                event_type: i.event_type.clone(),
                data: i.data.clone(),
                content_type: i.content_type.clone(),
                idempotency_key: i.idempotency_key.clone(),
                headers: i
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                published_at_ms: now,
            })
            .collect();
        self.with_delivery(|d| {
            for p in &pubs {
                let frame = crate::peer::frame(p);
                for node in d.members(&p.channel).filter(|n| *n != self.id) {
                    if let Some(addr) = d.quic_addr(node) {
                        plane.send(node, addr, &p.channel, frame.clone());
                    }
                }
            }
        });
        metrics::counter!("herald_publications_ephemeral_total").increment(pubs.len() as u64);
        let accepted = pubs
            .iter()
            .map(|p| Accepted {
                channel: p.channel.clone(),
                offset: crate::channels::Offset(0),
                epoch: crate::channels::Epoch::default(),
                published_at_ms: now,
                duplicate: false,
            })
            .collect();
        let _ = self.delivery.send(Arc::new(pubs));
        Some(Ok(accepted))
    }

    /// Hand presence join/leave events (offset 0) to this node's edge links
    /// and to the other nodes: over QUIC, when there is a plane, to every
    /// node with interest in their channel; else over gRPC to every Raft
    /// member. At most once, like ephemeral publications.
    pub fn deliver_presence(&self, events: Vec<Publication>) {
        self.spread_presence(events, None);
    }

    /// Join/leave events of a fan-out node's clients, which it cannot push
    /// itself (it does not hold the interest table): to this node's edge
    /// links and every node with interest except `origin`.
    pub fn relay_presence(&self, events: Vec<Publication>, origin: u64) {
        let events: Vec<Publication> = events
            .into_iter()
            .filter(crate::presence::is_event)
            .collect();
        self.spread_presence(events, Some(origin));
    }

    fn spread_presence(&self, events: Vec<Publication>, origin: Option<u64>) {
        if events.is_empty() {
            return;
        }
        if self.plane.get().is_none() {
            let m = self.metrics();
            for (id, node) in m.membership_config.membership().nodes() {
                if *id != self.id {
                    self.presence_forwarder
                        .send(&self.outbound, &node.grpc_addr, events.clone());
                }
            }
        }
        if let Some(plane) = self.plane.get() {
            self.with_delivery(|d| {
                for p in &events {
                    let frame = crate::peer::frame(p);
                    let others = d
                        .members(&p.channel)
                        .filter(|n| *n != self.id && Some(*n) != origin);
                    for node in others {
                        if let Some(addr) = d.quic_addr(node) {
                            plane.send(node, addr, &p.channel, frame.clone());
                        }
                    }
                }
            });
        }
        metrics::counter!("herald_presence_events_total").increment(events.len() as u64);
        let _ = self.delivery.send(Arc::new(events));
    }

    /// Join/leave events another node forwarded: to this node's edge links.
    pub fn presence_events(&self, events: Vec<Publication>) {
        let events: Vec<Publication> = events
            .into_iter()
            .filter(crate::presence::is_event)
            .collect();
        if !events.is_empty() {
            let _ = self.delivery.send(Arc::new(events));
        }
    }

    /// Apply an edge's presence update (ignored unless the channel's
    /// namespace has presence on) and deliver the resulting join/leave
    /// events.
    pub fn presence_update(&self, link: u64, u: herald_proto::v1::PresenceUpdate) {
        if !self
            .namespaces
            .resolve(&u.channel)
            .is_ok_and(|ns| ns.config.presence)
        {
            return;
        }
        let changes = self.presence.apply(link, u);
        self.deliver_presence(crate::presence::events(&changes, now_ms()));
    }

    /// An edge link ended: its clients leave.
    pub fn presence_link_ended(&self, link: u64) {
        let changes = self.presence.drop_link(link);
        self.deliver_presence(crate::presence::events(&changes, now_ms()));
    }

    /// Commit publications as one unit, or say where the leader is.
    pub async fn publish(&self, items: Vec<NewPublication>) -> Result<PublishOutcome, Rejection> {
        // A node whose disk failed is out of the cluster until restarted:
        // it neither commits nor forwards, so publishers move on at once.
        self.refuse_on_failed_storage()?;
        if let Some(result) = self.publish_ephemeral(&items) {
            return result.map(PublishOutcome::Done);
        }
        if self.stepping_down.load(Ordering::Relaxed) {
            return Err(Rejection::SteppingDown);
        }
        match self.leader() {
            None => return Err(Rejection::NoLeader),
            Some((id, node)) if id != self.id => return Ok(PublishOutcome::Forward(id, node)),
            Some(_) if self.leader_without_quorum(&self.metrics()) => {
                return Err(Rejection::NoQuorum);
            }
            Some(_) => {}
        }
        // Leadership can move after the entry was appended; the new leader
        // may still commit it. Re-sending it elsewhere is then only safe when
        // every item carries an idempotency key; otherwise the caller decides.
        let keyed = items.iter().all(|i| !i.idempotency_key.is_empty());
        let proposed =
            tokio::time::timeout(self.commit_timeout, self.proposer.propose(items)).await;
        let Ok(proposed) = proposed else {
            return Err(Rejection::CommitTimeout);
        };
        // The disk may have failed while this was proposed: whatever Raft
        // answered (the other voters may have committed it without this
        // node's disk), it is not acknowledged here.
        self.refuse_on_failed_storage()?;
        match proposed {
            Ok(accepted) => Ok(PublishOutcome::Done(accepted)),
            Err(ProposeError::NotLeader(Some((id, node)))) if id != self.id && keyed => {
                Ok(PublishOutcome::Forward(id, node))
            }
            Err(ProposeError::NotLeader(_)) => Err(Rejection::NoLeader),
            Err(ProposeError::Stopped(e)) => Err(Rejection::RaftFatal(e)),
        }
    }

    /// Make sure local reads reflect every write acknowledged before the
    /// call: leader only.
    pub async fn read_barrier(&self) -> Result<(), Rejection> {
        self.refuse_on_failed_storage()?;
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(_)) => Err(Rejection::NoLeader),
            Err(RaftError::Fatal(f)) => Err(Rejection::RaftFatal(f.to_string())),
        }
    }

    /// Read a channel's history from the applied state.
    pub fn history(
        &self,
        channel: &str,
        since: Option<&Since>,
        limit: u32,
        reverse: bool,
    ) -> Result<HistoryPage, Rejection> {
        let ns = self.namespaces.resolve(channel)?;
        let max = self.namespaces.limits.max_history_limit;
        let limit = if limit == 0 || limit > max {
            max
        } else {
            limit
        };
        let ttl_ms = ns.config.history_ttl_secs.saturating_mul(1000);
        let mut page = {
            let state = self.state.read().expect("state lock poisoned");
            state
                .channels
                .history(channel, since, limit as usize, reverse, ttl_ms, now_ms())
        };
        page.fit(
            herald_proto::limits::PAGE_BYTES,
            since.is_none() && !reverse,
        );
        Ok(page)
    }

    /// Run `f` over every channel whose name matches the glob.
    pub fn channels<T>(&self, pattern: &str, mut f: impl FnMut(&str, &Channel) -> T) -> Vec<T> {
        let state = self.state.read().expect("state lock poisoned");
        state
            .channels
            .iter()
            .filter(|(name, _)| glob(pattern, name))
            .map(|(n, c)| f(n, c))
            .collect()
    }

    /// Run `f` over one channel.
    pub fn channel<T>(&self, name: &str, f: impl FnOnce(&Channel) -> T) -> Option<T> {
        let state = self.state.read().expect("state lock poisoned");
        state.channels.get(name).map(f)
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.state
            .read()
            .expect("state lock poisoned")
            .channels
            .len()
    }

    /// Add a node: as a learner that catches up, then (if `voter`) a voter;
    /// or replace a member that lost its disk ([`crate::members::add`]).
    /// Leader only.
    pub async fn add_node(
        &self,
        id: u64,
        grpc_addr: String,
        voter: bool,
        incarnation: u64,
    ) -> Result<(), Rejection> {
        if let Some(addr) = self.with_delivery(|d| d.fanout_addr(id).map(String::from)) {
            return Err(Rejection::Membership(format!(
                "node {id} is a fan-out node at {addr}; remove it first"
            )));
        }
        crate::members::add(
            &self.raft,
            &self.outbound,
            id,
            grpc_addr,
            voter,
            incarnation,
        )
        .await
    }

    /// Register a fan-out node (it receives only what its edges subscribe
    /// to, outside Raft). Leader only.
    pub async fn add_fanout(&self, id: u64, grpc_addr: String) -> Result<(), Rejection> {
        if id == 0 {
            return Err(Rejection::Membership(
                "node id must be greater than 0".into(),
            ));
        }
        if let Some(node) = self.metrics().membership_config.membership().get_node(&id) {
            return Err(Rejection::Membership(format!(
                "node {id} is a Raft member at {}; remove it first",
                node.grpc_addr
            )));
        }
        self.submit(crate::raft::Command::RegisterFanout {
            id,
            grpc_addr,
            started: None,
        })
        .await
    }

    /// Registered fan-out nodes and their gRPC addresses.
    pub fn fanout_nodes(&self) -> Vec<(u64, String)> {
        self.with_delivery(|d| {
            d.fanout_nodes()
                .map(|(id, a)| (id, a.to_string()))
                .collect()
        })
    }

    /// Remove a node from the cluster entirely (a Raft member, or a fan-out
    /// node's registration and interest). Leader only.
    pub async fn remove_node(&self, id: u64) -> Result<(), Rejection> {
        let member = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if !member && self.with_delivery(|d| d.fanout_addr(id).is_some()) {
            return self.submit(crate::raft::Command::ForgetFanout { id }).await;
        }
        crate::members::remove(&self.raft, id).await
    }

    /// Voter and learner ids.
    pub fn members(&self) -> (Vec<u64>, Vec<u64>) {
        crate::members::ids(&self.raft)
    }

    /// This node's incarnation ([`LogStore::incarnation`]).
    pub fn incarnation(&self) -> u64 {
        self.log.incarnation()
    }

    /// Why this node is not yet part of a running cluster (start-up sets
    /// it while it waits for its peers; empty once it belongs).
    pub fn joining(&self) -> String {
        self.joining.lock().expect("joining lock poisoned").clone()
    }

    /// Record why this node is still waiting to belong to a cluster.
    pub(crate) fn set_joining(&self, why: String) {
        *self.joining.lock().expect("joining lock poisoned") = why;
    }

    /// Hand leadership over before this node stops: refuse new publishes,
    /// wait until every voter holds the whole log (so no acknowledged write
    /// depends on this node), then ask the most caught-up voter to campaign.
    pub async fn step_down(&self, wait: Duration) {
        self.stepping_down.store(true, Ordering::Relaxed);
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut target = None;
        while tokio::time::Instant::now() < deadline {
            let m = self.metrics();
            let last = m.last_log_index.unwrap_or(0);
            let voters: Vec<u64> = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != self.id)
                .collect();
            if let Some(rep) = &m.replication {
                let caught_up: Vec<u64> = voters
                    .iter()
                    .copied()
                    .filter(|v| rep.get(v).and_then(|l| *l).is_some_and(|l| l.index >= last))
                    .collect();
                if !caught_up.is_empty() && caught_up.len() == voters.len() {
                    target = caught_up.first().copied();
                    break;
                }
                if target.is_none() {
                    target = caught_up.first().copied();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(target) = target else { return };
        let Some(node) = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&target)
            .cloned()
        else {
            return;
        };
        if let Ok(mut admin) = self.outbound.admin(&node.grpc_addr) {
            let req = herald_proto::v1::CampaignRequest {
                from_leader: self.id,
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), admin.campaign(req)).await;
        }
        tracing::info!(target, "handed leadership over");
    }

    /// Campaign for leadership once the old leader's lease has lapsed (it
    /// asked us to, because it is stopping): this replaces waiting out a
    /// random election timeout plus a rejected first round. Gives up as soon
    /// as any leader other than the old one is known.
    pub fn campaign(&self, old_leader: u64) {
        let raft = self.raft.clone();
        let lease = self.election_timeout * 2;
        let retry = self.election_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            for _ in 0..10 {
                let m = raft.metrics().borrow().clone();
                if m.state == ServerState::Leader
                    || m.current_leader.is_some_and(|l| l != old_leader)
                {
                    return;
                }
                let _ = raft.trigger().elect().await;
                tokio::time::sleep(retry).await;
            }
        });
    }
}

impl crate::peer::interest::Registry for Replica {
    fn node_id(&self) -> u64 {
        self.id
    }

    fn registered(&self) -> BTreeSet<String> {
        self.with_delivery(|d| d.channels_of(self.id))
    }

    fn submit(
        &self,
        cmd: crate::raft::Command,
    ) -> impl std::future::Future<Output = Result<(), Rejection>> + Send {
        Replica::submit(self, cmd)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Glob match: `*` any run, `?` one character; empty pattern matches all.
pub fn glob(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("", "x"));
        assert!(glob("chat:*", "chat:room"));
        assert!(!glob("chat:*", "news:room"));
        assert!(glob("c?at:*7", "chat:room-7"));
        assert!(glob("*", ""));
        assert!(!glob("a", "ab"));
    }
}
