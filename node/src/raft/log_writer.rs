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
//! openraft 0.9 still awaits each append's flush before it runs its next
//! command, so one Raft core rarely has two appends queued here; what the
//! thread buys is that the wait is an `.await` (the worker runs other
//! tasks, such as the gRPC handlers and the proposer, meanwhile) instead of
//! a blocked worker, and that the commit index rides along with the next
//! durable commit instead of costing a transaction of its own. Grouping
//! publications into entries stays the proposer's job (`crate::proposer`).
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use redb::backends::FileBackend;
    use redb::{ReadableDatabase, ReadableTable, StorageBackend};

    use super::*;
    use crate::disk::tests::{FailingFile, Fault};
    use crate::disk::{Disk, DiskHealth, DiskOp};

    /// A database file that fails on demand and counts its fsyncs.
    #[derive(Debug)]
    struct Counted {
        file: FailingFile,
        syncs: Arc<AtomicUsize>,
    }

    impl StorageBackend for Counted {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.file.write(offset, data)
        }
    }

    type Completions = Arc<Mutex<Vec<(&'static str, Result<(), WriteFailed>)>>>;

    struct Fixture {
        _dir: tempfile::TempDir,
        db: Arc<Database>,
        writer: LogWriter,
        syncs: Arc<AtomicUsize>,
        fault: Arc<AtomicU8>,
        health: DiskHealth,
        completions: Completions,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.path().join("log.redb"))
                .unwrap();
            let fault = Arc::new(AtomicU8::new(Fault::None as u8));
            let syncs = Arc::new(AtomicUsize::new(0));
            let health = DiskHealth::default();
            let counted = Counted {
                file: FailingFile {
                    file: FileBackend::new(file).unwrap(),
                    fault: fault.clone(),
                },
                syncs: syncs.clone(),
            };
            let db = Arc::new(
                Database::builder()
                    .create_with_backend(Disk::new(counted, health.clone()))
                    .unwrap(),
            );
            let tx = db.begin_write().unwrap();
            tx.open_table(LOG).unwrap();
            tx.open_table(META).unwrap();
            tx.commit().unwrap();
            Self {
                _dir: dir,
                writer: LogWriter::start(db.clone()).unwrap(),
                db,
                syncs,
                fault,
                health,
                completions: Completions::default(),
            }
        }

        fn done(&self, name: &'static str) -> Done {
            let completions = self.completions.clone();
            Box::new(move |r| completions.lock().unwrap().push((name, r)))
        }

        fn append(&self, name: &'static str, indexes: &[u64]) {
            let entries = indexes.iter().map(|&i| (i, bytes(name, i))).collect();
            self.writer.submit(Write::Append {
                entries,
                done: self.done(name),
            });
        }

        /// The completions, once there are `n` of them.
        fn completed(&self, n: usize) -> Vec<(&'static str, Result<(), WriteFailed>)> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = self.completions.lock().unwrap().clone();
                if got.len() >= n || Instant::now() > deadline {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        fn stored(&self) -> Vec<(u64, Vec<u8>)> {
            let r = self.db.begin_read().unwrap();
            let t = r.open_table(LOG).unwrap();
            t.iter()
                .unwrap()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (k.value(), v.value().to_vec())
                })
                .collect()
        }

        /// Hold redb's one write transaction, so the writer stalls and
        /// what is submitted meanwhile queues up behind it.
        fn stall(&self) -> redb::WriteTransaction {
            self.db.begin_write().unwrap()
        }
    }

    fn bytes(name: &str, i: u64) -> Arc<[u8]> {
        format!("{name}/{i}").into_bytes().into()
    }

    fn names(c: &[(&'static str, Result<(), WriteFailed>)]) -> Vec<&'static str> {
        c.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn writes_are_applied_and_reported_in_submission_order() {
        let f = Fixture::new();
        let stall = f.stall();
        f.append("a", &[1, 2, 3]);
        f.writer.submit(Write::Truncate {
            from: 2,
            done: f.done("truncate"),
        });
        f.append("b", &[2]);
        f.writer.submit(Write::Meta {
            key: "vote",
            value: b"v".to_vec(),
            durable: true,
            done: Some(f.done("vote")),
        });
        drop(stall);
        let done = f.completed(4);
        assert_eq!(names(&done), ["a", "truncate", "b", "vote"]);
        assert!(done.iter().all(|(_, r)| r.is_ok()), "{done:?}");
        assert_eq!(
            f.stored(),
            [(1, b"a/1".to_vec()), (2, b"b/2".to_vec())],
            "entry 3 truncated, entry 2 replaced"
        );
        assert!(f.writer.pending().range(..).is_empty());
    }

    #[test]
    fn queued_appends_share_one_fsync() {
        let f = Fixture::new();
        let before = f.syncs.load(Ordering::SeqCst);
        f.append("alone", &[1]);
        f.completed(1);
        let one_commit = f.syncs.load(Ordering::SeqCst) - before;
        assert!(one_commit >= 1, "a durable commit fsyncs");

        let stall = f.stall();
        for (i, name) in ["w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9"]
            .into_iter()
            .enumerate()
        {
            f.append(name, &[i as u64 + 2]);
        }
        let before = f.syncs.load(Ordering::SeqCst);
        drop(stall);
        let done = f.completed(9);
        assert!(done.iter().all(|(_, r)| r.is_ok()), "{done:?}");
        let eight = f.syncs.load(Ordering::SeqCst) - before;
        // The writer may have taken the first append before the stall
        // began; the other seven were queued and committed together.
        assert!(
            eight <= 2 * one_commit,
            "8 queued appends took {eight} fsyncs, one commit takes {one_commit}"
        );
        assert_eq!(f.stored().len(), 9);
    }

    #[test]
    fn a_commit_index_alone_is_not_fsynced() {
        let f = Fixture::new();
        let before = f.syncs.load(Ordering::SeqCst);
        f.writer.submit(Write::Meta {
            key: "committed",
            value: b"c".to_vec(),
            durable: false,
            done: Some(f.done("committed")),
        });
        assert!(f.completed(1)[0].1.is_ok());
        assert_eq!(f.syncs.load(Ordering::SeqCst), before);
    }

    #[test]
    fn a_failed_fsync_fails_its_group_and_every_write_after() {
        let f = Fixture::new();
        f.append("a", &[1]);
        assert!(f.completed(1)[0].1.is_ok());

        let stall = f.stall();
        f.append("b", &[2]);
        f.append("c", &[3]);
        f.fault.store(Fault::FsyncEio as u8, Ordering::SeqCst);
        drop(stall);
        let done = f.completed(3);
        assert_eq!(names(&done), ["a", "b", "c"]);
        assert!(done[1].1.is_err() && done[2].1.is_err(), "{done:?}");
        assert_eq!(f.health.failure().map(|x| x.op), Some(DiskOp::Fsync));

        // The disk works again (Linux reports a writeback error once): the
        // writer must still refuse, without touching the disk.
        assert_eq!(f.fault.load(Ordering::SeqCst), Fault::None as u8);
        let syncs = f.syncs.load(Ordering::SeqCst);
        f.append("d", &[4]);
        let vote = Arc::new(Mutex::new(None));
        let seen = vote.clone();
        f.writer.submit(Write::Meta {
            key: "vote",
            value: b"v".to_vec(),
            durable: true,
            done: Some(Box::new(move |r| *seen.lock().unwrap() = Some(r))),
        });
        let done = f.completed(4);
        assert!(matches!(done[3].1, Err(WriteFailed::Commit(_))), "{done:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while vote.lock().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(matches!(*vote.lock().unwrap(), Some(Err(_))));
        assert_eq!(f.syncs.load(Ordering::SeqCst), syncs, "nothing retried");
    }

    #[test]
    fn a_truncate_waits_for_the_appends_queued_before_it() {
        let f = Fixture::new();
        let stall = f.stall();
        f.append("a", &[1, 2, 3, 4, 5]);
        // Readable as soon as submitted, before any commit.
        let pending: Vec<u64> = f.writer.pending().range(..).iter().map(|e| e.0).collect();
        assert_eq!(pending, [1, 2, 3, 4, 5]);
        f.writer.submit(Write::Truncate {
            from: 3,
            done: f.done("truncate"),
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            f.completions.lock().unwrap().is_empty(),
            "nothing completes while the appends before it are not committed"
        );
        drop(stall);
        let done = f.completed(2);
        assert_eq!(names(&done), ["a", "truncate"]);
        assert!(done.iter().all(|(_, r)| r.is_ok()), "{done:?}");
        let kept: Vec<u64> = f.stored().iter().map(|e| e.0).collect();
        assert_eq!(kept, [1, 2]);
        assert!(f.writer.pending().range(..).is_empty());
    }

    #[test]
    fn a_purge_is_sequenced_after_queued_appends() {
        let f = Fixture::new();
        let stall = f.stall();
        f.append("a", &[1, 2, 3, 4]);
        f.writer.submit(Write::Purge {
            upto: 2,
            marker: ("last_purged", b"2".to_vec()),
            done: f.done("purge"),
        });
        drop(stall);
        let done = f.completed(2);
        assert_eq!(names(&done), ["a", "purge"]);
        let kept: Vec<u64> = f.stored().iter().map(|e| e.0).collect();
        assert_eq!(kept, [3, 4]);
    }

    #[test]
    fn a_stopped_writer_refuses_at_once() {
        let mut f = Fixture::new();
        drop(f.writer.tx.take());
        f.append("late", &[1]);
        assert!(matches!(f.completed(1)[0].1, Err(WriteFailed::Stopped)));
    }

    /// What one durable commit of the log costs on this disk, against the
    /// floor an append-only file would pay (one write and one fdatasync):
    /// the measurement behind keeping redb as the log store
    /// (`docs/benchmarks.md`, "The log writer"). Run it in release:
    /// `cargo test --release -p herald-node --lib commit_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn commit_cost() {
        const ROUNDS: usize = 500;
        let entry = vec![7u8; 1024];
        let pct = |mut v: Vec<Duration>, p: f64| {
            v.sort();
            v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
        };
        let report = |what: &str, v: Vec<Duration>, syncs: Option<usize>| {
            let per = syncs.map_or(String::new(), |s| {
                format!(", {:.1} fsyncs per commit", s as f64 / ROUNDS as f64)
            });
            println!(
                "{what}: p50 {:.3} ms, p99 {:.3} ms{per}",
                pct(v.clone(), 0.5),
                pct(v, 0.99)
            );
        };

        let f = Fixture::new();
        let before = f.syncs.load(Ordering::SeqCst);
        let mut times = Vec::with_capacity(ROUNDS);
        for i in 0..ROUNDS as u64 {
            let (tx, rx) = mpsc::channel();
            let start = Instant::now();
            f.writer.submit(Write::Append {
                entries: vec![(i, entry.clone().into())],
                done: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            });
            rx.recv().unwrap().unwrap();
            times.push(start.elapsed());
        }
        let syncs = f.syncs.load(Ordering::SeqCst) - before;
        report(
            "redb commit through the writer, 1 KiB entry",
            times,
            Some(syncs),
        );

        use std::io::{Seek, SeekFrom, Write as _};
        let dir = tempfile::tempdir().unwrap();
        for (what, prealloc) in [
            ("append + fdatasync, growing file", false),
            ("write + fdatasync, preallocated segment", true),
        ] {
            let mut file = std::fs::File::create(dir.path().join(what)).unwrap();
            if prealloc {
                file.write_all(&vec![0u8; ROUNDS * entry.len()]).unwrap();
                file.sync_all().unwrap();
                file.seek(SeekFrom::Start(0)).unwrap();
            }
            let mut times = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let start = Instant::now();
                file.write_all(&entry).unwrap();
                file.sync_data().unwrap();
                times.push(start.elapsed());
            }
            report(what, times, None);
        }
    }
}
