//! Network namespaces for the processes under test, and the network faults
//! a test injects between them.
//!
//! Each host (a node, later an edge) gets its own namespace with one
//! interface, `eth0`, whose veth peer is a port of a bridge living in a
//! namespace of its own (the "switch"). The test process reaches every host
//! through one more veth from the root namespace to that bridge, holding the
//! first address of the subnet, so faults never cut the test off from the
//! processes it observes. Addresses come from `10.213.<k>.0/24`, with `<k>`
//! chosen so no route of the machine overlaps; they exist only inside these
//! namespaces.
//!
//! Faults are applied in the receiving or sending host's namespace, never on
//! the machine itself:
//! * a cut link is an iptables `DROP` in the receiver's `INPUT` chain, so the
//!   sender sees silence, as in a real partition, not an error;
//! * loss and delay ([`Network::netem`]) hold each outgoing packet in an
//!   `NFQUEUE` for this process to release or drop (see `netem.rs` for why
//!   not `tc netem`).
//!
//! Every name starts with `hf<pid><seq>`, so concurrent test processes never
//! touch each other's namespaces. Dropping the [`Network`] deletes all of
//! them, also when a test panics. A test process killed with SIGKILL leaves
//! them behind: `ip netns list | grep '^hf'` shows them, `ip netns del`
//! removes them.

mod netem;
mod nfqueue;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, anyhow, bail};
use nix::sched::{CloneFlags, setns};

pub use netem::Effect;
pub use netem::Impairment;
use netem::{Emulator, QUEUE};

/// The host part of a host's address is `HOST_OFFSET + id`.
const HOST_OFFSET: u64 = 10;

/// Networks created by this process, for unique names.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// One process's place in the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The id the test knows it by (a node's Raft id).
    pub id: u64,
    /// Name of its network namespace (`ip netns exec <netns> ...`).
    pub netns: String,
    /// Its address on the shared subnet.
    pub addr: Ipv4Addr,
}

/// Mutable fault state, behind a lock so faults are injected through `&self`.
#[derive(Debug, Default)]
struct Faults {
    /// Directed cuts `(from, to)`: packets from `from` never reach `to`.
    cuts: BTreeSet<(u64, u64)>,
    /// Directed UDP-only cuts `(from, to)`: `from`'s datagrams never reach
    /// `to`; TCP between them still flows.
    udp_cuts: BTreeSet<(u64, u64)>,
    /// Hosts whose outgoing peer traffic is impaired.
    emulators: BTreeMap<u64, Emulator>,
    /// Seed for the emulators' loss decisions.
    seed: u64,
}

/// A switch, a link to the test process, and the hosts attached to it.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    subnet: u8,
    hosts: BTreeMap<u64, Host>,
    faults: Mutex<Faults>,
}

/// The `ip` and `iptables` executables.
#[derive(Debug)]
struct Tools {
    ip: PathBuf,
    iptables: PathBuf,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tools() -> Result<&'static Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            Ok(Tools {
                ip: find_tool("ip").ok_or("`ip` not found (Debian package iproute2)")?,
                iptables: find_tool("iptables")
                    .ok_or("`iptables` not found (Debian package iptables)")?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Run `program args`, failing with its stderr.
fn run(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(&tools().map_err(|e| anyhow!(e))?.ip, args)
}

/// `iptables -w args` inside namespace `netns`.
fn iptables(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let tools = tools().map_err(|e| anyhow!(e))?;
    let iptables = tools.iptables.to_string_lossy();
    let mut all = vec!["netns", "exec", netns, &iptables, "-w"];
    all.extend_from_slice(args);
    run(&tools.ip, &all).map(drop)
}

fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

/// Run `f` on a thread that has entered namespace `netns`.
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let ns = File::open(netns_path(netns))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Network {
    /// Whether this machine lets the harness build networks: root, `ip`,
    /// `iptables`, veth pairs, bridges and NFQUEUE inside a namespace. The
    /// probe runs once per process; `Err` carries the reason to print.
    pub fn available() -> Result<(), String> {
        static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
        PROBE.get_or_init(probe).clone()
    }

    /// An empty network: the switch namespace and the test process's link
    /// to it. Add hosts with [`Network::add_host`].
    pub fn create() -> anyhow::Result<Self> {
        Self::available().map_err(|e| anyhow!("network namespaces unavailable: {e}"))?;
        let seq = NEXT_SEQ.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("hf{}{:02}", std::process::id(), seq % 100);
        let subnet = free_subnet()?;
        let net = Self {
            prefix,
            subnet,
            hosts: BTreeMap::new(),
            faults: Mutex::new(Faults {
                seed: u64::from(subnet),
                ..Faults::default()
            }),
        };
        // From here on, Drop cleans up whatever was created.
        let sw = net.switch_netns();
        let root_link = net.root_link();
        let gateway = format!("{}/24", net.gateway());
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "name", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", "name", &root_link, "type", "veth", "peer", "name", "up0", "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", "up0", "master", "br0", "up"])?;
        ip(&["addr", "add", &gateway, "dev", &root_link])?;
        ip(&["link", "set", &root_link, "up"])?;
        Ok(net)
    }

    /// The `hf<pid><seq>` prefix of every name this network created.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn switch_netns(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn root_link(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// The test process's address on the subnet (peers never cut it off).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// Attach host `id` (1..=200): a namespace `<prefix>n<id>` whose `eth0`
    /// has address `10.213.<k>.<10 + id>`.
    pub fn add_host(&mut self, id: u64) -> anyhow::Result<Host> {
        if !(1..=200).contains(&id) {
            bail!("host id {id} is outside 1..=200");
        }
        if self.hosts.contains_key(&id) {
            bail!("host {id} already exists");
        }
        let host = Host {
            id,
            netns: format!("{}n{id}", self.prefix),
            addr: Ipv4Addr::new(10, 213, self.subnet, (HOST_OFFSET + id) as u8),
        };
        let sw = self.switch_netns();
        let port = format!("v{id}");
        let ns = host.netns.as_str();
        ip(&["netns", "add", ns])?;
        // Registered before configuring, so Drop deletes a half-made host.
        self.hosts.insert(id, host.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &sw, "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.addr),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        iptables(ns, &["-N", "HERALD_CUT"])?;
        iptables(ns, &["-A", "INPUT", "-j", "HERALD_CUT"])?;
        iptables(ns, &["-N", "HERALD_NETEM"])?;
        iptables(ns, &["-A", "OUTPUT", "-j", "HERALD_NETEM"])?;
        Ok(host)
    }

    /// Host `id`.
    ///
    /// # Panics
    /// When there is no such host.
    pub fn host(&self, id: u64) -> &Host {
        self.hosts
            .get(&id)
            .unwrap_or_else(|| panic!("no host {id} in network {}", self.prefix))
    }

    /// Ids of every host.
    pub fn host_ids(&self) -> Vec<u64> {
        self.hosts.keys().copied().collect()
    }

    /// The program and leading arguments that run `program` inside host
    /// `id`'s namespace: `ip netns exec <netns> <program>`. `ip` replaces
    /// itself with `program`, so the child's pid is the program's and
    /// signals reach it directly.
    pub fn command_in(&self, id: u64, program: &Path) -> (PathBuf, Vec<OsString>) {
        let ip = tools().expect("checked by Network::create").ip.clone();
        let args = vec![
            "netns".into(),
            "exec".into(),
            self.host(id).netns.clone().into(),
            program.into(),
        ];
        (ip, args)
    }

    /// Run `f` on a thread inside host `id`'s namespace (to bind or connect
    /// sockets as that host would).
    pub fn in_host<T: Send>(&self, id: u64, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        in_netns(&self.host(id).netns, f)
    }

    /// Seed the generators deciding which packets [`Network::netem`] loses
    /// (per host: seed and host id), so a printed seed replays the same
    /// decisions. Applies to impairments started afterwards.
    pub fn set_seed(&self, seed: u64) {
        self.faults().seed = seed;
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut every link between a host in `a` and a host in `b`, both ways.
    /// Links within each side, and to the test process, stay up.
    /// Idempotent; undone by [`Network::heal`].
    pub fn partition(&self, a: &[u64], b: &[u64]) -> anyhow::Result<()> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Cut the link from `from` to `to` in that direction only: `to` hears
    /// nothing from `from`, `from` still hears `to` (TCP between them stalls
    /// either way; a datagram protocol sees the asymmetry). Idempotent.
    pub fn partition_oneway(&self, from: u64, to: u64) -> anyhow::Result<()> {
        self.cut(from, to)
    }

    fn cut(&self, from: u64, to: u64) -> anyhow::Result<()> {
        if from == to {
            return Ok(());
        }
        let mut faults = self.faults();
        if faults.cuts.contains(&(from, to)) {
            return Ok(());
        }
        let src = self.host(from).addr.to_string();
        iptables(
            &self.host(to).netns,
            &["-A", "HERALD_CUT", "-s", &src, "-j", "DROP"],
        )?;
        faults.cuts.insert((from, to));
        Ok(())
    }

    /// Cut UDP only between hosts `a` and `b`, both ways (a firewall that
    /// blocks QUIC while gRPC over TCP still flows). Idempotent; undone by
    /// [`Network::heal`].
    pub fn cut_udp(&self, a: u64, b: u64) -> anyhow::Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let mut faults = self.faults();
            if from == to || faults.udp_cuts.contains(&(from, to)) {
                continue;
            }
            let src = self.host(from).addr.to_string();
            iptables(
                &self.host(to).netns,
                &["-A", "HERALD_CUT", "-s", &src, "-p", "udp", "-j", "DROP"],
            )?;
            faults.udp_cuts.insert((from, to));
        }
        Ok(())
    }

    /// Directed cuts in force, `(from, to)`.
    pub fn cuts(&self) -> Vec<(u64, u64)> {
        self.faults().cuts.iter().copied().collect()
    }

    /// Lose and delay packets that host `id` sends to other hosts (not to
    /// the test process), with netem's syntax: `"loss 20% delay 100ms"`,
    /// `"delay 50ms 10ms"` (jitter). Replaces the host's previous
    /// impairment; `""` removes it. Idempotent.
    pub fn netem(&self, id: u64, spec: &str) -> anyhow::Result<()> {
        let impairment = Impairment::parse(spec).map_err(|e| anyhow!(e))?;
        if impairment.is_none() {
            return self.clear_netem(id);
        }
        let netns = self.host(id).netns.clone();
        let mut faults = self.faults();
        if let Some(emulator) = faults.emulators.get(&id) {
            emulator.set(impairment);
            return Ok(());
        }
        let seed = faults.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let emulator = Emulator::start(netns_path(&netns), impairment, seed)
            .with_context(|| format!("starting netem for host {id}"))?;
        let queue = QUEUE.to_string();
        let gateway = self.gateway().to_string();
        let subnet = format!("10.213.{}.0/24", self.subnet);
        let rules = iptables(
            &netns,
            &["-A", "HERALD_NETEM", "-d", &gateway, "-j", "RETURN"],
        )
        .and_then(|()| {
            iptables(
                &netns,
                &[
                    "-A",
                    "HERALD_NETEM",
                    "-d",
                    &subnet,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                    "--queue-bypass",
                ],
            )
        });
        if let Err(e) = rules {
            let _ = iptables(&netns, &["-F", "HERALD_NETEM"]);
            return Err(e);
        }
        faults.emulators.insert(id, emulator);
        Ok(())
    }

    /// Remove host `id`'s impairment (held packets are released). Idempotent.
    pub fn clear_netem(&self, id: u64) -> anyhow::Result<()> {
        let mut faults = self.faults();
        if let Some(emulator) = faults.emulators.remove(&id) {
            // Stop queueing first, then release what is held.
            let flushed = iptables(&self.host(id).netns, &["-F", "HERALD_NETEM"]);
            drop(emulator);
            flushed?;
        }
        Ok(())
    }

    /// Why host `id`'s impairment cannot be said to have taken effect so
    /// far (empty: its emulator runs and dropped and delayed packets as
    /// asked), with the emulator's counters. Check before healing it.
    pub fn netem_problems(&self, id: u64) -> (Vec<String>, Effect) {
        let faults = self.faults();
        match faults.emulators.get(&id) {
            None => (
                vec![format!("host {id} has no impairment in force")],
                Effect::default(),
            ),
            Some(emulator) => {
                let effect = emulator.effect();
                let problems = effect
                    .problems(&emulator.impairment())
                    .into_iter()
                    .map(|p| format!("netem on host {id}: {p}"))
                    .collect();
                (problems, effect)
            }
        }
    }

    /// Hosts with an impairment in force.
    pub fn impaired(&self) -> Vec<u64> {
        self.faults().emulators.keys().copied().collect()
    }

    /// Undo every partition and impairment. Idempotent.
    pub fn heal(&self) -> anyhow::Result<()> {
        let receivers: BTreeSet<u64> = {
            let faults = self.faults();
            faults
                .cuts
                .iter()
                .chain(&faults.udp_cuts)
                .map(|&(_, to)| to)
                .collect()
        };
        for to in receivers {
            iptables(&self.host(to).netns, &["-F", "HERALD_CUT"])?;
            let mut faults = self.faults();
            faults.cuts.retain(|&(_, t)| t != to);
            faults.udp_cuts.retain(|&(_, t)| t != to);
        }
        for id in self.impaired() {
            self.clear_netem(id)?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Release held packets before the namespaces go.
        std::mem::take(&mut self.faults().emulators);
        let mut failures = Vec::new();
        if let Err(e) = ip(&["link", "del", &self.root_link()]) {
            failures.push(e);
        }
        for host in self.hosts.values() {
            if let Err(e) = ip(&["netns", "del", &host.netns]) {
                failures.push(e);
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.switch_netns()]) {
            failures.push(e);
        }
        for e in failures {
            eprintln!("network {}: cleanup: {e:#}", self.prefix);
        }
    }
}

/// A `k` for `10.213.<k>.0/24` that no address or route of the machine uses,
/// starting from one derived from the pid so concurrent test processes
/// differ.
fn free_subnet() -> anyhow::Result<u8> {
    let used = format!(
        "{}\n{}",
        ip(&["-4", "-o", "addr", "show"])?,
        ip(&["-4", "route", "show", "table", "all"])?
    );
    let start = 20 + std::process::id() % 200;
    (0..220)
        .map(|i| ((start - 20 + i) % 220 + 20) as u8)
        .find(|k| !used.contains(&format!("10.213.{k}.")))
        .ok_or_else(|| anyhow!("every 10.213.<k>.0/24 is in use on this machine"))
}

/// Build and tear down a tiny network with every feature the harness uses.
fn probe() -> Result<(), String> {
    tools()?;
    let name = format!("hf{}pr", std::process::id());
    let attempt = || -> anyhow::Result<()> {
        ip(&["netns", "add", &name])?;
        ip(&[
            "-n", &name, "link", "add", "name", "a", "type", "veth", "peer", "name", "b",
        ])?;
        ip(&["-n", &name, "link", "add", "name", "br0", "type", "bridge"])?;
        iptables(&name, &["-N", "HERALD_PROBE"])?;
        iptables(
            &name,
            &[
                "-A",
                "HERALD_PROBE",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
                "--queue-bypass",
            ],
        )?;
        drop(Emulator::start(
            netns_path(&name),
            Impairment::default(),
            0,
        )?);
        Ok(())
    };
    let result = attempt();
    let _ = ip(&["netns", "del", &name]);
    result.map_err(|e| format!("{e:#} (network namespaces need root)"))
}

#[cfg(test)]
mod tests {
    //! The faults are real: exercised with plain sockets inside the
    //! namespaces before any node test relies on them.

    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::time::{Duration, Instant};

    use super::*;

    fn connects(net: &Network, from: u64, to: SocketAddr) -> bool {
        net.in_host(from, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(1))
        })
        .unwrap()
        .is_ok()
    }

    /// Whether a datagram from `from` reaches `socket` within a second.
    fn delivers(net: &Network, from: u64, socket: &UdpSocket) -> bool {
        let to = socket.local_addr().unwrap();
        net.in_host(from, || {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .and_then(|s| s.send_to(b"ping", to))
                .unwrap()
        })
        .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 16];
        let got = socket.recv(&mut buf).is_ok();
        // Drain stragglers so the next check starts clean.
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while socket.recv(&mut buf).is_ok() {}
        got
    }

    #[test]
    fn partitions_one_way_cuts_and_netem_hold_and_heal() {
        if !crate::machine::require(
            "network self-test",
            crate::machine::Capability::Network,
            Network::available(),
        ) {
            return;
        }
        let mut net = Network::create().unwrap();
        let prefix = net.prefix().to_string();
        let hosts: Vec<Host> = (1..=3).map(|id| net.add_host(id).unwrap()).collect();
        let tcp = |id: u64| {
            let addr = SocketAddr::new(hosts[id as usize - 1].addr.into(), 9000);
            let listener = net
                .in_host(id, || TcpListener::bind(addr))
                .unwrap()
                .unwrap();
            (addr, listener)
        };
        let (addr2, _l2) = tcp(2);
        let (addr3, _l3) = tcp(3);
        let udp = |id: u64| {
            let addr = SocketAddr::new(hosts[id as usize - 1].addr.into(), 9001);
            net.in_host(id, || UdpSocket::bind(addr)).unwrap().unwrap()
        };
        let (u1, u2) = (udp(1), udp(2));

        assert!(connects(&net, 1, addr2) && connects(&net, 1, addr3));
        assert!(
            TcpStream::connect_timeout(&addr2, Duration::from_secs(5)).is_ok(),
            "the test process reaches the hosts"
        );

        net.partition(&[1], &[2]).unwrap();
        net.partition(&[1], &[2]).unwrap();
        assert_eq!(net.cuts(), vec![(1, 2), (2, 1)], "idempotent");
        assert!(!connects(&net, 1, addr2), "1 and 2 are cut");
        assert!(connects(&net, 1, addr3), "1 still reaches 3");
        assert!(connects(&net, 3, addr2), "3 still reaches 2");
        assert!(
            TcpStream::connect_timeout(&addr2, Duration::from_secs(5)).is_ok(),
            "the test process is never cut off"
        );
        net.heal().unwrap();
        assert!(connects(&net, 1, addr2), "healed");

        net.partition_oneway(1, 2).unwrap();
        assert!(!delivers(&net, 1, &u2), "1 -> 2 is cut");
        assert!(delivers(&net, 2, &u1), "2 -> 1 still flows");
        net.heal().unwrap();
        assert!(delivers(&net, 1, &u2));

        net.netem(1, "delay 150ms").unwrap();
        let start = Instant::now();
        assert!(connects(&net, 1, addr2));
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "a SYN from 1 waits out the delay"
        );
        net.netem(1, "loss 100%").unwrap();
        assert!(!delivers(&net, 1, &u2), "everything from 1 is lost");
        assert!(
            delivers(&net, 2, &u1),
            "impairment is on 1's sending side only"
        );
        net.netem(1, "").unwrap();
        assert!(net.impaired().is_empty());
        assert!(delivers(&net, 1, &u2), "netem removed");

        net.netem(2, "loss 100%").unwrap();
        drop((u1, u2, _l2, _l3));
        drop(net);
        let left = ip(&["netns", "list"]).unwrap();
        assert!(
            !left.lines().any(|l| l.starts_with(&prefix)),
            "namespaces left behind: {left}"
        );
        let links = ip(&["-o", "link", "show"]).unwrap();
        assert!(!links.contains(&prefix), "links left behind: {links}");
    }
}
