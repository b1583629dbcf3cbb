//! A FUSE filesystem that forgets every write not yet fsynced when the
//! test simulates a power cut: the disk the crash-consistency scenario puts
//! under each node.
//!
//! A SIGKILL keeps the kernel's page cache, so a node killed between a
//! `write` and its `fdatasync` still finds that write after restarting; a
//! machine losing power does not. [`LazyMount`] mounts a pass-through view
//! of a backing directory in which every file's writes and size changes
//! since its last `fsync`/`fdatasync` are held in the test process's memory
//! (reads see them); a sync writes them to the backing file and fsyncs it
//! there; [`LazyMount::power_cut`] discards them, leaving each file exactly
//! as its last sync left it. Files are opened `direct_io`, so the kernel
//! caches no file data on the mount that could survive a cut.
//!
//! **Metadata is durable at once.** Creating, renaming and removing files
//! and directories, and permission changes, go straight to the backing
//! directory; only a file's content and length wait for its sync (length
//! with it, as `fdatasync` persists the length needed to read the data
//! back). A real filesystem could also lose a create or rename not followed
//! by an fsync of its directory; this layer does not model that, which is
//! enough for what it tests: a node keeps all of its state in one redb file
//! (`<data-dir>/herald.redb`), created once at its first start, before it
//! has anything to lose, and never renamed or removed; every commit is
//! `pwrite`s, a `set_len` when the file grows, and `fdatasync` (redb does
//! not mmap). Its locks (`flock`, OFD range locks) are kept by the kernel
//! for the mount, as for any FUSE filesystem that does not implement them.
//!
//! A mount is unmounted (`fusermount3 -u -z`) when its handle is dropped,
//! also when a test panics. A test process killed with SIGKILL leaves its
//! mounts behind, unusable: `mount -t fuse.herald-lazyfs` shows them,
//! `umount -l` removes them. Needs `/dev/fuse` and `fusermount3` (Debian
//! package `fuse3`); [`LazyMount::available`] says which is missing.

mod pending;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL,
    TimeOrNow, WriteFlags,
};

pub use pending::Discarded;
use pending::{DurableFile, PendingFile};

/// Why a lazy mount cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum LazyFsError {
    /// `/dev/fuse` is missing or cannot be opened (no FUSE in this kernel,
    /// or a container without the device).
    #[error("/dev/fuse cannot be opened: {0}")]
    NoFuseDevice(#[source] io::Error),
    /// `fusermount3` is not on `PATH` (Debian package `fuse3`).
    #[error("fusermount3 not found on PATH (install the fuse3 package)")]
    NoFusermount,
    /// The mount itself failed.
    #[error("mounting a lazy filesystem on {mountpoint}: {source}")]
    Mount {
        /// Where it was to be mounted.
        mountpoint: PathBuf,
        /// What the kernel or `fusermount3` answered.
        #[source]
        source: io::Error,
    },
}

/// How long the kernel may cache names and attributes: not at all, so
/// lengths after a cut are asked again.
const TTL: Duration = Duration::ZERO;

/// A mounted lazy filesystem; unmounted on drop.
pub struct LazyMount {
    tree: Arc<Mutex<Tree>>,
    power: Arc<Power>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for LazyMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMount")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl LazyMount {
    /// Whether this machine can mount one: `/dev/fuse` opens and
    /// `fusermount3` is on `PATH`.
    pub fn available() -> Result<(), LazyFsError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(LazyFsError::NoFuseDevice)?;
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("fusermount3").is_file())
        });
        if found {
            Ok(())
        } else {
            Err(LazyFsError::NoFusermount)
        }
    }

    /// Mount a lazy view of `backing` (an existing directory) on
    /// `mountpoint` (an existing, empty directory).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self, LazyFsError> {
        Self::available()?;
        let tree = Arc::new(Mutex::new(Tree::new(backing.to_path_buf())));
        let power = Arc::new(Power::default());
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("herald-lazyfs".to_string()),
            MountOption::Subtype("herald-lazyfs".to_string()),
        ];
        // The nodes run as the test's user.
        config.acl = SessionACL::Owner;
        let session = fuser::spawn_mount(
            LazyFs {
                tree: Arc::clone(&tree),
                power: Arc::clone(&power),
            },
            mountpoint,
            &config,
        )
        .map_err(|source| LazyFsError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        })?;
        Ok(Self {
            tree,
            power,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// What a power cut now would discard.
    pub fn pending(&self) -> Discarded {
        lock(&self.tree)
            .inodes
            .values()
            .filter_map(|inode| inode.pending.as_ref())
            .fold(Discarded::default(), |mut sum, p| {
                sum += p.would_discard();
                sum
            })
    }

    /// `fsync`/`fdatasync` calls served so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.tree).syncs
    }

    /// Hold every request that arrives from now on, as if the disk had
    /// stopped: what is pending stays pending. Ended by [`LazyMount::thaw`]
    /// (the requests then proceed) or [`LazyMount::power_cut`] (they fail
    /// with `EIO`: the power went before they happened). A request already
    /// being served completes first.
    pub fn freeze(&self) {
        self.power.set_frozen(true);
    }

    /// Let requests held by [`LazyMount::freeze`] proceed.
    pub fn thaw(&self) {
        self.power.set_frozen(false);
    }

    /// Power cut: every write and size change not yet synced is discarded;
    /// every file reads again as its last sync left it, and every request
    /// held by [`LazyMount::freeze`] fails with `EIO`. Returns what was
    /// discarded. The processes using the mount are to be killed first
    /// (their requests held), or already dead: a process that goes on
    /// would see the disk move back in time.
    pub fn power_cut(&self) -> io::Result<Discarded> {
        let result = self.discard_pending();
        self.power.cut();
        result
    }

    fn discard_pending(&self) -> io::Result<Discarded> {
        let mut tree = lock(&self.tree);
        let mut total = Discarded::default();
        for inode in tree.inodes.values_mut() {
            if let (Some(pending), Some(file)) = (inode.pending.as_mut(), inode.file.as_ref()) {
                total += pending.discard(file)?;
            }
            inode.pending = None;
        }
        Ok(total)
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // A lazy unmount through fusermount3 (which also works without
        // root): the kernel then ends the session, and its thread returns.
        let unmounted = Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(&self.mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status();
        if !matches!(&unmounted, Ok(status) if status.success()) {
            eprintln!(
                "fusermount3 -u {} failed ({unmounted:?}); left mounted",
                self.mountpoint.display()
            );
        }
        // Not joined: the session's thread ends when the kernel closes the
        // connection, which a file still open on the mount (a process the
        // test leaked) would delay forever. Detached, it ends on its own.
        drop(session);
    }
}

/// The power switch in front of every request: [`Power::enter`] waits
/// while the disk is frozen, and answers whether power stayed on meanwhile.
#[derive(Debug, Default)]
struct Power {
    state: Mutex<PowerState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PowerState {
    frozen: bool,
    /// Power cuts so far.
    cuts: u64,
}

impl Power {
    fn state(&self) -> MutexGuard<'_, PowerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_frozen(&self, frozen: bool) {
        self.state().frozen = frozen;
        self.changed.notify_all();
    }

    /// The power goes: held requests fail, later ones run on the disk as
    /// it was at its last syncs.
    fn cut(&self) {
        let mut state = self.state();
        state.cuts += 1;
        state.frozen = false;
        drop(state);
        self.changed.notify_all();
    }

    /// Wait while frozen; `false` when a power cut happened meanwhile.
    fn enter(&self) -> bool {
        let mut state = self.state();
        let cuts = state.cuts;
        while state.frozen {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.cuts == cuts
    }
}

fn lock(tree: &Mutex<Tree>) -> MutexGuard<'_, Tree> {
    tree.lock().unwrap_or_else(|e| e.into_inner())
}

/// One file or directory the kernel knows by inode number.
#[derive(Debug)]
struct Inode {
    /// Path relative to the backing directory (empty for the root); `None`
    /// once removed.
    path: Option<PathBuf>,
    /// The backing file, opened on first use (files only).
    file: Option<File>,
    /// Writes since the last sync, once there are any.
    pending: Option<PendingFile>,
}

/// Everything the filesystem knows, behind one lock.
#[derive(Debug)]
struct Tree {
    backing: PathBuf,
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    syncs: u64,
}

impl Tree {
    fn new(backing: PathBuf) -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(
            INodeNo::ROOT.0,
            Inode {
                path: Some(PathBuf::new()),
                file: None,
                pending: None,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(PathBuf::new(), INodeNo::ROOT.0);
        Self {
            backing,
            inodes,
            by_path,
            next_ino: INodeNo::ROOT.0 + 1,
            syncs: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes
            .get(&ino.0)
            .and_then(|i| i.path.clone())
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn real(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    /// The inode number of `rel`, allocated on first sight.
    fn ino_of(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.by_path.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                path: Some(rel.to_path_buf()),
                file: None,
                pending: None,
            },
        );
        self.by_path.insert(rel.to_path_buf(), ino);
        ino
    }

    /// Forget the name `rel` (removed or replaced); its inode lives on for
    /// handles still open.
    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel)
            && let Some(inode) = self.inodes.get_mut(&ino)
        {
            inode.path = None;
        }
    }

    /// The backing file of `ino`, opened on first use.
    fn file(&mut self, ino: INodeNo) -> Result<&File, Errno> {
        let real = self.real(&self.path(ino).or_else(|e| {
            // A removed file that is still open keeps its handle.
            if self.inodes.get(&ino.0).is_some_and(|i| i.file.is_some()) {
                Ok(PathBuf::new())
            } else {
                Err(e)
            }
        })?);
        let inode = self.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
        if inode.file.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&real)
                .or_else(|_| File::open(&real))
                .map_err(Errno::from)?;
            inode.file = Some(file);
        }
        Ok(inode.file.as_ref().expect("just opened"))
    }

    /// The pending state of `ino` and its backing file, creating a clean
    /// pending state on first write.
    fn pending(&mut self, ino: INodeNo) -> Result<(&mut PendingFile, &File), Errno> {
        let len = self.file(ino)?.len().map_err(Errno::from)?;
        let inode = self.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
        let pending = inode.pending.get_or_insert_with(|| PendingFile::clean(len));
        Ok((pending, inode.file.as_ref().expect("opened above")))
    }

    /// Attributes of `ino` as readers see them (pending length included).
    fn attr(&mut self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        let meta = match (&inode.path, &inode.file) {
            (Some(rel), _) => std::fs::symlink_metadata(self.backing.join(rel)),
            (None, Some(file)) => file.metadata(),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(Errno::from)?;
        let size = inode.pending.as_ref().map_or(meta.len(), PendingFile::len);
        Ok(attr_of(ino, &meta, size))
    }

    fn entry(&mut self, rel: &Path) -> Result<FileAttr, Errno> {
        std::fs::symlink_metadata(self.real(rel)).map_err(Errno::from)?;
        let ino = self.ino_of(rel);
        self.attr(ino)
    }
}

fn kind_of(meta: &Metadata) -> FileType {
    FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr_of(ino: u64, meta: &Metadata, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(meta),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The FUSE side: every request takes the tree's lock.
struct LazyFs {
    tree: Arc<Mutex<Tree>>,
    power: Arc<Power>,
}

impl LazyFs {
    /// The tree, once the disk is not frozen; `EIO` when the power was cut
    /// while this request waited.
    fn tree(&self) -> Result<MutexGuard<'_, Tree>, Errno> {
        if self.power.enter() {
            Ok(lock(&self.tree))
        } else {
            Err(Errno::EIO)
        }
    }
}

/// The tree for a request, or its reply with the error.
macro_rules! tree_or_reply {
    ($fs:expr, $reply:ident) => {
        match $fs.tree() {
            Ok(tree) => tree,
            Err(e) => {
                $reply.error(e);
                return;
            }
        }
    };
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut tree = tree_or_reply!(self, reply);
        match tree.child(parent, name).and_then(|rel| tree.entry(&rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match tree_or_reply!(self, reply).attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        let result = (|| -> Result<FileAttr, Errno> {
            if let Some(len) = size {
                tree.pending(ino)?.0.set_len(len);
            }
            // Metadata other than the length is durable at once.
            if mode.is_some() || uid.is_some() || gid.is_some() {
                let real = tree.real(&tree.path(ino)?);
                if let Some(mode) = mode {
                    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode))
                        .map_err(Errno::from)?;
                }
                if uid.is_some() || gid.is_some() {
                    std::os::unix::fs::chown(&real, uid, gid).map_err(Errno::from)?;
                }
            }
            tree.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        let result = tree.child(parent, name).and_then(|rel| {
            std::fs::DirBuilder::new()
                .mode(mode & !umask)
                .create(tree.real(&rel))
                .map_err(Errno::from)?;
            tree.entry(&rel)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut tree = tree_or_reply!(self, reply);
        let result = tree.child(parent, name).and_then(|rel| {
            std::fs::remove_file(tree.real(&rel)).map_err(Errno::from)?;
            tree.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut tree = tree_or_reply!(self, reply);
        let result = tree.child(parent, name).and_then(|rel| {
            std::fs::remove_dir(tree.real(&rel)).map_err(Errno::from)?;
            tree.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        let result = (|| -> Result<(), Errno> {
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let from = tree.child(parent, name)?;
            let to = tree.child(newparent, newname)?;
            std::fs::rename(tree.real(&from), tree.real(&to)).map_err(Errno::from)?;
            tree.forget_path(&to);
            // The moved inode, and everything under it, keep their numbers.
            let moved: Vec<(PathBuf, u64)> = tree
                .by_path
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, &ino)| (p.clone(), ino))
                .collect();
            for (old, ino) in moved {
                let rest = old.strip_prefix(&from).expect("filtered on prefix");
                // `join("")` would add a trailing slash.
                let new = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
                tree.by_path.remove(&old);
                tree.by_path.insert(new.clone(), ino);
                if let Some(inode) = tree.inodes.get_mut(&ino) {
                    inode.path = Some(new);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match tree_or_reply!(self, reply).file(ino) {
            // No kernel page cache: every read and write comes here.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        let result = (|| -> Result<FileAttr, Errno> {
            let rel = tree.child(parent, name)?;
            let exclusive = flags & nix::fcntl::OFlag::O_EXCL.bits() != 0;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(!exclusive)
                .create_new(exclusive)
                .mode(mode & !umask)
                .open(tree.real(&rel))
                .map_err(Errno::from)?;
            let ino = tree.ino_of(&rel);
            let inode = tree.inodes.get_mut(&ino).expect("just allocated");
            inode.file = Some(file);
            inode.pending = None;
            tree.attr(ino)
        })();
        match result {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        let result = (|| -> Result<Vec<u8>, Errno> {
            let file = tree.file(ino)?;
            let len = file.len().map_err(Errno::from)?;
            let inode = tree.inodes.get(&ino.0).ok_or(Errno::ENOENT)?;
            let file = inode.file.as_ref().expect("opened above");
            let clean;
            let pending = match &inode.pending {
                Some(p) => p,
                None => {
                    clean = PendingFile::clean(len);
                    &clean
                }
            };
            pending
                .read(file, offset, u64::from(size))
                .map_err(Errno::from)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        let result = tree
            .pending(ino)
            .and_then(|(pending, file)| pending.write(file, offset, data).map_err(Errno::from));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync: pending writes stay pending.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        tree.syncs += 1;
        let result = tree
            .pending(ino)
            .and_then(|(pending, file)| pending.sync(file).map_err(Errno::from));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut tree = tree_or_reply!(self, reply);
        let result = (|| -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
            let rel = tree.path(ino)?;
            let parent = rel.parent().map_or(INodeNo::ROOT.0, |p| tree.ino_of(p));
            let mut names: Vec<(std::ffi::OsString, FileType)> = std::fs::read_dir(tree.real(&rel))
                .map_err(Errno::from)?
                .filter_map(Result::ok)
                .map(|e| {
                    let kind = e
                        .file_type()
                        .ok()
                        .and_then(FileType::from_std)
                        .unwrap_or(FileType::RegularFile);
                    (e.file_name(), kind)
                })
                .collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = vec![
                (ino.0, FileType::Directory, ".".into()),
                (parent, FileType::Directory, "..".into()),
            ];
            for (name, kind) in names {
                let child = tree.ino_of(&rel.join(&name));
                out.push((child, kind, name));
            }
            Ok(out)
        })();
        match result {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is durable at once (module doc).
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    //! The layer mounted for real: the planted-bug test of the power-cut
    //! scenario's disk, showing that it really drops what was not synced.

    use std::io::{Read, Seek, SeekFrom, Write};

    use super::*;

    fn mounted() -> (tempfile::TempDir, LazyMount) {
        if let Err(e) = LazyMount::available() {
            panic!("the lazy filesystem needs FUSE: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("backing")).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let mount = LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
        (dir, mount)
    }

    fn read_all(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        File::open(path).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn unsynced_writes_are_lost_in_a_power_cut_and_synced_ones_survive() {
        let (dir, mount) = mounted();
        let path = mount.mountpoint().join("db");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(b"synced").unwrap();
        f.sync_data().unwrap();
        f.write_all(b" and not synced").unwrap();
        // Reads, through this handle and a fresh one, see pending data.
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut seen = String::new();
        f.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "synced and not synced");
        assert_eq!(read_all(&path), b"synced and not synced");
        assert_eq!(
            read_all(&dir.path().join("backing/db")),
            b"synced",
            "the backing file holds only what was synced"
        );
        drop(f);
        assert_eq!(mount.pending().bytes, 15, "close() is not a sync");
        assert!(mount.syncs() >= 1);

        let lost = mount.power_cut().unwrap();
        assert_eq!(
            lost,
            Discarded {
                files: 1,
                writes: 1,
                bytes: 15
            }
        );
        assert_eq!(read_all(&path), b"synced");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 6);
        assert_eq!(mount.pending(), Discarded::default());
    }

    #[test]
    fn growing_and_shrinking_wait_for_the_sync_too() {
        let (_dir, mount) = mounted();
        let path = mount.mountpoint().join("grow");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 10_000], 0).unwrap();
        f.sync_data().unwrap();

        // Grown with set_len and pwrite far out, not synced: back to 10,000.
        f.set_len(50_000).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"tail", 60_000).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 60_004);
        let lost = mount.power_cut().unwrap();
        assert_eq!(lost.files, 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10_000);
        assert_eq!(read_all(&path), vec![1u8; 10_000]);

        // Shrunk, not synced: the cut brings the bytes back.
        f.set_len(100).unwrap();
        assert_eq!(read_all(&path).len(), 100);
        mount.power_cut().unwrap();
        assert_eq!(read_all(&path), vec![1u8; 10_000]);

        // Shrunk and synced: durable.
        f.set_len(100).unwrap();
        f.sync_all().unwrap();
        mount.power_cut().unwrap();
        assert_eq!(read_all(&path), vec![1u8; 100]);
    }

    /// A request held by a frozen disk fails with `EIO` when the power is
    /// cut, and leaves nothing behind; after a thaw, it goes through.
    #[test]
    fn requests_held_by_a_freeze_fail_when_the_power_goes() {
        let (_dir, mount) = mounted();
        let path = mount.mountpoint().join("held");
        std::fs::write(&path, b"").unwrap();
        let writer = |path: PathBuf| {
            std::thread::spawn(move || {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, b"late", 0)
            })
        };
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        mount.freeze();
        let held =
            std::thread::spawn(move || std::os::unix::fs::FileExt::write_all_at(&f, b"late", 0));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!held.is_finished(), "a frozen disk holds the write");
        assert_eq!(mount.power_cut().unwrap(), Discarded::default());
        let err = held.join().unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "EIO, got {err}");
        assert_eq!(read_all(&path), b"");

        mount.freeze();
        let thawed = writer(path.clone());
        std::thread::sleep(Duration::from_millis(200));
        mount.thaw();
        thawed.join().unwrap().unwrap();
        assert_eq!(read_all(&path), b"late");
    }

    #[test]
    fn metadata_is_durable_at_once() {
        let (dir, mount) = mounted();
        let root = mount.mountpoint();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a"), b"x").unwrap();
        std::fs::rename(root.join("sub/a"), root.join("b")).unwrap();
        std::fs::write(root.join("gone"), b"y").unwrap();
        std::fs::remove_file(root.join("gone")).unwrap();
        mount.power_cut().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "sub"]);
        assert_eq!(
            read_all(&root.join("b")),
            b"",
            "its content was never synced"
        );
        assert!(dir.path().join("backing/b").is_file());
    }
}
