//! All faults mixed at random, under load, for minutes: SIGKILL and restart,
//! SIGSTOP and SIGCONT, SIGTERM and restart, a node cut off from the others,
//! a link cut one way, and loss and delay on a node's links. One fault at a
//! time, each held for a few seconds and then healed, so a majority is
//! always there to be found; which fault, which node and for how long all
//! come from one seed.
//!
//! The seed is printed first (`HERALD_SOAK_SEED` replays its schedule of
//! faults; timing still varies with the machine), the run lasts
//! `HERALD_SOAK_SECS` (180 unless set; longer as an opt-in), and it ends, like
//! every scenario, with the checker's verdict over everything acknowledged:
//! guarantees 1 and 5 across every fault in the schedule.
//!
//! Netem delays stay under 40 ms here so a round trip stays under the
//! 150 ms heartbeat (openraft's AppendEntries timeout, see `lossy_links`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald_cluster_tests::load::{Load, LoadSpec};
use herald_cluster_tests::rng::SplitMix64;
use herald_cluster_tests::{Cluster, ClusterOptions, Network, Verdict, announce, ledger};

const SCENARIO: &str = "soak";

const POLICY: &str = r#"
[limits]
idempotency_window_secs = 3600
max_history_limit = 10000

[namespaces.sk]
history_size = 10000
history_ttl_secs = 0
"#;

/// One fault of the schedule.
#[derive(Debug, Clone)]
enum Fault {
    /// SIGKILL, restart when healed.
    Kill(u64),
    /// SIGSTOP, SIGCONT when healed.
    Pause(u64),
    /// SIGTERM (must exit cleanly), restart when healed.
    Terminate(u64),
    /// The node cut off from every other node, both ways.
    Isolate(u64),
    /// Packets from the first node never reach the second.
    OneWay(u64, u64),
    /// Netem on the node's peer links.
    Netem(u64, String),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Terminate(_) => "terminate",
            Fault::Isolate(_) => "isolate",
            Fault::OneWay(..) => "oneway",
            Fault::Netem(..) => "netem",
        }
    }
}

/// The next fault, how long it is held, and the pause after healing it.
fn next_step(rng: &mut SplitMix64, ids: &[u64], network: bool) -> (Fault, Duration, Duration) {
    let kinds: &[&str] = if network {
        &["kill", "pause", "terminate", "isolate", "oneway", "netem"]
    } else {
        &["kill", "pause", "terminate"]
    };
    let node = *rng.pick(ids);
    let fault = match *rng.pick(kinds) {
        "kill" => Fault::Kill(node),
        "pause" => Fault::Pause(node),
        "terminate" => Fault::Terminate(node),
        "isolate" => Fault::Isolate(node),
        "oneway" => {
            let others: Vec<u64> = ids.iter().copied().filter(|&id| id != node).collect();
            Fault::OneWay(node, *rng.pick(&others))
        }
        _ => Fault::Netem(
            node,
            format!(
                "loss {}% delay {}ms",
                rng.between(5..=20),
                rng.between(5..=40)
            ),
        ),
    };
    let hold = Duration::from_millis(rng.between(1_000..=6_000));
    let gap = Duration::from_millis(rng.between(500..=3_000));
    (fault, hold, gap)
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

async fn inject(cluster: &mut Cluster, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::Kill(id) => cluster.node_mut(*id).kill().map_err(|e| e.to_string()),
        Fault::Pause(id) => cluster.node_mut(*id).pause().map_err(|e| e.to_string()),
        Fault::Terminate(id) => {
            let status = cluster
                .node_mut(*id)
                .terminate(Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("node {id} exited with {status} on SIGTERM"))
            }
        }
        Fault::Isolate(id) => {
            let others: Vec<u64> = cluster.ids().into_iter().filter(|o| o != id).collect();
            cluster
                .net()
                .partition(&[*id], &others)
                .map_err(|e| format!("{e:#}"))
        }
        Fault::OneWay(from, to) => cluster
            .net()
            .partition_oneway(*from, *to)
            .map_err(|e| format!("{e:#}")),
        Fault::Netem(id, spec) => cluster.net().netem(*id, spec).map_err(|e| format!("{e:#}")),
    }
}

fn heal(cluster: &mut Cluster, fault: &Fault) {
    match fault {
        Fault::Kill(id) | Fault::Terminate(id) => cluster.node_mut(*id).restart().unwrap(),
        Fault::Pause(id) => cluster.node_mut(*id).resume().unwrap(),
        Fault::Isolate(_) | Fault::OneWay(..) => cluster.net().heal().unwrap(),
        Fault::Netem(id, _) => cluster.net().clear_netem(*id).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_from_a_seed_under_load() {
    let seed = env_u64("HERALD_SOAK_SEED").unwrap_or_else(SplitMix64::fresh_seed);
    let secs = env_u64("HERALD_SOAK_SECS").unwrap_or(180);
    let network = match Network::available() {
        Ok(()) => true,
        Err(why) => {
            announce(format!(
                "soak: network namespaces unavailable ({why}); partitions and netem left out"
            ));
            false
        }
    };
    announce(format!(
        "soak: seed={seed} secs={secs} (replay: HERALD_SOAK_SEED={seed} HERALD_SOAK_SECS={secs} \
         cargo test -p herald-cluster-tests --test faults soak)"
    ));

    // ~600 publications a second at most: enough channels that each keeps
    // every one of its publications in its 10,000-long history.
    let channels = (secs * 600 / 4_000).max(50);
    let opts = ClusterOptions {
        heartbeat_ms: 150,
        election_timeout_ms: 1000,
        snapshot_every: Some(500),
        ..ClusterOptions::default().with_policy(POLICY)
    };
    let mut cluster = if network {
        Cluster::start_isolated(3, opts).await.unwrap()
    } else {
        Cluster::start(3, opts).await.unwrap()
    };
    if network {
        cluster.net().set_seed(seed);
    }
    let ids = cluster.ids();
    let spec = LoadSpec {
        namespace: "sk",
        channels,
        publishers: 6,
        total: u64::MAX,
        pace: Duration::from_millis(10),
        attempt_timeout: Duration::from_secs(3),
        patience: Duration::from_secs(120),
    };
    let load = Load::start(&cluster, &ids, spec);
    load.wait_acked_more(100, "before the first fault").await;

    let mut rng = SplitMix64::new(seed);
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut violations = Vec::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut steps = 0u64;
    while Instant::now() < deadline {
        let (fault, hold, gap) = next_step(&mut rng, &ids, network);
        steps += 1;
        eprintln!(
            "soak t={:.1}s step {steps}: {fault:?} for {hold:?}, then {gap:?} ({} acks)",
            start.elapsed().as_secs_f64(),
            load.acked()
        );
        if let Err(e) = inject(&mut cluster, &fault).await {
            violations.push(format!("step {steps} {fault:?}: {e}"));
        }
        *counts.entry(fault.kind()).or_default() += 1;
        tokio::time::sleep(hold).await;
        heal(&mut cluster, &fault);
        tokio::time::sleep(gap).await;
        let crashed: Vec<String> = ids
            .iter()
            .filter_map(|&id| {
                let status = cluster.node_mut(id).unexpected_exit()?;
                Some(format!(
                    "node {id} exited on its own ({status}) after step {steps} {fault:?}; its log: {}",
                    cluster.node(id).log_tail(3).replace('\n', " | ")
                ))
            })
            .collect();
        if !crashed.is_empty() {
            // The schedule assumes three nodes; a node that cannot come
            // back ends the soak, with what the load saw so far.
            load.stop();
            let (ledger, retries) = load.finish().await;
            let mut violations = violations;
            violations.extend(crashed);
            Verdict::new(SCENARIO, &ledger, retries, violations)
                .fact("seed", seed)
                .fact("secs", secs)
                .fact("aborted_at_step", steps)
                .conclude();
            return;
        }
    }

    eprintln!("soak: {steps} faults injected; healing and checking");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(120))
        .await
        .unwrap();
    load.wait_acked_more(100, "after the last fault").await;
    load.stop();
    let (mut ledger, mut retries) = load.finish().await;
    retries += crate::settle_unacknowledged(&cluster, &mut ledger, Duration::from_secs(60)).await;
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .unwrap();
    violations.extend(ledger::verify_every_node(&cluster, &ledger, &ids, 10_000).await);
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    Verdict::new(SCENARIO, &ledger, retries, violations)
        .fact("seed", seed)
        .fact("secs", secs)
        .fact("faults", counts.join(","))
        .fact("final_leader", leader)
        .conclude();
}
