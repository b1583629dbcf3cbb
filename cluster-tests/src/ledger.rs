//! The history checker: the publisher's side of the story (which
//! publications were sent, which were acknowledged at which
//! `(epoch, offset)`), and the check of every node's history against that
//! record — guarantee 1 (acknowledged means durable on every replica) and
//! guarantee 5 (a retried publish is stored once).
//!
//! Each publication carries a unique id in its payload (`{"id":N}`), so a
//! duplicate in history is visible even if the node lost or rewrote the
//! idempotency key.
//!
//! A scenario ends with a [`crate::verdict::Verdict`] built from the ledger
//! and the violations found here.

use std::collections::{BTreeMap, BTreeSet};

use crate::Cluster;
use crate::client::PublishFailure;
use herald_proto::v1::{HistoryResponse, PublishRequest, PublishResponse};

/// An acknowledged publish as the publisher saw it.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The offset the node answered.
    pub offset: u64,
    /// The epoch the node answered.
    pub epoch: String,
}

/// Everything sent, by publication id.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Channel of every publication ever sent.
    sent: BTreeMap<u64, String>,
    acked: BTreeMap<u64, Ack>,
    failed: BTreeMap<u64, String>,
    /// Failures the protocol does not call safe to retry (a final answer,
    /// or a call broken by a node that was still there): never re-sent.
    final_failures: BTreeSet<u64>,
    /// Acknowledgements flagged `duplicate` (a retry found the original).
    pub duplicates: u64,
}

/// The request for publication `id` on `channel`: JSON payload with the id,
/// idempotency key derived from the id.
pub fn request(id: u64, channel: &str) -> PublishRequest {
    PublishRequest {
        channel: channel.to_string(),
        event_type: "tick".to_string(),
        data: format!("{{\"id\":{id}}}").into_bytes().into(),
        content_type: "application/json".to_string(),
        idempotency_key: format!("pub-{id}"),
        headers: Default::default(),
    }
}

/// The id in a payload made by [`request`].
pub fn payload_id(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data)
        .ok()?
        .strip_prefix("{\"id\":")?
        .strip_suffix('}')?
        .parse()
        .ok()
}

impl Ledger {
    /// Note that publication `id` is about to be sent to `channel`.
    pub fn sent(&mut self, id: u64, channel: &str) {
        self.sent.insert(id, channel.to_string());
    }

    /// Note the acknowledgement of publication `id` (after an earlier
    /// failure too: a later retry succeeded).
    pub fn acked(&mut self, id: u64, resp: &PublishResponse) {
        if resp.duplicate {
            self.duplicates += 1;
        }
        self.failed.remove(&id);
        self.acked.insert(
            id,
            Ack {
                offset: resp.offset,
                epoch: resp.epoch.clone(),
            },
        );
    }

    /// Note that publication `id` was never acknowledged.
    pub fn failed(&mut self, id: u64, why: String) {
        self.failed.insert(id, why);
    }

    /// Note how the publisher gave up on publication `id`: when the outcome
    /// is unknown ([`PublishFailure::outcome_unknown`]) it may be re-sent
    /// with its key once faults heal ([`Ledger::retryable`]); otherwise the
    /// failure is final, and stays a violation.
    pub fn record_failure(&mut self, id: u64, failure: &PublishFailure) {
        if !failure.outcome_unknown() {
            self.final_failures.insert(id);
        }
        self.failed(id, failure.to_string());
    }

    /// Publications never acknowledged whose outcome is unknown, with
    /// their channels: what a careful publisher re-sends with the same
    /// idempotency key once the faults healed.
    pub fn retryable(&self) -> Vec<(u64, String)> {
        self.unacknowledged()
            .into_iter()
            .filter(|(id, _)| !self.final_failures.contains(id))
            .collect()
    }

    /// How many publications were acknowledged.
    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    /// Unacknowledged publications with the last error of each (at most 10).
    pub fn failures(&self) -> (usize, Vec<(u64, String)>) {
        (
            self.failed.len(),
            self.failed
                .iter()
                .take(10)
                .map(|(id, e)| (*id, e.clone()))
                .collect(),
        )
    }

    /// How many publications were sent (acknowledged or not).
    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    /// Publications sent but never acknowledged, with their channels.
    pub fn unacknowledged(&self) -> Vec<(u64, String)> {
        self.sent
            .iter()
            .filter(|(id, _)| !self.acked.contains_key(id))
            .map(|(id, channel)| (*id, channel.clone()))
            .collect()
    }

    /// Whether publication `id` was acknowledged.
    pub fn is_acked(&self, id: u64) -> bool {
        self.acked.contains_key(&id)
    }

    /// The acknowledgement of publication `id`, if any.
    pub fn ack(&self, id: u64) -> Option<&Ack> {
        self.acked.get(&id)
    }

    /// The channel publication `id` was sent to, if it was sent.
    pub fn channel_of(&self, id: u64) -> Option<&str> {
        self.sent.get(&id).map(String::as_str)
    }

    /// The highest offset acknowledged on `channel`, if any was.
    pub fn newest_acked_offset(&self, channel: &str) -> Option<u64> {
        self.acked
            .iter()
            .filter(|(id, _)| self.channel_of(**id) == Some(channel))
            .map(|(_, ack)| ack.offset)
            .max()
    }

    /// Every channel that was sent to.
    pub fn channels(&self) -> BTreeSet<String> {
        self.sent.values().cloned().collect()
    }

    /// A restore from a backup rewound history: the acknowledgements of
    /// `ids` (publications acknowledged after the backup was taken) no
    /// longer hold. They stay sent, so a node holding one is not flagged
    /// as holding a publication never sent; whether they are gone is the
    /// scenario's to check.
    pub fn forget_acks(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.acked.remove(&id);
        }
    }

    /// A recovery or a restore gave channels new epochs (`changes`:
    /// channel -> (old, new)); offsets and history carried on. Carry every
    /// acknowledgement in a channel's old epoch into its new one, so that
    /// [`Ledger::check_channel`] checks the publication at its offset in the
    /// new epoch. Returns a violation for every change that kept its epoch,
    /// and for every acknowledgement of a changed channel in neither epoch
    /// (an epoch that came from nowhere, or a second change).
    pub fn carry_over_epochs(
        &mut self,
        changes: &BTreeMap<String, (String, String)>,
    ) -> Vec<String> {
        let mut bad = Vec::new();
        for (channel, (old, new)) in changes {
            if old == new {
                bad.push(format!("{channel}: epoch {old:?} did not change"));
            }
        }
        for (id, ack) in &mut self.acked {
            let Some(channel) = self.sent.get(id) else {
                continue;
            };
            let Some((old, new)) = changes.get(channel) else {
                continue;
            };
            if ack.epoch == *old {
                ack.epoch = new.clone();
            } else if ack.epoch != *new {
                bad.push(format!(
                    "{channel}: id {id} acknowledged in epoch {:?}, neither the old {old:?} nor the new {new:?}",
                    ack.epoch
                ));
            }
        }
        bad
    }

    /// Check one node's full history of `channel` against the ledger and
    /// return every violation found:
    /// * offsets are exactly `1..=n` in order (no gap, no reordering) and the
    ///   response's newest offset is `n`; one epoch throughout;
    /// * every publication is one this test sent to this channel, and none
    ///   appears twice (acknowledged or not);
    /// * every acknowledged publication is there, at its acknowledged offset
    ///   and epoch;
    /// * `published_at_ms` never decreases along the offsets (the log's
    ///   clock never runs backwards, even when a node's clock does).
    pub fn check_channel(
        &self,
        node: u64,
        channel: &str,
        history: &HistoryResponse,
    ) -> Vec<String> {
        let mut bad = Vec::new();
        let pubs = &history.publications;
        let offsets: Vec<u64> = pubs.iter().map(|p| p.offset).collect();
        let expected: Vec<u64> = (1..=pubs.len() as u64).collect();
        if offsets != expected {
            bad.push(format!(
                "node {node} {channel}: offsets are not 1..={}: {}",
                pubs.len(),
                runs(&offsets)
            ));
        }
        if history.offset != pubs.len() as u64 {
            bad.push(format!(
                "node {node} {channel}: newest offset {} but {} publications",
                history.offset,
                pubs.len()
            ));
        }
        for pair in pubs.windows(2) {
            if pair[1].published_at_ms < pair[0].published_at_ms {
                bad.push(format!(
                    "node {node} {channel}@{}: published_at_ms {} is earlier than {} at offset {}",
                    pair[1].offset,
                    pair[1].published_at_ms,
                    pair[0].published_at_ms,
                    pair[0].offset
                ));
            }
        }
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for p in pubs {
            if p.epoch != history.epoch {
                bad.push(format!(
                    "node {node} {channel}@{}: epoch {:?} != channel epoch {:?}",
                    p.offset, p.epoch, history.epoch
                ));
            }
            if p.channel != channel {
                bad.push(format!(
                    "node {node} {channel}@{}: publication names channel {:?}",
                    p.offset, p.channel
                ));
            }
            let Some(id) = payload_id(&p.data) else {
                bad.push(format!(
                    "node {node} {channel}@{}: payload {:?} is not ours",
                    p.offset, p.data
                ));
                continue;
            };
            match self.sent.get(&id) {
                None => bad.push(format!(
                    "node {node} {channel}@{}: id {id} was never sent",
                    p.offset
                )),
                Some(c) if c != channel => bad.push(format!(
                    "node {node} {channel}@{}: id {id} was sent to {c}",
                    p.offset
                )),
                Some(_) => {}
            }
            if let Some(first) = seen.insert(id, p.offset) {
                bad.push(format!(
                    "node {node} {channel}: id {id} stored twice, at offsets {first} and {}",
                    p.offset
                ));
            }
        }
        for (id, ack) in &self.acked {
            if self.sent.get(id).map(String::as_str) != Some(channel) {
                continue;
            }
            match seen.get(id) {
                None => bad.push(format!(
                    "node {node} {channel}: acknowledged id {id} (offset {}) is missing",
                    ack.offset
                )),
                Some(&at) if at != ack.offset => bad.push(format!(
                    "node {node} {channel}: acknowledged id {id} at offset {} but stored at {at}",
                    ack.offset
                )),
                Some(_) if ack.epoch != history.epoch => bad.push(format!(
                    "node {node} {channel}: id {id} acknowledged in epoch {:?}, channel epoch is {:?}",
                    ack.epoch, history.epoch
                )),
                Some(_) => {}
            }
        }
        bad
    }
}

/// `1..=5, 7, 9..=12`: a compact view of an offset sequence for messages.
fn runs(offsets: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < offsets.len() {
        let start = offsets[i];
        let mut j = i;
        while j + 1 < offsets.len() && offsets[j + 1] == offsets[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            start.to_string()
        } else {
            format!("{start}..={}", offsets[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// Fail the test with the first violations, if any.
pub fn assert_no_violations(what: &str, violations: &[String]) {
    if !violations.is_empty() {
        let shown: Vec<&str> = violations.iter().take(40).map(String::as_str).collect();
        panic!(
            "{what}: {} violation(s), first ones:\n  {}",
            violations.len(),
            shown.join("\n  ")
        );
    }
}

/// Node `node`'s local history of each of `channels` (at most `limit`
/// publications each), after the caller made sure it has applied everything.
///
/// # Panics
/// When a History call fails.
pub async fn histories(
    cluster: &Cluster,
    node: u64,
    channels: &BTreeSet<String>,
    limit: u32,
) -> BTreeMap<String, HistoryResponse> {
    let mut out = BTreeMap::new();
    for channel in channels {
        let h = cluster
            .history(node, channel, limit)
            .await
            .unwrap_or_else(|e| panic!("History({channel}) on node {node}: {e:?}"));
        out.insert(channel.clone(), h);
    }
    out
}

/// Every violation of `ledger` in every channel of one node's histories.
pub fn check_node(
    ledger: &Ledger,
    node: u64,
    histories: &BTreeMap<String, HistoryResponse>,
) -> Vec<String> {
    histories
        .iter()
        .flat_map(|(channel, h)| ledger.check_channel(node, channel, h))
        .collect()
}

/// Channels whose history differs between two nodes.
pub fn differing_channels(
    a: &BTreeMap<String, HistoryResponse>,
    b: &BTreeMap<String, HistoryResponse>,
) -> Vec<String> {
    a.keys()
        .chain(b.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|c| a.get(*c) != b.get(*c))
        .cloned()
        .collect()
}

/// After convergence: every node in `nodes` holds, for every channel of the
/// ledger, a history without violations, and all of them hold the same one.
pub async fn assert_every_node_agrees(
    cluster: &Cluster,
    ledger: &Ledger,
    nodes: &[u64],
    limit: u32,
) {
    let channels = ledger.channels();
    let mut reference: Option<(u64, BTreeMap<String, HistoryResponse>)> = None;
    for &id in nodes {
        let histories = histories(cluster, id, &channels, limit).await;
        assert_no_violations(&format!("node {id}"), &check_node(ledger, id, &histories));
        match &reference {
            None => reference = Some((id, histories)),
            Some((first, theirs)) => {
                let differ = differing_channels(theirs, &histories);
                assert!(
                    differ.is_empty(),
                    "nodes {first} and {id} disagree on the history of {differ:?}"
                );
            }
        }
    }
}

/// Every violation found by checking each node of `nodes` against the
/// ledger and the nodes against each other (as [`assert_every_node_agrees`]
/// does, without panicking). A History call that fails is a violation too.
pub async fn verify_every_node(
    cluster: &Cluster,
    ledger: &Ledger,
    nodes: &[u64],
    limit: u32,
) -> Vec<String> {
    let channels = ledger.channels();
    let mut bad = Vec::new();
    let mut reference: Option<(u64, BTreeMap<String, HistoryResponse>)> = None;
    for &id in nodes {
        let mut histories = BTreeMap::new();
        for channel in &channels {
            match cluster.history(id, channel, limit).await {
                Ok(h) => {
                    histories.insert(channel.clone(), h);
                }
                Err(e) => bad.push(format!(
                    "node {id}: History({channel}) failed: {:?} {}",
                    e.code(),
                    e.message()
                )),
            }
        }
        bad.extend(check_node(ledger, id, &histories));
        match &reference {
            None => reference = Some((id, histories)),
            Some((first, theirs)) => {
                for channel in differing_channels(theirs, &histories) {
                    bad.push(format!(
                        "nodes {first} and {id} hold different histories of {channel}"
                    ));
                }
            }
        }
    }
    bad
}

/// Liveness after the faults healed: every publish was acknowledged.
pub fn assert_all_acknowledged(ledger: &Ledger) {
    let (failed, examples) = ledger.failures();
    assert_eq!(
        failed, 0,
        "publishes never acknowledged (id, last error): {examples:#?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(ledger: &mut Ledger, id: u64, channel: &str, offset: u64, epoch: &str) {
        ledger.sent(id, channel);
        ledger.acked(
            id,
            &PublishResponse {
                offset,
                epoch: epoch.into(),
                ..Default::default()
            },
        );
    }

    fn changes(list: &[(&str, &str, &str)]) -> BTreeMap<String, (String, String)> {
        list.iter()
            .map(|(c, o, n)| (c.to_string(), (o.to_string(), n.to_string())))
            .collect()
    }

    /// The planted bug: a publish refused for good (or broken by a live
    /// node) would pass if re-sent after healing; it stays a failure.
    #[test]
    fn final_failures_are_never_offered_for_a_retry() {
        use tonic::Status;
        let mut ledger = Ledger::default();
        for id in 1..=3 {
            ledger.sent(id, "c");
        }
        let failure = |last: Status, timed_out| PublishFailure {
            last,
            attempts: 1,
            timed_out,
        };
        ledger.record_failure(1, &failure(Status::unavailable("no leader"), true));
        ledger.record_failure(2, &failure(Status::unknown("stream reset"), false));
        assert_eq!(
            ledger.retryable(),
            vec![(1, "c".to_string()), (3, "c".to_string())]
        );
        assert_eq!(ledger.failures().0, 2);
    }

    #[test]
    fn acknowledgements_in_the_old_epoch_are_carried_into_the_new() {
        let mut ledger = Ledger::default();
        ack(&mut ledger, 1, "a", 1, "old");
        ack(&mut ledger, 2, "a", 2, "new");
        ack(&mut ledger, 3, "b", 1, "other");
        let bad = ledger.carry_over_epochs(&changes(&[("a", "old", "new")]));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ledger.ack(1).unwrap().epoch, "new");
        assert_eq!(ledger.ack(3).unwrap().epoch, "other");
    }

    /// The planted bugs: an epoch that did not change, and an
    /// acknowledgement in a third epoch (a second, unexplained change).
    #[test]
    fn unchanged_and_unexplained_epochs_are_caught() {
        let mut ledger = Ledger::default();
        ack(&mut ledger, 1, "a", 1, "old");
        ack(&mut ledger, 2, "a", 2, "third");
        let bad = ledger.carry_over_epochs(&changes(&[("a", "old", "new"), ("b", "x", "x")]));
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad.iter().any(|v| v.contains("\"x\" did not change")));
        assert!(
            bad.iter()
                .any(|v| v.contains("id 2") && v.contains("third"))
        );
    }
}
