//! The channel state machine: per-channel epoch, last offset and bounded
//! history ring, plus the idempotency window. A plain struct with plain
//! methods, so it is tested without Raft, tokio or sockets; Raft only feeds it
//! committed [`Proposal`]s in log order.
//!
//! Determinism is the rule: everything `apply` does depends only on the
//! proposal (including the time and sizes the leader put in it) and the
//! current state, never on this node's clock or configuration. Replicas that
//! apply the same log hold the same state.
//!
//! An epoch changes in exactly two ways: a channel is created (its epoch
//! derived from the creating proposal's nonce), or a recovery or restore
//! gives every channel a new one ([`ChannelTable::bump_epochs`], derived
//! from that command's nonce) because continuity with what clients saw can
//! no longer be proved. Offsets and history carry on across a bump; only a
//! reader's old `(epoch, offset)` stops being continuous.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Position of a publication in its channel: +1 per publication, from 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Offset(pub u64);

/// Identity of one continuous history of a channel. It changes only when the
/// channel's history is lost or reset, which tells a resuming client that its
/// offset means nothing any more.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Epoch(pub String);

impl Epoch {
    /// The epoch of a channel created by the proposal carrying `nonce`.
    fn derive(nonce: u64, channel: &str) -> Self {
        // FNV-1a over the nonce and the name: deterministic on every replica,
        // different for every (proposal, channel) pair in practice.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in nonce.to_le_bytes().iter().chain(channel.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Epoch(format!("{:08x}", (h >> 32) as u32))
    }
}

/// A channel whose epoch [`ChannelTable::bump_epochs`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochChange {
    /// The channel.
    pub channel: String,
    /// Its epoch before.
    pub old: Epoch,
    /// Its epoch after.
    pub new: Epoch,
    /// Its newest offset (unchanged by the bump).
    pub offset: Offset,
}

/// One publication as a publisher asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPublication {
    /// Channel name (already validated).
    pub channel: String,
    /// Application event type.
    pub event_type: String,
    /// Payload.
    pub data: Bytes,
    /// MIME type of `data`.
    pub content_type: String,
    /// Empty for none.
    pub idempotency_key: String,
    /// Free-form headers.
    pub headers: BTreeMap<String, String>,
    /// History ring size of the channel's namespace, set by the leader.
    pub history_size: u32,
    /// History TTL in ms of the channel's namespace (0 = none), set by the leader.
    pub history_ttl_ms: u64,
}

/// The Raft command: publications accepted together by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Leader's clock (Unix ms) when it proposed; never decreases in the log.
    pub published_at_ms: i64,
    /// Random per proposal; seeds the epoch of channels it creates.
    pub nonce: u64,
    /// How long idempotency keys are remembered, in ms.
    pub idempotency_window_ms: u64,
    /// The publications, applied in order.
    pub items: Vec<NewPublication>,
}

/// A publication in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPublication {
    /// Its offset.
    pub offset: Offset,
    /// Application event type.
    pub event_type: String,
    /// Payload.
    pub data: Bytes,
    /// MIME type.
    pub content_type: String,
    /// Empty for none.
    pub idempotency_key: String,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// Unix ms.
    pub published_at_ms: i64,
}

/// What applying one publication produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Channel.
    pub channel: String,
    /// Offset given to it (the original one for a duplicate).
    pub offset: Offset,
    /// Channel epoch.
    pub epoch: Epoch,
    /// Unix ms (the original one for a duplicate).
    pub published_at_ms: i64,
    /// True when the idempotency key had been seen within the window.
    pub duplicate: bool,
}

/// One channel's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Current epoch.
    pub epoch: Epoch,
    /// Offset of the newest publication.
    pub last_offset: Offset,
    /// Unix ms of the newest publication.
    pub last_published_at_ms: i64,
    history: VecDeque<StoredPublication>,
}

impl Channel {
    fn new(epoch: Epoch) -> Self {
        Self {
            epoch,
            last_offset: Offset(0),
            last_published_at_ms: 0,
            history: VecDeque::new(),
        }
    }

    /// Publications retained, oldest first.
    pub fn history(
        &self,
    ) -> impl DoubleEndedIterator<Item = &StoredPublication> + ExactSizeIterator {
        self.history.iter()
    }

    fn evict(&mut self, size: u32, ttl_ms: u64, now_ms: i64) {
        while self.history.len() > size as usize {
            self.history.pop_front();
        }
        if ttl_ms > 0 {
            let cutoff = now_ms.saturating_sub(ttl_ms as i64);
            while self
                .history
                .front()
                .is_some_and(|p| p.published_at_ms < cutoff)
            {
                self.history.pop_front();
            }
        }
    }
}

/// Where a history read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// Last offset the reader has.
    pub offset: Offset,
    /// Epoch that offset belongs to.
    pub epoch: Epoch,
}

/// The answer to a history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Publications, in the order asked for.
    pub publications: Vec<StoredPublication>,
    /// Current epoch (empty if the channel does not exist).
    pub epoch: Epoch,
    /// Newest offset.
    pub offset: Offset,
    /// False when `since` cannot be continued from without a gap.
    pub in_window: bool,
    /// Oldest retained offset, 0 if none.
    pub first_offset: Offset,
}

impl StoredPublication {
    /// Roughly its size on the wire: what a page of publications is cut by.
    pub fn wire_size(&self) -> usize {
        self.data.len()
            + self.event_type.len()
            + self.content_type.len()
            + self.idempotency_key.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
            + 64
    }
}

impl HistoryPage {
    /// Cut the page to at most `max_bytes` of publications (always keeping
    /// one), so no answer outgrows what its receiver decodes. `keep_newest`
    /// keeps the end of the page (a read without a position returns the
    /// newest publications); otherwise the beginning, so a reader continues
    /// from the last publication it got.
    pub fn fit(&mut self, max_bytes: usize, keep_newest: bool) {
        let sizes = self.publications.iter().map(StoredPublication::wire_size);
        let count = |sizes: &mut dyn Iterator<Item = usize>| {
            let mut total = 0usize;
            sizes
                .take_while(|s| {
                    total += s;
                    total <= max_bytes
                })
                .count()
                .max(1)
        };
        if keep_newest {
            let keep = count(&mut sizes.rev());
            let drop = self.publications.len().saturating_sub(keep);
            self.publications.drain(..drop);
        } else {
            let keep = count(&mut { sizes });
            self.publications.truncate(keep);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    offset: Offset,
    epoch: Epoch,
    published_at_ms: i64,
}

/// Publish idempotency: keys seen within the window, per channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct IdempotencyWindow {
    seen: HashMap<(String, String), Remembered>,
    /// (expires_at_ms, channel, key) in insertion order; expiry is
    /// non-decreasing because proposal times are.
    expiry: VecDeque<(i64, String, String)>,
}

impl IdempotencyWindow {
    fn expire(&mut self, now_ms: i64) {
        while let Some((at, _, _)) = self.expiry.front() {
            if *at > now_ms {
                break;
            }
            let (_, channel, key) = self.expiry.pop_front().expect("front exists");
            self.seen.remove(&(channel, key));
        }
    }
}

/// Every channel plus the idempotency window: the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelTable {
    channels: BTreeMap<String, Channel>,
    idempotency: IdempotencyWindow,
    /// The log's clock: the newest publication time applied. Proposals
    /// carry the leader's clock, which may run behind a previous leader's;
    /// history time never goes backwards.
    clock_ms: i64,
}

impl ChannelTable {
    /// Apply one committed proposal; one [`Accepted`] per item, in order.
    pub fn apply(&mut self, p: &Proposal) -> Vec<Accepted> {
        let now = p.published_at_ms.max(self.clock_ms);
        self.clock_ms = now;
        self.idempotency.expire(now);
        let mut out = Vec::with_capacity(p.items.len());
        for item in &p.items {
            let key = (!item.idempotency_key.is_empty())
                .then(|| (item.channel.clone(), item.idempotency_key.clone()));
            if let Some(r) = key.as_ref().and_then(|k| self.idempotency.seen.get(k)) {
                out.push(Accepted {
                    channel: item.channel.clone(),
                    offset: r.offset,
                    epoch: r.epoch.clone(),
                    published_at_ms: r.published_at_ms,
                    duplicate: true,
                });
                continue;
            }
            let channel = self
                .channels
                .entry(item.channel.clone())
                .or_insert_with(|| Channel::new(Epoch::derive(p.nonce, &item.channel)));
            channel.last_offset = Offset(channel.last_offset.0 + 1);
            channel.last_published_at_ms = now;
            channel.history.push_back(StoredPublication {
                offset: channel.last_offset,
                event_type: item.event_type.clone(),
                data: item.data.clone(),
                content_type: item.content_type.clone(),
                idempotency_key: item.idempotency_key.clone(),
                headers: item.headers.clone(),
                published_at_ms: now,
            });
            channel.evict(item.history_size, item.history_ttl_ms, now);
            let accepted = Accepted {
                channel: item.channel.clone(),
                offset: channel.last_offset,
                epoch: channel.epoch.clone(),
                published_at_ms: now,
                duplicate: false,
            };
            if let Some(k) = key {
                let expires = now.saturating_add(p.idempotency_window_ms as i64);
                self.idempotency
                    .expiry
                    .push_back((expires, k.0.clone(), k.1.clone()));
                self.idempotency.seen.insert(
                    k,
                    Remembered {
                        offset: accepted.offset,
                        epoch: accepted.epoch.clone(),
                        published_at_ms: now,
                    },
                );
            }
            out.push(accepted);
        }
        out
    }

    /// Give every channel a new epoch derived from `nonce` (never its
    /// current one), keeping offsets and history, and answer retried
    /// publishes still in the idempotency window with the new epoch. A
    /// reader positioned in an old epoch is no longer continuous
    /// ([`Self::history`] answers `in_window: false`), so a client is told
    /// it may have missed something instead of being silently rewound.
    pub fn bump_epochs(&mut self, nonce: u64) -> Vec<EpochChange> {
        let mut changes = Vec::with_capacity(self.channels.len());
        for (name, channel) in &mut self.channels {
            let mut salt = nonce;
            let mut new = Epoch::derive(salt, name);
            while new == channel.epoch {
                salt = salt.wrapping_add(1);
                new = Epoch::derive(salt, name);
            }
            let old = std::mem::replace(&mut channel.epoch, new.clone());
            changes.push(EpochChange {
                channel: name.clone(),
                old,
                new,
                offset: channel.last_offset,
            });
        }
        for ((channel, _), remembered) in &mut self.idempotency.seen {
            if let Some(c) = self.channels.get(channel) {
                remembered.epoch = c.epoch.clone();
            }
        }
        changes
    }

    /// The newest publication time applied (Unix ms).
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// A channel by name.
    pub fn get(&self, channel: &str) -> Option<&Channel> {
        self.channels.get(channel)
    }

    /// Every channel, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Channel)> {
        self.channels.iter()
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether there is no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Read history. `ttl_ms` hides publications that expired since they
    /// were last evicted (eviction happens only on apply); `now_ms` is the
    /// reader's clock.
    pub fn history(
        &self,
        channel: &str,
        since: Option<&Since>,
        limit: usize,
        reverse: bool,
        ttl_ms: u64,
        now_ms: i64,
    ) -> HistoryPage {
        let Some(ch) = self.channels.get(channel) else {
            // A channel that never existed has nothing to miss: position 0 of
            // any epoch is continuous with it, a later one is not.
            let in_window = since.is_none_or(|s| s.offset.0 == 0);
            return HistoryPage {
                publications: vec![],
                epoch: Epoch::default(),
                offset: Offset(0),
                in_window,
                first_offset: Offset(0),
            };
        };
        let cutoff = if ttl_ms > 0 {
            now_ms.saturating_sub(ttl_ms as i64)
        } else {
            i64::MIN
        };
        let live: Vec<&StoredPublication> = ch
            .history
            .iter()
            .filter(|p| p.published_at_ms >= cutoff)
            .collect();
        let first_offset = live.first().map_or(Offset(0), |p| p.offset);
        let (in_window, after) = match since {
            None => (true, Offset(0)),
            // Offset 0 of no epoch is the position of a reader that saw the
            // channel before its first publication: the start of any epoch.
            Some(s) if s.epoch != ch.epoch && !(s.epoch.0.is_empty() && s.offset.0 == 0) => {
                (false, Offset(0))
            }
            Some(s) if s.offset > ch.last_offset => (false, Offset(0)),
            Some(s) => {
                // Continuous if the next offset the reader needs is retained,
                // or it already has everything.
                let next = s.offset.0 + 1;
                let ok =
                    s.offset == ch.last_offset || (first_offset.0 != 0 && first_offset.0 <= next);
                (ok, s.offset)
            }
        };
        let mut publications: Vec<StoredPublication> = if since.is_some() && !in_window {
            vec![]
        } else if since.is_some() {
            let from: Vec<_> = live.into_iter().filter(|p| p.offset > after).collect();
            if reverse {
                from.into_iter().rev().take(limit).cloned().collect()
            } else {
                from.into_iter().take(limit).cloned().collect()
            }
        } else if reverse {
            live.into_iter().rev().take(limit).cloned().collect()
        } else {
            // Without a position, the newest `limit` in ascending order.
            let skip = live.len().saturating_sub(limit);
            live.into_iter().skip(skip).cloned().collect()
        };
        publications.shrink_to_fit();
        HistoryPage {
            publications,
            epoch: ch.epoch.clone(),
            offset: ch.last_offset,
            in_window,
            first_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_page_is_cut_by_bytes_and_keeps_at_least_one() {
        let stored = |offset: u64, size: usize| StoredPublication {
            offset: Offset(offset),
            event_type: String::new(),
            data: Bytes::from(vec![b'x'; size]),
            content_type: String::new(),
            idempotency_key: String::new(),
            headers: BTreeMap::new(),
            published_at_ms: 0,
        };
        let page = |sizes: &[usize]| HistoryPage {
            publications: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| stored(i as u64 + 1, *s))
                .collect(),
            epoch: Epoch::default(),
            offset: Offset(sizes.len() as u64),
            in_window: true,
            first_offset: Offset(1),
        };
        let offsets = |p: &HistoryPage| {
            p.publications
                .iter()
                .map(|p| p.offset.0)
                .collect::<Vec<_>>()
        };
        let mut p = page(&[1000, 1000, 1000, 1000]);
        p.fit(2200, false);
        assert_eq!(offsets(&p), vec![1, 2]);
        let mut p = page(&[1000, 1000, 1000, 1000]);
        p.fit(2200, true);
        assert_eq!(offsets(&p), vec![3, 4]);
        let mut p = page(&[5000, 10]);
        p.fit(100, false);
        assert_eq!(offsets(&p), vec![1], "one always fits");
        let mut p = page(&[]);
        p.fit(100, true);
        assert!(p.publications.is_empty());
    }

    fn item(channel: &str, key: &str, size: u32) -> NewPublication {
        NewPublication {
            channel: channel.into(),
            event_type: "e".into(),
            data: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            idempotency_key: key.into(),
            headers: BTreeMap::new(),
            history_size: size,
            history_ttl_ms: 0,
        }
    }

    fn proposal(at: i64, items: Vec<NewPublication>) -> Proposal {
        Proposal {
            published_at_ms: at,
            nonce: at as u64,
            idempotency_window_ms: 1000,
            items,
        }
    }

    #[test]
    fn offsets_increase_per_channel_and_epoch_is_stable() {
        let mut t = ChannelTable::default();
        let a = t.apply(&proposal(
            1,
            vec![item("a", "", 10), item("b", "", 10), item("a", "", 10)],
        ));
        assert_eq!(
            a.iter().map(|x| x.offset.0).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        assert_eq!(a[0].epoch, a[2].epoch);
        let b = t.apply(&proposal(2, vec![item("a", "", 10)]));
        assert_eq!(b[0].offset, Offset(3));
        assert_eq!(b[0].epoch, a[0].epoch);
    }

    #[test]
    fn history_time_never_goes_backwards() {
        let mut t = ChannelTable::default();
        t.apply(&proposal(5_000, vec![item("a", "", 10)]));
        // A new leader whose clock is behind.
        let late = t.apply(&proposal(1_000, vec![item("a", "", 10)]));
        assert_eq!(late[0].published_at_ms, 5_000);
        assert_eq!(t.clock_ms(), 5_000);
    }

    #[test]
    fn idempotent_within_window_only() {
        let mut t = ChannelTable::default();
        let first = t.apply(&proposal(0, vec![item("a", "k", 10)]));
        let again = t.apply(&proposal(999, vec![item("a", "k", 10)]));
        assert!(again[0].duplicate);
        assert_eq!(again[0].offset, first[0].offset);
        // Same key on another channel is a different publication.
        let other = t.apply(&proposal(999, vec![item("b", "k", 10)]));
        assert!(!other[0].duplicate);
        let later = t.apply(&proposal(1000, vec![item("a", "k", 10)]));
        assert!(!later[0].duplicate);
        assert_eq!(later[0].offset, Offset(2));
    }

    #[test]
    fn history_window_and_positions() {
        let mut t = ChannelTable::default();
        for i in 0..10 {
            t.apply(&proposal(i, vec![item("a", "", 5)]));
        }
        let epoch = t.get("a").unwrap().epoch.clone();
        let page = t.history("a", None, 100, false, 0, 0);
        assert_eq!(page.first_offset, Offset(6));
        assert_eq!(page.publications.len(), 5);
        let s = |o| Since {
            offset: Offset(o),
            epoch: epoch.clone(),
        };
        assert!(t.history("a", Some(&s(5)), 100, false, 0, 0).in_window);
        assert_eq!(
            t.history("a", Some(&s(7)), 100, false, 0, 0).publications[0].offset,
            Offset(8)
        );
        assert!(!t.history("a", Some(&s(4)), 100, false, 0, 0).in_window);
        assert!(t.history("a", Some(&s(10)), 100, false, 0, 0).in_window);
        assert!(!t.history("a", Some(&s(11)), 100, false, 0, 0).in_window);
        let wrong = Since {
            offset: Offset(8),
            epoch: Epoch("other".into()),
        };
        assert!(!t.history("a", Some(&wrong), 100, false, 0, 0).in_window);
        let newest = t.history("a", None, 2, true, 0, 0);
        assert_eq!(
            newest
                .publications
                .iter()
                .map(|p| p.offset.0)
                .collect::<Vec<_>>(),
            vec![10, 9]
        );
        let newest_asc = t.history("a", None, 2, false, 0, 0);
        assert_eq!(
            newest_asc
                .publications
                .iter()
                .map(|p| p.offset.0)
                .collect::<Vec<_>>(),
            vec![9, 10]
        );
    }

    #[test]
    fn ttl_evicts_on_apply_and_hides_on_read() {
        let mut t = ChannelTable::default();
        let mut it = item("a", "", 100);
        it.history_ttl_ms = 10;
        t.apply(&proposal(0, vec![it.clone()]));
        t.apply(&proposal(5, vec![it.clone()]));
        assert_eq!(
            t.history("a", None, 10, false, 10, 12).publications.len(),
            1
        );
        t.apply(&proposal(20, vec![it]));
        assert_eq!(t.get("a").unwrap().history().len(), 1);
    }

    #[test]
    fn bump_changes_every_epoch_and_keeps_offsets_and_history() {
        let mut t = ChannelTable::default();
        t.apply(&proposal(1, vec![item("a", "k", 10), item("b", "", 10)]));
        t.apply(&proposal(2, vec![item("a", "", 10)]));
        let before = t.clone();
        let old = t.get("a").unwrap().epoch.clone();
        let changes = t.bump_epochs(77);
        assert_eq!(changes.len(), 2);
        for c in &changes {
            let was = before.get(&c.channel).unwrap();
            assert_eq!(c.old, was.epoch);
            assert_ne!(c.new, c.old);
            assert_eq!(c.offset, was.last_offset);
            let now = t.get(&c.channel).unwrap();
            assert_eq!(now.epoch, c.new);
            assert_eq!(now.last_offset, was.last_offset);
            assert!(now.history().eq(was.history()));
        }
        // A reader in the old epoch is told it cannot continue, even at the
        // newest offset; one in the new epoch continues.
        let stale = Since {
            offset: Offset(2),
            epoch: old,
        };
        assert!(!t.history("a", Some(&stale), 10, false, 0, 0).in_window);
        let fresh = Since {
            offset: Offset(1),
            epoch: t.get("a").unwrap().epoch.clone(),
        };
        let page = t.history("a", Some(&fresh), 10, false, 0, 0);
        assert!(page.in_window);
        assert_eq!(page.publications[0].offset, Offset(2));
        // The next publication continues the offsets in the new epoch, and
        // a retried publish answers the new epoch.
        let next = t.apply(&proposal(3, vec![item("a", "", 10), item("a", "k", 10)]));
        assert_eq!(next[0].offset, Offset(3));
        assert_eq!(next[0].epoch, t.get("a").unwrap().epoch);
        assert!(next[1].duplicate);
        assert_eq!(next[1].offset, Offset(1));
        assert_eq!(next[1].epoch, t.get("a").unwrap().epoch);
    }

    #[test]
    fn bump_never_keeps_an_epoch_even_on_a_hash_collision() {
        let mut t = ChannelTable::default();
        // A channel created with the very nonce the bump uses would derive
        // the same epoch again.
        t.apply(&Proposal {
            published_at_ms: 0,
            nonce: 5,
            idempotency_window_ms: 0,
            items: vec![item("a", "", 10)],
        });
        let old = t.get("a").unwrap().epoch.clone();
        let changes = t.bump_epochs(5);
        assert_ne!(changes[0].new, old);
    }

    proptest! {
        /// Replicas applying the same proposals and bumps hold the same
        /// state, and every bump changes the epoch of every channel and
        /// nothing else about it.
        #[test]
        fn bumps_are_deterministic_and_change_every_epoch(
            ops in proptest::collection::vec((0u8..5, 0u8..4), 1..100),
        ) {
            let mut a = ChannelTable::default();
            let mut b = ChannelTable::default();
            for (i, (op, ch)) in ops.iter().enumerate() {
                if *op == 0 {
                    let before = a.clone();
                    let changes = a.bump_epochs(i as u64);
                    prop_assert_eq!(changes, b.bump_epochs(i as u64));
                    prop_assert_eq!(a.len(), before.len());
                    for (name, ch) in a.iter() {
                        let was = before.get(name).unwrap();
                        prop_assert_ne!(&ch.epoch, &was.epoch);
                        prop_assert_eq!(ch.last_offset, was.last_offset);
                    }
                } else {
                    let p = proposal(i as i64, vec![item(&format!("c{ch}"), "", 10)]);
                    prop_assert_eq!(a.apply(&p), b.apply(&p));
                }
            }
            prop_assert_eq!(a, b);
        }

        /// Any sequence of proposals yields, per channel, contiguous offsets
        /// from 1, at most `size` retained, each idempotency key stored once.
        #[test]
        fn offsets_contiguous_and_keys_once(
            ops in proptest::collection::vec((0u8..4, 0u8..6, any::<bool>()), 1..200),
            size in 1u32..20,
        ) {
            let mut t = ChannelTable::default();
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            for (i, (ch, key, keyed)) in ops.iter().enumerate() {
                let channel = format!("c{ch}");
                let k = if *keyed { format!("k{key}") } else { String::new() };
                let dup_expected = *keyed && t.idempotency.seen.contains_key(&(channel.clone(), k.clone()));
                let out = t.apply(&Proposal {
                    published_at_ms: 0,
                    nonce: i as u64,
                    idempotency_window_ms: 1_000_000,
                    items: vec![item(&channel, &k, size)],
                });
                prop_assert_eq!(out[0].duplicate, dup_expected);
                if !dup_expected {
                    let n = model.entry(channel.clone()).or_default();
                    *n += 1;
                    prop_assert_eq!(out[0].offset, Offset(*n));
                }
            }
            for (name, ch) in t.iter() {
                let offsets: Vec<u64> = ch.history().map(|p| p.offset.0).collect();
                prop_assert!(offsets.len() <= size as usize);
                let last = model[name];
                let expect: Vec<u64> = ((last + 1 - offsets.len() as u64)..=last).collect();
                prop_assert_eq!(offsets, expect);
            }
        }
    }
}
