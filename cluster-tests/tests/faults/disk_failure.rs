//! Guarantee 1 when a disk fails: EIO on fsync, EIO on write, and a full
//! disk (ENOSPC), each injected under load into a follower and then into
//! the leader of a three-node cluster.
//!
//! A node whose disk failed must never acknowledge what may not be durable
//! (the PostgreSQL fsync lesson: a retried fsync that succeeds proves
//! nothing). So after the fault each scenario checks that the node said so
//! (`herald_storage_failed 1`, the failed operation in
//! `herald_storage_failures_total`, `/healthz` 503); that it acknowledges
//! nothing (probes pinned to it are refused with `STORAGE_FAILED`, and its
//! count of acknowledged publishes stands still); that the other two keep
//! acknowledging (electing a new leader when the leader's disk failed); and
//! that once the disk works again (fault off, or the ballast deleted) and
//! the node is restarted, it recovers from its last durable commit and
//! catches up. The history checker then runs over every node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald_cluster_tests::disk::{self, DiskFault};
use herald_cluster_tests::load::Load;
use herald_cluster_tests::{Cluster, ClusterOptions, Verdict, http_get, ledger, reason_of};

use crate::Unacknowledged;

/// What goes wrong with the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// libfiu makes `fdatasync` fail with EIO.
    FsyncEio,
    /// libfiu makes `pwrite` fail with EIO.
    WriteEio,
    /// The node's tmpfs data directory is filled to the last byte.
    Full,
}

impl Fault {
    fn scenario(self) -> &'static str {
        match self {
            Self::FsyncEio => "disk_fsync_eio",
            Self::WriteEio => "disk_write_eio",
            Self::Full => "disk_full",
        }
    }

    /// The `op` and `error` labels of `herald_storage_failures_total` the
    /// fault must show up as (`None`: any operation; a full disk may
    /// refuse a write or a resize first).
    fn expected(self) -> (Option<&'static str>, &'static str) {
        match self {
            Self::FsyncEio => (Some("fsync"), "eio"),
            Self::WriteEio => (Some("write"), "eio"),
            Self::Full => (None, "enospc"),
        }
    }

    fn options(self) -> ClusterOptions {
        let base = ClusterOptions::default().with_policy(crate::policy("df", 900));
        match self {
            Self::FsyncEio | Self::WriteEio => ClusterOptions {
                disk_faults: true,
                ..base
            },
            Self::Full => ClusterOptions {
                small_disks: Some(SMALL_DISK),
                ..base
            },
        }
    }
}

/// Each node's tmpfs in the full-disk scenario: ample for the run; the
/// ballast takes whatever is left.
const SMALL_DISK: u64 = 64 << 20;

/// Probes pinned to the failed node, per phase.
const PROBES: u64 = 5;
const PROBE_BASE: u64 = 2_000_000_000;
const PROBE_CHANNEL: &str = "df:probe";

/// What one phase (a fault on one node) observed.
#[derive(Debug, Default)]
struct Phase {
    node: u64,
    role: &'static str,
    /// `op/error` pairs the node counted in `herald_storage_failures_total`.
    reported: Vec<String>,
    /// `herald_storage_failed` once the fault took effect (0 if it never did).
    failed_gauge: f64,
    /// `/healthz` status code after the fault.
    healthz: u16,
    /// Probes the failed node acknowledged: (probe id, offset).
    probe_acks: Vec<(u64, u64)>,
    /// How the probes were answered, by reason.
    probe_answers: BTreeMap<String, u64>,
    /// The node's `herald_publishes_total{result="ok"}` when the failure was
    /// seen, and just before the restart.
    acked_at_failure: f64,
    acked_before_restart: f64,
}

/// Everything a phase shows wrong.
fn phase_violations(p: &Phase, (op, error): (Option<&str>, &str)) -> Vec<String> {
    let mut v = Vec::new();
    let who = format!("{} {}", p.role, p.node);
    if p.failed_gauge != 1.0 {
        v.push(format!(
            "{who}: herald_storage_failed is {} after the fault",
            p.failed_gauge
        ));
    }
    let matches = |r: &String| {
        let (o, e) = r.split_once('/').unwrap_or((r, ""));
        op.is_none_or(|op| op == o) && e == error
    };
    if !p.reported.iter().any(matches) {
        v.push(format!(
            "{who}: herald_storage_failures_total shows {:?}, expected op {} error {error}",
            p.reported,
            op.unwrap_or("any")
        ));
    }
    if p.healthz != 503 {
        v.push(format!(
            "{who}: /healthz answered {} with a failed disk",
            p.healthz
        ));
    }
    for (id, offset) in &p.probe_acks {
        v.push(format!(
            "{who} acknowledged probe {id} at offset {offset} after its disk failed"
        ));
    }
    let refused = p.probe_answers.get("STORAGE_FAILED").copied().unwrap_or(0);
    if refused != PROBES {
        v.push(format!(
            "{who}: {refused}/{PROBES} probes refused with STORAGE_FAILED: {:?}",
            p.probe_answers
        ));
    }
    if p.acked_before_restart > p.acked_at_failure {
        v.push(format!(
            "{who} acknowledged {} publish(es) after its disk failed",
            p.acked_before_restart - p.acked_at_failure
        ));
    }
    v
}

/// The value of `name` (with labels containing `labels`) in a scrape;
/// summed over matching series.
fn metric(scrape: &str, name: &str, labels: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && rest.contains(labels)
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// `op/error` of every `herald_storage_failures_total` series above 0.
fn failures_reported(scrape: &str) -> Vec<String> {
    let label = |series: &str, key: &str| {
        let start = series.find(&format!("{key}=\""))? + key.len() + 2;
        let len = series[start..].find('"')?;
        Some(series[start..start + len].to_string())
    };
    scrape
        .lines()
        .filter(|l| l.starts_with("herald_storage_failures_total{"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(_, v)| v.parse::<f64>().is_ok_and(|v| v > 0.0))
        .filter_map(|(s, _)| Some(format!("{}/{}", label(s, "op")?, label(s, "error")?)))
        .collect()
}

async fn scrape(cluster: &Cluster, id: u64) -> String {
    match http_get(cluster.node(id).http_addr(), "/metrics").await {
        Ok((200, body)) => body,
        _ => String::new(),
    }
}

/// Break node `id`'s disk with `fault`.
fn inject(cluster: &Cluster, id: u64, fault: Fault) -> u64 {
    match fault {
        Fault::FsyncEio => cluster.fail_disk(id, DiskFault::FsyncEio).unwrap(),
        Fault::WriteEio => cluster.fail_disk(id, DiskFault::WriteEio).unwrap(),
        Fault::Full => return cluster.fill_disk(id).unwrap(),
    }
    0
}

/// One phase: fail node `id`'s disk, watch it stop acknowledging while
/// the others go on, then mend the disk, restart it and wait until it
/// caught up.
async fn fail_and_recover(
    cluster: &mut Cluster,
    load: &Load,
    id: u64,
    role: &'static str,
    fault: Fault,
    probe_base: u64,
) -> Phase {
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&n| n != id).collect();
    let ballast = inject(cluster, id, fault);
    eprintln!("{role} {id}: disk fault {fault:?} injected (ballast {ballast} bytes)");
    let mut phase = Phase {
        node: id,
        role,
        ..Phase::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = scrape(cluster, id).await;
        if metric(&text, "herald_storage_failed", "") == 1.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    phase.failed_gauge = metric(&text, "herald_storage_failed", "");
    phase.reported = failures_reported(&text);
    phase.acked_at_failure = metric(&text, "herald_publishes_total", "result=\"ok\"");
    phase.healthz = http_get(cluster.node(id).http_addr(), "/healthz")
        .await
        .map_or(0, |(code, _)| code);
    eprintln!(
        "{role} {id}: reported {:?}, /healthz {}",
        phase.reported, phase.healthz
    );

    let mut client = cluster.publisher(id);
    let ledger = load.ledger();
    for probe in probe_base..probe_base + PROBES {
        ledger.lock().unwrap().sent(probe, PROBE_CHANNEL);
        let call = client.publish(ledger::request(probe, PROBE_CHANNEL));
        let answer = match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                phase.probe_acks.push((probe, resp.offset));
                ledger.lock().unwrap().acked(probe, &resp);
                "ACKNOWLEDGED".to_string()
            }
            Ok(Err(status)) => {
                let why = reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code()));
                ledger.lock().unwrap().failed(probe, why.clone());
                why
            }
            Err(_) => {
                ledger.lock().unwrap().failed(probe, "no answer".into());
                "NO_ANSWER_10S".to_string()
            }
        };
        *phase.probe_answers.entry(answer).or_default() += 1;
    }
    let leader = cluster
        .wait_for_leader_among(&others, Duration::from_secs(60))
        .await
        .unwrap();
    load.wait_acked_more(200, &format!("with {role} {id}'s disk failed"))
        .await;
    phase.acked_before_restart = metric(
        &scrape(cluster, id).await,
        "herald_publishes_total",
        "result=\"ok\"",
    );
    eprintln!(
        "{role} {id}: probes answered {:?}; {others:?} go on under leader {leader}",
        phase.probe_answers
    );

    // The disk works again: the fault is off (a restarted process starts
    // without it), or the ballast is gone.
    match cluster
        .node_mut(id)
        .terminate(Duration::from_secs(15))
        .await
    {
        Ok(status) => eprintln!("{role} {id}: stopped ({status})"),
        Err(e) => eprintln!("{role} {id}: {e}"),
    }
    if fault == Fault::Full {
        cluster.free_disk(id).unwrap();
    }
    let target = cluster.status(leader).await.unwrap().committed_index;
    cluster.node_mut(id).restart().unwrap();
    cluster
        .wait_ready(id, Duration::from_secs(120))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = cluster.status(id).await.ok();
        if s.as_ref().is_some_and(|s| s.applied_index >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{role} {id} did not catch up to {target}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = scrape(cluster, id).await;
    assert_eq!(
        metric(&after, "herald_storage_failed", ""),
        0.0,
        "{role} {id} restarted on a working disk still reports it failed"
    );
    eprintln!("{role} {id}: restarted, caught up to {target}");
    phase
}

async fn run(fault: Fault) {
    let scenario = fault.scenario();
    match fault {
        Fault::FsyncEio | Fault::WriteEio => {
            disk::libfiu().unwrap_or_else(|why| panic!("{scenario} cannot run here: {why}"))
        }
        Fault::Full => {}
    }
    let mut cluster = Cluster::start(3, fault.options()).await.unwrap();
    let ids = cluster.ids();
    let load = Load::start(&cluster, &ids, crate::steady_load("df", 10));
    load.wait_acked_more(200, "before the fault").await;

    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let follower = *ids.iter().find(|&&n| n != leader).expect("three nodes");
    let mut phases = Vec::new();
    phases
        .push(fail_and_recover(&mut cluster, &load, follower, "follower", fault, PROBE_BASE).await);
    let leader = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    phases.push(
        fail_and_recover(
            &mut cluster,
            &load,
            leader,
            "leader",
            fault,
            PROBE_BASE + PROBES,
        )
        .await,
    );
    load.wait_acked_more(200, "after both recoveries").await;

    // The probes failed on purpose: retried with their keys, each is
    // stored once.
    let (ledger, retries, mut violations) =
        crate::finish_load(&mut cluster, load, Unacknowledged::Retry).await;
    for p in &phases {
        violations.extend(phase_violations(p, fault.expected()));
    }
    let summary = |p: &Phase| format!("{}:{}", p.node, p.reported.join("+"));
    let refused: u64 = phases
        .iter()
        .map(|p| p.probe_answers.get("STORAGE_FAILED").copied().unwrap_or(0))
        .sum();
    Verdict::new(scenario, &ledger, retries, violations)
        .fact("follower", summary(&phases[0]))
        .fact("leader", summary(&phases[1]))
        .fact("probes_refused", format!("{refused}/{}", 2 * PROBES))
        .conclude();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_eio_stops_acknowledging_and_recovers() {
    run(Fault::FsyncEio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_eio_stops_acknowledging_and_recovers() {
    run(Fault::WriteEio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_stops_acknowledging_and_recovers_once_freed() {
    run(Fault::Full).await;
}

/// The phase checker against what a node that ignores its failed disk
/// would show: no gauge, no count, healthy, probes acknowledged, the
/// acknowledged count still rising. Each must be caught.
#[test]
fn a_node_that_ignores_its_failed_disk_is_caught() {
    let honest = Phase {
        node: 2,
        role: "follower",
        reported: vec!["fsync/eio".into()],
        failed_gauge: 1.0,
        healthz: 503,
        probe_answers: BTreeMap::from([("STORAGE_FAILED".into(), PROBES)]),
        acked_at_failure: 40.0,
        acked_before_restart: 40.0,
        ..Phase::default()
    };
    let expected = Fault::FsyncEio.expected();
    assert!(phase_violations(&honest, expected).is_empty());
    let ignoring = Phase {
        reported: vec![],
        failed_gauge: 0.0,
        healthz: 200,
        probe_acks: vec![(PROBE_BASE, 17)],
        probe_answers: BTreeMap::from([
            ("ACKNOWLEDGED".into(), 1),
            ("STORAGE_FAILED".into(), PROBES - 1),
        ]),
        acked_before_restart: 45.0,
        ..honest
    };
    let found = phase_violations(&ignoring, expected);
    assert_eq!(found.len(), 6, "{found:#?}");
    let wrong_op = Phase {
        reported: vec!["write/eio".into()],
        ..Phase::default()
    };
    assert!(
        phase_violations(&wrong_op, expected)
            .iter()
            .any(|v| v.contains("expected op fsync"))
    );
    let scrape = "# TYPE herald_storage_failures_total counter\n\
        herald_storage_failures_total{op=\"write\",error=\"enospc\"} 3\n\
        herald_storage_failed 1\n\
        herald_publishes_total{result=\"ok\"} 12\n\
        herald_publishes_total{result=\"unavailable\"} 2\n";
    assert_eq!(failures_reported(scrape), vec!["write/enospc".to_string()]);
    assert_eq!(metric(scrape, "herald_storage_failed", ""), 1.0);
    assert_eq!(
        metric(scrape, "herald_publishes_total", "result=\"ok\""),
        12.0
    );
    assert!(
        phase_violations(
            &Phase {
                reported: failures_reported(scrape),
                ..Phase::default()
            },
            Fault::Full.expected()
        )
        .iter()
        .all(|v| !v.contains("herald_storage_failures_total"))
    );
}
