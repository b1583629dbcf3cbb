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
//! An epoch changes in exactly two ways: a channel begins a new life (it is
//! published to while it holds no state), or a recovery or restore gives
//! every channel a new one ([`ChannelTable::bump_epochs`]) because
//! continuity with what clients saw can no longer be proved. Offsets and
//! history carry on across a bump; only a reader's old `(epoch, offset)`
//! stops being continuous.
//!
//! State is reclaimed by a [`Sweep`]: a replicated command carrying the
//! leader's time and every namespace's TTL, which drops expired
//! publications and forgets channels that have nothing left. A forgotten
//! channel is not remembered, so what keeps a reader from recovering across
//! the reset is the epoch its next life gets: each life's epoch names a
//! *life number*, the count of forgets in the channel's bucket (a fixed
//! number of buckets by name hash, so this memory is bounded). A channel
//! that holds no state answers readers with the epoch its next life will
//! have ([`ChannelTable::next_epoch`]) at offset 0, so a reader that saw it
//! empty continues into that life, and into no later one: forgetting the
//! channel (or any other in its bucket) moves its next epoch on. Two lives
//! of one channel never share an epoch, because their life numbers differ.

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

/// FNV-1a: deterministic on every replica and every platform.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Epoch {
    /// The epoch of life number `life` of `channel` under `salt`: a hash
    /// (so epochs from another cluster or before a restore, whose salt
    /// differs, do not match) followed by the life number itself (so two
    /// lives of one channel never share an epoch).
    fn of_life(salt: u64, channel: &str, life: u64) -> Self {
        let h = fnv(&[&salt.to_le_bytes(), &life.to_le_bytes(), channel.as_bytes()]);
        Epoch(format!("{:08x}-{life}", (h >> 32) as u32))
    }
}

/// How many buckets of life numbers the table keeps: forgetting a channel
/// moves the next epoch of every channel in its bucket, so more buckets
/// mean fewer readers of never-published channels told they cannot
/// recover for nothing, at a few bytes per bucket in every snapshot.
const LIFE_BUCKETS: u64 = 4096;

/// The key of [`ChannelTable::lives`] counting bumps (no bucket uses it).
const BUMPS: u16 = u16::MAX;

fn bucket(channel: &str) -> u16 {
    (fnv(&[channel.as_bytes()]) % LIFE_BUCKETS) as u16
}

/// The namespace a channel name belongs to (`default` without a colon).
pub fn namespace_of(channel: &str) -> &str {
    channel
        .split_once(':')
        .map_or(crate::namespace::DEFAULT_NAMESPACE, |(ns, _)| ns)
}

/// The replicated reclaim command: drop publications older than their
/// namespace's TTL and forget channels with nothing left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sweep {
    /// Leader's clock (Unix ms) when it proposed.
    pub now_ms: i64,
    /// History TTL in ms of every namespace that has one; channels of
    /// other namespaces are kept forever.
    pub ttls: BTreeMap<String, u64>,
}

/// What applying a [`Sweep`] reclaimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Publications dropped.
    pub publications: usize,
    /// Channels forgotten.
    pub channels: usize,
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
    /// Random per proposal; the first one applied salts every epoch of
    /// the cluster ([`Epoch::of_life`]).
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
    /// Forgets per bucket of channel names (absent: none), and bumps under
    /// [`BUMPS`].
    lives: BTreeMap<u16, u64>,
    /// Mixed into every epoch: set by the first proposal, changed by every
    /// bump.
    salt: u64,
}

/// [`ChannelTable`] as versions without sweeps wrote it in snapshots.
#[derive(Deserialize)]
pub(crate) struct ChannelTableV2 {
    channels: BTreeMap<String, Channel>,
    idempotency: IdempotencyWindow,
    clock_ms: i64,
}

impl From<ChannelTableV2> for ChannelTable {
    fn from(v: ChannelTableV2) -> Self {
        Self {
            channels: v.channels,
            idempotency: v.idempotency,
            clock_ms: v.clock_ms,
            lives: BTreeMap::new(),
            salt: 0,
        }
    }
}

impl ChannelTable {
    /// Apply one committed proposal; one [`Accepted`] per item, in order.
    pub fn apply(&mut self, p: &Proposal) -> Vec<Accepted> {
        let now = p.published_at_ms.max(self.clock_ms);
        self.clock_ms = now;
        self.idempotency.expire(now);
        if self.salt == 0 {
            self.salt = p.nonce.max(1);
        }
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
            if !self.channels.contains_key(&item.channel) {
                let epoch = self.next_epoch(&item.channel);
                self.channels
                    .insert(item.channel.clone(), Channel::new(epoch));
            }
            let channel = self
                .channels
                .get_mut(&item.channel)
                .expect("inserted above");
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

    /// Give every channel a new epoch (never its current one), keeping
    /// offsets and history, and answer retried publishes still in the
    /// idempotency window with the new epoch. `nonce` changes the salt, so
    /// channels that hold no state get new next epochs too. A reader
    /// positioned in an old epoch is no longer continuous ([`Self::history`]
    /// answers `in_window: false`), so a client is told it may have missed
    /// something instead of being silently rewound.
    pub fn bump_epochs(&mut self, nonce: u64) -> Vec<EpochChange> {
        self.salt = fnv(&[&self.salt.to_le_bytes(), &nonce.to_le_bytes()]).max(1);
        *self.lives.entry(BUMPS).or_default() += 1;
        let mut changes = Vec::with_capacity(self.channels.len());
        for (name, channel) in &mut self.channels {
            let life = self.lives.get(&bucket(name)).copied().unwrap_or(0);
            let mut salt = self.salt;
            let mut new = Epoch::of_life(salt, name, life);
            while new == channel.epoch {
                salt = salt.wrapping_add(1);
                new = Epoch::of_life(salt, name, life);
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

    /// The epoch `channel` has, or, if it holds no state, the epoch its
    /// next life will have: what a reader of an empty channel is positioned
    /// in (at offset 0).
    pub fn next_epoch(&self, channel: &str) -> Epoch {
        if let Some(c) = self.channels.get(channel) {
            return c.epoch.clone();
        }
        if self.salt == 0 {
            // Nothing was ever published in this cluster: the next epoch is
            // not known yet (the first proposal salts it).
            return Epoch::default();
        }
        let life = self.lives.get(&bucket(channel)).copied().unwrap_or(0);
        Epoch::of_life(self.salt, channel, life)
    }

    /// Whether the channel's current life is the first in this cluster's
    /// history and was never bumped: only then is offset 0 of no epoch
    /// (the position of a reader that saw the cluster before anything was
    /// published) continuous with it.
    fn first_life_everywhere(&self) -> bool {
        self.lives.is_empty()
    }

    /// Apply a committed [`Sweep`]: in every namespace with a TTL, drop the
    /// publications older than `now - ttl` and forget each channel left
    /// with no publication whose newest one is that old too. Time never
    /// goes backwards (the sweep's time is at least the log's clock), and
    /// idempotency keys past their window are dropped as on a publish.
    pub fn sweep(&mut self, s: &Sweep) -> Swept {
        let now = s.now_ms.max(self.clock_ms);
        self.clock_ms = now;
        self.idempotency.expire(now);
        let mut swept = Swept::default();
        let mut forgotten = Vec::new();
        for (name, channel) in &mut self.channels {
            let Some(cutoff) = Self::cutoff(&s.ttls, name, now) else {
                continue;
            };
            let before = channel.history.len();
            while channel
                .history
                .front()
                .is_some_and(|p| p.published_at_ms < cutoff)
            {
                channel.history.pop_front();
            }
            swept.publications += before - channel.history.len();
            if channel.history.is_empty() && channel.last_published_at_ms < cutoff {
                forgotten.push(name.clone());
            }
        }
        for name in forgotten {
            self.channels.remove(&name);
            *self.lives.entry(bucket(&name)).or_default() += 1;
            swept.channels += 1;
        }
        swept
    }

    /// Whether a [`Sweep`] at `now_ms` with `ttls` would reclaim anything:
    /// the leader proposes one only then.
    pub fn sweepable(&self, ttls: &BTreeMap<String, u64>, now_ms: i64) -> bool {
        let now = now_ms.max(self.clock_ms);
        self.channels.iter().any(|(name, c)| {
            Self::cutoff(ttls, name, now).is_some_and(|cutoff| {
                c.last_published_at_ms < cutoff
                    || c.history
                        .front()
                        .is_some_and(|p| p.published_at_ms < cutoff)
            })
        })
    }

    /// Publications retained over every channel.
    pub fn retained(&self) -> usize {
        self.channels.values().map(|c| c.history.len()).sum()
    }

    fn cutoff(ttls: &BTreeMap<String, u64>, channel: &str, now: i64) -> Option<i64> {
        let ttl = *ttls.get(namespace_of(channel))?;
        (ttl > 0).then(|| now.saturating_sub(i64::try_from(ttl).unwrap_or(i64::MAX)))
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
            // A channel with no state: the reader is positioned at offset 0
            // of its next life. Only a reader already there (it saw the
            // channel empty, and no life began and was forgotten since) has
            // missed nothing.
            let next = self.next_epoch(channel);
            let in_window = since.is_none_or(|s| {
                s.offset.0 == 0
                    && (s.epoch == next || (s.epoch.0.is_empty() && self.first_life_everywhere()))
            });
            return HistoryPage {
                publications: vec![],
                epoch: next,
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
            // Offset 0 of no epoch: the reader saw the cluster before
            // anything was published (or a version without sweeps saw the
            // channel empty). Continuous only while no channel was ever
            // forgotten or bumped, so this life is surely the first.
            // Any other epoch: since then the channel may have lived and
            // been forgotten, or been reset.
            Some(s)
                if s.epoch != ch.epoch
                    && !(s.epoch.0.is_empty()
                        && s.offset.0 == 0
                        && self.first_life_everywhere()) =>
            {
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
    fn sweep_at(now_ms: i64, ttl_ms: u64) -> Sweep {
        Sweep {
            now_ms,
            ttls: [("brief".to_string(), ttl_ms)].into_iter().collect(),
        }
    }

    fn ttl_item(channel: &str) -> NewPublication {
        let mut it = item(channel, "", 100);
        it.history_ttl_ms = 1_000;
        it
    }

    #[test]
    fn sweep_drops_expired_and_forgets_empty_channels_of_ttl_namespaces_only() {
        let mut t = ChannelTable::default();
        t.apply(&proposal(
            0,
            vec![
                ttl_item("brief:a"),
                ttl_item("brief:b"),
                item("keep", "", 10),
            ],
        ));
        t.apply(&proposal(800, vec![ttl_item("brief:a")]));
        assert!(!t.sweepable(&sweep_at(900, 1_000).ttls, 900));
        let s = sweep_at(1_500, 1_000);
        assert!(t.sweepable(&s.ttls, s.now_ms));
        let swept = t.sweep(&s);
        assert_eq!(
            swept,
            Swept {
                publications: 2,
                channels: 1
            }
        );
        assert!(t.get("brief:b").is_none(), "nothing left: forgotten");
        let a = t.get("brief:a").unwrap();
        assert_eq!((a.last_offset, a.history().len()), (Offset(2), 1));
        assert!(t.get("keep").is_some(), "a namespace without TTL keeps it");
        assert!(!t.sweepable(&s.ttls, s.now_ms), "nothing left to sweep");
        assert_eq!(t.retained(), 2);
        // The sweep's time is the log's clock from now on.
        assert_eq!(t.clock_ms(), 1_500);
    }

    #[test]
    fn a_forgotten_channel_comes_back_in_a_new_epoch_no_old_reader_continues_into() {
        let mut t = ChannelTable::default();
        // The cluster's first proposal salts its epochs.
        t.apply(&proposal(0, vec![item("other", "", 10)]));
        // A reader that saw the channel before its first publication.
        let empty = t.history("brief:a", None, 10, false, 0, 0);
        assert_eq!(empty.offset, Offset(0));
        assert!(!empty.epoch.0.is_empty());
        let at_start = Since {
            offset: Offset(0),
            epoch: empty.epoch.clone(),
        };
        let first = t.apply(&proposal(0, vec![ttl_item("brief:a"), ttl_item("brief:a")]));
        // The first life has the epoch the empty channel announced.
        assert_eq!(first[0].epoch, empty.epoch);
        assert!(
            t.history("brief:a", Some(&at_start), 10, false, 0, 0)
                .in_window
        );
        let old = Since {
            offset: Offset(2),
            epoch: first[1].epoch.clone(),
        };
        t.sweep(&sweep_at(5_000, 1_000));
        assert!(t.get("brief:a").is_none());
        // Forgotten: neither reader is continuous, the empty channel
        // announces another epoch.
        let gone = t.history("brief:a", Some(&old), 10, false, 0, 0);
        assert!(!gone.in_window);
        assert_ne!(gone.epoch, first[0].epoch);
        assert!(
            !t.history("brief:a", Some(&at_start), 10, false, 0, 0)
                .in_window
        );
        let second = t.apply(&proposal(6_000, vec![ttl_item("brief:a")]));
        assert_eq!(second[0].offset, Offset(1));
        assert_eq!(second[0].epoch, gone.epoch);
        assert_ne!(second[0].epoch, first[0].epoch);
        for since in [&old, &at_start] {
            let page = t.history("brief:a", Some(since), 10, false, 0, 0);
            assert!(!page.in_window, "{since:?} recovered across a reset");
            assert!(page.publications.is_empty());
        }
        // Offset 0 of no epoch (a reader that saw the cluster before its
        // first publication, or a version without sweeps): continuous only
        // while nothing was ever forgotten or bumped.
        let legacy = Since {
            offset: Offset(0),
            epoch: Epoch::default(),
        };
        assert!(
            !t.history("brief:a", Some(&legacy), 10, false, 0, 0)
                .in_window
        );
        let mut fresh = ChannelTable::default();
        assert_eq!(fresh.next_epoch("a"), Epoch::default());
        fresh.apply(&proposal(0, vec![item("a", "", 10)]));
        assert!(fresh.history("a", Some(&legacy), 10, false, 0, 0).in_window);
        fresh.bump_epochs(1);
        assert!(!fresh.history("a", Some(&legacy), 10, false, 0, 0).in_window);
    }

    #[test]
    fn snapshots_of_the_version_before_sweeps_still_decode() {
        #[derive(Serialize)]
        struct Old<'a> {
            channels: &'a BTreeMap<String, Channel>,
            idempotency: &'a IdempotencyWindow,
            clock_ms: i64,
        }
        let mut t = ChannelTable::default();
        t.apply(&proposal(3, vec![item("a", "k", 10)]));
        let bytes = postcard::to_stdvec(&Old {
            channels: &t.channels,
            idempotency: &t.idempotency,
            clock_ms: t.clock_ms,
        })
        .unwrap();
        let back: ChannelTable = postcard::from_bytes::<ChannelTableV2>(&bytes)
            .unwrap()
            .into();
        assert_eq!(back.channels, t.channels);
        assert_eq!(back.clock_ms, 3);
    }

    proptest! {
        /// Replicas applying the same publishes, sweeps and bumps hold the
        /// same state; a channel that survives a sweep keeps its epoch and
        /// offset; two lives of a channel never share an epoch; and no
        /// position a reader ever held (including offset 0 of an empty
        /// channel) is continuous after its channel was forgotten.
        #[test]
        fn sweeps_are_deterministic_and_never_let_a_reader_across_a_reset(
            ops in proptest::collection::vec((0u8..8, 0u8..5), 1..150),
        ) {
            let mut a = ChannelTable::default();
            let mut b = ChannelTable::default();
            let mut now = 0i64;
            // Every epoch each channel ever had.
            let mut epochs: BTreeMap<String, Vec<Epoch>> = BTreeMap::new();
            // Positions readers held: (channel, position, forgets of the
            // channel when it was held).
            let mut readers: Vec<(String, Since, u32)> = Vec::new();
            let mut forgets: BTreeMap<String, u32> = BTreeMap::new();
            for (i, (op, ch)) in ops.iter().enumerate() {
                let name = format!("brief:c{ch}");
                now += 150;
                match op {
                    0 => {
                        let before = a.clone();
                        let s = sweep_at(now, 1_000);
                        prop_assert_eq!(a.sweepable(&s.ttls, now), before.clone().sweep(&s) != Swept::default());
                        prop_assert_eq!(a.sweep(&s), b.sweep(&s));
                        for (n, was) in before.iter() {
                            match a.get(n) {
                                Some(c) => {
                                    prop_assert_eq!(&c.epoch, &was.epoch);
                                    prop_assert_eq!(c.last_offset, was.last_offset);
                                }
                                None => *forgets.entry(n.clone()).or_default() += 1,
                            }
                        }
                    }
                    1 if i % 7 == 0 => {
                        prop_assert_eq!(a.bump_epochs(i as u64), b.bump_epochs(i as u64));
                        // A bump is a reset too.
                        for n in a.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>() {
                            *forgets.entry(n).or_default() += 1;
                        }
                    }
                    _ => {
                        let p = Proposal {
                            published_at_ms: now,
                            nonce: i as u64,
                            idempotency_window_ms: 500,
                            items: vec![ttl_item(&name)],
                        };
                        let was = a.get(&name).map(|c| (c.epoch.clone(), c.last_offset));
                        let out = a.apply(&p);
                        prop_assert_eq!(&out, &b.apply(&p));
                        match was {
                            Some((e, o)) if e == out[0].epoch => {
                                prop_assert_eq!(out[0].offset, Offset(o.0 + 1));
                            }
                            _ => {
                                let seen = epochs.entry(name.clone()).or_default();
                                prop_assert!(!seen.contains(&out[0].epoch), "epoch re-used");
                                seen.push(out[0].epoch.clone());
                            }
                        }
                    }
                }
                for (n, c) in a.iter() {
                    let seen = epochs.entry(n.clone()).or_default();
                    if !seen.contains(&c.epoch) {
                        seen.push(c.epoch.clone());
                    }
                }
                // Every reader positions itself where a history read says.
                let page = a.history(&name, None, 10, false, 0, now);
                readers.push((
                    name.clone(),
                    Since { offset: page.offset, epoch: page.epoch },
                    forgets.get(&name).copied().unwrap_or(0),
                ));
                for (n, since, held_at) in &readers {
                    if forgets.get(n).copied().unwrap_or(0) != *held_at {
                        let page = a.history(n, Some(since), 10, false, 0, now);
                        prop_assert!(!page.in_window, "{n} {since:?} continued across a reset");
                    }
                }
            }
            prop_assert_eq!(a, b);
        }
    }
}
