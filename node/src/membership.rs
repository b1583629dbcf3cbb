//! Channel membership: which nodes currently have subscribers for which
//! channel, and where each node's QUIC endpoint is. Replicated through Raft
//! so that the leader pushes each publication to exactly the nodes that want
//! it. A plain struct, applied deterministically, tested without Raft.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The replicated table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMembership {
    quic: BTreeMap<u64, String>,
    interest: BTreeMap<String, BTreeSet<u64>>,
}

impl ChannelMembership {
    /// Record (or move) a node's QUIC address.
    pub fn register(&mut self, node: u64, quic_addr: String) {
        self.quic.insert(node, quic_addr);
    }

    /// Forget a node and every interest it had.
    pub fn forget(&mut self, node: u64) {
        self.quic.remove(&node);
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
}
