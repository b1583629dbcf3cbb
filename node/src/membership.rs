//! Channel membership: which nodes currently have subscribers for which
//! channel, where each node's QUIC endpoint is, and which nodes are fan-out
//! nodes (outside Raft, receiving only their channels). Replicated through
//! Raft so that the leader pushes each publication to exactly the nodes that
//! want it. A plain struct, applied deterministically, tested without Raft.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The replicated table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMembership {
    quic: BTreeMap<u64, String>,
    interest: BTreeMap<String, BTreeSet<u64>>,
    fanout: BTreeMap<u64, String>,
}

/// The table as versions without fan-out nodes stored it; read from their
/// snapshots so an upgraded node opens (or installs) them.
#[derive(Debug, Deserialize)]
pub struct ChannelMembershipV1 {
    quic: BTreeMap<u64, String>,
    interest: BTreeMap<String, BTreeSet<u64>>,
}

impl From<ChannelMembershipV1> for ChannelMembership {
    fn from(v1: ChannelMembershipV1) -> Self {
        Self {
            quic: v1.quic,
            interest: v1.interest,
            fanout: BTreeMap::new(),
        }
    }
}

impl ChannelMembership {
    /// Record (or move) a node's QUIC address.
    pub fn register(&mut self, node: u64, quic_addr: String) {
        self.quic.insert(node, quic_addr);
    }

    /// Record (or move) a fan-out node's gRPC address. With `started`, the
    /// node itself announces a (re)start at that QUIC address: it has no
    /// subscribers yet, so any interest it had is withdrawn.
    pub fn register_fanout(&mut self, node: u64, grpc_addr: String, started: Option<String>) {
        self.fanout.insert(node, grpc_addr);
        if let Some(quic_addr) = started {
            self.quic.insert(node, quic_addr);
            self.withdraw_all(node);
        }
    }

    /// Forget a node and every interest it had.
    pub fn forget(&mut self, node: u64) {
        self.quic.remove(&node);
        self.fanout.remove(&node);
        self.withdraw_all(node);
    }

    fn withdraw_all(&mut self, node: u64) {
        self.interest.retain(|_, nodes| {
            nodes.remove(&node);
            !nodes.is_empty()
        });
    }

    /// Apply one node's interest changes.
    pub fn update(&mut self, node: u64, add: &[String], remove: &[String]) {
        for c in add {
            self.interest.entry(c.clone()).or_default().insert(node);
        }
        for c in remove {
            if let Some(nodes) = self.interest.get_mut(c) {
                nodes.remove(&node);
                if nodes.is_empty() {
                    self.interest.remove(c);
                }
            }
        }
    }

    /// Nodes with subscribers for a channel.
    pub fn members(&self, channel: &str) -> impl Iterator<Item = u64> + '_ {
        self.interest.get(channel).into_iter().flatten().copied()
    }

    /// Channels a node has subscribers for.
    pub fn channels_of(&self, node: u64) -> BTreeSet<String> {
        self.interest
            .iter()
            .filter(|(_, n)| n.contains(&node))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// A node's QUIC address.
    pub fn quic_addr(&self, node: u64) -> Option<&str> {
        self.quic.get(&node).map(String::as_str)
    }

    /// Registered fan-out nodes and their gRPC addresses.
    pub fn fanout_nodes(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.fanout.iter().map(|(id, a)| (*id, a.as_str()))
    }

    /// A fan-out node's gRPC address, if it is registered.
    pub fn fanout_addr(&self, node: u64) -> Option<&str> {
        self.fanout.get(&node).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_follows_updates_and_forget() {
        let mut m = ChannelMembership::default();
        m.register(2, "a:1".into());
        m.update(2, &["x".into(), "y".into()], &[]);
        m.update(3, &["x".into()], &[]);
        assert_eq!(m.members("x").collect::<Vec<_>>(), vec![2, 3]);
        m.update(2, &[], &["x".into()]);
        assert_eq!(m.members("x").collect::<Vec<_>>(), vec![3]);
        assert_eq!(m.channels_of(2), BTreeSet::from(["y".to_string()]));
        m.forget(3);
        assert_eq!(m.members("x").count(), 0);
        assert_eq!(m.quic_addr(2), Some("a:1"));
    }

    #[test]
    fn tables_written_before_fanout_nodes_still_read() {
        #[derive(Serialize)]
        struct Old {
            quic: BTreeMap<u64, String>,
            interest: BTreeMap<String, BTreeSet<u64>>,
        }
        let old = Old {
            quic: BTreeMap::from([(2, "a:1".to_string())]),
            interest: BTreeMap::from([("x".to_string(), BTreeSet::from([2]))]),
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        assert!(postcard::from_bytes::<ChannelMembership>(&bytes).is_err());
        let m: ChannelMembership = postcard::from_bytes::<ChannelMembershipV1>(&bytes)
            .unwrap()
            .into();
        assert_eq!(m.quic_addr(2), Some("a:1"));
        assert_eq!(m.members("x").collect::<Vec<_>>(), vec![2]);
        assert_eq!(m.fanout_nodes().count(), 0);
    }

    #[test]
    fn fanout_registration_restart_and_removal() {
        let mut m = ChannelMembership::default();
        // Pre-registered by an operator: known, not yet reachable over QUIC.
        m.register_fanout(7, "f:1".into(), None);
        assert_eq!(m.fanout_addr(7), Some("f:1"));
        assert_eq!(m.quic_addr(7), None);
        // The node starts and subscribes.
        m.register_fanout(7, "f:1".into(), Some("f:2".into()));
        m.update(7, &["x".into()], &[]);
        m.update(1, &["x".into()], &[]);
        // A repeated pre-registration changes nothing it does not name.
        m.register_fanout(7, "f:1".into(), None);
        assert_eq!(m.members("x").collect::<Vec<_>>(), vec![1, 7]);
        // It restarts elsewhere: the old interest is withdrawn, the address moves.
        m.register_fanout(7, "f:9".into(), Some("f:3".into()));
        assert_eq!(m.members("x").collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.quic_addr(7), Some("f:3"));
        assert_eq!(m.fanout_nodes().collect::<Vec<_>>(), vec![(7, "f:9")]);
        m.update(7, &["y".into()], &[]);
        m.forget(7);
        assert_eq!(m.fanout_nodes().count(), 0);
        assert_eq!(m.quic_addr(7), None);
        assert!(m.channels_of(7).is_empty());
        assert_eq!(m.members("x").collect::<Vec<_>>(), vec![1]);
    }
}
