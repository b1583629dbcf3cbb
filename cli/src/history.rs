//! `herald history`: a channel's retained publications as JSON lines, then its
//! current position.
//!
//! Owns the line format scripts read: one JSON object per publication, then
//! `epoch <e> offset <n> in_window <bool>`. Payloads are shown as text (lossy
//! UTF-8); use the gRPC API directly for binary payloads.

use std::io::{BufWriter, ErrorKind, Write};

use anyhow::Context;
use clap::Args;
use herald_proto::v1::{HistoryRequest, HistoryResponse, Publication, StreamPosition};
use serde::Serialize;

use crate::client::Server;

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Channel, `namespace:name`.
    channel: String,
    /// Only publications after this offset (requires `--epoch`).
    #[arg(long, requires = "epoch")]
    since_offset: Option<u64>,
    /// The epoch `--since-offset` belongs to.
    #[arg(long, requires = "since_offset")]
    epoch: Option<String>,
    /// At most this many publications (0: the server maximum).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Newest first.
    #[arg(long)]
    reverse: bool,
    /// Read through the Raft leader, so a publication acknowledged just before
    /// is certainly included, whichever node `--server` is.
    #[arg(long)]
    linearizable: bool,
}

/// One output line. Field order is the documented one.
#[derive(Debug, Serialize)]
struct Line<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    event_type: &'a str,
    data: String,
    published_at_ms: i64,
}

impl<'a> From<&'a Publication> for Line<'a> {
    fn from(p: &'a Publication) -> Self {
        Line {
            channel: &p.channel,
            offset: p.offset,
            epoch: &p.epoch,
            event_type: &p.event_type,
            data: String::from_utf8_lossy(&p.data).into_owned(),
            published_at_ms: p.published_at_ms,
        }
    }
}

pub(crate) async fn run(server: &Server, args: HistoryArgs) -> anyhow::Result<()> {
    let since = match (args.since_offset, args.epoch) {
        (Some(offset), Some(epoch)) => Some(StreamPosition { offset, epoch }),
        _ => None,
    };
    let request = HistoryRequest {
        channel: args.channel,
        since,
        limit: args.limit,
        reverse: args.reverse,
        linearizable: args.linearizable,
    };
    let conn = server.connect().await?;
    let reply = conn
        .publisher()
        .history(request)
        .await
        .map_err(|s| conn.error(s))?
        .into_inner();
    match print(&reply) {
        // `herald history ... | head` closing the pipe early is not an error.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn print(reply: &HistoryResponse) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    for p in &reply.publications {
        serde_json::to_writer(&mut out, &Line::from(p))?;
        out.write_all(b"\n")?;
    }
    writeln!(
        out,
        "epoch {} offset {} in_window {}",
        reply.epoch, reply.offset, reply.in_window
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_keeps_field_order_and_shows_data_as_text() {
        let p = Publication {
            channel: "chat:a".into(),
            offset: 3,
            epoch: "e1".into(),
            event_type: "msg".into(),
            data: b"{\"x\":1}".to_vec().into(),
            published_at_ms: 42,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&Line::from(&p)).unwrap(),
            r#"{"channel":"chat:a","offset":3,"epoch":"e1","event_type":"msg","data":"{\"x\":1}","published_at_ms":42}"#
        );
    }
}
