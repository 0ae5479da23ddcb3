//! One user's vault on this device: the actor that owns the CRDT document, its sled store, the PIN state and
//! the replication state, and the [`Handle`] the rest of the daemon reaches it through.
//!
//! The actor runs on its own OS thread because every write ends in an fsync; async callers reach it through a
//! [`Handle`] over a bounded channel and get answers on oneshot channels. Writes are group-committed: the actor
//! drains what is queued, applies it, persists one incremental chunk with one flush, and only then answers —
//! so no caller ever sees (or is acknowledged for) a change that is not on disk.
//!
//! Modules:
//! - `open`: opening or creating a vault directory ([`open`], [`open_seeded`]) and starting the actor.
//! - `actor`: the actor's loop: batches, group commit, recovery from a failed write, the command dispatch.
//! - `passkeys`: the passkey commands (insert, find for `get`, list, delete, rename) and the signing-key cache.
//! - `membership`: the device table: this device's entry, adding devices, what a joining device gets, adopting
//!   another vault.
//! - `trash`: the trash (list, restore, purge, purging what expired) and the audit log.
//! - `recovery`: the recovery key, what a backup holds, restoring this device from one.
//! - `pin_state`: the PIN commands (an attempt is counted on disk before the check; setting the PIN).
//! - [`replication`]: sans-IO sync with the paired devices and the BS flag.

mod actor;
mod membership;
mod open;
mod passkeys;
mod pin_state;
mod recovery;
pub mod replication;
mod trash;

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;

use passmesh_crdt::{CredentialId, Device, DeviceId, Epoch, NewPasskey, PinKey, VaultId};
use passmesh_ipc::{AuditInfo, OldKeysInfo, PasskeyInfo, TrashedPasskey};
use passmesh_transport::{Identity, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

pub use membership::host_name;
pub use open::{open, open_seeded};
pub use recovery::RecoverySet;

use crate::authenticator::Credential;
use crate::custody::keystore::{self, Backend, tpm};
use crate::names::{DeviceName, Label};
use crate::pin::{self, PinHash, Policy};
use crate::store;

/// What the configuration decides for a vault: the PIN policy, and how long a deleted passkey stays in the
/// trash before the vault purges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Attempt limit and lockout.
    pub pin: Policy,
    /// Keeping time of the trash (`[vault] trash_days`).
    pub trash: std::time::Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            pin: Policy::default(),
            trash: std::time::Duration::from_secs(
                u64::from(crate::config::DEFAULT_TRASH_DAYS) * 86_400,
            ),
        }
    }
}

/// Queue depth of the actor's inbox; senders wait when it is full.
const INBOX: usize = 256;
/// What a purge of the trash did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Passkeys purged (with an approval: also those other devices took away that it confirmed).
    pub count: u64,
    /// The new key epoch (none if nothing was purged).
    pub epoch: Option<Epoch>,
    /// The purge was approved with the PIN (see [`passmesh_crdt::approval`]).
    pub approved: bool,
}

/// The approval key of a new PIN and, when it replaces one, of the previous PIN (see
/// [`passmesh_crdt::approval`]).
#[derive(Debug)]
pub struct PinKeys {
    /// The new PIN's key.
    pub new: PinKey,
    /// The replaced PIN's key.
    pub previous: Option<PinKey>,
}

/// Queue depth from the actor to the network task; sync is ping-pong (at most one message in flight per peer),
/// so this only fills if the network task stalls, and then the actor waits.
pub const OUTBOX: usize = 1024;

/// Failures of the vault actor.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The keystore could not seal or unseal the keyring.
    #[error(transparent)]
    Keystore(#[from] keystore::Error),
    /// The vault document failed (damaged, or a key mismatch).
    #[error("vault: {0}")]
    Vault(#[from] passmesh_crdt::Error),
    /// The stored keyring cannot be parsed.
    #[error("the sealed keyring is damaged")]
    Keyring,
    /// A PIN operation failed.
    #[error(transparent)]
    Pin(#[from] pin::Error),
    /// The actor has stopped (daemon shutting down).
    #[error("the vault is shut down")]
    Stopped,
    /// The PIN changed between verifying it and replacing it.
    #[error("the PIN was changed concurrently; try again")]
    PinChanged,
    /// A persisted write failed; the change was not acknowledged.
    #[error("could not persist the change: {0}")]
    Persist(Arc<Error>),
    /// The PIN state cannot be encoded.
    #[error("the PIN state cannot be encoded")]
    PinState,
    /// This device has no entry in its own vault's device table.
    #[error("this device is not in the device table")]
    NotAMember,
    /// The directory already holds another vault than the one asked for.
    #[error("this state directory already holds another vault")]
    OtherVault,
    /// The actor's thread cannot be started.
    #[error("cannot start the vault thread: {0}")]
    Thread(std::io::Error),
    /// Joining another vault would cut this device off its paired devices.
    #[error("this device is already paired with {0} other devices")]
    AlreadyPaired(u64),
    /// A device cannot remove itself.
    #[error(
        "this is the device you are using: remove it from another of your devices \
         (`passmesh device remove ID` there); to stop using it, stop passmeshd here and delete its state directory"
    )]
    RemoveSelf,
    /// Joining another vault would lose what only this device's document holds.
    #[error(
        "this device keeps passkeys another device took away (restorable with `passmesh trash restore`) or records \
         it cannot read: joining another vault would lose them; restore or purge them first"
    )]
    WouldLose,
    /// `recovery setup` on a vault that has a recovery key.
    #[error("recovery is already set up: `passmesh recovery rotate` replaces the phrase")]
    RecoveryExists,
    /// The vault has no recovery key.
    #[error("recovery is not set up: run `passmesh recovery setup` first")]
    NoRecovery,
    /// Restoring would drop this device's passkeys (or its trash, or what it keeps restorable).
    #[error(
        "this device already holds {0} passkeys (or a trash, or passkeys kept restorable): restore on a device \
         with an empty vault (a new device, or stop passmeshd and move its state directory away)"
    )]
    RestoreNotEmpty(u64),
    /// The backup decrypts but what it holds is not usable.
    #[error("the backup cannot be restored: {0}")]
    BackupContent(&'static str),
}

/// The vault's recovery keys and this device's backups, for `status`.
#[derive(Debug, Clone, Default)]
pub struct RecoveryStatus {
    /// Each recovery key's member id and when it was set (ms since the Unix epoch).
    pub keys: Vec<(DeviceId, u64)>,
    /// When this device last wrote a backup, and the file's name.
    pub last_backup: Option<(u64, String)>,
    /// When this device was restored from a backup.
    pub restored_at_ms: Option<u64>,
    /// The devices this device trusts without a signature chain.
    pub anchors: Vec<DeviceId>,
}

/// What a backup is made of (see [`crate::backup`]).
#[derive(Debug)]
pub struct Snapshot {
    /// What the file holds.
    pub payload: crate::backup::Payload,
    /// The x25519 keys of the vault's recovery keys: the file's recipients.
    pub recipients: Vec<[u8; 32]>,
    /// The document's heads (an automatic backup is skipped while they are unchanged).
    pub heads: Vec<[u8; 32]>,
    /// Passkeys in it.
    pub passkeys: u64,
}

/// What joining a vault did with this device's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Passkeys of this device moved into the joined vault.
    pub merged: u64,
    /// The inviter holds this very vault: nothing was replaced, the two devices now know each other.
    pub same_vault: bool,
}

/// What a restore brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The vault's id.
    pub vault_id: VaultId,
    /// Its passkeys.
    pub passkeys: u64,
    /// Its other devices (still members: remove the lost ones).
    pub devices: u64,
    /// When the backup was made.
    pub made_at_ms: u64,
    /// Which device made it.
    pub made_by: DeviceId,
    /// The recovery key that opened it.
    pub recovery: DeviceId,
}

/// A device-table entry as `device list` shows it.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    /// The entry and its standing.
    pub member: passmesh_crdt::Member,
    /// Whether it is this device.
    pub this_device: bool,
    /// Whether it is connected now.
    pub connected: bool,
    /// When a sync message from it was last applied (ms since the Unix epoch).
    pub last_seen_ms: Option<u64>,
    /// The one key epoch it keeps, as it last said (it destroyed every older one); `None` while it keeps several.
    pub key_epoch: Option<Epoch>,
}

/// A device-table entry with the addresses this device knows for it (handed to a joining device).
#[derive(Debug, Clone)]
pub struct Member {
    /// The entry.
    pub device: Device,
    /// Multiaddrs to dial it at (without `/p2p/`), as far as this device knows.
    pub addrs: Vec<String>,
}

/// Snapshot of the vault for `status`.
#[derive(Debug, Clone)]
pub struct Status {
    /// The vault id (hex).
    pub vault_id: String,
    /// Passkeys in the vault.
    pub passkeys: u64,
    /// Whether a PIN is set.
    pub pin_set: bool,
    /// PIN attempts left.
    pub pin_attempts_left: u32,
    /// Remaining lockout, in ms.
    pub pin_locked_for_ms: Option<u64>,
    /// This device's id in the device table (its peer id).
    pub device_id: String,
    /// The other devices of the vault.
    pub peers: Vec<PeerStatus>,
    /// Old vault keys this device keeps, and why (`None`: it keeps the current one alone).
    pub old_keys: Option<OldKeysInfo>,
    /// Recovery keys and backups.
    pub recovery: RecoveryStatus,
}

/// What `status` shows about one paired device.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Its device id (peer id).
    pub device_id: String,
    /// Its name from the device table.
    pub name: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// Its address on the current (or last) connection.
    pub address: Option<String>,
    /// When a sync message from it was last applied (ms since the Unix epoch).
    pub last_sync_ms: Option<u64>,
    /// Changes of this replica it is not known to hold yet.
    pub pending_changes: u64,
    /// Sync bytes sent to it since the daemon started.
    pub bytes_sent: u64,
    /// Sync bytes received from it since the daemon started.
    pub bytes_received: u64,
}

/// What the vault actor asks the network task to do.
#[derive(Debug)]
pub enum Outbound {
    /// Send a sync message to a paired peer. Only generated from state that is on disk.
    Send {
        /// The peer.
        peer: PeerId,
        /// The crdt sync message.
        bytes: Vec<u8>,
    },
    /// The vault's id and its paired set (the device table minus this device) are now these. The id changes
    /// only when the device joins another vault.
    Paired {
        /// The vault's id, which frames its sync messages on the wire.
        vault: VaultId,
        /// The paired peers.
        peers: HashSet<PeerId>,
    },
    /// The peer sent a message that is not a sync message of this vault: drop its connection.
    Drop(PeerId),
}

/// What the network task tells the vault actor about a peer.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A paired peer connected: the exchange starts from the persisted sync state.
    Connected {
        /// The peer.
        peer: PeerId,
        /// Its address.
        addr: String,
    },
    /// The peer's last connection closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A sync message arrived from a paired peer.
    Message {
        /// The sender.
        peer: PeerId,
        /// The message, not yet parsed.
        bytes: Vec<u8>,
    },
    /// A message to the peer was lost: start the exchange over from the persisted state.
    Reset {
        /// The peer.
        peer: PeerId,
    },
}

/// What a new device needs to join the vault (handed over by pairing). `Debug` leaves the keyring out.
pub struct JoinInfo {
    /// The vault's id.
    pub vault_id: VaultId,
    /// The encoded keyring (secret).
    pub keyring: Zeroizing<Vec<u8>>,
    /// The inviting device's entry in the device table.
    pub device: Device,
    /// The devices the inviting device trusts without a signature chain (the joiner pins them too).
    pub anchors: Vec<DeviceId>,
    /// The first PIN keys whose approvals the inviting device trusts (the joiner trusts them too, see
    /// [`Handle::trust_pin_keys`]).
    pub pin_keys: Vec<(DeviceId, [u8; 32])>,
}

impl std::fmt::Debug for JoinInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinInfo")
            .field("vault_id", &self.vault_id)
            .field("keyring", &format_args!(".."))
            .field("device", &self.device)
            .finish()
    }
}

/// Outcome of starting a PIN check.
#[derive(Debug)]
pub enum PinCheck {
    /// No PIN is set: nothing to verify against (no attempt was counted).
    NotSet,
    /// The attempt was counted; verify against this hash and report with [`Handle::pin_finish`].
    Verify(PinHash),
}

type Reply<T> = oneshot::Sender<T>;

/// This device's empty vault is to become a replica of another (joining it): that vault's id and encoded
/// keyring, its members, and this device's entry; with `check_only`, only whether that is allowed.
struct Adoption {
    vault_id: VaultId,
    keyring: Zeroizing<Vec<u8>>,
    members: Vec<Member>,
    me: Device,
    anchors: Vec<DeviceId>,
    check_only: bool,
}

enum Command {
    SetRules {
        rules: Rules,
        reply: Reply<()>,
    },
    AnyExcluded {
        rp_id: String,
        ids: Vec<CredentialId>,
        reply: Reply<bool>,
    },
    Insert {
        passkey: Box<NewPasskey>,
        reply: Reply<Result<(), Error>>,
    },
    FindForGet {
        rp_id: String,
        allow: Vec<CredentialId>,
        reply: Reply<Option<Credential>>,
    },
    List {
        rp_id: Option<String>,
        offset: u64,
        limit: usize,
        reply: Reply<(Vec<PasskeyInfo>, u64)>,
    },
    Delete {
        credential_id: CredentialId,
        reply: Reply<Result<bool, Error>>,
    },
    Rename {
        credential_id: CredentialId,
        label: Label,
        reply: Reply<Result<bool, Error>>,
    },
    TrashList {
        offset: u64,
        limit: usize,
        reply: Reply<(Vec<TrashedPasskey>, u64)>,
    },
    TrashRestore {
        credential_id: CredentialId,
        reply: Reply<Result<bool, Error>>,
    },
    TrashPurge {
        credential_id: Option<CredentialId>,
        approval: Option<Box<PinKey>>,
        reply: Reply<Result<Purged, Error>>,
    },
    Audit {
        offset: u64,
        limit: usize,
        reply: Reply<(Vec<AuditInfo>, u64)>,
    },
    /// Time passed: purge what stayed in the trash too long.
    Tick,
    Status {
        reply: Reply<Status>,
    },
    PinBegin {
        reply: Reply<Result<PinCheck, Error>>,
    },
    Peer(PeerEvent),
    AddDevice {
        device: Box<Device>,
        addrs: Vec<String>,
        reply: Reply<Result<(), Error>>,
    },
    JoinInfo {
        reply: Reply<Result<JoinInfo, Error>>,
    },
    Members {
        reply: Reply<Vec<Member>>,
    },
    Adopt {
        adoption: Box<Adoption>,
        reply: Reply<Result<Adopted, Error>>,
    },
    PinFinish {
        ok: bool,
        reply: Reply<Result<(), Error>>,
    },
    SetPin {
        hash: PinHash,
        previous: Option<PinHash>,
        keys: Option<Box<PinKeys>>,
        reply: Reply<Result<(), Error>>,
    },
    Devices {
        reply: Reply<Vec<DeviceEntry>>,
    },
    RenameDevice {
        id: DeviceId,
        name: DeviceName,
        reply: Reply<Result<(), Error>>,
    },
    RemoveDevice {
        id: DeviceId,
        reply: Reply<Result<Option<Epoch>, Error>>,
    },
    SetAnchors {
        anchors: Vec<DeviceId>,
        reply: Reply<Result<(), Error>>,
    },
    SetRecovery {
        id: DeviceId,
        x25519: [u8; 32],
        anchors: Vec<DeviceId>,
        signature: [u8; 64],
        replace: bool,
        reply: Reply<Result<RecoverySet, Error>>,
    },
    Snapshot {
        only_if_changed: bool,
        reply: Reply<Result<Option<Snapshot>, Error>>,
    },
    BackupWritten {
        heads: Vec<[u8; 32]>,
        at_ms: u64,
        file: String,
        keep: Option<usize>,
        reply: Reply<Vec<String>>,
    },
    Restore {
        payload: Box<crate::backup::Payload>,
        recovery: Box<passmesh_crdt::LocalDevice>,
        name: String,
        reply: Reply<Result<Restored, Error>>,
    },
    TrustPinKeys {
        keys: Vec<(DeviceId, [u8; 32])>,
        reply: Reply<Result<(), Error>>,
    },
}

/// A cloneable handle to a vault actor. The actor stops when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

/// The running actor: a handle plus the thread to join on shutdown.
#[derive(Debug)]
pub struct Running {
    /// Talk to the vault through this.
    pub handle: Handle,
    /// The actor's thread; it ends once every handle is dropped, after a final flush.
    pub thread: JoinHandle<()>,
    /// This device's libp2p identity (unsealed from `device.sealed`, or the one given to [`open_seeded`]).
    pub identity: Identity,
    /// The vault's id at start.
    pub vault_id: VaultId,
    /// What the actor wants sent; the network task drains it (drop it when networking is off).
    pub outbound: mpsc::Receiver<Outbound>,
    /// The paired set at start.
    pub paired: HashSet<PeerId>,
    /// Peer addresses learnt when devices were added (pairing), to dial at start.
    pub addrs: Vec<Multiaddr>,
    /// Counts the batches that changed the document on disk (what automatic backups wait for).
    pub changes: tokio::sync::watch::Receiver<u64>,
}

/// What opening the vault found out about its keystore, for the log and `status`.
#[derive(Debug, Clone)]
pub struct KeystoreReport {
    /// The backend that sealed (and unsealed) the keyring.
    pub backend: Backend,
    /// Set when the secrets are less protected than they could be, or than configured.
    pub warning: Option<String>,
    /// The TPM's manufacturer and firmware, with the TPM backend.
    pub tpm: Option<tpm::Info>,
    /// With the TPM backend: the sha256 PCRs that bind the seal (empty when none).
    pub pcrs: Option<Vec<u8>>,
}

/// A handle that does not keep the actor alive (see [`Handle::downgrade`]).
#[derive(Clone, Debug)]
pub struct WeakHandle {
    tx: mpsc::WeakSender<Command>,
}

impl WeakHandle {
    /// A handle, while the actor runs.
    pub fn upgrade(&self) -> Option<Handle> {
        self.tx.upgrade().map(|tx| Handle { tx })
    }
}

impl Handle {
    /// A handle that lets the actor stop once every [`Handle`] is dropped.
    pub fn downgrade(&self) -> WeakHandle {
        WeakHandle {
            tx: self.tx.downgrade(),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Whether any of `ids` is a credential of `rp_id` in this vault.
    pub async fn any_excluded(&self, rp_id: String, ids: Vec<CredentialId>) -> Result<bool, Error> {
        self.ask(|reply| Command::AnyExcluded { rp_id, ids, reply })
            .await
    }

    /// Stores a new passkey; returns once it is on disk.
    pub async fn insert(&self, passkey: NewPasskey) -> Result<(), Error> {
        self.ask(|reply| Command::Insert {
            passkey: Box::new(passkey),
            reply,
        })
        .await?
    }

    /// The credential to sign with: one of `allow` for `rp_id`, or with `allow` empty the newest of `rp_id`.
    pub async fn find_for_get(
        &self,
        rp_id: String,
        allow: Vec<CredentialId>,
    ) -> Result<Option<Credential>, Error> {
        self.ask(|reply| Command::FindForGet {
            rp_id,
            allow,
            reply,
        })
        .await
    }

    /// One page of the passkeys, optionally of one rpId, oldest first, with the total number of matches.
    pub async fn list(
        &self,
        rp_id: Option<String>,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<PasskeyInfo>, u64), Error> {
        self.ask(|reply| Command::List {
            rp_id,
            offset,
            limit,
            reply,
        })
        .await
    }

    /// Deletes a passkey by credential id; `false` if there was none. Returns once it is on disk.
    pub async fn delete(&self, credential_id: CredentialId) -> Result<bool, Error> {
        self.ask(|reply| Command::Delete {
            credential_id,
            reply,
        })
        .await?
    }

    /// Sets a passkey's label; `false` if there was no such passkey. Returns once it is on disk.
    pub async fn rename(&self, credential_id: CredentialId, label: Label) -> Result<bool, Error> {
        self.ask(|reply| Command::Rename {
            credential_id,
            label,
            reply,
        })
        .await?
    }

    /// One page of the trash, with the number of trashed passkeys.
    pub async fn trash_list(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<TrashedPasskey>, u64), Error> {
        self.ask(|reply| Command::TrashList {
            offset,
            limit,
            reply,
        })
        .await
    }

    /// Takes a passkey out of the trash; `false` if it was not there. Returns once it is on disk.
    pub async fn trash_restore(&self, credential_id: CredentialId) -> Result<bool, Error> {
        self.ask(|reply| Command::TrashRestore {
            credential_id,
            reply,
        })
        .await?
    }

    /// Purges one trashed passkey (or the whole trash) and rotates the vault key; returns how many were
    /// purged, the new epoch and whether the purge is approved, once on disk. With `approval` (the key of the PIN
    /// the caller verified) the
    /// purge is approved: every device destroys the old keys at once, and what other devices deleted and this
    /// one kept restorable is purged too (and counted).
    pub async fn trash_purge(
        &self,
        credential_id: Option<CredentialId>,
        approval: Option<PinKey>,
    ) -> Result<Purged, Error> {
        self.ask(|reply| Command::TrashPurge {
            credential_id,
            approval: approval.map(Box::new),
            reply,
        })
        .await?
    }

    /// One page of the audit log, with the number of entries.
    pub async fn audit(&self, offset: u64, limit: usize) -> Result<(Vec<AuditInfo>, u64), Error> {
        self.ask(|reply| Command::Audit {
            offset,
            limit,
            reply,
        })
        .await
    }

    /// Tells the actor about a peer. Cancel-safe.
    pub async fn peer_event(&self, event: PeerEvent) -> Result<(), Error> {
        self.tx
            .send(Command::Peer(event))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Like [`Handle::peer_event`] but never waits: `false` if the inbox is full or the actor stopped.
    pub fn try_peer_event(&self, event: PeerEvent) -> bool {
        self.tx.try_send(Command::Peer(event)).is_ok()
    }

    /// Adds (or replaces) a device in the device table and remembers its addresses; returns once on disk.
    pub async fn add_device(&self, device: Device, addrs: Vec<String>) -> Result<(), Error> {
        self.ask(|reply| Command::AddDevice {
            device: Box::new(device),
            addrs,
            reply,
        })
        .await?
    }

    /// Every device-table entry with the addresses known for it.
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        self.ask(|reply| Command::Members { reply }).await
    }

    /// Replaces this device's unpaired vault with a replica of `vault_id` (its encoded `keyring`, sealed here),
    /// listing `members` and `me`, with this device's passkeys moved into it; for the same vault, adds the
    /// members this device lacks (see [`Adopted`]). With `check_only` it only says whether that is allowed.
    #[allow(clippy::too_many_arguments)]
    pub async fn adopt(
        &self,
        vault_id: VaultId,
        keyring: Zeroizing<Vec<u8>>,
        members: Vec<Member>,
        me: Device,
        anchors: Vec<DeviceId>,
        check_only: bool,
    ) -> Result<Adopted, Error> {
        let adoption = Box::new(Adoption {
            vault_id,
            keyring,
            members,
            me,
            anchors,
            check_only,
        });
        self.ask(|reply| Command::Adopt { adoption, reply }).await?
    }

    /// Applies new rules (config reload): the PIN policy from the next attempt on, the trash's keeping time
    /// from the next purge of expired passkeys on.
    pub async fn set_rules(&self, rules: Rules) -> Result<(), Error> {
        self.ask(|reply| Command::SetRules { rules, reply }).await
    }

    /// The vault id, keyring and this device's entry, for a joining device.
    pub async fn join_info(&self) -> Result<JoinInfo, Error> {
        self.ask(|reply| Command::JoinInfo { reply }).await?
    }

    /// Vault and PIN status.
    pub async fn status(&self) -> Result<Status, Error> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Starts a PIN check: refuses while locked, else counts the attempt (durably) and hands out the hash.
    pub async fn pin_begin(&self) -> Result<PinCheck, Error> {
        self.ask(|reply| Command::PinBegin { reply }).await?
    }

    /// Finishes a PIN check started with [`Handle::pin_begin`].
    pub async fn pin_finish(&self, ok: bool) -> Result<(), Error> {
        self.ask(|reply| Command::PinFinish { ok, reply }).await?
    }

    /// Every device-table entry with its standing, connection and last sync.
    pub async fn devices(&self) -> Result<Vec<DeviceEntry>, Error> {
        self.ask(|reply| Command::Devices { reply }).await
    }

    /// Renames a device of the vault; returns once on disk.
    pub async fn rename_device(&self, id: DeviceId, name: DeviceName) -> Result<(), Error> {
        self.ask(|reply| Command::RenameDevice { id, name, reply })
            .await?
    }

    /// Removes a device from the vault and rotates the vault key (`None`: it was already removed); returns
    /// once on disk, with the device's connections dropped.
    pub async fn remove_device(&self, id: DeviceId) -> Result<Option<Epoch>, Error> {
        self.ask(|reply| Command::RemoveDevice { id, reply })
            .await?
    }

    /// Trusts `anchors` (and this device) without a signature chain from now on, and pins them on disk: those of
    /// the device this one joined through.
    pub async fn set_anchors(&self, anchors: Vec<DeviceId>) -> Result<(), Error> {
        self.ask(|reply| Command::SetAnchors { anchors, reply })
            .await?
    }

    /// Makes `id` (x25519 key `x25519`) the vault's recovery key (see [`RecoverySet`]), vouching for `anchors`
    /// (this device's, signed by the key: `signature`); with `replace`, in place of the current one.
    pub async fn set_recovery(
        &self,
        id: DeviceId,
        x25519: [u8; 32],
        anchors: Vec<DeviceId>,
        signature: [u8; 64],
        replace: bool,
    ) -> Result<RecoverySet, Error> {
        self.ask(|reply| Command::SetRecovery {
            id,
            x25519,
            anchors,
            signature,
            replace,
            reply,
        })
        .await?
    }

    /// What a backup of the vault holds now; with `only_if_changed`, `None` if the last automatic backup holds
    /// the same document. Costs a full save of the document on the actor's thread.
    pub async fn snapshot(&self, only_if_changed: bool) -> Result<Option<Snapshot>, Error> {
        self.ask(|reply| Command::Snapshot {
            only_if_changed,
            reply,
        })
        .await?
    }

    /// Notes that a backup of `heads` was written as `file`; with `keep` (an automatic backup), returns this
    /// device's automatic backups beyond the newest `keep`, to delete.
    pub async fn backup_written(
        &self,
        heads: Vec<[u8; 32]>,
        at_ms: u64,
        file: String,
        keep: Option<usize>,
    ) -> Result<Vec<String>, Error> {
        self.ask(|reply| Command::BackupWritten {
            heads,
            at_ms,
            file,
            keep,
            reply,
        })
        .await
    }

    /// Turns this device's empty vault into the vault `payload` holds, opened with `recovery` (see
    /// [`Restored`]).
    pub async fn restore(
        &self,
        payload: crate::backup::Payload,
        recovery: passmesh_crdt::LocalDevice,
        name: String,
    ) -> Result<Restored, Error> {
        self.ask(|reply| Command::Restore {
            payload: Box::new(payload),
            recovery: Box::new(recovery),
            name,
            reply,
        })
        .await?
    }

    /// Trusts the approvals signed with these devices' first PIN keys at once, and notes that on disk: those the
    /// device this one joined through trusted (see [`passmesh_crdt::approval`]).
    pub async fn trust_pin_keys(&self, keys: Vec<(DeviceId, [u8; 32])>) -> Result<(), Error> {
        self.ask(|reply| Command::TrustPinKeys { keys, reply })
            .await?
    }

    /// Sets a new PIN hash and clears the attempt counter, provided the current hash is still `previous`
    /// (the one the caller verified, or none): two concurrent changes cannot both win. With `keys`, publishes
    /// the new PIN's approval key (signed by the previous PIN's, see [`passmesh_crdt::approval`]), on disk
    /// before the reply.
    pub async fn set_pin(
        &self,
        hash: PinHash,
        previous: Option<PinHash>,
        keys: Option<PinKeys>,
    ) -> Result<(), Error> {
        self.ask(|reply| Command::SetPin {
            hash,
            previous,
            keys: keys.map(Box::new),
            reply,
        })
        .await?
    }
}
