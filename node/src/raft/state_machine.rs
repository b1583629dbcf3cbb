//! The Raft state machine: applies committed entries to the shared
//! [`Applied`] state and keeps the latest snapshot in the node's database so
//! a restarted node starts from it and replays only the log after it.
//!
//! Reads (history, channel lists) take the state's read lock directly; no
//! lock is ever held across an `.await`.

use std::sync::{Arc, RwLock};

use herald_proto::v1::Publication;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::snapshot_data::SnapshotData;
use super::{Command, CommandResult, NodeInfo, StorageError, TypeConfig, decode, encode};
use crate::channels::{ChannelTable, ChannelTableV2};
use crate::membership::ChannelMembership;

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const CURRENT: &str = "current";

/// Everything the state machine has applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId<u64>>,
    /// Last applied membership.
    pub membership: StoredMembership<u64, NodeInfo>,
    /// Channels, offsets, history, idempotency window.
    pub channels: ChannelTable,
    /// Which nodes want which channels, and their QUIC endpoints.
    pub delivery: ChannelMembership,
}

/// [`Applied`] as versions without sweeps wrote it.
#[derive(Deserialize)]
struct AppliedV2 {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
    channels: ChannelTableV2,
    delivery: ChannelMembership,
}

/// [`Applied`] as versions without fan-out nodes wrote it.
#[derive(Deserialize)]
struct AppliedV1 {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
    channels: ChannelTableV2,
    delivery: crate::membership::ChannelMembershipV1,
}

/// Decode a snapshot's state, of this version or an earlier one.
fn decode_applied(bytes: &[u8]) -> Result<Applied, postcard::Error> {
    decode::<Applied>(bytes).or_else(|e| {
        decode::<AppliedV2>(bytes)
            .map(|v2| Applied {
                last_applied: v2.last_applied,
                membership: v2.membership,
                channels: v2.channels.into(),
                delivery: v2.delivery,
            })
            .or_else(|_| {
                decode::<AppliedV1>(bytes).map(|v1| Applied {
                    last_applied: v1.last_applied,
                    membership: v1.membership,
                    channels: v1.channels.into(),
                    delivery: v1.delivery.into(),
                })
            })
            .map_err(|_| e)
    })
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, NodeInfo>,
    data: Vec<u8>,
}

/// The state machine store; clones share state.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    state: Arc<RwLock<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
    log_clock: Arc<watch::Sender<(i64, std::time::Instant)>>,
    published: broadcast::Sender<Arc<Vec<Publication>>>,
}

/// How many applied batches a slow listener may fall behind before it is
/// told it lagged (it then catches up from history).
const PUBLISHED_BACKLOG: usize = 1024;

impl StateMachine {
    /// Open on the shared database, restoring the latest snapshot if any.
    pub fn open(db: Arc<Database>) -> Result<Self, anyhow::Error> {
        let tx = db.begin_write()?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
        let mut applied = Applied::default();
        let r = db.begin_read()?;
        if let Some(v) = r.open_table(SNAPSHOT)?.get(CURRENT)? {
            let snap: StoredSnapshot = decode(v.value())?;
            applied = decode_applied(&snap.data)?;
        }
        let index = applied.last_applied.map_or(0, |l| l.index);
        let (applied_tx, _) = watch::channel(index);
        let clock = (applied.channels.clock_ms(), std::time::Instant::now());
        Ok(Self {
            db,
            state: Arc::new(RwLock::new(applied)),
            log_clock: Arc::new(watch::channel(clock).0),
            applied_tx: Arc::new(applied_tx),
            published: broadcast::channel(PUBLISHED_BACKLOG).0,
        })
    }

    /// Shared read access to the applied state.
    pub fn state(&self) -> Arc<RwLock<Applied>> {
        self.state.clone()
    }

    /// Watch the last applied index.
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Every publication this node applies, in log order, batched per
    /// `apply` call; each is encoded once and shared by every listener.
    pub fn published(&self) -> broadcast::Sender<Arc<Vec<Publication>>> {
        self.published.clone()
    }

    /// The log's clock and when this node last saw it advance: a leader
    /// bounds the time it proposes by it (see `proposer`).
    pub fn log_clock(&self) -> watch::Receiver<(i64, std::time::Instant)> {
        self.log_clock.subscribe()
    }

    fn note_clock(&self) {
        let clock = self
            .state
            .read()
            .expect("state lock poisoned")
            .channels
            .clock_ms();
        if clock != self.log_clock.borrow().0 {
            self.log_clock
                .send_replace((clock, std::time::Instant::now()));
        }
    }

    fn save_snapshot(&self, snap: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = encode(snap);
        let tx = self
            .db
            .begin_write()
            .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), &e))?;
        tx.open_table(SNAPSHOT)
            .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), &e))?
            .insert(CURRENT, bytes.as_slice())
            .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), &e))?;
        tx.commit()
            .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), &e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_applied, membership) = {
            let s = self.state.read().expect("state lock poisoned");
            (encode(&*s), s.last_applied, s.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        super::log_store::blocking(|| self.save_snapshot(&stored))?;
        metrics::counter!("herald_raft_snapshots_total", "kind" => "built").increment(1);
        metrics::gauge!("herald_raft_snapshot_bytes").set(stored.data.len() as f64);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>), StorageError> {
        let s = self.state.read().expect("state lock poisoned");
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut results = Vec::new();
        let mut fresh = Vec::new();
        let last = {
            let mut s = self.state.write().expect("state lock poisoned");
            for entry in entries {
                s.last_applied = Some(entry.log_id);
                let r = match entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(Command::Publish(p)) => {
                        metrics::counter!("herald_publications_applied_total")
                            .increment(p.items.len() as u64);
                        let accepted = s.channels.apply(&p);
                        if self.published.receiver_count() > 0 {
                            let items = p.items.into_iter().zip(&accepted);
                            fresh.extend(items.filter(|(_, a)| !a.duplicate).map(|(item, a)| {
                                Publication {
                                    channel: item.channel,
                                    offset: a.offset.0,
                                    epoch: a.epoch.0.clone(),
                                    event_type: item.event_type,
                                    data: item.data,
                                    content_type: item.content_type,
                                    idempotency_key: item.idempotency_key,
                                    headers: item.headers.into_iter().collect(),
                                    published_at_ms: a.published_at_ms,
                                }
                            }));
                        }
                        CommandResult::Published(accepted)
                    }
                    EntryPayload::Normal(Command::RegisterNode { id, quic_addr }) => {
                        s.delivery.register(id, quic_addr);
                        CommandResult::None
                    }
                    EntryPayload::Normal(Command::Interest { node, add, remove }) => {
                        s.delivery.update(node, &add, &remove);
                        CommandResult::None
                    }
                    EntryPayload::Normal(Command::RegisterFanout {
                        id,
                        grpc_addr,
                        started,
                    }) => {
                        if s.membership.membership().get_node(&id).is_none() {
                            s.delivery.register_fanout(id, grpc_addr, started);
                        }
                        CommandResult::None
                    }
                    EntryPayload::Normal(Command::ForgetFanout { id }) => {
                        if s.membership.membership().get_node(&id).is_none() {
                            s.delivery.forget(id);
                        }
                        CommandResult::None
                    }
                    EntryPayload::Normal(Command::BumpEpochs { nonce }) => {
                        let changes = s.channels.bump_epochs(nonce);
                        tracing::info!(channels = changes.len(), "channel epochs bumped");
                        CommandResult::None
                    }
                    EntryPayload::Normal(Command::Sweep(sweep)) => {
                        let swept = s.channels.sweep(&sweep);
                        metrics::counter!("herald_swept_channels_total")
                            .increment(swept.channels as u64);
                        metrics::counter!("herald_swept_publications_total")
                            .increment(swept.publications as u64);
                        tracing::debug!(
                            channels = swept.channels,
                            publications = swept.publications,
                            "state swept"
                        );
                        CommandResult::None
                    }
                    EntryPayload::Membership(m) => {
                        // A node that left the cluster no longer receives anything.
                        let gone: Vec<u64> = s
                            .membership
                            .membership()
                            .nodes()
                            .map(|(id, _)| *id)
                            .filter(|id| m.get_node(id).is_none())
                            .collect();
                        for id in gone {
                            s.delivery.forget(id);
                        }
                        s.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::None
                    }
                };
                results.push(r);
            }
            s.last_applied.map_or(0, |l| l.index)
        };
        self.applied_tx.send_replace(last);
        self.note_clock();
        if !fresh.is_empty() {
            let _ = self.published.send(Arc::new(fresh));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: Applied = decode_applied(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        super::log_store::blocking(|| self.save_snapshot(&stored))?;
        let index = applied.last_applied.map_or(0, |l| l.index);
        *self.state.write().expect("state lock poisoned") = applied;
        self.applied_tx.send_replace(index);
        self.note_clock();
        metrics::counter!("herald_raft_snapshots_total", "kind" => "installed").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let r = self
            .db
            .begin_read()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let t = r
            .open_table(SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(v) = t
            .get(CURRENT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            decode(v.value()).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(SnapshotData::new(stored.data)),
        }))
    }
}
