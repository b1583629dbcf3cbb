//! Offline repair of a voter's data dir, for when Raft cannot help: a lost
//! quorum (a majority of voters destroyed) and a restore from a backup copy.
//!
//! `herald-node inspect` prints what a stopped node's data dir holds (its
//! last log id above all: the survivor with the highest one has the longest
//! log). `herald-node recover` turns a stopped voter's data dir into a
//! one-node cluster that keeps every entry it had, committed or not: it
//! appends, after the last entry and under a term above any it has seen, a
//! membership with only this node as voter and a [`Command::BumpEpochs`],
//! and stores a committed vote for itself in that term, so that on start
//! openraft restores it as leader at once and commits everything. Every
//! channel's epoch then changes, because continuity with what clients saw
//! (acknowledged by a quorum that is gone, or published after the backup)
//! cannot be proved; offsets and history carry on.
//!
//! It never runs next to a live node: the database is locked by the node
//! that has it open, and opening it here fails. The decision of what to
//! write ([`plan`]) is pure; the rest only reads and writes the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, StoredMembership,
    Vote,
};

use crate::channels::{ChannelTable, EpochChange};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Command, NodeInfo, TypeConfig};

/// The database file inside a data dir.
const DATABASE: &str = "herald.redb";
/// Log entries replayed per read.
const REPLAY_CHUNK: u64 = 1024;

/// Why a data dir cannot be inspected or recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// No database in the data dir.
    #[error("no Herald database at {0}")]
    Missing(PathBuf),
    /// A running node holds the database.
    #[error("{0} is in use by a running node; stop it first")]
    InUse(PathBuf),
    /// The database could not be opened or read.
    #[error("{0}")]
    Store(String),
    /// The log holds nothing to recover.
    #[error("the data dir holds no log entry: this node never joined a cluster")]
    Empty,
    /// This id is not a voter of the membership the data dir holds.
    #[error("node {id} is not a voter in the stored membership (voters: {voters:?}); check --id")]
    NotAVoter {
        /// The id asked for.
        id: u64,
        /// The stored voters.
        voters: BTreeSet<u64>,
    },
}

fn store_error(e: impl std::fmt::Display) -> RecoveryError {
    RecoveryError::Store(e.to_string())
}

/// What a data dir holds, as far as choosing a survivor needs.
#[derive(Debug, Clone)]
pub struct DataDirState {
    /// The newest log entry's id (Raft's "most up-to-date" compares term,
    /// then index).
    pub last_log_id: Option<LogId<u64>>,
    /// Newest entry compacted into the snapshot.
    pub last_purged: Option<LogId<u64>>,
    /// The newest commit index this node learned (may lag the cluster's).
    pub committed: Option<LogId<u64>>,
    /// The stored vote.
    pub vote: Vote<u64>,
    /// The membership of the newest entry (committed or not).
    pub membership: Membership<u64, NodeInfo>,
    /// Channels after applying every entry.
    pub channels: ChannelTable,
}

/// What [`recover`] wrote.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The state before.
    pub before: DataDirState,
    /// Entries kept in the log (every one it had).
    pub entries_kept: u64,
    /// The appended entries.
    pub appended: Vec<LogId<u64>>,
    /// The stored vote.
    pub vote: Vote<u64>,
    /// Voters and learners dropped from the membership.
    pub dropped: BTreeSet<u64>,
    /// Every channel's epoch change, as the cluster will apply it.
    pub epochs: Vec<EpochChange>,
    /// The data dir's new incarnation.
    pub incarnation: u64,
}

/// The entries and vote that make `id` a one-node cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Appended after the last entry: membership, then the epoch bump.
    pub entries: Vec<Entry<TypeConfig>>,
    /// A committed vote of `id` for itself in the new term.
    pub vote: Vote<u64>,
}

/// Decide what to append: a term above every term seen (in the vote and
/// the log), a uniform membership of `id` alone (its stored [`NodeInfo`]
/// under the new `incarnation`), and an epoch bump seeded by `nonce`.
pub fn plan(
    id: u64,
    last_log_id: Option<LogId<u64>>,
    vote: &Vote<u64>,
    membership: &Membership<u64, NodeInfo>,
    nonce: u64,
    incarnation: u64,
) -> Result<Plan, RecoveryError> {
    let last = last_log_id.ok_or(RecoveryError::Empty)?;
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let info = match membership.get_node(&id) {
        Some(info) if voters.contains(&id) => NodeInfo {
            incarnation,
            ..info.clone()
        },
        _ => return Err(RecoveryError::NotAVoter { id, voters }),
    };
    let term = vote.leader_id().term.max(last.leader_id.term) + 1;
    let leader = CommittedLeaderId::new(term, id);
    let alone = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, info)]));
    let entries = vec![
        Entry {
            log_id: LogId::new(leader, last.index + 1),
            payload: EntryPayload::Membership(alone),
        },
        Entry {
            log_id: LogId::new(leader, last.index + 2),
            payload: EntryPayload::Normal(Command::BumpEpochs { nonce }),
        },
    ];
    Ok(Plan {
        entries,
        vote: Vote::new_committed(term, id),
    })
}

/// Open a stopped node's database (never creating one).
fn open(data_dir: &Path) -> Result<Arc<redb::Database>, RecoveryError> {
    let path = data_dir.join(DATABASE);
    if !path.is_file() {
        return Err(RecoveryError::Missing(path));
    }
    match redb::Database::open(&path) {
        Ok(db) => Ok(Arc::new(db)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(RecoveryError::InUse(path)),
        Err(e) => Err(RecoveryError::Store(format!(
            "opening {}: {e}",
            path.display()
        ))),
    }
}

/// Read the log state and replay every entry (committed or not) onto the
/// snapshot, as the node would once all of them are committed.
async fn read(db: Arc<redb::Database>) -> Result<(LogStore, DataDirState), RecoveryError> {
    let mut log =
        LogStore::open(db.clone(), crate::disk::DiskHealth::default()).map_err(store_error)?;
    let mut sm = StateMachine::open(db).map_err(store_error)?;
    let state = log.get_log_state().await.map_err(store_error)?;
    let vote = log
        .read_vote()
        .await
        .map_err(store_error)?
        .unwrap_or_default();
    let committed = log.read_committed().await.map_err(store_error)?;
    let (applied, _) = sm.applied_state().await.map_err(store_error)?;
    let last = state.last_log_id.map_or(0, |l| l.index);
    let mut next = applied.map_or(0, |l| l.index + 1);
    while next <= last {
        let to = (next + REPLAY_CHUNK).min(last + 1);
        let entries = log
            .try_get_log_entries(next..to)
            .await
            .map_err(store_error)?;
        sm.apply(entries).await.map_err(store_error)?;
        next = to;
    }
    let (membership, channels) = {
        let shared = sm.state();
        let s = shared.read().expect("state lock poisoned");
        let m: &StoredMembership<u64, NodeInfo> = &s.membership;
        (m.membership().clone(), s.channels.clone())
    };
    Ok((
        log,
        DataDirState {
            last_log_id: state.last_log_id,
            last_purged: state.last_purged_log_id,
            committed,
            vote,
            membership,
            channels,
        },
    ))
}

/// What a stopped node's data dir holds. Changes nothing in it.
pub async fn inspect(data_dir: &Path) -> Result<DataDirState, RecoveryError> {
    let db = open(data_dir)?;
    Ok(read(db).await?.1)
}

/// Turn a stopped voter's data dir into a one-node cluster of `id` (see
/// the module doc). `nonce` seeds the new epochs.
pub async fn recover(data_dir: &Path, id: u64, nonce: u64) -> Result<Recovered, RecoveryError> {
    let db = open(data_dir)?;
    let (log, before) = read(db).await?;
    // A new incarnation (see `LogStore::incarnation`): peers that still
    // hold the old membership (a destroyed voter started again with its old
    // data by mistake) cannot reach this node as the member it was.
    let incarnation = rand::random_range(1..u64::MAX);
    let plan = plan(
        id,
        before.last_log_id,
        &before.vote,
        &before.membership,
        nonce,
        incarnation,
    )?;
    log.append_with_vote(&plan.entries, &plan.vote, incarnation)
        .map_err(store_error)?;
    let mut channels = before.channels.clone();
    let epochs = channels.bump_epochs(nonce);
    let dropped = before
        .membership
        .nodes()
        .map(|(n, _)| *n)
        .filter(|n| *n != id)
        .collect();
    Ok(Recovered {
        incarnation,
        entries_kept: log.len() - plan.entries.len() as u64,
        appended: plan.entries.iter().map(|e| e.log_id).collect(),
        vote: plan.vote,
        dropped,
        epochs,
        before,
    })
}

fn show(id: Option<LogId<u64>>) -> String {
    match id {
        Some(l) => format!("term={} index={}", l.leader_id.term, l.index),
        None => "none".into(),
    }
}

impl std::fmt::Display for DataDirState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let voters: Vec<u64> = self.membership.voter_ids().collect();
        let learners: Vec<u64> = self.membership.learner_ids().collect();
        writeln!(f, "last_log_id {}", show(self.last_log_id))?;
        writeln!(f, "last_purged {}", show(self.last_purged))?;
        writeln!(f, "committed {}", show(self.committed))?;
        writeln!(
            f,
            "vote term={} node={} committed={}",
            self.vote.leader_id().term,
            self.vote.leader_id().voted_for().unwrap_or(0),
            self.vote.is_committed()
        )?;
        writeln!(f, "voters {voters:?}")?;
        writeln!(f, "learners {learners:?}")?;
        write!(f, "channels {}", self.channels.len())
    }
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "before:")?;
        for line in self.before.to_string().lines() {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "entries_kept {}", self.entries_kept)?;
        for id in &self.appended {
            writeln!(f, "appended {}", show(Some(*id)))?;
        }
        writeln!(
            f,
            "vote term={} node={} committed=true",
            self.vote.leader_id().term,
            self.vote.leader_id().voted_for().unwrap_or(0)
        )?;
        writeln!(f, "dropped_members {:?}", self.dropped)?;
        writeln!(f, "incarnation {}", self.incarnation)?;
        for c in &self.epochs {
            writeln!(
                f,
                "epoch {} {} -> {} at offset {}",
                c.channel, c.old.0, c.new.0, c.offset.0
            )?;
        }
        write!(f, "epochs_changed {}", self.epochs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Only the address matters here; whatever else a node's info holds
    // keeps its default, however many fields it grows.
    #[allow(clippy::field_reassign_with_default)]
    fn members(ids: &[u64]) -> Membership<u64, NodeInfo> {
        let nodes: BTreeMap<u64, NodeInfo> = ids
            .iter()
            .map(|i| {
                let mut info = NodeInfo::default();
                info.grpc_addr = format!("n{i}:7100");
                (*i, info)
            })
            .collect();
        Membership::new(vec![ids.iter().copied().collect()], nodes)
    }

    #[test]
    fn plan_appends_after_the_last_entry_under_a_higher_term() {
        let last = LogId::new(CommittedLeaderId::new(4, 1), 120);
        // A vote for a newer term than the log's (an election was under way).
        let vote = Vote::new(6, 3);
        let p = plan(2, Some(last), &vote, &members(&[1, 2, 3]), 9, 77).unwrap();
        assert_eq!(p.vote, Vote::new_committed(7, 2));
        assert_eq!(
            p.entries[0].log_id,
            LogId::new(CommittedLeaderId::new(7, 2), 121)
        );
        assert_eq!(
            p.entries[1].log_id,
            LogId::new(CommittedLeaderId::new(7, 2), 122)
        );
        let EntryPayload::Membership(m) = &p.entries[0].payload else {
            panic!("first entry is not a membership: {:?}", p.entries[0]);
        };
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![2]);
        let expected = NodeInfo {
            incarnation: 77,
            ..members(&[2]).get_node(&2).cloned().unwrap()
        };
        assert_eq!(m.get_node(&2), Some(&expected));
        assert_eq!(
            p.entries[1].payload,
            EntryPayload::Normal(Command::BumpEpochs { nonce: 9 })
        );
    }

    #[test]
    fn plan_refuses_an_empty_log_and_a_non_voter() {
        let vote = Vote::default();
        assert!(matches!(
            plan(1, None, &vote, &members(&[1]), 0, 77),
            Err(RecoveryError::Empty)
        ));
        let last = Some(LogId::new(CommittedLeaderId::new(1, 1), 3));
        assert!(matches!(
            plan(4, last, &vote, &members(&[1, 2, 3]), 0, 77),
            Err(RecoveryError::NotAVoter { id: 4, .. })
        ));
    }

    fn publish(channel: &str) -> Command {
        Command::Publish(crate::channels::Proposal {
            published_at_ms: 1,
            nonce: 1,
            idempotency_window_ms: 0,
            items: vec![crate::channels::NewPublication {
                channel: channel.into(),
                event_type: "e".into(),
                data: bytes::Bytes::from_static(b"{}"),
                content_type: "application/json".into(),
                idempotency_key: String::new(),
                headers: BTreeMap::new(),
                history_size: 10,
                history_ttl_ms: 0,
            }],
        })
    }

    /// The whole offline path on a real database: refused while open,
    /// then every entry kept, the new entries after them, and what the
    /// node will see on start (one voter, new epochs) visible to inspect.
    #[tokio::test]
    async fn recover_keeps_every_entry_and_refuses_an_open_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join(DATABASE)).unwrap());
        let log = LogStore::open(db.clone(), crate::disk::DiskHealth::default()).unwrap();
        let leader = CommittedLeaderId::new(3, 1);
        let entries = vec![
            Entry {
                log_id: LogId::new(leader, 1),
                payload: EntryPayload::Membership(members(&[1, 2, 3])),
            },
            Entry {
                log_id: LogId::new(leader, 2),
                payload: EntryPayload::Normal(publish("a")),
            },
            Entry {
                log_id: LogId::new(leader, 3),
                payload: EntryPayload::Normal(publish("a")),
            },
        ];
        log.append_with_vote(&entries, &Vote::new_committed(3, 1), 5)
            .unwrap();
        assert!(matches!(
            recover(dir.path(), 2, 7).await,
            Err(RecoveryError::InUse(_))
        ));
        drop(log);
        drop(db);

        let before = inspect(dir.path()).await.unwrap();
        let r = recover(dir.path(), 2, 7).await.unwrap();
        assert_eq!(r.entries_kept, 3);
        let term = CommittedLeaderId::new(4, 2);
        assert_eq!(r.appended, vec![LogId::new(term, 4), LogId::new(term, 5)]);
        assert_eq!(r.dropped, BTreeSet::from([1, 3]));
        assert_eq!(r.epochs.len(), 1);
        assert_eq!(r.epochs[0].old, before.channels.get("a").unwrap().epoch);
        assert_eq!(r.epochs[0].offset.0, 2);

        let after = inspect(dir.path()).await.unwrap();
        assert_eq!(after.last_log_id, Some(LogId::new(term, 5)));
        assert_eq!(after.vote, Vote::new_committed(4, 2));
        assert_eq!(after.membership.voter_ids().collect::<Vec<_>>(), vec![2]);
        let own = after.membership.get_node(&2).unwrap().incarnation;
        assert_eq!(own, r.incarnation);
        assert_ne!(own, 0);
        let a = after.channels.get("a").unwrap();
        assert_eq!(a.epoch, r.epochs[0].new);
        assert_eq!(a.last_offset.0, 2);
    }
}
