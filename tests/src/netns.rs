//! Private networks made of Linux network namespaces, so daemons can be cut off and healed like devices on a
//! LAN without touching the host's network.
//!
//! A [`Lan`] is one "hub" namespace holding a bridge (the switch), and one namespace per device, each wired
//! to the bridge by a veth pair (`eth0` on the device side, `pI` on the hub side). Devices get
//! `10.77.N.(I+1)/24`. Every name is namespace-local except the namespaces' own, which are
//! `pm-<pid in hex>-<counter in hex><role>` (at most 15 characters): unique among the processes alive, and a
//! leftover of a killed run is recognised by its dead pid and removed by the next [`Lan::new`].
//! Because each `Lan` is sealed in its own namespaces, two of them may use the same subnet byte `N` without
//! seeing each other; `N` still varies with the pid and the counter so that logs of parallel tests read apart.
//!
//! Needs root and iproute2 (`ip`). Nothing else: no `ping`, `tc` or firewall tools.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// Prefix of every namespace this module creates.
const PREFIX: &str = "pm-";

/// Which Lan of this process comes next.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails with a clear message unless the process runs as root (namespaces need CAP_SYS_ADMIN and
/// CAP_NET_ADMIN).
pub fn require_root() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the network-namespace tests need root (they run `ip netns add`); run them as root, \
             as CI does"
        );
    }
    Ok(())
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

/// Runs `ip ARGS`; returns its stdout, or fails with its stderr.
pub fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes `pm-*` namespaces whose creating process is gone (left by a killed test run). Once per process,
/// before its first [`Lan`].
fn sweep_stale() {
    static SWEPT: Mutex<bool> = Mutex::new(false);
    let mut swept = SWEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *swept {
        return;
    }
    *swept = true;
    let Ok(list) = ip_output(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        // `ip netns list` prints "NAME" or "NAME (id: N)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        // This process has made none yet (the sweep comes first), so one with its pid is a leftover of an
        // earlier process that had the same pid.
        if pid == std::process::id() || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: a namespace another sweeper removed first is no loss.
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A private LAN: a bridge in a hub namespace and one namespace per device. Dropping it deletes them all.
#[derive(Debug)]
pub struct Lan {
    subnet: u8,
    hub: String,
    devices: Vec<String>,
}

impl Lan {
    /// Creates a LAN of `devices` namespaces, all up and connected.
    pub fn new(devices: usize) -> anyhow::Result<Lan> {
        require_root()?;
        if devices == 0 || devices > 200 {
            bail!("a Lan holds 1..=200 devices, not {devices}");
        }
        sweep_stale();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let subnet = u8::try_from((pid.wrapping_add(n.wrapping_mul(37))) % 250 + 1)
            .expect("a value below 251 fits in a u8");
        let base = format!("{PREFIX}{pid:x}-{n:x}");
        let hub = format!("{base}h");
        ip(&["netns", "add", &hub])?;
        // From here on, dropping `lan` deletes whatever exists so far if a step fails.
        let mut lan = Lan {
            subnet,
            hub,
            devices: Vec::new(),
        };
        lan.build(&base, devices)?;
        Ok(lan)
    }

    fn build(&mut self, base: &str, devices: usize) -> anyhow::Result<()> {
        let hub = self.hub.clone();
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        // No IGMP snooping: the bridge floods all multicast to every port, as a small home switch does. (mDNS's
        // 224.0.0.251 is link-local and flooded even with snooping on; this keeps it independent of that.)
        ip(&[
            "-n",
            &hub,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..devices {
            let ns = format!("{base}{i}");
            ip(&["netns", "add", &ns])?;
            self.devices.push(ns.clone());
            let port = format!("p{i}");
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "multicast", "on", "up"])?;
        }
        Ok(())
    }

    /// How many devices the LAN has.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the LAN has no devices (never, once built).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The namespace of device `i` (for `ip netns exec`).
    pub fn namespace(&self, i: usize) -> &str {
        &self.devices[i]
    }

    /// The hub namespace holding the bridge.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Device `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let host = u8::try_from(i + 1).expect("at most 200 devices");
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// Pulls device `i`'s cable out of the switch: its hub-side veth goes down, so it loses carrier and
    /// nothing reaches it or leaves it, while its own address and sockets stay as they are.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.hub, "link", "set", &format!("p{i}"), "down"])
    }

    /// Plugs device `i` back in.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.hub, "link", "set", &format!("p{i}"), "up"])
    }

    /// Whether device `i`'s hub-side port is up, as the kernel reports it.
    pub fn is_connected(&self, i: usize) -> anyhow::Result<bool> {
        let out = ip_output(&["-n", &self.hub, "-o", "link", "show", &format!("p{i}")])?;
        // The flags list looks like <BROADCAST,MULTICAST,UP,LOWER_UP>.
        let flags = out
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(flags, _)| flags)
            .unwrap_or_default();
        Ok(flags.split(',').any(|f| f == "UP"))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.devices.iter().chain(std::iter::once(&self.hub)) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cannot delete network namespace {ns}: {e:#}");
            }
        }
    }
}
