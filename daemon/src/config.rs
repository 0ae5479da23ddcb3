//! Configuration: embedded defaults, an optional TOML file, then command-line flags, in that order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::custody::{Choice, TpmOptions};
use crate::pin::Policy;

/// Configuration problems; all are reported before the daemon touches any state.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, key).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// Neither the flag nor the environment gives a place for the state.
    #[error("no state directory: set --state-dir, XDG_DATA_HOME or HOME")]
    NoStateDir,
}

/// The config file's schema. Unknown keys are errors, so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Where vaults are stored.
    pub state_dir: Option<PathBuf>,
    /// The IPC socket path.
    pub socket: Option<PathBuf>,
    /// Keystore backend.
    pub keystore: Option<Choice>,
    /// PIN policy.
    #[serde(default)]
    pub pin: PinSection,
    /// TPM settings.
    #[serde(default)]
    pub tpm: TpmSection,
    /// Peer-to-peer sync.
    #[serde(default)]
    pub network: NetworkSection,
    /// How the daemon serves its callers.
    #[serde(default)]
    pub daemon: DaemonSection,
    /// The vault's rules.
    #[serde(default)]
    pub vault: VaultSection,
    /// Automatic backups.
    #[serde(default)]
    pub backup: BackupSection,
}

/// `[backup]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// Where automatic backups go (none: no automatic backups). An absolute path; `~/` is the home directory.
    /// System mode writes each user's into `<dir>/<uid>`.
    pub dir: Option<PathBuf>,
    /// Backups of this device kept there (default 10).
    pub keep: Option<usize>,
}

/// Default of `backup.keep`.
pub const DEFAULT_BACKUP_KEEP: usize = 10;

/// The resolved `[backup]` settings, when a directory is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backups {
    /// Where they go (user mode) or the directory of the per-uid directories (system mode).
    pub dir: PathBuf,
    /// How many of this device's backups are kept.
    pub keep: usize,
}

/// `[vault]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSection {
    /// Days a deleted passkey stays in the trash before it is purged, and days this device keeps old vault keys
    /// (what another device purged stays restorable) unless a purge was approved with the PIN (default 30).
    pub trash_days: Option<u32>,
}

/// Default of `vault.trash_days`.
pub const DEFAULT_TRASH_DAYS: u32 = 30;

/// `[daemon]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// `"user"` (default: serve the daemon's own uid) or `"system"` (serve every local uid, one vault each).
    pub mode: Option<Mode>,
    /// System mode: most user vaults the daemon keeps (default 1024).
    pub max_vaults: Option<usize>,
}

/// Whom the daemon serves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One user: the daemon runs as that user and refuses every other uid.
    #[default]
    User,
    /// Every local user through one socket, each served from the vault of their kernel-reported uid.
    System,
}

/// Default of `daemon.max_vaults`.
pub const DEFAULT_MAX_VAULTS: usize = 1024;

/// `[network]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Sync with paired devices at all (default true).
    pub enabled: Option<bool>,
    /// Multiaddrs to listen on (default `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`).
    pub listen: Option<Vec<String>>,
    /// Find paired devices on the local network by mDNS (default true).
    pub mdns: Option<bool>,
    /// Explicit peer addresses, each ending in `/p2p/<peer id>`.
    pub peers: Option<Vec<String>>,
    /// Relay servers for devices on other networks, each ending in `/p2p/<peer id>`.
    pub relays: Option<Vec<String>>,
}

/// `[tpm]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmSection {
    /// TCTI of the TPM (default `device:/dev/tpmrm0`).
    pub tcti: Option<String>,
    /// sha256 PCRs (0..=23) that bind the seal (default none).
    pub pcrs: Option<Vec<u32>>,
}

/// `[pin]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinSection {
    /// Consecutive wrong PINs before lockout (default 5).
    pub max_attempts: Option<u32>,
    /// Lockout length in seconds (default 300).
    pub lockout_seconds: Option<u64>,
    /// Require the PIN for every create and get, whatever the relying party asks (default false).
    pub always_required: Option<bool>,
}

/// Overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--keystore`.
    pub keystore: Option<Choice>,
    /// `--tpm-tcti`.
    pub tpm_tcti: Option<String>,
    /// `--listen` (repeatable); replaces `network.listen` when given.
    pub listen: Vec<String>,
    /// `--system`: system mode whatever the file says.
    pub system: bool,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where vaults are stored.
    pub state_dir: PathBuf,
    /// The IPC socket path.
    pub socket: PathBuf,
    /// Keystore backend.
    pub keystore: Choice,
    /// PIN policy.
    pub pin: Policy,
    /// TPM settings.
    pub tpm: TpmOptions,
    /// Peer-to-peer sync.
    pub network: Network,
    /// Whom the daemon serves.
    pub mode: Mode,
    /// System mode: most user vaults the daemon keeps.
    pub max_vaults: usize,
    /// How long a deleted passkey stays in the trash.
    pub trash: Duration,
    /// Automatic backups, if configured.
    pub backup: Option<Backups>,
}

impl Config {
    /// What each vault is run by: the PIN policy and the trash's keeping time.
    pub fn rules(&self) -> crate::vault::Rules {
        crate::vault::Rules {
            pin: self.pin,
            trash: self.trash,
        }
    }
}

/// The resolved `[network]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Sync with paired devices at all.
    pub enabled: bool,
    /// Addresses to listen on.
    pub listen: Vec<passmesh_transport::Multiaddr>,
    /// mDNS discovery on the local network.
    pub mdns: bool,
    /// Explicit peer addresses (with `/p2p/`).
    pub peers: Vec<passmesh_transport::Multiaddr>,
    /// Relay servers (with `/p2p/`).
    pub relays: Vec<passmesh_transport::Multiaddr>,
}

fn multiaddrs(what: &str, list: &[String]) -> Result<Vec<passmesh_transport::Multiaddr>, Error> {
    list.iter()
        .map(|a| {
            a.parse()
                .map_err(|e| Error::Invalid(format!("{what}: {a:?} is not a multiaddr: {e}")))
        })
        .collect()
}

fn has_peer_id(a: &passmesh_transport::Multiaddr) -> bool {
    a.to_string().contains("/p2p/")
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `$XDG_DATA_HOME/passmesh`, else `$HOME/.local/share/passmesh`.
pub fn default_state_dir() -> Option<PathBuf> {
    env_path("XDG_DATA_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".local/share")))
        .map(|d| d.join("passmesh"))
}

/// `$XDG_RUNTIME_DIR/passmesh/ipc.sock`, else `/tmp/passmesh-UID/ipc.sock` (a private directory the daemon
/// creates and checks).
pub fn default_socket() -> PathBuf {
    match env_path("XDG_RUNTIME_DIR") {
        Some(d) => d.join("passmesh/ipc.sock"),
        None => PathBuf::from(format!(
            "/tmp/passmesh-{}/ipc.sock",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// A path from a variable systemd sets for a service (`STATE_DIRECTORY`, `RUNTIME_DIRECTORY`): the first of
/// its colon-separated list.
fn systemd_dir(name: &str) -> Option<PathBuf> {
    let value = std::env::var_os(name)?;
    let first = value.to_str()?.split(':').next()?.to_owned();
    Some(PathBuf::from(first)).filter(|p| p.is_absolute())
}

/// Where the system service keeps its state by default: `$STATE_DIRECTORY`, else `/var/lib/passmesh`.
pub fn system_state_dir() -> PathBuf {
    systemd_dir("STATE_DIRECTORY").unwrap_or_else(|| PathBuf::from("/var/lib/passmesh"))
}

/// The system service's socket: `$RUNTIME_DIRECTORY/ipc.sock`, else [`SYSTEM_SOCKET`].
pub fn system_socket() -> PathBuf {
    systemd_dir("RUNTIME_DIRECTORY")
        .map(|d| d.join("ipc.sock"))
        .unwrap_or_else(|| PathBuf::from(SYSTEM_SOCKET))
}

/// Where clients find the system service's socket.
pub const SYSTEM_SOCKET: &str = "/run/passmesh/ipc.sock";

/// The socket a client uses when told none: the per-user daemon's ([`default_socket`]) if it exists, else the
/// system service's ([`SYSTEM_SOCKET`]) if that exists, else the per-user one (so an error names it).
pub fn client_socket() -> PathBuf {
    let user = default_socket();
    if user.exists() {
        return user;
    }
    let system = PathBuf::from(SYSTEM_SOCKET);
    if system.exists() { system } else { user }
}

impl Config {
    /// Resolves the configuration from defaults, the file named by `flags.config` and the flags.
    pub fn resolve(flags: &Flags) -> Result<Config, Error> {
        let file = match &flags.config {
            Some(path) => load_file(path)?,
            None => File::default(),
        };
        let mode = if flags.system {
            Mode::System
        } else {
            file.daemon.mode.unwrap_or_default()
        };
        let max_vaults = file.daemon.max_vaults.unwrap_or(DEFAULT_MAX_VAULTS);
        if !(1..=65_536).contains(&max_vaults) {
            return Err(Error::Invalid(format!(
                "daemon.max_vaults must be 1..=65536, got {max_vaults}"
            )));
        }
        let state_dir = flags.state_dir.clone().or(file.state_dir);
        let socket = flags.socket.clone().or(file.socket);
        let (state_dir, socket) = match mode {
            Mode::User => (
                state_dir
                    .or_else(default_state_dir)
                    .ok_or(Error::NoStateDir)?,
                socket.unwrap_or_else(default_socket),
            ),
            Mode::System => (
                state_dir.unwrap_or_else(system_state_dir),
                socket.unwrap_or_else(system_socket),
            ),
        };
        let trash_days = file.vault.trash_days.unwrap_or(DEFAULT_TRASH_DAYS);
        if !(1..=3650).contains(&trash_days) {
            return Err(Error::Invalid(format!(
                "vault.trash_days must be 1..=3650, got {trash_days}"
            )));
        }
        let mut pin = Policy::default();
        if let Some(n) = file.pin.max_attempts {
            if !(1..=100).contains(&n) {
                return Err(Error::Invalid(format!(
                    "pin.max_attempts must be 1..=100, got {n}"
                )));
            }
            pin.max_attempts = n;
        }
        if let Some(s) = file.pin.lockout_seconds {
            if !(1..=86_400 * 7).contains(&s) {
                return Err(Error::Invalid(format!(
                    "pin.lockout_seconds must be 1..=604800, got {s}"
                )));
            }
            pin.lockout = Duration::from_secs(s);
        }
        if let Some(a) = file.pin.always_required {
            pin.always_required = a;
        }
        let mut pcrs = Vec::new();
        for p in file.tpm.pcrs.unwrap_or_default() {
            let p = u8::try_from(p)
                .ok()
                .filter(|p| *p <= crate::custody::keystore::tpm::MAX_PCR)
                .ok_or_else(|| Error::Invalid(format!("tpm.pcrs: no PCR {p} (0..=23)")))?;
            pcrs.push(p);
        }
        pcrs.sort_unstable();
        pcrs.dedup();
        let tpm = TpmOptions {
            tcti: flags
                .tpm_tcti
                .clone()
                .or(file.tpm.tcti)
                .unwrap_or_else(|| crate::custody::keystore::DEFAULT_TCTI.to_owned()),
            pcrs,
        };
        let n = file.network;
        let listen = if flags.listen.is_empty() {
            n.listen.unwrap_or_else(|| {
                vec![
                    "/ip4/0.0.0.0/tcp/0".to_owned(),
                    "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
                ]
            })
        } else {
            flags.listen.clone()
        };
        let network = Network {
            enabled: n.enabled.unwrap_or(true),
            listen: multiaddrs("listen", &listen)?,
            mdns: n.mdns.unwrap_or(true),
            peers: multiaddrs("network.peers", &n.peers.unwrap_or_default())?,
            relays: multiaddrs("network.relays", &n.relays.unwrap_or_default())?,
        };
        if let Some(a) = network
            .peers
            .iter()
            .chain(&network.relays)
            .find(|a| !has_peer_id(a))
        {
            return Err(Error::Invalid(format!(
                "network address {a} needs a /p2p/<peer id> suffix"
            )));
        }
        let keep = file.backup.keep.unwrap_or(DEFAULT_BACKUP_KEEP);
        if !(1..=10_000).contains(&keep) {
            return Err(Error::Invalid(format!(
                "backup.keep must be 1..=10000, got {keep}"
            )));
        }
        let backup = match file.backup.dir {
            None => None,
            Some(dir) => {
                let dir = match dir.strip_prefix("~") {
                    Ok(rest) => env_path("HOME")
                        .map(|h| h.join(rest))
                        .ok_or_else(|| Error::Invalid("backup.dir: ~ but no HOME".into()))?,
                    Err(_) => dir,
                };
                if !dir.is_absolute() {
                    return Err(Error::Invalid(format!(
                        "backup.dir must be an absolute path, got {}",
                        dir.display()
                    )));
                }
                Some(Backups { dir, keep })
            }
        };
        Ok(Config {
            backup,
            state_dir,
            socket,
            keystore: flags.keystore.or(file.keystore).unwrap_or_default(),
            pin,
            tpm,
            network,
            mode,
            max_vaults,
            trash: Duration::from_secs(u64::from(trash_days) * 86_400),
        })
    }
}

fn load_file(path: &Path) -> Result<File, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| Error::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn flags_override_file() {
        let (_d, p) = write(
            "state_dir = \"/from/file\"\nsocket = \"/file.sock\"\nkeystore = \"software\"\n[pin]\nmax_attempts = 3\nlockout_seconds = 60\nalways_required = true\n",
        );
        let c = Config::resolve(&Flags {
            config: Some(p),
            state_dir: Some("/from/flag".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.socket, PathBuf::from("/file.sock"));
        assert_eq!(c.keystore, Choice::Software);
        assert_eq!(c.pin.max_attempts, 3);
        assert_eq!(c.pin.lockout, Duration::from_secs(60));
        assert!(c.pin.always_required);
        assert_eq!(c.tpm, TpmOptions::default());
    }

    #[test]
    fn tpm_section_and_flag() {
        let (_d, p) = write("[tpm]\ntcti = \"swtpm:port=1\"\npcrs = [14, 7, 7]\n");
        let c = Config::resolve(&Flags {
            config: Some(p.clone()),
            state_dir: Some("/s".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(c.tpm.tcti, "swtpm:port=1");
        assert_eq!(c.tpm.pcrs, vec![7, 14]);
        let c = Config::resolve(&Flags {
            config: Some(p),
            state_dir: Some("/s".into()),
            tpm_tcti: Some("device:/dev/tpm0".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(c.tpm.tcti, "device:/dev/tpm0");
        let (_d, p) = write("[tpm]\npcrs = [24]\n");
        let e = Config::resolve(&Flags {
            config: Some(p),
            state_dir: Some("/s".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("PCR 24"), "{e}");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let (_d, p) = write("keystore = \"floppy\"\n");
        let e = Config::resolve(&Flags {
            config: Some(p),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("floppy"), "{e}");
        let (_d, p) = write("[pin]\nmax_atempts = 3\n");
        let e = Config::resolve(&Flags {
            config: Some(p),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_atempts"), "{e}");
        let (_d, p) = write("[pin]\nmax_attempts = 0\n");
        assert!(matches!(
            Config::resolve(&Flags {
                config: Some(p),
                ..Flags::default()
            }),
            Err(Error::Invalid(_))
        ));
        let e = Config::resolve(&Flags {
            config: Some("/nonexistent/passmesh.toml".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/passmesh.toml"), "{e}");
    }

    #[test]
    fn network_section_and_listen_flag() {
        let c = Config::resolve(&Flags {
            state_dir: Some("/s".into()),
            ..Flags::default()
        })
        .unwrap();
        assert!(c.network.enabled && c.network.mdns);
        assert_eq!(c.network.listen.len(), 2);
        let (_d, p) = write(
            "[network]\nmdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/4001\"]\npeers = [\"/ip4/10.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN\"]\n",
        );
        let c = Config::resolve(&Flags {
            config: Some(p.clone()),
            state_dir: Some("/s".into()),
            listen: vec!["/ip4/127.0.0.1/udp/5/quic-v1".into()],
            ..Flags::default()
        })
        .unwrap();
        assert!(!c.network.mdns);
        assert_eq!(
            c.network.listen[0].to_string(),
            "/ip4/127.0.0.1/udp/5/quic-v1"
        );
        assert_eq!(c.network.peers.len(), 1);
        let (_d, p) = write("[network]\npeers = [\"/ip4/10.0.0.1/tcp/1\"]\n");
        let e = Config::resolve(&Flags {
            config: Some(p),
            state_dir: Some("/s".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("/p2p/"), "{e}");
    }

    fn resolve(text: Option<&str>) -> Result<Config, Error> {
        let file = text.map(write);
        Config::resolve(&Flags {
            config: file.as_ref().map(|(_, p)| p.clone()),
            state_dir: Some("/s".into()),
            ..Flags::default()
        })
    }

    #[test]
    fn backups_are_off_by_default_and_checked() {
        assert_eq!(resolve(None).unwrap().backup, None);
        let c = resolve(Some("[backup]\ndir = \"/srv/backups\"\n")).unwrap();
        assert_eq!(
            c.backup,
            Some(Backups {
                dir: PathBuf::from("/srv/backups"),
                keep: DEFAULT_BACKUP_KEEP
            })
        );
        let c = resolve(Some("[backup]\ndir = \"/b\"\nkeep = 3\n")).unwrap();
        assert_eq!(c.backup.unwrap().keep, 3);
        for bad in [
            "[backup]\ndir = \"relative/dir\"\n",
            "[backup]\ndir = \"/b\"\nkeep = 0\n",
            "[backup]\ndirectory = \"/b\"\n",
        ] {
            assert!(resolve(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn trash_days_default_set_and_bounded() {
        assert_eq!(
            resolve(None).unwrap().trash,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            resolve(Some("[vault]\ntrash_days = 7\n")).unwrap().trash,
            Duration::from_secs(7 * 86_400)
        );
        for bad in ["[vault]\ntrash_days = 0\n", "[vault]\ntrash_days = 3651\n"] {
            let e = resolve(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("vault.trash_days"), "{e}");
        }
        let e = resolve(Some("[vault]\ntrash = 7\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("trash"), "{e}");
    }

    #[test]
    fn system_mode_from_file_or_flag() {
        let c = Config::resolve(&Flags {
            state_dir: Some("/s".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(c.mode, Mode::User);
        assert_eq!(c.max_vaults, DEFAULT_MAX_VAULTS);
        let (_d, p) = write("[daemon]\nmode = \"system\"\nmax_vaults = 3\n");
        let c = Config::resolve(&Flags {
            config: Some(p),
            socket: Some("/t/ipc.sock".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(c.mode, Mode::System);
        assert_eq!(c.max_vaults, 3);
        assert_eq!(c.socket, PathBuf::from("/t/ipc.sock"));
        assert!(c.state_dir.is_absolute());
        let c = Config::resolve(&Flags {
            system: true,
            state_dir: Some("/s".into()),
            socket: Some("/t/ipc.sock".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(c.mode, Mode::System);
        let (_d, p) = write("[daemon]\nmax_vaults = 0\n");
        assert!(matches!(
            Config::resolve(&Flags {
                config: Some(p),
                state_dir: Some("/s".into()),
                ..Flags::default()
            }),
            Err(Error::Invalid(_))
        ));
    }
}
