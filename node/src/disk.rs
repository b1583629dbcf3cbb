//! The node's disk as its database sees it: every read, write, fsync and
//! resize of the redb file passes through [`Disk`], which records the first
//! one that fails in [`DiskHealth`].
//!
//! Why a node must stop at the first failure instead of retrying: after a
//! failed fsync the kernel may already have thrown away the dirty pages it
//! could not write and marked them clean, so a later fsync that succeeds
//! proves nothing (PostgreSQL learned this in 2018 and now panics on a
//! failed fsync). redb refuses every write after an I/O error
//! (`PreviousIo`) and openraft stops its core on the storage error that
//! follows, so nothing more is appended or acknowledged; this module makes
//! the failure visible — one error line, `herald_storage_failures_total`,
//! `herald_storage_failed` — and gives the node one place to ask, so
//! publishes are refused with `STORAGE_FAILED` and `/healthz` and `/readyz`
//! answer 503 until the node is restarted on a working disk (see
//! `docs/operations.md`, "Storage failures").

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend};

/// The disk operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// Reading the database file.
    Read,
    /// Writing to it (`pwrite`).
    Write,
    /// Flushing it to stable storage (`fdatasync`).
    Fsync,
    /// Growing or shrinking it (`ftruncate`).
    Resize,
    /// Asking for its length (`fstat`).
    Stat,
}

impl DiskOp {
    /// The `op` label of `herald_storage_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Fsync => "fsync",
            Self::Resize => "resize",
            Self::Stat => "stat",
        }
    }
}

/// The `error` label of `herald_storage_failures_total`: the cases an
/// operator acts on differently (free space, or replace the disk).
fn error_label(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(ENOSPC) => "enospc",
        Some(EIO) => "eio",
        _ if e.kind() == io::ErrorKind::StorageFull => "enospc",
        _ => "other",
    }
}

/// `errno` values on Linux (and every Unix Herald runs on).
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// The first disk operation that failed on this node.
#[derive(Debug, Clone)]
pub struct DiskFailure {
    /// What was being done.
    pub op: DiskOp,
    /// `eio`, `enospc` or `other`.
    pub error: &'static str,
    /// The operating system's message.
    pub message: String,
}

impl fmt::Display for DiskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of the database file failed ({}): {}",
            self.op.label(),
            self.error,
            self.message
        )
    }
}

/// Whether the disk has failed; clones share it. Once failed it stays
/// failed for the life of the process: only a restart, which reopens the
/// database from its last durable commit, clears it.
#[derive(Debug, Clone, Default)]
pub struct DiskHealth(Arc<OnceLock<DiskFailure>>);

impl DiskHealth {
    /// The first failure, if the disk has failed.
    pub fn failure(&self) -> Option<&DiskFailure> {
        self.0.get()
    }

    /// Count a failed operation; the first one also flips the gauge and
    /// logs the one line an operator needs.
    fn record(&self, op: DiskOp, e: &io::Error) {
        let error = error_label(e);
        metrics::counter!("herald_storage_failures_total", "op" => op.label(), "error" => error)
            .increment(1);
        let first = DiskFailure {
            op,
            error,
            message: e.to_string(),
        };
        if self.0.set(first).is_ok() {
            metrics::gauge!("herald_storage_failed").set(1.0);
            tracing::error!(
                op = op.label(),
                error,
                "storage failed: {}; this node acknowledges nothing more until it is restarted on a working disk",
                self.0.get().expect("just set")
            );
        }
    }

    fn check<T>(&self, op: DiskOp, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            self.record(op, e);
        }
        result
    }
}

/// A redb storage backend that watches the one below it (the database
/// file, or in tests a file that fails on demand).
#[derive(Debug)]
pub struct Disk<B = FileBackend> {
    inner: B,
    health: DiskHealth,
}

impl<B: StorageBackend> Disk<B> {
    /// Watch `inner`, recording failures in `health`.
    pub fn new(inner: B, health: DiskHealth) -> Self {
        metrics::gauge!("herald_storage_failed").set(0.0);
        Self { inner, health }
    }
}

/// Open (or create) the database at `path` on a watched disk.
pub fn open(path: &Path) -> Result<(Database, DiskHealth), DatabaseError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let health = DiskHealth::default();
    let disk = Disk::new(FileBackend::new(file)?, health.clone());
    Ok((Database::builder().create_with_backend(disk)?, health))
}

impl<B: StorageBackend> StorageBackend for Disk<B> {
    fn len(&self) -> io::Result<u64> {
        self.health.check(DiskOp::Stat, self.inner.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        match self.inner.read(offset, out) {
            // redb asks past the end on purpose in places; that is no
            // failing disk.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(e),
            other => self.health.check(DiskOp::Read, other),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.health.check(DiskOp::Resize, self.inner.set_len(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.health.check(DiskOp::Fsync, self.inner.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.health
            .check(DiskOp::Write, self.inner.write(offset, data))
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! A disk that fails on demand, the way Linux does, for the durability
    //! checks of the log store.

    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;

    /// What [`FailingFile`] does to the next operations.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u8)]
    pub(crate) enum Fault {
        None = 0,
        /// The next fsync fails with EIO, and the fault clears: Linux
        /// reports a writeback error once, after which fsync succeeds
        /// although the pages it could not write are gone.
        FsyncEio = 1,
        /// Every write fails with EIO.
        WriteEio = 2,
        /// Every write fails with ENOSPC.
        NoSpace = 3,
    }

    /// A database file whose fsyncs or writes fail while a fault is set.
    #[derive(Debug)]
    pub(crate) struct FailingFile {
        pub(crate) file: FileBackend,
        pub(crate) fault: Arc<AtomicU8>,
    }

    impl FailingFile {
        fn fault(&self) -> Fault {
            match self.fault.load(Ordering::SeqCst) {
                1 => Fault::FsyncEio,
                2 => Fault::WriteEio,
                3 => Fault::NoSpace,
                _ => Fault::None,
            }
        }
    }

    impl StorageBackend for FailingFile {
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.file.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            match self.fault() {
                Fault::FsyncEio => {
                    self.fault.store(Fault::None as u8, Ordering::SeqCst);
                    Err(io::Error::from_raw_os_error(EIO))
                }
                _ => self.file.sync_data(),
            }
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            match self.fault() {
                Fault::WriteEio => Err(io::Error::from_raw_os_error(EIO)),
                Fault::NoSpace => Err(io::Error::from_raw_os_error(ENOSPC)),
                _ => self.file.write(offset, data),
            }
        }
    }

    #[test]
    fn failures_are_labelled_by_errno() {
        assert_eq!(error_label(&io::Error::from_raw_os_error(EIO)), "eio");
        assert_eq!(error_label(&io::Error::from_raw_os_error(ENOSPC)), "enospc");
        assert_eq!(error_label(&io::Error::other("x")), "other");
    }

    #[test]
    fn the_first_failure_is_kept() {
        let health = DiskHealth::default();
        assert!(health.failure().is_none());
        health.record(DiskOp::Fsync, &io::Error::from_raw_os_error(EIO));
        health.record(DiskOp::Write, &io::Error::from_raw_os_error(ENOSPC));
        let f = health.failure().unwrap();
        assert_eq!((f.op, f.error), (DiskOp::Fsync, "eio"));
        assert!(
            f.to_string()
                .starts_with("fsync of the database file failed (eio)")
        );
    }
}
