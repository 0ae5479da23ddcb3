//! Paired daemons, on loopback or in network namespaces.
//!
//! [`paired`] pairs N fresh state directories through the daemon library's pairing API (daemons stopped: the
//! first one invites, the others join, every device is admitted everywhere), then starts a `passmeshd` on each,
//! listening on a fixed address so that restarts keep the address the others dial. [`paired_at`] does the same
//! with a [`Placement`] per node (listen addresses, network namespace) and a [`Discovery`] saying how the nodes
//! learn each other's addresses. mDNS is off unless asked for: parallel tests on loopback must not discover
//! each other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use passmesh_daemon::custody::keystore::{Choice, TpmOptions};
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
    /// The port of its first listen address (its loopback TCP port for [`paired`]).
    pub port: u16,
    /// Its dialable addresses, each with `/p2p/`.
    pub addrs: Vec<String>,
    state: TempDir,
}

impl Node {
    /// Its state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Its first dialable address, with `/p2p/`.
    pub fn addr(&self) -> String {
        self.addrs.first().cloned().unwrap_or_default()
    }

    /// Its `status`.
    pub async fn status(&self) -> anyhow::Result<StatusInfo> {
        let mut c = self.daemon.client().await?;
        Ok(ops::status(&mut c).await?)
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A loopback UDP port that was free a moment ago (for QUIC).
pub fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
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

/// Where one node runs and listens.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Multiaddrs to listen on, without `/p2p/`, with fixed ports (the others dial exactly these).
    pub listen: Vec<String>,
    /// The network namespace to run the daemon in (none: the test's own).
    pub netns: Option<String>,
}

impl Placement {
    /// Listening on loopback TCP `port`.
    pub fn loopback_tcp(port: u16) -> Placement {
        Placement {
            listen: vec![format!("/ip4/127.0.0.1/tcp/{port}")],
            netns: None,
        }
    }
}

/// How paired nodes learn where the others are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// The addresses are handed over with the pairing (as pairing by code does); mDNS off.
    Pairing,
    /// Each daemon's config lists the others' addresses in `[network] peers`; none at pairing; mDNS off.
    ConfigPeers,
    /// No address anywhere; mDNS on: the nodes must find each other on the local network.
    Mdns,
}

/// The port of the first `/tcp/` or `/udp/` component of `multiaddr`, 0 if none.
fn port_of(multiaddr: &str) -> u16 {
    let parts: Vec<&str> = multiaddr.split('/').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "tcp" || w[0] == "udp")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(0)
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// How long a state directory may stay locked after the pairing API closed it.
const LOCK_LINGER: Duration = Duration::from_secs(5);

/// Runs `step` again while it fails because the state directory's store is still locked.
///
/// The pairing API opens and closes the vault of a stopped daemon within this process, and sled 0.34 lets go
/// of its file lock only once its IO threads have finished with the closed database, a moment after the close
/// returned: the next open of the same directory (another pairing step, or the daemon) can find it still
/// locked. Any other error is returned at once.
async fn while_locked<T, E>(mut step: impl AsyncFnMut() -> Result<T, E>) -> anyhow::Result<T>
where
    E: std::fmt::Display + Into<anyhow::Error>,
{
    let deadline = Instant::now() + LOCK_LINGER;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e)
                if Instant::now() < deadline
                    && format!("{e:#}").contains("could not acquire lock") =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Pairs `n` fresh devices (software keystore) and starts their daemons on loopback TCP, with each other's
/// addresses handed over at pairing.
pub async fn paired(n: usize) -> anyhow::Result<Vec<Node>> {
    let mut placements = Vec::new();
    for _ in 0..n {
        placements.push(Placement::loopback_tcp(free_port()?));
    }
    paired_at(placements, Discovery::Pairing).await
}

/// Pairs one fresh device per placement (software keystore) and starts its daemon there: listening on the
/// placement's addresses (given as `[network] listen` in its config), inside its namespace, finding the others
/// as `discovery` says.
pub async fn paired_at(
    placements: Vec<Placement>,
    discovery: Discovery,
) -> anyhow::Result<Vec<Node>> {
    paired_from(placements, discovery, None, "").await
}

/// Like [`paired`], with `extra` appended to every daemon's config file (e.g. a `[backup]` section).
pub async fn paired_with_config(n: usize, extra: &str) -> anyhow::Result<Vec<Node>> {
    let mut placements = Vec::new();
    for _ in 0..n {
        placements.push(Placement::loopback_tcp(free_port()?));
    }
    paired_from(placements, Discovery::Pairing, None, extra).await
}

/// Like [`paired`], with `pin` set on the first device (through its own daemon, before anyone joins): the PIN
/// key it publishes then is in the vault every other device joins, so they trust its approvals at once.
pub async fn paired_with_pin(n: usize, pin: &str) -> anyhow::Result<Vec<Node>> {
    let mut placements = Vec::new();
    for _ in 0..n {
        placements.push(Placement::loopback_tcp(free_port()?));
    }
    paired_from(placements, Discovery::Pairing, Some(pin), "").await
}

async fn paired_from(
    placements: Vec<Placement>,
    discovery: Discovery,
    first_pin: Option<&str>,
    extra: &str,
) -> anyhow::Result<Vec<Node>> {
    let tpm = TpmOptions::default();
    let n = placements.len();
    if n == 0 {
        bail!("nothing to pair");
    }
    let mut states = Vec::new();
    for _ in 0..n {
        states.push(tempfile::tempdir()?);
    }
    if let Some(pin) = first_pin {
        let options = DaemonOptions {
            state_dir: Some(states[0].path().to_owned()),
            config_toml: Some("[network]\nenabled = false\n".to_owned()),
            ..DaemonOptions::default()
        };
        let mut first = while_locked(async || Daemon::start(options.clone()).await).await?;
        first
            .cli_with_stdin(&["pin", "set"], &format!("{pin}\n"))
            .await?
            .expect_success("pin set");
        first.stop().await?;
    }
    let with_peer = |i: usize, peer: &str| -> Vec<String> {
        placements[i]
            .listen
            .iter()
            .map(|l| format!("{l}/p2p/{peer}"))
            .collect()
    };
    let at_pairing = |i: usize, peer: &str| -> Vec<String> {
        if discovery == Discovery::Pairing {
            with_peer(i, peer)
        } else {
            Vec::new()
        }
    };
    let mut invitation = while_locked(async || {
        pairing::export_invitation(states[0].path(), Choice::Software, &tpm, vec![]).await
    })
    .await
    .context("export invitation")?;
    let first = invitation.inviter.id.to_string();
    invitation.addrs = at_pairing(0, &first);
    let mut devices = vec![invitation.inviter.clone()];
    for (i, state) in states.iter().enumerate().skip(1) {
        let name = format!("node{i}");
        let d = while_locked(async || {
            pairing::join(state.path(), Choice::Software, &tpm, &invitation, &name).await
        })
        .await
        .context("join")?;
        devices.push(d);
    }
    // Everyone admits everyone (the joiners know the inviter already), for a full mesh.
    for (i, state) in states.iter().enumerate() {
        for (j, d) in devices.iter().enumerate() {
            if i == j || (i > 0 && j == 0) {
                continue;
            }
            let addrs = at_pairing(j, d.id.as_str());
            while_locked(async || {
                pairing::admit(
                    state.path(),
                    Choice::Software,
                    &tpm,
                    d.clone(),
                    addrs.clone(),
                )
                .await
            })
            .await
            .context("admit")?;
        }
    }
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_string()).collect();
    let mut nodes = Vec::new();
    for (i, (state, placement)) in states.into_iter().zip(&placements).enumerate() {
        let peers: Vec<String> = if discovery == Discovery::ConfigPeers {
            (0..n)
                .filter(|j| *j != i)
                .flat_map(|j| with_peer(j, &ids[j]))
                .collect()
        } else {
            Vec::new()
        };
        let config = format!(
            "[network]\nmdns = {}\nlisten = {}\npeers = {}\n{extra}",
            discovery == Discovery::Mdns,
            toml_list(&placement.listen),
            toml_list(&peers),
        );
        let options = DaemonOptions {
            state_dir: Some(state.path().to_owned()),
            config_toml: Some(config),
            netns: placement.netns.clone(),
            ..DaemonOptions::default()
        };
        let daemon = while_locked(async || Daemon::start(options.clone()).await).await?;
        nodes.push(Node {
            daemon,
            peer_id: ids[i].clone(),
            port: placement.listen.first().map_or(0, |l| port_of(l)),
            addrs: with_peer(i, &ids[i]),
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
