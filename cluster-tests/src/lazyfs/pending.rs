//! What one file looks like between two `fsync`s: the writes and size
//! changes made since the last sync, held in memory over the file's durable
//! content, which stays as it was at that sync.
//!
//! This is the pure core of the lazy filesystem: no FUSE, no locks. The
//! durable content is reached through [`DurableFile`] (a real file in the
//! backing directory, or bytes in memory in the tests), so the rules below
//! are tested without mounting anything:
//!
//! * a read sees the pending state: pending pages, else the durable bytes,
//!   clipped to the smallest size the file had since the last sync (a
//!   shrink followed by a grow reads zeros, as on a disk), up to the
//!   pending length;
//! * a sync makes all of it durable: the durable file is clipped, resized,
//!   every pending page written, then `fdatasync`ed;
//! * a power cut discards it: the durable file is left exactly as the last
//!   sync left it.
//!
//! It must never write to the durable file outside [`PendingFile::sync`].

use std::collections::BTreeMap;
use std::io;

/// The unit in which pending writes are held.
const PAGE: u64 = 4096;

/// The durable content of a file: what survives a power cut.
pub(crate) trait DurableFile {
    /// Read at `offset` into `buf`; fewer bytes than asked only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncate or extend (with zeros) to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current length.
    fn len(&self) -> io::Result<u64>;
    /// Make everything written so far survive a power cut.
    fn sync_data(&self) -> io::Result<()>;
}

impl DurableFile for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match std::os::unix::fs::FileExt::read_at(self, &mut buf[done..], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

/// Writes and size changes since a file's last sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingFile {
    /// The length readers see.
    len: u64,
    /// Durable bytes at or past this offset read as zeros: the smallest
    /// length the file had since the last sync.
    clip: u64,
    /// Whole pages written since the last sync, by page index; bytes past
    /// `len` are always zero.
    pages: BTreeMap<u64, Box<[u8]>>,
    /// `write` calls since the last sync.
    writes: u64,
    /// Bytes those calls wrote.
    written: u64,
    /// Whether the length changed since the last sync.
    resized: bool,
}

/// What a power cut discarded from one file (or, summed, from a mount).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Files that had writes or size changes pending.
    pub files: u64,
    /// `write` calls never synced.
    pub writes: u64,
    /// Bytes those calls wrote.
    pub bytes: u64,
}

impl std::ops::AddAssign for Discarded {
    fn add_assign(&mut self, other: Self) {
        self.files += other.files;
        self.writes += other.writes;
        self.bytes += other.bytes;
    }
}

impl PendingFile {
    /// Nothing pending over a durable file of `durable_len` bytes.
    pub(crate) fn clean(durable_len: u64) -> Self {
        Self {
            len: durable_len,
            clip: durable_len,
            pages: BTreeMap::new(),
            writes: 0,
            written: 0,
            resized: false,
        }
    }

    /// Whether anything is pending.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.pages.is_empty() || self.resized
    }

    /// The length readers see.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Up to `size` bytes at `offset`, as readers see them.
    pub(crate) fn read(
        &self,
        durable: &impl DurableFile,
        offset: u64,
        size: u64,
    ) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(size).min(self.len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut at = offset;
        while at < end {
            let page = at / PAGE;
            let page_end = ((page + 1) * PAGE).min(end);
            let dst = &mut out[(at - offset) as usize..(page_end - offset) as usize];
            match self.pages.get(&page) {
                Some(bytes) => {
                    let from = (at - page * PAGE) as usize;
                    dst.copy_from_slice(&bytes[from..from + dst.len()]);
                }
                None => self.read_durable(durable, dst, at)?,
            }
            at = page_end;
        }
        Ok(out)
    }

    /// Durable bytes at `offset` into `dst`, zeros at and past the clip.
    fn read_durable(
        &self,
        durable: &impl DurableFile,
        dst: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        let visible = self.clip.saturating_sub(offset).min(dst.len() as u64) as usize;
        let got = durable.read_at(&mut dst[..visible], offset)?;
        dst[got..].fill(0);
        Ok(())
    }

    /// Write `data` at `offset`, growing the file as needed.
    pub(crate) fn write(
        &mut self,
        durable: &impl DurableFile,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let page = at / PAGE;
            let page_end = ((page + 1) * PAGE).min(end);
            if !self.pages.contains_key(&page) {
                let mut bytes = vec![0u8; PAGE as usize].into_boxed_slice();
                // Only what readers see now: bytes past `len` stay zero.
                let visible = self.len.saturating_sub(page * PAGE).min(PAGE) as usize;
                self.read_durable(durable, &mut bytes[..visible], page * PAGE)?;
                self.pages.insert(page, bytes);
            }
            let bytes = self.pages.get_mut(&page).expect("just ensured");
            let from = (at - page * PAGE) as usize;
            let src = &data[(at - offset) as usize..(page_end - offset) as usize];
            bytes[from..from + src.len()].copy_from_slice(src);
            at = page_end;
        }
        if end > self.len {
            self.len = end;
        }
        self.writes += 1;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Truncate or extend (with zeros) to `len`.
    pub(crate) fn set_len(&mut self, len: u64) {
        if len < self.len {
            let first_gone = len.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if !len.is_multiple_of(PAGE)
                && let Some(bytes) = self.pages.get_mut(&(len / PAGE))
            {
                bytes[(len % PAGE) as usize..].fill(0);
            }
            self.clip = self.clip.min(len);
        }
        self.len = len;
        self.resized = true;
    }

    /// Make everything pending durable (`fsync`/`fdatasync` of the file).
    pub(crate) fn sync(&mut self, durable: &impl DurableFile) -> io::Result<()> {
        if self.is_dirty() {
            if durable.len()? > self.clip {
                durable.set_len(self.clip)?;
            }
            durable.set_len(self.len)?;
            for (&page, bytes) in &self.pages {
                let start = page * PAGE;
                let n = self.len.saturating_sub(start).min(PAGE) as usize;
                durable.write_all_at(&bytes[..n], start)?;
            }
        }
        durable.sync_data()?;
        *self = Self::clean(self.len);
        Ok(())
    }

    /// What [`PendingFile::discard`] would discard now.
    pub(crate) fn would_discard(&self) -> Discarded {
        Discarded {
            files: u64::from(self.is_dirty()),
            writes: self.writes,
            bytes: self.written,
        }
    }

    /// Forget everything pending (a power cut); what was discarded.
    pub(crate) fn discard(&mut self, durable: &impl DurableFile) -> io::Result<Discarded> {
        let discarded = self.would_discard();
        *self = Self::clean(durable.len()?);
        Ok(discarded)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use proptest::prelude::*;

    use super::*;

    /// A durable file in memory that counts syncs.
    #[derive(Default)]
    struct Disk {
        bytes: RefCell<Vec<u8>>,
        syncs: RefCell<u32>,
    }

    impl DurableFile for Disk {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let bytes = self.bytes.borrow();
            let start = (offset as usize).min(bytes.len());
            let n = buf.len().min(bytes.len() - start);
            buf[..n].copy_from_slice(&bytes[start..start + n]);
            Ok(n)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut bytes = self.bytes.borrow_mut();
            let end = offset as usize + buf.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.bytes.borrow_mut().resize(len as usize, 0);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.bytes.borrow().len() as u64)
        }
        fn sync_data(&self) -> io::Result<()> {
            *self.syncs.borrow_mut() += 1;
            Ok(())
        }
    }

    fn disk(content: &[u8]) -> Disk {
        let d = Disk::default();
        d.bytes.borrow_mut().extend_from_slice(content);
        d
    }

    fn all(p: &PendingFile, d: &Disk) -> Vec<u8> {
        p.read(d, 0, u64::MAX).unwrap()
    }

    #[test]
    fn unsynced_writes_are_read_back_and_lost_in_a_cut() {
        let d = disk(b"durable");
        let mut p = PendingFile::clean(7);
        p.write(&d, 0, b"DUR").unwrap();
        p.write(&d, 7, b"+more").unwrap();
        assert_eq!(all(&p, &d), b"DURable+more");
        assert_eq!(&*d.bytes.borrow(), b"durable", "nothing reached the disk");
        let lost = p.discard(&d).unwrap();
        assert_eq!(
            lost,
            Discarded {
                files: 1,
                writes: 2,
                bytes: 8
            }
        );
        assert_eq!(all(&p, &d), b"durable");
        assert!(!p.is_dirty());
    }

    #[test]
    fn synced_writes_survive_a_cut() {
        let d = disk(b"");
        let mut p = PendingFile::clean(0);
        p.write(&d, 5000, b"far").unwrap();
        p.sync(&d).unwrap();
        assert_eq!(*d.syncs.borrow(), 1);
        p.write(&d, 0, b"lost").unwrap();
        p.discard(&d).unwrap();
        let mut want = vec![0u8; 5003];
        want[5000..].copy_from_slice(b"far");
        assert_eq!(all(&p, &d), want);
        assert_eq!(&*d.bytes.borrow(), &want);
    }

    #[test]
    fn shrink_then_grow_reads_zeros_and_a_cut_restores_the_old_length() {
        let d = disk(&[7u8; 10_000]);
        let mut p = PendingFile::clean(10_000);
        p.write(&d, 4090, b"abcdefghij").unwrap();
        p.set_len(4095);
        p.set_len(9000);
        let got = all(&p, &d);
        assert_eq!(got.len(), 9000);
        assert_eq!(&got[4090..4095], b"abcde");
        assert!(got[4095..].iter().all(|&b| b == 0), "regrown tail is zeros");
        assert!(got[..4090].iter().all(|&b| b == 7));
        p.discard(&d).unwrap();
        assert_eq!(all(&p, &d), vec![7u8; 10_000]);

        p.set_len(100);
        p.set_len(200);
        p.sync(&d).unwrap();
        let mut want = vec![7u8; 100];
        want.resize(200, 0);
        assert_eq!(&*d.bytes.borrow(), &want);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Sync,
        Cut,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..20_000, prop::collection::vec(any::<u8>(), 1..6000))
                .prop_map(|(o, d)| Op::Write(o, d)),
            1 => (0u64..24_000).prop_map(Op::SetLen),
            1 => Just(Op::Sync),
            1 => Just(Op::Cut),
        ]
    }

    proptest! {
        /// Against a model of two byte vectors (what readers see, what is
        /// durable): reads always match the first, the disk always equals
        /// the second, a sync copies the first to the second and a cut the
        /// second to the first.
        #[test]
        fn behaves_like_a_disk_with_a_volatile_cache(ops in prop::collection::vec(op(), 1..40)) {
            let d = disk(b"");
            let mut p = PendingFile::clean(0);
            let mut seen: Vec<u8> = Vec::new();
            let mut durable: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Write(o, data) => {
                        p.write(&d, o, &data).unwrap();
                        let end = o as usize + data.len();
                        if seen.len() < end { seen.resize(end, 0); }
                        seen[o as usize..end].copy_from_slice(&data);
                    }
                    Op::SetLen(n) => { p.set_len(n); seen.resize(n as usize, 0); }
                    Op::Sync => { p.sync(&d).unwrap(); durable = seen.clone(); }
                    Op::Cut => { p.discard(&d).unwrap(); seen = durable.clone(); }
                }
                prop_assert_eq!(p.len(), seen.len() as u64);
                prop_assert_eq!(&all(&p, &d), &seen);
                prop_assert_eq!(&*d.bytes.borrow(), &durable);
            }
        }
    }
}
