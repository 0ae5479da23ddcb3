//! The socket request handler and the daemon's run loop.
//!
//! [`Service`] authorises each caller by its kernel-reported uid, picks that uid's vault from the user
//! registry, runs the WebAuthn client and authenticator steps and talks to the vault actor.
//!
//! Modules:
//! - `users`: the user registry (one uid in user mode, one vault per local uid in system mode).
//! - `requests`: the request dispatch and the requests that are not WebAuthn (list, delete, rename, status,
//!   pairing).
//! - `webauthn`: `create` and `get`, user verification with the PIN, setting the PIN.
//! - `recovery`: setting the recovery key, backups to and restores from callers (in chunks).
//! - `backups`: the automatic backups of one vault (`[backup] dir`).
//! - `run`: start-up (keystore, vaults, network, socket), reload (SIGHUP) and shutdown: one path for both
//!   modes.

mod backups;
mod recovery;
mod requests;
mod run;
mod users;
mod webauthn;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use passmesh_ipc::{Caller, ErrorBody, ErrorName, Handler, RequestBody, ResponseBody};

pub use run::{Reload, run};

use crate::custody::{self, keystore};
use crate::origin;
use crate::vault;
use users::Users;

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

/// The socket request handler.
#[derive(Debug)]
pub struct Service {
    users: Arc<Users>,
    /// Bounds concurrent argon2 runs (19 MiB and tens of ms each), whoever asks for them.
    hashing: tokio::sync::Semaphore,
    /// The administrator requires user verification for everything.
    always_verify: AtomicBool,
    /// The transport host, when networking is on.
    network: Option<passmesh_transport::Handle>,
    /// Pairing by code, when networking is on.
    pairing: Option<crate::net::pairing::Pairing>,
    /// Why networking is off, when the mode rather than the config turned it off (for `status`).
    network_off: Option<&'static str>,
    /// Backups on their way to or from callers.
    transfers: recovery::Transfers,
    /// Bounds backup sealing and restoring (argon2id at 64 MiB, a whole vault): one at a time, apart from PIN
    /// hashing, so no user's restore holds up another's sign-in.
    recovering: tokio::sync::Semaphore,
}

/// argon2 runs (and backup sealing or opening) at once, at most.
const PARALLEL_HASHES: usize = 2;

impl Service {
    /// Runs backup work on the blocking pool, one at a time.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ErrorBody> {
        let _permit = self
            .recovering
            .acquire()
            .await
            .map_err(|_| e(ErrorName::UnknownError, "shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| e(ErrorName::UnknownError, "the backup work was interrupted"))
    }

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
pub(crate) struct Session<'a> {
    uid: u32,
    vault: &'a vault::Handle,
    keystore: &'a vault::KeystoreReport,
    service: &'a Service,
}

pub(crate) fn e(name: ErrorName, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(name, message)
}

pub(crate) fn internal(err: vault::Error) -> ErrorBody {
    tracing::error!(error = %err, "request failed inside the daemon");
    e(ErrorName::UnknownError, err.to_string())
}

pub(crate) fn pair_error(err: crate::net::pairing::Error) -> ErrorBody {
    use crate::net::pairing::Error as P;
    let name = match &err {
        P::Code(_) | P::Expired => ErrorName::DataError,
        P::Network(_) => ErrorName::NotSupportedError,
        _ => ErrorName::InvalidStateError,
    };
    e(name, err.to_string())
}

pub(crate) fn security(err: origin::Error) -> ErrorBody {
    e(ErrorName::SecurityError, err.to_string())
}

impl Service {
    /// Handles one request from `caller`.
    pub async fn handle_request(
        &self,
        caller: &Caller,
        request: RequestBody,
    ) -> Result<ResponseBody, ErrorBody> {
        let user = self.users.for_uid(caller.uid).await?;
        let s = Session {
            uid: caller.uid,
            vault: &user.handle,
            keystore: &user.keystore,
            service: self,
        };
        s.handle(request).await
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
