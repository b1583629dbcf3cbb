//! Packet loss and delay on a host's links, in the spirit of `tc netem`:
//! the spec syntax is netem's (`loss 20% delay 100ms 10ms`), the mechanism
//! is an iptables `NFQUEUE` rule in the host's namespace plus a thread of
//! this process that holds each queued packet for the delay, or drops it.
//!
//! Why not `tc qdisc ... netem`: the kernel of the machines these tests run
//! on (developers' and CI's alike) is built without `sch_netem` (and
//! without the `gact` action that would let `tc` drop packets), so
//! `tc qdisc add ... netem` fails with "Specified qdisc kind is unknown".
//! NFQUEUE is built in, and this way loss decisions come from a seeded
//! generator too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, socket, sockopt,
};

use super::nfqueue::{self, Verdict};
use crate::rng::SplitMix64;

/// What to do to packets leaving a host towards its peers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Probability in `[0, 1]` that a packet is lost.
    pub loss: f64,
    /// Added to every packet that is not lost.
    pub delay: Duration,
    /// Each packet's delay is `delay ± jitter`, uniformly (packets may be
    /// reordered, as with netem).
    pub jitter: Duration,
}

impl Impairment {
    /// Parse netem's syntax: `loss P%`, `delay D [J]` with units `us`, `ms`
    /// or `s`, in any order. The empty string is no impairment.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut out = Self::default();
        let words: Vec<&str> = spec.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            match words[i] {
                "loss" => {
                    let p = words
                        .get(i + 1)
                        .and_then(|w| w.strip_suffix('%'))
                        .and_then(|w| w.parse::<f64>().ok())
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| format!("`loss` needs a percentage in {spec:?}"))?;
                    out.loss = p / 100.0;
                    i += 2;
                }
                "delay" => {
                    out.delay = words
                        .get(i + 1)
                        .and_then(|w| duration(w))
                        .ok_or_else(|| format!("`delay` needs a time such as 100ms in {spec:?}"))?;
                    i += 2;
                    if let Some(j) = words.get(i).and_then(|w| duration(w)) {
                        out.jitter = j;
                        i += 1;
                    }
                }
                other => return Err(format!("unknown netem word {other:?} in {spec:?}")),
            }
        }
        Ok(out)
    }

    /// Whether this changes anything.
    pub fn is_none(&self) -> bool {
        self.loss == 0.0 && self.delay.is_zero() && self.jitter.is_zero()
    }

    /// When a packet received at `now` should leave, or `None` to drop it.
    fn release_at(&self, now: Instant, rng: &mut SplitMix64) -> Option<Instant> {
        if self.loss > 0.0 && rng.chance(self.loss) {
            return None;
        }
        let jitter = self.jitter.as_secs_f64() * (2.0 * rng.next_f64() - 1.0);
        let delay = (self.delay.as_secs_f64() + jitter).max(0.0);
        Some(now + Duration::from_secs_f64(delay))
    }
}

fn duration(word: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = word.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = word.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = word.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = number.parse().ok()?;
    (v >= 0.0).then(|| Duration::from_secs_f64(v * scale))
}

/// The queue number every host uses (queues are per network namespace).
pub(crate) const QUEUE: u16 = 0;

/// Held packets a queue keeps before the kernel drops new ones (netem's
/// default `limit` is 1000; delays of 100 ms under load need more).
const QUEUE_MAX_LEN: u32 = 16_384;

/// What an emulator did so far: proof that an impairment took effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effect {
    /// Packets dropped.
    pub dropped: u64,
    /// Packets held back for a delay before release.
    pub delayed: u64,
    /// Packets let through at once.
    pub passed: u64,
    /// Whether the thread still runs (a dead one leaves links unimpaired:
    /// `--queue-bypass` lets packets through when nobody reads the queue).
    pub alive: bool,
    /// Why the thread ended, if it failed.
    pub error: Option<String>,
}

impl Effect {
    /// Why `impairment` cannot be said to have been applied, given this
    /// effect (empty: it was). Loss must have dropped packets and a delay
    /// held some, by a thread still running.
    pub fn problems(&self, impairment: &Impairment) -> Vec<String> {
        let mut out = Vec::new();
        if !self.alive {
            out.push(format!(
                "the netem thread is not running ({})",
                self.error.as_deref().unwrap_or("ended")
            ));
        }
        if impairment.loss > 0.0 && self.dropped == 0 {
            out.push(format!(
                "loss {}% dropped no packet",
                impairment.loss * 100.0
            ));
        }
        if !impairment.delay.is_zero() && self.delayed == 0 {
            out.push(format!("delay {:?} held no packet", impairment.delay));
        }
        out
    }
}

/// Counters the emulator thread keeps.
#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    delayed: AtomicU64,
    passed: AtomicU64,
    error: Mutex<Option<String>>,
}

/// The thread that applies one host's [`Impairment`] to its queue.
#[derive(Debug)]
pub(crate) struct Emulator {
    impairment: Arc<Mutex<Impairment>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Enter the namespace at `netns` on a new thread, bind the queue and
    /// start releasing packets. Returns once the kernel confirmed the bind.
    pub(crate) fn start(
        netns: PathBuf,
        impairment: Impairment,
        seed: u64,
    ) -> std::io::Result<Self> {
        let impairment = Arc::new(Mutex::new(impairment));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (impairment, stop, counters) = (impairment.clone(), stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name("herald-netem".into())
                .spawn(move || {
                    let queue = match open_queue(&netns) {
                        Ok(fd) => {
                            let _ = ready_tx.send(Ok(()));
                            fd
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let rng = SplitMix64::new(seed);
                    if let Err(e) = run(&queue, &impairment, &stop, &counters, rng) {
                        eprintln!("herald-netem on {}: {e}", netns.display());
                        *counters.error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(e.to_string());
                    }
                })?
        };
        let emulator = Self {
            impairment,
            stop,
            counters,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(emulator),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("netem thread did not start")),
        }
    }

    /// Change the impairment; packets already held keep their release time.
    pub(crate) fn set(&self, impairment: Impairment) {
        *self.impairment.lock().unwrap_or_else(|e| e.into_inner()) = impairment;
    }

    /// The impairment in force.
    pub(crate) fn impairment(&self) -> Impairment {
        *self.impairment.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the thread did so far, and whether it still runs.
    pub(crate) fn effect(&self) -> Effect {
        let c = &self.counters;
        Effect {
            dropped: c.dropped.load(Ordering::SeqCst),
            delayed: c.delayed.load(Ordering::SeqCst),
            passed: c.passed.load(Ordering::SeqCst),
            alive: self.thread.as_ref().is_some_and(|t| !t.is_finished()),
            error: c.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A netfilter netlink socket in the namespace at `netns`, bound to [`QUEUE`].
fn open_queue(netns: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    // Sockets belong to the namespace of the thread that creates them; this
    // thread exists only to serve that one namespace.
    let ns = File::open(netns)?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    // A burst of queued packets must not overflow the socket: a lost
    // notification leaves its packet held until the queue is unbound.
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(8 << 20));
    sendto(
        fd.as_raw_fd(),
        &nfqueue::bind_request(QUEUE, QUEUE_MAX_LEN),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 8192];
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while acks < 2 {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("no answer to the NFQUEUE bind"));
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(100u16))?;
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => {
                for code in nfqueue::parse(&buf[..n]).acks {
                    if code != 0 {
                        return Err(std::io::Error::other(format!(
                            "NFQUEUE bind refused: {}",
                            Errno::from_raw(-code)
                        )));
                    }
                    acks += 1;
                }
            }
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

/// Hold and release packets until `stop`; then release everything held.
fn run(
    fd: &std::os::fd::OwnedFd,
    impairment: &Mutex<Impairment>,
    stop: &AtomicBool,
    counters: &Counters,
    mut rng: SplitMix64,
) -> std::io::Result<()> {
    let mut held: BinaryHeap<Reverse<(Instant, u64, u32)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut out = Vec::new();
    let send = |out: &mut Vec<u8>| -> std::io::Result<()> {
        if !out.is_empty() {
            sendto(
                fd.as_raw_fd(),
                out,
                &NetlinkAddr::new(0, 0),
                MsgFlags::empty(),
            )?;
            out.clear();
        }
        Ok(())
    };
    loop {
        let now = Instant::now();
        let stopping = stop.load(Ordering::SeqCst);
        while let Some(Reverse((due, _, id))) = held.peek().copied() {
            if due > now && !stopping {
                break;
            }
            held.pop();
            nfqueue::push_verdict(&mut out, QUEUE, id, Verdict::Accept);
            // Keep each datagram well under the socket's send buffer.
            if out.len() > 32 * 1024 {
                send(&mut out)?;
            }
        }
        send(&mut out)?;
        if stopping {
            return Ok(());
        }
        let wait = held
            .peek()
            .map(|Reverse((due, ..))| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(wait.as_millis()).unwrap_or(50);
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        loop {
            match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    let now = Instant::now();
                    let imp = *impairment.lock().unwrap_or_else(|e| e.into_inner());
                    for id in nfqueue::parse(&buf[..n]).packets {
                        match imp.release_at(now, &mut rng) {
                            None => {
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                                nfqueue::push_verdict(&mut out, QUEUE, id, Verdict::Drop)
                            }
                            Some(at) if at <= now => {
                                counters.passed.fetch_add(1, Ordering::Relaxed);
                                nfqueue::push_verdict(&mut out, QUEUE, id, Verdict::Accept)
                            }
                            Some(at) => {
                                counters.delayed.fetch_add(1, Ordering::Relaxed);
                                seq += 1;
                                held.push(Reverse((at, seq, id)));
                            }
                        }
                    }
                    send(&mut out)?;
                }
                Err(Errno::EAGAIN) => break,
                // The kernel dropped notifications for lack of buffer: go on;
                // those packets are lost when the queue is unbound.
                Err(Errno::ENOBUFS) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netem_syntax() {
        assert_eq!(
            Impairment::parse("loss 20% delay 100ms").unwrap(),
            Impairment {
                loss: 0.2,
                delay: Duration::from_millis(100),
                jitter: Duration::ZERO
            }
        );
        assert_eq!(
            Impairment::parse("delay 1s 250us loss 0.5%").unwrap(),
            Impairment {
                loss: 0.005,
                delay: Duration::from_secs(1),
                jitter: Duration::from_micros(250)
            }
        );
        assert!(Impairment::parse("").unwrap().is_none());
        for bad in [
            "loss",
            "loss 20",
            "loss 120%",
            "delay fast",
            "rate 1mbit",
            "delay -5ms",
        ] {
            assert!(Impairment::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn release_times_follow_the_impairment() {
        let mut rng = SplitMix64::new(1);
        let now = Instant::now();
        let none = Impairment::default();
        assert_eq!(none.release_at(now, &mut rng), Some(now));
        let lossy = Impairment::parse("loss 20% delay 100ms 10ms").unwrap();
        let mut lost = 0;
        for _ in 0..10_000 {
            match lossy.release_at(now, &mut rng) {
                None => lost += 1,
                Some(at) => {
                    let d = at - now;
                    assert!(d >= Duration::from_millis(90) && d <= Duration::from_millis(110));
                }
            }
        }
        assert!((1500..2500).contains(&lost), "{lost} of 10000 lost at 20%");
    }

    /// The planted bugs: an emulator whose thread died, and one that let
    /// every packet through untouched, each pass for an impaired link
    /// unless its effect is checked.
    #[test]
    fn an_impairment_that_did_nothing_or_a_dead_thread_is_caught() {
        let imp = Impairment::parse("loss 20% delay 100ms").unwrap();
        let working = Effect {
            dropped: 3,
            delayed: 40,
            passed: 0,
            alive: true,
            error: None,
        };
        assert_eq!(working.problems(&imp), Vec::<String>::new());
        let dead = Effect {
            alive: false,
            error: Some("Bad file descriptor".into()),
            ..working.clone()
        };
        assert_eq!(
            dead.problems(&imp),
            vec!["the netem thread is not running (Bad file descriptor)".to_string()]
        );
        let idle = Effect {
            passed: 500,
            alive: true,
            ..Effect::default()
        };
        let found = idle.problems(&imp);
        assert!(
            found.iter().any(|p| p.contains("dropped no packet")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("held no packet")),
            "{found:?}"
        );
    }
}
