//! How the leader grouped the step's publishes into Raft entries: its
//! `herald_publish_batch_items` histogram (publications per entry, recorded
//! by the node's proposer), scraped from `/metrics` before and after a step.
//!
//! Best effort: it needs the leader's HTTP address, known only for a node on
//! this machine started with `--http-listen`. A failed scrape leaves the
//! columns empty and never fails the benchmark.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRIC: &str = "herald_publish_batch_items";
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// A `/metrics` page larger than this is not the one we know.
const MAX_PAGE: u64 = 8 << 20;

/// The histogram's running totals at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Totals {
    items: f64,
    entries: f64,
}

/// Publications per Raft entry over a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grouping {
    /// Raft entries the leader proposed for publishes (each one fsync on a
    /// majority of the voters).
    pub(crate) entries: u64,
    pub(crate) items_per_entry: f64,
}

/// Totals since `before`.
pub(crate) fn since(before: Totals, after: Totals) -> Option<Grouping> {
    let entries = after.entries - before.entries;
    (entries >= 1.0).then(|| Grouping {
        entries: entries as u64,
        items_per_entry: (after.items - before.items) / entries,
    })
}

/// Read the totals from `http://<http_addr>/metrics`.
pub(crate) async fn scrape(http_addr: &str) -> Option<Totals> {
    parse(&metrics_page(http_addr).await?)
}

/// `GET http://<http_addr>/metrics` (headers included), or `None` when it
/// cannot be read within the scrape timeout. Also used for the edge's
/// gauges.
pub(crate) async fn metrics_page(http_addr: &str) -> Option<String> {
    let addr = match http_addr.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => http_addr.to_string(),
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, get_metrics(&addr))
        .await
        .ok()?
        .ok()
}

async fn get_metrics(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut page = String::new();
    stream.take(MAX_PAGE).read_to_string(&mut page).await?;
    Ok(page)
}

fn parse(page: &str) -> Option<Totals> {
    let mut items = None;
    let mut entries = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let (name, value) = match rest.split_once(char::is_whitespace) {
            Some((name, value)) => (name, value.trim()),
            None => continue,
        };
        let name = name.split('{').next().unwrap_or(name);
        match name {
            "_sum" => items = value.parse().ok(),
            "_count" => entries = value.parse().ok(),
            _ => {}
        }
    }
    Some(Totals {
        items: items?,
        entries: entries?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_from_a_prometheus_page() {
        let page = "HTTP/1.1 200 OK\r\n\r\n\
            # TYPE herald_publish_batch_items histogram\n\
            herald_publish_batch_items_bucket{le=\"1\"} 3\n\
            herald_publish_batch_items_sum 120\n\
            herald_publish_batch_items_count 10\n";
        let t = parse(page).unwrap();
        assert_eq!((t.items, t.entries), (120.0, 10.0));
        let later = Totals {
            items: 520.0,
            entries: 30.0,
        };
        let g = since(t, later).unwrap();
        assert_eq!(g.entries, 20);
        assert_eq!(g.items_per_entry, 20.0);
    }

    #[test]
    fn no_histogram_yet() {
        assert!(parse("HTTP/1.1 200 OK\r\n\r\n# nothing\n").is_none());
    }
}
