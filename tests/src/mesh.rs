//! Paired daemons on loopback.
//!
//! [`paired`] pairs N fresh state directories through the daemon library's pairing API (daemons stopped: the
//! first one invites, the others join, every device is admitted everywhere with its address), then starts a
//! `passmeshd` on each, listening on a fixed loopback TCP port so that restarts keep the address the others
//! dial. mDNS is off: parallel tests must not discover each other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use passmesh_daemon::keystore::{Choice, TpmOptions};
use passmesh_daemon::pairing;
use passmesh_ipc::StatusInfo;
use tempfile::TempDir;

use crate::{Daemon, DaemonOptions, ops};

/// One paired daemon.
#[derive(Debug)]
pub struct Node {
    /// The running (or stopped) daemon.
    pub daemon: Daemon,
    /// Its device id (libp2p peer id).
    pub peer_id: String,
    /// Its loopback TCP port.
    pub port: u16,
    state: TempDir,
}

impl Node {
    /// Its state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Its dialable address, with `/p2p/`.
    pub fn addr(&self) -> String {
        addr(self.port, &self.peer_id)
    }

    /// Its `status`.
    pub async fn status(&self) -> anyhow::Result<StatusInfo> {
        let mut c = self.daemon.client().await?;
        Ok(ops::status(&mut c).await?)
    }
}

fn addr(port: u16, peer: &str) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Options for a node's daemon: its state directory, its port, no mDNS.
pub fn node_options(state: &Path, port: u16) -> DaemonOptions {
    DaemonOptions {
        state_dir: Some(state.to_owned()),
        config_toml: Some("[network]\nmdns = false\n".to_owned()),
        extra_args: vec!["--listen".to_owned(), format!("/ip4/127.0.0.1/tcp/{port}")],
        ..DaemonOptions::default()
    }
}

/// Pairs `n` fresh devices (software keystore) and starts their daemons.
pub async fn paired(n: usize) -> anyhow::Result<Vec<Node>> {
    let tpm = TpmOptions::default();
    let mut states = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        states.push(tempfile::tempdir()?);
        ports.push(free_port()?);
    }
    let mut invitation =
        pairing::export_invitation(states[0].path(), Choice::Software, &tpm, vec![])
            .await
            .context("export invitation")?;
    let first = invitation.inviter.id.to_string();
    invitation.addrs = vec![addr(ports[0], &first)];
    let mut devices = vec![invitation.inviter.clone()];
    for (i, state) in states.iter().enumerate().skip(1) {
        let d = pairing::join(
            state.path(),
            Choice::Software,
            &tpm,
            &invitation,
            &format!("node{i}"),
        )
        .await
        .context("join")?;
        devices.push(d);
    }
    // Everyone admits everyone (the joiners know the inviter already), with addresses, for a full mesh.
    for (i, state) in states.iter().enumerate() {
        for (j, d) in devices.iter().enumerate() {
            if i == j || (i > 0 && j == 0) {
                continue;
            }
            pairing::admit(
                state.path(),
                Choice::Software,
                &tpm,
                d.clone(),
                vec![addr(ports[j], d.id.as_str())],
            )
            .await
            .context("admit")?;
        }
    }
    let mut nodes = Vec::new();
    for ((state, port), d) in states.into_iter().zip(ports).zip(devices) {
        let daemon = Daemon::start(node_options(state.path(), port)).await?;
        nodes.push(Node {
            daemon,
            peer_id: d.id.to_string(),
            port,
            state,
        });
    }
    Ok(nodes)
}

/// Polls `check` until it returns `Some`, or fails after `limit` with `what`.
pub async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node lists every other as connected.
pub async fn all_connected(nodes: &[&Node], limit: Duration) -> anyhow::Result<()> {
    for n in nodes {
        let want = nodes.len() - 1;
        eventually(limit, "peers to connect", async || {
            let s = n.status().await.ok()?;
            (s.peers.iter().filter(|p| p.connected).count() >= want).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// The state directory's user vault directory (where `db/` lives).
pub fn vault_dir(state: &Path) -> PathBuf {
    state
        .join("users")
        .join(rustix::process::geteuid().as_raw().to_string())
}
