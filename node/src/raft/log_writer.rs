//! The thread that writes the Raft log, so that no fsync runs on openraft's
//! core task (or on any tokio worker).
//!
//! Every write to the log database — appends, truncates, purges, the vote
//! and the commit index — is a [`Write`] sent to one thread, in the order
//! the store issued them. The thread takes everything queued, applies it in
//! that order inside one redb transaction, commits it with one fsync, and
//! only then completes each write's [`Done`]: an entry is reported flushed
//! only after the fsync that covers it returned OK (guarantee 1). Because
//! there is one queue and one transaction per group, a truncate or purge
//! is sequenced after the appends queued before it, and the vote is never
//! reordered with the log (openraft requires its storage writes to be
//! serialized).
//!
//! A failed commit is never retried: every write of that group, and every
//! write after it, completes with the error (see `crate::disk` for why a
//! retried fsync proves nothing). Appended entries stay readable from
//! [`Pending`] until their commit has made them readable from redb, as
//! openraft expects of `append` once it returns.

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use redb::{Database, Durability};

use super::log_store::{LOG, META};

/// Most writes committed by one transaction: bounds how long the first
/// write of a long queue waits for the fsync that covers it.
const MAX_WRITES_PER_COMMIT: usize = 1024;

/// Why a write did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailed {
    /// The commit covering this write failed (or an earlier one did, and
    /// nothing is written after a failure).
    #[error("writing the raft log failed: {0}")]
    Commit(String),
    /// The writer thread is gone.
    #[error("the raft log writer has stopped")]
    Stopped,
}

/// Called once a write is durable (or has failed); runs on the writer
/// thread, so it must only hand the result on.
pub type Done = Box<dyn FnOnce(Result<(), WriteFailed>) + Send>;

/// One write to the log database.
pub enum Write {
    /// Store encoded entries under their indexes.
    Append {
        /// `(index, encoded entry)`, in index order; the same bytes
        /// [`Pending`] serves until they are committed.
        entries: Vec<(u64, Arc<[u8]>)>,
        /// Completed after the fsync.
        done: Done,
    },
    /// Delete every entry from `from` on.
    Truncate {
        /// The first index removed.
        from: u64,
        /// Completed after the fsync.
        done: Done,
    },
    /// Delete every entry up to `upto` and store `marker` as the last
    /// purged id, in the same transaction.
    Purge {
        /// The last index removed.
        upto: u64,
        /// Key and encoded value of the last-purged marker.
        marker: (&'static str, Vec<u8>),
        /// Completed after the fsync.
        done: Done,
    },
    /// Store a metadata value; `durable` ones (the vote) are fsynced before
    /// `done`, others (the commit index) ride along with the next commit.
    Meta {
        /// The key.
        key: &'static str,
        /// The encoded value.
        value: Vec<u8>,
        /// Whether `done` waits for an fsync.
        durable: bool,
        /// Completed after the commit.
        done: Option<Done>,
    },
}

impl Write {
    fn durable(&self) -> bool {
        !matches!(self, Write::Meta { durable: false, .. })
    }

    fn complete(self, result: Result<(), WriteFailed>) {
        let done = match self {
            Write::Append { done, .. }
            | Write::Truncate { done, .. }
            | Write::Purge { done, .. } => Some(done),
            Write::Meta { done, .. } => done,
        };
        if let Some(done) = done {
            done(result);
        }
    }
}

/// Entries appended but not yet committed, readable meanwhile. Shared by
/// the store, its readers and the writer thread.
#[derive(Debug, Default)]
pub struct Pending(Mutex<BTreeMap<u64, Arc<[u8]>>>);

impl Pending {
    fn insert(&self, entries: &[(u64, Arc<[u8]>)]) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (index, bytes) in entries {
            map.insert(*index, bytes.clone());
        }
    }

    /// Forget entries once committed; an index appended again since (after
    /// a truncate) keeps its newer bytes.
    fn committed(&self, entries: &[(u64, Arc<[u8]>)]) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (index, bytes) in entries {
            if map.get(index).is_some_and(|b| Arc::ptr_eq(b, bytes)) {
                map.remove(index);
            }
        }
    }

    /// The pending entries in `range`, in index order.
    pub fn range(&self, range: impl RangeBounds<u64>) -> Vec<(u64, Arc<[u8]>)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.range(range).map(|(i, b)| (*i, b.clone())).collect()
    }

    /// The highest pending index and its entry.
    pub fn last(&self) -> Option<(u64, Arc<[u8]>)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.last_key_value().map(|(i, b)| (*i, b.clone()))
    }
}

/// The writer thread's handle. Dropping the last one lets the thread
/// finish what is queued and waits for it, so the database is closed when
/// the store is gone (a reopen in the same process must not find it busy).
pub struct LogWriter {
    tx: Option<mpsc::Sender<Write>>,
    pending: Arc<Pending>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Start the writer thread on `db`.
    pub fn start(db: Arc<Database>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(Pending::default());
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run(&db, &rx, &shared))?;
        Ok(Self {
            tx: Some(tx),
            pending,
            thread: Some(thread),
        })
    }

    /// The entries appended and not yet committed.
    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// Queue `write` behind every write submitted before it. Appended
    /// entries are readable from [`Self::pending`] when this returns.
    pub fn submit(&self, write: Write) {
        if let Write::Append { entries, .. } = &write {
            self.pending.insert(entries);
        }
        let sent = match &self.tx {
            Some(tx) => tx.send(write).map_err(|e| e.0),
            None => Err(write),
        };
        if let Err(write) = sent {
            write.complete(Err(WriteFailed::Stopped));
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(db: &Database, rx: &mpsc::Receiver<Write>, pending: &Pending) {
    let mut failed: Option<WriteFailed> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_WRITES_PER_COMMIT {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => commit(db, &group).map_err(|e| WriteFailed::Commit(e.to_string())),
        };
        match &result {
            Ok(()) => {
                let mut appended = 0;
                for w in &group {
                    if let Write::Append { entries, .. } = w {
                        pending.committed(entries);
                        appended += entries.len() as u64;
                    }
                }
                metrics::counter!("herald_raft_log_appended_entries_total").increment(appended);
                metrics::histogram!("herald_raft_log_writes_per_commit").record(group.len() as f64);
            }
            Err(e) => failed = Some(e.clone()),
        }
        for w in group {
            w.complete(result.clone());
        }
    }
}

/// Apply `group` in order in one transaction; fsynced if any write needs it.
fn commit(db: &Database, group: &[Write]) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    let durability = if group.iter().any(Write::durable) {
        Durability::Immediate
    } else {
        Durability::None
    };
    tx.set_durability(durability)?;
    {
        let mut log = tx.open_table(LOG)?;
        let mut meta = tx.open_table(META)?;
        for w in group {
            match w {
                Write::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, &bytes[..])?;
                    }
                }
                Write::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                Write::Purge { upto, marker, .. } => {
                    meta.insert(marker.0, marker.1.as_slice())?;
                    log.retain_in(..=*upto, |_, _| false)?;
                }
                Write::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}
