//! A real `passmeshd` process in a private temporary directory.
//!
//! Each [`Daemon`] owns a fresh tempdir holding its state directory, socket, optional config
//! file and a log of its stderr. The process is killed when the `Daemon` is dropped; if that
//! happens while a test is panicking, the daemon's log is printed so the failure explains
//! itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use passmesh_ipc::{Client, RequestBody, ResponseBody};
use rustix::process::{Pid, Signal};

use crate::bins::binaries;

/// How to start a daemon. `Default` gives a software keystore and no config file.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Contents of the TOML config file passed with `--config` (none when `None`).
    pub config_toml: Option<String>,
    /// Value of `--keystore`.
    pub keystore: String,
    /// Further command-line arguments.
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// How long to wait for the socket to answer `status` after spawning.
    pub ready_timeout: Duration,
    /// Use this existing state directory instead of a fresh one inside the daemon's tempdir.
    pub state_dir: Option<PathBuf>,
    /// Run the daemon inside this network namespace (`ip netns exec NS passmeshd …`, which needs root). Its
    /// socket is a filesystem path, so the test still reaches it from the root namespace.
    pub netns: Option<String>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            config_toml: None,
            keystore: "software".to_owned(),
            extra_args: Vec::new(),
            env: Vec::new(),
            // Generous: tests run in parallel on two cores next to other builds.
            ready_timeout: Duration::from_secs(30),
            state_dir: None,
            netns: None,
        }
    }
}

impl DaemonOptions {
    /// Options with the given PIN policy written to the config file.
    pub fn with_pin_policy(max_attempts: u32, lockout_seconds: u64) -> Self {
        Self {
            config_toml: Some(format!(
                "[pin]\nmax_attempts = {max_attempts}\nlockout_seconds = {lockout_seconds}\n"
            )),
            ..Self::default()
        }
    }
}

/// What a CLI invocation produced.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Panics with both streams unless the command exited 0; returns stdout.
    pub fn expect_success(&self, what: &str) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: expected exit code 0\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Parses stdout as JSON, panicking with both streams if it is not.
    pub fn json(&self, what: &str) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{what}: stdout is not JSON ({e})\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A running (or stopped, restartable) `passmeshd`.
#[derive(Debug)]
pub struct Daemon {
    dir: tempfile::TempDir,
    state_dir: PathBuf,
    socket: PathBuf,
    config: Option<PathBuf>,
    log: PathBuf,
    options: DaemonOptions,
    child: Option<Child>,
    startup_time: Duration,
}

impl Daemon {
    /// Spawns a daemon on a fresh state directory and waits until it answers `status`.
    pub async fn start(options: DaemonOptions) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("passmesh-e2e-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        // Keep the socket path short: sun_path holds 108 bytes.
        let socket = dir.path().join("ipc.sock");
        let log = dir.path().join("daemon.log");
        let config = match &options.config_toml {
            Some(toml) => {
                let path = dir.path().join("config.toml");
                std::fs::write(&path, toml).context("cannot write the config file")?;
                Some(path)
            }
            None => None,
        };
        let mut daemon = Daemon {
            dir,
            state_dir,
            socket,
            config,
            log,
            options,
            child: None,
            startup_time: Duration::ZERO,
        };
        daemon.spawn_and_wait().await?;
        Ok(daemon)
    }

    /// The socket the daemon serves.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The daemon's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The temporary directory holding state, socket, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Time from the last spawn until the first successful `status` answer.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// Everything the daemon wrote to stderr so far (all runs).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let mut bytes = Vec::new();
            if f.read_to_end(&mut bytes).is_ok() {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        text
    }

    /// A new connection to the daemon.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(&self.socket)
            .await
            .with_context(|| format!("cannot connect to {}", self.socket.display()))
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the exit status.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the daemon is not running");
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        rustix::process::kill_process(Pid::from_child(&child), Signal::TERM)
            .context("cannot send SIGTERM to the daemon")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().context("waiting for the daemon")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the daemon did not exit within 15 s of SIGTERM\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the daemon with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("the daemon is not running");
        };
        // std's Child::kill sends SIGKILL.
        child.kill().context("cannot SIGKILL the daemon")?;
        child.wait().context("cannot reap the daemon")?;
        Ok(())
    }

    /// Stops the daemon gracefully if it runs, then starts it again on the same state
    /// directory, socket and config, and waits until it serves.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            let status = self.stop().await?;
            if !status.success() {
                bail!(
                    "the daemon exited with {status} on SIGTERM\n{}",
                    self.log_tail()
                );
            }
        }
        self.spawn_and_wait().await
    }

    /// Runs the CLI against this daemon's socket (`--socket` is prepended to `args`).
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        run_cli(&self.socket, args, None).await
    }

    /// Like [`Daemon::cli`], with `stdin` piped to the CLI.
    pub async fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<CliOutput> {
        run_cli(&self.socket, args, Some(stdin)).await
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- passmeshd stderr ({}) ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let bins = binaries()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("cannot open the daemon log")?;
        // `ip netns exec` enters the namespace and execs the daemon in the same process, so the child's pid,
        // signals and exit status stay the daemon's own.
        let mut cmd = match &self.options.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&bins.daemon);
                c
            }
            None => Command::new(&bins.daemon),
        };
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--keystore")
            .arg(&self.options.keystore);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(&self.options.extra_args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn {}", bins.daemon.display()))?;
        self.child = Some(child);
        self.wait_ready(started).await
    }

    async fn wait_ready(&mut self, started: Instant) -> anyhow::Result<()> {
        let deadline = started + self.options.ready_timeout;
        let mut last_error = String::from("socket not yet created");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "passmeshd exited with {status} before serving\n{}",
                    self.log_tail()
                );
            }
            if self.socket.exists() {
                match self.probe().await {
                    Ok(()) => {
                        self.startup_time = started.elapsed();
                        return Ok(());
                    }
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "passmeshd did not answer `status` on {} within {:?} (last error: {last_error})\n{}",
                    self.socket.display(),
                    self.options.ready_timeout,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn probe(&self) -> anyhow::Result<()> {
        let mut client = Client::connect(&self.socket).await?;
        match client.call(RequestBody::Status).await? {
            ResponseBody::Status { .. } => Ok(()),
            other => Err(anyhow!("status answered with {other:?}")),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Runs the `passmesh` CLI with `--socket SOCKET` followed by `args`, optionally feeding
/// `stdin`. The child runs on the blocking pool so async tests stay responsive.
pub async fn run_cli(
    socket: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<CliOutput> {
    let bins = binaries()?;
    let mut cmd = Command::new(&bins.cli);
    cmd.arg("--socket").arg(socket).args(args);
    let stdin = stdin.map(str::to_owned);
    let rendered = format!("passmesh --socket {} {}", socket.display(), args.join(" "));
    let output = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A CLI that stops reading early closes the pipe; that is its business.
            let _ = pipe.write_all(text.as_bytes());
        }
        child.wait_with_output()
    })
    .await
    .context("the CLI task panicked")?
    .with_context(|| format!("cannot run `{rendered}`"))?;
    Ok(CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
