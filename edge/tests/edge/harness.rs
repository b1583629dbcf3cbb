//! What the edge tests drive: a real cluster (the `herald-cluster-tests`
//! harness), real `herald-edge` processes, and Node.js scripts using the
//! real `centrifuge` SDK (`edge/tests/js`). Every process is killed when its
//! handle is dropped, also when a test panics; a panicking test prints the
//! edge's log tail and the script's output.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use herald_cluster_tests::{Cluster, ClusterOptions, http_get};
use herald_proto::v1::PublishRequest;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// HS256 secret every test edge accepts.
pub(crate) const SECRET: &str = "edge-test-secret-of-at-least-32-bytes";

/// Channel policy of the test clusters: long histories, client publish on
/// `chat:`.
pub(crate) const POLICY: &str = r#"
[namespaces.default]
history_size = 1000
history_ttl_secs = 600

[namespaces.chat]
history_size = 1000
history_ttl_secs = 600
allow_client_publish = true
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("edge lives in the workspace")
        .to_path_buf()
}

/// The `herald-edge` executable, built once per test process.
pub(crate) fn herald_edge() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-p", "herald-edge"])
            .current_dir(workspace())
            .stdout(Stdio::null())
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "cargo build -p herald-edge failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|d| {
                if d.is_absolute() {
                    d
                } else {
                    workspace().join(d)
                }
            })
            .unwrap_or_else(|| workspace().join("target"));
        target.join("debug").join("herald-edge")
    })
}

/// `edge/tests/js`, with its npm dependencies installed (`npm ci` from the
/// lock file when `node_modules` is missing).
pub(crate) fn js_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("js");
        if !dir.join("node_modules").join("centrifuge").is_dir() {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .output()
                .expect("npm is needed for the edge tests");
            assert!(
                out.status.success(),
                "npm ci failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

/// The Python of `edge/tests/py/.venv`, with `requirements.txt` (the
/// `centrifuge-python` SDK) installed into it when the venv is missing.
pub(crate) fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("py");
        let venv = dir.join(".venv");
        let py = venv.join("bin").join("python");
        let ready = venv.join("installed");
        if !ready.is_file() {
            let run = |program: &Path, args: &[&str]| {
                let out = Command::new(program)
                    .args(args)
                    .current_dir(&dir)
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("{} is needed for the edge tests: {e}", program.display())
                    });
                assert!(
                    out.status.success(),
                    "{} {args:?} failed:\n{}",
                    program.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(Path::new("python3"), &["-m", "venv", ".venv"]);
            run(
                &py,
                &["-m", "pip", "install", "-q", "-r", "requirements.txt"],
            );
            std::fs::write(&ready, b"").expect("mark the venv installed");
        }
        py
    })
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A 3-node cluster with [`POLICY`].
pub(crate) async fn cluster() -> Cluster {
    Cluster::start(3, ClusterOptions::default().with_policy(POLICY))
        .await
        .expect("cluster starts")
}

/// A running `herald-edge`.
pub(crate) struct EdgeProc {
    child: std::process::Child,
    /// WebSocket URL.
    pub(crate) ws_url: String,
    /// SSE URL.
    pub(crate) sse_url: String,
    /// Operations listener.
    pub(crate) http: SocketAddr,
    listen: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl EdgeProc {
    /// Start an edge linked to every node of `cluster`, and wait until its
    /// EdgeLink is up.
    pub(crate) async fn start(cluster: &Cluster, extra: &[&str]) -> Self {
        let nodes: Vec<String> = cluster
            .ids()
            .iter()
            .map(|id| cluster.node(*id).grpc_addr().to_string())
            .collect();
        let listen = free_addr();
        let http = free_addr();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("edge.log");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.to_string(),
            "--http-listen".into(),
            http.to_string(),
            "--nodes".into(),
            nodes.join(","),
            "--api-key".into(),
            cluster.options().api_key.clone(),
            "--jwt-hs256-secret".into(),
            SECRET.into(),
            "--log".into(),
            "info,herald_edge=debug".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = Self::spawn(&args, &log);
        let edge = Self {
            child,
            ws_url: format!("ws://{listen}/connection/websocket"),
            sse_url: format!("http://{listen}/connection/sse"),
            http,
            listen,
            args,
            log,
            _dir: dir,
        };
        edge.wait_linked().await;
        edge
    }

    fn spawn(args: &[String], log: &Path) -> std::process::Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        Command::new(herald_edge())
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn herald-edge")
    }

    async fn wait_linked(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.linked_node().await.is_none() {
            assert!(
                Instant::now() < deadline,
                "edge not ready:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start the edge again, on the same addresses with the same flags
    /// (after [`EdgeProc::kill`]), and wait until it is linked.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(self.listen).is_err() {
            assert!(Instant::now() < deadline, "{} stays taken", self.listen);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Self::spawn(&self.args, &self.log);
        self.wait_linked().await;
    }

    /// The node (`host:port`) the edge's EdgeLink is on, from `/readyz`.
    pub(crate) async fn linked_node(&self) -> Option<String> {
        match http_get(self.http, "/readyz").await {
            Ok((200, body)) => body
                .trim()
                .strip_prefix("ready linked http://")
                .map(str::to_string),
            _ => None,
        }
    }

    /// SIGTERM the edge (its pid, recorded at spawn).
    pub(crate) fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Wait up to `within` for the edge to exit by itself.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL the edge.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The end of the edge's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- herald-edge log tail ---\n{}", self.log_tail());
        }
        self.kill();
    }
}

/// The node id whose gRPC address is `addr`.
pub(crate) fn node_id(cluster: &Cluster, addr: &str) -> u64 {
    cluster
        .ids()
        .into_iter()
        .find(|id| cluster.node(*id).grpc_addr().to_string() == addr)
        .unwrap_or_else(|| panic!("no node at {addr}"))
}

/// A Node.js script from `edge/tests/js`, reporting JSON lines.
pub(crate) struct Script {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Every line seen so far.
    pub(crate) seen: Vec<Value>,
    name: String,
}

impl Script {
    /// Run `node <name> <args>` in `edge/tests/js`.
    pub(crate) fn spawn(name: &str, args: &[&str]) -> Self {
        Self::spawn_in(Path::new("node"), js_dir(), name, args)
    }

    /// Run `python <name> <args>` in `edge/tests/py` (its venv).
    pub(crate) fn spawn_python(name: &str, args: &[&str]) -> Self {
        let py = python();
        let dir = py
            .ancestors()
            .nth(3)
            .expect("edge/tests/py/.venv/bin/python");
        Self::spawn_in(py, dir, name, args)
    }

    fn spawn_in(program: &Path, dir: &Path, name: &str, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(program)
            .arg(name)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} is needed for the edge tests: {e}", program.display()));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            name: name.to_string(),
        }
    }

    /// Read lines until one satisfies `pred` (hang guard: `within`).
    pub(crate) async fn expect(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: timed out; last lines: {:#?}",
                        self.name,
                        &self.seen[self.seen.len().saturating_sub(10)..]
                    )
                })
                .expect("read script output")
                .unwrap_or_else(|| panic!("{} exited; saw {:#?}", self.name, self.seen));
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    /// Send a command line.
    pub(crate) async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to script");
    }

    /// Tell the script it is done and return its `summary` line.
    pub(crate) async fn summary(&mut self) -> Value {
        self.send("done").await;
        self.expect(Duration::from_secs(10), |v| v["event"] == "summary")
            .await
    }

    /// Wait until the script reports the publication at `offset`.
    pub(crate) async fn expect_pub(&mut self, within: Duration, offset: u64) -> Value {
        self.expect(within, |v| v["event"] == "pub" && v["offset"] == offset)
            .await
    }

    /// Wait for the script to exit.
    pub(crate) async fn finish(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// An HS256 token allowing everything on every channel for an hour.
pub(crate) fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "sub": user, "exp": exp,
        "caps": [{"channels": ["*"], "match": "wildcard", "allow": ["sub", "pub", "hst", "prs"]}]
    });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

/// Publish `data` to `channel` through any node, retrying on other nodes
/// with an idempotency key so a retry is stored once.
pub(crate) async fn publish(
    publisher: &mut herald_cluster_tests::RotatingPublisher,
    channel: &str,
    n: u64,
) -> u64 {
    let req = PublishRequest {
        channel: channel.to_string(),
        event_type: String::new(),
        data: format!("{{\"n\":{n}}}").into_bytes().into(),
        content_type: "application/json".into(),
        idempotency_key: format!("{channel}-{n}"),
        headers: HashMap::new(),
    };
    publisher
        .publish(req, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("publish {n} to {channel}: {e}"))
        .offset
}

/// The `offsets` array of a summary line.
pub(crate) fn offsets(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("offsets array")
        .iter()
        .map(|o| o.as_u64().expect("offset"))
        .collect()
}
