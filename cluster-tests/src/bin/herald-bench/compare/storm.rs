//! Scenario (e) reconnect storm: N clients subscribe to one channel and
//! note their position, all drop their connections, M publications are
//! made while they are away, then all reconnect at once and ask for what
//! they missed. Reported: how long until every client had recovered all M,
//! and each client's own time to recover.
//!
//! Herald and Centrifugo: `subscribe` with `recover`, `offset` and `epoch`;
//! the reply says `recovered` and carries the missed publications. NATS:
//! the channel is a subject of the R3 JetStream stream; each client creates
//! an ephemeral push consumer starting after its position and counts the
//! messages it is sent (what a NATS client does to catch up).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::clients::{Lane, Subscribers};
use super::nats::{Event, js_ok};
use super::systems::{Deployment, STREAM, System};
use super::{Measure, ms, round};
use crate::fanout::histogram;

/// The channel (NATS: subject) of the storm.
const CHANNEL: &str = "storm.1";
/// Longest a client may take to recover.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// A client's resume position.
type Position = (u64, String);

/// Run the storm; the result as JSON, and whether every client recovered
/// everything.
pub(crate) async fn run(
    d: &Deployment,
    subs: &Subscribers,
    clients: usize,
    missed: usize,
    connect_concurrency: usize,
    smoke: bool,
) -> anyhow::Result<(Value, bool)> {
    let mut lane = Lane::open(&d.publish).await?;
    let publish = |seq: usize| format!("{{\"storm\":{seq}}}").into_bytes();
    lane.publish(CHANNEL, &publish(0))
        .await
        .map_err(anyhow::Error::msg)?;
    let position = subscribe_all(d, subs, clients, connect_concurrency).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for seq in 1..=missed {
        lane.publish(CHANNEL, &publish(seq))
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let gate = Arc::new(Semaphore::new(connect_concurrency));
    let started = Instant::now();
    let measure = Measure::start(&d.watched);
    let mut storm = JoinSet::new();
    for (index, pos) in position.into_iter().enumerate() {
        let (subs, gate, nats) = (subs.clone(), gate.clone(), d.system == System::Nats);
        storm.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let recovered = tokio::time::timeout(RECOVER_TIMEOUT, async {
                if nats {
                    recover_nats(&subs, index, pos.0, missed).await
                } else {
                    recover_centrifugo(&subs, index, &pos, missed).await
                }
            })
            .await
            .unwrap_or_else(|_| Err("timeout".to_string()));
            recovered.map(|()| started.elapsed())
        });
    }
    let mut took = histogram();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = Duration::ZERO;
    while let Some(outcome) = storm.join_next().await {
        match outcome {
            Ok(Ok(t)) => {
                last = last.max(t);
                took.saturating_record(u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1));
            }
            Ok(Err(reason)) => *failures.entry(reason).or_default() += 1,
            Err(_) => *failures.entry("panic".to_string()).or_default() += 1,
        }
    }
    let usage = measure.finish();
    let recovered = took.len();
    let result = json!({
        "clients": clients,
        "missed": missed,
        "connect_concurrency": connect_concurrency,
        "recovered": recovered,
        "failed": failures,
        "all_recovered_secs": round(last.as_secs_f64(), 3),
        "client_recover_ms": {
            "p50": ms(&took, 0.5),
            "p90": ms(&took, 0.9),
            "p99": ms(&took, 0.99),
            "max": ms(&took, 1.0),
        },
        "usage": usage,
    });
    eprintln!("{}: {result}", d.system.name());
    let ok = recovered as usize == clients || !smoke && recovered > 0;
    Ok((result, ok))
}

/// Connect every client once, note its position, and drop the connection.
async fn subscribe_all(
    d: &Deployment,
    subs: &Subscribers,
    clients: usize,
    connect_concurrency: usize,
) -> anyhow::Result<Vec<Position>> {
    if d.system == System::Nats {
        // All clients are at the stream's last sequence: what a JetStream
        // client would have seen last.
        let mut lane = super::nats::NatsTcp::connect(match &d.publish {
            super::systems::PublishTarget::Nats { addr, .. } => *addr,
            _ => bail!("NATS without a NATS address"),
        })
        .await?;
        let info = lane
            .request(&format!("$JS.API.STREAM.INFO.{STREAM}"), b"")
            .await
            .map_err(anyhow::Error::msg)?;
        let info = js_ok(&info).map_err(anyhow::Error::msg)?;
        let last = info["state"]["last_seq"].as_u64().unwrap_or(0);
        let mut opened = JoinSet::new();
        let gate = Arc::new(Semaphore::new(connect_concurrency));
        for index in 0..clients {
            let (subs, gate) = (subs.clone(), gate.clone());
            opened.spawn(async move {
                let _permit = gate.acquire_owned().await;
                subs.nats(index, CHANNEL).await.map(drop)
            });
        }
        while let Some(o) = opened.join_next().await {
            o?.map_err(anyhow::Error::msg)?;
        }
        return Ok(vec![(last, String::new()); clients]);
    }
    let gate = Arc::new(Semaphore::new(connect_concurrency));
    let mut opened = JoinSet::new();
    for index in 0..clients {
        let (subs, gate) = (subs.clone(), gate.clone());
        opened.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut conn = subs.connect(index).await?;
            let reply = conn.subscribe(CHANNEL, None).await?;
            Ok::<_, String>((
                index,
                (
                    reply["offset"].as_u64().unwrap_or(0),
                    reply["epoch"].as_str().unwrap_or("").to_string(),
                ),
            ))
        });
    }
    let mut positions = vec![(0, String::new()); clients];
    while let Some(o) = opened.join_next().await {
        let (index, pos) = o?.map_err(|e| anyhow::anyhow!("subscribing before the storm: {e}"))?;
        positions[index] = pos;
    }
    Ok(positions)
}

async fn recover_centrifugo(
    subs: &Subscribers,
    index: usize,
    pos: &Position,
    missed: usize,
) -> Result<(), String> {
    let mut conn = subs.connect(index).await?;
    let reply = conn.subscribe(CHANNEL, Some((pos.0, &pos.1))).await?;
    let got = reply["publications"].as_array().map_or(0, Vec::len);
    if reply["recovered"].as_bool() != Some(true) {
        return Err("recovered: false".to_string());
    }
    if got < missed {
        return Err(format!("recovered {got} of {missed}"));
    }
    Ok(())
}

async fn recover_nats(
    subs: &Subscribers,
    index: usize,
    last: u64,
    missed: usize,
) -> Result<(), String> {
    let deliver = format!("deliver.bench.{index}");
    let mut conn = subs.nats(index, &deliver).await?;
    let reply = format!("_INBOX.storm.{index}");
    let config = json!({
        "stream_name": STREAM,
        "config": {
            "deliver_subject": deliver,
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": last + 1,
            "ack_policy": "none",
            "filter_subject": CHANNEL,
            "mem_storage": true,
        }
    })
    .to_string();
    conn.send(&format!(
        "SUB {reply} 2\r\nPUB $JS.API.CONSUMER.CREATE.{STREAM} {reply} {}\r\n{config}\r\n",
        config.len()
    ))
    .await?;
    let mut got = 0;
    while got < missed {
        match conn.event().await? {
            Event::Msg { subject, payload } if subject == reply => {
                js_ok(&payload)?;
            }
            Event::Msg { .. } => got += 1,
            Event::Err(e) => return Err(format!("-ERR {e}")),
            _ => {}
        }
    }
    Ok(())
}
