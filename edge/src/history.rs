//! Reading a channel's history across the node's pages.
//!
//! A node cuts every history answer at a byte budget
//! (`herald_proto::limits::PAGE_BYTES`), whatever `limit` asked for, so a
//! backlog of large publications arrives in several pages. The hub asks
//! for "everything after this position, up to `limit`" and must get all of
//! it: a short page would look like a node whose history lags, and the
//! recovery would end `recovered: false` although nothing was lost.
//! [`Paged`] keeps reading from the last publication received until it has
//! `limit` publications or the channel's newest one.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::channel::{ChannelName, Offset, Position};
use crate::hub::{HistoryPage, HistoryReader};
use crate::protocol::codes::ClientError;

/// A [`HistoryReader`] that follows the node's pages to the end.
pub struct Paged<R>(pub Arc<R>);

impl<R: HistoryReader> HistoryReader for Paged<R> {
    fn read(
        &self,
        channel: ChannelName,
        since: Position,
        limit: u32,
    ) -> BoxFuture<'static, Result<HistoryPage, ClientError>> {
        let reader = self.0.clone();
        Box::pin(async move {
            let mut page = reader.read(channel.clone(), since.clone(), limit).await?;
            loop {
                let got = page.publications.len();
                let Some(last) = page.publications.last().map(|p| p.offset) else {
                    return Ok(page);
                };
                if !page.in_window || got >= limit as usize || last >= page.offset.0 {
                    return Ok(page);
                }
                let from = Position {
                    epoch: since.epoch.clone(),
                    offset: Offset(last),
                };
                let more = reader
                    .read(channel.clone(), from, limit - got as u32)
                    .await?;
                if !more.in_window || more.epoch != page.epoch {
                    // The channel moved on (evicted, reset) while paging:
                    // the answer as a whole is not continuous.
                    return Ok(more);
                }
                let next = more.publications.first().map(|p| p.offset);
                if next != Some(last + 1) {
                    return Ok(page);
                }
                page.publications.extend(more.publications);
                page.offset = more.offset;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use herald_proto::v1::Publication;

    use super::*;
    use crate::channel::Epoch;

    /// A channel with offsets 1..=newest answering at most `page` per read.
    struct Pages {
        newest: u64,
        page: usize,
        reads: Mutex<usize>,
    }

    impl HistoryReader for Pages {
        fn read(
            &self,
            _channel: ChannelName,
            since: Position,
            limit: u32,
        ) -> BoxFuture<'static, Result<HistoryPage, ClientError>> {
            *self.reads.lock().unwrap() += 1;
            let publications = (since.offset.0 + 1..=self.newest)
                .take((limit as usize).min(self.page))
                .map(|offset| Publication {
                    offset,
                    epoch: "e".into(),
                    ..Default::default()
                })
                .collect();
            let page = HistoryPage {
                publications,
                epoch: Epoch::new("e"),
                offset: Offset(self.newest),
                in_window: true,
            };
            Box::pin(async move { Ok(page) })
        }
    }

    async fn read(newest: u64, page: usize, from: u64, limit: u32) -> (Vec<u64>, usize) {
        let pages = Arc::new(Pages {
            newest,
            page,
            reads: Mutex::new(0),
        });
        let since = Position {
            epoch: Epoch::new("e"),
            offset: Offset(from),
        };
        let got = Paged(pages.clone())
            .read(ChannelName::new("a").unwrap(), since, limit)
            .await
            .unwrap();
        let reads = *pages.reads.lock().unwrap();
        (got.publications.iter().map(|p| p.offset).collect(), reads)
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_newest_publication() {
        let (offsets, reads) = read(100, 7, 0, 300).await;
        assert_eq!(offsets, (1..=100).collect::<Vec<_>>());
        assert_eq!(reads, 15);
    }

    #[tokio::test]
    async fn never_more_than_the_limit() {
        let (offsets, _) = read(100, 7, 10, 20).await;
        assert_eq!(offsets, (11..=30).collect::<Vec<_>>());
        let (offsets, reads) = read(5, 7, 0, 300).await;
        assert_eq!((offsets.len(), reads), (5, 1));
    }
}
