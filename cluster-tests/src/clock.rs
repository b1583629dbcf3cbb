//! Wall-clock faults: each node runs under libfaketime (Debian package
//! `faketime`) reading its offset from a file of its own, re-read at most
//! once a second, so a test moves one node's clock while it runs — an NTP
//! step, a VM restored from a snapshot, a bad RTC.
//!
//! Only `CLOCK_REALTIME` (what `SystemTime::now` reads) is faked; the
//! monotonic clock that timers and Raft's election timeouts use is left
//! alone, as it is on a real machine whose wall clock jumps.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};

use crate::cluster::Cluster;

/// Where Debian installs the thread-safe variant of the library.
const KNOWN_PATHS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];

/// The libfaketime shared object (`HERALD_LIBFAKETIME` overrides the
/// search), or why there is none.
pub fn libfaketime() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("HERALD_LIBFAKETIME") {
                let path = PathBuf::from(path);
                return if path.is_file() {
                    Ok(path)
                } else {
                    Err(format!(
                        "HERALD_LIBFAKETIME={} does not exist",
                        path.display()
                    ))
                };
            }
            KNOWN_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    "libfaketime not installed (Debian package faketime; or set HERALD_LIBFAKETIME)"
                        .to_string()
                })
        })
        .clone()
}

fn clock_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.clock"))
}

/// The environment that runs node `id` of the cluster in `dir` on its own
/// clock, starting at the true time unless the clock file already says
/// otherwise (a restarted node keeps its offset).
pub(crate) fn node_env(dir: &Path, id: u64) -> anyhow::Result<Vec<(OsString, OsString)>> {
    let lib = libfaketime().map_err(|e| anyhow!(e))?;
    let file = clock_file(dir, id);
    if !file.exists() {
        std::fs::write(&file, "+0\n").with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(vec![
        ("LD_PRELOAD".into(), lib.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.into()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        // The node's data files keep their true timestamps.
        ("NO_FAKE_STAT".into(), "1".into()),
    ])
}

/// Whether `offset` is a libfaketime relative offset: `+0`, `+1h`, `-90s`,
/// `+2d` (units s, m, h, d, y; none means seconds).
fn valid_offset(offset: &str) -> bool {
    let Some(rest) = offset.strip_prefix(['+', '-']) else {
        return false;
    };
    let digits = rest.trim_end_matches(['s', 'm', 'h', 'd', 'y']);
    rest.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// How far a node's observed wall clock may be from the offset it was set
/// to: the `Date` header has second resolution, the test machine's own
/// clock and the request take some time.
const CLOCK_TOLERANCE: Duration = Duration::from_secs(60);

impl Cluster {
    /// Node `id`'s wall clock minus the test process's, in seconds, as the
    /// node states it (`Date` header of its `/healthz` answer).
    pub async fn clock_offset_secs(&self, id: u64) -> anyhow::Result<i64> {
        let stated = crate::client::http_date(self.node(id).http_addr(), "/healthz").await?;
        let now = SystemTime::now();
        Ok(match stated.duration_since(now) {
            Ok(ahead) => ahead.as_secs() as i64,
            Err(behind) => -(behind.duration().as_secs() as i64),
        })
    }

    /// Wait until node `id`'s wall clock is seen `offset_secs` from true
    /// time (within a minute), proving a [`Cluster::set_clock`] took effect
    /// (a broken `LD_PRELOAD` leaves it true). Returns the offset seen;
    /// fails with the last one after `timeout`.
    pub async fn wait_clock_offset(
        &self,
        id: u64,
        offset_secs: i64,
        timeout: Duration,
    ) -> anyhow::Result<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.clock_offset_secs(id).await;
            if let Ok(seen) = seen
                && seen.abs_diff(offset_secs) <= CLOCK_TOLERANCE.as_secs()
            {
                return Ok(seen);
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {id}'s wall clock was set {offset_secs:+} s from true time, but it \
                     states {seen:?} s after {timeout:?}: the clock fault did not take effect"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Set node `id`'s wall clock to the true time plus `offset` (`"+1h"`,
    /// `"-30m"`, `"+0"`); the node sees the jump within about a second.
    /// The cluster must have been started with
    /// [`crate::ClusterOptions::clock_control`].
    pub fn set_clock(&self, id: u64, offset: &str) -> anyhow::Result<()> {
        if !self.options().clock_control {
            bail!("the cluster was not started with clock_control");
        }
        if !valid_offset(offset) {
            bail!("{offset:?} is not an offset like +1h or -30m");
        }
        let file = clock_file(self.dir(), id);
        // Written whole and renamed, so the node never reads half a line.
        let tmp = file.with_extension("clock.tmp");
        std::fs::write(&tmp, format!("{offset}\n"))?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        for ok in ["+0", "+1h", "-30m", "+3600", "-2d", "+1y", "+90s"] {
            assert!(valid_offset(ok), "{ok}");
        }
        for bad in ["", "1h", "+h", "+1hh", "+1.5h", "now", "+1 h"] {
            assert!(!valid_offset(bad), "{bad}");
        }
    }
}
