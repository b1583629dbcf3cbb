//! The subscriber's side of the story: a client speaking the Centrifugo
//! client protocol (JSON) to an edge, as the real SDKs do — connect with a
//! token, subscribe, answer pings, and after any disconnect reconnect (to
//! the next edge of its list) and resubscribe with `recover` from the last
//! `(epoch, offset)` it saw — recording every subscribe outcome and every
//! publication it is handed, in order.
//!
//! [`check_subscriber`] then proves guarantees 2 and 3 of `docs/guarantees.md` for
//! one subscriber against the publishers' [`Ledger`]: per channel, offsets
//! follow each other with no gap, duplicate or reordering across reconnects
//! (unless the edge said `recovered: false`, which is recorded and counted),
//! every publication is one that was sent to that channel at the offset its
//! publisher was told, and the subscriber reached every acknowledged one.
//! What was delivered is tracked apart from what replies claimed: a
//! `recovered: true` reply at offset N must be followed by the publications
//! up to N, even when no later publication arrives to reveal the gap.
//!
//! [`Tuning::crowd`] makes a subscriber cheap enough to run ten thousand in
//! one process (small read buffer) and makes a crowd of them reconnect the
//! way SDKs do, with randomised backoff, rather than in lockstep;
//! [`Tally`] sums many records for a verdict line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::ledger::Ledger;
use crate::rng::SplitMix64;

/// Connect, handshake and subscribe replies must come within this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a subscriber does.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// A name for reports.
    pub name: String,
    /// Edge WebSocket URLs: the first is used first; each reconnect moves to
    /// the next.
    pub urls: Vec<String>,
    /// The connection token (e.g. [`crate::edge::edge_token`]).
    pub token: String,
    /// Channels to subscribe to.
    pub channels: Vec<String>,
}

/// How a subscriber connects and reconnects. [`Tuning::default`] is one
/// attentive client; [`Tuning::crowd`] one of thousands.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// WebSocket read buffer; `None` keeps tungstenite's default (128 KiB,
    /// zero-filled, too much for thousands of clients in one process).
    pub read_buffer: Option<usize>,
    /// First pause before reconnecting; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest pause between reconnects.
    pub max_backoff: Duration,
    /// Draw each pause uniformly from its upper half (seeded by the
    /// subscriber's name), as the SDKs do so that a crowd disconnected at
    /// once does not come back in lockstep; also before the first
    /// reconnect after a session that worked.
    pub jitter: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            read_buffer: None,
            min_backoff: MIN_BACKOFF,
            max_backoff: MAX_BACKOFF,
            jitter: false,
        }
    }
}

impl Tuning {
    /// One client of a crowd: a 4 KiB read buffer, and jittered backoff
    /// from 200 ms up to 5 s.
    pub fn crowd() -> Self {
        Self {
            read_buffer: Some(4096),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            jitter: true,
        }
    }
}

/// One entry of a channel's log, in the order the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A subscribe reply: the stream position it reported, whether the
    /// client asked to recover, and whether the edge recovered everything.
    Subscribed {
        /// The channel's epoch.
        epoch: String,
        /// The channel's newest offset when subscribed.
        offset: u64,
        /// The client asked to recover from an earlier position.
        recovering: bool,
        /// The edge delivered everything missed (only meaningful when
        /// recovering).
        recovered: bool,
    },
    /// A publication, from a subscribe reply or a push.
    Publication {
        /// Its offset.
        offset: u64,
        /// The ledger id in its payload (`{"id":N}`), if any.
        id: Option<u64>,
    },
}

/// Everything one subscriber saw.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The subscriber's name.
    pub name: String,
    /// Each channel's events in order.
    pub channels: BTreeMap<String, Vec<Event>>,
    /// Sessions that completed the connect handshake.
    pub sessions: u64,
    /// Why each session (or attempt) ended.
    pub disconnects: Vec<String>,
}

impl Record {
    /// The newest position seen on `channel`: the last publication's offset
    /// or the last subscribe reply's offset, whichever is later.
    pub fn position(&self, channel: &str) -> Option<(String, u64)> {
        let mut pos = None;
        for e in self.channels.get(channel)? {
            advance(&mut pos, e);
        }
        pos.map(|(epoch, offset)| (epoch.to_string(), offset))
    }

    /// How far the client really got on `channel`: the offset of the last
    /// publication it was handed, or of a subscribe reply that restarted the
    /// stream (a fresh subscribe, or `recovered: false`), whichever is
    /// later. Unlike [`Record::position`], a `recovered: true` reply does
    /// not move it: the reply only claims a position, the publications
    /// recovered up to it must actually arrive.
    pub fn delivered(&self, channel: &str) -> Option<u64> {
        let mut delivered = None;
        for e in self.channels.get(channel)? {
            let moved_to = match e {
                Event::Subscribed {
                    recovering: true,
                    recovered: true,
                    ..
                } => continue,
                Event::Subscribed { offset, .. } | Event::Publication { offset, .. } => *offset,
            };
            delivered = Some(delivered.map_or(moved_to, |d: u64| d.max(moved_to)));
        }
        delivered
    }

    /// Publications received on every channel (recovered ones included).
    pub fn received(&self) -> usize {
        self.channels
            .values()
            .flatten()
            .filter(|e| matches!(e, Event::Publication { .. }))
            .count()
    }

    /// Resubscribes the edge answered with `recovered: false`.
    pub fn not_recovered(&self) -> usize {
        self.resubscribes(false)
    }

    /// The bodies of the HTTP refusals of WebSocket handshakes (an edge
    /// refusing before the upgrade: `{"code":..,"message":..}`), with
    /// their status, e.g. `503 {"code":3504,...}`.
    pub fn refusals(&self) -> Vec<&str> {
        self.disconnects
            .iter()
            .filter_map(|d| d.split_once(REFUSED).map(|(_, r)| r))
            .collect()
    }

    /// One line per resubscribe answered `recovered: false`: the channel,
    /// the position the client asked to recover from, and the position the
    /// edge answered with (behind the client: the edge lagged the client's
    /// previous edge; far ahead: the client missed more than the edge
    /// recovers).
    pub fn not_recovered_explained(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (channel, events) in &self.channels {
            let mut at: Option<(&str, u64)> = None;
            for e in events {
                if let Event::Subscribed {
                    epoch,
                    offset,
                    recovering: true,
                    recovered: false,
                } = e
                {
                    let (from_epoch, from) = at.unwrap_or(("", 0));
                    lines.push(format!(
                        "subscriber {} {channel}: recovering from {from} (epoch {from_epoch:?}), \
                         the edge answered offset {offset} (epoch {epoch:?})",
                        self.name
                    ));
                }
                advance(&mut at, e);
            }
        }
        lines
    }

    /// Resubscribes the edge answered with `recovered: true`.
    pub fn recovered(&self) -> usize {
        self.resubscribes(true)
    }

    /// Resubscribes (subscribes asking to recover) answered `recovered`.
    fn resubscribes(&self, recovered: bool) -> usize {
        self.channels
            .values()
            .flatten()
            .filter(|e| {
                matches!(e, Event::Subscribed { recovering: true, recovered: r, .. } if *r == recovered)
            })
            .count()
    }
}

/// How a refused handshake is recorded in [`Record::disconnects`].
const REFUSED: &str = "handshake refused: HTTP ";

/// A running subscriber task.
#[derive(Debug)]
pub struct Subscriber {
    channels: Vec<String>,
    record: Arc<Mutex<Record>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Start the subscriber; it connects, subscribes and keeps reconnecting
    /// until [`Subscriber::stop`].
    pub fn spawn(opts: SubscriberOptions) -> Self {
        Self::spawn_with(opts, Tuning::default())
    }

    /// [`Subscriber::spawn`] with `tuning`.
    pub fn spawn_with(opts: SubscriberOptions, tuning: Tuning) -> Self {
        assert!(!opts.urls.is_empty(), "a subscriber needs an edge URL");
        let record = Arc::new(Mutex::new(Record {
            name: opts.name.clone(),
            ..Record::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let channels = opts.channels.clone();
        let task = tokio::spawn(run(opts, tuning, record.clone(), stopped));
        Self {
            channels,
            record,
            stop,
            task,
        }
    }

    /// A copy of what it has seen so far.
    pub fn snapshot(&self) -> Record {
        self.record.lock().expect("record lock").clone()
    }

    /// Sessions that completed the handshake so far.
    pub fn sessions(&self) -> u64 {
        self.record.lock().expect("record lock").sessions
    }

    /// Wait until the subscriber is subscribed to all its channels (hang
    /// guard `within`).
    pub async fn wait_subscribed(&self, within: Duration) -> anyhow::Result<()> {
        let want: BTreeMap<String, u64> = self.channels.iter().map(|c| (c.clone(), 0)).collect();
        let deadline = Instant::now() + within;
        loop {
            let missing = {
                let r = self.record.lock().expect("record lock");
                want.keys().filter(|c| r.position(c).is_none()).count()
            };
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let r = self.snapshot();
                bail!(
                    "subscriber {} not subscribed to {missing} channel(s) after {within:?} (sessions {}, disconnects {:?})",
                    r.name,
                    r.sessions,
                    r.disconnects.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every channel of `want` has reached at least its offset
    /// (hang guard `within`).
    pub async fn wait_for(
        &self,
        want: &BTreeMap<String, u64>,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let behind: Vec<String> = {
                let r = self.record.lock().expect("record lock");
                want.iter()
                    .filter_map(|(c, o)| {
                        let at = r.position(c).map_or(0, |p| p.1);
                        (at < *o).then(|| format!("{c} at {at} of {o}"))
                    })
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let r = self.snapshot();
                bail!(
                    "subscriber {} still behind after {within:?}: {} (sessions {}, last disconnects {:?})",
                    r.name,
                    behind
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.sessions,
                    r.disconnects.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Close the connection and return the record.
    pub async fn stop(self) -> Record {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.record.lock().expect("record lock").clone()
    }
}

async fn run(
    opts: SubscriberOptions,
    tuning: Tuning,
    record: Arc<Mutex<Record>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut rng = SplitMix64::new(opts.name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }));
    let mut backoff = tuning.min_backoff;
    for attempt in 0usize.. {
        if *stopped.borrow() {
            return;
        }
        let url = &opts.urls[attempt % opts.urls.len()];
        let mut session = Session {
            opts: &opts,
            record: &record,
            pending: BTreeMap::new(),
            connected: false,
        };
        let outcome = tokio::select! {
            r = session.run(url, tuning.read_buffer) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let why = match outcome {
            Ok(why) => why,
            Err(e) => format!("{e:#}"),
        };
        let connected = session.connected;
        record
            .lock()
            .expect("record lock")
            .disconnects
            .push(format!("{url}: {why}"));
        backoff = if connected {
            tuning.min_backoff
        } else {
            (backoff * 2).min(tuning.max_backoff)
        };
        let pause = if tuning.jitter {
            let half = backoff.as_millis() as u64 / 2;
            Duration::from_millis(half + rng.between(0..=half))
        } else {
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// One connection's life.
struct Session<'a> {
    opts: &'a SubscriberOptions,
    record: &'a Mutex<Record>,
    /// Subscribe command id → (channel, whether it asked to recover).
    pending: BTreeMap<u64, (String, bool)>,
    connected: bool,
}

impl Session<'_> {
    /// Returns why the session ended (a close, a disconnect push, an error).
    async fn run(&mut self, url: &str, read_buffer: Option<usize>) -> anyhow::Result<String> {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| anyhow!("not a ws:// URL: {url}"))?;
        let config = read_buffer.map(|size| WebSocketConfig::default().read_buffer_size(size));
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(authority).await?;
            tcp.set_nodelay(true)?;
            anyhow::Ok(tokio_tungstenite::client_async_with_config(url, tcp, config).await)
        };
        let handshake = tokio::time::timeout(STEP_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("WebSocket handshake timed out"))?
            .context("WebSocket handshake")?;
        let (mut ws, _) = match handshake {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(refusal)) => {
                let body = refusal
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                return Ok(format!(
                    "{REFUSED}{} {}",
                    refusal.status().as_u16(),
                    body.trim()
                ));
            }
            Err(e) => return Err(anyhow!(e).context("WebSocket handshake")),
        };
        let connect =
            json!({"id": 1, "connect": {"token": self.opts.token, "name": self.opts.name}});
        ws.send(Message::text(connect.to_string())).await?;
        let mut commands = Vec::new();
        for (next_id, channel) in (2u64..).zip(&self.opts.channels) {
            let position = self.record.lock().expect("record lock").position(channel);
            let mut sub = json!({"channel": channel});
            if let Some((epoch, offset)) = &position {
                sub["recover"] = json!(true);
                sub["epoch"] = json!(epoch);
                sub["offset"] = json!(offset);
            }
            commands.push(json!({"id": next_id, "subscribe": sub}).to_string());
            self.pending
                .insert(next_id, (channel.clone(), position.is_some()));
        }
        let mut subscribed = false;
        let handshake_deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let frame = if self.pending.is_empty() {
                ws.next().await
            } else {
                match tokio::time::timeout_at(handshake_deadline, ws.next()).await {
                    Ok(f) => f,
                    Err(_) => bail!("no reply to connect/subscribe within {STEP_TIMEOUT:?}"),
                }
            };
            let text = match frame {
                None => return Ok("stream ended".into()),
                Some(Err(e)) => return Ok(format!("read error: {e}")),
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Close(c))) => {
                    return Ok(match c {
                        Some(c) => format!("closed {} {}", u16::from(c.code), c.reason),
                        None => "closed".into(),
                    });
                }
                Some(Ok(_)) => continue,
            };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let msg: Value = serde_json::from_str(line)
                    .with_context(|| format!("edge sent invalid JSON: {line}"))?;
                if msg.as_object().is_some_and(|o| o.is_empty()) {
                    ws.send(Message::text("{}")).await?;
                    continue;
                }
                if let Some(why) = self.handle(&msg)? {
                    return Ok(why);
                }
            }
            if self.connected && !subscribed {
                subscribed = true;
                if !commands.is_empty() {
                    ws.send(Message::text(commands.join("\n"))).await?;
                }
            }
        }
    }

    /// Apply one message from the edge; `Some(why)` ends the session.
    fn handle(&mut self, msg: &Value) -> anyhow::Result<Option<String>> {
        if let Some(push) = msg.get("push") {
            let channel = push["channel"].as_str().unwrap_or_default().to_string();
            if let Some(p) = push.get("pub") {
                self.note(&channel, publication(p));
            } else if let Some(d) = push.get("disconnect") {
                return Ok(Some(format!("disconnect push {d}")));
            } else if let Some(u) = push.get("unsubscribe") {
                return Ok(Some(format!("unsubscribed from {channel}: {u}")));
            }
            return Ok(None);
        }
        let id = msg["id"].as_u64().unwrap_or(0);
        if let Some(e) = msg.get("error") {
            bail!("command {id} failed: {e}");
        }
        if id == 1 && msg.get("connect").is_some() {
            self.connected = true;
            self.record.lock().expect("record lock").sessions += 1;
            return Ok(None);
        }
        if let (Some(reply), Some((channel, recovering))) =
            (msg.get("subscribe"), self.pending.remove(&id))
        {
            self.note(
                &channel,
                Event::Subscribed {
                    epoch: reply["epoch"].as_str().unwrap_or_default().to_string(),
                    offset: reply["offset"].as_u64().unwrap_or(0),
                    recovering,
                    recovered: reply["recovered"].as_bool().unwrap_or(false),
                },
            );
            for p in reply["publications"].as_array().into_iter().flatten() {
                self.note(&channel, publication(p));
            }
        }
        Ok(None)
    }

    fn note(&self, channel: &str, event: Event) {
        self.record
            .lock()
            .expect("record lock")
            .channels
            .entry(channel.to_string())
            .or_default()
            .push(event);
    }
}

/// Move a running stream position past one event: a subscribe reply sets
/// the epoch and never moves the offset back; a publication moves it on.
fn advance<'a>(pos: &mut Option<(&'a str, u64)>, e: &'a Event) {
    match e {
        Event::Subscribed { epoch, offset, .. } => {
            let keep = pos.map_or(0, |(_, o)| o);
            *pos = Some((epoch, keep.max(*offset)));
        }
        Event::Publication { offset, .. } => {
            if let Some(p) = pos.as_mut() {
                p.1 = p.1.max(*offset);
            }
        }
    }
}

fn publication(p: &Value) -> Event {
    Event::Publication {
        offset: p["offset"].as_u64().unwrap_or(0),
        id: p["data"]["id"].as_u64(),
    }
}

/// Check one subscriber's record against the ledger; returns every
/// violation (empty: guarantees 2 and 3 held for it). Call after the
/// subscriber caught up ([`Subscriber::wait_for`] the ledger's newest
/// acknowledged offsets), so that "reached every acknowledged
/// publication" is meaningful.
pub fn check_subscriber(ledger: &Ledger, record: &Record) -> Vec<String> {
    let mut violations = Vec::new();
    for (channel, events) in &record.channels {
        let who = format!("subscriber {} {channel}", record.name);
        let mut expected: Option<u64> = None;
        let mut epoch: Option<&str> = None;
        for e in events {
            match e {
                Event::Subscribed {
                    epoch: e,
                    offset,
                    recovering,
                    recovered,
                } => {
                    if *recovering && *recovered {
                        // A channel with no publication yet has no epoch
                        // (""), so a first epoch after that is no change;
                        // the offsets and ids below still prove continuity.
                        if epoch.is_some_and(|old| !old.is_empty() && old != e) {
                            violations.push(format!(
                                "{who}: recovered: true across an epoch change ({epoch:?} -> {e})"
                            ));
                        }
                    } else {
                        // A fresh subscribe, or the edge said it could not
                        // recover: the stream restarts after `offset`.
                        expected = Some(offset + 1);
                    }
                    epoch = Some(e);
                }
                Event::Publication { offset, id } => {
                    let want = expected.unwrap_or(*offset);
                    if *offset < want {
                        violations.push(format!(
                            "{who}: offset {offset} after {} (duplicate or reordered)",
                            want - 1
                        ));
                    } else if *offset > want {
                        violations.push(format!(
                            "{who}: gap, offsets {want}..={} never delivered",
                            offset - 1
                        ));
                    }
                    expected = Some(expected.map_or(offset + 1, |x| x.max(offset + 1)));
                    check_identity(ledger, &who, channel, *offset, *id, &mut violations);
                }
            }
        }
        // A `recovered: true` reply claims the stream is whole up to its
        // offset; a later publication shows a gap behind it, but when none
        // follows, only comparing the claim with what was delivered does.
        let reached = record.delivered(channel).unwrap_or(0);
        let claimed = events
            .iter()
            .filter_map(|e| match e {
                Event::Subscribed {
                    offset,
                    recovering: true,
                    recovered: true,
                    ..
                } => Some(*offset),
                _ => None,
            })
            .max();
        if let Some(claimed) = claimed
            && claimed > reached
        {
            violations.push(format!(
                "{who}: tail gap, a recovered: true reply claimed offset {claimed} but \
                 offsets {}..={claimed} were never delivered",
                reached + 1
            ));
        }
        if let Some(newest) = ledger.newest_acked_offset(channel)
            && reached < newest
        {
            violations.push(format!(
                "{who}: reached offset {reached}, but {newest} was acknowledged"
            ));
        }
    }
    violations
}

/// What many subscribers saw, summed for a verdict line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Subscribers counted.
    pub subscribers: usize,
    /// Publications received (recovered ones included).
    pub received: usize,
    /// Sessions that completed the connect handshake.
    pub sessions: u64,
    /// Resubscribes answered `recovered: true`.
    pub recovered: usize,
    /// Resubscribes answered `recovered: false`.
    pub not_recovered: usize,
}

impl Tally {
    /// Count one subscriber's record.
    pub fn add(&mut self, record: &Record) {
        self.subscribers += 1;
        self.received += record.received();
        self.sessions += record.sessions;
        self.recovered += record.recovered();
        self.not_recovered += record.not_recovered();
    }
}

/// The end of a scenario's subscribers: wait (hang guard `within`, shared)
/// until each has reached the newest acknowledged offset of every channel
/// it subscribed to, stop it, and check its record ([`check_subscriber`]).
/// Returns the tally, every violation (a subscriber that never caught up
/// is one), and the records.
pub async fn finish_subscribers(
    subscribers: Vec<Subscriber>,
    ledger: &Ledger,
    within: Duration,
) -> (Tally, Vec<String>, Vec<Record>) {
    let deadline = Instant::now() + within;
    let mut tally = Tally::default();
    let mut violations = Vec::new();
    let mut records = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        let newest: BTreeMap<String, u64> = s
            .channels
            .iter()
            .filter_map(|c| Some((c.clone(), ledger.newest_acked_offset(c)?)))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = s.wait_for(&newest, left).await {
            violations.push(format!("{e:#}"));
        }
        let record = s.stop().await;
        tally.add(&record);
        violations.extend(check_subscriber(ledger, &record));
        records.push(record);
    }
    (tally, violations, records)
}

fn check_identity(
    ledger: &Ledger,
    who: &str,
    channel: &str,
    offset: u64,
    id: Option<u64>,
    violations: &mut Vec<String>,
) {
    let Some(id) = id else {
        violations.push(format!("{who}: offset {offset} carries no ledger id"));
        return;
    };
    match ledger.channel_of(id) {
        None => violations.push(format!("{who}: offset {offset} is id {id}, never sent")),
        Some(c) if c != channel => violations.push(format!(
            "{who}: offset {offset} is id {id}, which was sent to {c}"
        )),
        Some(_) => {
            if let Some(ack) = ledger.ack(id)
                && ack.offset != offset
            {
                violations.push(format!(
                    "{who}: id {id} delivered at offset {offset}, acknowledged at {}",
                    ack.offset
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::PublishResponse;

    fn ack(ledger: &mut Ledger, id: u64, channel: &str, offset: u64) {
        ledger.sent(id, channel);
        ledger.acked(
            id,
            &PublishResponse {
                offset,
                epoch: "e".into(),
                ..Default::default()
            },
        );
    }

    fn sub(offset: u64, recovering: bool, recovered: bool) -> Event {
        Event::Subscribed {
            epoch: "e".into(),
            offset,
            recovering,
            recovered,
        }
    }

    fn publ(offset: u64, id: u64) -> Event {
        Event::Publication {
            offset,
            id: Some(id),
        }
    }

    fn record(events: Vec<Event>) -> Record {
        Record {
            name: "s".into(),
            channels: BTreeMap::from([("c".to_string(), events)]),
            ..Record::default()
        }
    }

    #[test]
    fn a_clean_stream_across_a_recovered_reconnect_passes() {
        let mut ledger = Ledger::default();
        for i in 1..=4 {
            ack(&mut ledger, 100 + i, "c", i);
        }
        let r = record(vec![
            sub(0, false, false),
            publ(1, 101),
            publ(2, 102),
            sub(3, true, true),
            publ(3, 103),
            publ(4, 104),
        ]);
        assert_eq!(check_subscriber(&ledger, &r), Vec::<String>::new());
        assert_eq!(r.recovered(), 1);
        assert_eq!(r.position("c"), Some(("e".into(), 4)));
    }

    #[test]
    fn gaps_duplicates_phantoms_and_shortfalls_are_reported() {
        let mut ledger = Ledger::default();
        for i in 1..=5 {
            ack(&mut ledger, 100 + i, "c", i);
        }
        let r = record(vec![
            sub(0, false, false),
            publ(1, 101),
            publ(3, 103),
            publ(3, 103),
            publ(4, 999),
        ]);
        let v = check_subscriber(&ledger, &r);
        assert!(v.iter().any(|m| m.contains("gap, offsets 2..=2")), "{v:?}");
        assert!(v.iter().any(|m| m.contains("duplicate")), "{v:?}");
        assert!(v.iter().any(|m| m.contains("never sent")), "{v:?}");
        assert!(
            v.iter().any(|m| m.contains("but 5 was acknowledged")),
            "{v:?}"
        );
    }

    #[test]
    fn a_recovered_reply_claiming_publications_it_never_delivered_is_a_tail_gap() {
        let mut ledger = Ledger::default();
        for i in 1..=3 {
            ack(&mut ledger, 100 + i, "c", i);
        }
        // The edge answers the resume `recovered: true` at offset 3 but hands
        // over nothing, and no later publication arrives on the channel.
        let r = record(vec![sub(0, false, false), publ(1, 101), sub(3, true, true)]);
        assert_eq!(
            r.position("c"),
            Some(("e".into(), 3)),
            "the claim moves the position"
        );
        assert_eq!(r.delivered("c"), Some(1), "but not what was delivered");
        let v = check_subscriber(&ledger, &r);
        assert!(
            v.iter()
                .any(|m| m.contains("tail gap") && m.contains("offsets 2..=3")),
            "{v:?}"
        );
        assert!(v.iter().any(|m| m.contains("reached offset 1")), "{v:?}");
        // The same resume with the recovered publications in it passes.
        let whole = record(vec![
            sub(0, false, false),
            publ(1, 101),
            sub(3, true, true),
            publ(2, 102),
            publ(3, 103),
        ]);
        assert_eq!(check_subscriber(&ledger, &whole), Vec::<String>::new());
    }

    #[test]
    fn a_planted_gap_and_a_planted_duplicate_are_each_caught_alone() {
        let mut ledger = Ledger::default();
        for i in 1..=3 {
            ack(&mut ledger, 100 + i, "c", i);
        }
        let gap = record(vec![sub(0, false, false), publ(1, 101), publ(3, 103)]);
        assert_eq!(
            check_subscriber(&ledger, &gap),
            vec!["subscriber s c: gap, offsets 2..=2 never delivered".to_string()]
        );
        let duplicate = record(vec![
            sub(0, false, false),
            publ(1, 101),
            publ(2, 102),
            sub(2, true, true),
            publ(2, 102),
            publ(3, 103),
        ]);
        assert_eq!(
            check_subscriber(&ledger, &duplicate),
            vec!["subscriber s c: offset 2 after 2 (duplicate or reordered)".to_string()]
        );
    }

    #[test]
    fn refusals_and_tallies_count_what_each_record_saw() {
        let mut r = record(vec![
            sub(0, false, false),
            publ(1, 101),
            sub(1, true, true),
            sub(1, true, false),
        ]);
        r.sessions = 3;
        r.disconnects = vec![
            "ws://e/connection/websocket: read error: reset".into(),
            format!("ws://e/connection/websocket: {REFUSED}503 {{\"code\":3504}}"),
        ];
        assert_eq!(r.refusals(), vec!["503 {\"code\":3504}"]);
        let mut tally = Tally::default();
        tally.add(&r);
        tally.add(&r);
        assert_eq!(
            tally,
            Tally {
                subscribers: 2,
                received: 2,
                sessions: 6,
                recovered: 2,
                not_recovered: 2,
            }
        );
    }

    #[test]
    fn recovered_false_restarts_the_stream_and_is_counted() {
        let mut ledger = Ledger::default();
        for i in 1..=6 {
            ack(&mut ledger, 100 + i, "c", i);
        }
        let r = record(vec![
            sub(0, false, false),
            publ(1, 101),
            sub(5, true, false),
            publ(6, 106),
        ]);
        assert_eq!(check_subscriber(&ledger, &r), Vec::<String>::new());
        assert_eq!(r.not_recovered(), 1);
        assert_eq!(
            r.not_recovered_explained(),
            vec![
                "subscriber s c: recovering from 1 (epoch \"e\"), the edge answered offset 5 \
                 (epoch \"e\")"
                    .to_string()
            ]
        );
    }
}
