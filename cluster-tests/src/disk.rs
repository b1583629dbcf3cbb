//! Disk faults: a node's disk that fails (EIO on fsync or on write) or
//! fills up (ENOSPC), while the node runs.
//!
//! EIO comes from libfiu (Debian package `fiu-utils`): with
//! [`crate::ClusterOptions::disk_faults`] every node runs under
//! `fiu-run -x`, which preloads libfiu's wrappers of the POSIX I/O calls,
//! and [`Cluster::fail_disk`] enables one failure point in one running node
//! with `fiu-ctrl`. The node's database reaches the disk through exactly the
//! wrapped calls: `pwrite64` (Rust's `write_all_at`) and `fdatasync`
//! (`File::sync_data`). Socket I/O goes through `send`/`writev` and other
//! failure points, so the network is untouched.
//!
//! ENOSPC comes from a real full filesystem: with
//! [`crate::ClusterOptions::small_disks`] every node's data directory is a
//! tmpfs of that size, [`Cluster::fill_disk`] fills it with a ballast file
//! and [`Cluster::free_disk`] deletes the ballast. Mounting needs root;
//! without it the cluster does not start (the scenario fails, it is not
//! skipped).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow, bail};

use crate::cluster::Cluster;

/// A disk failure libfiu injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// Every `fdatasync` and `fsync` fails with EIO.
    FsyncEio,
    /// Every positional write (`pwrite`, `pwrite64`) fails with EIO.
    WriteEio,
}

/// EIO on Linux: what a dying disk or a lost SAN path reports.
const EIO: i32 = 5;

impl DiskFault {
    /// The libfiu failure points it enables.
    fn points(self) -> &'static [&'static str] {
        match self {
            Self::FsyncEio => &["posix/io/sync/fdatasync", "posix/io/sync/fsync"],
            Self::WriteEio => &["posix/io/rw/pwrite"],
        }
    }
}

/// Whether `fiu-run` and `fiu-ctrl` are installed, or why not.
pub fn libfiu() -> Result<(), String> {
    for tool in ["fiu-run", "fiu-ctrl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!("{tool} not installed (Debian package fiu-utils)"));
        }
    }
    Ok(())
}

/// Where libfiu's control pipes of the cluster in `dir` live (fiu-run
/// appends `-<pid>.in` / `.out`).
fn control_prefix(dir: &Path) -> PathBuf {
    dir.join("fiu")
}

/// The program and leading arguments that start `program` under libfiu's
/// POSIX wrappers with remote control.
pub(crate) fn wrap(dir: &Path, program: PathBuf) -> anyhow::Result<(PathBuf, Vec<OsString>)> {
    libfiu().map_err(|e| anyhow!(e))?;
    Ok((
        PathBuf::from("fiu-run"),
        vec![
            "-x".into(),
            "-f".into(),
            control_prefix(dir).into(),
            program.into(),
        ],
    ))
}

/// A tmpfs mounted over a node's data directory, unmounted on drop.
#[derive(Debug)]
pub(crate) struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// Mount a tmpfs of `bytes` over `at` (an existing, empty directory).
    pub(crate) fn mount(at: &Path, bytes: u64) -> anyhow::Result<Self> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "herald-test"])
            .arg(at)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mounting a {bytes}-byte tmpfs on {} (needs root): {}",
                at.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Self {
            at: at.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn ballast(cluster: &Cluster, id: u64) -> PathBuf {
    cluster.node(id).data_dir().join("ballast")
}

impl Cluster {
    /// Make node `id`'s disk fail with `fault` from now on. The cluster
    /// must have been started with [`crate::ClusterOptions::disk_faults`].
    pub fn fail_disk(&self, id: u64, fault: DiskFault) -> anyhow::Result<()> {
        for point in fault.points() {
            self.fiu_ctrl(id, &format!("enable name={point},failinfo={EIO}"))?;
        }
        Ok(())
    }

    /// Stop failing node `id`'s disk (a restarted node starts healed).
    pub fn heal_disk(&self, id: u64, fault: DiskFault) -> anyhow::Result<()> {
        for point in fault.points() {
            self.fiu_ctrl(id, &format!("disable name={point}"))?;
        }
        Ok(())
    }

    fn fiu_ctrl(&self, id: u64, command: &str) -> anyhow::Result<()> {
        if !self.options().disk_faults {
            bail!("the cluster was not started with disk_faults");
        }
        let pid = self
            .node(id)
            .pid()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        let prefix = control_prefix(self.dir());
        let pipe = PathBuf::from(format!("{}-{pid}.in", prefix.display()));
        if !pipe.exists() {
            bail!(
                "node {id} (pid {pid}) has no libfiu control pipe {}",
                pipe.display()
            );
        }
        let out = Command::new("fiu-ctrl")
            .arg("-f")
            .arg(&prefix)
            .args(["-c", command])
            .arg(pid.to_string())
            .output()
            .context("running fiu-ctrl")?;
        if !out.status.success() {
            bail!(
                "fiu-ctrl -c {command:?} {pid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Fill node `id`'s data directory (a tmpfs, see
    /// [`crate::ClusterOptions::small_disks`]) with a ballast file until
    /// the filesystem reports ENOSPC. Returns the ballast's size.
    pub fn fill_disk(&self, id: u64) -> anyhow::Result<u64> {
        if self.options().small_disks.is_none() {
            bail!("the cluster was not started with small_disks");
        }
        let path = ballast(self, id);
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        for chunk in [1 << 20, 4096, 1] {
            let zeros = vec![0u8; chunk];
            loop {
                match file.write_all(&zeros) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => return Err(e).context("writing the ballast"),
                }
            }
        }
        Ok(file.metadata()?.len())
    }

    /// Delete the ballast [`Cluster::fill_disk`] wrote.
    pub fn free_disk(&self, id: u64) -> anyhow::Result<()> {
        let path = ballast(self, id);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}
