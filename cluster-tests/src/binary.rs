//! Where the binaries under test come from: one `cargo build` per test
//! process, then the `debug` executables of the workspace's target directory.
//!
//! Building from inside the test (rather than relying on whatever happens to
//! be in `target/`) guarantees the tests never run a stale `herald-node`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The executables the harness runs.
#[derive(Debug)]
struct Binaries {
    node: PathBuf,
    /// The edge is optional for node tests, like the CLI.
    edge: Result<PathBuf, String>,
    /// The CLI is optional for node tests: if it does not build, only the
    /// tests that need it fail.
    cli: Result<PathBuf, String>,
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-tests lives inside the workspace")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        None => root.join("target"),
    }
}

fn cargo_build(root: &Path, packages: &[&str]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build");
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run {}: {e}", Path::new(&cargo).display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo build -p {}` failed ({}):\n{}",
            packages.join(" -p "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn build() -> Result<Binaries, String> {
    let root = workspace_root();
    let all = cargo_build(&root, &["herald-node", "herald-cli", "herald-edge"]);
    let debug = target_dir(&root).join("debug");
    let find = |name: &str| {
        let path = debug.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("built, but {} does not exist", path.display()))
        }
    };
    match all {
        Ok(()) => Ok(Binaries {
            node: find("herald-node")?,
            edge: find("herald-edge"),
            cli: find("herald"),
        }),
        Err(all_err) => {
            cargo_build(&root, &["herald-node"])?;
            Ok(Binaries {
                node: find("herald-node")?,
                edge: Err(all_err.clone()),
                cli: Err(all_err),
            })
        }
    }
}

fn binaries() -> &'static Binaries {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// Path of the `herald-node` executable, built on first use.
///
/// # Panics
/// When the build fails; the message carries cargo's output.
pub fn herald_node() -> &'static Path {
    &binaries().node
}

/// Path of the `herald-edge` executable, built on first use.
///
/// # Panics
/// When the build fails; the message carries cargo's output.
pub fn herald_edge() -> &'static Path {
    match &binaries().edge {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// Path of the `herald` CLI executable, built on first use.
///
/// # Panics
/// When the build fails; the message carries cargo's output.
pub fn herald_cli() -> &'static Path {
    match &binaries().cli {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}
