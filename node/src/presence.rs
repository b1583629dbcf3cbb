//! Presence: which clients are subscribed to which channel, for namespaces
//! with `presence = true`.
//!
//! Each node keeps, in memory and not in Raft, the presence its own edges
//! report over their EdgeLink streams (`PresenceUpdate`), tagged with the
//! link it came from: when a link ends, its entries vanish (and leave
//! events are sent). A cluster-wide query merges this node's table with
//! every other member's (`PresenceLocal`), so a node that dies takes its
//! edges' clients with it at once: it no longer answers.
//!
//! Join and leave events travel like ephemeral publications (offset 0) with
//! the header [`PRESENCE_HEADER`] (`join` or `leave`) and the client's info
//! as JSON data; edges turn them into Centrifugo `join` / `leave` pushes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_proto::v1::{
    ClientInfo, PresenceEventsRequest, PresenceStatsResponse, PresenceUpdate, Publication,
};
use tokio::sync::mpsc;

use crate::grpc::outbound::Outbound;

/// Event batches queued towards one peer before further ones are dropped.
const FORWARD_QUEUE: usize = 1024;
/// Hang guard for one forward call.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Header marking a join/leave event; its value is `join` or `leave`.
pub const PRESENCE_HEADER: &str = "herald-presence";

/// Channel → client id → (link, info).
type Table = HashMap<String, HashMap<String, (u64, ClientInfo)>>;

/// One node's presence table: channel → client id → (link, info).
#[derive(Debug, Default)]
pub struct Presence {
    channels: Mutex<Table>,
    next_link: AtomicU64,
}

/// What one update or one ended link changed: `(channel, info)` pairs.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Clients that were not present before.
    pub joined: Vec<(String, ClientInfo)>,
    /// Clients that were present and are gone.
    pub left: Vec<(String, ClientInfo)>,
}

impl Presence {
    /// An id for a new edge link.
    pub fn new_link(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply an edge's update. Idempotent: a join of a present client (an
    /// edge re-sending its presence after a reconnect) or a leave of an
    /// absent one changes nothing.
    pub fn apply(&self, link: u64, u: PresenceUpdate) -> Changes {
        let mut changes = Changes::default();
        let mut channels = self.lock();
        let clients = channels.entry(u.channel.clone()).or_default();
        for c in u.left {
            if let Some((_, info)) = clients.remove(&c) {
                changes.left.push((u.channel.clone(), info));
            }
        }
        for info in u.joined {
            if info.client.is_empty() {
                continue;
            }
            let old = clients.insert(info.client.clone(), (link, info.clone()));
            if old.is_none() {
                changes.joined.push((u.channel.clone(), info));
            }
        }
        if clients.is_empty() {
            channels.remove(&u.channel);
        }
        changes
    }

    /// Forget everything a link reported (it ended).
    pub fn drop_link(&self, link: u64) -> Changes {
        let mut changes = Changes::default();
        let mut channels = self.lock();
        channels.retain(|channel, clients| {
            clients.retain(|_, (l, info)| {
                if *l == link {
                    changes.left.push((channel.clone(), info.clone()));
                    false
                } else {
                    true
                }
            });
            !clients.is_empty()
        });
        changes
    }

    /// Clients of this node's edges in `channel`.
    pub fn local(&self, channel: &str) -> Vec<ClientInfo> {
        self.lock()
            .get(channel)
            .map(|c| c.values().map(|(_, i)| i.clone()).collect())
            .unwrap_or_default()
    }
}

/// Sends join/leave events to other nodes over gRPC (`PresenceEvents`)
/// when there is no QUIC plane: one queue and one sequential sender task
/// per peer, so a peer sees one node's events in order. At most once: a
/// failed call or a full queue drops events.
#[derive(Debug, Default)]
pub struct Forwarder {
    peers: Mutex<HashMap<String, mpsc::Sender<Vec<Publication>>>>,
    relay_from: Option<u64>,
}

impl Forwarder {
    /// A fan-out node's forwarder: the receiving voter passes the events on
    /// to every node with interest but this one.
    pub fn relaying_for(node: u64) -> Self {
        Self {
            relay_from: Some(node),
            ..Self::default()
        }
    }

    /// Queue `events` for the node at `addr`.
    pub fn send(&self, outbound: &Outbound, addr: &str, events: Vec<Publication>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let tx = peers.entry(addr.to_string()).or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<Vec<Publication>>(FORWARD_QUEUE);
            let outbound = outbound.clone();
            let addr = addr.to_string();
            let relay_from = self.relay_from;
            tokio::spawn(async move {
                while let Some(events) = rx.recv().await {
                    let Ok(mut client) = outbound.publisher(&addr) else {
                        continue;
                    };
                    let mut req = tonic::Request::new(PresenceEventsRequest { events });
                    if let Some(id) = relay_from {
                        req.metadata_mut().insert(
                            crate::grpc::RELAY_FROM,
                            tonic::metadata::MetadataValue::from(id),
                        );
                    }
                    let call = client.presence_events(req);
                    if !matches!(tokio::time::timeout(FORWARD_TIMEOUT, call).await, Ok(Ok(_))) {
                        metrics::counter!("herald_presence_forward_failures_total").increment(1);
                    }
                }
            });
            tx
        });
        if tx.try_send(events).is_err() {
            metrics::counter!("herald_presence_forward_failures_total").increment(1);
        }
    }
}

/// Whether `p` is a presence event (as opposed to a publication).
pub fn is_event(p: &Publication) -> bool {
    p.offset == 0
        && p.headers
            .get(PRESENCE_HEADER)
            .is_some_and(|k| k == "join" || k == "leave")
}

/// Merge tables from several nodes, each client once.
pub fn merge(lists: impl IntoIterator<Item = Vec<ClientInfo>>) -> Vec<ClientInfo> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for list in lists {
        for c in list {
            if seen.insert(c.client.clone()) {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| a.client.cmp(&b.client));
    out
}

/// Counts of a merged list.
pub fn stats(clients: &[ClientInfo]) -> PresenceStatsResponse {
    let users: HashSet<&str> = clients.iter().map(|c| c.user.as_str()).collect();
    PresenceStatsResponse {
        num_clients: clients.len() as u32,
        num_users: users.len() as u32,
    }
}

/// The client's info as Centrifugo's `ClientInfo` JSON.
pub fn info_json(c: &ClientInfo) -> Vec<u8> {
    let mut v = serde_json::json!({ "client": c.client, "user": c.user });
    for (k, raw) in [("conn_info", &c.conn_info), ("chan_info", &c.chan_info)] {
        if let Ok(j) = serde_json::from_slice::<serde_json::Value>(raw) {
            v[k] = j;
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Join and leave events for `changes`, ready for the delivery path.
pub fn events(changes: &Changes, now_ms: i64) -> Vec<Publication> {
    let event = |kind: &str, channel: &str, info: &ClientInfo| Publication {
        channel: channel.to_string(),
        offset: 0,
        epoch: String::new(),
        event_type: String::new(),
        data: info_json(info).into(),
        content_type: "application/json".into(),
        idempotency_key: String::new(),
        headers: [(PRESENCE_HEADER.to_string(), kind.to_string())].into(),
        published_at_ms: now_ms,
    };
    changes
        .left
        .iter()
        .map(|(ch, i)| event("leave", ch, i))
        .chain(changes.joined.iter().map(|(ch, i)| event("join", ch, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(client: &str, user: &str) -> ClientInfo {
        ClientInfo {
            client: client.into(),
            user: user.into(),
            ..Default::default()
        }
    }

    fn update(channel: &str, joined: &[(&str, &str)], left: &[&str]) -> PresenceUpdate {
        PresenceUpdate {
            channel: channel.into(),
            joined: joined.iter().map(|(c, u)| info(c, u)).collect(),
            left: left.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn updates_are_idempotent_and_links_take_their_clients_along() {
        let p = Presence::default();
        let (a, b) = (p.new_link(), p.new_link());
        let ch = update("chat:x", &[("c1", "u1"), ("c2", "u1")], &[]);
        assert_eq!(p.apply(a, ch.clone()).joined.len(), 2);
        // Re-sent after a reconnect: nothing new.
        assert!(p.apply(a, ch).joined.is_empty());
        p.apply(b, update("chat:x", &[("c3", "u2")], &[]));
        let all = merge([p.local("chat:x")]);
        assert_eq!(all.len(), 3);
        assert_eq!(stats(&all).num_users, 2);
        let left = p.apply(a, update("chat:x", &[], &["c2", "nope"])).left;
        assert_eq!(left, vec![("chat:x".to_string(), info("c2", "u1"))]);
        let gone = p.drop_link(a);
        assert_eq!(gone.left, vec![("chat:x".to_string(), info("c1", "u1"))]);
        assert_eq!(p.local("chat:x"), vec![info("c3", "u2")]);
        p.drop_link(b);
        assert!(p.lock().is_empty());
    }

    #[test]
    fn merge_dedupes_and_events_carry_the_header() {
        let m = merge([vec![info("a", "u")], vec![info("a", "u"), info("b", "")]]);
        assert_eq!(m.len(), 2);
        let ev = events(
            &Changes {
                joined: vec![("c".into(), info("a", "u"))],
                left: vec![],
            },
            5,
        );
        assert_eq!(ev[0].headers[PRESENCE_HEADER], "join");
        assert_eq!(ev[0].offset, 0);
        let v: serde_json::Value = serde_json::from_slice(&ev[0].data).unwrap();
        assert_eq!(v, serde_json::json!({"client": "a", "user": "u"}));
    }
}
