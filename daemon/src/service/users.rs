//! The user registry: which vault serves which caller. Every request is served from the vault of the caller's
//! kernel-reported uid (SO_PEERCRED), never from anything in the request.
//!
//! One registry for both modes. User mode is the one-uid case: the daemon's own vault, opened before the
//! socket, and every other uid refused. System mode keeps one vault per uid under `users/<uid>`, opening those
//! on disk at start and the others on their uid's first request (one at a time, at most `max_vaults`), all of
//! them this device's under the machine identity and carried by the one transport host.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use passmesh_ipc::{ErrorBody, ErrorName};
use passmesh_transport::Identity;

use super::{Error, e};
use crate::config::Config;
use crate::custody::Custody;
use crate::net::router::{Attach, Carried, Routed};
use crate::vault;

/// One user's open vault.
#[derive(Debug)]
pub struct UserVault {
    /// Talk to the vault through this.
    pub handle: vault::Handle,
    /// What opening it found out about its keystore.
    pub keystore: vault::KeystoreReport,
}

/// The vaults of this daemon, by uid.
#[derive(Debug)]
pub struct Users {
    /// The libp2p identity every vault here is this device's under.
    identity: Identity,
    /// User mode: the one uid served. System mode: `None`, every local uid has a vault of its own.
    only: Option<u32>,
    state_dir: PathBuf,
    custody: Custody,
    /// The only lock of the registry's state; never held across an await or while a vault opens.
    state: Mutex<Registry>,
    /// Serialises vault creation (a keystore seal and a store open each) and reloads: one at a time.
    creating: tokio::sync::Mutex<()>,
    /// Automatic backups (`[backup]`), if configured.
    backups: Option<crate::config::Backups>,
}

#[derive(Debug)]
struct Registry {
    open: HashMap<u32, Arc<UserVault>>,
    /// The vaults' actor threads, joined at shutdown.
    threads: Vec<JoinHandle<()>>,
    /// For vaults opened from now on (a reload changes it).
    rules: vault::Rules,
    max: usize,
    network: Network,
}

/// A vault just recorded, and, if the network already runs, the outbound task it still needs started.
type Kept = (Arc<UserVault>, Option<(Carried, Routed)>);

/// How a vault reaches the network.
#[derive(Debug)]
enum Network {
    /// Networking is off: nothing drains what a vault wants sent.
    Off,
    /// Opened before the host started: carried from its start.
    Pending(Vec<Attach>),
    /// The host runs: attached as soon as opened.
    Live(Carried),
}

impl Users {
    fn new(config: &Config, identity: Identity, only: Option<u32>) -> Users {
        Users {
            identity,
            only,
            state_dir: config.state_dir.clone(),
            custody: Custody::new(config.keystore, config.tpm.clone()),
            state: Mutex::new(Registry {
                open: HashMap::new(),
                threads: Vec::new(),
                rules: config.rules(),
                max: config.max_vaults,
                network: if config.network.enabled {
                    Network::Pending(Vec::new())
                } else {
                    Network::Off
                },
            }),
            creating: tokio::sync::Mutex::new(()),
            backups: config.backup.clone(),
        }
    }

    /// Where the automatic backups of `uid`'s vault go: `[backup] dir` in user mode, `<dir>/<uid>` in system
    /// mode.
    pub fn backup_dir(&self, uid: u32) -> Option<PathBuf> {
        let b = self.backups.as_ref()?;
        Some(match self.only {
            Some(_) => b.dir.clone(),
            None => b.dir.join(uid.to_string()),
        })
    }

    /// User mode: the registry of the one vault of `uid`, opened already.
    pub fn single(
        config: &Config,
        uid: u32,
        running: vault::Running,
        keystore: vault::KeystoreReport,
    ) -> Users {
        let users = Users::new(config, running.identity.clone(), Some(uid));
        users.keep(uid, running, keystore);
        users
    }

    /// System mode: the registry of every local user's vault under the machine `identity`. Opens every vault
    /// already under `users/` so each is usable before its user connects; a vault that cannot be opened is
    /// logged and left to its user's next request. Blocking (keystore, stores).
    pub fn system(config: &Config, identity: Identity) -> Result<Users, Error> {
        let users = Users::new(config, identity, None);
        let dir = users.state_dir.join("users");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(users),
            Err(source) => return Err(Error::StateDir { path: dir, source }),
        };
        let mut uids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        uids.sort_unstable();
        for uid in uids {
            let (count, max) = users.count_and_max();
            if count >= max {
                tracing::error!(
                    max,
                    "more user vaults on disk than [daemon] max_vaults: the rest are not opened"
                );
                break;
            }
            match users.open_blocking(uid) {
                Ok(_) => {}
                // Without the keystore no vault opens: that is the machine's problem, not one user's.
                Err(vault::Error::Keystore(k)) => return Err(Error::Keystore(k)),
                Err(err) => {
                    tracing::error!(uid, error = %err, "cannot open this user's vault; will retry on their next request");
                }
            }
        }
        Ok(users)
    }

    fn state(&self) -> MutexGuard<'_, Registry> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this is system mode's registry (one vault per local uid).
    pub fn is_system(&self) -> bool {
        self.only.is_none()
    }

    /// The identity the vaults are this device's under.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// How many vaults are open.
    pub fn count(&self) -> usize {
        self.state().open.len()
    }

    fn count_and_max(&self) -> (usize, usize) {
        let st = self.state();
        (st.open.len(), st.max)
    }

    /// Every open vault's handle.
    pub fn handles(&self) -> Vec<vault::Handle> {
        self.state()
            .open
            .values()
            .map(|v| v.handle.clone())
            .collect()
    }

    /// Records an opened vault; returns where to attach it if the network is already running.
    fn keep(&self, uid: u32, running: vault::Running, keystore: vault::KeystoreReport) -> Kept {
        if let (Some(dir), Some(b)) = (self.backup_dir(uid), &self.backups) {
            let plan = super::backups::Plan {
                dir,
                keep: b.keep,
                device: crate::ids::device_id(&self.identity.peer_id()),
                owned: self.only.is_none(),
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(super::backups::run(
                        running.handle.downgrade(),
                        running.changes.clone(),
                        plan,
                    ));
                }
                Err(_) => tracing::warn!(uid, "no runtime: automatic backups are off"),
            }
        }
        let attach = Attach {
            slot: uid,
            vault_id: running.vault_id,
            paired: running.paired,
            addrs: running.addrs,
            handle: running.handle.clone(),
            outbound: running.outbound,
        };
        let opened = Arc::new(UserVault {
            handle: running.handle,
            keystore,
        });
        let mut st = self.state();
        // Routed before anyone can see the vault: another user's pairing checks the routes for its id.
        let live = match &mut st.network {
            Network::Off => None,
            Network::Pending(list) => {
                list.push(attach);
                None
            }
            Network::Live(carried) => Some((carried.clone(), carried.route(attach))),
        };
        st.threads.push(running.thread);
        st.open.insert(uid, Arc::clone(&opened));
        (opened, live)
    }

    /// Opens (creating on first use) the vault of `uid` and keeps it. Blocking: the keystore and the store.
    fn open_blocking(&self, uid: u32) -> Result<Kept, vault::Error> {
        let dir = crate::layout::user_dir(&self.state_dir, uid);
        let rules = self.state().rules;
        let (running, report) = vault::open_seeded(
            &dir,
            &self.custody,
            rules,
            None,
            Some(self.identity.clone()),
        )?;
        if let Some(w) = &report.warning {
            tracing::warn!(uid, "{w}");
        }
        Ok(self.keep(uid, running, report))
    }

    /// The vault of `uid`, opened (and created on first use) if this daemon serves that uid.
    pub async fn for_uid(self: &Arc<Users>, uid: u32) -> Result<Arc<UserVault>, ErrorBody> {
        if let Some(served) = self.only
            && served != uid
        {
            tracing::warn!(caller = uid, served, "refused a caller of another uid");
            return Err(e(
                ErrorName::NotAllowedError,
                format!("this passmeshd serves uid {served}; requests from uid {uid} are refused"),
            ));
        }
        if let Some(v) = self.state().open.get(&uid).cloned() {
            return Ok(v);
        }
        let _turn = self.creating.lock().await;
        let (count, max) = {
            let st = self.state();
            if let Some(v) = st.open.get(&uid).cloned() {
                return Ok(v);
            }
            (st.open.len(), st.max)
        };
        if count >= max {
            tracing::warn!(
                uid,
                max,
                "refused a new user vault: [daemon] max_vaults reached"
            );
            return Err(e(
                ErrorName::ConstraintError,
                format!(
                    "this passmeshd keeps at most {max} user vaults ([daemon] max_vaults) and has no room for yours: ask the administrator"
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
        let (vault, live) = opened.map_err(|err| {
            tracing::error!(uid, error = %err, "cannot open a user's vault");
            e(
                ErrorName::UnknownError,
                "cannot open your vault (the daemon's log says why)",
            )
        })?;
        if let Some((carried, routed)) = live {
            carried.start(routed).await;
        }
        Ok(vault)
    }

    /// Waits until no vault is being opened and keeps others from opening until the guard drops (a reload
    /// changes what they open with).
    pub async fn hold_openings(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.creating.lock().await
    }

    /// The rules for vaults opened from now on.
    pub fn set_rules(&self, rules: vault::Rules) {
        self.state().rules = rules;
    }

    /// At most this many vaults from now on (system mode).
    pub fn set_max(&self, max: usize) {
        self.state().max = max;
    }

    /// The vaults opened so far, for the host to carry from its start.
    pub fn take_pending(&self) -> Vec<Attach> {
        match &mut self.state().network {
            Network::Pending(list) => std::mem::take(list),
            Network::Off | Network::Live(_) => Vec::new(),
        }
    }

    /// From now on, vaults opened are attached to `carried` at once. Called before the socket serves, so no
    /// vault is opened between [`Users::take_pending`] and this.
    pub fn go_live(&self, carried: Carried) {
        self.state().network = Network::Live(carried);
    }

    /// Lets go of every vault (each actor stops after a final flush once no request holds its handle) and
    /// hands out their threads to join.
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        let mut st = self.state();
        st.open.clear();
        std::mem::take(&mut st.threads)
    }
}
