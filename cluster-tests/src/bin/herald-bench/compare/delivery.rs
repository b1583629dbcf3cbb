//! Scenarios (a) broadcast and (b) many channels: S subscribers spread over
//! C channels (C = 1: everyone on one channel; C = S: a channel each),
//! publications at stepped rates, open loop, through each system's publish
//! API. Per step: delivered messages/s, end-to-end latency (each
//! publication carries its send time, see [`crate::fanout`]), publish-ack
//! latency, errors, and the servers' CPU and memory.
//!
//! Rates are stepped up until a step's p99 passes `stop_above_p99_ms` or it
//! delivers less than 99 %; such a step is repeated once (the machine may be
//! shared), and the run ends when the repeat fails too, or as soon as the
//! server disconnects a subscriber.
//!
//! Publishing is open loop: a scheduler issues publications on a 1 ms tick
//! into a bounded queue that `lanes` publishing connections drain; a full
//! queue skips the publication (counted as `SKIPPED`). The send time is
//! stamped when a lane sends, so the benchmark's own queueing is not charged
//! to the system's delivery latency (it is in the ack latency).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::clients::{Lane, Subscriber, Subscribers};
use super::systems::Deployment;
use super::{Measure, ms, round};
use crate::crowd::{Crowd, lost_since};
use crate::fanout::{Subscriber as Tally, Tallies, histogram, unix_us};

/// The parameters of one delivery run.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) subscribers: usize,
    pub(crate) channels: usize,
    pub(crate) rates: Vec<u32>,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) drain: Duration,
    pub(crate) stop_above_p99_ms: f64,
    pub(crate) payload_bytes: usize,
    pub(crate) lanes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) connect_concurrency: usize,
}

impl Delivery {
    fn channel(&self, i: usize) -> String {
        if self.channels == 1 {
            "bench.fanout".to_string()
        } else {
            format!("bench.ch.{}", i % self.channels)
        }
    }

    /// The JSON data of publication `seq` of `step`, stamped now.
    fn data(&self, step: usize, seq: u64, measured: bool) -> Vec<u8> {
        let head = format!(
            "{{\"hb\":[{step},{seq},{},{}],\"pad\":\"",
            unix_us(),
            u8::from(measured)
        );
        let pad = self.payload_bytes.saturating_sub(head.len() + 2);
        format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
    }
}

/// What the publishers did in one step's window.
#[derive(Debug)]
struct Published {
    acked: u64,
    ack_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Run every step against `d`; the run as JSON, and whether anything was
/// delivered (with `strict`: everything, in order).
pub(crate) async fn run(
    d: &Deployment,
    p: &Delivery,
    subs: &Subscribers,
    strict: bool,
) -> anyhow::Result<(Value, bool)> {
    let p = Arc::new(p.clone());
    let tallies = Arc::new(Tallies::new());
    let mut crowd = Crowd::new();
    let opened = crowd
        .open(
            0..p.subscribers,
            p.connect_concurrency,
            |index| {
                let (subs, channel) = (subs.clone(), p.channel(index));
                async move { subs.open(index, &channel).await }
            },
            {
                let tallies = tallies.clone();
                move |index, conn: Subscriber, stop| {
                    let mut tally = Tally::new(tallies.clone(), index);
                    async move { conn.run(stop, |l| tally.on_line(l)).await }
                }
            },
        )
        .await?;
    let connected = crowd.alive();
    eprintln!(
        "{}: {connected} of {} subscribers connected",
        d.system.name(),
        p.subscribers
    );
    let mut lanes = Vec::new();
    for _ in 0..p.lanes {
        lanes.push(Lane::open(&d.publish).await?);
    }
    let mut steps = Vec::new();
    let mut ok = connected > 0;
    let (mut next, mut repeat) = (0, false);
    for index in 0.. {
        let Some(&rate) = p.rates.get(next) else {
            break;
        };
        let subscribers = crowd.alive();
        let lost_before = crowd.lost();
        let start = Instant::now();
        let window = (start + p.warmup, start + p.warmup + p.duration);
        let publishing = tokio::spawn(publish_step(p.clone(), lanes, index, rate, start, window));
        tokio::time::sleep_until(window.0).await;
        let received_before = tallies.received();
        let measure = Measure::start(&d.watched);
        tokio::time::sleep_until(window.1).await;
        let received = tallies.received().saturating_sub(received_before);
        let usage = measure.finish();
        let (returned, published) = publishing.await.context("the publisher failed")??;
        lanes = returned;
        let expected =
            published.acked * subscribers as u64 / p.channels.min(subscribers).max(1) as u64;
        let drain_until = Instant::now() + p.drain;
        while Instant::now() < drain_until && tallies.delivered(index) < expected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seen = tallies.collect(index)?;
        let dropped: u64 = lost_since(&lost_before, &crowd.lost()).values().sum();
        let secs = p.duration.as_secs_f64();
        let delivered_pct = (expected > 0).then(|| seen.delivered as f64 * 100.0 / expected as f64);
        let errors = published.errors.values().sum::<u64>() + seen.gaps + seen.duplicates + dropped;
        let p99 = ms(&seen.latency_us, 0.99);
        let step = json!({
            "rate": rate,
            "repeat": repeat,
            "subscribers": subscribers,
            "acked_per_sec": round(published.acked as f64 / secs, 1),
            "ack_ms": {"p50": ms(&published.ack_us, 0.5), "p99": ms(&published.ack_us, 0.99)},
            "received_per_sec": round(received as f64 / secs, 1),
            "delivered_percent": delivered_pct.map(|x| round(x, 2)),
            "latency_ms": {
                "p50": ms(&seen.latency_us, 0.5),
                "p90": ms(&seen.latency_us, 0.9),
                "p99": p99,
                "max": ms(&seen.latency_us, 1.0),
            },
            "errors": errors,
            "publish_errors": published.errors,
            "offset_gaps": seen.gaps,
            "offset_duplicates": seen.duplicates,
            "disconnected": dropped,
            "usage": usage,
        });
        eprintln!("{}: {step}", d.system.name());
        steps.push(step);
        if strict {
            ok &= errors == 0 && expected > 0 && seen.delivered == expected;
        }
        let short = delivered_pct.is_some_and(|x| x < 99.0);
        let over = (p.stop_above_p99_ms > 0.0 && p99 > p.stop_above_p99_ms) || short;
        if dropped > 0 || (over && repeat) {
            break;
        }
        // On a shared machine one step can be unlucky: a step over the
        // limit is run once more before the rate is called too high.
        repeat = over;
        if !over {
            next += 1;
        }
    }
    crowd.stop(Duration::from_secs(5)).await;
    Ok((
        json!({
            "subscribers": p.subscribers,
            "channels": p.channels,
            "connected": connected,
            "connect_failures": opened.failed,
            "payload_bytes": p.payload_bytes,
            "duration_secs": p.duration.as_secs_f64(),
            "warmup_secs": p.warmup.as_secs_f64(),
            "stop_above_p99_ms": p.stop_above_p99_ms,
            "steps": steps,
        }),
        ok,
    ))
}

/// Publish at `rate` from `start` to the end of `window`; count what was
/// issued inside it. Gives the lanes back when every publish is answered.
async fn publish_step(
    p: Arc<Delivery>,
    lanes: Vec<Lane>,
    step: usize,
    rate: u32,
    start: Instant,
    window: (Instant, Instant),
) -> anyhow::Result<(Vec<Lane>, Published)> {
    let published = Arc::new(Mutex::new(Published {
        acked: 0,
        ack_us: histogram(),
        errors: BTreeMap::new(),
    }));
    let (jobs_tx, jobs_rx) = mpsc::channel::<(u64, bool)>(p.max_in_flight);
    let jobs_rx = Arc::new(tokio::sync::Mutex::new(jobs_rx));
    let mut workers = JoinSet::new();
    for mut lane in lanes {
        let (jobs, published, p) = (jobs_rx.clone(), published.clone(), p.clone());
        workers.spawn(async move {
            loop {
                let Some((seq, measured)) = jobs.lock().await.recv().await else {
                    return lane;
                };
                let channel = p.channel(seq as usize);
                let sent = Instant::now();
                let outcome = tokio::time::timeout(
                    Duration::from_secs(10),
                    lane.publish(&channel, &p.data(step, seq, measured)),
                )
                .await
                .unwrap_or_else(|_| Err("TIMEOUT".to_string()));
                if measured {
                    record(&published, outcome, sent.elapsed());
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut issued = 0u64;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= window.1 {
            break;
        }
        let due = ((now - start).as_secs_f64() * f64::from(rate)) as u64;
        let measured = now >= window.0;
        while issued < due {
            if jobs_tx.try_send((issued, measured)).is_err() && measured {
                record(&published, Err("SKIPPED".to_string()), Duration::ZERO);
            }
            issued += 1;
        }
    }
    drop(jobs_tx);
    let mut lanes = Vec::new();
    while let Some(lane) = workers.join_next().await {
        lanes.push(lane.context("a publishing lane panicked")?);
    }
    let published = std::mem::replace(
        &mut *published.lock().unwrap_or_else(|e| e.into_inner()),
        Published {
            acked: 0,
            ack_us: histogram(),
            errors: BTreeMap::new(),
        },
    );
    Ok((lanes, published))
}

fn record(published: &Mutex<Published>, outcome: Result<(), String>, took: Duration) {
    let mut p = published.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Ok(()) => {
            p.acked += 1;
            p.ack_us
                .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
        }
        Err(reason) => *p.errors.entry(reason).or_default() += 1,
    }
}
