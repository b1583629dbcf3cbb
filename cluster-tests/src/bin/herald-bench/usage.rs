//! CPU and memory of the node processes, read from `/proc` while a step runs.
//!
//! Only reads `/proc`; it never signals or otherwise touches the processes it
//! watches. A process that exits mid-step simply stops being sampled.

use std::fs;
use std::time::{Duration, Instant};

/// What the kernel calls a node process (`/proc/<pid>/comm`).
pub(crate) const NODE_COMM: &str = "herald-node";
/// What the kernel calls an edge process.
pub(crate) const EDGE_COMM: &str = "herald-edge";

/// `/proc/<pid>/stat` counts CPU time in clock ticks of `USER_HZ`, which the
/// kernel fixes at 100 on every architecture Herald runs on.
const TICKS_PER_SEC: f64 = 100.0;
/// How often RSS is sampled to find a step's peak.
const RSS_EVERY: Duration = Duration::from_millis(200);

/// A process being watched, with what its command line says it is.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    pub(crate) pid: u32,
    /// `--id` of a `herald-node`, when given as a flag.
    pub(crate) node_id: Option<u64>,
    /// `--grpc-listen` of a `herald-node`, when given as a flag.
    pub(crate) grpc_listen: Option<String>,
    /// `--http-listen` of a `herald-node` (its `/metrics`), when given as a
    /// flag.
    pub(crate) http_listen: Option<String>,
}

/// One process's use of the machine over a measurement window.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    pub(crate) pid: u32,
    pub(crate) node_id: Option<u64>,
    pub(crate) is_leader: bool,
    /// The process was gone at the end of the window.
    pub(crate) exited: bool,
    /// CPU time over wall time; 100 is one core fully busy.
    pub(crate) cpu_percent: f64,
    /// Resident memory at the end of the window.
    pub(crate) rss_mib: f64,
    /// Highest resident memory seen during the window.
    pub(crate) rss_peak_mib: f64,
}

/// `herald-node` processes whose parent is `parent` (the nodes of a
/// `herald dev`).
pub(crate) fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&pid| {
            stat(pid).is_some_and(|s| s.ppid == parent) && comm_of(pid).as_deref() == Some(comm)
        })
        .collect()
}

/// Every process with this name, e.g. the nodes of a cluster running on this
/// machine when the benchmark did not start it.
pub(crate) fn all_named(comm: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&pid| comm_of(pid).as_deref() == Some(comm))
        .collect()
}

/// Describe `pid` from its command line.
pub(crate) fn watched(pid: u32) -> Watched {
    let args: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Watched {
        pid,
        node_id: flag(&args, "--id").and_then(|v| v.parse().ok()),
        grpc_listen: flag(&args, "--grpc-listen"),
        http_listen: flag(&args, "--http-listen"),
    }
}

impl Watched {
    /// Whether this node listens on one of `addrs` (host:port as the cluster
    /// advertises them; a node listening on every interface matches by
    /// port).
    pub(crate) fn serves(&self, addrs: &[String]) -> bool {
        let Some(listen) = self.grpc_listen.as_deref() else {
            return false;
        };
        let Some((host, port)) = listen.rsplit_once(':') else {
            return false;
        };
        let any_host = matches!(host, "0.0.0.0" | "[::]" | "::");
        addrs.iter().any(|a| {
            a == listen || (any_host && a.rsplit_once(':').is_some_and(|(_, p)| p == port))
        })
    }
}

/// The value of flag `name` on `pid`'s command line, e.g. an edge's
/// `--listen`.
pub(crate) fn cmdline_flag(pid: u32, name: &str) -> Option<String> {
    let args: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()?
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    flag(&args, name)
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_string)
        }
    })
}

/// Samples taken at the start of a window; [`Window::finish`] turns them
/// into [`Usage`].
#[derive(Debug)]
pub(crate) struct Window {
    started: Instant,
    procs: Vec<(Watched, Option<u64>, u64)>,
}

impl Window {
    /// Take the starting CPU counters of `procs`.
    pub(crate) fn start(procs: &[Watched]) -> Self {
        Self {
            started: Instant::now(),
            procs: procs
                .iter()
                .map(|w| {
                    let s = stat(w.pid);
                    let rss = rss_kib(w.pid).unwrap_or(0);
                    (w.clone(), s.map(|s| s.cpu_ticks), rss)
                })
                .collect(),
        }
    }

    /// Sample RSS every [`RSS_EVERY`] until `until`, to catch the peak.
    pub(crate) async fn track_until(&mut self, until: tokio::time::Instant) {
        while tokio::time::Instant::now() + RSS_EVERY < until {
            tokio::time::sleep(RSS_EVERY).await;
            for (w, _, peak) in &mut self.procs {
                if let Some(rss) = rss_kib(w.pid) {
                    *peak = (*peak).max(rss);
                }
            }
        }
        tokio::time::sleep_until(until).await;
    }

    /// Close the window: CPU over it, RSS now and at its peak. `leader_addr`
    /// marks the node whose `--grpc-listen` it is.
    pub(crate) fn finish(self, leader_addr: &str) -> Vec<Usage> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        self.procs
            .into_iter()
            .map(|(w, ticks0, peak)| {
                let end = stat(w.pid);
                let exited = end.is_none();
                let ticks1 = end.map(|s| s.cpu_ticks);
                let cpu = match (ticks0, ticks1) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64 / TICKS_PER_SEC / wall * 100.0,
                    _ => 0.0,
                };
                let rss = rss_kib(w.pid).unwrap_or(0);
                Usage {
                    pid: w.pid,
                    node_id: w.node_id,
                    is_leader: w.grpc_listen.as_deref() == Some(leader_addr),
                    exited,
                    cpu_percent: cpu,
                    rss_mib: rss as f64 / 1024.0,
                    rss_peak_mib: peak.max(rss) as f64 / 1024.0,
                }
            })
            .collect()
    }
}

/// Busy time of the whole machine (every process, every core) over a
/// window: what is neither the nodes nor the benchmark is other load, the
/// noise in a measurement on a shared machine.
#[derive(Debug)]
pub(crate) struct MachineCpu {
    started: Instant,
    busy_ticks: Option<u64>,
}

impl MachineCpu {
    pub(crate) fn start() -> Self {
        Self {
            started: Instant::now(),
            busy_ticks: machine_busy_ticks(),
        }
    }

    /// Busy time over wall time since [`MachineCpu::start`]; 100 is one core.
    pub(crate) fn finish(self) -> Option<f64> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let busy = machine_busy_ticks()?.saturating_sub(self.busy_ticks?);
        Some(busy as f64 / TICKS_PER_SEC / wall * 100.0)
    }
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq
/// steal ...; busy is everything but idle and iowait, without guest time
/// (already counted in user).
fn machine_busy_ticks() -> Option<u64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(text.lines().next()?)
}

fn parse_machine_busy(cpu_line: &str) -> Option<u64> {
    let mut fields = cpu_line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// The machine the benchmark ran on, for the report.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) mem_total_mib: u64,
}

pub(crate) fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        mem_total_mib: mem_total_kib / 1024,
    }
}

fn processes() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn comm_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

struct Stat {
    ppid: u32,
    /// utime + stime.
    cpu_ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid (comm) state ppid ... utime stime ...`; `comm` may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3 of the man page, so field n is at n - 3.
    let ppid = fields.get(4 - 3)?.parse().ok()?;
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(Stat {
        ppid,
        cpu_ticks: utime + stime,
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS:",
    )
}

/// A process's resident memory at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Memory {
    /// `VmRSS`: everything resident (heap, stacks, mapped binary, ...).
    pub(crate) rss_kib: u64,
    /// `RssAnon`: the anonymous part (heap and stacks), what connections
    /// grow.
    pub(crate) anon_kib: u64,
}

/// `pid`'s resident memory, from `/proc/<pid>/status`.
pub(crate) fn memory(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory {
        rss_kib: status_kib(&status, "VmRSS:")?,
        anon_kib: status_kib(&status, "RssAnon:").unwrap_or(0),
    })
}

/// The soft limit on open files of `pid` (`Max open files` in
/// `/proc/<pid>/limits`); `None` if unreadable or unlimited.
pub(crate) fn open_files_limit(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (odd) name)) S 17 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 9 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ppid, 17);
        assert_eq!(s.cpu_ticks, 168);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let line = "cpu  100 5 50 1000 20 3 2 1 0 0";
        assert_eq!(parse_machine_busy(line), Some(161));
        assert!(machine_busy_ticks().is_some());
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(stat(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        let m = memory(me).unwrap();
        assert!(m.anon_kib > 0 && m.anon_kib <= m.rss_kib);
        assert!(open_files_limit(me).unwrap() > 0);
    }

    #[test]
    fn a_node_serves_its_advertised_address() {
        let node = |listen: &str| Watched {
            pid: 1,
            node_id: Some(1),
            grpc_listen: Some(listen.to_string()),
            http_listen: None,
        };
        let members = [
            "127.0.0.1:7100".to_string(),
            "node-2.herald:7100".to_string(),
        ];
        assert!(node("127.0.0.1:7100").serves(&members));
        assert!(node("0.0.0.0:7100").serves(&members));
        assert!(!node("127.0.0.1:7101").serves(&members));
    }

    #[test]
    fn flags_in_both_spellings() {
        let args: Vec<String> = ["herald-node", "--id", "2", "--grpc-listen=127.0.0.1:1"]
            .map(String::from)
            .to_vec();
        assert_eq!(flag(&args, "--id").as_deref(), Some("2"));
        assert_eq!(flag(&args, "--grpc-listen").as_deref(), Some("127.0.0.1:1"));
    }
}
