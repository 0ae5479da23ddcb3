//! Pairing by code between running daemons, driven through the `passmesh` CLI.
//!
//! [`Device`] is an unpaired daemon on a fixed loopback port (mDNS off). [`Invite`] runs `passmesh --json pair`
//! in the background and reads its JSON lines as they come (the code first, then the progress events);
//! [`join`] runs `passmesh --json join`. [`sas`] and [`outcome`] pick the interesting lines out.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use passmesh_ipc::StatusInfo;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{CliOutput, Daemon, DaemonOptions, binaries, ops};

/// One unpaired daemon listening on loopback TCP.
#[derive(Debug)]
pub struct Device {
    /// The daemon.
    pub daemon: Daemon,
    /// Its device id (libp2p peer id).
    pub peer_id: String,
}

impl Device {
    /// Starts a fresh daemon (software keystore, mDNS off, one loopback TCP listener).
    pub async fn start() -> anyhow::Result<Device> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let daemon = Daemon::start(DaemonOptions {
            config_toml: Some("[network]\nmdns = false\n".to_owned()),
            extra_args: vec!["--listen".to_owned(), format!("/ip4/127.0.0.1/tcp/{port}")],
            ..DaemonOptions::default()
        })
        .await?;
        let mut c = daemon.client().await?;
        let peer_id = ops::status(&mut c)
            .await?
            .device_id
            .context("status has no device id")?;
        Ok(Device { daemon, peer_id })
    }

    /// Its `status`.
    pub async fn status(&self) -> anyhow::Result<StatusInfo> {
        let mut c = self.daemon.client().await?;
        Ok(ops::status(&mut c).await?)
    }

    /// Runs `passmesh --json join ARGS...` against it.
    pub async fn join(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        let mut all = vec!["--json", "join"];
        all.extend_from_slice(args);
        self.daemon.cli(&all).await
    }

    /// Starts `passmesh --json pair ARGS...` against it; `stdin` is fed to the CLI (the confirmation answer).
    pub fn invite(&self, args: &[&str], stdin: &str) -> anyhow::Result<Invite> {
        let bins = binaries()?;
        let mut cmd = Command::new(&bins.cli);
        cmd.arg("--socket")
            .arg(self.daemon.socket_path())
            .args(["--json", "pair"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start `passmesh pair`")?;
        let pid = child.id();
        let stdin_text = stdin.to_owned();
        let mut pipe = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        // The CLI prints a few JSON lines; a reader that falls behind holds the CLI back, which is harmless.
        let (tx, rx) = mpsc::channel(64);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            // The CLI reads the answer only when asked; the pipe holds it until then.
            let _ = pipe.write_all(stdin_text.as_bytes());
            drop(pipe);
            let out = child.wait_with_output();
            let _ = done_tx.send(out);
        });
        Ok(Invite {
            lines: rx,
            seen: Vec::new(),
            done: Some(done_rx),
            pid,
        })
    }
}

/// A running `passmesh --json pair`.
#[derive(Debug)]
pub struct Invite {
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
    done: Option<tokio::sync::oneshot::Receiver<std::io::Result<std::process::Output>>>,
    pid: u32,
}

impl Invite {
    /// Waits for the code: the first line's `uri`.
    pub async fn uri(&mut self) -> anyhow::Result<String> {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.recv())
            .await
            .context("no pairing code within 20 s")?
            .context("`passmesh pair` printed no code")?;
        let v: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
        self.seen.push(v.clone());
        v["uri"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no uri in {line}"))
    }

    /// Sends the CLI SIGINT, as Ctrl-C on its terminal does.
    pub fn interrupt(&self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid)?)
            .context("no such process id")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT)
            .context("cannot signal `passmesh pair`")
    }

    /// Waits for the next JSON line the CLI prints (up to `limit`), keeping it with the others.
    pub async fn next_event(&mut self, limit: Duration) -> Option<Value> {
        let line = tokio::time::timeout(limit, self.lines.recv())
            .await
            .ok()??;
        let v: Value = serde_json::from_str(&line).ok()?;
        self.seen.push(v.clone());
        Some(v)
    }

    /// Waits for the CLI to exit; its exit code and every JSON line it printed.
    pub async fn finish(mut self) -> anyhow::Result<(Option<i32>, Vec<Value>)> {
        let done = self.done.take().context("already finished")?;
        let out = tokio::time::timeout(Duration::from_secs(120), done)
            .await
            .context("`passmesh pair` did not end within 120 s")?
            .context("the CLI waiter vanished")?
            .context("cannot wait for `passmesh pair`")?;
        while let Some(line) = self.lines.recv().await {
            if let Ok(v) = serde_json::from_str(&line) {
                self.seen.push(v);
            }
        }
        Ok((out.status.code(), self.seen))
    }
}

/// The JSON lines of a CLI's stdout.
pub fn json_lines(out: &CliOutput) -> Vec<Value> {
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The SAS among pairing events, if one was shown.
pub fn sas(events: &[Value]) -> Option<String> {
    events
        .iter()
        .find(|e| e["event"] == "sas")
        .and_then(|e| e["sas"].as_str().map(str::to_owned))
}

/// `Ok(device id)` for a `done` event, `Err(reason or error message)` otherwise.
pub fn outcome(events: &[Value]) -> Result<String, String> {
    for e in events {
        if e["event"] == "done" {
            return Ok(e["deviceId"].as_str().unwrap_or_default().to_owned());
        }
        if e["event"] == "failed" {
            return Err(e["reason"].as_str().unwrap_or_default().to_owned());
        }
        if e["ok"] == false {
            return Err(e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned());
        }
    }
    Err("no outcome".to_owned())
}

/// Replaces the value of `field` in a pairing URI (the first occurrence).
pub fn with_field(uri: &str, field: &str, value: &str) -> anyhow::Result<String> {
    let (head, query) = uri.split_once('?').context("no query")?;
    let mut done = false;
    let parts: Vec<String> = query
        .split('&')
        .map(|f| match f.split_once('=') {
            Some((k, _)) if k == field && !done => {
                done = true;
                format!("{k}={value}")
            }
            _ => f.to_owned(),
        })
        .collect();
    if !done {
        bail!("no {field} in {uri}");
    }
    Ok(format!("{head}?{}", parts.join("&")))
}

/// The value of `field` in a pairing URI.
pub fn field(uri: &str, field: &str) -> Option<String> {
    uri.split_once('?')?.1.split('&').find_map(|f| {
        f.split_once('=')
            .filter(|(k, _)| *k == field)
            .map(|(_, v)| v.to_owned())
    })
}

/// Pairs `joiner` into `inviter`'s vault through the CLI; both outcomes must be `done`.
pub async fn pair(inviter: &Device, joiner: &Device, name: &str) -> anyhow::Result<()> {
    let mut invite = inviter.invite(&["--expires", "60"], "y\n")?;
    let uri = invite.uri().await?;
    let joined = joiner.join(&[&uri, "--name", name]).await?;
    let (code, events) = invite.finish().await?;
    let joined_events = json_lines(&joined);
    if code != Some(0) || outcome(&joined_events).is_err() {
        bail!(
            "pairing failed: inviter {code:?} {events:?}; joiner {:?} {}\n{}\n{}",
            joined.code,
            joined.stdout,
            inviter.daemon.log_tail(),
            joiner.daemon.log_tail()
        );
    }
    Ok(())
}
