//! Start-up, reload and shutdown, one path for both modes: the keystore and the vault(s) (user mode: the
//! daemon's own, which brings this device's identity; system mode: the machine identity, then every user vault
//! on disk), the network carrying them, the socket, then serving until the root token is cancelled.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use super::users::Users;
use super::{Error, PARALLEL_HASHES, Service};
use crate::config::{Config, Mode};
use crate::custody::{self, Custody, keystore};
use crate::net::{pairing::Pairing, router};
use crate::vault;

/// A configuration reload (SIGHUP): the newly resolved configuration, and who waits until it is applied.
#[derive(Debug)]
pub struct Reload {
    /// The configuration as resolved now.
    pub config: Config,
    /// Answered once the live settings are applied.
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// System mode: connections one uid may hold at once (of the socket's 128).
const CONNECTIONS_PER_UID: usize = 16;

/// Opens the keystore and the vault(s), then serves the socket until `shutdown` is cancelled. In user mode
/// that is the invoking user's vault; in system mode every user vault already on disk, the others on first
/// use. `ready` is called once the socket accepts connections. `reloads` brings configuration reloads (SIGHUP).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Reload>,
    ready: impl FnOnce(&Config),
) -> Result<(), Error> {
    let system = config.mode == Mode::System;
    // System mode holds the machine lock while it runs: `passmesh keystore … --system` takes it too and so
    // never re-seals under us.
    let (users, _machine_lock) = if system {
        let (users, lock) = open_system(&config).await?;
        (users, Some(lock))
    } else {
        (open_user(&config)?, None)
    };
    let users = Arc::new(users);
    // The root of the daemon's own task tree. `shutdown` (the signal) stops the socket; this one is cancelled
    // only once the socket has answered every request it read, so those still find the network and the
    // vaults as they were.
    let root = CancellationToken::new();
    let (network, pairing) = if config.network.enabled {
        let mut network = router::start(
            &config.network,
            users.identity(),
            users.take_pending(),
            root.child_token(),
        )
        .await?;
        users.go_live(network.carried());
        let pairing = network.take_pair_requests().map(|requests| {
            Pairing::start(
                network.handle(),
                network.carried(),
                users.identity().clone(),
                requests,
            )
        });
        (Some(network), pairing)
    } else {
        (None, None)
    };
    let service = Arc::new(Service {
        pairing,
        users: Arc::clone(&users),
        hashing: tokio::sync::Semaphore::new(PARALLEL_HASHES),
        always_verify: AtomicBool::new(config.pin.always_required),
        network: network.as_ref().map(router::Network::handle),
        network_off: None,
        transfers: Default::default(),
        recovering: tokio::sync::Semaphore::new(1),
    });
    let socket_err = |source| Error::Socket {
        path: config.socket.clone(),
        source,
    };
    let mut ipc_config = passmesh_ipc::Config {
        // Callers connect per request or per browser session; an idle connection only holds a slot.
        idle_timeout: std::time::Duration::from_secs(60),
        ..passmesh_ipc::Config::default()
    };
    let listener = if system {
        // Every user shares the socket's slots: none may take them all.
        ipc_config.max_connections_per_uid = CONNECTIONS_PER_UID;
        check_socket_dir(&config.socket, 0o755).map_err(socket_err)?;
        // Every local user connects; the kernel-reported uid picks the vault.
        passmesh_ipc::bind_with_modes(&config.socket, 0o755, 0o666).map_err(socket_err)?
    } else {
        check_socket_dir(&config.socket, 0o700).map_err(socket_err)?;
        passmesh_ipc::bind(&config.socket).map_err(socket_err)?
    };
    tracing::info!(socket = %config.socket.display(), state = %config.state_dir.display(), "serving");
    let reloader = tokio::spawn(reload_loop(
        Arc::clone(&service),
        config.clone(),
        reloads,
        root.child_token(),
    ));
    ready(&config);
    passmesh_ipc::serve(listener, Arc::clone(&service), ipc_config, shutdown).await;
    // The socket has drained: now the rest of the tree stops.
    root.cancel();
    if reloader.await.is_err() {
        tracing::error!("the reload task panicked");
    }
    let _ = std::fs::remove_file(&config.socket);
    if let Some(n) = network {
        n.shutdown().await;
    }
    // The service holds the pairing service, which may hold a vault handle: it goes before the vaults, and its
    // tasks are woken first so that none holds a handle while it waits for a person.
    if let Some(pairing) = &service.pairing {
        pairing.shutdown().await;
    }
    drop(service);
    for thread in users.close() {
        if thread.join().is_err() {
            tracing::error!("a vault thread panicked");
        }
    }
    Ok(())
}

/// User mode: opens the invoking user's vault, which brings this device's identity.
fn open_user(config: &Config) -> Result<Users, Error> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = crate::layout::user_dir(&config.state_dir, uid);
    let custody = Custody::new(config.keystore, config.tpm.clone());
    let (running, report) =
        vault::open(&dir, &custody, config.rules()).map_err(|source| match source {
            // Keystore refusals are about the machine, not the vault's files: say them plainly.
            vault::Error::Keystore(k) => Error::Keystore(k),
            source => Error::Vault {
                path: dir.clone(),
                source,
            },
        })?;
    if let Some(w) = &report.warning {
        tracing::warn!("{w}");
    }
    if let Some(t) = &report.tpm {
        tracing::info!(
            manufacturer = %t.manufacturer,
            firmware = %t.firmware,
            pcrs = %keystore::list_pcrs(report.pcrs.as_deref().unwrap_or_default()),
            "vault keys are sealed by the TPM"
        );
    }
    tracing::info!(keystore = report.backend.name(), "user mode: one vault");
    Ok(Users::single(config, uid, running, report))
}

/// System mode: takes the machine lock, unseals (or creates) the machine identity and opens every user vault
/// on disk.
async fn open_system(config: &Config) -> Result<(Users, custody::migrate::MachineLock), Error> {
    let machine = crate::layout::machine_dir(&config.state_dir);
    crate::layout::private_dir(&machine).map_err(|source| Error::StateDir {
        path: machine.clone(),
        source,
    })?;
    let lock = custody::migrate::lock_machine(&machine).map_err(Error::MachineInUse)?;
    let custody = Custody::new(config.keystore, config.tpm.clone());
    let dir = machine.clone();
    let identity = tokio::task::spawn_blocking(move || custody.machine_identity(&dir))
        .await
        .map_err(|_| Error::Interrupted("opening the machine identity"))?
        .map_err(|source| match source {
            custody::Error::Keystore(k) => Error::Keystore(k),
            source => Error::Machine {
                path: machine.clone(),
                source,
            },
        })?;
    let device = identity.peer_id();
    let users = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Users::system(&config, identity))
            .await
            .map_err(|_| Error::Interrupted("opening the user vaults"))??
    };
    tracing::info!(
        vaults = users.count(),
        max = config.max_vaults,
        %device,
        "system mode: one vault per local uid"
    );
    Ok((users, lock))
}

/// Applies each reload to `service` until `reloads` closes or `shutdown` is cancelled.
async fn reload_loop(
    service: Arc<Service>,
    mut current: Config,
    mut reloads: tokio::sync::mpsc::Receiver<Reload>,
    shutdown: CancellationToken,
) {
    while let Some(Some(r)) = shutdown.run_until_cancelled(reloads.recv()).await {
        service.reload(&current, &r.config).await;
        current = r.config;
        let _ = r.done.send(());
    }
}

impl Service {
    /// Applies what can change while running (the PIN policy, `max_vaults`, new explicit peers) and says which
    /// other changes wait for a restart.
    async fn reload(&self, old: &Config, new: &Config) {
        // No vault is being opened meanwhile (each reads the policy as it opens): none misses the change.
        let _no_opening = self.users.hold_openings().await;
        if new.rules() != old.rules() {
            self.always_verify
                .store(new.pin.always_required, Ordering::Relaxed);
            self.users.set_rules(new.rules());
            for h in self.users.handles() {
                // A vault that stopped is shutting down with the daemon.
                let _ = h.set_rules(new.rules()).await;
            }
            tracing::info!(
                max_attempts = new.pin.max_attempts,
                lockout_secs = new.pin.lockout.as_secs(),
                always_required = new.pin.always_required,
                trash_days = new.trash.as_secs() / 86_400,
                "the vault rules changed"
            );
        }
        if new.max_vaults != old.max_vaults && self.users.is_system() {
            self.users.set_max(new.max_vaults);
            tracing::info!(max = new.max_vaults, "max_vaults changed");
        }
        if let Some(n) = &self.network {
            for addr in new
                .network
                .peers
                .iter()
                .filter(|a| !old.network.peers.contains(a))
            {
                tracing::info!(%addr, "dialing a peer address added to the config");
                if let Err(e) = n.dial(addr.clone()).await {
                    tracing::warn!(%addr, error = %e, "cannot dial");
                }
            }
        }
        let later: Vec<&str> = [
            ("state_dir", new.state_dir != old.state_dir),
            ("socket", new.socket != old.socket),
            ("keystore", new.keystore != old.keystore),
            ("tpm", new.tpm != old.tpm),
            ("daemon.mode", new.mode != old.mode),
            (
                "network.enabled",
                new.network.enabled != old.network.enabled,
            ),
            ("network.listen", new.network.listen != old.network.listen),
            ("network.mdns", new.network.mdns != old.network.mdns),
            ("network.relays", new.network.relays != old.network.relays),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !later.is_empty() {
            tracing::warn!(
                settings = %later.join(", "),
                "changed in the config file; they take effect at the next restart"
            );
        }
        tracing::info!("config reloaded");
    }
}

/// Makes sure the socket's directory is ours and not writable by others before anything listens in it: in a
/// shared fallback location (`/tmp`) another user could otherwise have prepared it. A missing directory is
/// created with `mode`.
fn check_socket_dir(socket: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let Some(dir) = socket.parent() else {
        return Ok(());
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)?;
        // The umask (UMask=0077 in the system unit) may have narrowed it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    let meta = std::fs::metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to us (uid {me})",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is writable by others", dir.display()),
        ));
    }
    Ok(())
}
