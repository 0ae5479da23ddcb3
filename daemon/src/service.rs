//! The socket request handler: authorises the caller, runs the WebAuthn client and authenticator steps, and
//! talks to the caller's vault actor. Also the daemon's start-up and run loop.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use passmesh_ipc::{
    Caller, ErrorBody, ErrorName, Handler, MAX_LIST_PAGE, Pin,
    PublicKeyCredentialCreationOptionsJson, PublicKeyCredentialRequestOptionsJson, RequestBody,
    ResponseBody, StatusInfo,
    message::{PeerInfo, TpmStatus},
};
use tokio_util::sync::CancellationToken;

use crate::authenticator::{self, UserVerification};
use crate::config::{Config, Mode};
use crate::custody::{self, Custody, keystore};
use crate::origin;
use crate::pin::{self, PinHash};
use crate::vault::{self, PinCheck};

/// Start-up failures, reported before the socket is opened.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The keystore cannot be opened.
    #[error(transparent)]
    Keystore(#[from] keystore::Error),
    /// The vault cannot be opened.
    #[error("cannot open the vault in {path}: {source}")]
    Vault {
        /// The vault's directory.
        path: std::path::PathBuf,
        /// Why.
        source: vault::Error,
    },
    /// A directory of the state cannot be read or created.
    #[error("cannot use {path}: {source}")]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another daemon or a `passmesh keystore … --system` command holds the machine lock.
    #[error(
        "{0} (another passmeshd --system, or a `passmesh keystore` command, uses this state directory)"
    )]
    MachineInUse(custody::migrate::Error),
    /// The machine identity cannot be unsealed or created.
    #[error("cannot open the machine identity in {path}: {source}")]
    Machine {
        /// The machine directory.
        path: std::path::PathBuf,
        /// Why.
        source: custody::Error,
    },
    /// A start-up step on the blocking pool was cancelled (the runtime is shutting down).
    #[error("{0} was interrupted")]
    Interrupted(&'static str),
    /// The network (transport host) cannot start.
    #[error("cannot start networking: {0}")]
    Network(#[from] passmesh_transport::Error),
    /// The socket cannot be created.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Which vault serves which caller. Every request is served from the vault of the caller's kernel-reported
/// uid and no other.
#[derive(Debug)]
pub enum Vaults {
    /// User mode: the daemon runs as one user and serves only that uid.
    Single {
        /// The served uid (the daemon's own).
        uid: u32,
        /// That user's vault and its keystore.
        vault: Arc<UserVault>,
    },
    /// System mode: one vault per caller uid, opened at start or on the uid's first request, then kept.
    Multi(Arc<Users>),
}

/// One user's open vault.
#[derive(Debug)]
pub struct UserVault {
    /// Talk to the vault through this.
    pub handle: vault::Handle,
    /// What opening it found out about its keystore.
    pub keystore: vault::KeystoreReport,
}

/// System mode's vaults, one per uid, under `state_dir/users/<uid>`, all this device's under the machine's
/// identity and carried by the one transport host.
#[derive(Debug)]
pub struct Users {
    identity: passmesh_transport::Identity,
    /// Where a freshly opened vault goes to be carried by the network.
    network: std::sync::Mutex<NetworkSlot>,
    state_dir: std::path::PathBuf,
    custody: Custody,
    /// For vaults opened from now on (a reload changes it).
    policy: std::sync::Mutex<pin::Policy>,
    max: AtomicUsize,
    /// Never held across an await.
    open: std::sync::RwLock<HashMap<u32, Arc<UserVault>>>,
    /// Serialises vault creation (a keystore seal and a store open each): one at a time, whoever asks.
    creating: tokio::sync::Mutex<()>,
    /// The vaults' actor threads, joined at shutdown.
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// How a vault opened in system mode reaches the network.
#[derive(Debug)]
enum NetworkSlot {
    /// Networking is off: nothing drains what the vault wants sent.
    Off,
    /// Opened before the host started: carried from its start.
    Pending(Vec<crate::sync::Attach>),
    /// The host runs: attached at once.
    Live(crate::sync::Carried),
}

impl Users {
    fn new(config: &Config, identity: passmesh_transport::Identity) -> Users {
        Users {
            identity,
            network: std::sync::Mutex::new(if config.network.enabled {
                NetworkSlot::Pending(Vec::new())
            } else {
                NetworkSlot::Off
            }),
            state_dir: config.state_dir.clone(),
            custody: Custody::new(config.keystore, config.tpm.clone()),
            policy: std::sync::Mutex::new(config.pin),
            max: AtomicUsize::new(config.max_vaults),
            open: std::sync::RwLock::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            threads: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn lookup(&self, uid: u32) -> Option<Arc<UserVault>> {
        self.open
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&uid)
            .cloned()
    }

    fn count(&self) -> usize {
        self.open
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Opens (creating on first use) the vault of `uid` and keeps it. Blocking: the keystore and the store.
    fn open_blocking(&self, uid: u32) -> Result<Arc<UserVault>, vault::Error> {
        let dir = crate::layout::user_dir(&self.state_dir, uid);
        let (running, report) = vault::open_seeded(
            &dir,
            &self.custody,
            *self
                .policy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            None,
            Some(self.identity.clone()),
        )?;
        if let Some(w) = &report.warning {
            tracing::warn!(uid, "{w}");
        }
        let attach = crate::sync::Attach {
            slot: uid,
            vault_id: running.vault_id,
            paired: running.paired,
            addrs: running.addrs,
            handle: running.handle.clone(),
            outbound: running.outbound,
        };
        match &mut *self
            .network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            NetworkSlot::Off => drop(attach),
            NetworkSlot::Pending(list) => list.push(attach),
            NetworkSlot::Live(carried) => carried.attach(attach),
        }
        let opened = Arc::new(UserVault {
            handle: running.handle,
            keystore: report,
        });
        self.threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(running.thread);
        self.open
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(uid, Arc::clone(&opened));
        Ok(opened)
    }

    /// Opens every vault already under `users/` so each is usable before its user connects. A vault that
    /// cannot be opened is logged and left to its user's next request; the others are served anyway.
    fn open_existing(&self) -> Result<(), Error> {
        let users = self.state_dir.join("users");
        let entries = match std::fs::read_dir(&users) {
            Ok(e) => e,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::StateDir {
                    path: users,
                    source,
                });
            }
        };
        let mut uids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        uids.sort_unstable();
        for uid in uids {
            if self.count() >= self.max.load(Ordering::Relaxed) {
                tracing::error!(
                    max = self.max.load(Ordering::Relaxed),
                    "more user vaults on disk than [daemon] max_vaults: the rest are not opened"
                );
                break;
            }
            match self.open_blocking(uid) {
                Ok(_) => {}
                // Without the keystore no vault opens: that is the machine's problem, not one user's.
                Err(vault::Error::Keystore(k)) => return Err(Error::Keystore(k)),
                Err(err) => {
                    tracing::error!(uid, error = %err, "cannot open this user's vault; will retry on their next request");
                }
            }
        }
        Ok(())
    }

    /// The vault of `uid`, opened (and created on first use) if needed.
    async fn for_uid(self: &Arc<Users>, uid: u32) -> Result<Arc<UserVault>, ErrorBody> {
        if let Some(v) = self.lookup(uid) {
            return Ok(v);
        }
        let _turn = self.creating.lock().await;
        if let Some(v) = self.lookup(uid) {
            return Ok(v);
        }
        if self.count() >= self.max.load(Ordering::Relaxed) {
            tracing::warn!(
                uid,
                max = self.max.load(Ordering::Relaxed),
                "refused a new user vault: [daemon] max_vaults reached"
            );
            return Err(e(
                ErrorName::ConstraintError,
                format!(
                    "this passmeshd keeps at most {} user vaults ([daemon] max_vaults) and has no room for yours: ask the administrator",
                    self.max.load(Ordering::Relaxed)
                ),
            ));
        }
        let users = Arc::clone(self);
        let opened = tokio::task::spawn_blocking(move || users.open_blocking(uid))
            .await
            .map_err(|_| {
                e(
                    ErrorName::UnknownError,
                    "opening your vault was interrupted",
                )
            })?;
        opened.map_err(|err| {
            tracing::error!(uid, error = %err, "cannot open a user's vault");
            e(
                ErrorName::UnknownError,
                "cannot open your vault (the daemon's log says why)",
            )
        })
    }

    /// The vaults opened so far, for the host to carry from its start.
    fn take_pending(&self) -> Vec<crate::sync::Attach> {
        match &mut *self
            .network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            NetworkSlot::Pending(list) => std::mem::take(list),
            NetworkSlot::Off | NetworkSlot::Live(_) => Vec::new(),
        }
    }

    /// From now on, vaults opened are attached to `carried` at once. Called before the socket serves, so no
    /// vault is opened between [`Users::take_pending`] and this.
    fn go_live(&self, carried: crate::sync::Carried) {
        *self
            .network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = NetworkSlot::Live(carried);
    }

    /// Lets go of every vault (each actor stops after a final flush once no request holds its handle) and
    /// hands out their threads to join.
    fn close(&self) -> Vec<std::thread::JoinHandle<()>> {
        self.open
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl Vaults {
    /// The vault for `uid`, or the error the caller gets.
    async fn for_uid(&self, uid: u32) -> Result<Arc<UserVault>, ErrorBody> {
        match self {
            Vaults::Single { uid: served, vault } if *served == uid => Ok(Arc::clone(vault)),
            Vaults::Single { uid: served, .. } => {
                tracing::warn!(caller = uid, served, "refused a caller of another uid");
                Err(e(
                    ErrorName::NotAllowedError,
                    format!(
                        "this passmeshd serves uid {served}; requests from uid {uid} are refused"
                    ),
                ))
            }
            Vaults::Multi(users) => users.for_uid(uid).await,
        }
    }
}

/// The socket request handler.
#[derive(Debug)]
pub struct Service {
    vaults: Vaults,
    /// Bounds concurrent argon2 runs (19 MiB and tens of ms each), whoever asks for them.
    hashing: tokio::sync::Semaphore,
    /// The administrator requires user verification for everything.
    always_verify: AtomicBool,
    /// The transport host, when networking is on.
    network: Option<passmesh_transport::Handle>,
    /// Pairing by code, when networking is on.
    pairing: Option<crate::pair::Pairing>,
    /// Why networking is off, when the mode rather than the config turned it off (for `status`).
    network_off: Option<&'static str>,
}

/// A configuration reload (SIGHUP): the newly resolved configuration, and who waits until it is applied.
#[derive(Debug)]
pub struct Reload {
    /// The configuration as resolved now.
    pub config: Config,
    /// Answered once the live settings are applied.
    pub done: tokio::sync::oneshot::Sender<()>,
}

impl Service {
    fn handles(&self) -> Vec<vault::Handle> {
        match &self.vaults {
            Vaults::Single { vault, .. } => vec![vault.handle.clone()],
            Vaults::Multi(users) => users
                .open
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .map(|v| v.handle.clone())
                .collect(),
        }
    }

    /// Applies what can change while running (the PIN policy, `max_vaults`, new explicit peers) and says which
    /// other changes wait for a restart.
    async fn reload(&self, old: &Config, new: &Config) {
        // No vault is being opened meanwhile (each reads the policy as it opens): none misses the change.
        let _no_opening = match &self.vaults {
            Vaults::Multi(users) => Some(users.creating.lock().await),
            Vaults::Single { .. } => None,
        };
        if new.pin != old.pin {
            self.always_verify
                .store(new.pin.always_required, Ordering::Relaxed);
            if let Vaults::Multi(users) = &self.vaults {
                *users
                    .policy
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = new.pin;
            }
            for h in self.handles() {
                // A vault that stopped is shutting down with the daemon.
                let _ = h.set_policy(new.pin).await;
            }
            tracing::info!(
                max_attempts = new.pin.max_attempts,
                lockout_secs = new.pin.lockout.as_secs(),
                always_required = new.pin.always_required,
                "the PIN policy changed"
            );
        }
        if new.max_vaults != old.max_vaults
            && let Vaults::Multi(users) = &self.vaults
        {
            users.max.store(new.max_vaults, Ordering::Relaxed);
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

/// Applies each reload to `service` until `reloads` closes.
fn spawn_reloader(
    service: Arc<Service>,
    mut current: Config,
    mut reloads: tokio::sync::mpsc::Receiver<Reload>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(r) = reloads.recv().await {
            service.reload(&current, &r.config).await;
            current = r.config;
            let _ = r.done.send(());
        }
    })
}

/// argon2 runs at once, at most.
const PARALLEL_HASHES: usize = 2;

impl Service {
    /// Runs PIN hashing on the blocking pool, at most [`PARALLEL_HASHES`] at a time.
    async fn hash_off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ErrorBody> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| e(ErrorName::UnknownError, "shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| e(ErrorName::UnknownError, "PIN hashing was interrupted"))
    }
}

/// One request's context: the caller's uid and vault.
struct Session<'a> {
    uid: u32,
    vault: &'a vault::Handle,
    keystore: &'a vault::KeystoreReport,
    service: &'a Service,
}

fn e(name: ErrorName, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(name, message)
}

fn internal(err: vault::Error) -> ErrorBody {
    tracing::error!(error = %err, "request failed inside the daemon");
    e(ErrorName::UnknownError, err.to_string())
}

fn pair_error(err: crate::pair::Error) -> ErrorBody {
    use crate::pair::Error as P;
    let name = match &err {
        P::Code(_) | P::Expired | P::Invalid(_) => ErrorName::DataError,
        P::Network(_) => ErrorName::NotSupportedError,
        _ => ErrorName::InvalidStateError,
    };
    e(name, err.to_string())
}

fn security(err: origin::Error) -> ErrorBody {
    e(ErrorName::SecurityError, err.to_string())
}

impl Service {
    /// Handles one request from `caller`.
    pub async fn handle_request(
        &self,
        caller: &Caller,
        request: RequestBody,
    ) -> Result<ResponseBody, ErrorBody> {
        let user = self.vaults.for_uid(caller.uid).await?;
        let s = Session {
            uid: caller.uid,
            vault: &user.handle,
            keystore: &user.keystore,
            service: self,
        };
        s.handle(request).await
    }
}

impl Session<'_> {
    async fn handle(&self, request: RequestBody) -> Result<ResponseBody, ErrorBody> {
        match request {
            RequestBody::Create {
                origin,
                options,
                pin,
            } => self.create(&origin, &options, pin.as_ref()).await,
            RequestBody::Get {
                origin,
                options,
                pin,
            } => self.get(&origin, &options, pin.as_ref()).await,
            RequestBody::List {
                rp_id,
                offset,
                limit,
            } => {
                let limit = limit.unwrap_or(MAX_LIST_PAGE).min(MAX_LIST_PAGE) as usize;
                let (passkeys, total) = self
                    .vault
                    .list(rp_id, offset, limit)
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::List { passkeys, total })
            }
            RequestBody::Delete { credential_id } => {
                let deleted = self.vault.delete(credential_id.0).await.map_err(internal)?;
                Ok(ResponseBody::Delete { deleted })
            }
            RequestBody::Rename {
                credential_id,
                label,
            } => {
                if label.is_empty()
                    || label.len() > passmesh_ipc::message::MAX_LABEL
                    || label.chars().any(char::is_control)
                {
                    return Err(e(
                        ErrorName::ConstraintError,
                        format!(
                            "a label is 1 to {} bytes without control characters",
                            passmesh_ipc::message::MAX_LABEL
                        ),
                    ));
                }
                let renamed = self
                    .vault
                    .rename(credential_id.0, label)
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::Rename { renamed })
            }
            RequestBody::Status => self.status().await,
            RequestBody::PairInvite {
                expires_secs,
                confirm,
                name,
            } => {
                let secs = expires_secs.unwrap_or(passmesh_ipc::message::DEFAULT_PAIR_EXPIRY_SECS);
                if secs == 0 || secs > passmesh_ipc::message::MAX_PAIR_EXPIRY_SECS {
                    return Err(e(
                        ErrorName::ConstraintError,
                        format!(
                            "an invitation lasts 1 to {} seconds",
                            passmesh_ipc::message::MAX_PAIR_EXPIRY_SECS
                        ),
                    ));
                }
                let (uri, expires_at_ms) = self
                    .pairing()?
                    .invite(
                        self.uid,
                        self.vault,
                        std::time::Duration::from_secs(secs),
                        confirm,
                        name,
                    )
                    .await
                    .map_err(pair_error)?;
                Ok(ResponseBody::PairInvite {
                    uri: uri.to_string(),
                    expires_at_ms,
                })
            }
            RequestBody::PairJoin { uri, name } => {
                let name = name.unwrap_or_else(crate::vault::host_name);
                self.pairing()?
                    .join(self.uid, self.vault, &uri, name)
                    .await
                    .map_err(pair_error)?;
                Ok(ResponseBody::PairJoin {})
            }
            RequestBody::PairProgress { since } => {
                let (events, next, finished) = self.pairing()?.progress(self.uid, since).await;
                Ok(ResponseBody::PairProgress {
                    events,
                    next,
                    finished,
                })
            }
            RequestBody::PairConfirm { accept } => {
                self.pairing()?
                    .confirm(self.uid, accept)
                    .await
                    .map_err(pair_error)?;
                Ok(ResponseBody::PairConfirm {})
            }
            RequestBody::SetPin { pin, current_pin } => {
                self.set_pin(&pin, current_pin.as_ref()).await
            }
        }
    }

    fn pairing(&self) -> Result<&crate::pair::Pairing, ErrorBody> {
        self.service.pairing.as_ref().ok_or_else(|| {
            e(
                ErrorName::NotSupportedError,
                match self.service.network_off {
                    Some(why) => format!("{why}: pairing needs networking"),
                    None => {
                        "networking is off ([network] enabled = false): pairing needs it".to_owned()
                    }
                },
            )
        })
    }

    async fn status(&self) -> Result<ResponseBody, ErrorBody> {
        let s = self.vault.status().await.map_err(internal)?;
        let listen_addrs = match &self.service.network {
            Some(n) => n
                .listen_addrs()
                .await
                .map(|l| l.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let peers = s
            .peers
            .into_iter()
            .map(|p| PeerInfo {
                device_id: p.device_id,
                name: p.name,
                connected: p.connected,
                address: p.address,
                last_sync_ms: p.last_sync_ms,
                pending_changes: p.pending_changes,
                bytes_sent: p.bytes_sent,
                bytes_received: p.bytes_received,
            })
            .collect();
        Ok(ResponseBody::Status {
            status: StatusInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uid: self.uid,
                vault_id: s.vault_id,
                passkeys: s.passkeys,
                keystore: self.keystore.backend.name().to_owned(),
                keystore_warning: self.keystore.warning.clone(),
                pin_set: s.pin_set,
                pin_attempts_left: s.pin_attempts_left,
                pin_locked_for_ms: s.pin_locked_for_ms,
                tpm: self.keystore.tpm.as_ref().map(|t| TpmStatus {
                    manufacturer: t.manufacturer.clone(),
                    firmware: t.firmware.clone(),
                    pcrs: self.keystore.pcrs.clone().unwrap_or_default(),
                }),
                device_id: Some(s.device_id),
                listen_addrs,
                peers,
                network_off: self.service.network_off.map(str::to_owned),
            },
        })
    }

    async fn create(
        &self,
        origin: &str,
        options: &PublicKeyCredentialCreationOptionsJson,
        pin: Option<&Pin>,
    ) -> Result<ResponseBody, ErrorBody> {
        let checked = origin::check(origin, options.rp.id.as_deref()).map_err(security)?;
        authenticator::check_creation(options)?;
        let excluded: Vec<Vec<u8>> = options
            .exclude_credentials
            .iter()
            .filter(|d| d.type_ == "public-key")
            .map(|d| d.id.0.clone())
            .collect();
        if !excluded.is_empty()
            && self
                .vault
                .any_excluded(checked.rp_id.clone(), excluded)
                .await
                .map_err(internal)?
        {
            return Err(e(
                ErrorName::InvalidStateError,
                "a passkey in excludeCredentials is already stored in this vault",
            ));
        }
        let uv_wanted = UserVerification::parse(
            options
                .authenticator_selection
                .as_ref()
                .and_then(|s| s.user_verification.as_deref()),
        );
        let uv = self.verify_user(uv_wanted, pin).await?;
        let made = authenticator::make_credential(&checked, options, uv, crate::now_ms())?;
        self.vault.insert(made.passkey).await.map_err(internal)?;
        tracing::info!(rp = %checked.rp_id, "created a passkey");
        Ok(ResponseBody::Create {
            credential: made.response,
        })
    }

    async fn get(
        &self,
        origin: &str,
        options: &PublicKeyCredentialRequestOptionsJson,
        pin: Option<&Pin>,
    ) -> Result<ResponseBody, ErrorBody> {
        let checked = origin::check(origin, options.rp_id.as_deref()).map_err(security)?;
        // Everything about the request is checked before a PIN attempt can be spent on it.
        if options.challenge.as_bytes().is_empty() {
            return Err(e(ErrorName::TypeError, "challenge must not be empty"));
        }
        let allow: Vec<Vec<u8>> = options
            .allow_credentials
            .iter()
            .filter(|d| d.type_ == "public-key")
            .map(|d| d.id.0.clone())
            .collect();
        if !options.allow_credentials.is_empty() && allow.is_empty() {
            return Err(e(
                ErrorName::NotAllowedError,
                "allowCredentials names no public-key credential",
            ));
        }
        let credential = self
            .vault
            .find_for_get(checked.rp_id.clone(), allow)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                e(
                    ErrorName::NotAllowedError,
                    format!("no matching passkey for {}", checked.rp_id),
                )
            })?;
        let uv = self
            .verify_user(
                UserVerification::parse(options.user_verification.as_deref()),
                pin,
            )
            .await?;
        let credential = authenticator::get_assertion(&checked, options, &credential, uv)?;
        Ok(ResponseBody::Get { credential })
    }

    /// Decides the UV flag: verifies the PIN when one is given; refuses when verification is required but
    /// impossible or failed.
    async fn verify_user(
        &self,
        wanted: UserVerification,
        pin: Option<&Pin>,
    ) -> Result<bool, ErrorBody> {
        let wanted = if self.service.always_verify.load(Ordering::Relaxed) {
            UserVerification::Required
        } else {
            wanted
        };
        let Some(pin) = pin else {
            return match wanted {
                UserVerification::Required => Err(e(
                    ErrorName::NotAllowedError,
                    "user verification is required: pass the device PIN",
                )),
                _ => Ok(false),
            };
        };
        match self.check_pin(pin).await? {
            Some(_) => Ok(true),
            None if wanted == UserVerification::Required => Err(e(
                ErrorName::NotAllowedError,
                "user verification is required but no PIN is set on this device (run `passmesh pin set`)",
            )),
            None => Ok(false),
        }
    }

    /// The verified hash when the PIN is right, `None` when no PIN is set; an error when it is wrong or locked.
    async fn check_pin(&self, pin: &Pin) -> Result<Option<PinHash>, ErrorBody> {
        let hash = match self.vault.pin_begin().await {
            Ok(PinCheck::NotSet) => return Ok(None),
            Ok(PinCheck::Verify(hash)) => hash,
            Err(vault::Error::Pin(p @ pin::Error::Locked { .. })) => {
                return Err(e(ErrorName::NotAllowedError, p.to_string()));
            }
            Err(other) => return Err(internal(other)),
        };
        let candidate = pin.clone();
        let verified = hash.clone();
        let ok = self
            .service
            .hash_off_runtime(move || verified.verify(candidate.as_str()))
            .await?
            .map_err(|p| e(ErrorName::UnknownError, p.to_string()))?;
        self.vault.pin_finish(ok).await.map_err(internal)?;
        if ok {
            return Ok(Some(hash));
        }
        let left = self
            .vault
            .status()
            .await
            .map(|s| s.pin_attempts_left)
            .unwrap_or(0);
        Err(e(
            ErrorName::NotAllowedError,
            if left == 0 {
                "wrong PIN; the PIN is now locked".to_owned()
            } else {
                format!("wrong PIN; {left} attempt(s) left")
            },
        ))
    }

    async fn set_pin(&self, new: &Pin, current: Option<&Pin>) -> Result<ResponseBody, ErrorBody> {
        pin::validate(new.as_str()).map_err(|p| e(ErrorName::ConstraintError, p.to_string()))?;
        let status = self.vault.status().await.map_err(internal)?;
        let previous = if status.pin_set {
            let Some(current) = current else {
                return Err(e(
                    ErrorName::NotAllowedError,
                    "a PIN is already set: the current PIN is needed to change it",
                ));
            };
            self.check_pin(current).await?
        } else {
            None
        };
        let new = new.clone();
        let hash = self
            .service
            .hash_off_runtime(move || PinHash::new(new.as_str()))
            .await?
            .map_err(|p| e(ErrorName::ConstraintError, p.to_string()))?;
        self.vault
            .set_pin(hash, previous)
            .await
            .map_err(|err| match err {
                vault::Error::PinChanged => e(ErrorName::InvalidStateError, err.to_string()),
                other => internal(other),
            })?;
        tracing::info!("the device PIN was set");
        Ok(ResponseBody::SetPin {})
    }
}

impl Handler for Service {
    async fn handle(
        &self,
        caller: &Caller,
        request: RequestBody,
    ) -> Result<ResponseBody, ErrorBody> {
        self.handle_request(caller, request).await
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

/// Opens the keystore and the vault(s), then serves the socket until `shutdown` is cancelled. In user mode
/// that is the invoking user's vault; in system mode every user vault already on disk, the others on first
/// use. `ready` is called once the socket accepts connections.
/// `reloads` brings configuration reloads (SIGHUP).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Reload>,
    ready: impl FnOnce(&Config),
) -> Result<(), Error> {
    match config.mode {
        Mode::User => run_user(config, shutdown, reloads, ready).await,
        Mode::System => run_system(config, shutdown, reloads, ready).await,
    }
}

async fn run_system(
    config: Config,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Reload>,
    ready: impl FnOnce(&Config),
) -> Result<(), Error> {
    // Held while the daemon runs: `passmesh keystore … --system` takes it too and so never re-seals under us.
    let machine = crate::layout::machine_dir(&config.state_dir);
    crate::layout::private_dir(&machine).map_err(|source| Error::StateDir {
        path: machine.clone(),
        source,
    })?;
    let _machine_lock = custody::migrate::lock_machine(&machine).map_err(Error::MachineInUse)?;
    let identity = {
        let custody = Custody::new(config.keystore, config.tpm.clone());
        let dir = machine.clone();
        tokio::task::spawn_blocking(move || custody.machine_identity(&dir))
            .await
            .map_err(|_| Error::Interrupted("opening the machine identity"))?
            .map_err(|source| match source {
                custody::Error::Keystore(k) => Error::Keystore(k),
                source => Error::Machine {
                    path: machine.clone(),
                    source,
                },
            })?
    };
    let users = Arc::new(Users::new(&config, identity.clone()));
    {
        let users = Arc::clone(&users);
        tokio::task::spawn_blocking(move || users.open_existing())
            .await
            .map_err(|_| Error::Interrupted("opening the user vaults"))??;
    }
    tracing::info!(
        vaults = users.count(),
        max = config.max_vaults,
        device = %identity.peer_id(),
        "system mode: one vault per local uid"
    );
    let (network, pairing) = if config.network.enabled {
        let (network, pairing) = start_network(&config, &identity, users.take_pending()).await?;
        users.go_live(network.carried());
        (Some(network), pairing)
    } else {
        (None, None)
    };
    let service = Arc::new(Service {
        pairing,
        vaults: Vaults::Multi(Arc::clone(&users)),
        hashing: tokio::sync::Semaphore::new(PARALLEL_HASHES),
        always_verify: AtomicBool::new(config.pin.always_required),
        network: network.as_ref().map(crate::sync::Network::handle),
        network_off: None,
    });
    let socket_err = |source| Error::Socket {
        path: config.socket.clone(),
        source,
    };
    check_socket_dir(&config.socket, 0o755).map_err(socket_err)?;
    // Every local user connects; the kernel-reported uid picks the vault.
    let listener =
        passmesh_ipc::bind_with_modes(&config.socket, 0o755, 0o666).map_err(socket_err)?;
    let ipc_config = passmesh_ipc::Config {
        // Callers connect per request or per browser session; an idle connection only holds a slot.
        idle_timeout: std::time::Duration::from_secs(60),
        // Every user shares the socket's slots: none may take them all.
        max_connections_per_uid: CONNECTIONS_PER_UID,
        ..passmesh_ipc::Config::default()
    };
    tracing::info!(socket = %config.socket.display(), state = %config.state_dir.display(), "serving");
    let reloader = spawn_reloader(Arc::clone(&service), config.clone(), reloads);
    ready(&config);
    passmesh_ipc::serve(listener, service, ipc_config, shutdown).await;
    reloader.abort();
    let _ = reloader.await;
    let _ = std::fs::remove_file(&config.socket);
    if let Some(n) = network {
        n.shutdown().await;
    }
    for thread in users.close() {
        if thread.join().is_err() {
            tracing::error!("a vault thread panicked");
        }
    }
    Ok(())
}

/// Starts the transport host carrying `vaults`, and the pairing service on it.
async fn start_network(
    config: &Config,
    identity: &passmesh_transport::Identity,
    vaults: Vec<crate::sync::Attach>,
) -> Result<(crate::sync::Network, Option<crate::pair::Pairing>), Error> {
    let mut network = crate::sync::start(&config.network, identity, vaults).await?;
    let pairing = network.take_pair_requests().map(|requests| {
        crate::pair::Pairing::start(
            network.handle(),
            network.carried(),
            identity.clone(),
            requests,
        )
    });
    Ok((network, pairing))
}

/// System mode: connections one uid may hold at once (of the socket's 128).
const CONNECTIONS_PER_UID: usize = 16;

async fn run_user(
    config: Config,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Reload>,
    ready: impl FnOnce(&Config),
) -> Result<(), Error> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = crate::layout::user_dir(&config.state_dir, uid);
    let custody = Custody::new(config.keystore, config.tpm.clone());
    let (running, report) =
        vault::open(&dir, &custody, config.pin).map_err(|source| match source {
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
    let keystore = report.backend.name();
    if let Some(t) = &report.tpm {
        tracing::info!(
            manufacturer = %t.manufacturer,
            firmware = %t.firmware,
            pcrs = %keystore::list_pcrs(report.pcrs.as_deref().unwrap_or_default()),
            "vault keys are sealed by the TPM"
        );
    }
    let vault::Running {
        handle,
        thread,
        identity,
        vault_id,
        outbound,
        paired,
        addrs,
    } = running;
    let (network, pairing) = if config.network.enabled {
        let attach = crate::sync::Attach {
            slot: uid,
            vault_id,
            paired,
            addrs,
            handle: handle.clone(),
            outbound,
        };
        let (network, pairing) = start_network(&config, &identity, vec![attach]).await?;
        (Some(network), pairing)
    } else {
        drop(outbound);
        (None, None)
    };
    let service = Arc::new(Service {
        pairing,
        vaults: Vaults::Single {
            uid,
            vault: Arc::new(UserVault {
                handle,
                keystore: report,
            }),
        },
        hashing: tokio::sync::Semaphore::new(PARALLEL_HASHES),
        always_verify: AtomicBool::new(config.pin.always_required),
        network: network.as_ref().map(|n| n.handle()),
        network_off: None,
    });
    let socket_err = |source| Error::Socket {
        path: config.socket.clone(),
        source,
    };
    check_socket_dir(&config.socket, 0o700).map_err(socket_err)?;
    let listener = passmesh_ipc::bind(&config.socket).map_err(socket_err)?;
    tracing::info!(socket = %config.socket.display(), state = %config.state_dir.display(), keystore, "serving");
    ready(&config);
    let ipc_config = passmesh_ipc::Config {
        // Callers connect per request or per browser session; an idle connection only holds a slot.
        idle_timeout: std::time::Duration::from_secs(60),
        ..passmesh_ipc::Config::default()
    };
    let reloader = spawn_reloader(Arc::clone(&service), config.clone(), reloads);
    passmesh_ipc::serve(listener, service.clone(), ipc_config, shutdown).await;
    reloader.abort();
    let _ = reloader.await;
    let _ = std::fs::remove_file(&config.socket);
    if let Some(n) = network {
        n.shutdown().await;
    }
    // Dropping the last handle stops the actor after a final flush.
    drop(service);
    if thread.join().is_err() {
        tracing::error!("the vault thread panicked");
    }
    Ok(())
}
