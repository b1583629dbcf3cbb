//! The bytes of a snapshot in memory, as openraft reads them to send and
//! writes them as chunks arrive. Chunks land where their `offset` says, so
//! without a rule a single forged chunk with a huge offset would make the
//! receiver zero-fill a buffer of that size. The rule: a chunk may start
//! anywhere up to the end of what has arrived (a retransmission or the next
//! chunk), never beyond it, and the whole snapshot stays under
//! [`MAX_SNAPSHOT_BYTES`]. A refused chunk fails that `InstallSnapshot` call
//! only; the sender starts the snapshot over.

use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Largest snapshot a node accepts (the whole channel state, serialized).
pub const MAX_SNAPSHOT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Snapshot bytes with contiguous, bounded writes.
#[derive(Debug, Default)]
pub struct SnapshotData(Cursor<Vec<u8>>);

impl SnapshotData {
    /// A complete snapshot, ready to be read.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Cursor::new(bytes))
    }

    /// The bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.0.into_inner()
    }

    fn len(&self) -> u64 {
        self.0.get_ref().len() as u64
    }
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let end = self.0.position().saturating_add(buf.len() as u64);
        if end > MAX_SNAPSHOT_BYTES {
            return Poll::Ready(Err(refused(format!(
                "snapshot would reach {end} bytes, the limit is {MAX_SNAPSHOT_BYTES}"
            ))));
        }
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.0.position().checked_add_signed(d),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
        };
        match target {
            Some(t) if t <= self.len() => Pin::new(&mut self.0).start_seek(SeekFrom::Start(t)),
            _ => Err(refused(format!(
                "snapshot chunk at {position:?} leaves a gap after the {} bytes received",
                self.len()
            ))),
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.0).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn contiguous_and_retransmitted_chunks_are_written() {
        let mut d = SnapshotData::default();
        d.write_all(b"abc").await.unwrap();
        d.seek(SeekFrom::Start(3)).await.unwrap();
        d.write_all(b"def").await.unwrap();
        // A retransmission of the second chunk overwrites it.
        d.seek(SeekFrom::Start(3)).await.unwrap();
        d.write_all(b"DEF").await.unwrap();
        d.seek(SeekFrom::Start(0)).await.unwrap();
        let mut all = Vec::new();
        d.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcDEF");
    }

    #[tokio::test]
    async fn a_chunk_past_the_received_end_is_refused_without_growing() {
        let mut d = SnapshotData::default();
        d.write_all(b"abc").await.unwrap();
        let e = d.seek(SeekFrom::Start(1 << 40)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(d.seek(SeekFrom::Start(4)).await.is_err());
        assert_eq!(d.into_inner(), b"abc");
    }

    #[tokio::test]
    async fn the_size_limit_holds() {
        let mut d = SnapshotData::default();
        d.0.set_position(MAX_SNAPSHOT_BYTES - 1);
        assert!(d.write_all(b"xy").await.is_err());
    }
}
