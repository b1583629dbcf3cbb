//! End to end through the real binaries: `herald dev` starts a 3-node cluster
//! of `herald-node` processes and one `herald-edge`, and prints the edge's
//! URLs and a development token; `herald publish`, `history` and `status`
//! work against it; a WebSocket client connects to the edge with that token
//! and receives what `herald publish` sends; SIGTERM stops it with exit
//! status 0 and leaves no child behind.
//!
//! The publish retried with the same idempotency key proves `docs/guarantees.md`
//! guarantee 5 (stored once) as a user of the CLI sees it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Once, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Only a hang guard: a debug build elects a leader in a few seconds.
const READY_GUARD: Duration = Duration::from_secs(60);
/// `herald dev` gives its nodes 10 s to stop before killing them.
const EXIT_GUARD: Duration = Duration::from_secs(30);

fn herald() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

/// Executables `herald dev` starts, each the binary of a package of its
/// own, so a `cargo test -p herald-cli` has not built it.
const CHILD_BINARIES: [&str; 2] = ["herald-node", "herald-edge"];

/// The binary `name` (also its package's name) next to `herald`, where
/// `herald dev` looks for it. Cargo builds only this package's binaries for
/// this test, so build the others once if they are missing.
fn sibling_binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let path_of =
        |name: &str| herald().with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    BUILD.call_once(|| {
        let missing: Vec<&str> = CHILD_BINARIES
            .into_iter()
            .filter(|n| !path_of(n).is_file())
            .collect();
        if missing.is_empty() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .arg("build")
            .args(missing.iter().flat_map(|n| ["-p", n]))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(
            status.success(),
            "cargo build of {missing:?} failed: {status}"
        );
    });
    let path = path_of(name);
    assert!(path.is_file(), "{name} not found at {}", path.display());
    path
}

/// The edge lines of the banner.
#[derive(Default)]
struct EdgeUrls {
    websocket: String,
    sse: String,
    metrics: String,
}

/// A running `herald dev`. Dropped (also on a failed assertion) it stops the
/// cluster the way a user would, then kills whatever is left, so a failing
/// test never leaves nodes or the edge running.
struct DevCluster {
    dev: Child,
    lines: mpsc::Receiver<String>,
    /// Every child of `herald dev`: the nodes, then the edge.
    child_pids: Vec<i32>,
    grpc: String,
    api_key: String,
    admin_key: String,
    tls_ca: String,
    edge: EdgeUrls,
    token: String,
}

impl DevCluster {
    fn start(nodes: usize) -> Self {
        let mut dev = Command::new(herald())
            .args(["dev", "--nodes", &nodes.to_string()])
            .env("HERALD_NODE_BIN", sibling_binary("herald-node"))
            .env("HERALD_EDGE_BIN", sibling_binary("herald-edge"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting herald dev");
        let stdout = dev.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cluster = Self {
            dev,
            lines,
            child_pids: Vec::new(),
            grpc: String::new(),
            api_key: String::new(),
            admin_key: String::new(),
            tls_ca: String::new(),
            edge: EdgeUrls::default(),
            token: String::new(),
        };

        let deadline = Instant::now() + READY_GUARD;
        let mut grpc_lines = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match cluster.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!("herald dev printed no `ready` within {READY_GUARD:?}: {e}"),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ready"] => break,
                ["node", _, "grpc", addr] => {
                    grpc_lines += 1;
                    if cluster.grpc.is_empty() {
                        cluster.grpc = (*addr).to_string();
                    }
                }
                ["node", _, "metrics", url] => {
                    assert!(url.starts_with("http://127.0.0.1:"), "{line}")
                }
                ["edge", "1", "websocket", url] => cluster.edge.websocket = (*url).to_string(),
                ["edge", "1", "sse", url] => cluster.edge.sse = (*url).to_string(),
                ["edge", "1", "metrics", url] => cluster.edge.metrics = (*url).to_string(),
                ["api-key", key] => cluster.api_key = (*key).to_string(),
                ["admin-key", key] => cluster.admin_key = (*key).to_string(),
                ["tls-ca", path] => cluster.tls_ca = (*path).to_string(),
                ["token", token] => cluster.token = (*token).to_string(),
                ["data-dir", dir] => assert!(Path::new(dir).is_dir(), "{line}"),
                _ => panic!("unexpected line from herald dev: {line}"),
            }
        }
        assert_eq!(grpc_lines, nodes, "one grpc line per node");
        assert_eq!(
            cluster.api_key.len(),
            32,
            "api key is 16 random bytes in hex"
        );
        assert_eq!(cluster.admin_key.len(), 32, "a separate admin key");
        assert_ne!(cluster.admin_key, cluster.api_key);
        assert!(
            Path::new(&cluster.tls_ca).is_file(),
            "herald dev serves gRPC over TLS and prints its CA"
        );
        let edge = &cluster.edge;
        let edge_host = edge
            .websocket
            .strip_prefix("ws://127.0.0.1:")
            .and_then(|rest| rest.strip_suffix("/connection/websocket"))
            .unwrap_or_else(|| panic!("edge websocket URL: {}", edge.websocket));
        assert_eq!(
            edge.sse,
            format!("http://127.0.0.1:{edge_host}/connection/sse"),
            "SSE is on the WebSocket listener"
        );
        assert!(
            edge.metrics.starts_with("http://127.0.0.1:") && edge.metrics.ends_with("/metrics"),
            "edge metrics URL: {}",
            edge.metrics
        );
        assert_eq!(
            cluster.token.split('.').count(),
            3,
            "token is a JWT: {}",
            cluster.token
        );
        cluster.child_pids = children_of(cluster.dev.id());
        let mut names: Vec<String> = cluster.child_pids.iter().map(|&p| comm(p)).collect();
        names.sort();
        let mut want = vec!["herald-node".to_string(); nodes];
        want.insert(0, "herald-edge".to_string());
        assert_eq!(
            names, want,
            "herald dev runs one process per node and one edge: {:?}",
            cluster.child_pids
        );
        cluster
    }

    /// Run `herald <args>` against this cluster.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(herald())
            .args(["--server", &self.grpc, "--api-key", &self.api_key])
            .args(["--tls-ca", &self.tls_ca])
            .args(args)
            .output()
            .expect("running herald")
    }

    /// Run `herald <args>`, require success, return stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "herald {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.dev.id()).expect("pid fits i32"));
        kill(pid, Signal::SIGTERM).expect("sending SIGTERM to herald dev");
        wait_timeout(&mut self.dev, EXIT_GUARD).expect("herald dev did not exit after SIGTERM")
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if matches!(self.dev.try_wait(), Ok(None)) {
            if let Ok(pid) = i32::try_from(self.dev.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            if wait_timeout(&mut self.dev, EXIT_GUARD).is_none() {
                let _ = self.dev.kill();
                let _ = self.dev.wait();
            }
        }
        for &pid in &self.child_pids {
            if is_herald_child(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Pids whose parent is `parent`, from `/proc/<pid>/stat`.
fn children_of(parent: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The command name of `pid` ("" once it is gone).
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether `pid` is a live (not zombie) `herald-node` or `herald-edge`:
/// still the process `herald dev` started, not a reused pid.
fn is_herald_child(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    CHILD_BINARIES.contains(&comm(pid).as_str()) && state != Some("Z")
}

/// Just enough of a WebSocket client (RFC 6455) to speak the edge's JSON
/// protocol: text messages, each in one frame; no extensions. It does not
/// check `Sec-WebSocket-Accept`: the edge is trusted here, the exchange
/// after the handshake is what the test is about.
struct WebSocketClient {
    reader: BufReader<TcpStream>,
}

impl WebSocketClient {
    fn connect(url: &str) -> Self {
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_once('/').expect("a URL with a path");
        let stream = TcpStream::connect(host).expect("connecting to the edge");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut reader = BufReader::new(stream);
        write!(
            reader.get_mut(),
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("sending the upgrade request");
        let mut status = String::new();
        reader.read_line(&mut status).expect("reading the status");
        assert!(
            status.starts_with("HTTP/1.1 101"),
            "upgrade refused: {status}"
        );
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).expect("reading headers");
            if header == "\r\n" {
                break;
            }
        }
        Self { reader }
    }

    /// Send one masked text frame, as a client must.
    fn send(&mut self, text: &str) {
        const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        self.reader
            .get_mut()
            .write_all(&frame)
            .expect("sending a frame");
    }

    /// The next text message, as JSON; protocol pings (`{}`) are answered
    /// and skipped, a close frame fails the test with its code.
    fn recv(&mut self) -> serde_json::Value {
        loop {
            let mut head = [0u8; 2];
            self.reader.read_exact(&mut head).expect("reading a frame");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.reader.read_exact(&mut b).expect("reading a length");
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.reader.read_exact(&mut b).expect("reading a length");
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            let mut payload = vec![0u8; usize::try_from(len).expect("frame fits memory")];
            self.reader
                .read_exact(&mut payload)
                .expect("reading a payload");
            match head[0] & 0x0f {
                0x1 => {
                    assert_ne!(head[0] & 0x80, 0, "the edge sends whole messages");
                    let text = String::from_utf8(payload).expect("utf-8 text");
                    if text == "{}" {
                        self.send("{}");
                        continue;
                    }
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
                }
                0x8 => {
                    let code = payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .unwrap_or_default();
                    panic!(
                        "the edge closed the WebSocket: {code} {}",
                        String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                    );
                }
                _ => {}
            }
        }
    }
}

#[test]
fn dev_cluster_serves_the_cli_and_stops_cleanly() {
    let mut cluster = DevCluster::start(3);

    let channel = "room-cli-test";
    let data = r#"{"text":"hello"}"#;
    let publish = [
        channel,
        data,
        "--event-type",
        "message",
        "--idempotency-key",
        "cli-test-1",
        "--header",
        "k=v",
    ];
    let mut args = vec!["publish"];
    args.extend(publish);
    let first = cluster.cli_ok(&args);
    let words: Vec<&str> = first.split_whitespace().collect();
    let (offset, epoch) = match words.as_slice() {
        ["offset", offset, "epoch", epoch] => (
            offset.parse::<u64>().expect("numeric offset"),
            epoch.to_string(),
        ),
        _ => panic!("unexpected publish output: {first:?}"),
    };
    assert!(offset >= 1, "offsets start at 1: {first:?}");

    let retry = cluster.cli_ok(&args);
    assert_eq!(
        retry.trim(),
        format!("offset {offset} epoch {epoch} duplicate"),
        "a retried publish is stored once"
    );

    let history = cluster.cli_ok(&["history", channel, "--linearizable"]);
    let lines: Vec<&str> = history.lines().collect();
    let (last, publications) = lines
        .split_last()
        .expect("history prints at least its position line");
    assert_eq!(
        *last,
        format!("epoch {epoch} offset {offset} in_window true")
    );
    let stored: Vec<serde_json::Value> = publications
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "the duplicate is not stored twice: {history}"
    );
    let p = &stored[0];
    assert_eq!(p["channel"], channel);
    assert_eq!(p["offset"], offset);
    assert_eq!(p["epoch"], epoch.as_str());
    assert_eq!(p["event_type"], "message");
    assert_eq!(p["data"], data);
    assert!(p["published_at_ms"].as_i64().is_some_and(|t| t > 0), "{p}");

    let status = cluster.cli_ok(&["status"]);
    let head = status.lines().next().unwrap_or_default();
    let leader = head
        .split(", ")
        .find_map(|part| part.strip_prefix("leader "))
        .and_then(|rest| {
            rest.split_whitespace()
                .next()
                .and_then(|id| id.parse::<u64>().ok())
        });
    assert!(
        leader.is_some_and(|id| (1..=3).contains(&id)),
        "status shows no leader: {status}"
    );
    assert_eq!(
        status.lines().filter(|l| l.contains(" voter ")).count(),
        3,
        "three voters: {status}"
    );

    let wrong_key = Command::new(herald())
        .args([
            "--server",
            &cluster.grpc,
            "--api-key",
            "not-the-key",
            "--tls-ca",
            &cluster.tls_ca,
            "status",
        ])
        .output()
        .expect("running herald");
    assert_eq!(wrong_key.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong_key.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("(reason API_KEY_INVALID)"),
        "{stderr}"
    );
    // The printed publish key cannot change the membership.
    let out = cluster.cli(&["node", "remove", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("(reason PERMISSION_DENIED)"),
        "{stderr}"
    );

    // The edge, as a browser would use it: the printed token in the
    // connect command, a subscription, and what `herald publish` sends.
    let mut ws = WebSocketClient::connect(&cluster.edge.websocket);
    let connect = serde_json::json!({"id": 1, "connect": {"token": cluster.token}});
    let subscribe = serde_json::json!({"id": 2, "subscribe": {"channel": "chat:dev-token"}});
    ws.send(&format!("{connect}\n{subscribe}"));
    let reply = ws.recv();
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(
        reply["connect"]["client"].is_string(),
        "the dev token connects: {reply}"
    );
    let ttl = reply["connect"]["ttl"].as_u64().unwrap_or_default();
    assert!(
        (24 * 3600 - 120..=24 * 3600).contains(&ttl),
        "the dev token is valid for a day: {reply}"
    );
    let reply = ws.recv();
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(
        reply["subscribe"].is_object(),
        "the dev token may subscribe: {reply}"
    );
    cluster.cli_ok(&[
        "publish",
        "chat:dev-token",
        r#"{"text":"to the browser"}"#,
        "--event-type",
        "message",
    ]);
    // Other pushes (a presence `join` of this very client) may come first.
    let push = loop {
        let message = ws.recv();
        if message["push"]["pub"].is_object() {
            break message;
        }
    };
    assert_eq!(push["push"]["channel"], "chat:dev-token", "{push}");
    assert_eq!(
        push["push"]["pub"]["data"],
        serde_json::json!({"text": "to the browser"}),
        "{push}"
    );

    let exit = cluster.terminate();
    assert!(
        exit.success(),
        "herald dev exited with {exit} after SIGTERM"
    );
    for &pid in &cluster.child_pids {
        assert!(!is_herald_child(pid), "child {pid} outlived herald dev");
    }
}
