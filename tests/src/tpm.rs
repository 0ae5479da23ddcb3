//! A software TPM (swtpm) per test, and tools around TPM-backed daemons.
//!
//! Each [`Swtpm`] has its own state directory and its own pair of loopback ports, so tests never share TPM
//! object slots or PCRs. It is killed when dropped. PCRs are extended and handles listed with `tpm2-tools`,
//! a separate client like any other program on the machine.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bins::binaries;
use crate::daemon::{CliOutput, DaemonOptions};

/// Quiets libtss2's own error log on stderr (passmeshd reports TPM errors itself).
pub const TSS2_LOG: (&str, &str) = ("TSS2_LOG", "all+none");

/// A running swtpm on 127.0.0.1.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// A port `p` such that `p` and `p + 1` were free a moment ago.
fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
        let port = a.local_addr()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of loopback ports")
}

impl Swtpm {
    /// Starts a fresh swtpm (new state: a new owner seed, so a different TPM than any other).
    pub fn start() -> anyhow::Result<Swtpm> {
        let dir = tempfile::Builder::new()
            .prefix("passmesh-swtpm-")
            .tempdir()
            .context("cannot create the swtpm directory")?;
        std::fs::create_dir(dir.path().join("state"))?;
        let mut tpm = Swtpm {
            dir,
            port: 0,
            child: None,
        };
        let mut last = None;
        // Another process may take the ports between probing and binding: try a few pairs.
        for _ in 0..5 {
            tpm.port = free_port_pair()?;
            match tpm.spawn() {
                Ok(()) => return Ok(tpm),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("swtpm did not start")))
    }

    /// The TCTI for passmeshd (`--tpm-tcti`) and tpm2-tools (`-T`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Daemon options for `--keystore tpm` on this TPM.
    pub fn daemon_options(&self) -> DaemonOptions {
        DaemonOptions {
            keystore: "tpm".to_owned(),
            extra_args: vec!["--tpm-tcti".to_owned(), self.tcti()],
            env: vec![(TSS2_LOG.0.to_owned(), TSS2_LOG.1.to_owned())],
            ..DaemonOptions::default()
        }
    }

    /// Power-cycles the TPM, as a reboot does: same owner seed, PCRs back to their reset values, all
    /// transient objects and sessions gone.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("swtpm.log"))?;
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", self.dir.path().join("state").display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot run swtpm (is the swtpm package installed?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!("swtpm exited with {status} on port {}", self.port);
            }
            // Probe the control port: a connection to the server port would occupy swtpm's only client slot.
            if TcpStream::connect(("127.0.0.1", self.port + 1)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("swtpm did not listen on port {} within 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: swtpm takes up to 1.5 s to exit on SIGTERM, and its state is written per command.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tool(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(tool)
            .arg("-T")
            .arg(self.tcti())
            .args(args)
            .env(TSS2_LOG.0, TSS2_LOG.1)
            .output()
            .with_context(|| format!("cannot run {tool} (is tpm2-tools installed?)"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Extends sha256 PCR `pcr` with a digest, as a changed bootloader or kernel would.
    pub fn extend_pcr(&self, pcr: u8) -> anyhow::Result<()> {
        let digest = format!("{pcr}:sha256={}", "ab".repeat(32));
        self.tool("tpm2_pcrextend", &[&digest]).map(|_| ())
    }

    /// Starts policy sessions until the TPM has no free session slot, from a client that then exits without
    /// flushing them, as a killed daemon would. Returns how many were left.
    pub fn fill_session_slots(&self, helper: &Path) -> anyhow::Result<usize> {
        let mut left = 0;
        while left < 16 {
            let out = Command::new(helper)
                .arg(self.tcti())
                .arg("1")
                .env(TSS2_LOG.0, TSS2_LOG.1)
                .output()
                .with_context(|| format!("cannot run {}", helper.display()))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("out of memory") {
                    return Ok(left);
                }
                bail!("{} failed: {err}", helper.display());
            }
            left += 1;
        }
        bail!("the TPM accepted {left} sessions without running out of slots")
    }

    /// Handles of loaded sessions in the TPM.
    pub fn loaded_sessions(&self) -> anyhow::Result<Vec<String>> {
        let out = self.tool("tpm2_getcap", &["handles-loaded-session"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(str::to_owned)
            .collect())
    }

    /// Handles of transient objects loaded in the TPM.
    pub fn transient_handles(&self) -> anyhow::Result<Vec<String>> {
        let out = self.tool("tpm2_getcap", &["handles-transient"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(str::to_owned)
            .collect())
    }

    /// Loads primary keys until the TPM has no free object slot, as killed clients of a TPM without a
    /// resource manager leave it. Returns how many were loaded.
    pub fn fill_object_slots(&self) -> anyhow::Result<usize> {
        let ctx = self.dir.path().join("filler.ctx");
        let ctx = ctx.to_string_lossy();
        let mut loaded = 0;
        while loaded < 16 {
            match self.tool(
                "tpm2_createprimary",
                &["-C", "o", "-G", "ecc", "-c", ctx.as_ref()],
            ) {
                Ok(_) => loaded += 1,
                Err(e) if e.to_string().contains("out of memory") => return Ok(loaded),
                Err(e) => return Err(e),
            }
        }
        bail!("the TPM accepted {loaded} objects without running out of slots")
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `passmeshd` with `args` (plus `--socket SOCKET` in a temporary directory) and returns how it ended.
/// For refusals: if it starts serving instead, it is killed and the result says so with exit code `None`.
pub fn passmeshd_once(args: &[&str], timeout: Duration) -> anyhow::Result<CliOutput> {
    let bins = binaries()?;
    let tmp = tempfile::Builder::new()
        .prefix("passmesh-once-")
        .tempdir()?;
    let socket = tmp.path().join("ipc.sock");
    let mut child = Command::new(&bins.daemon)
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .env(TSS2_LOG.0, TSS2_LOG.1)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot spawn passmeshd")?;
    let deadline = Instant::now() + timeout;
    let mut served = false;
    while child.try_wait()?.is_none() {
        if socket.exists() || Instant::now() > deadline {
            served = socket.exists();
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    Ok(CliOutput {
        code: if served { None } else { out.status.code() },
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Every file under `dir` with its contents, keyed by relative path.
pub fn snapshot(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path)?;
                out.insert(path.strip_prefix(dir)?.to_owned(), bytes);
            }
        }
    }
    Ok(out)
}

/// Copies the directory tree `from` to `to` (which must not exist).
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
