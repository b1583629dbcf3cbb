//! Scenario (c) durable publish: P closed-loop publishers, each sending one
//! publication and waiting for the system's acknowledgement before the
//! next: Herald's gRPC ack (committed on 2 of 3 Raft voters, fsynced),
//! JetStream's pub-ack from an R3 file stream, Centrifugo's HTTP API answer
//! with the Redis engine (history written to the Redis primary, which
//! fsyncs every write and replicates asynchronously to two replicas).
//! Publications rotate over 100 channels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::clients::Lane;
use super::systems::Deployment;
use super::{Measure, ms, round};
use crate::fanout::{histogram, unix_us};

/// Channels the publishers rotate over.
const CHANNELS: u64 = 100;

#[derive(Debug)]
struct Tally {
    acked: u64,
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// One step per publisher count; the run as JSON, and whether every step
/// acknowledged something.
pub(crate) async fn run(
    d: &Deployment,
    levels: &[usize],
    warmup: Duration,
    duration: Duration,
    payload_bytes: usize,
) -> anyhow::Result<(Value, bool)> {
    let mut steps = Vec::new();
    let mut ok = true;
    for &publishers in levels {
        let tally = Arc::new(Mutex::new(Tally {
            acked: 0,
            latency_us: histogram(),
            errors: BTreeMap::new(),
        }));
        let start = Instant::now() + Duration::from_millis(200);
        let window = (start + warmup, start + warmup + duration);
        let mut tasks = JoinSet::new();
        for worker in 0..publishers {
            let mut lane = Lane::open(&d.publish).await?;
            let tally = tally.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(start).await;
                let mut n = worker as u64;
                while Instant::now() < window.1 {
                    let channel = format!("durable.{}", n % CHANNELS);
                    n += publishers as u64;
                    let data = format!(
                        "{{\"sent_us\":{},\"pad\":\"{}\"}}",
                        unix_us(),
                        "x".repeat(payload_bytes.saturating_sub(40))
                    );
                    let sent = Instant::now();
                    let outcome = tokio::time::timeout(
                        Duration::from_secs(10),
                        lane.publish(&channel, data.as_bytes()),
                    )
                    .await
                    .unwrap_or_else(|_| Err("TIMEOUT".to_string()));
                    if sent < window.0 || sent >= window.1 {
                        continue;
                    }
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(()) => {
                            t.acked += 1;
                            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            t.latency_us.saturating_record(us.max(1));
                        }
                        Err(reason) => *t.errors.entry(reason).or_default() += 1,
                    }
                }
            });
        }
        tokio::time::sleep_until(window.0).await;
        let measure = Measure::start(&d.watched);
        tokio::time::sleep_until(window.1).await;
        let usage = measure.finish();
        while tasks.join_next().await.is_some() {}
        let t = tally.lock().unwrap_or_else(|e| e.into_inner());
        let step = json!({
            "publishers": publishers,
            "acked_per_sec": round(t.acked as f64 / duration.as_secs_f64(), 1),
            "latency_ms": {
                "p50": ms(&t.latency_us, 0.5),
                "p90": ms(&t.latency_us, 0.9),
                "p99": ms(&t.latency_us, 0.99),
                "max": ms(&t.latency_us, 1.0),
            },
            "errors": t.errors,
            "usage": usage,
        });
        eprintln!("{}: {step}", d.system.name());
        ok &= t.acked > 0;
        steps.push(step);
    }
    Ok((
        json!({
            "levels": levels,
            "channels": CHANNELS,
            "payload_bytes": payload_bytes,
            "warmup_secs": warmup.as_secs_f64(),
            "duration_secs": duration.as_secs_f64(),
            "steps": steps,
        }),
        ok,
    ))
}
