//! What a run measured and how it is shown: a table for people, one JSON
//! document for machines (`--json`). Only formats; it measures nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::group_commit::Grouping;
use crate::usage::{Machine, Usage};

/// Human-readable output: stdout, or stderr when stdout carries the JSON.
pub(crate) struct Say {
    pub(crate) to_stderr: bool,
}

impl Say {
    pub(crate) fn line(&self, text: &str) {
        if self.to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

/// The setup every step shares.
#[derive(Debug)]
pub(crate) struct RunInfo {
    /// `spawn` (a `herald dev` started by the benchmark) or `servers`.
    pub(crate) target: &'static str,
    pub(crate) leader: String,
    pub(crate) channels: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) machine: Machine,
}

/// One concurrency step.
#[derive(Debug)]
pub(crate) struct StepReport {
    pub(crate) concurrency: usize,
    /// Length of the measured window (after warm-up).
    pub(crate) measured: Duration,
    /// Publishes acknowledged within the window.
    pub(crate) acked: u64,
    /// Ack latency of those publishes, in microseconds.
    pub(crate) latency_us: Histogram<u64>,
    /// Failed publishes within the window, by `ErrorInfo.reason` (or gRPC
    /// code when the server gave none).
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) nodes: Vec<Usage>,
    /// The benchmark's own process: on a small machine it competes with the
    /// nodes for the same cores.
    pub(crate) bench: Option<Usage>,
    /// Publications per Raft entry on the leader, when its `/metrics` could
    /// be read.
    pub(crate) grouping: Option<Grouping>,
    /// Busy time of the whole machine during the window (100 = one core).
    pub(crate) machine_cpu_percent: Option<f64>,
}

impl StepReport {
    pub(crate) fn acked_per_sec(&self) -> f64 {
        self.acked as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    fn ms_at(&self, quantile: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.max() as f64 / 1000.0
    }

    fn entries_per_sec(&self) -> Option<f64> {
        self.grouping
            .map(|g| g.entries as f64 / self.measured.as_secs_f64().max(1e-9))
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn nodes_cpu(&self) -> f64 {
        self.nodes.iter().map(|n| n.cpu_percent).sum()
    }

    /// Machine busy time that was neither the nodes nor the benchmark.
    fn other_cpu(&self) -> Option<f64> {
        let bench = self.bench.as_ref().map_or(0.0, |b| b.cpu_percent);
        self.machine_cpu_percent
            .map(|m| (m - self.nodes_cpu() - bench).max(0.0))
    }

    /// The nodes' CPU time per acknowledged publish, in milliseconds
    /// (server CPU-seconds ÷ publications).
    fn cpu_ms_per_publication(&self) -> Option<f64> {
        (self.acked > 0).then(|| self.nodes_cpu() * 10.0 / self.acked_per_sec())
    }

    fn nodes_rss(&self) -> f64 {
        self.nodes.iter().map(|n| n.rss_mib).sum()
    }
}

/// The lines before the table.
pub(crate) fn preamble(run: &RunInfo, nodes: usize) -> Vec<String> {
    let m = &run.machine;
    vec![
        format!(
            "machine: {} CPUs ({}), {:.1} GiB memory",
            m.cpus,
            m.cpu_model,
            m.mem_total_mib as f64 / 1024.0
        ),
        format!(
            "target: {} ({} herald-node processes watched), leader {}",
            run.target, nodes, run.leader
        ),
        format!(
            "load: {} channels, {}-byte payloads, {:.1} s per step after {:.1} s warm-up",
            run.channels,
            run.payload_bytes,
            run.duration.as_secs_f64(),
            run.warmup.as_secs_f64()
        ),
    ]
}

pub(crate) const TABLE_HEADER: &str = "concurrency   acked/s    p50 ms    p90 ms    p99 ms    max ms   errors  entries/s  pubs/entry   nodes CPU%   CPU ms/pub   nodes RSS MiB   bench CPU%   other CPU%";

pub(crate) fn table_row(s: &StepReport) -> String {
    format!(
        "{:>11} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>10} {:>11} {:>12.0} {:>12} {:>15.1} {:>12.0} {:>12}",
        s.concurrency,
        s.acked_per_sec(),
        s.ms_at(0.50),
        s.ms_at(0.90),
        s.ms_at(0.99),
        s.max_ms(),
        s.error_count(),
        s.entries_per_sec()
            .map_or("-".to_string(), |e| format!("{e:.0}")),
        s.grouping
            .map_or("-".to_string(), |g| format!("{:.1}", g.items_per_entry)),
        s.nodes_cpu(),
        s.cpu_ms_per_publication()
            .map_or("-".to_string(), |c| format!("{c:.3}")),
        s.nodes_rss(),
        s.bench.as_ref().map_or(0.0, |b| b.cpu_percent),
        s.other_cpu().map_or("-".to_string(), |o| format!("{o:.0}")),
    )
}

/// Errors by reason and each node's share, one line per step.
pub(crate) fn details(s: &StepReport) -> Vec<String> {
    let mut lines = Vec::new();
    if !s.errors.is_empty() {
        let reasons: Vec<String> = s.errors.iter().map(|(r, n)| format!("{r} {n}")).collect();
        lines.push(format!(
            "  concurrency {}: errors {}",
            s.concurrency,
            reasons.join(", ")
        ));
    }
    if !s.nodes.is_empty() {
        let nodes: Vec<String> = s
            .nodes
            .iter()
            .map(|n| {
                if n.exited {
                    return format!(
                        "{} exited (peak RSS {:.1} MiB)",
                        n.node_id
                            .map_or_else(|| format!("pid {}", n.pid), |id| format!("node {id}")),
                        n.rss_peak_mib
                    );
                }
                format!(
                    "{}{} CPU {:.0}% RSS {:.1} MiB (peak {:.1})",
                    n.node_id
                        .map_or_else(|| format!("pid {}", n.pid), |id| format!("node {id}")),
                    if n.is_leader { " (leader)" } else { "" },
                    n.cpu_percent,
                    n.rss_mib,
                    n.rss_peak_mib
                )
            })
            .collect();
        lines.push(format!(
            "  concurrency {}: {}",
            s.concurrency,
            nodes.join("; ")
        ));
    }
    lines
}

/// The whole run as one JSON document.
pub(crate) fn json(run: &RunInfo, steps: &[StepReport]) -> Value {
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    let usage = |u: &Usage| {
        json!({
            "pid": u.pid,
            "node_id": u.node_id,
            "leader": u.is_leader,
            "exited": u.exited,
            "cpu_percent": round(u.cpu_percent, 1),
            "rss_mib": round(u.rss_mib, 1),
            "rss_peak_mib": round(u.rss_peak_mib, 1),
        })
    };
    json!({
        "mode": "publish",
        "target": run.target,
        "leader": run.leader,
        "channels": run.channels,
        "payload_bytes": run.payload_bytes,
        "duration_secs": run.duration.as_secs_f64(),
        "warmup_secs": run.warmup.as_secs_f64(),
        "machine": {
            "cpus": run.machine.cpus,
            "cpu_model": run.machine.cpu_model,
            "mem_total_mib": run.machine.mem_total_mib,
        },
        "steps": steps.iter().map(|s| json!({
            "concurrency": s.concurrency,
            "measured_secs": s.measured.as_secs_f64(),
            "acked": s.acked,
            "acked_per_sec": round(s.acked_per_sec(), 1),
            "latency_ms": {
                "p50": round(s.ms_at(0.50), 3),
                "p90": round(s.ms_at(0.90), 3),
                "p99": round(s.ms_at(0.99), 3),
                "max": round(s.max_ms(), 3),
            },
            "errors": s.errors,
            "raft_entries": s.grouping.map(|g| g.entries),
            "raft_entries_per_sec": s.entries_per_sec().map(|e| round(e, 1)),
            "publishes_per_entry": s.grouping.map(|g| round(g.items_per_entry, 2)),
            "nodes": s.nodes.iter().map(usage).collect::<Vec<_>>(),
            "nodes_cpu_ms_per_publication": s.cpu_ms_per_publication().map(|c| round(c, 4)),
            "bench": s.bench.as_ref().map(usage),
            "machine_cpu_percent": s.machine_cpu_percent.map(|m| round(m, 1)),
            "other_cpu_percent": s.other_cpu().map(|o| round(o, 1)),
        })).collect::<Vec<_>>(),
    })
}
