//! A fan-out node: a node outside Raft (no log, no state machine, no disk)
//! that serves edges. It registers itself in the replicated registry
//! through the leader, receives over QUIC only the channels its edges
//! subscribe to, and asks the voters for everything it does not hold:
//! history for gap fills, publishes, channel and cluster reads.
//!
//! What it must never do: answer a read from its own state (it has none) or
//! re-register after an operator removed it while it runs (removal would
//! not stick).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_proto::v1::{
    ChannelsRequest, ClusterStatusRequest, HistoryRequest, HistoryResponse, PresenceUpdate,
    Publication, RaftPayload, StreamPosition,
};
use tokio::sync::{broadcast, watch};
use tonic::{Code, Status};

use crate::channels::Since;
use crate::grpc::edge_link::{HistorySource, LinkBackend};
use crate::grpc::outbound::{Outbound, PublisherClient};
use crate::namespace::Namespaces;
use crate::peer::interest::{Interest, Registry};
use crate::presence::{Forwarder, Presence};
use crate::raft::Command;
use crate::rejection::Rejection;

/// How often the node asks a voter for the cluster's state.
const VIEW_REFRESH: Duration = Duration::from_millis(500);
/// A voter must have answered within this long for the node to be ready.
const VOTER_SILENCE: Duration = Duration::from_secs(3);
/// How often every subscribed channel's newest offset is compared with what
/// arrived over QUIC (a push lost with no later one to reveal the gap).
const TAIL_CHECK: Duration = Duration::from_secs(1);
/// Batches of publications an edge link may fall behind by before it
/// catches up from history.
const DELIVERY_BACKLOG: usize = 4096;
/// Timeout of one call to a voter.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What the last answering voter said about the cluster.
#[derive(Debug, Default)]
struct View {
    leader: Option<(u64, String)>,
    voters: Vec<String>,
    answered: Option<Instant>,
    /// This node is in the registry as a fan-out node.
    listed: bool,
    /// This id belongs to a Raft member (a configuration mistake).
    member: bool,
}

/// Where the node's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Not committed yet.
    Pending,
    /// Committed; the leader pushes this node's channels to it.
    Registered,
    /// An operator removed it while it ran; it stays out until restarted.
    Removed,
}

/// The fan-out node's handle; shared by every service.
pub struct FanoutNode {
    /// This node's id.
    pub id: u64,
    /// Its advertised gRPC address.
    pub grpc_addr: String,
    /// Channel policy (the same file as the voters').
    pub namespaces: Namespaces,
    /// Calls to voters.
    pub outbound: Outbound,
    /// Presence reported by this node's edges.
    pub presence: Presence,
    presence_relay: Forwarder,
    seeds: Vec<String>,
    view: RwLock<View>,
    delivery: broadcast::Sender<Arc<Vec<Publication>>>,
    registration: watch::Sender<Registration>,
}

impl FanoutNode {
    /// A node that talks to the voters at `seeds` first.
    pub fn new(
        id: u64,
        grpc_addr: String,
        namespaces: Namespaces,
        outbound: Outbound,
        seeds: Vec<String>,
    ) -> Self {
        Self {
            id,
            grpc_addr,
            namespaces,
            outbound,
            presence: Presence::default(),
            presence_relay: Forwarder::relaying_for(id),
            seeds,
            view: RwLock::new(View::default()),
            delivery: broadcast::channel(DELIVERY_BACKLOG).0,
            registration: watch::channel(Registration::Pending).0,
        }
    }

    /// Where the QUIC plane puts what it receives.
    pub fn delivery_sender(&self) -> broadcast::Sender<Arc<Vec<Publication>>> {
        self.delivery.clone()
    }

    /// Where the registration stands.
    pub fn registration(&self) -> Registration {
        *self.registration.borrow()
    }

    /// Resolves once the registration is committed.
    pub fn registered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.registration.subscribe();
        async move {
            let _ = rx.wait_for(|r| *r != Registration::Pending).await;
        }
    }

    /// The leader as last seen, if any.
    pub fn leader(&self) -> Option<(u64, String)> {
        self.view().leader.clone()
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().expect("view lock poisoned")
    }

    /// Voters to ask, best first: the leader, the other voters, the seeds.
    fn voter_addrs(&self) -> Vec<String> {
        let view = self.view();
        let mut out: Vec<String> = Vec::new();
        let all = view
            .leader
            .iter()
            .map(|(_, a)| a)
            .chain(&view.voters)
            .chain(&self.seeds);
        for a in all {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// A read answered by the first voter that answers: the leader when
    /// known, else any other (each forwards what only the leader can do).
    /// Only for calls that are safe to repeat.
    pub async fn ask<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(PublisherClient) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = Status::unavailable("no voter is known");
        for addr in self.voter_addrs() {
            let Ok(client) = self.outbound.publisher(&addr) else {
                continue;
            };
            match tokio::time::timeout(CALL_TIMEOUT, call(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) if !matches!(s.code(), Code::Unavailable | Code::Unknown) => {
                    return Err(s);
                }
                Ok(Err(s)) => last = s,
                Err(_) => last = Status::unavailable(format!("{addr} did not answer in time")),
            }
        }
        Err(last)
    }

    /// Where a call that must not be repeated elsewhere (a publish) goes:
    /// the leader when known, else one voter, which forwards it.
    pub fn forward_target(&self) -> Result<PublisherClient, Status> {
        let addr = self
            .voter_addrs()
            .into_iter()
            .next()
            .ok_or_else(|| Status::from(Rejection::NoLeader))?;
        self.outbound
            .publisher(&addr)
            .map_err(|e| Rejection::LeaderUnreachable(e).into())
    }

    /// Ask a voter for the cluster's state and remember it.
    async fn refresh_view(&self) {
        let answer = self
            .ask(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
            .await;
        let Ok(status) = answer.map(tonic::Response::into_inner) else {
            return;
        };
        let mut view = self.view.write().expect("view lock poisoned");
        view.leader = status.leader_id.and_then(|id| {
            let addr = status
                .members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.grpc_addr.clone())?;
            Some((id, addr))
        });
        view.voters = status
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| m.grpc_addr.clone())
            .collect();
        view.listed = status
            .members
            .iter()
            .any(|m| m.id == self.id && m.role == "fanout");
        view.member = status
            .members
            .iter()
            .any(|m| m.id == self.id && m.role != "fanout");
        view.answered = Some(Instant::now());
    }

    /// Ready: registered, still listed, and a voter answered recently.
    pub fn readiness(&self) -> Result<(), String> {
        let view = self.view();
        if view.member {
            return Err(format!("id {} belongs to a Raft member", self.id));
        }
        match self.registration() {
            Registration::Pending => return Err("not registered yet".into()),
            Registration::Removed => {
                return Err("removed from the cluster; restart to register again".into());
            }
            Registration::Registered => {}
        }
        match view.answered {
            Some(at) if at.elapsed() < VOTER_SILENCE => Ok(()),
            _ => Err("no voter answered recently".into()),
        }
    }

    /// Keep the view fresh; register once (announcing `quic_addr`), then
    /// notice a removal.
    pub async fn maintain(self: Arc<Self>, quic_addr: String) {
        let mut tick = tokio::time::interval(VIEW_REFRESH);
        let mut attempt = 0u32;
        loop {
            tick.tick().await;
            self.refresh_view().await;
            match self.registration() {
                Registration::Pending => {
                    let cmd = Command::RegisterFanout {
                        id: self.id,
                        grpc_addr: self.grpc_addr.clone(),
                        started: Some(quic_addr.clone()),
                    };
                    match self.submit(cmd).await {
                        Ok(()) => {
                            tracing::info!(quic = %quic_addr, "registered as a fan-out node");
                            metrics::gauge!("herald_peer_registered").set(1.0);
                            self.registration.send_replace(Registration::Registered);
                        }
                        Err(e) => {
                            attempt += 1;
                            if attempt == 1 || attempt.is_multiple_of(20) {
                                tracing::warn!(attempt, "registering: {e}; retrying");
                            }
                        }
                    }
                }
                Registration::Registered => {
                    let removed = {
                        let view = self.view();
                        !view.listed
                            && view.answered.is_some_and(|at| at.elapsed() < VIEW_REFRESH)
                            && view.leader.is_some()
                    };
                    if removed && self.confirm_removed().await {
                        tracing::warn!("removed from the cluster; restart to register again");
                        metrics::gauge!("herald_peer_registered").set(0.0);
                        self.registration.send_replace(Registration::Removed);
                    }
                }
                Registration::Removed => {}
            }
        }
    }

    /// Ask the leader itself whether this node is still registered (a
    /// lagging follower may not have applied the registration yet).
    async fn confirm_removed(&self) -> bool {
        let Some((_, leader)) = self.leader() else {
            return false;
        };
        let Ok(mut c) = self.outbound.publisher(&leader) else {
            return false;
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, c.cluster_status(ClusterStatusRequest {}));
        match answer.await {
            Ok(Ok(s)) => {
                let s = s.into_inner();
                s.state == "leader" && !s.members.iter().any(|m| m.id == self.id)
            }
            _ => false,
        }
    }

    /// Hand join/leave events to this node's edge links and, through a
    /// voter, to every other node with interest.
    fn spread_presence(&self, events: Vec<Publication>) {
        if events.is_empty() {
            return;
        }
        if let Some(addr) = self.voter_addrs().into_iter().next() {
            self.presence_relay
                .send(&self.outbound, &addr, events.clone());
        }
        metrics::counter!("herald_presence_events_total").increment(events.len() as u64);
        let _ = self.delivery.send(Arc::new(events));
    }

    /// Join/leave events another node sent: to this node's edge links.
    pub fn presence_events(&self, events: Vec<Publication>) {
        let events: Vec<Publication> = events
            .into_iter()
            .filter(crate::presence::is_event)
            .collect();
        if !events.is_empty() {
            let _ = self.delivery.send(Arc::new(events));
        }
    }
}

impl Registry for FanoutNode {
    fn node_id(&self) -> u64 {
        self.id
    }

    /// Registering withdrew every channel this node had before.
    fn registered(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }

    async fn submit(&self, cmd: Command) -> Result<(), Rejection> {
        if self.registration() == Registration::Removed {
            return Err(Rejection::Membership(format!(
                "fan-out node {} was removed from the cluster",
                self.id
            )));
        }
        let (id, addr) = self.leader().ok_or(Rejection::NoLeader)?;
        let mut client = self
            .outbound
            .raft(&addr)
            .map_err(Rejection::LeaderUnreachable)?;
        let payload = RaftPayload {
            data: crate::raft::encode(&cmd).into(),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.submit(payload)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(Rejection::LeaderUnreachable(format!(
                "node {id}: {}",
                s.message()
            ))),
            Err(_) => Err(Rejection::LeaderUnreachable(format!(
                "node {id} did not answer in time"
            ))),
        }
    }
}

impl HistorySource for FanoutNode {
    /// A linearizable read through the leader, so it holds everything
    /// committed before it, including whatever was pushed here.
    async fn read(
        &self,
        channel: &str,
        since: Option<Since>,
        limit: u32,
    ) -> Result<HistoryResponse, Rejection> {
        self.namespaces.resolve(channel)?;
        let req = HistoryRequest {
            channel: channel.to_string(),
            since: since.map(|s| StreamPosition {
                offset: s.offset.0,
                epoch: s.epoch.0,
            }),
            limit,
            reverse: false,
            linearizable: true,
        };
        self.ask(|mut c| {
            let req = req.clone();
            async move { c.history(req).await }
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| Rejection::LeaderUnreachable(s.message().to_string()))
    }

    fn max_limit(&self) -> u32 {
        self.namespaces.limits.max_history_limit
    }
}

impl LinkBackend for FanoutNode {
    fn subscribe_delivery(&self) -> broadcast::Receiver<Arc<Vec<Publication>>> {
        self.delivery.subscribe()
    }

    fn new_presence_link(&self) -> u64 {
        self.presence.new_link()
    }

    fn presence_update(&self, link: u64, u: PresenceUpdate) {
        if !self
            .namespaces
            .resolve(&u.channel)
            .is_ok_and(|ns| ns.config.presence)
        {
            return;
        }
        let changes = self.presence.apply(link, u);
        self.spread_presence(crate::presence::events(&changes, now_ms()));
    }

    fn presence_link_ended(&self, link: u64) {
        let changes = self.presence.drop_link(link);
        self.spread_presence(crate::presence::events(&changes, now_ms()));
    }
}

impl crate::http::Ops for FanoutNode {
    fn readiness(&self) -> Result<(), String> {
        FanoutNode::readiness(self)
    }

    fn refresh_metrics(&self) {
        let leader = self.leader().map_or(0, |(id, _)| id);
        metrics::gauge!("herald_raft_leader_id").set(leader as f64);
    }
}

/// Newest position seen per channel.
type Tails = HashMap<String, (String, u64)>;

fn note(tails: &mut Tails, p: &Publication) {
    if p.offset == 0 {
        return;
    }
    let newer = tails
        .get(&p.channel)
        .is_none_or(|(epoch, offset)| *epoch != p.epoch || *offset < p.offset);
    if newer {
        tails.insert(p.channel.clone(), (p.epoch.clone(), p.offset));
    }
}

/// Close the gap a lost push leaves at a channel's tail: with no later
/// publication, the edge links would never notice it. Every [`TAIL_CHECK`]
/// the newest offsets of this node's channels are compared with what
/// arrived; for a channel behind, its newest publication is fetched and
/// handed to the edge links, which deliver it or fill the gap before it.
pub async fn watch_tails(node: Arc<FanoutNode>, interest: Interest) {
    let mut tails = Tails::new();
    let mut delivery = node.delivery.subscribe();
    let mut tick = tokio::time::interval(TAIL_CHECK);
    loop {
        tokio::select! {
            batch = delivery.recv() => match batch {
                Ok(batch) => batch.iter().for_each(|p| note(&mut tails, p)),
                // The next check finds what was skipped.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let names = interest.registered();
                tails.retain(|c, _| names.contains(c));
                if names.is_empty() {
                    continue;
                }
                let req = ChannelsRequest { pattern: String::new(), names };
                let answer = node
                    .ask(|mut c| {
                        let req = req.clone();
                        async move { c.channels(req).await }
                    })
                    .await;
                let Ok(answer) = answer else { continue };
                for ch in answer.into_inner().channels {
                    let behind = tails
                        .get(&ch.channel)
                        .is_none_or(|(epoch, offset)| *epoch != ch.epoch || *offset < ch.offset);
                    if !behind || ch.offset == 0 {
                        continue;
                    }
                    if let Some(p) = newest(&node, &ch.channel).await {
                        metrics::counter!("herald_fanout_tail_checks_total").increment(1);
                        note(&mut tails, &p);
                        let _ = node.delivery.send(Arc::new(vec![p]));
                    }
                }
            }
        }
    }
}

async fn newest(node: &FanoutNode, channel: &str) -> Option<Publication> {
    let req = HistoryRequest {
        channel: channel.to_string(),
        limit: 1,
        ..Default::default()
    };
    let page = node
        .ask(|mut c| {
            let req = req.clone();
            async move { c.history(req).await }
        })
        .await
        .ok()?;
    page.into_inner().publications.pop()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(channel: &str, epoch: &str, offset: u64) -> Publication {
        Publication {
            channel: channel.into(),
            epoch: epoch.into(),
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn tails_keep_the_newest_position_per_epoch() {
        let mut t = Tails::new();
        note(&mut t, &publication("a", "e1", 3));
        note(&mut t, &publication("a", "e1", 2));
        assert_eq!(t["a"], ("e1".to_string(), 3));
        // A new epoch replaces the old position even at a lower offset.
        note(&mut t, &publication("a", "e2", 1));
        assert_eq!(t["a"], ("e2".to_string(), 1));
        // Ephemeral publications and presence events carry no position.
        note(&mut t, &publication("b", "", 0));
        assert!(!t.contains_key("b"));
    }

    #[test]
    fn voters_are_asked_leader_first_without_repeats() {
        let node = FanoutNode::new(
            9,
            "f:1".into(),
            Namespaces::new(Default::default(), Default::default()).unwrap(),
            Outbound::new(None),
            vec!["a:1".into(), "b:1".into()],
        );
        assert_eq!(node.voter_addrs(), vec!["a:1", "b:1"]);
        {
            let mut v = node.view.write().unwrap();
            v.leader = Some((2, "b:1".into()));
            v.voters = vec!["a:1".into(), "b:1".into(), "c:1".into()];
        }
        assert_eq!(node.voter_addrs(), vec!["b:1", "a:1", "c:1"]);
        assert_eq!(node.readiness().unwrap_err(), "not registered yet");
    }
}
