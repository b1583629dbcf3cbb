//! One `herald-node` OS process and the faults a test can inject into it.
//!
//! A [`NodeProc`] owns its child process: dropping the handle kills it, so no
//! node outlives its test, even when the test panics. The process keeps its
//! id, ports and data directory across [`NodeProc::restart`], which is what
//! makes crash-and-recover scenarios meaningful.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Everything needed to start (and restart) the same node.
#[derive(Debug, Clone)]
struct Launch {
    binary: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log_path: PathBuf,
}

/// How to start a node process: its command line and environment, and what
/// the command line configures (so the harness can reach the node).
#[derive(Debug, Clone)]
pub struct NodeLaunch {
    /// The executable: `herald-node`, or a wrapper that ends up running it
    /// in place (`ip netns exec <ns> herald-node ...`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (e.g. `LD_PRELOAD` of libfaketime).
    pub env: Vec<(OsString, OsString)>,
    /// The gRPC address the arguments configure.
    pub grpc_addr: SocketAddr,
    /// The metrics/health address the arguments configure.
    pub http_addr: SocketAddr,
    /// The data directory the arguments configure.
    pub data_dir: PathBuf,
    /// Where stdout and stderr are appended.
    pub log_path: PathBuf,
}

/// A running (or stopped) `herald-node` process with fixed identity.
#[derive(Debug)]
pub struct NodeProc {
    id: u64,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: PathBuf,
    launch: Launch,
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

impl NodeProc {
    /// Start `binary` with `args`, appending its stdout and stderr to
    /// `log_path`. `grpc_addr`, `http_addr` and `data_dir` describe what the
    /// arguments configure; the harness uses them to reach the node.
    pub fn spawn(
        id: u64,
        binary: &Path,
        args: Vec<OsString>,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
        data_dir: PathBuf,
        log_path: PathBuf,
    ) -> io::Result<Self> {
        Self::launch(
            id,
            NodeLaunch {
                program: binary.to_path_buf(),
                args,
                env: Vec::new(),
                grpc_addr,
                http_addr,
                data_dir,
                log_path,
            },
        )
    }

    /// Start a node as `launch` describes; restarts reuse the same launch.
    pub fn launch(id: u64, launch: NodeLaunch) -> io::Result<Self> {
        let mut node = Self {
            id,
            grpc_addr: launch.grpc_addr,
            http_addr: launch.http_addr,
            data_dir: launch.data_dir,
            launch: Launch {
                binary: launch.program,
                args: launch.args,
                env: launch.env,
                log_path: launch.log_path,
            },
            child: None,
            paused: false,
            starts: 0,
        };
        node.start()?;
        Ok(node)
    }

    fn start(&mut self) -> io::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.launch.log_path)?;
        self.starts += 1;
        writeln!(
            log,
            "===== harness: start #{} of node {}: {} {} =====",
            self.starts,
            self.id,
            self.launch.binary.display(),
            self.launch
                .args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        let mut cmd = Command::new(&self.launch.binary);
        cmd.args(&self.launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .env("RUST_BACKTRACE", "1")
            // Logs are read in files and CI output, not a terminal.
            .env("NO_COLOR", "1");
        // The node reads `HERALD_*` twins of its flags; whatever the developer
        // has exported must not leak into the scenario.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.launch.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(cmd.spawn()?);
        self.paused = false;
        Ok(())
    }

    /// The node's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node's gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The gRPC address as a URI tonic can connect to.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The node's metrics/health address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The node's data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file the node's stdout and stderr are appended to.
    pub fn log_path(&self) -> &Path {
        &self.launch.log_path
    }

    /// The OS process id, when a process is running or stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process exists and has not exited (a paused process
    /// counts as running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Whether the process is stopped by [`NodeProc::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `Some(status)` when the harness started the process, did not stop it,
    /// and it exited anyway: the node crashed or refused to start.
    pub fn unexpected_exit(&mut self) -> Option<ExitStatus> {
        match &mut self.child {
            None => None,
            Some(child) => child.try_wait().ok().flatten(),
        }
    }

    fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other(format!("node {} is not running", self.id)))?;
        let pid = i32::try_from(pid).map_err(io::Error::other)?;
        kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    /// SIGKILL: the process dies at once, without flushing or handing over
    /// leadership, like a power cut of one machine (its fsynced disk stays).
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            self.paused = false;
            // An already-exited child is fine: it is dead either way.
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// SIGKILL without waiting for the process to exit, so several nodes
    /// can be killed within microseconds of each other; [`NodeProc::kill`]
    /// then reaps it.
    pub fn send_kill(&mut self) -> io::Result<()> {
        match &mut self.child {
            None => Err(io::Error::other(format!("node {} is not running", self.id))),
            Some(child) => child.kill(),
        }
    }

    /// SIGTERM, then wait for the process to exit on its own. After `grace`
    /// the process is killed and an error returned: a node that ignores
    /// SIGTERM is a bug the caller should see.
    pub async fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if self.child.is_none() {
            return Err(io::Error::other(format!("node {} is not running", self.id)));
        }
        if self.paused {
            // A stopped process only handles SIGTERM once continued.
            self.resume()?;
        }
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        loop {
            let child = self.child.as_mut().expect("checked above");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill()?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "node {} did not exit within {grace:?} of SIGTERM; killed it",
                        self.id
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Start the process again with the same id, ports, data directory and
    /// flags. The previous process must have been stopped.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Err(io::Error::other(format!(
                "node {} is still running",
                self.id
            )));
        }
        self.child = None;
        self.start()
    }

    /// Delete everything in the data directory, like a replaced disk. The
    /// process must be stopped; the directory itself stays (empty).
    pub fn wipe_data_dir(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Err(io::Error::other(format!(
                "node {} is still running",
                self.id
            )));
        }
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&self.data_dir)
    }

    /// SIGSTOP: the process freezes (no heartbeats, no replies, sockets stay
    /// open), like a long GC pause or a VM stall.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`NodeProc::pause`].
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.launch.log_path, lines).unwrap_or_else(|e| format!("<cannot read log: {e}>"))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The last `lines` lines of a file, reading at most its last 256 KiB.
fn tail(path: &Path, lines: usize) -> io::Result<String> {
    const MAX: u64 = 256 * 1024;
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    //! The fault-injection primitives, exercised on `sleep(1)` so they are
    //! trusted before any node test relies on them.

    use super::*;

    fn sleeper(dir: &Path) -> NodeProc {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        NodeProc::spawn(
            7,
            Path::new("sleep"),
            vec!["600".into()],
            addr,
            addr,
            dir.to_path_buf(),
            dir.join("node-7.log"),
        )
        .unwrap()
    }

    fn alive(pid: u32) -> bool {
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[tokio::test]
    async fn signals_restart_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = sleeper(dir.path());
        assert!(node.is_running());
        node.pause().unwrap();
        assert!(node.is_paused() && node.is_running());
        node.resume().unwrap();

        // `sleep` dies of SIGTERM rather than exiting 0: terminate reports that.
        let status = node.terminate(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success());
        assert!(!node.is_running());
        assert!(
            node.unexpected_exit().is_none(),
            "a stop the harness asked for is not a crash"
        );

        node.restart().unwrap();
        let pid = node.pid().unwrap();
        assert!(alive(pid));
        assert!(
            node.restart().is_err(),
            "restarting a running node is refused"
        );
        node.kill().unwrap();
        assert!(!alive(pid));

        node.restart().unwrap();
        let pid = node.pid().unwrap();
        node.pause().unwrap();
        drop(node);
        assert!(!alive(pid), "drop kills even a paused process");

        let log = std::fs::read_to_string(dir.path().join("node-7.log")).unwrap();
        assert_eq!(log.matches("===== harness: start #").count(), 3);
    }

    #[test]
    fn launch_passes_env_and_wipe_empties_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/file"), "x").unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let out = dir.path().join("env-out");
        let mut node = NodeProc::launch(
            8,
            NodeLaunch {
                program: PathBuf::from("sh"),
                args: vec![
                    "-c".into(),
                    format!("echo \"$FAULT_ENV\" > {}; exec sleep 600", out.display()).into(),
                ],
                env: vec![("FAULT_ENV".into(), "from-launch".into())],
                grpc_addr: addr,
                http_addr: addr,
                data_dir: data.clone(),
                log_path: dir.path().join("node-8.log"),
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&out).unwrap_or_default().trim() != "from-launch" {
            assert!(Instant::now() < deadline, "env did not reach the process");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(node.wipe_data_dir().is_err(), "refused while running");
        node.kill().unwrap();
        node.wipe_data_dir().unwrap();
        assert!(data.is_dir());
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2).unwrap(), "c\nd");
        assert_eq!(tail(&path, 10).unwrap(), "a\nb\nc\nd");
    }
}
