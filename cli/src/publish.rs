//! `herald publish`: one `Publish` call, answered with the stored position.
//!
//! Owns only the translation of flags into a `PublishRequest` and the one-line
//! answer; retries are the caller's business (with `--idempotency-key`, a retry
//! is stored once and answers ` duplicate`).

use std::collections::HashMap;
use std::io::Read;

use anyhow::Context;
use clap::Args;
use herald_proto::v1::PublishRequest;

use crate::client::Server;

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Channel, `namespace:name` (no colon: the default namespace).
    channel: String,
    /// Payload, sent as UTF-8 bytes; `-` reads it from stdin.
    data: String,
    /// Event type (selects the namespace's JSON Schema, if any).
    #[arg(long)]
    event_type: Option<String>,
    /// Content type; the server assumes `application/json` when absent.
    #[arg(long)]
    content_type: Option<String>,
    /// A retry with the same key (per channel) within the namespace's window
    /// is stored once and answers the original offset.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// A header `key=value`; repeat for several.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

pub(crate) async fn run(server: &Server, args: PublishArgs) -> anyhow::Result<()> {
    let data = if args.data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
        buf
    } else {
        args.data.into_bytes()
    };
    let request = PublishRequest {
        channel: args.channel,
        event_type: args.event_type.unwrap_or_default(),
        data: data.into(),
        content_type: args.content_type.unwrap_or_default(),
        idempotency_key: args.idempotency_key.unwrap_or_default(),
        headers: args.headers.into_iter().collect::<HashMap<_, _>>(),
    };
    let conn = server.connect().await?;
    let reply = conn
        .publisher()
        .publish(request)
        .await
        .map_err(|s| conn.error(s))?
        .into_inner();
    let duplicate = if reply.duplicate { " duplicate" } else { "" };
    println!("offset {} epoch {}{duplicate}", reply.offset, reply.epoch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_header;

    #[test]
    fn header_splits_at_first_equals() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_header("a="), Ok(("a".into(), String::new())));
        assert!(parse_header("=b").is_err());
        assert!(parse_header("ab").is_err());
    }
}
