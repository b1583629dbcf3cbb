//! A real browser, no SDK: headless Chromium opens `tests/browser/page.html`,
//! which uses only the browser's own `new WebSocket` (speaking the JSON
//! client protocol directly, token in the connect command) and
//! `new EventSource` (token in the query string), and posts back what it
//! received. The page is served by this test on an origin of its own, as an
//! application's page would be, so the edge's origin allow-list and the
//! browser's cross-origin rules apply exactly as in a deployment.
//!
//! Proves guarantee 2 in a browser: every publication published through
//! gRPC arrives once, in offset order, on both transports.
//!
//! Needs Chromium (Debian's `chromium`, or the path in `CHROMIUM`); without
//! it the test fails, it is never skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::{EdgeProc, cluster, publish, token};

/// The page, served at `/`.
const PAGE: &str = include_str!("../browser/page.html");
/// A channel of the default namespace (history on), fresh in every cluster.
const CHANNEL: &str = "browser-room";
/// Publications sent once the page is subscribed on both transports.
const COUNT: u64 = 20;
/// Hang guard for the browser to start, load the page and subscribe.
const SUBSCRIBE_GUARD: Duration = Duration::from_secs(60);
/// Hang guard for the page to report every publication.
const DELIVERY_GUARD: Duration = Duration::from_secs(30);
/// Flags every launch needs on a CI machine (root, no GPU, no display, no
/// network beyond loopback), plus console messages on stderr for the log.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
];

/// Chromium: `CHROMIUM` when set, else Debian's `chromium` (or Ubuntu's
/// `chromium-browser`) on the `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CHROMIUM={} is not a file; the browser test needs headless Chromium",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the browser test needs headless Chromium and found none on the PATH: \
                 install Debian's `chromium` package (`apt-get install chromium`, as \
                 .ci/run does) or set CHROMIUM to its executable"
            )
        })
}

/// The test's own HTTP server: the page at `/`, the page's reports at
/// `POST /report`.
struct PageServer {
    origin: String,
    reports: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the page server");
        let origin = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, reports) = mpsc::unbounded_channel();
        let app = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route(
                "/report",
                post(move |axum::Json(report): axum::Json<Value>| {
                    let _ = tx.send(report);
                    async { StatusCode::NO_CONTENT }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            origin,
            reports,
            task,
        }
    }

    /// The page's next report; fails the test after `within`, or at once
    /// when the page reports an error.
    async fn next(&mut self, within: Duration, browser: &Browser) -> Value {
        let report = tokio::time::timeout(within, self.reports.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the page reported nothing within {within:?}; Chromium's console:\n{}",
                    browser.console()
                )
            })
            .expect("the page server stopped");
        if report["event"] == "error" {
            let hint = if report["transport"] == "sse" {
                "\n(a page reads an EventSource on another origin only if the edge's \
                 response carries Access-Control-Allow-Origin for it)"
            } else {
                ""
            };
            panic!(
                "the page reported an error: {report}{hint}\nChromium's console:\n{}",
                browser.console()
            );
        }
        report
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A headless Chromium with a fresh profile, in a process group of its own
/// so that stopping it also stops its renderer and helper processes.
struct Browser {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Browser {
    fn open(chromium: &Path, url: &str) -> Self {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("chromium.log");
        let file = std::fs::File::create(&log).expect("chromium log");
        let child = Command::new(chromium)
            .args(CHROMIUM_FLAGS)
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("chromium log"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    /// What the page logged to the console (and the browser's own errors
    /// about it), without the noise of a machine with no D-Bus.
    fn console(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("dbus") && !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Signal Chromium's whole process group (its pid, recorded at spawn).
    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_receives_every_publication_over_websocket_and_sse() {
    let chromium = chromium();
    let mut page = PageServer::start().await;
    let cluster = cluster().await;
    let edge = EdgeProc::start(&cluster, &["--allowed-origins", &page.origin]).await;
    // Every value is URL-safe as it is: `ws://127.0.0.1:<port>/...`, a
    // base64url JWT, a plain channel name.
    let url = format!(
        "{}/?ws={}&sse={}&token={}&channel={CHANNEL}&count={COUNT}",
        page.origin,
        edge.ws_url,
        edge.sse_url,
        token("browser-user")
    );
    let browser = Browser::open(&chromium, &url);

    let mut subscribed = Vec::new();
    while subscribed.len() < 2 {
        let report = page.next(SUBSCRIBE_GUARD, &browser).await;
        assert_eq!(report["event"], "subscribed", "{report}");
        subscribed.push(report["transport"].clone());
    }
    subscribed.sort_by_key(Value::to_string);
    assert_eq!(subscribed, [json!("sse"), json!("websocket")]);

    let ids = cluster.ids();
    let mut publisher = cluster.rotating_publisher(&ids, 0);
    let mut want = Vec::new();
    for n in 1..=COUNT {
        let offset = publish(&mut publisher, CHANNEL, n).await;
        want.push(json!({"offset": offset, "data": {"n": n}}));
    }

    let mut received = HashMap::new();
    while received.len() < 2 {
        let report = page.next(DELIVERY_GUARD, &browser).await;
        assert_eq!(report["event"], "done", "{report}");
        let transport = report["transport"].as_str().expect("transport").to_string();
        received.insert(transport, report["received"].clone());
    }
    for transport in ["websocket", "sse"] {
        assert_eq!(
            received[transport],
            Value::Array(want.clone()),
            "{transport}: every publication once, in offset order"
        );
    }
}
