//! Locating the daemon's binaries.
//!
//! Cargo only exports `CARGO_BIN_EXE_*` for binaries of the package under test, and
//! `passmeshd`/`passmesh` belong to `passmesh-daemon`. So on first use we run
//! `cargo build -p passmesh-daemon --bins` for the profile the current executable was built
//! with, into the same target directory, and return the paths of the fresh binaries.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, anyhow, bail};

/// Paths of the two binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `passmeshd`, the daemon.
    pub daemon: PathBuf,
    /// `passmesh`, the CLI.
    pub cli: PathBuf,
}

/// Builds the daemon binaries once per process and returns their paths.
///
/// The profile follows the running executable: a test or bench binary under
/// `target/release` gets release daemons. A failed build is reported (with cargo's output)
/// to every caller, without retrying.
pub fn binaries() -> anyhow::Result<&'static Binaries> {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINARIES
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn build() -> anyhow::Result<Binaries> {
    let exe = std::env::current_exe().context("cannot find the current executable")?;
    let out_dir = profile_dir(&exe)?;
    let profile = out_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("odd target directory {}", out_dir.display()))?
        .to_owned();
    let target_dir = out_dir
        .parent()
        .ok_or_else(|| anyhow!("no target directory above {}", out_dir.display()))?;

    // The workspace manifest sits one level above this crate; naming it makes the build
    // independent of the directory the tests happen to run in.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", "passmesh-daemon", "--bins"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        bail!(
            "`cargo build -p passmesh-daemon --bins` ({profile}) failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let binaries = Binaries {
        daemon: out_dir.join("passmeshd"),
        cli: out_dir.join("passmesh"),
    };
    for path in [&binaries.daemon, &binaries.cli] {
        if !path.is_file() {
            bail!(
                "cargo built passmesh-daemon but {} does not exist",
                path.display()
            );
        }
    }
    Ok(binaries)
}

/// `target/<profile>` for an executable at `target/<profile>/deps/x` (tests) or
/// `target/<profile>/x` (binaries).
fn profile_dir(exe: &Path) -> anyhow::Result<PathBuf> {
    let parent = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", parent.display()))?
    } else {
        parent
    };
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_a_test_and_of_a_binary() {
        assert_eq!(
            profile_dir(Path::new("/w/target/debug/deps/e2e-0123abcd")).unwrap(),
            Path::new("/w/target/debug")
        );
        assert_eq!(
            profile_dir(Path::new("/w/target/release/passmesh-bench")).unwrap(),
            Path::new("/w/target/release")
        );
    }
}
