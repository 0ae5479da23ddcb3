//! The actor that owns one user's vault on this device: the CRDT document, its sled store and the PIN state.
//!
//! It runs on its own OS thread because every write ends in an fsync; async callers reach it through a
//! [`Handle`] over a bounded channel and get answers on oneshot channels. Writes are group-committed: the actor
//! drains what is queued, applies it, persists one incremental chunk with one flush, and only then answers —
//! so no caller ever sees (or is acknowledged for) a change that is not on disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use p256::ecdsa::SigningKey;
use passmesh_crdt::{
    Device, DeviceId, Epoch, Keyring, NewPasskey, RecordId, SyncState, Vault, VaultId, VaultKey,
};
use passmesh_ipc::{Base64Url, PasskeyInfo};
use passmesh_transport::{Identity, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::authenticator::Credential;
use crate::keystore::{self, Backend, Choice, TpmOptions, tpm};
use crate::pin::{self, PinHash, PinState, Policy};
use crate::store::{self, Store};

/// Queue depth of the actor's inbox; senders wait when it is full.
const INBOX: usize = 256;
/// Commands applied per group commit at most.
const BATCH: usize = 64;
/// Incremental chunks kept before the document is compacted into one snapshot.
const COMPACT_AFTER: u64 = 512;
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
    Keystore(#[from] crate::keystore::Error),
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
    Persist(String),
    /// Joining another vault would drop this device's passkeys.
    #[error("this device already holds {0} passkeys: joining another vault would replace them")]
    NotEmpty(u64),
    /// Joining another vault would cut this device off its paired devices.
    #[error("this device is already paired with {0} other devices")]
    AlreadyPaired(u64),
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

enum Command {
    SetPolicy {
        policy: Policy,
        reply: Reply<()>,
    },
    AnyExcluded {
        rp_id: String,
        ids: Vec<Vec<u8>>,
        reply: Reply<bool>,
    },
    Insert {
        passkey: Box<NewPasskey>,
        reply: Reply<Result<(), Error>>,
    },
    FindForGet {
        rp_id: String,
        allow: Vec<Vec<u8>>,
        reply: Reply<Option<Credential>>,
    },
    List {
        rp_id: Option<String>,
        offset: u64,
        limit: usize,
        reply: Reply<(Vec<PasskeyInfo>, u64)>,
    },
    Delete {
        credential_id: Vec<u8>,
        reply: Reply<Result<bool, Error>>,
    },
    Rename {
        credential_id: Vec<u8>,
        label: String,
        reply: Reply<Result<bool, Error>>,
    },
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
        vault_id: VaultId,
        keyring: Zeroizing<Vec<u8>>,
        members: Vec<Member>,
        me: Box<Device>,
        check_only: bool,
        reply: Reply<Result<(), Error>>,
    },
    PinFinish {
        ok: bool,
        reply: Reply<Result<(), Error>>,
    },
    SetPin {
        hash: PinHash,
        previous: Option<PinHash>,
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

/// Opens (or creates on first use) the vault stored in `dir` and starts its actor. The keystore (`choice`,
/// `tpm`) is only used here: it unseals or seals the keyring and is closed before this returns.
pub fn open(
    dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
    policy: Policy,
) -> Result<(Running, KeystoreReport), Error> {
    open_seeded(dir, choice, tpm, policy, None, None)
}

/// Like [`open`], but a vault created here (the directory has none) is a replica of the vault `seed` names
/// (its id and encoded keyring) instead of a new one: how a device joins a vault. With `identity`, the vault
/// is this device's under that identity (system mode: the machine's, shared by every user's vault) instead of
/// one of its own sealed in `dir`.
pub fn open_seeded(
    dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
    policy: Policy,
    seed: Option<(VaultId, &[u8])>,
    identity: Option<Identity>,
) -> Result<(Running, KeystoreReport), Error> {
    private_dir(dir)
        .map_err(|e| store::Error::Damaged(format!("cannot create {}: {e}", dir.display())))?;
    crate::migrate::remove_leftovers(dir);
    let db = dir.join(DB);
    // Everything that can refuse (no TPM, another backend, changed PCRs) happens before sled opens the store,
    // because opening it writes to its files: a refused start leaves the disk as it was.
    let sealed = store::read_keyring(&db)?;
    let mut opened = match (&sealed, db.exists()) {
        (Some(blob), _) => Some(keystore::open_for(choice, tpm, Some(blob))?),
        (None, false) => Some(keystore::open_for(choice, tpm, None)?),
        // A store of the older layout, or one whose creation was interrupted: decided once it is open.
        (None, true) => None,
    };
    let unsealed = match (&sealed, opened.as_mut()) {
        (Some(blob), Some(o)) => Some(o.keystore.unseal(blob)?),
        _ => None,
    };
    let mut store = Store::open(&db)?;
    let document = store.document()?;
    let (sealed, unsealed) = match (sealed, unsealed) {
        (Some(s), u) => (Some(s), u),
        (None, _) => match store.meta("keyring")? {
            Some(legacy) => {
                let mut o = keystore::open_for(choice, tpm, Some(&legacy))?;
                let u = o.keystore.unseal(&legacy)?;
                opened = Some(o);
                (Some(legacy), Some(u))
            }
            None => (None, None),
        },
    };
    let mut opened = match opened {
        Some(o) => o,
        None => keystore::open_for(choice, tpm, None)?,
    };
    let ks = &mut opened.keystore;
    let (vault, blob_pcrs) = match (unsealed, document) {
        (Some(secret), Some(doc)) => {
            let keyring = decode_keyring(&secret)?;
            let vault = Vault::load(&doc, keyring)?;
            for (id, problem) in vault.problems() {
                tracing::warn!(record = %id, %problem, "a vault record cannot be read and is left out");
            }
            (vault, sealed.as_deref().and_then(tpm::bound_pcrs))
        }
        // No document yet: a new vault, or a creation interrupted after the keyring was written (nothing was
        // ever encrypted under that keyring, so a new one replaces it).
        (_, None) => {
            let (id, keyring) = match seed {
                Some((id, ring)) => (id, decode_keyring(ring)?),
                None => (
                    VaultId::random(),
                    Keyring::new(Epoch(0), VaultKey::generate()),
                ),
            };
            let sealed = ks.seal(&encode_keyring(&keyring))?;
            let mut vault = Vault::create(id, keyring)?;
            let full = vault.save();
            let pin_state = serde_json::to_vec(&PinState::default()).map_err(|_| Error::Keyring)?;
            store::write_keyring(&db, &sealed)?;
            store.replace(&full, &[("pin", &pin_state)])?;
            tracing::info!(vault = %vault.id(), keystore = ks.name(), "created a new vault");
            (vault, tpm::bound_pcrs(&sealed))
        }
        (None, Some(_)) => {
            return Err(store::Error::Damaged("document without a keyring".into()).into());
        }
    };
    let identity = match identity {
        Some(given) => given,
        None => sealed_identity(&db, &mut opened.keystore)?,
    };
    let mut warning = opened.warning.take();
    if let Some(bound) = &blob_pcrs
        && *bound != tpm.pcrs
        && warning.is_none()
    {
        warning = Some(format!(
            "the seal is bound to PCR(s) [{}] but the config asks for [{}]: run `passmesh keystore reseal` \
             (passmeshd stopped) to apply the config",
            keystore::list_pcrs(bound),
            keystore::list_pcrs(&tpm.pcrs)
        ));
    }
    let report = KeystoreReport {
        backend: opened.keystore.backend(),
        warning,
        tpm: opened.keystore.tpm_info().cloned(),
        pcrs: blob_pcrs,
    };
    // Closes the TPM connection and flushes its handles: nothing after startup touches the TPM.
    drop(opened);
    let pin = match store.meta("pin")? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| store::Error::Damaged(format!("PIN state: {e}")))?,
        None => PinState::default(),
    };
    let (out, outbound) = mpsc::channel(OUTBOX);
    let mut actor = Actor {
        vault,
        keys: HashMap::new(),
        store,
        pin,
        policy,
        dirty: false,
        full_save_needed: false,
        me: identity.peer_id(),
        out,
        peers: HashMap::new(),
        held_by: HashMap::new(),
        x25519: passmesh_transport::pairing::PairKey::derive(&identity).public(),
        db: db.clone(),
        keystore: (choice, tpm.clone()),
    };
    actor.start_up()?;
    let paired = actor.paired();
    let addrs = actor.stored_addrs()?;
    let vault_id = actor.vault.id();
    let (tx, rx) = mpsc::channel(INBOX);
    let name = format!(
        "vault-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    );
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || actor.run(rx))
        .map_err(|e| Error::Persist(format!("cannot start the vault thread: {e}")))?;
    Ok((
        Running {
            handle: Handle { tx },
            thread,
            identity,
            vault_id,
            outbound,
            paired,
            addrs,
        },
        report,
    ))
}

/// The device identity sealed in `dir` (created and sealed on first use).
fn sealed_identity(dir: &Path, keystore: &mut keystore::Keystore) -> Result<Identity, Error> {
    match store::read_device(dir)? {
        Some(blob) => {
            let secret = keystore.unseal(&blob)?;
            let bytes: [u8; 32] = secret.as_slice().try_into().map_err(|_| Error::Keyring)?;
            Identity::from_secret_bytes(Zeroizing::new(bytes)).map_err(|_| Error::Keyring)
        }
        None => {
            let identity = Identity::generate();
            let blob = keystore.seal(identity.secret_bytes().as_slice())?;
            store::write_device(dir, &blob)?;
            tracing::info!(device = %identity.peer_id(), "created this device's identity");
            Ok(identity)
        }
    }
}

/// System mode: the directory of the machine identity and its lock (`state_dir/machine`, created 0700).
pub fn machine_dir(state_dir: &Path) -> Result<PathBuf, Error> {
    let dir = state_dir.join("machine");
    private_dir(&dir)
        .map_err(|e| store::Error::Damaged(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// System mode: the machine's libp2p identity, sealed by the keystore in `state_dir/machine` (created on first
/// use). Every user's vault is this device's under it, so one libp2p host carries them all.
pub fn machine_identity(
    state_dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
) -> Result<Identity, Error> {
    let dir = machine_dir(state_dir)?;
    let blob = store::read_device(&dir)?;
    let mut opened = keystore::open_for(choice, tpm, blob.as_deref())?;
    sealed_identity(&dir, &mut opened.keystore)
}

/// Creates `dir` and missing parents with mode 0700 and makes `dir` itself 0700: it holds the vault and, with
/// the software keystore, its keys.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The sled database's directory name inside a user's vault directory.
pub const DB: &str = "db";

/// The default place of a user's vault under the state directory.
pub fn user_dir(state_dir: &Path, uid: u32) -> PathBuf {
    state_dir.join("users").join(uid.to_string())
}

// Keyring encoding inside the sealed blob: version 1, current epoch, then (epoch, key) pairs.
fn encode_keyring(k: &Keyring) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![1u8]);
    out.extend_from_slice(&k.current().0.to_be_bytes());
    for e in 0..=k.current().0 {
        if let Some(key) = k.key(Epoch(e)) {
            out.extend_from_slice(&e.to_be_bytes());
            out.extend_from_slice(key.as_bytes());
        }
    }
    out
}

pub(crate) fn decode_keyring(b: &[u8]) -> Result<Keyring, Error> {
    let (&[1], rest) = b.split_at_checked(1).ok_or(Error::Keyring)? else {
        return Err(Error::Keyring);
    };
    let (cur, mut rest) = rest.split_at_checked(4).ok_or(Error::Keyring)?;
    let current = Epoch(u32::from_be_bytes(
        cur.try_into().map_err(|_| Error::Keyring)?,
    ));
    let mut ring: Option<Keyring> = None;
    while !rest.is_empty() {
        let (entry, tail) = rest.split_at_checked(36).ok_or(Error::Keyring)?;
        rest = tail;
        let epoch = Epoch(u32::from_be_bytes(
            entry[..4].try_into().map_err(|_| Error::Keyring)?,
        ));
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&entry[4..]);
        let key = VaultKey::from_bytes(*key);
        match &mut ring {
            None => ring = Some(Keyring::new(epoch, key)),
            Some(r) => r.insert(epoch, key),
        }
    }
    let mut ring = ring.ok_or(Error::Keyring)?;
    ring.set_current(current).map_err(|_| Error::Keyring)?;
    Ok(ring)
}

struct Actor {
    vault: Vault,
    /// Parsed signing keys by credential id: building a `SigningKey` derives its public key, a scalar
    /// multiplication as costly as the signature itself, so it is done once per credential, not per `get`.
    keys: HashMap<Vec<u8>, Arc<SigningKey>>,
    store: Store,
    pin: PinState,
    policy: Policy,
    /// Changes applied in memory but not yet stored.
    dirty: bool,
    /// A write failed: the next one must store a full snapshot.
    full_save_needed: bool,
    /// This device.
    me: PeerId,
    /// To the network task.
    out: mpsc::Sender<Outbound>,
    /// Sync state of the peers seen since start.
    peers: HashMap<PeerId, Peer>,
    /// Records each other device is known to hold (the BS flag); only devices in the table count.
    held_by: HashMap<PeerId, HashSet<RecordId>>,
    /// This device's x25519 public key (derived from its identity), for its device-table entry.
    x25519: [u8; 32],
    /// The store's directory (the sealed keyring lives beside the database).
    db: PathBuf,
    /// How to reopen the keystore, for the one write that needs it after start-up (adopting a vault).
    keystore: (Choice, TpmOptions),
}

/// One paired peer's sync state in the actor.
struct Peer {
    state: SyncState,
    connected: bool,
    address: Option<String>,
    last_sync_ms: Option<u64>,
    /// A message may be due once what is applied is on disk.
    wants_send: bool,
    bytes_sent: u64,
    bytes_received: u64,
}

fn sync_key(peer: &PeerId) -> String {
    format!("sync/{peer}")
}

fn synced_key(peer: &PeerId) -> String {
    format!("synced/{peer}")
}

fn addrs_key(peer: &str) -> String {
    format!("addrs/{peer}")
}

/// Replies held back until the batch's writes are on disk.
type Deferred = Box<dyn FnOnce(Option<&str>) + Send>;

impl Actor {
    /// Adds this device to the device table on first start, and derives the BS flags from the persisted
    /// common heads of every peer.
    fn start_up(&mut self) -> Result<(), Error> {
        let me = DeviceId::new(self.me.to_string());
        match self.vault.devices().into_iter().find(|d| d.id == me) {
            None => {
                self.vault.add_device(Device {
                    id: me,
                    name: host_name(),
                    x25519_public: self.x25519,
                    added_by: None,
                    added_at_ms: crate::now_ms(),
                })?;
                self.dirty = true;
            }
            // Entries written before devices had x25519 keys carry zeros: fill in the derived key.
            Some(d) if d.x25519_public != self.x25519 => {
                self.vault.add_device(Device {
                    x25519_public: self.x25519,
                    ..d
                })?;
                self.dirty = true;
            }
            Some(_) => {}
        }
        self.persist()?;
        for peer in self.paired() {
            let state = self.persisted_state(&peer);
            let shared = state.shared_heads();
            if !shared.is_empty() {
                let held = self.vault.records_held_at(&shared);
                self.held_by.entry(peer).or_default().extend(held);
            }
        }
        Ok(())
    }

    /// Whether a device still in the device table is known to hold `record`.
    fn held(&self, record: &RecordId) -> bool {
        self.held_by.values().any(|h| h.contains(record))
    }

    /// The device table minus this device, as peer ids.
    fn paired(&self) -> HashSet<PeerId> {
        self.vault
            .devices()
            .iter()
            .filter_map(|d| d.id.as_str().parse::<PeerId>().ok())
            .filter(|p| *p != self.me)
            .collect()
    }

    fn stored_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        let paired: HashSet<String> = self.paired().iter().map(|p| p.to_string()).collect();
        let mut out = Vec::new();
        for (name, value) in self.store.meta_entries()? {
            let Some(peer) = name.strip_prefix("addrs/") else {
                continue;
            };
            if !paired.contains(peer) {
                continue;
            }
            let Ok(id) = peer.parse::<PeerId>() else {
                continue;
            };
            let list: Vec<String> = serde_json::from_slice(&value).unwrap_or_default();
            // The transport dials only addresses that name the peer (`/p2p/…`): add it where missing.
            out.extend(
                list.iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok()?.with_p2p(id).ok()),
            );
        }
        Ok(out)
    }

    fn persisted_state(&self, peer: &PeerId) -> SyncState {
        match self.store.meta(&sync_key(peer)) {
            Ok(Some(b)) => SyncState::decode(&b).unwrap_or_default(),
            _ => SyncState::new(),
        }
    }

    fn peer_entry(&mut self, peer: PeerId) -> &mut Peer {
        if !self.peers.contains_key(&peer) {
            let state = self.persisted_state(&peer);
            let last_sync_ms = self
                .store
                .meta(&synced_key(&peer))
                .ok()
                .flatten()
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(u64::from_be_bytes);
            self.peers.insert(
                peer,
                Peer {
                    state,
                    connected: false,
                    address: None,
                    last_sync_ms,
                    wants_send: false,
                    bytes_sent: 0,
                    bytes_received: 0,
                },
            );
        }
        self.peers
            .get_mut(&peer)
            .expect("the entry was inserted just above")
    }

    fn send_paired(&self) {
        self.send(Outbound::Paired {
            vault: self.vault.id(),
            peers: self.paired(),
        });
    }

    fn send(&self, o: Outbound) {
        // Closed only when networking is off or shutting down; then nothing is to be sent.
        let _ = self.out.blocking_send(o);
    }

    fn peer_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Connected { peer, addr } => {
                let state = self.persisted_state(&peer);
                let p = self.peer_entry(peer);
                p.state = state;
                p.connected = true;
                p.address = Some(addr);
                p.wants_send = true;
            }
            PeerEvent::Disconnected { peer } => {
                let state = self.persisted_state(&peer);
                let p = self.peer_entry(peer);
                p.connected = false;
                p.wants_send = false;
                p.state = state;
            }
            PeerEvent::Reset { peer } => {
                let state = self.persisted_state(&peer);
                let p = self.peer_entry(peer);
                p.state = state;
                p.wants_send = p.connected;
            }
            PeerEvent::Message { peer, bytes } => self.receive(peer, &bytes),
        }
    }

    fn receive(&mut self, peer: PeerId, bytes: &[u8]) {
        if !self.paired().contains(&peer) {
            tracing::warn!(%peer, "dropped a sync message from a device outside the device table");
            return;
        }
        let devices_before = self.vault.devices();
        let heads_before = self.vault.heads();
        self.peer_entry(peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.bytes_received += bytes.len() as u64;
        let result = self.vault.receive_sync_message(&mut p.state, bytes);
        let changed = self.vault.heads() != heads_before;
        if let Err(e) = &result {
            tracing::warn!(%peer, error = %e, "a sync message was refused; dropping the connection");
            if !changed {
                p.state = SyncState::new();
                self.send(Outbound::Drop(peer));
                return;
            }
        }
        let now = crate::now_ms();
        p.last_sync_ms = Some(now);
        p.wants_send = true;
        let their = p.state.their_heads();
        let encoded = p.state.encode();
        if let Err(e) = self
            .store
            .put_meta(&sync_key(&peer), &encoded)
            .and_then(|()| self.store.put_meta(&synced_key(&peer), &now.to_be_bytes()))
        {
            tracing::warn!(error = %e, "cannot store a sync state");
        }
        if changed {
            // The sender learns that its changes arrived (and are on disk) only from our heads.
            p.state.acknowledge();
            self.dirty = true;
            for p in self.peers.values_mut() {
                p.wants_send |= p.connected;
            }
        }
        if let Some(their) = their {
            let known = self.held_by.get(&peer);
            if self
                .vault
                .passkeys()
                .any(|p| !known.is_some_and(|h| h.contains(&p.record_id)))
            {
                let held = self.vault.records_held_at(&their);
                self.held_by.entry(peer).or_default().extend(held);
            }
        }
        if self.vault.devices() != devices_before {
            let paired = self.paired();
            self.peers.retain(|p, _| paired.contains(p));
            // A removed device no longer counts as holding anything (the BS flag falls back).
            self.held_by.retain(|p, _| paired.contains(p));
            self.send(Outbound::Paired {
                vault: self.vault.id(),
                peers: paired,
            });
        }
    }

    /// Sends what is due to connected peers. Called only when everything applied is on disk.
    fn push(&mut self) {
        let mut due = Vec::new();
        for (peer, p) in self.peers.iter_mut() {
            if !(p.connected && p.wants_send) {
                continue;
            }
            p.wants_send = false;
            if let Some(bytes) = self.vault.generate_sync_message(&mut p.state) {
                p.bytes_sent += bytes.len() as u64;
                due.push(Outbound::Send { peer: *peer, bytes });
            }
        }
        for o in due {
            self.send(o);
        }
    }

    fn peer_status(&self) -> Vec<PeerStatus> {
        self.vault
            .devices()
            .into_iter()
            .filter_map(|d| {
                let peer: PeerId = d.id.as_str().parse().ok()?;
                if peer == self.me {
                    return None;
                }
                let live = self.peers.get(&peer);
                let heads =
                    live.and_then(|p| p.state.their_heads())
                        .unwrap_or_else(|| match live {
                            Some(p) => p.state.shared_heads(),
                            None => self.persisted_state(&peer).shared_heads(),
                        });
                Some(PeerStatus {
                    device_id: d.id.to_string(),
                    name: d.name.clone(),
                    connected: live.is_some_and(|p| p.connected),
                    address: live.and_then(|p| p.address.clone()),
                    last_sync_ms: live.and_then(|p| p.last_sync_ms).or_else(|| {
                        self.store
                            .meta(&synced_key(&peer))
                            .ok()
                            .flatten()
                            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                            .map(u64::from_be_bytes)
                    }),
                    pending_changes: self.vault.changes_missing_at(&heads) as u64,
                    bytes_sent: live.map_or(0, |p| p.bytes_sent),
                    bytes_received: live.map_or(0, |p| p.bytes_received),
                })
            })
            .collect()
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut deferred: Vec<Deferred> = Vec::new();
        self.send_paired();
        while let Some(cmd) = rx.blocking_recv() {
            self.apply(cmd, &mut deferred);
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(cmd) => self.apply(cmd, &mut deferred),
                    Err(_) => break,
                }
            }
            let failure = self.persist().err().map(|e| {
                tracing::error!(error = %e, "persisting the vault failed");
                e.to_string()
            });
            for reply in deferred.drain(..) {
                reply(failure.as_deref());
            }
            if failure.is_some() {
                // The document went back to what is on disk: every exchange starts over from there.
                for (peer, p) in self.peers.iter_mut() {
                    p.state = match self.store.meta(&sync_key(peer)) {
                        Ok(Some(b)) => SyncState::decode(&b).unwrap_or_default(),
                        _ => SyncState::new(),
                    };
                    p.wants_send = p.connected;
                }
            }
            self.push();
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    fn persist(&mut self) -> Result<(), Error> {
        if !self.dirty {
            return Ok(());
        }
        let written = if self.full_save_needed {
            self.compact()
        } else {
            let chunk = self.vault.save_incremental();
            self.store.append(&chunk).map_err(Error::from)
        };
        if let Err(e) = written {
            self.recover();
            return Err(e);
        }
        self.dirty = false;
        if self.store.chunk_count() > COMPACT_AFTER
            && let Err(e) = self.compact()
        {
            // The write itself is on disk; the chunks stay until a compaction succeeds.
            tracing::warn!(error = %e, "compacting the vault failed");
        }
        Ok(())
    }

    /// After a failed write: the document in memory is ahead of the disk, and `save_incremental` has already
    /// moved on, so later chunks would depend on changes that were never stored. Go back to what the store
    /// holds (the failed change is not acknowledged, so nobody may rely on it) and make the next write a full
    /// snapshot.
    fn recover(&mut self) {
        self.full_save_needed = true;
        self.dirty = false;
        let reloaded = self.store.document().map_err(Error::from).and_then(|doc| {
            let doc = doc.ok_or_else(|| Error::Persist("the store lost its document".into()))?;
            Vault::load(&doc, self.vault.keyring().clone()).map_err(Error::from)
        });
        match reloaded {
            Ok(vault) => {
                self.vault = vault;
                self.keys.clear();
            }
            // Keep the in-memory state; the next successful full save stores all of it.
            Err(e) => tracing::error!(error = %e, "cannot reload the vault after a failed write"),
        }
    }

    fn compact(&mut self) -> Result<(), Error> {
        let full = self.vault.save();
        self.store.replace(&full, &[])?;
        self.full_save_needed = false;
        Ok(())
    }

    fn save_pin(&self) -> Result<(), Error> {
        let bytes = serde_json::to_vec(&self.pin).map_err(|e| Error::Persist(e.to_string()))?;
        self.store.set_meta("pin", &bytes)?;
        Ok(())
    }

    fn apply(&mut self, cmd: Command, deferred: &mut Vec<Deferred>) {
        // Every answer waits for the batch's flush: a reader must never see what a crash could still lose.
        fn later<T: Send + 'static>(deferred: &mut Vec<Deferred>, reply: Reply<T>, value: T) {
            deferred.push(Box::new(move |_| {
                let _ = reply.send(value);
            }));
        }
        fn later_write<T: Send + 'static>(
            deferred: &mut Vec<Deferred>,
            reply: Reply<Result<T, Error>>,
            value: Result<T, Error>,
        ) {
            deferred.push(Box::new(move |failure| {
                let value = match (value, failure) {
                    (Ok(_), Some(f)) => Err(Error::Persist(f.to_owned())),
                    (v, _) => v,
                };
                let _ = reply.send(value);
            }));
        }
        match cmd {
            Command::AnyExcluded { rp_id, ids, reply } => {
                let hit = ids.iter().any(|id| {
                    self.vault
                        .find_by_credential_id(id)
                        .is_some_and(|p| p.rp_id == rp_id)
                });
                later(deferred, reply, hit);
            }
            Command::Insert { passkey, reply } => {
                let now = crate::now_ms();
                // CTAP2: a new discoverable credential replaces the one this authenticator already holds for
                // the same rpId and user handle, so re-registering an account leaves no stale key behind.
                let replaced: Vec<(RecordId, Vec<u8>)> = self
                    .vault
                    .find_by_rp(&passkey.rp_id)
                    .filter(|p| p.user_handle == passkey.user_handle)
                    .map(|p| (p.record_id, p.credential_id.clone()))
                    .collect();
                let result = replaced
                    .iter()
                    .try_for_each(|(id, credential_id)| {
                        self.keys.remove(credential_id);
                        self.vault.remove(id).map(|_| ())
                    })
                    .and_then(|()| self.vault.insert(*passkey, now).map(|_| ()))
                    .map_err(Error::from);
                self.dirty |= result.is_ok() || !replaced.is_empty();
                self.local_change();
                later_write(deferred, reply, result);
            }
            Command::FindForGet {
                rp_id,
                allow,
                reply,
            } => {
                let found = if allow.is_empty() {
                    self.vault
                        .find_by_rp(&rp_id)
                        .max_by_key(|p| (p.created_at_ms, p.record_id))
                } else {
                    allow
                        .iter()
                        .filter_map(|id| self.vault.find_by_credential_id(id))
                        .find(|p| p.rp_id == rp_id)
                };
                let held_by = &self.held_by;
                let cred = found.and_then(|p| {
                    let key = match self.keys.get(&p.credential_id) {
                        Some(k) => k.clone(),
                        None => {
                            let k = Arc::new(SigningKey::from_slice(&p.private_key).ok()?);
                            self.keys.insert(p.credential_id.clone(), k.clone());
                            k
                        }
                    };
                    Some(Credential {
                        credential_id: p.credential_id.clone(),
                        user_handle: p.user_handle.clone(),
                        signing_key: key,
                        backed_up: held_by.values().any(|h| h.contains(&p.record_id)),
                    })
                });
                later(deferred, reply, cred);
            }
            Command::List {
                rp_id,
                offset,
                limit,
                reply,
            } => {
                let mut all: Vec<&passmesh_crdt::Passkey> = match &rp_id {
                    Some(rp) => self.vault.find_by_rp(rp).collect(),
                    None => self.vault.passkeys().collect(),
                };
                all.sort_unstable_by(|a, b| {
                    (a.created_at_ms, &a.credential_id).cmp(&(b.created_at_ms, &b.credential_id))
                });
                let total = all.len() as u64;
                let page = all
                    .into_iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(limit)
                    .map(|p| info(p, self.held(&p.record_id)))
                    .collect();
                later(deferred, reply, (page, total));
            }
            Command::Delete {
                credential_id,
                reply,
            } => {
                let result = match self.vault.find_by_credential_id(&credential_id) {
                    Some(p) => {
                        let id = p.record_id;
                        self.keys.remove(&credential_id);
                        self.vault.remove(&id).map_err(Error::from)
                    }
                    None => Ok(false),
                };
                self.dirty |= matches!(result, Ok(true));
                self.local_change();
                later_write(deferred, reply, result);
            }
            Command::Rename {
                credential_id,
                label,
                reply,
            } => {
                let result = match self.vault.find_by_credential_id(&credential_id) {
                    Some(p) => {
                        let id = p.record_id;
                        self.vault
                            .rename(&id, &label, crate::now_ms())
                            .map(|()| true)
                            .map_err(Error::from)
                    }
                    None => Ok(false),
                };
                self.dirty |= matches!(result, Ok(true));
                self.local_change();
                later_write(deferred, reply, result);
            }
            Command::Status { reply } => {
                let now = crate::now_ms();
                let status = Status {
                    vault_id: self.vault.id().to_string(),
                    passkeys: self.vault.len() as u64,
                    pin_set: self.pin.hash.is_some(),
                    pin_attempts_left: self.pin.attempts_left(now, &self.policy),
                    pin_locked_for_ms: self
                        .pin
                        .locked_for(now)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    device_id: self.me.to_string(),
                    peers: self.peer_status(),
                };
                later(deferred, reply, status);
            }
            Command::Peer(event) => self.peer_event(event),
            Command::AddDevice {
                device,
                addrs,
                reply,
            } => {
                let peer = device.id.to_string();
                let result = self.vault.add_device(*device).map_err(Error::from);
                if result.is_ok() {
                    self.dirty = true;
                    let list = serde_json::to_vec(&addrs).unwrap_or_default();
                    if let Err(e) = self.store.put_meta(&addrs_key(&peer), &list) {
                        tracing::warn!(error = %e, "cannot store peer addresses");
                    }
                    self.send_paired();
                    self.local_change();
                }
                later_write(deferred, reply, result);
            }
            Command::SetPolicy { policy, reply } => {
                // Counters and lockouts already running are kept; the new limits apply from the next attempt.
                self.policy = policy;
                let _ = reply.send(());
            }
            Command::JoinInfo { reply } => {
                let me = self.me.to_string();
                let result = self
                    .vault
                    .devices()
                    .into_iter()
                    .find(|d| d.id.as_str() == me)
                    .map(|device| JoinInfo {
                        vault_id: self.vault.id(),
                        keyring: encode_keyring(self.vault.keyring()),
                        device,
                    })
                    .ok_or_else(|| Error::Persist("this device is not in the device table".into()));
                let _ = reply.send(result);
            }
            Command::Members { reply } => {
                let members = self
                    .vault
                    .devices()
                    .into_iter()
                    .map(|device| {
                        let addrs = self
                            .store
                            .meta(&addrs_key(device.id.as_str()))
                            .ok()
                            .flatten()
                            .and_then(|b| serde_json::from_slice(&b).ok())
                            .unwrap_or_default();
                        Member { device, addrs }
                    })
                    .collect();
                later(deferred, reply, members);
            }
            Command::Adopt {
                vault_id,
                keyring,
                members,
                me,
                check_only,
                reply,
            } => {
                let result = self.may_adopt().and_then(|()| {
                    if check_only {
                        Ok(())
                    } else {
                        self.adopt(vault_id, &keyring, members, *me)
                    }
                });
                let _ = reply.send(result);
            }
            Command::PinBegin { reply } => {
                let result = match self.pin.hash.clone() {
                    None => Ok(PinCheck::NotSet),
                    Some(hash) => {
                        let mut next = self.pin.clone();
                        match next.begin_attempt(crate::now_ms(), &self.policy) {
                            Err(e) => Err(Error::Pin(e)),
                            Ok(()) => {
                                // The attempt is on disk before anyone checks the PIN.
                                let old = std::mem::replace(&mut self.pin, next);
                                self.save_pin()
                                    .map(|()| PinCheck::Verify(hash))
                                    .inspect_err(|_| {
                                        self.pin = old;
                                    })
                            }
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Command::PinFinish { ok, reply } => {
                let result = if ok {
                    self.pin.succeed();
                    self.save_pin()
                } else {
                    Ok(())
                };
                let _ = reply.send(result);
            }
            Command::SetPin {
                hash,
                previous,
                reply,
            } => {
                let result = if self.pin.hash != previous {
                    Err(Error::PinChanged)
                } else {
                    let old = std::mem::take(&mut self.pin);
                    self.pin = PinState {
                        hash: Some(hash),
                        failures: 0,
                        locked_until_ms: 0,
                    };
                    self.save_pin().inspect_err(|_| self.pin = old)
                };
                let _ = reply.send(result);
            }
        }
    }
}

impl Actor {
    /// Joining another vault is allowed only while this one is empty and unpaired.
    fn may_adopt(&self) -> Result<(), Error> {
        if !self.vault.is_empty() {
            return Err(Error::NotEmpty(self.vault.len() as u64));
        }
        let others = self.paired().len();
        if others > 0 {
            return Err(Error::AlreadyPaired(others as u64));
        }
        Ok(())
    }

    /// Replaces this (empty) vault with a replica of another: same id and keyring, sealed by this device's
    /// keystore, with the members' entries and addresses and this device's entry. The passkeys arrive by sync.
    /// The sealed keyring is written first, then the document; a crash in between leaves a keyring that does
    /// not open the old document, and the daemon refuses to start until the state directory is cleared.
    fn adopt(
        &mut self,
        vault_id: VaultId,
        keyring: &[u8],
        members: Vec<Member>,
        me: Device,
    ) -> Result<(), Error> {
        let ring = decode_keyring(keyring)?;
        let mut vault = Vault::create(vault_id, ring)?;
        for m in &members {
            if m.device.id.as_str() != self.me.to_string() {
                vault.add_device(m.device.clone())?;
            }
        }
        vault.add_device(me)?;
        let full = vault.save();
        let (choice, tpm) = &self.keystore;
        let current = store::read_keyring(&self.db)?;
        let mut opened = keystore::open_for(*choice, tpm, current.as_deref())?;
        let sealed = opened.keystore.seal(keyring)?;
        drop(opened);
        store::write_keyring(&self.db, &sealed)?;
        self.store.replace(&full, &[])?;
        for m in &members {
            let list = serde_json::to_vec(&m.addrs).unwrap_or_default();
            if let Err(e) = self.store.put_meta(&addrs_key(m.device.id.as_str()), &list) {
                tracing::warn!(error = %e, "cannot store peer addresses");
            }
        }
        tracing::info!(vault = %vault.id(), "joined a vault: this device's replica was replaced");
        self.vault = vault;
        self.keys.clear();
        self.held_by.clear();
        self.peers.clear();
        self.dirty = false;
        self.full_save_needed = false;
        self.send_paired();
        Ok(())
    }

    /// A local change: every connected peer gets it as soon as it is on disk.
    fn local_change(&mut self) {
        if self.dirty {
            for p in self.peers.values_mut() {
                p.wants_send |= p.connected;
            }
        }
    }
}

/// This machine's host name, as the default device name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "passmesh device".to_owned())
}

fn info(p: &passmesh_crdt::Passkey, backed_up: bool) -> PasskeyInfo {
    PasskeyInfo {
        credential_id: Base64Url(p.credential_id.clone()),
        rp_id: p.rp_id.clone(),
        user_name: p.user_name.clone(),
        user_display_name: p.user_display_name.clone(),
        user_handle: Base64Url(p.user_handle.clone()),
        label: p.label.clone(),
        created_at_ms: p.created_at_ms,
        backed_up,
    }
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Whether any of `ids` is a credential of `rp_id` in this vault.
    pub async fn any_excluded(&self, rp_id: String, ids: Vec<Vec<u8>>) -> Result<bool, Error> {
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
        allow: Vec<Vec<u8>>,
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
    pub async fn delete(&self, credential_id: Vec<u8>) -> Result<bool, Error> {
        self.ask(|reply| Command::Delete {
            credential_id,
            reply,
        })
        .await?
    }

    /// Sets a passkey's label; `false` if there was no such passkey. Returns once it is on disk.
    pub async fn rename(&self, credential_id: Vec<u8>, label: String) -> Result<bool, Error> {
        self.ask(|reply| Command::Rename {
            credential_id,
            label,
            reply,
        })
        .await?
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

    /// Replaces this device's empty, unpaired vault with a replica of `vault_id` (its encoded `keyring`,
    /// sealed here), listing `members` and `me`; with `check_only` it only says whether that would be allowed.
    pub async fn adopt(
        &self,
        vault_id: VaultId,
        keyring: Zeroizing<Vec<u8>>,
        members: Vec<Member>,
        me: Device,
        check_only: bool,
    ) -> Result<(), Error> {
        self.ask(|reply| Command::Adopt {
            vault_id,
            keyring,
            members,
            me: Box::new(me),
            check_only,
            reply,
        })
        .await?
    }

    /// Applies a new PIN policy (config reload) from the next attempt on.
    pub async fn set_policy(&self, policy: Policy) -> Result<(), Error> {
        self.ask(|reply| Command::SetPolicy { policy, reply }).await
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

    /// Sets a new PIN hash and clears the attempt counter, provided the current hash is still `previous`
    /// (the one the caller verified, or none): two concurrent changes cannot both win.
    pub async fn set_pin(&self, hash: PinHash, previous: Option<PinHash>) -> Result<(), Error> {
        self.ask(|reply| Command::SetPin {
            hash,
            previous,
            reply,
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_encoding_round_trips_and_rejects_garbage() {
        let mut k = Keyring::new(Epoch(0), VaultKey::from_bytes([7; 32]));
        k.insert(Epoch(1), VaultKey::from_bytes([9; 32]));
        k.set_current(Epoch(1)).unwrap();
        let b = encode_keyring(&k);
        let d = decode_keyring(&b).unwrap();
        assert_eq!(d.current(), Epoch(1));
        assert_eq!(d.key(Epoch(0)).unwrap().as_bytes(), &[7; 32]);
        assert_eq!(d.key(Epoch(1)).unwrap().as_bytes(), &[9; 32]);
        for bad in [&b[..0], &b[..3], &b[..b.len() - 1], &[2u8, 0, 0, 0, 0][..]] {
            assert!(decode_keyring(bad).is_err());
        }
    }
}
