//! The vault: an automerge document of encrypted records, with an in-memory index of the decrypted ones.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ReadDoc};

use crate::approval::{self, PinKey};
use crate::audit::{self, AuditEntry, Event, Verdict};
use crate::doc::{self, AuditValue, Shape};
use crate::index::Index;
use crate::members::{
    self, EntryFact, EpochInfo, InboxEntry, LocalDevice, Member, MemberState, Removal, RemovalFact,
};
use crate::record;
use crate::{
    Device, DeviceId, Epoch, Error, Keyring, MemberKind, NewPasskey, Passkey, RecordId, VaultId,
    VaultKey,
};

/// One replica of a user's vault.
///
/// Local operations commit one automerge change each. Reads (`passkeys`, `find_by_*`) are served from an
/// in-memory index of decrypted records and never decrypt or touch the document. Sync is sans-IO: the caller
/// keeps one [`SyncState`] per peer and moves the bytes.
pub struct Vault {
    doc: Automerge,
    id: VaultId,
    keyring: Keyring,
    shape: Shape,
    index: Index,
    devices: BTreeMap<DeviceId, Device>,
    device_problems: Vec<(DeviceId, Error)>,
    /// Heads at the last `save`/`save_incremental` (empty before the first one).
    saved_heads: Vec<ChangeHash>,
    /// The genesis change every change of this vault descends from.
    genesis: ChangeHash,
    /// Which record (device) each known record (device) map belongs to, to map remote ops to records.
    record_objs: HashMap<ObjId, RecordId>,
    device_objs: HashMap<ObjId, DeviceId>,
    /// Whether the document root is still as the genesis wrote it (reported once when that changes).
    root_pristine: bool,
    /// This device, once known: it signs removals and epochs and unwraps the epoch keys wrapped to it.
    me: Option<LocalDevice>,
    /// Every readable device entry, judged (see [`members::judge`]).
    members: BTreeMap<DeviceId, Member>,
    /// The epoch each readable device entry is due for re-encryption from (see [`Passkey::epoch`]).
    device_epochs: BTreeMap<DeviceId, Epoch>,
    /// The map objects of the listed epochs, to tell which remote ops touch them.
    epoch_objs: HashSet<ObjId>,
    /// The key epochs as judged from the document.
    epochs: EpochState,
    /// Every signed entry, removal and epoch description ever written, from the change history.
    facts: Facts,
    /// The devices this replica trusts without a signature chain (see [`Vault::set_anchors`]).
    anchors: Option<BTreeSet<DeviceId>>,
    /// Anchors count only through entries they signed themselves (see [`Vault::set_signed_anchors`]).
    signed_anchors: bool,
    /// The changes of the removals that count, per removed device (from the last judging).
    removal_changes: HashMap<DeviceId, Vec<Option<ChangeHash>>>,
    /// Each device's published inbox of the highest generation whose signature verifies.
    inboxes: HashMap<DeviceId, InboxEntry>,
    /// The valid approvals and PIN-key chains (see [`Vault::current_approved`]), with the sizes of the facts
    /// they were judged from.
    approvals: Option<((usize, usize), Approvals)>,
    /// First PIN keys the caller trusts (see [`Vault::trust_pin_keys`]).
    trusted_pin_keys: HashSet<(DeviceId, [u8; 32])>,
    /// Passkeys remote changes lost (see [`Vault::take_lost`]), not yet taken.
    lost: Vec<Lost>,
}

/// The approvals that count but for the trust in their device's first PIN key, and every device's first key.
#[derive(Clone, Default)]
struct Approvals {
    /// (approval, the change that wrote it).
    valid: Vec<(approval::Approval, ChangeHash)>,
    roots: Vec<(DeviceId, [u8; 32])>,
}

/// The signed removals and epoch descriptions ever written to the document, taken from its change history as
/// changes arrive: a value deleted or overwritten later (by a buggy peer, or by a removed device whose changes a
/// device that has not heard of its removal passes on) still counts. Judging uses these, never only the current
/// values of the maps.
#[derive(Default)]
struct Facts {
    /// (device, its signed entry's bytes, the change that wrote it).
    entries: Vec<(DeviceId, Vec<u8>, ChangeHash)>,
    /// The device entry maps seen created.
    entry_objs: HashMap<ObjId, DeviceId>,
    /// (removed device, the removal's bytes, the change that wrote it).
    removals: Vec<(DeviceId, Vec<u8>, ChangeHash)>,
    /// (epoch, its description's bytes, the change that wrote it).
    epochs: Vec<(Epoch, Vec<u8>, ChangeHash)>,
    /// The epoch maps seen created.
    epoch_objs: HashMap<ObjId, Epoch>,
    /// (key, entry bytes, the change that wrote it): every value ever written to the audit log.
    audit: Vec<(String, Vec<u8>, ChangeHash)>,
    /// (device, inbox entry bytes): every inbox ever published.
    inboxes: Vec<(DeviceId, Vec<u8>)>,
    /// (recovery key, statement bytes): every statement of anchors written in a device entry's map.
    recovery_anchors: Vec<(DeviceId, Vec<u8>)>,
    /// (record, the change that deleted it from the records map): every deletion of a record.
    deletions: Vec<(RecordId, ChangeHash)>,
    /// The heads up to which the history has been read.
    heads: Vec<ChangeHash>,
}

impl Facts {
    /// Reads the changes of `doc` not read yet.
    fn refresh(&mut self, doc: &Automerge, shape: &Shape) {
        let ext = &shape.ext;
        use automerge::legacy::{Key, ObjectId, OpType};
        let heads = doc.get_heads();
        if heads == self.heads {
            return;
        }
        for change in doc.get_changes(&self.heads) {
            let hash = change.hash();
            let start = change.start_op().get();
            let actor = change.actor_id().clone();
            for (i, op) in change.decode().operations.into_iter().enumerate() {
                let ObjectId::Id(id) = &op.obj else { continue };
                let obj = ObjId::Id(id.0, id.1.clone(), 0);
                let Key::Map(key) = &op.key else { continue };
                match &op.action {
                    OpType::Delete if obj == shape.records => {
                        if let Ok(id) = key.parse::<RecordId>() {
                            self.deletions.push((id, hash));
                        }
                    }
                    OpType::Put(automerge::ScalarValue::Bytes(b)) if obj == ext.removed => {
                        self.removals
                            .push((DeviceId::new(key.to_string()), b.clone(), hash));
                    }
                    OpType::Put(automerge::ScalarValue::Bytes(b)) if obj == ext.audit => {
                        self.audit.push((key.to_string(), b.clone(), hash));
                    }
                    OpType::Put(automerge::ScalarValue::Bytes(b)) if obj == ext.inboxes => {
                        self.inboxes
                            .push((DeviceId::new(key.to_string()), b.clone()));
                    }
                    OpType::Make(automerge::ObjType::Map) if obj == shape.devices => {
                        self.entry_objs.insert(
                            ObjId::Id(start + i as u64, actor.clone(), 0),
                            DeviceId::new(key.to_string()),
                        );
                    }
                    OpType::Put(automerge::ScalarValue::Bytes(b)) if key.as_str() == "e" => {
                        if let Some(id) = self.entry_objs.get(&obj) {
                            self.entries.push((id.clone(), b.clone(), hash));
                        }
                    }
                    OpType::Put(automerge::ScalarValue::Bytes(b)) if key.as_str() == "ra" => {
                        if let Some(id) = self.entry_objs.get(&obj) {
                            self.recovery_anchors.push((id.clone(), b.clone()));
                        }
                    }
                    OpType::Make(automerge::ObjType::Map) if obj == ext.epochs => {
                        if let Ok(epoch) = key.parse::<u32>() {
                            self.epoch_objs.insert(
                                ObjId::Id(start + i as u64, actor.clone(), 0),
                                Epoch(epoch),
                            );
                        }
                    }
                    OpType::Put(automerge::ScalarValue::Bytes(b)) if key.as_str() == "info" => {
                        if let Some(epoch) = self.epoch_objs.get(&obj) {
                            self.epochs.push((*epoch, b.clone(), hash));
                        }
                    }
                    _ => {}
                }
            }
        }
        self.heads = heads;
    }
}

/// What the document says about key epochs.
#[derive(Clone, Debug, Default)]
struct EpochState {
    /// The newest valid epoch with its generation (ordered by generation, then id): the one every replica
    /// converges on.
    current: Option<(u32, Epoch)>,
    /// Whether the current epoch's key was given to no device that is now removed.
    clean: bool,
}

/// What [`Vault::maintain`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// A new epoch was made (the current one had been given to a device that is now removed).
    pub rotated: Option<Epoch>,
    /// Records and device entries moved to the current epoch.
    pub reencrypted: usize,
    /// Devices the current epoch's key was wrapped to because they had no wrap in it.
    pub wrapped: usize,
    /// This device acknowledged the current epoch: it needs no older key any more (see [`Vault::keyring_due`]).
    pub acknowledged: bool,
}

impl Maintenance {
    /// Whether the document changed.
    pub fn changed(&self) -> bool {
        self.rotated.is_some() || self.reencrypted > 0 || self.wrapped > 0 || self.acknowledged
    }
}

/// What keeps this replica's epoch keys before the current one (see [`Vault::old_keys`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldKeys {
    /// The keyring holds the current epoch alone.
    None,
    /// The current epoch is not settled here yet (a rotation is under way, or this device is not an active
    /// member).
    Rotating,
    /// These active devices have not acknowledged the current epoch (they are away, or of an older release).
    Unacknowledged(Vec<DeviceId>),
    /// A value in the document is still sealed under an older epoch this device holds (a record no device can
    /// read, or one written by a buggy or hostile member).
    StillUsed,
    /// Nothing in the document needs them: they can be destroyed.
    Ready,
}

/// A passkey a batch of remote changes took away (see [`Vault::take_lost`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Its record.
    pub record_id: RecordId,
    /// This replica's document heads just before the batch: where the last good version is.
    pub before: Vec<[u8; 32]>,
    /// The changes of the batch that deleted the record (empty: it is still there, altered or unreadable).
    pub deleted_by: Vec<[u8; 32]>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("id", &self.id)
            .field("keyring", &self.keyring)
            .field("passkeys", &self.index.len())
            .field("problems", &self.index.problems().len())
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A brand-new vault.
    ///
    /// The first change (the genesis: format, vault id, and the empty record, device and key-check maps) is
    /// deterministic from `id` alone, so every device that calls `create` with the same id gets a
    /// byte-identical genesis change and the maps never conflict. A second change, under a fresh random actor
    /// of this replica, stores the key check of every epoch in `keyring`; its value is deterministic too, so
    /// two devices writing it concurrently write the same bytes.
    pub fn create(id: VaultId, keyring: Keyring) -> Result<Vault, Error> {
        let (mut doc, shape) = doc::genesis(&id)?;
        let genesis = doc::genesis_hash(&id)?;
        doc::ensure_ext(&mut doc, &id)?;
        doc.set_actor(ActorId::random());
        doc::write_missing_keychecks(&mut doc, &shape, &id, &keyring)?;
        Ok(Vault::from_parts(
            doc,
            id,
            keyring,
            shape,
            Vec::new(),
            genesis,
            None,
        ))
    }

    /// A vault around `doc`, with nothing read from it yet (the caller rebuilds the index).
    fn from_parts(
        doc: Automerge,
        id: VaultId,
        keyring: Keyring,
        shape: Shape,
        saved_heads: Vec<ChangeHash>,
        genesis: ChangeHash,
        me: Option<LocalDevice>,
    ) -> Vault {
        Vault {
            doc,
            id,
            keyring,
            shape,
            index: Index::default(),
            devices: BTreeMap::new(),
            device_problems: Vec::new(),
            saved_heads,
            genesis,
            record_objs: HashMap::new(),
            device_objs: HashMap::new(),
            root_pristine: true,
            me,
            members: BTreeMap::new(),
            device_epochs: BTreeMap::new(),
            epoch_objs: HashSet::new(),
            epochs: EpochState::default(),
            facts: Facts::default(),
            anchors: None,
            signed_anchors: false,
            removal_changes: HashMap::new(),
            inboxes: HashMap::new(),
            approvals: None,
            trusted_pin_keys: HashSet::new(),
            lost: Vec::new(),
        }
    }

    /// Loads a vault from the output of [`save`](Self::save) followed by any number of
    /// [`save_incremental`](Self::save_incremental) chunks.
    ///
    /// `WrongKey` if a key of the keyring matches none of the vault's key-check values for its epoch,
    /// `UnknownEpoch` if the vault has a key check for none of the keyring's epochs, `Malformed` for bytes that
    /// are not a vault. Records that fail to decrypt do not fail the load: they are left out and listed by
    /// [`problems`](Self::problems).
    pub fn load(bytes: &[u8], keyring: Keyring) -> Result<Vault, Error> {
        Self::load_as(bytes, keyring, None)
    }

    /// Like [`load`](Self::load), for device `me`: epoch keys wrapped to it are unwrapped from the document, and
    /// it can sign removals and rotations. A document made before the extension change gets it (in memory: the
    /// next [`save_incremental`](Self::save_incremental) returns it).
    pub fn load_as(
        bytes: &[u8],
        keyring: Keyring,
        me: Option<LocalDevice>,
    ) -> Result<Vault, Error> {
        if bytes.is_empty() {
            return Err(Error::Malformed("empty vault".into()));
        }
        let mut doc = doc::contained("vault document", || Automerge::load(bytes))?
            .map_err(|e| Error::Malformed(format!("not a vault document: {e}")))?;
        let (id, shape) = doc::read_shape(&doc)?;
        doc::verify_keychecks(&doc, &shape, &id, &keyring, doc::KeyCheck::AnyMatch)?;
        let saved_heads = doc.get_heads();
        doc::ensure_ext(&mut doc, &id)?;
        let genesis = doc::genesis_hash(&id)?;
        let mut vault = Vault::from_parts(doc, id, keyring, shape, saved_heads, genesis, me);
        vault.root_pristine = doc::root_is_pristine(&vault.doc, &id)?;
        vault.rebuild();
        Ok(vault)
    }

    /// Makes `me` this replica's device (see [`load_as`](Self::load_as)), e.g. after [`create`](Self::create).
    pub fn set_local(&mut self, me: LocalDevice) {
        self.me = Some(me);
        self.rebuild();
    }

    /// Whether the document holds changes that no `save`/`save_incremental` has returned yet.
    pub fn has_unsaved_changes(&self) -> bool {
        self.doc.get_heads() != self.saved_heads
    }

    /// The vault's id.
    pub fn id(&self) -> VaultId {
        self.id
    }

    /// The keys this replica reads and writes with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The full, compacted document. Later `save_incremental` calls return changes after this point.
    pub fn save(&mut self) -> Vec<u8> {
        self.saved_heads = self.doc.get_heads();
        self.doc.save()
    }

    /// The full, compacted document, for a copy kept elsewhere (a backup): unlike [`save`](Self::save) it leaves
    /// what [`save_incremental`](Self::save_incremental) returns next as it is.
    pub fn snapshot(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// The changes since the last `save`/`save_incremental` (empty if there are none), to be appended to
    /// what was saved before. A new vault's first call returns everything.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved_heads);
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    /// The document's current heads (hashes of the latest changes, sorted). Equal heads mean equal documents.
    pub fn heads(&self) -> Vec<[u8; 32]> {
        self.doc.get_heads().into_iter().map(|h| h.0).collect()
    }

    /// Adds a passkey, encrypted under the keyring's current epoch, in one change. `now_ms` becomes its
    /// update time. `InvalidInput` if a field is out of bounds (e.g. a private key that is not 32 bytes).
    pub fn insert(&mut self, p: NewPasskey, now_ms: u64) -> Result<RecordId, Error> {
        p.validate()?;
        let passkey = Passkey {
            record_id: RecordId::random(),
            epoch: self.keyring.current(),
            credential_id: p.credential_id,
            rp_id: p.rp_id,
            user_handle: p.user_handle,
            user_name: p.user_name,
            user_display_name: p.user_display_name,
            label: None,
            private_key: p.private_key,
            created_at_ms: p.created_at_ms,
            updated_at_ms: now_ms,
            trashed_at_ms: None,
        };
        let sealed = doc::seal_record(&self.id, self.keyring.current_key(), &passkey)?;
        let shape = &self.shape;
        let id = passkey.record_id;
        let obj = self
            .doc
            .transact(|tx| doc::put_record(tx, shape, &id, sealed))
            .map_err(|f| Error::from(f.error))?
            .result;
        self.record_objs.insert(obj, id);
        self.index.upsert(passkey);
        Ok(id)
    }

    /// Moves passkey `id` to the trash: it is hidden from [`passkeys`](Self::passkeys), the lookups and
    /// [`len`](Self::len) everywhere the change reaches, listed by [`trashed`](Self::trashed), and can be
    /// restored by any device until it is purged. Logged (`passkey-trashed`). `NotFound` if there is no live
    /// readable passkey `id` (the record's own error if it is unreadable).
    pub fn trash(&mut self, id: &RecordId, now_ms: u64) -> Result<(), Error> {
        let current = self.readable(id)?;
        if current.trashed_at_ms.is_some() {
            return Err(Error::NotFound(*id));
        }
        let mut updated = current.clone();
        updated.trashed_at_ms = Some(now_ms);
        self.write_trashed(updated, Event::Trashed, now_ms)
    }

    /// Takes passkey `id` out of the trash. Logged (`passkey-restored`). `NotFound` if it is not in the trash.
    pub fn restore(&mut self, id: &RecordId, now_ms: u64) -> Result<(), Error> {
        let current = self.readable(id)?;
        if current.trashed_at_ms.is_none() {
            return Err(Error::NotFound(*id));
        }
        let mut updated = current.clone();
        updated.trashed_at_ms = None;
        self.write_trashed(updated, Event::Restored, now_ms)
    }

    fn readable(&self, id: &RecordId) -> Result<&Passkey, Error> {
        self.index.get(id).ok_or_else(|| {
            self.index
                .problem(id)
                .cloned()
                .unwrap_or(Error::NotFound(*id))
        })
    }

    fn write_trashed(&mut self, p: Passkey, event: Event, now_ms: u64) -> Result<(), Error> {
        let id = p.record_id;
        let obj = doc::record_obj(&self.doc, &self.shape, &id)?.ok_or(Error::NotFound(id))?;
        let logged = self.audit_value(event, &id.to_string(), now_ms);
        let ext = &self.shape.ext;
        self.doc
            .transact(|tx| {
                doc::set_trashed(tx, &obj, p.trashed_at_ms)?;
                doc::put_audit(tx, ext, logged)
            })
            .map_err(|f| Error::from(f.error))?;
        self.index.upsert(p);
        Ok(())
    }

    /// The passkeys in the trash, longest there first.
    pub fn trashed(&self) -> impl Iterator<Item = &Passkey> {
        self.index.trashed()
    }

    /// How many passkeys are in the trash.
    pub fn trashed_len(&self) -> usize {
        self.index.trashed_len()
    }

    /// Purges records for good (trashed, live or unreadable: whatever is in the document under these ids),
    /// each logged (`passkey-purged`), in one change; then, if any was purged and this device is an active
    /// member, makes a new key epoch (see [`rotate`](Self::rotate)), so that nothing written from now on is
    /// under a key that also opens the purged records. Returns how many were purged and the new epoch. Ids not
    /// in the document are skipped.
    ///
    /// With `approval` (the key of this device's PIN, see [`approval`](crate::approval)) the new epoch is
    /// approved: every device may destroy the older keys as soon as all hold the new one, instead of keeping
    /// them (and what others deleted, see [`take_lost`](Self::take_lost)) a while, and the deletions before it
    /// are confirmed (see [`confirmed`](Self::confirmed)). With `approval` and nothing to purge it rotates and
    /// approves all the same: the caller uses that to confirm others' deletions.
    pub fn purge(
        &mut self,
        ids: &[RecordId],
        now_ms: u64,
        approval: Option<&PinKey>,
    ) -> Result<(usize, Option<Epoch>), Error> {
        let mut present = Vec::with_capacity(ids.len());
        for id in ids {
            let key = id.to_string();
            if let Some((_, obj)) = self.doc.get(&self.shape.records, key.as_str())?
                && !present.iter().any(|(p, _, _)| p == id)
            {
                let logged = self.audit_value(Event::Purged, &key, now_ms);
                present.push((*id, obj, logged));
            }
        }
        if present.is_empty() && approval.is_none() {
            return Ok((0, None));
        }
        if !present.is_empty() {
            let shape = &self.shape;
            self.doc
                .transact::<_, _, automerge::AutomergeError>(|tx| {
                    for (id, _, logged) in &present {
                        tx.delete(&shape.records, id.to_string())?;
                        doc::put_audit(tx, &shape.ext, logged.clone())?;
                    }
                    Ok(())
                })
                .map_err(|f| Error::from(f.error))?;
            for (id, obj, _) in &present {
                self.record_objs.remove(obj);
                self.index.remove(id);
            }
        }
        let epoch = if self.active_me().is_ok() {
            let epoch = self.rotate(now_ms)?;
            if let Some(key) = approval {
                self.approve(epoch, key, now_ms)?;
            }
            Some(epoch)
        } else {
            None
        };
        Ok((present.len(), epoch))
    }

    /// Publishes `key` as this device's PIN key (see [`approval`](crate::approval)): its first one when it has
    /// none, else signed by `previous`, which must be the last one published. Returns whether it wrote; writes
    /// nothing if `key` is already the last one, or if it cannot extend the chain (`previous` is not its end, or
    /// the device's chain is void): this device's approvals then count for nothing, so every device keeps old
    /// keys longer, which loses nothing.
    pub fn publish_pin_key(
        &mut self,
        key: &PinKey,
        previous: Option<&PinKey>,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let me = self.active_me()?.id().clone();
        let log = self.audit_entries();
        let tip = approval::chains(&self.id, &log).get(&me).map(|c| c.tip);
        if tip == Some(key.public()) {
            return Ok(false);
        }
        let any = log
            .iter()
            .any(|e| e.event == Event::PinKey && e.device == me && e.verdict == Verdict::Verified);
        let signer = match (tip, previous) {
            (None, _) if !any => None,
            (Some(t), Some(p)) if t == p.public() => Some(p),
            _ => return Ok(false),
        };
        let subject = approval::key_subject(&self.id, &me, key, signer);
        self.log_event(Event::PinKey, &subject, now_ms)?;
        Ok(true)
    }

    /// Approves `epoch` with `key`, publishing `key` first if this device has no PIN key yet. Writes nothing if
    /// `key` is not the end of this device's chain (see [`publish_pin_key`](Self::publish_pin_key)).
    fn approve(&mut self, epoch: Epoch, key: &PinKey, now_ms: u64) -> Result<(), Error> {
        self.publish_pin_key(key, None, now_ms)?;
        let me = self.active_me()?.id().clone();
        let log = self.audit_entries();
        if approval::chains(&self.id, &log).get(&me).map(|c| c.tip) != Some(key.public()) {
            return Ok(());
        }
        let subject = approval::approval_subject(&self.id, &me, epoch, key);
        self.log_event(Event::Approved, &subject, now_ms)
    }

    /// Appends an audit entry of this device, alone in its change.
    fn log_event(&mut self, event: Event, subject: &str, now_ms: u64) -> Result<(), Error> {
        let logged = self.audit_value(event, subject, now_ms);
        let ext = &self.shape.ext;
        self.doc
            .transact(|tx| doc::put_audit(tx, ext, logged))
            .map_err(|f| Error::from(f.error))?;
        Ok(())
    }

    /// Whether the user approved the current epoch with the PIN on some active device whose first PIN key this
    /// replica trusts (see [`approval`](crate::approval)): then every device may destroy older keys as soon as
    /// all hold it. Checks the audit log's PIN-key and approval entries when the log or the membership changed
    /// since the last call, else answers from memory.
    pub fn current_approved(&mut self) -> bool {
        let Some((_, current)) = self.epochs.current else {
            return false;
        };
        self.approvals()
            .valid
            .iter()
            .any(|(a, _)| a.epoch == current && self.trusts(a))
    }

    /// Every device's first PIN key (devices with none, or with two, are left out): what the caller notes the
    /// first sight of, to trust them after a while (see [`trust_pin_keys`](Self::trust_pin_keys)).
    pub fn pin_key_roots(&mut self) -> Vec<(DeviceId, [u8; 32])> {
        self.approvals().roots
    }

    /// Trusts these first PIN keys (device, key) from now on, besides its own device's. The daemon passes those
    /// it has known for `[vault] trash_days`, and those the device that invited it trusted: a thief who sets a
    /// PIN on a stolen device that had none cannot approve anything before the user has had that long to remove
    /// the device.
    pub fn trust_pin_keys(&mut self, keys: HashSet<(DeviceId, [u8; 32])>) {
        self.trusted_pin_keys = keys;
    }

    /// Whether this replica trusts the first PIN key of approval `a`'s device: its own device's, or one the
    /// caller trusts (see [`trust_pin_keys`](Self::trust_pin_keys)).
    fn trusts(&self, a: &approval::Approval) -> bool {
        self.me.as_ref().is_some_and(|me| a.device == *me.id())
            || self.trusted_pin_keys.contains(&(a.device.clone(), a.root))
    }

    /// The approvals that count but for the trust in first PIN keys, judged anew when the facts changed.
    fn approvals(&mut self) -> Approvals {
        self.facts.refresh(&self.doc, &self.shape);
        let judged_from = (
            self.facts.audit.len()
                + self.facts.entries.len()
                + self.facts.removals.len()
                + self.facts.epochs.len(),
            self.members
                .values()
                .filter(|m| m.state == MemberState::Active)
                .count(),
        );
        if let Some((at, cached)) = &self.approvals
            && *at == judged_from
        {
            return cached.clone();
        }
        let judged = self.judged_audit(Some(&[Event::PinKey, Event::Approved]));
        let log: Vec<AuditEntry> = judged.iter().map(|(e, _)| e.clone()).collect();
        // The epoch an approval names must have been made by the approving device (each description checked
        // once, only for the epochs some approval names).
        let named: HashSet<Epoch> = log
            .iter()
            .filter(|e| e.event == Event::Approved)
            .filter_map(|e| approval::parse_approval(&e.subject).map(|(epoch, _)| epoch))
            .collect();
        let made: HashSet<(Epoch, DeviceId)> = self
            .facts
            .epochs
            .iter()
            .filter(|(e, ..)| named.contains(e))
            .filter_map(|(e, bytes, _)| {
                EpochInfo::decode(bytes)
                    .filter(|i| i.verifies(&self.id, *e))
                    .map(|i| (*e, i.by))
            })
            .collect();
        let valid = approval::approvals(&self.id, &log, |d| self.is_active(d))
            .into_iter()
            .filter(|a| made.contains(&(a.epoch, a.device.clone())))
            .map(|a| {
                let change = judged[a.index].1;
                (a, change)
            })
            .collect();
        let roots = approval::chains(&self.id, &log)
            .into_iter()
            .map(|(d, c)| (d, c.root))
            .collect();
        let approvals = Approvals { valid, roots };
        self.approvals = Some((judged_from, approvals.clone()));
        approvals
    }

    fn is_active(&self, id: &DeviceId) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.state == MemberState::Active)
    }

    /// The judged entries approvals are made of.
    fn audit_entries(&mut self) -> Vec<AuditEntry> {
        self.judged_audit(Some(&[Event::PinKey, Event::Approved]))
            .into_iter()
            .map(|(e, _)| e)
            .collect()
    }

    /// Writes `p` (an earlier version of its record) as the record's whole map, re-encrypted under the current
    /// epoch with `now_ms` as its update time, and logs it (`passkey-restored`), in one change.
    fn reinsert(&mut self, mut p: Passkey, now_ms: u64) -> Result<(), Error> {
        let id = p.record_id;
        p.epoch = self.keyring.current();
        p.updated_at_ms = now_ms;
        let sealed = doc::seal_record(&self.id, self.keyring.current_key(), &p)?;
        let logged = self.audit_value(Event::Restored, &id.to_string(), now_ms);
        let previous = doc::record_obj(&self.doc, &self.shape, &id).ok().flatten();
        let shape = &self.shape;
        let obj = self
            .doc
            .transact(|tx| {
                let obj = doc::put_record(tx, shape, &id, sealed)?;
                doc::put_audit(tx, &shape.ext, logged)?;
                Ok::<_, automerge::AutomergeError>(obj)
            })
            .map_err(|f| Error::from(f.error))?
            .result;
        if let Some(previous) = previous {
            self.record_objs.remove(&previous);
        }
        self.record_objs.insert(obj, id);
        self.index.upsert(p);
        Ok(())
    }

    /// Passkeys that batches of remote changes deleted (a purge, or a modified client's deletion), made
    /// unreadable or replaced (another credential, key, site or user: no honest change alters those; a label,
    /// the trash mark and re-encryption do not count) since the last call, each with the document heads just
    /// before the batch — this replica's own state, whatever points in history the changes claim to start
    /// from — where its last good version is (see [`version_at`](Self::version_at)). What the caller offers
    /// back (and keeps the keys for) until the user confirms or restores it, or it is old enough.
    pub fn take_lost(&mut self) -> Vec<Lost> {
        std::mem::take(&mut self.lost)
    }

    /// For each noted loss (record, [`Lost::deleted_by`]): whether the user confirmed it, and the device whose
    /// verified `passkey-purged` entry for it is in a deleting change (`None`: deleted without one, or not
    /// deleted). A deletion is confirmed when every deleting change holds such an entry by a device that later
    /// approved (see [`current_approved`](Self::current_approved)) in another change, causally after it, with a
    /// PIN key this replica trusts, an epoch whose every description is causally after the deletion too: a
    /// user's approval confirms that device's own purges, never what some other device (a thief's) deleted, nor
    /// a replacement, nor (by an old approval copied later) a deletion made after it. One pass over the audit
    /// log's purge entries for all.
    pub fn confirmations(
        &mut self,
        losses: &[(RecordId, &[[u8; 32]])],
    ) -> Vec<(bool, Option<DeviceId>)> {
        if losses.iter().all(|(_, d)| d.is_empty()) {
            return vec![(false, None); losses.len()];
        }
        // (approving device, the approval's change, every change that wrote its epoch's description).
        let approvals: Vec<(DeviceId, ChangeHash, Vec<ChangeHash>)> = self
            .approvals()
            .valid
            .iter()
            .filter(|(a, _)| self.trusts(a))
            .map(|(a, c)| {
                let made: Vec<ChangeHash> = self
                    .facts
                    .epochs
                    .iter()
                    .filter(|(e, ..)| *e == a.epoch)
                    .map(|(.., change)| *change)
                    .collect();
                (a.device.clone(), *c, made)
            })
            .collect();
        let mut purges: HashMap<(ChangeHash, String), Vec<DeviceId>> = HashMap::new();
        for (e, change) in self.judged_audit(Some(&[Event::Purged])) {
            if e.verdict == Verdict::Verified {
                purges
                    .entry((change, e.subject))
                    .or_default()
                    .push(e.device);
            }
        }
        let mut causality = doc::Causality::new(&self.doc);
        losses
            .iter()
            .map(|(id, deleted_by)| {
                let subject = id.to_string();
                let by = |d: &[u8; 32]| purges.get(&(ChangeHash(*d), subject.clone()));
                let purged_by = deleted_by.iter().find_map(|d| by(d)?.first().cloned());
                let confirmed = !deleted_by.is_empty()
                    && deleted_by.iter().all(|d| {
                        let d = ChangeHash(d.to_owned());
                        by(&d.0).is_some_and(|devices| {
                            // The approved epoch must have been made after the deletion, too (wherever its
                            // description was written): an old approval copied after a thief's deletion confirms
                            // nothing.
                            approvals.iter().any(|(device, a, made)| {
                                devices.contains(device)
                                    && *a != d
                                    && causality.before(&d, a)
                                    && !made.is_empty()
                                    && made.iter().all(|m| *m != d && causality.before(&d, m))
                            })
                        })
                    });
                (confirmed, purged_by)
            })
            .collect()
    }

    /// Record `id` as it was at document heads `heads`, decrypted with the keys held; `None` if it did not
    /// exist then or cannot be read.
    pub fn version_at(&self, id: &RecordId, heads: &[[u8; 32]]) -> Option<Passkey> {
        let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
        if heads
            .iter()
            .any(|h| self.doc.get_change_meta_by_hash(h).is_none())
        {
            return None;
        }
        match self.doc.get_at(&self.shape.records, id.to_string(), &heads) {
            Ok(Some((automerge::Value::Object(automerge::ObjType::Map), obj))) => {
                doc::read_record_at(&self.doc, &obj, &heads, &self.id, &self.keyring, id).ok()
            }
            _ => None,
        }
    }

    /// Puts back `version` (from [`version_at`](Self::version_at)) of a record that was deleted or whose content
    /// was replaced: re-encrypted under the current epoch, live, in one change logged `passkey-restored`.
    /// `InvalidInput` if the record as it is now has that very content already.
    pub fn restore_version(&mut self, mut version: Passkey, now_ms: u64) -> Result<(), Error> {
        if self
            .index
            .get(&version.record_id)
            .is_some_and(|now| now.is_same_passkey(&version))
        {
            return Err(Error::InvalidInput("that version is the current one"));
        }
        version.trashed_at_ms = None;
        self.reinsert(version, now_ms)
    }

    /// An audit entry by this device, if it has one.
    fn audit_value(&self, event: Event, subject: &str, now_ms: u64) -> Option<AuditValue> {
        self.me
            .as_ref()
            .map(|me| audit::sign(&self.id, me, event, subject, now_ms))
    }

    /// The audit log: every entry ever written (from the document's history, so an entry deleted or overwritten
    /// since is still here), each judged (see [`audit`](crate::audit)), ordered by time, then device, then (one
    /// device's entries of the same millisecond) as that device wrote them: the same order on every replica. Reads every
    /// entry and checks its signature: O(entries), for `passmesh audit`, not for a hot path.
    pub fn audit(&mut self) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = self
            .judged_audit(None)
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        // Stable: one device's entries of the same millisecond stay in history order (a purge before the rotation
        // it caused), which every replica agrees on; different devices' by device id.
        out.sort_by(|a, b| (a.at_ms, &a.device).cmp(&(b.at_ms, &b.device)));
        out
    }

    /// Every audit entry, judged, with the change that wrote it, in history order.
    /// With `only`, just the entries of those events (checking a signature is what costs).
    fn judged_audit(&mut self, only: Option<&[Event]>) -> Vec<(AuditEntry, ChangeHash)> {
        self.facts.refresh(&self.doc, &self.shape);
        let mut causality = doc::Causality::new(&self.doc);
        let mut seen: HashSet<(&str, &[u8])> = HashSet::new();
        let mut out = Vec::new();
        for (key, bytes, change) in &self.facts.audit {
            if !seen.insert((key.as_str(), bytes.as_slice())) {
                continue;
            }
            let decoded = audit::decode(bytes);
            if let Some(only) = only
                && decoded.as_ref().is_none_or(|s| !only.contains(&s.event))
            {
                continue;
            }
            let Some(s) = decoded else {
                out.push((
                    AuditEntry {
                        key: key.clone(),
                        at_ms: 0,
                        device: DeviceId::new(String::new()),
                        event: Event::Other(0),
                        subject: String::new(),
                        verdict: Verdict::Forged("it is not a valid audit entry"),
                    },
                    *change,
                ));
                continue;
            };
            let verdict = if audit::key_of(bytes) != *key {
                Verdict::Altered
            } else if !s.verifies(&self.id) {
                Verdict::Forged("its signature does not verify")
            } else {
                match self.members.get(&s.device).map(|m| &m.state) {
                    Some(MemberState::Active) => Verdict::Verified,
                    Some(MemberState::Removed { .. }) => {
                        let before_removal = self
                            .removal_changes
                            .get(&s.device)
                            .into_iter()
                            .flatten()
                            .all(|r| r.is_some_and(|r| causality.before(change, &r)));
                        if before_removal {
                            Verdict::Verified
                        } else {
                            Verdict::Forged(
                                "it was written after, or concurrently with, its device's removal",
                            )
                        }
                    }
                    _ => Verdict::Forged("its device is not a member of this vault"),
                }
            };
            out.push((
                AuditEntry {
                    key: key.clone(),
                    at_ms: s.at_ms,
                    device: s.device,
                    event: s.event,
                    subject: s.subject,
                    verdict,
                },
                *change,
            ));
        }
        out
    }

    /// Sets the label of a passkey and its update time. `NotFound` if there is no such record; the record's
    /// own error if it is unreadable.
    pub fn rename(&mut self, id: &RecordId, label: &str, now_ms: u64) -> Result<(), Error> {
        record::validate_label(label)?;
        let Some(current) = self.index.get(id) else {
            return Err(self
                .index
                .problem(id)
                .cloned()
                .unwrap_or(Error::NotFound(*id)));
        };
        // Every v2 field names its own epoch: the new ones go under the current epoch.
        let epoch = self.keyring.current();
        let key = self.keyring.current_key();
        let obj = doc::record_obj(&self.doc, &self.shape, id)?.ok_or(Error::NotFound(*id))?;
        let sealed = doc::seal_rename(&self.id, key, id, epoch, label, now_ms)?;
        self.doc
            .transact(|tx| doc::update_fields(tx, &obj, sealed))
            .map_err(|f| Error::from(f.error))?;
        let mut updated = current.clone();
        updated.label = Some(label.to_owned());
        updated.updated_at_ms = now_ms;
        self.index.upsert(updated);
        Ok(())
    }

    /// All readable passkeys, ordered by creation time, then record id.
    pub fn passkeys(&self) -> impl Iterator<Item = &Passkey> {
        self.index.iter()
    }

    /// One readable passkey, live or in the trash (see [`Passkey::trashed_at_ms`]).
    pub fn passkey(&self, id: &RecordId) -> Option<&Passkey> {
        self.index.get(id)
    }

    /// The number of readable passkeys (records in [`problems`](Self::problems) not counted).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are no readable passkeys.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// The passkeys of one relying party, in list order. An index lookup, no scan.
    pub fn find_by_rp(&self, rp_id: &str) -> impl Iterator<Item = &Passkey> {
        self.index.by_rp(rp_id)
    }

    /// The passkey with this credential id (the oldest, should two records share it). A hash lookup.
    pub fn find_by_credential_id(&self, credential_id: &[u8]) -> Option<&Passkey> {
        self.index.by_credential(credential_id)
    }

    /// Decrypts a record straight from the document, bypassing the index.
    pub fn decrypt_record(&self, id: &RecordId) -> Result<Passkey, Error> {
        let obj = doc::record_obj(&self.doc, &self.shape, id)?.ok_or(Error::NotFound(*id))?;
        doc::read_record(&self.doc, &obj, &self.id, &self.keyring, id)
    }

    /// Records present in the document but unreadable (tampered, unknown epoch, malformed), sorted by id.
    pub fn problems(&self) -> &[(RecordId, Error)] {
        self.index.problems()
    }

    /// Adds a device, or replaces its entry. Its name and time are sealed under the current epoch. A device new
    /// to the table that this device adds is logged (`device-paired`).
    pub fn add_device(&mut self, d: Device) -> Result<(), Error> {
        let logged = (!self.devices.contains_key(&d.id)
            && d.added_by.is_some()
            && d.added_by.as_ref() == self.local_device())
        .then(|| self.audit_value(Event::Paired, d.id.as_str(), d.added_at_ms))
        .flatten();
        self.put_device_entry(d, logged)
    }

    /// Writes entry `d` (with audit entry `logged` in the same change) and judges the membership again.
    fn put_device_entry(&mut self, d: Device, logged: Option<AuditValue>) -> Result<(), Error> {
        d.validate()?;
        let obj = doc::put_device(
            &mut self.doc,
            &self.shape,
            &self.id,
            &self.keyring,
            &d,
            logged,
        )?;
        self.device_objs.insert(obj, d.id.clone());
        self.set_device_problem(&d.id, None);
        self.device_epochs
            .insert(d.id.clone(), self.keyring.current());
        self.devices.insert(d.id.clone(), d);
        self.judge();
        Ok(())
    }

    /// Removes a device from the table. `false` if it was not there.
    pub fn remove_device(&mut self, id: &DeviceId) -> Result<bool, Error> {
        let Some((_, obj)) = self.doc.get(&self.shape.devices, id.as_str())? else {
            return Ok(false);
        };
        let devices = &self.shape.devices;
        self.doc
            .transact(|tx| tx.delete(devices, id.as_str()))
            .map_err(|f| Error::from(f.error))?;
        self.device_objs.remove(&obj);
        self.devices.remove(id);
        self.device_epochs.remove(id);
        self.set_device_problem(id, None);
        self.judge();
        Ok(true)
    }

    /// The readable device entries, sorted by id, whatever their standing (see [`members`](Self::members)).
    pub fn devices(&self) -> Vec<Device> {
        self.devices.values().cloned().collect()
    }

    /// Every readable device entry with its standing, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// The devices that belong to the vault now: valid entries of devices not removed, sorted by id. Only these
    /// may connect, and only these and the recovery keys get new epoch keys.
    pub fn active_devices(&self) -> Vec<Device> {
        self.recipients()
            .into_iter()
            .filter(|d| d.kind == MemberKind::Device)
            .collect()
    }

    /// The recovery keys that belong to the vault now (see [`add_recovery`](Self::add_recovery)), sorted by id.
    pub fn recovery_keys(&self) -> Vec<Device> {
        self.recipients()
            .into_iter()
            .filter(|d| d.kind == MemberKind::Recovery)
            .collect()
    }

    /// Every active member, devices and recovery keys: whom epoch keys are wrapped to.
    fn recipients(&self) -> Vec<Device> {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| m.device.clone())
            .collect()
    }

    /// Adds recovery key `id` (derived from a recovery phrase; `x25519_public` its key) as a member, signed by
    /// this device and logged (`recovery-set`), and gives it the current epoch's key: wrapped to its x25519 key in
    /// the epoch's map, or, for an epoch from before rotation existed (which has no map), by a rotation. Every
    /// later epoch is wrapped to it as well, until it is removed. Returns the rotation's epoch if one was made. A
    /// key already a member is left as it is (`Ok(None)`). `InvalidInput` if `id` is not the member id of an
    /// ed25519 key.
    /// `anchors` and `signature`: the devices a replica restored with this key trusts without a chain, signed by
    /// the key ([`members::sign_recovery_anchors`]), kept in its entry's map.
    pub fn add_recovery(
        &mut self,
        id: &DeviceId,
        x25519_public: [u8; 32],
        anchors: &BTreeSet<DeviceId>,
        signature: &[u8; 64],
        now_ms: u64,
    ) -> Result<Option<Epoch>, Error> {
        let me = self.active_me()?;
        if members::verifying_key(id).is_none() {
            return Err(Error::InvalidInput(
                "a recovery key's id names an ed25519 key",
            ));
        }
        if !members::contributory(&x25519_public) {
            return Err(Error::InvalidInput(
                "a recovery key's x25519 key is of low order",
            ));
        }
        if self.devices.contains_key(id) && !self.is_recovery_key(id) {
            return Err(Error::InvalidInput("a device of the vault has this id"));
        }
        let statement = members::encode_recovery_anchors(anchors, signature);
        if members::verified_recovery_anchors(&self.id, id, &statement).as_ref() != Some(anchors) {
            return Err(Error::InvalidInput(
                "the recovery key's statement of anchors does not verify",
            ));
        }
        if self.is_recovery_key(id) {
            return Ok(None);
        }
        let mut d = Device {
            id: id.clone(),
            name: "recovery key".into(),
            x25519_public,
            added_by: Some(me.id().clone()),
            added_at_ms: now_ms,
            signature: None,
            kind: MemberKind::Recovery,
        };
        d.signature = Some(me.sign(&members::entry_message(&self.id, &d)));
        let logged = self.audit_value(Event::RecoverySet, d.id.as_str(), now_ms);
        self.put_device_entry(d, logged)?;
        let obj = self.device_obj(id)?;
        self.doc
            .transact(|tx| tx.put(&obj, "ra", automerge::ScalarValue::Bytes(statement)))
            .map_err(|f| Error::from(f.error))?;
        self.judge();
        if self.epoch_obj(self.keyring.current()).is_none() {
            return self.rotate(now_ms).map(Some);
        }
        self.heal_wraps()?;
        Ok(None)
    }

    /// The devices that added recovery key `id` with an entry that verifies.
    fn recovery_adders(&mut self, id: &DeviceId) -> BTreeSet<DeviceId> {
        self.facts.refresh(&self.doc, &self.shape);
        let vault = self.id;
        self.facts
            .entries
            .iter()
            .filter(|(d, _, _)| d == id)
            .filter_map(|(_, bytes, _)| members::decode_entry(bytes))
            .filter(|d| d.kind == MemberKind::Recovery)
            .filter(|d| {
                d.signature
                    .as_ref()
                    .zip(d.added_by.as_ref())
                    .is_some_and(|(sig, by)| {
                        members::verify(by, &members::entry_message(&vault, d), sig)
                    })
            })
            .filter_map(|d| d.added_by)
            .collect()
    }

    /// Adds this device's own entry for recovery key `id` (already a member): the key then stays when the device
    /// that set it up is removed (a restored device endorses the key it was restored with). `NotRecoveryKey` if
    /// `id` is not an active recovery key.
    pub fn endorse_recovery(&mut self, id: &DeviceId, now_ms: u64) -> Result<(), Error> {
        let me = self.active_me()?;
        let mut d = self
            .members
            .get(id)
            .filter(|m| m.state == MemberState::Active && m.device.kind == MemberKind::Recovery)
            .map(|m| m.device.clone())
            .ok_or(Error::NotRecoveryKey)?;
        d.added_by = Some(me.id().clone());
        d.added_at_ms = now_ms;
        d.signature = Some(me.sign(&members::entry_message(&self.id, &d)));
        self.put_device_entry(d, None)
    }

    fn is_recovery_key(&self, id: &DeviceId) -> bool {
        self.members.get(id).is_some_and(|m| {
            m.state == MemberState::Active && m.device.kind == MemberKind::Recovery
        })
    }

    /// The devices recovery key `id` vouches for (see [`add_recovery`](Self::add_recovery)): what a replica
    /// restored with it must trust without a chain, and nothing else. `None` if no statement it signed is in the
    /// document.
    pub fn recovery_anchors(&mut self, id: &DeviceId) -> Option<BTreeSet<DeviceId>> {
        self.facts.refresh(&self.doc, &self.shape);
        self.facts
            .recovery_anchors
            .iter()
            .filter(|(r, _)| r == id)
            .find_map(|(_, b)| members::verified_recovery_anchors(&self.id, id, b))
    }

    /// Makes this replica, loaded from a backup with [`load_as`](Self::load_as) as `recovery` (so it learnt the
    /// epoch keys wrapped to that key), the replica of device `me`: adds `me` to the table, signed by the recovery
    /// key, and logs `vault-restored` (by `me`). `NotRecoveryKey` if `recovery` is not an active recovery key of
    /// the vault (a file of another vault, or a phrase replaced since the backup), `InvalidInput` if `me` is
    /// already in the table.
    pub fn restore_as(&mut self, me: LocalDevice, name: &str, now_ms: u64) -> Result<(), Error> {
        let recovery = self.me.take().ok_or(Error::NoLocalDevice)?;
        let is_key = self.members.get(recovery.id()).is_some_and(|m| {
            m.state == MemberState::Active && m.device.kind == MemberKind::Recovery
        });
        if !is_key {
            self.me = Some(recovery);
            return Err(Error::NotRecoveryKey);
        }
        if self.members.contains_key(me.id()) || self.devices.contains_key(me.id()) {
            self.me = Some(recovery);
            return Err(Error::InvalidInput("this device is already in the vault"));
        }
        let mut d = Device {
            id: me.id().clone(),
            name: name.to_owned(),
            x25519_public: me.x25519_public(),
            added_by: Some(recovery.id().clone()),
            added_at_ms: now_ms,
            signature: None,
            kind: MemberKind::Device,
        };
        d.validate()?;
        d.signature = Some(recovery.sign(&members::entry_message(&self.id, &d)));
        self.me = Some(me);
        let logged = self.audit_value(Event::VaultRestored, recovery.id().as_str(), now_ms);
        self.put_device_entry(d, logged)
    }

    /// The standing of device `id`; `None` if it has no readable entry.
    pub fn member_state(&self, id: &DeviceId) -> Option<&MemberState> {
        self.members.get(id).map(|m| &m.state)
    }

    /// Sets the devices this replica trusts without a signature chain: the vault's first device (when this
    /// replica made the vault), or the devices of a vault from before entries were signed (pinned when this
    /// replica first opened it), as passed on at pairing. Only these may have an unsigned or self-signed entry;
    /// every other device needs an entry signed by a valid device that added it. `None` (the default) trusts
    /// every unsigned entry, as releases before signatures did. The caller keeps them (they are not in the
    /// document, where anyone with write access could change them).
    pub fn set_anchors(&mut self, anchors: Option<BTreeSet<DeviceId>>) {
        self.anchors = anchors;
        self.judge();
    }

    /// Trusts the anchors only through entries they signed themselves, never through unsigned ones: for a replica
    /// restored from a backup, whose unsigned entries anyone who made the file could have written (with any key).
    pub fn set_signed_anchors(&mut self, signed: bool) {
        self.signed_anchors = signed;
        self.judge();
    }

    /// The devices trusted without a signature chain, if set.
    pub fn anchors(&self) -> Option<&BTreeSet<DeviceId>> {
        self.anchors.as_ref()
    }

    /// Signs entry `d` with this device's key: as its adder (`d.added_by` is this device) or as the device
    /// itself (`d.id` is this device; such an entry is valid only where this device is an anchor).
    /// `InvalidInput` for any other entry.
    pub fn sign_entry(&self, d: &mut Device) -> Result<(), Error> {
        let me = self.me.as_ref().ok_or(Error::NoLocalDevice)?;
        if d.added_by.as_ref() != Some(me.id()) && d.id != *me.id() {
            return Err(Error::InvalidInput(
                "a device signs only entries it adds, or its own",
            ));
        }
        d.signature = Some(me.sign(&members::entry_message(&self.id, d)));
        Ok(())
    }

    /// This replica's device, if set.
    pub fn local_device(&self) -> Option<&DeviceId> {
        self.me.as_ref().map(LocalDevice::id)
    }

    /// Removes device `id` from the vault (and the recovery keys it added): a removal signed by this device, then
    /// a new key epoch wrapped to every remaining member only, with every readable record and device entry re-encrypted under it (see
    /// [`rotate`](Self::rotate)). Returns the new epoch. `UnknownDevice` if the table has no readable entry for
    /// it, `InvalidInput` for this device itself, `NoLocalDevice`/`NotAMember` if this replica may not remove.
    /// A device already removed is removed again (a second removal changes nothing) and the key is not rotated:
    /// `Ok(None)`.
    pub fn remove_member(&mut self, id: &DeviceId, now_ms: u64) -> Result<Option<Epoch>, Error> {
        if id == self.active_me()?.id() {
            return Err(Error::InvalidInput("a device cannot remove itself"));
        }
        match self.members.get(id).map(|m| &m.state) {
            None => return Err(Error::UnknownDevice(id.clone())),
            Some(MemberState::Removed { .. }) => return Ok(None),
            Some(_) => {}
        }
        // The recovery keys it added go with it: set up by a thief before its removal, one would outlive it
        // (every later epoch wrapped to it, devices added by it valid).
        // (Not one another member vouches for too: a restored device endorses the key it was restored with.)
        let keys: Vec<DeviceId> = self.recovery_keys().into_iter().map(|r| r.id).collect();
        let mut added = Vec::new();
        for r in keys {
            let adders = self.recovery_adders(&r);
            let others = adders.iter().any(|a| {
                a != id
                    && self
                        .members
                        .get(a)
                        .is_some_and(|m| m.state == MemberState::Active)
            });
            if adders.contains(id) && !others {
                added.push(r);
            }
        }
        let me = self.active_me()?;
        let mut removals = vec![(
            id.clone(),
            Removal::sign(&self.id, id, me, now_ms).encode(),
            self.audit_value(Event::Removed, id.as_str(), now_ms),
        )];
        for r in &added {
            removals.push((
                r.clone(),
                Removal::sign(&self.id, r, me, now_ms).encode(),
                self.audit_value(Event::Removed, r.as_str(), now_ms),
            ));
        }
        let ext = &self.shape.ext;
        self.doc
            .transact(|tx| {
                for (who, removal, logged) in removals {
                    doc::put_removal(tx, ext, &who, removal)?;
                    doc::put_audit(tx, ext, logged)?;
                }
                Ok::<_, automerge::AutomergeError>(())
            })
            .map_err(|f| Error::from(f.error))?;
        self.judge();
        self.rotate(now_ms).map(Some)
    }

    /// Renames device `id` (its name is sealed under the current epoch; the audit log records that it was
    /// renamed, not the name). `UnknownDevice` if it has no readable entry.
    pub fn rename_device(&mut self, id: &DeviceId, name: &str, now_ms: u64) -> Result<(), Error> {
        let mut d = self
            .devices
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownDevice(id.clone()))?;
        d.name = name.to_owned();
        d.validate()?;
        let obj = self.device_obj(id)?;
        let sealed = doc::seal_device(&self.id, &self.keyring, &d)?;
        let logged = self.audit_value(Event::DeviceRenamed, id.as_str(), now_ms);
        let ext = &self.shape.ext;
        self.doc
            .transact(|tx| {
                doc::put_audit(tx, ext, logged)?;
                doc::update_fields(tx, &obj, sealed)
            })
            .map_err(|f| Error::from(f.error))?;
        self.device_epochs
            .insert(id.clone(), self.keyring.current());
        self.devices.insert(id.clone(), d);
        self.judge();
        Ok(())
    }

    fn device_obj(&self, id: &DeviceId) -> Result<ObjId, Error> {
        match self.doc.get(&self.shape.devices, id.as_str())? {
            Some((automerge::Value::Object(automerge::ObjType::Map), obj)) => Ok(obj),
            _ => Err(Error::UnknownDevice(id.clone())),
        }
    }

    /// This device, if it is an active member.
    fn active_me(&self) -> Result<&LocalDevice, Error> {
        let me = self.me.as_ref().ok_or(Error::NoLocalDevice)?;
        match self.members.get(me.id()).map(|m| &m.state) {
            Some(MemberState::Active) => Ok(me),
            _ => Err(Error::NotAMember),
        }
    }

    /// Makes a new key epoch: a fresh random key, one generation past the current epoch, wrapped to each active
    /// device's x25519 key (this one included) and to no other, described by a value this device signs; then
    /// re-encrypts every readable record and device entry under it, all in one change. Records that do not
    /// decrypt here (see [`problems`](Self::problems)) stay as they are.
    pub fn rotate(&mut self, now_ms: u64) -> Result<Epoch, Error> {
        let me = self.active_me()?;
        let recipients = self.recipients();
        let listed: HashSet<u32> = doc::read_epochs(&self.doc, &self.shape.ext)?
            .iter()
            .map(|e| e.epoch.0)
            .collect();
        let epoch = loop {
            let candidate = Epoch(rand::random());
            if self.keyring.key(candidate).is_none() && !listed.contains(&candidate.0) {
                break candidate;
            }
        };
        let parent = self
            .epochs
            .current
            .map_or((self.keyring.current(), 0), |(g, e)| (e, g));
        let key = VaultKey::generate();
        let mut wraps = Vec::with_capacity(recipients.len());
        let mut given = BTreeSet::new();
        for d in &recipients {
            // An entry from before devices had x25519 keys (all zeros) cannot be wrapped to: that device is
            // left out of the recipients, and the next rotation after its entry is fixed includes it.
            let Some((slot, public)) = self.wrap_target(d, true) else {
                continue;
            };
            if let Some(w) = members::wrap(&self.id, epoch, &d.id, &public, &key) {
                wraps.push((slot, w));
                given.insert(d.id.clone());
            }
        }
        let info = EpochInfo::sign(&self.id, epoch, parent, me, now_ms, given).encode();
        let mut keyring = self.keyring.clone();
        keyring.insert(epoch, key.clone());
        keyring.set_current(epoch)?;
        let records: Vec<RecordId> = self.index.all().map(|p| p.record_id).collect();
        let devices: Vec<DeviceId> = self.devices.keys().cloned().collect();
        let ext = self.shape.ext.clone();
        let shape = self.shape.clone();
        let vault = self.id;
        let logged = self.audit_value(Event::Rotated, &epoch.0.to_string(), now_ms);
        self.reencrypt(&keyring, &records, &devices, |tx| {
            doc::put_epoch(tx, &ext, epoch, info, wraps)
                .and_then(|()| doc::put_audit(tx, &ext, logged))
                .map_err(Error::from)
                .and_then(|()| doc::put_keycheck(tx, &shape, &vault, epoch, &key))
        })?;
        self.keyring = keyring;
        self.epoch_objs.clear();
        self.rebuild();
        Ok(epoch)
    }

    /// Re-encrypts `records` and `devices` under the current epoch of `keyring`, in one change that also does
    /// `first`.
    fn reencrypt(
        &mut self,
        keyring: &Keyring,
        records: &[RecordId],
        devices: &[DeviceId],
        first: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let epoch = keyring.current();
        let key = keyring.current_key();
        let objs: HashMap<&RecordId, &ObjId> =
            self.record_objs.iter().map(|(obj, id)| (id, obj)).collect();
        let mut sealed_records = Vec::with_capacity(records.len());
        for id in records {
            let (Some(p), Some(obj)) = (self.index.get(id), objs.get(id)) else {
                continue;
            };
            let obj = (*obj).clone();
            let mut p = p.clone();
            p.epoch = epoch;
            sealed_records.push((obj, doc::seal_record(&self.id, key, &p)?));
        }
        let mut sealed_devices = Vec::with_capacity(devices.len());
        for id in devices {
            let Some(d) = self.devices.get(id) else {
                continue;
            };
            sealed_devices.push((
                self.device_obj(id)?,
                doc::seal_device(&self.id, keyring, d)?,
            ));
        }
        let mut tx = self.doc.transaction();
        let written = first(&mut tx).and_then(|()| {
            for (obj, sealed) in sealed_records {
                doc::update_fields(&mut tx, &obj, sealed)?;
            }
            for (obj, sealed) in sealed_devices {
                doc::update_fields(&mut tx, &obj, sealed)?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                tx.commit();
                Ok(())
            }
            Err(e) => {
                tx.rollback();
                Err(e)
            }
        }
    }

    /// Whether the current epoch's key was given to a device that is now removed, so a new epoch is due.
    pub fn needs_rotation(&self) -> bool {
        !self.epochs.clean
    }

    /// Keeps the keys right after changes (local or from peers); call it after each batch. If the current epoch
    /// was given to a removed device (a removal arrived, or removals were made concurrently), makes a new one;
    /// else, if this replica holds the current epoch, moves records and device entries still under an older
    /// epoch (written concurrently with a rotation) to it. Replicas that do this concurrently converge: the
    /// newest epoch wins everywhere and whatever is left under another one is moved again. Does nothing unless
    /// this device is an active member.
    pub fn maintain(&mut self, now_ms: u64) -> Result<Maintenance, Error> {
        if self.active_me().is_err() {
            return Ok(Maintenance::default());
        }
        if self.needs_rotation() {
            let epoch = self.rotate(now_ms)?;
            let acknowledged = self.acknowledge_current()?;
            return Ok(Maintenance {
                rotated: Some(epoch),
                reencrypted: 0,
                wrapped: 0,
                acknowledged,
            });
        }
        let current = self.keyring.current();
        if self.epochs.current.map(|(_, e)| e) != Some(current) {
            return Ok(Maintenance::default());
        }
        let wrapped = self.heal_wraps()?;
        let records: Vec<RecordId> = self
            .index
            .all()
            .filter(|p| p.epoch != current)
            .map(|p| p.record_id)
            .collect();
        let devices: Vec<DeviceId> = self
            .device_epochs
            .iter()
            .filter(|(_, e)| **e != current)
            .map(|(d, _)| d.clone())
            .collect();
        if !records.is_empty() || !devices.is_empty() {
            let keyring = self.keyring.clone();
            self.reencrypt(&keyring, &records, &devices, |_| Ok(()))?;
            for id in &records {
                self.reindex_record(id);
            }
            for id in &devices {
                self.reindex_device(id);
            }
        }
        let acknowledged = self.acknowledge_current()?;
        Ok(Maintenance {
            rotated: None,
            reencrypted: records.len() + devices.len(),
            wrapped,
            acknowledged,
        })
    }

    /// Wraps the current epoch's key to every active device that has no wrap in it yet (a device paired on the
    /// other side of a partition from a rotation, say), so that every member can read what is written under it.
    /// Returns how many wraps were added. Epochs from before rotation existed have no map: their key goes with
    /// pairing.
    fn heal_wraps(&mut self) -> Result<usize, Error> {
        let current = self.keyring.current();
        let Some(obj) = doc::read_epochs(&self.doc, &self.shape.ext)?
            .into_iter()
            .find(|e| e.epoch == current)
            .map(|e| e.obj)
        else {
            return Ok(0);
        };
        let have: HashSet<String> = doc::wrap_slots(&self.doc, &obj).into_iter().collect();
        let key = self.keyring.current_key().clone();
        let wraps: Vec<(String, Vec<u8>)> = self
            .recipients()
            .into_iter()
            .filter_map(|d| {
                // Healing waits for a device's inbox: a device paired meanwhile got the current key at pairing.
                let (slot, public) = self.wrap_target(&d, false)?;
                if have.contains(&slot) {
                    return None;
                }
                members::wrap(&self.id, current, &d.id, &public, &key).map(|w| (slot, w))
            })
            .collect();
        if wraps.is_empty() {
            return Ok(0);
        }
        let n = wraps.len();
        self.doc
            .transact::<_, _, automerge::AutomergeError>(|tx| {
                for (to, wrap) in wraps {
                    doc::put_wrap(tx, &obj, &to, wrap)?;
                }
                Ok(())
            })
            .map_err(|f| Error::from(f.error))?;
        Ok(n)
    }

    /// Where (wrap slot) and to which x25519 key an epoch key is wrapped for device `d`: its published inbox key
    /// of the highest generation; with `fallback`, for a device that has published none, its identity-derived key
    /// (whatever is wrapped to that stays open to whoever holds the device's identity: only a rotation, which
    /// must reach every remaining device, uses it).
    /// A recovery key has no inbox: its key is its x25519 key, fixed by the phrase (whoever holds the phrase may
    /// open every epoch wrapped to it; that is what it is for).
    fn wrap_target(&self, d: &Device, fallback: bool) -> Option<(String, [u8; 32])> {
        if d.kind == MemberKind::Recovery {
            return Some((doc::wrap_slot(&d.id, None), d.x25519_public));
        }
        match self.inboxes.get(&d.id) {
            Some(i) => Some((doc::wrap_slot(&d.id, Some(i.generation)), i.public)),
            None => fallback.then(|| (doc::wrap_slot(&d.id, None), d.x25519_public)),
        }
    }

    /// Each device's inbox: its entry of the highest generation signed by the device itself (ties: the higher
    /// public key, so every replica picks the same).
    fn judge_inboxes(&mut self) {
        let mut best: HashMap<DeviceId, InboxEntry> = HashMap::new();
        for (device, bytes) in &self.facts.inboxes {
            let Some(entry) = InboxEntry::decode(bytes).filter(|e| e.verifies(&self.id, device))
            else {
                continue;
            };
            let better = best
                .get(device)
                .is_none_or(|b| (entry.generation, entry.public) > (b.generation, b.public));
            if better {
                best.insert(device.clone(), entry);
            }
        }
        self.inboxes = best;
    }

    /// The one epoch device `id` said its keyring held when it last published its inbox key (every other it
    /// had destroyed); `None` if it held several then, or has published none.
    pub fn holds(&self, id: &DeviceId) -> Option<Epoch> {
        self.inboxes.get(id).and_then(|i| i.holds)
    }

    /// What this device's sealed keyring should become, if it should change: with a first inbox key (a keyring
    /// without one, see [`inbox_due`](Self::inbox_due)), or **retired** — the current epoch alone, with a fresh
    /// inbox key — once this device holds the current epoch and every record and device entry it can read is
    /// under it ([`OldKeys::Ready`]: older epoch keys then serve nothing; dropping them, and the inbox key their
    /// wraps in the document open, destroys them on this device). The caller seals the returned keyring
    /// durably, then hands it to [`use_keyring`](Self::use_keyring): in that order, a crash never leaves an inbox
    /// published whose key is not on disk. `None` unless this device is an active member.
    pub fn keyring_due(&self) -> Option<Keyring> {
        if let Some(k) = self.inbox_due() {
            return Some(k);
        }
        let generation = self
            .active_me()
            .ok()
            .and_then(|me| self.inboxes.get(me.id()))?
            .generation;
        match self.old_keys() {
            OldKeys::Ready => {
                let (current_generation, _) = self.epochs.current?;
                Some(self.keyring.retired(generation, current_generation))
            }
            _ => None,
        }
    }

    /// The keyring with a new inbox key, when this device needs one: it has none, or the document lists a newer
    /// inbox of this device than the keyring holds (a keyring restored from an older copy: wraps to it cannot be
    /// opened here, so it starts a generation above it). Cheap; keeps every epoch. `None` unless this device is
    /// an active member.
    pub fn inbox_due(&self) -> Option<Keyring> {
        let me = self.active_me().ok()?;
        let published = self.inboxes.get(me.id());
        let generation = published.map_or(0, |p| p.generation);
        match self.keyring.inbox() {
            None => Some(self.keyring.with_new_inbox(generation)),
            Some(i)
                if published.is_some_and(|p| {
                    p.generation > i.generation
                        || (p.generation == i.generation && p.public != i.public())
                }) =>
            {
                Some(self.keyring.with_new_inbox(generation))
            }
            Some(_) => None,
        }
    }

    /// Whether this replica's keyring holds epochs before the current one, and what keeps them (see
    /// [`keyring_due`](Self::keyring_due)). Reads every acknowledgement and, once all are in, scans the
    /// document's sealed values: O(records).
    pub fn old_keys(&self) -> OldKeys {
        let current = self.keyring.current();
        if self.keyring.epochs().all(|e| e == current) {
            return OldKeys::None;
        }
        let Some((_, judged)) = self.epochs.current else {
            return OldKeys::Rotating;
        };
        if judged != current || !self.epochs.clean || self.active_me().is_err() {
            return OldKeys::Rotating;
        }
        // Every active device holds the current epoch and reads everything under it (it acknowledged it): a
        // record one of them wrote under an old epoch while away has been moved by then.
        let acked = self.acknowledged(current);
        let waiting: Vec<DeviceId> = self
            .active_devices()
            .into_iter()
            .filter(|d| !acked.contains(&d.id))
            .map(|d| d.id)
            .collect();
        if !waiting.is_empty() {
            return OldKeys::Unacknowledged(waiting);
        }
        // And no sealed value in the document, readable here or not, is under a held epoch other than the current
        // one: destroying that key could lose it for good.
        let sealed = doc::sealed_epochs(&self.doc, &self.shape);
        if sealed
            .iter()
            .any(|e| *e != current && self.keyring.key(*e).is_some())
        {
            return OldKeys::StillUsed;
        }
        OldKeys::Ready
    }

    /// The devices whose acknowledgement of `epoch` verifies (see [`members::ack`]).
    fn acknowledged(&self, epoch: Epoch) -> HashSet<DeviceId> {
        let Some(obj) = self.epoch_obj(epoch) else {
            return HashSet::new();
        };
        doc::read_acks(&self.doc, &obj)
            .into_iter()
            .filter(|(d, v)| members::ack_verifies(&self.id, epoch, d, v))
            .map(|(d, _)| d)
            .collect()
    }

    fn epoch_obj(&self, epoch: Epoch) -> Option<ObjId> {
        doc::read_epochs(&self.doc, &self.shape.ext)
            .ok()?
            .into_iter()
            .find(|e| e.epoch == epoch)
            .map(|e| e.obj)
    }

    /// Acknowledges the current epoch (see [`members::ack`]) once this device holds it, writes under it and reads
    /// everything under it, unless it has already. Returns whether it wrote.
    fn acknowledge_current(&mut self) -> Result<bool, Error> {
        let Ok(me) = self.active_me() else {
            return Ok(false);
        };
        let current = self.keyring.current();
        if self.epochs.current.map(|(_, e)| e) != Some(current) || !self.epochs.clean {
            return Ok(false);
        }
        let Some(obj) = self.epoch_obj(current) else {
            // Epoch 0 of a vault that never rotated: nothing to retire, nothing to acknowledge.
            return Ok(false);
        };
        // Cheap checks first: after every batch from a peer, this runs; the scan of every record only until this
        // device has acknowledged (once per epoch).
        let mine = doc::read_acks(&self.doc, &obj)
            .into_iter()
            .any(|(d, v)| d == *me.id() && members::ack_verifies(&self.id, current, &d, &v));
        if mine
            || !self.index.all().all(|p| p.epoch == current)
            || !self.device_epochs.values().all(|e| *e == current)
        {
            return Ok(false);
        }
        let value = members::ack(&self.id, current, me);
        let id = me.id().clone();
        self.doc
            .transact(|tx| doc::put_ack(tx, &obj, &id, value))
            .map_err(|f| Error::from(f.error))?;
        Ok(true)
    }

    /// Takes `keyring` (from [`keyring_due`](Self::keyring_due), sealed by now) as this replica's, and publishes
    /// its inbox key. `InvalidInput` if it lacks the current epoch's key.
    pub fn use_keyring(&mut self, keyring: Keyring, now_ms: u64) -> Result<(), Error> {
        let current = self.keyring.current();
        if keyring
            .key(current)
            .is_none_or(|k| k.as_bytes() != self.keyring.current_key().as_bytes())
        {
            return Err(Error::InvalidInput(
                "a new keyring must hold the current epoch's key",
            ));
        }
        self.keyring = keyring;
        let _ = self.keyring.set_current(current);
        self.publish_inbox(now_ms)?;
        Ok(())
    }

    /// Publishes this device's inbox key, signed, with the epoch it holds, unless the document already lists that
    /// generation (a crash between sealing a keyring and writing its inbox leaves it unlisted: call this at
    /// start). Returns whether it wrote.
    pub fn publish_inbox(&mut self, now_ms: u64) -> Result<bool, Error> {
        let Ok(me) = self.active_me() else {
            return Ok(false);
        };
        let Some(inbox) = self.keyring.inbox() else {
            return Ok(false);
        };
        let public = inbox.public();
        if self
            .inboxes
            .get(me.id())
            .is_some_and(|i| i.generation == inbox.generation && i.public == public)
        {
            return Ok(false);
        }
        let mut epochs = self.keyring.epochs();
        let alone = match (epochs.next(), epochs.next()) {
            (Some(e), None) => Some(e),
            _ => None,
        };
        let entry = InboxEntry::sign(&self.id, me, inbox.generation, public, alone, now_ms);
        let id = me.id().clone();
        let ext = &self.shape.ext;
        let value = entry.encode();
        self.doc
            .transact(|tx| doc::put_inbox(tx, ext, &id, value))
            .map_err(|f| Error::from(f.error))?;
        self.inboxes.insert(id, entry);
        Ok(true)
    }

    /// Device entries present but unreadable, sorted by id.
    pub fn device_problems(&self) -> &[(DeviceId, Error)] {
        &self.device_problems
    }

    /// The next message for the peer of `state`, or `None` if there is nothing to send right now.
    pub fn generate_sync_message(&mut self, state: &mut SyncState) -> Option<Vec<u8>> {
        // Generating reads what the peer told us (its bloom filters). Should something in it still trip automerge,
        // forget that peer's state — the next exchange starts afresh — rather than take the daemon down.
        match doc::contained("sync state", || {
            self.doc
                .generate_sync_message(&mut state.0)
                .map(sync::Message::encode)
        }) {
            Ok(message) => message,
            Err(_) => {
                *state = SyncState::new();
                None
            }
        }
    }

    /// Applies a message from the peer of `state` and updates the index for the records it changed.
    ///
    /// `Malformed` for bytes that are not a sync message; `ForeignVault` (nothing applied) if it carries another
    /// vault's root change or whole document, or a bloom filter automerge cannot use. Changes whose dependencies
    /// this replica lacks are held back by automerge (not applied, not saved) until those arrive, which for
    /// another vault's changes is never. If a peer's changes write to the document root (a buggy peer), they are merged but ignored and `Malformed` is returned (once); `WrongKey` if they bring a key
    /// check the keyring does not match.
    pub fn receive_sync_message(&mut self, state: &mut SyncState, msg: &[u8]) -> Result<(), Error> {
        let msg = doc::contained("sync message", || sync::Message::decode(msg))?
            .map_err(|e| Error::Malformed(format!("not a sync message: {e}")))?;
        for have in &msg.have {
            doc::check_bloom(&have.bloom.to_bytes())?;
        }
        let mut whole_document = false;
        for blob in msg.changes.iter() {
            whole_document |=
                doc::contained("sync message", || doc::check_lineage(blob, &self.genesis))??;
        }
        let before = self.doc.get_heads();
        // Every change and document in `msg` was parsed above without a panic, so this one should not panic
        // either; if it does, the message is refused like any other malformed one.
        let result = doc::contained("sync message", || {
            self.doc.receive_sync_message(&mut state.0, msg)
        })?;
        // A peer that asks for a change by hash does not have it, whatever this session already sent (its write
        // failed and it went back to its stored document, say). Automerge never sends a change twice in one
        // session, so without this the two would trade heads forever and the change would never arrive.
        if let Some(need) = &state.0.their_need {
            for hash in need {
                state.0.sent_hashes.remove(hash);
            }
        }
        // Automerge sends its whole document when the peer lacks more than a third of it.
        self.after_apply(&before, result, whole_document)
    }

    /// The passkeys whose creating change a replica with document heads `heads` holds (the change is one of
    /// `heads` or an ancestor of one). Heads this replica does not know are ignored, so a peer cannot claim more
    /// than this replica can check. The daemon uses it for the backup-state flag.
    pub fn records_held_at(&self, heads: &[[u8; 32]]) -> Vec<RecordId> {
        let missing = self.missing_at(heads);
        self.record_objs
            .iter()
            .filter(|(obj, _)| {
                self.doc
                    .hash_for_opid(obj)
                    .is_some_and(|h| !missing.contains(&h))
            })
            .map(|(_, id)| *id)
            .collect()
    }

    /// How many changes of this replica a replica with document heads `heads` lacks.
    pub fn changes_missing_at(&self, heads: &[[u8; 32]]) -> usize {
        self.missing_at(heads).len()
    }

    fn missing_at(&self, heads: &[[u8; 32]]) -> std::collections::HashSet<ChangeHash> {
        let known: Vec<ChangeHash> = heads
            .iter()
            .map(|h| ChangeHash(*h))
            .filter(|h| self.doc.get_change_meta_by_hash(h).is_some())
            .collect();
        self.doc
            .get_changes_meta(&known)
            .into_iter()
            .map(|m| m.hash)
            .collect()
    }

    /// Merges all changes of `other` (a replica of the same vault) into this one.
    pub fn merge(&mut self, other: &mut Vault) -> Result<(), Error> {
        if other.id != self.id {
            return Err(Error::ForeignVault);
        }
        let before = self.doc.get_heads();
        let result = self.doc.merge(&mut other.doc).map(|_| ());
        self.after_apply(&before, result, false)
    }

    /// Brings the index up to date after remote changes were applied. Unless `bulk`, it looks at the ops of the
    /// new changes only, so the work is proportional to what arrived, not to the size of the vault (automerge's
    /// patch log is not used: computing patch paths scans the whole records map). For bulk arrivals (a new
    /// device's first sync) one parallel pass over everything is cheaper than finding out what changed.
    fn after_apply(
        &mut self,
        before: &[ChangeHash],
        result: Result<(), automerge::AutomergeError>,
        bulk: bool,
    ) -> Result<(), Error> {
        if self.doc.get_heads() == before {
            return result.map_err(Error::from);
        }
        let keycheck = if bulk || result.is_err() {
            let old = std::mem::take(&mut self.index);
            self.rebuild();
            self.note_lost(old.all(), before);
            true
        } else {
            let touched = Touched::from_changes(&self.doc.get_changes(before), self);
            // The versions these changes may alter (only touched records can be).
            let old: Vec<Passkey> = touched
                .records
                .iter()
                .filter_map(|id| self.index.get(id).cloned())
                .collect();
            // New epoch keys make records readable that were not, and a new current epoch changes which are
            // due for re-encryption: both need the whole index again (rare: rotations only).
            let learned = touched.ext && self.learn_keys();
            if learned || touched.records.len() > REBUILD_ABOVE.max(self.index.len() / 4) {
                self.rebuild();
            } else {
                for id in &touched.devices {
                    self.reindex_device(id);
                }
                if touched.ext || !touched.devices.is_empty() || touched.keycheck {
                    let current = self.keyring.current();
                    self.judge();
                    // A device added in this batch may have made an epoch wrapped to this one.
                    let learned = (touched.ext || !touched.devices.is_empty()) && self.learn_keys();
                    if learned || self.keyring.current() != current {
                        self.rebuild();
                    }
                }
                for id in &touched.records {
                    self.reindex_record(id);
                }
            }
            self.note_lost(&old, before);
            touched.keycheck
        };
        result?;
        if keycheck {
            doc::verify_keychecks(
                &self.doc,
                &self.shape,
                &self.id,
                &self.keyring,
                doc::KeyCheck::AllMatch,
            )?;
        }
        if self.root_pristine && !doc::root_is_pristine(&self.doc, &self.id)? {
            self.root_pristine = false;
            return Err(Error::Malformed(
                "a peer's changes write to the vault root; ignored".into(),
            ));
        }
        Ok(())
    }

    /// Notes the records of `old` (versions before remote changes whose parents are `before`) that the changes
    /// deleted, made unreadable or replaced (see [`Vault::take_lost`]).
    fn note_lost<'a>(&mut self, old: impl IntoIterator<Item = &'a Passkey>, before: &[ChangeHash]) {
        let mut deletions: Option<HashMap<RecordId, Vec<[u8; 32]>>> = None;
        for p in old {
            let id = p.record_id;
            let lost = match self.index.get(&id) {
                Some(now) => !now.is_same_passkey(p),
                None => true,
            };
            if !lost {
                continue;
            }
            let present = matches!(doc::record_obj(&self.doc, &self.shape, &id), Ok(Some(_)));
            let deleted_by = if present {
                Vec::new()
            } else {
                // The deletions the batch brought (every one of them: they must all be confirmed).
                let deletions = deletions.get_or_insert_with(|| {
                    self.facts.refresh(&self.doc, &self.shape);
                    let new: HashSet<ChangeHash> = self
                        .doc
                        .get_changes(before)
                        .iter()
                        .map(|c| c.hash())
                        .collect();
                    let mut out: HashMap<RecordId, Vec<[u8; 32]>> = HashMap::new();
                    for (r, c) in &self.facts.deletions {
                        if new.contains(c) {
                            out.entry(*r).or_default().push(c.0);
                        }
                    }
                    out
                });
                deletions.get(&id).cloned().unwrap_or_default()
            };
            self.lost.push(Lost {
                record_id: id,
                before: before.iter().map(|h| h.0).collect(),
                deleted_by,
            });
        }
    }

    /// Rebuilds the whole index from the document: learns the epoch keys wrapped to this device, reads the
    /// device table, judges the membership and the epochs, then reads every record.
    fn rebuild(&mut self) {
        self.learn_keys();
        self.rebuild_devices();
        let before = self.keyring.current();
        self.judge();
        // The membership is known now: epochs made by devices it just judged can be learnt; and which entries
        // are due for re-encryption depends on the current epoch.
        let learned = self.learn_keys();
        if learned || self.keyring.current() != before {
            self.rebuild_devices();
            self.judge();
        }
        self.index.clear();
        self.record_objs.clear();
        for (id, obj, read) in
            doc::read_all_records(&self.doc, &self.shape, &self.id, &self.keyring)
        {
            if let Some(obj) = obj {
                self.record_objs.insert(obj, id);
            }
            match read {
                Ok(p) => self.index.upsert(p),
                Err(e) => self.index.set_problem(id, e),
            }
        }
    }

    fn rebuild_devices(&mut self) {
        self.devices.clear();
        self.device_epochs.clear();
        self.device_problems.clear();
        self.device_objs.clear();
        let ids: Vec<DeviceId> = self
            .doc
            .keys(&self.shape.devices)
            .map(DeviceId::new)
            .collect();
        for id in &ids {
            self.reindex_device(id);
        }
    }

    /// Unwraps the keys of listed epochs that this replica lacks and that are wrapped to this device. A key is
    /// kept only if it matches its epoch's key check. Returns whether any key was learnt.
    fn learn_keys(&mut self) -> bool {
        let Ok(epochs) = doc::read_epochs(&self.doc, &self.shape.ext) else {
            return false;
        };
        let mut learned = false;
        // Only epochs described by a member (as judged last): a stranger's made-up epoch is not taken, with the
        // highest generation any such description gives it (a low one added later cannot hide an epoch).
        self.facts.refresh(&self.doc, &self.shape);
        let mut generation: HashMap<Epoch, u32> = HashMap::new();
        for (e, bytes, _) in &self.facts.epochs {
            if let Some(info) = EpochInfo::decode(bytes).filter(|i| i.verifies(&self.id, *e))
                && self
                    .members
                    .get(&info.by)
                    .is_some_and(|m| !matches!(m.state, MemberState::Invalid(_)))
            {
                let g = generation.entry(*e).or_default();
                *g = (*g).max(info.generation);
            }
        }
        // Epochs below the keyring's floor were destroyed here: never learnt again; one of the floor's own
        // generation (a concurrent rotation's) only through this device's current inbox, where healing puts the
        // current key, never again through an older wrap to its identity key.
        let floor = self.keyring.floor();
        for e in epochs {
            self.epoch_objs.insert(e.obj.clone());
            let Some(me) = &self.me else { continue };
            let Some(&g) = generation.get(&e.epoch) else {
                continue;
            };
            if self.keyring.key(e.epoch).is_some() || g < floor {
                continue;
            }
            // Wraps to this device's inbox key, then to its identity-derived key (before it had an inbox).
            let inbox = self.keyring.inbox().map(|i| {
                (
                    doc::wrap_slot(me.id(), Some(i.generation)),
                    i.static_secret(),
                )
            });
            let mut found = None;
            if let Some((slot, secret)) = &inbox {
                for wrapped in doc::read_wraps(&self.doc, &e.obj, slot).unwrap_or_default() {
                    found = found.or_else(|| {
                        members::unwrap_with(&self.id, e.epoch, me.id(), secret, &wrapped)
                    });
                }
            }
            if found.is_none() && (floor == 0 || g > floor) {
                let slot = doc::wrap_slot(me.id(), None);
                for wrapped in doc::read_wraps(&self.doc, &e.obj, &slot).unwrap_or_default() {
                    found = found.or_else(|| members::unwrap(&self.id, e.epoch, me, &wrapped));
                }
            }
            if let Some(key) = found
                && doc::keycheck_matches(&self.doc, &self.shape, &self.id, e.epoch, &key)
            {
                self.keyring.insert(e.epoch, key);
                learned = true;
            }
        }
        learned
    }

    /// Judges the membership (signatures, removals, causality) and the epochs, and sets the keyring's current
    /// epoch to the newest valid one this replica holds.
    fn judge(&mut self) {
        self.facts.refresh(&self.doc, &self.shape);
        self.judge_inboxes();
        // Every signed entry ever written, then the current table's entries as unsigned ones (the signed form
        // of an entry is its `e` value; the table's clear fields are not signed).
        let mut entries: Vec<EntryFact> = self
            .facts
            .entries
            .iter()
            .filter_map(|(id, bytes, change)| {
                let mut device = members::decode_entry(bytes).filter(|d| d.id == *id)?;
                if let Some(current) = self.devices.get(id) {
                    device.name.clone_from(&current.name);
                }
                Some(EntryFact {
                    device,
                    changes: vec![*change],
                })
            })
            .collect();
        entries.extend(self.devices.values().map(|d| EntryFact {
            device: Device {
                signature: None,
                ..d.clone()
            },
            changes: doc::device_changes(&self.doc, &self.shape, &d.id),
        }));
        let removals: Vec<RemovalFact> = self
            .facts
            .removals
            .iter()
            .filter_map(|(removed, bytes, change)| {
                Some(RemovalFact {
                    removed: removed.clone(),
                    removal: Removal::decode(bytes)?,
                    change: Some(*change),
                })
            })
            .collect();
        let mut causality = doc::Causality::new(&self.doc);
        let judgement = members::judge(
            &self.id,
            &entries,
            &removals,
            self.anchors.as_ref(),
            self.signed_anchors,
            &mut |a, b| causality.before(a, b),
        );
        let mut members = BTreeMap::new();
        for (id, state) in &judgement.states {
            // A valid device is shown as the entry that makes it valid; an invalid one as its first entry.
            let entry = judgement
                .chosen
                .get(id)
                .and_then(|i| entries.get(*i))
                .or_else(|| entries.iter().find(|e| e.device.id == *id));
            if let Some(e) = entry {
                members.insert(
                    id.clone(),
                    Member {
                        signed: e.device.signature.is_some(),
                        device: e.device.clone(),
                        state: state.clone(),
                    },
                );
            }
        }
        self.members = members;
        // The changes of the removals that count, per removed device.
        let mut removed: HashMap<DeviceId, Vec<Option<ChangeHash>>> = HashMap::new();
        for (id, change) in &judgement.removal_changes {
            removed.entry(id.clone()).or_default().push(*change);
        }
        let (epochs, writable) = self.judge_epochs(&removed, &mut causality);
        self.epochs = epochs;
        self.removal_changes = removed;
        if let Some(epoch) = writable {
            // Known, so this cannot fail.
            let _ = self.keyring.set_current(epoch);
        }
    }

    /// Which epoch is current, and whether it is clean (see [`EpochState`]).
    ///
    /// Valid epochs: those with a key check that are not listed (from before rotation existed: generation 0,
    /// given to every device that ever paired), and listed ones whose description verifies, whose maker was a
    /// member when it made them (causally before every removal of the maker that counts), and whose parent is a
    /// valid epoch one generation below, made causally before them — so no epoch can jump ahead of the others.
    /// The current one is the valid epoch with the highest (generation, id). It is clean if its maker is not
    /// removed and no device it was given to (its recipients, and devices it was wrapped to since) is removed.
    /// Also returns the newest valid epoch this replica holds the key of (the one it writes under).
    fn judge_epochs(
        &self,
        removed: &HashMap<DeviceId, Vec<Option<ChangeHash>>>,
        causality: &mut doc::Causality<'_>,
    ) -> (EpochState, Option<Epoch>) {
        struct Valid {
            generation: u32,
            change: Option<ChangeHash>,
            /// Devices given the key (`None`: every device that ever paired).
            holders: Option<BTreeSet<DeviceId>>,
            maker: Option<DeviceId>,
        }
        let listed = doc::read_epochs(&self.doc, &self.shape.ext).unwrap_or_default();
        let listed_ids: HashSet<Epoch> = listed
            .iter()
            .map(|e| e.epoch)
            .chain(self.facts.epochs.iter().map(|(e, ..)| *e))
            .collect();
        let mut valid: HashMap<Epoch, Valid> = HashMap::new();
        for key in self.doc.keys(&self.shape.keycheck) {
            if let Ok(epoch) = key.parse::<u32>().map(Epoch)
                && !listed_ids.contains(&epoch)
            {
                valid.insert(
                    epoch,
                    Valid {
                        generation: 0,
                        change: None,
                        holders: None,
                        maker: None,
                    },
                );
            }
        }
        let objs: HashMap<Epoch, &ObjId> = listed.iter().map(|e| (e.epoch, &e.obj)).collect();
        let mut pending: Vec<(Epoch, Option<ChangeHash>, EpochInfo, BTreeSet<DeviceId>)> =
            Vec::new();
        for (epoch, bytes, change) in &self.facts.epochs {
            let Some(info) = EpochInfo::decode(bytes) else {
                continue;
            };
            if !info.verifies(&self.id, *epoch) || pending.iter().any(|(e, ..)| e == epoch) {
                continue;
            }
            let change = Some(*change);
            let maker_ok = match self.members.get(&info.by).map(|m| &m.state) {
                Some(MemberState::Active) => true,
                Some(MemberState::Removed { .. }) => change.is_some_and(|c| {
                    removed.get(&info.by).is_some_and(|rs| {
                        rs.iter()
                            .all(|r| r.is_some_and(|r| causality.before(&c, &r)))
                    })
                }),
                _ => false,
            };
            if maker_ok {
                let mut holders = info.recipients.clone();
                if let Some(obj) = objs.get(epoch) {
                    holders.extend(doc::wrapped_to(&self.doc, obj));
                }
                pending.push((*epoch, change, info, holders));
            }
        }
        // Parents first: each round validates the epochs whose parent is valid by now.
        loop {
            let before = valid.len();
            pending.retain(|(epoch, change, info, holders)| {
                let parent_ok = valid.get(&info.parent).is_some_and(|p| {
                    info.generation == p.generation.saturating_add(1)
                        && match (p.change, change) {
                            (None, _) => true,
                            (Some(pc), Some(c)) => causality.before(&pc, c),
                            (Some(_), None) => false,
                        }
                });
                if parent_ok {
                    valid.insert(
                        *epoch,
                        Valid {
                            generation: info.generation,
                            change: change.as_ref().copied(),
                            holders: Some(holders.clone()),
                            maker: Some(info.by.clone()),
                        },
                    );
                }
                !parent_ok
            });
            if valid.len() == before {
                break;
            }
        }
        let mut order: Vec<(u32, Epoch)> = valid.iter().map(|(e, v)| (v.generation, *e)).collect();
        order.sort();
        let writable = order
            .iter()
            .rev()
            .find(|(_, e)| self.keyring.key(*e).is_some())
            .map(|(_, e)| *e);
        let Some(&(generation, epoch)) = order.last() else {
            let none = EpochState {
                current: None,
                clean: true,
            };
            return (none, writable);
        };
        let current = &valid[&epoch];
        let clean = match &current.holders {
            None => removed.is_empty(),
            Some(holders) => {
                !holders.iter().any(|h| removed.contains_key(h))
                    && !current
                        .maker
                        .as_ref()
                        .is_some_and(|m| removed.contains_key(m))
            }
        };
        let state = EpochState {
            current: Some((generation, epoch)),
            clean,
        };
        (state, writable)
    }

    fn reindex_record(&mut self, id: &RecordId) {
        let read = match doc::record_obj(&self.doc, &self.shape, id) {
            Ok(None) => None,
            Ok(Some(obj)) => {
                let read = doc::read_record(&self.doc, &obj, &self.id, &self.keyring, id);
                self.record_objs.insert(obj, *id);
                Some(read)
            }
            Err(e) => Some(Err(e)),
        };
        match read {
            Some(Ok(p)) => self.index.upsert(p),
            None => self.index.remove(id),
            Some(Err(e)) => self.index.set_problem(*id, e),
        }
    }

    fn reindex_device(&mut self, id: &DeviceId) {
        if let Ok(Some((_, obj))) = self.doc.get(&self.shape.devices, id.as_str()) {
            self.device_objs.insert(obj, id.clone());
        }
        match doc::read_device(&self.doc, &self.shape, &self.id, &self.keyring, id) {
            Ok(Some(read)) => {
                self.device_epochs.insert(id.clone(), read.epoch);
                self.devices.insert(id.clone(), read.device);
                self.set_device_problem(id, None);
            }
            Ok(None) => {
                self.devices.remove(id);
                self.device_epochs.remove(id);
                self.set_device_problem(id, None);
            }
            Err(e) => {
                self.devices.remove(id);
                self.device_epochs.remove(id);
                self.set_device_problem(id, Some(e));
            }
        }
    }

    fn set_device_problem(&mut self, id: &DeviceId, e: Option<Error>) {
        let pos = self.device_problems.binary_search_by(|(d, _)| d.cmp(id));
        match (pos, e) {
            (Ok(i), Some(e)) => self.device_problems[i].1 = e,
            (Ok(i), None) => {
                self.device_problems.remove(i);
            }
            (Err(i), Some(e)) => self.device_problems.insert(i, (id.clone(), e)),
            (Err(_), None) => {}
        }
    }
}

/// Above this many touched records (and a quarter of the vault), remote changes rebuild the whole index.
const REBUILD_ABOVE: usize = 256;

/// What a batch of remote changes touched.
#[derive(Default)]
struct Touched {
    records: BTreeSet<RecordId>,
    devices: BTreeSet<DeviceId>,
    keycheck: bool,
    /// Removals or epochs.
    ext: bool,
}

impl Touched {
    fn from_changes(changes: &[automerge::Change], vault: &Vault) -> Self {
        // `ExpandedChange` (the decoded ops of a change) is automerge's public view of ops; its op types live in
        // the `legacy` module.
        use automerge::legacy::{Key, ObjectId};
        let mut t = Touched::default();
        for change in changes {
            for op in change.decode().operations {
                let obj = match op.obj {
                    // Root writes are caught by `root_is_pristine`.
                    ObjectId::Root => continue,
                    ObjectId::Id(id) => ObjId::Id(id.0, id.1, 0),
                };
                let key = match &op.key {
                    Key::Map(k) => Some(k.as_str()),
                    Key::Seq(_) => None,
                };
                if obj == vault.shape.records {
                    if let Some(id) = key.and_then(|k| k.parse().ok()) {
                        t.records.insert(id);
                    }
                } else if obj == vault.shape.devices {
                    if let Some(k) = key {
                        t.devices.insert(DeviceId::new(k.to_owned()));
                    }
                } else if obj == vault.shape.keycheck {
                    t.keycheck = true;
                } else if obj == vault.shape.ext.removed
                    || obj == vault.shape.ext.epochs
                    || obj == vault.shape.ext.inboxes
                    || vault.epoch_objs.contains(&obj)
                {
                    t.ext = true;
                } else if let Some(id) = vault.record_objs.get(&obj) {
                    t.records.insert(*id);
                } else if let Some(id) = vault.device_objs.get(&obj) {
                    t.devices.insert(id.clone());
                }
                // Anything else is inside a map created by the same changes (its creation is seen above) or in an
                // object that is not part of the vault.
            }
        }
        t
    }
}

/// The sync protocol state for one peer. Create one per peer (and connection); keep it while the connection
/// lives. [`encode`](Self::encode) keeps only what is worth persisting across connections.
#[derive(Debug, Clone, Default)]
pub struct SyncState(sync::State);

impl SyncState {
    /// A fresh state for a peer never synced with.
    pub fn new() -> Self {
        Self::default()
    }

    /// The part of the state worth persisting between connections (the heads both sides had in common).
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }

    /// The document heads both sides were last known to have in common (kept by [`encode`](Self::encode)).
    pub fn shared_heads(&self) -> Vec<[u8; 32]> {
        self.0.shared_heads.iter().map(|h| h.0).collect()
    }

    /// The peer's document heads from its last message on this connection, if any.
    pub fn their_heads(&self) -> Option<Vec<[u8; 32]>> {
        self.0
            .their_heads
            .as_ref()
            .map(|hs| hs.iter().map(|h| h.0).collect())
    }

    /// Makes the next [`Vault::generate_sync_message`] for this peer return a message even when the protocol
    /// considers the peer up to date. Automerge stays silent after applying changes that bring both sides to
    /// equal heads, so the sender never learns that they arrived; call this after applying a peer's changes to
    /// acknowledge them with our heads.
    pub fn acknowledge(&mut self) {
        self.0.have_responded = false;
    }

    /// Restores an encoded state. `Malformed` for bytes that are not one.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        sync::State::decode(bytes)
            .map(Self)
            .map_err(|e| Error::Malformed(format!("not a sync state: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use automerge::{ObjType, ROOT, ScalarValue};
    use zeroize::Zeroizing;

    use super::*;
    use crate::{Epoch, VaultKey};

    const KEY: [u8; 32] = [0x42; 32];

    fn keyring() -> Keyring {
        Keyring::new(Epoch(0), VaultKey::from_bytes(KEY))
    }

    fn new_passkey(n: u8, rp: &str) -> NewPasskey {
        NewPasskey {
            credential_id: vec![n; 16],
            rp_id: rp.to_owned(),
            user_handle: vec![n, n, 1],
            user_name: format!("user{n}@{rp}"),
            user_display_name: format!("User {n}"),
            private_key: Zeroizing::new(vec![n.wrapping_add(0x80); 32]),
            created_at_ms: 1_000 + u64::from(n),
        }
    }

    /// Runs the exchange between `a` and `b` (with their states) until neither has anything to say.
    fn exchange(a: &mut Vault, sa: &mut SyncState, b: &mut Vault, sb: &mut SyncState) {
        for _ in 0..50 {
            let m1 = a.generate_sync_message(sa);
            if let Some(m) = &m1 {
                b.receive_sync_message(sb, m).unwrap();
            }
            let m2 = b.generate_sync_message(sb);
            if let Some(m) = &m2 {
                a.receive_sync_message(sa, m).unwrap();
            }
            if m1.is_none() && m2.is_none() {
                return;
            }
        }
        panic!("sync did not settle");
    }

    #[test]
    fn a_peer_that_lost_a_received_change_gets_it_again_in_the_same_session() {
        let mut a = Vault::create(VaultId::from_bytes([1; 16]), keyring()).unwrap();
        let mut b = Vault::load(&a.save(), keyring()).unwrap();
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        exchange(&mut a, &mut sa, &mut b, &mut sb);
        let stored = b.save();
        let id = a.insert(new_passkey(1, "example.com"), 5).unwrap();
        let m = a.generate_sync_message(&mut sa).unwrap();
        b.receive_sync_message(&mut sb, &m).unwrap();
        assert!(b.passkey(&id).is_some());
        // B could not store what it applied: it goes back to its stored document and to the sync state it
        // recorded meanwhile (which already counts the change as shared); A's side of the session goes on.
        b = Vault::load(&stored, keyring()).unwrap();
        sb = SyncState::decode(&sb.encode()).unwrap();
        exchange(&mut b, &mut sb, &mut a, &mut sa);
        assert!(b.passkey(&id).is_some(), "the lost change was sent again");
        assert_eq!(a.heads(), b.heads());
    }

    fn sync_pair(a: &mut Vault, b: &mut Vault) {
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        for _ in 0..50 {
            let m1 = a.generate_sync_message(&mut sa);
            if let Some(m) = &m1 {
                b.receive_sync_message(&mut sb, m).unwrap();
            }
            let m2 = b.generate_sync_message(&mut sb);
            if let Some(m) = &m2 {
                a.receive_sync_message(&mut sa, m).unwrap();
            }
            if m1.is_none() && m2.is_none() {
                return;
            }
        }
        panic!("sync did not settle");
    }

    #[test]
    fn held_records_follow_the_peers_heads() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        let first = a.insert(new_passkey(1, "a.example"), 1).unwrap();
        // A peer that never synced holds nothing; unknown heads claim nothing.
        assert!(a.records_held_at(&[]).is_empty());
        assert!(a.records_held_at(&[[7; 32]]).is_empty());
        assert!(a.changes_missing_at(&[]) > 0);
        sync_pair(&mut a, &mut b);
        let second = a.insert(new_passkey(2, "a.example"), 2).unwrap();
        let held = a.records_held_at(&b.heads());
        assert_eq!(held, vec![first]);
        assert_eq!(a.changes_missing_at(&b.heads()), 1);
        sync_pair(&mut a, &mut b);
        let mut held = a.records_held_at(&b.heads());
        held.sort();
        let mut want = vec![first, second];
        want.sort();
        assert_eq!(held, want);
        assert_eq!(a.changes_missing_at(&b.heads()), 0);
        // The sync state remembers the common heads.
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        for _ in 0..10 {
            if let Some(m) = a.generate_sync_message(&mut sa) {
                b.receive_sync_message(&mut sb, &m).unwrap();
            }
            if let Some(m) = b.generate_sync_message(&mut sb) {
                a.receive_sync_message(&mut sa, &m).unwrap();
            }
        }
        assert_eq!(sa.their_heads(), Some(b.heads()));
        let restored = SyncState::decode(&sa.encode()).unwrap();
        assert_eq!(restored.shared_heads(), a.heads());
    }

    fn list(v: &Vault) -> Vec<Passkey> {
        v.passkeys().cloned().collect()
    }

    /// The incrementally maintained index equals one built from scratch.
    fn assert_index_fresh(v: &mut Vault) {
        let reloaded = Vault::load(&v.save(), v.keyring().clone()).unwrap();
        assert_eq!(list(v), list(&reloaded));
        assert_eq!(v.problems(), reloaded.problems());
        assert_eq!(v.devices(), reloaded.devices());
        assert_eq!(v.device_problems(), reloaded.device_problems());
    }

    fn record_map(v: &Vault, id: &RecordId) -> automerge::ObjId {
        doc::record_obj(&v.doc, &v.shape, id).unwrap().unwrap()
    }

    fn raw_field(v: &Vault, id: &RecordId, field: &str) -> Vec<u8> {
        let obj = record_map(v, id);
        match v.doc.get(&obj, field).unwrap().unwrap().0 {
            automerge::Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Bytes(b) => b.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn put_raw(v: &mut Vault, id: &RecordId, field: &str, value: ScalarValue) {
        let obj = record_map(v, id);
        let mut tx = v.doc.transaction();
        tx.put(&obj, field, value).unwrap();
        tx.commit();
    }

    #[test]
    fn vault_is_send() {
        fn send<T: Send>() {}
        send::<Vault>();
        send::<SyncState>();
    }

    #[test]
    fn insert_list_find_rename_remove() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        assert!(v.is_empty());
        let a = v.insert(new_passkey(1, "example.com"), 5_000).unwrap();
        let b = v.insert(new_passkey(2, "example.org"), 5_001).unwrap();
        let c = v.insert(new_passkey(3, "example.com"), 5_002).unwrap();
        assert_eq!(v.len(), 3);

        let pa = v.passkey(&a).unwrap();
        assert_eq!(pa.rp_id, "example.com");
        assert_eq!(pa.user_name, "user1@example.com");
        assert_eq!(pa.user_display_name, "User 1");
        assert_eq!(pa.user_handle, vec![1, 1, 1]);
        assert_eq!(pa.credential_id, vec![1; 16]);
        assert_eq!(&pa.private_key[..], &[0x81; 32]);
        assert_eq!((pa.created_at_ms, pa.updated_at_ms), (1_001, 5_000));
        assert_eq!(pa.epoch, Epoch(0));
        assert_eq!(pa.label, None);

        let order: Vec<RecordId> = v.passkeys().map(|p| p.record_id).collect();
        assert_eq!(order, vec![a, b, c]);
        let com: Vec<RecordId> = v.find_by_rp("example.com").map(|p| p.record_id).collect();
        assert_eq!(com, vec![a, c]);
        assert_eq!(v.find_by_rp("nope.example").count(), 0);
        assert_eq!(v.find_by_credential_id(&[2; 16]).unwrap().record_id, b);
        assert!(v.find_by_credential_id(&[9; 16]).is_none());
        assert_eq!(&v.decrypt_record(&b).unwrap(), v.passkey(&b).unwrap());

        v.rename(&a, "work key", 6_000).unwrap();
        let pa = v.passkey(&a).unwrap();
        assert_eq!(pa.label.as_deref(), Some("work key"));
        assert_eq!(pa.updated_at_ms, 6_000);
        assert_eq!(&v.decrypt_record(&a).unwrap(), pa);

        // Trashed: hidden from every lookup, listed in the trash, restorable.
        v.trash(&a, 8_000).unwrap();
        assert_eq!(v.trash(&a, 8_001), Err(Error::NotFound(a)));
        assert!(v.find_by_credential_id(&[1; 16]).is_none());
        assert_eq!(v.len(), 2);
        assert_eq!(
            v.passkeys().map(|p| p.record_id).collect::<Vec<_>>(),
            vec![b, c]
        );
        assert_eq!(
            v.trashed().map(|p| p.record_id).collect::<Vec<_>>(),
            vec![a]
        );
        assert_eq!(v.decrypt_record(&a).unwrap().trashed_at_ms, Some(8_000));
        v.restore(&a, 8_500).unwrap();
        assert_eq!(v.restore(&a, 8_501), Err(Error::NotFound(a)));
        assert_eq!(v.find_by_credential_id(&[1; 16]).unwrap().record_id, a);
        assert_eq!(v.trashed_len(), 0);
        assert_eq!(v.decrypt_record(&a).unwrap().trashed_at_ms, None);
        v.trash(&a, 9_000).unwrap();

        assert_eq!(v.purge(&[a, a], 9_500, None).unwrap(), (1, None));
        assert_eq!(v.purge(&[a], 9_600, None).unwrap(), (0, None));
        assert_eq!(v.trashed_len(), 0);
        assert!(v.passkey(&a).is_none());
        assert!(v.find_by_credential_id(&[1; 16]).is_none());
        let com: Vec<RecordId> = v.find_by_rp("example.com").map(|p| p.record_id).collect();
        assert_eq!(com, vec![c]);
        assert_eq!(v.rename(&a, "x", 7_000), Err(Error::NotFound(a)));
        assert_eq!(v.decrypt_record(&a), Err(Error::NotFound(a)));
        assert_eq!(v.len(), 2);
        assert!(v.problems().is_empty());
        assert_index_fresh(&mut v);
    }

    #[test]
    fn insert_rejects_bad_input() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let mut p = new_passkey(1, "example.com");
        p.private_key = Zeroizing::new(vec![1; 31]);
        assert!(matches!(v.insert(p, 0), Err(Error::InvalidInput(_))));
        let mut p = new_passkey(1, "example.com");
        p.credential_id.clear();
        assert!(matches!(v.insert(p, 0), Err(Error::InvalidInput(_))));
        let mut p = new_passkey(1, "example.com");
        p.user_handle = vec![0; 65];
        assert!(matches!(v.insert(p, 0), Err(Error::InvalidInput(_))));
        let id = v.insert(new_passkey(1, "example.com"), 0).unwrap();
        assert!(matches!(
            v.rename(&id, &"x".repeat(5000), 0),
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn genesis_is_identical_across_devices() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        let genesis = |v: &Vault| {
            let changes = v.doc.get_changes(&[]);
            let g: Vec<_> = changes.iter().filter(|c| c.deps().is_empty()).collect();
            assert_eq!(g.len(), 1);
            (g[0].hash(), g[0].raw_bytes().to_vec())
        };
        assert_eq!(genesis(&a), genesis(&b));
        assert_ne!(
            a.doc.get_actor(),
            b.doc.get_actor(),
            "replicas need their own actors"
        );

        let ra = a.insert(new_passkey(1, "a.example"), 1).unwrap();
        let rb = b.insert(new_passkey(2, "b.example"), 2).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        for v in [&a, &b] {
            assert_eq!(v.len(), 2);
            assert!(v.passkey(&ra).is_some() && v.passkey(&rb).is_some());
            // The three maps are one object each on both sides: no conflicts at the root.
            for key in ["records", "devices", "keycheck", "vault_id", "format"] {
                assert_eq!(v.doc.get_all(ROOT, key).unwrap().len(), 1, "{key}");
            }
        }
        assert_eq!(list(&a), list(&b));
        assert_index_fresh(&mut a);
    }

    #[test]
    fn large_load_decrypts_in_parallel_and_keeps_problems() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let ids: Vec<RecordId> = (0..700u32)
            .map(|i| {
                let mut p = new_passkey((i % 250) as u8, &format!("site{}.example", i % 7));
                p.credential_id = i.to_be_bytes().to_vec();
                v.insert(p, u64::from(i)).unwrap()
            })
            .collect();
        let broken = ids[333];
        let mut sealed = raw_field(&v, &broken, "c");
        sealed[30] ^= 0x80;
        put_raw(&mut v, &broken, "c", ScalarValue::Bytes(sealed));
        v.index.set_problem(
            broken,
            Error::Decrypt {
                record: broken,
                field: "c",
            },
        );
        let loaded = Vault::load(&v.save(), keyring()).unwrap();
        assert_eq!(loaded.len(), 699);
        assert_eq!(loaded.problems(), v.problems());
        assert_eq!(list(&loaded), list(&v));
        assert_eq!(
            loaded
                .find_by_credential_id(&5u32.to_be_bytes())
                .unwrap()
                .record_id,
            ids[5]
        );
        assert_eq!(loaded.find_by_rp("site3.example").count(), 100);
    }

    #[test]
    fn save_and_load() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let a = v.insert(new_passkey(1, "example.com"), 10).unwrap();
        v.insert(new_passkey(2, "example.com"), 11).unwrap();
        v.rename(&a, "mine", 12).unwrap();
        let bytes = v.save();
        let mut w = Vault::load(&bytes, keyring()).unwrap();
        assert_eq!(w.id(), v.id());
        assert_eq!(list(&w), list(&v));
        assert_eq!(w.heads(), v.heads());
        // A loaded replica writes under its own actor and keeps working.
        let c = w.insert(new_passkey(3, "example.net"), 13).unwrap();
        assert_eq!(w.len(), 3);
        assert!(!w.save_incremental().is_empty());
        assert!(w.save_incremental().is_empty());
        assert_eq!(w.passkey(&c).unwrap().rp_id, "example.net");
    }

    #[test]
    fn save_then_incremental_chunks_load() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let mut file = v.save_incremental();
        assert!(
            !file.is_empty(),
            "a new vault's first chunk holds the genesis"
        );
        let a = v.insert(new_passkey(1, "example.com"), 10).unwrap();
        file = v.save();
        let b = v.insert(new_passkey(2, "example.com"), 11).unwrap();
        file.extend(v.save_incremental());
        v.rename(&b, "renamed", 12).unwrap();
        v.add_device(device("peer-a", None)).unwrap();
        file.extend(v.save_incremental());
        assert!(v.save_incremental().is_empty());
        v.trash(&b, 13).unwrap();
        v.purge(&[a], 14, None).unwrap();
        file.extend(v.save_incremental());

        let w = Vault::load(&file, keyring()).unwrap();
        assert_eq!(list(&w), list(&v));
        assert_eq!(w.heads(), v.heads());
        assert_eq!(w.devices(), v.devices());
        assert_eq!(w.passkey(&b).unwrap().label.as_deref(), Some("renamed"));
        assert_eq!(
            w.trashed().map(|p| p.record_id).collect::<Vec<_>>(),
            vec![b]
        );
        assert!(w.passkey(&a).is_none());
    }

    fn local(seed: u8) -> LocalDevice {
        LocalDevice::new(
            &Zeroizing::new([seed; 32]),
            &Zeroizing::new([seed ^ 0x33; 32]),
        )
    }

    /// Three replicas of one vault, one per device (1 made it and added 2 and 3).
    fn members3() -> (Vault, Vault, Vault) {
        let (d1, d2, d3) = (local(1), local(2), local(3));
        let mut a = Vault::create(VaultId::random(), keyring()).unwrap();
        for (d, by) in [(&d1, None), (&d2, Some(&d1)), (&d3, Some(&d1))] {
            a.add_device(Device {
                id: d.id().clone(),
                name: "d".into(),
                x25519_public: d.x25519_public(),
                added_by: by.map(|b| b.id().clone()),
                added_at_ms: 1,
                kind: crate::MemberKind::Device,
                signature: None,
            })
            .unwrap();
        }
        a.set_local(d1);
        let bytes = a.save();
        let b = Vault::load_as(&bytes, keyring(), Some(d2)).unwrap();
        let c = Vault::load_as(&bytes, keyring(), Some(d3)).unwrap();
        (a, b, c)
    }

    #[test]
    fn deleting_or_overwriting_a_removal_does_not_undo_it() {
        let (mut a, mut b, c) = members3();
        let c_id = c.local_device().unwrap().clone();
        a.remove_member(&c_id, 5).unwrap();
        sync_pair(&mut a, &mut b);
        assert!(matches!(
            b.member_state(&c_id),
            Some(MemberState::Removed { .. })
        ));
        // A replica that has the removal (a buggy peer, or one passing on a removed device's changes) deletes it,
        // and another overwrites it with garbage.
        let mut evil = Vault::load(&a.save(), a.keyring().clone()).unwrap();
        let removed = evil.shape.ext.removed.clone();
        let mut tx = evil.doc.transaction();
        tx.delete(&removed, c_id.as_str()).unwrap();
        tx.commit();
        sync_pair(&mut evil, &mut b);
        assert!(
            matches!(b.member_state(&c_id), Some(MemberState::Removed { .. })),
            "a deleted removal still counts"
        );
        let mut tx = evil.doc.transaction();
        tx.put(&removed, c_id.as_str(), ScalarValue::Bytes(vec![1, 2, 3]))
            .unwrap();
        tx.commit();
        sync_pair(&mut evil, &mut b);
        assert!(matches!(
            b.member_state(&c_id),
            Some(MemberState::Removed { .. })
        ));
        // And after a restart, from the stored history.
        let again = Vault::load_as(&b.save(), b.keyring().clone(), Some(local(2))).unwrap();
        assert!(matches!(
            again.member_state(&c_id),
            Some(MemberState::Removed { .. })
        ));
        assert!(!again.needs_rotation());
    }

    #[test]
    fn an_epoch_that_skips_generations_does_not_become_current() {
        let (mut a, mut b, _) = members3();
        sync_pair(&mut a, &mut b);
        // A member signs an epoch claiming generation 1000 on top of epoch 0 (generation 0).
        let forged = Epoch(77);
        let me = local(2);
        let info = EpochInfo::sign(
            &b.id,
            forged,
            (Epoch(0), 999),
            &me,
            1,
            BTreeSet::from([me.id().clone()]),
        )
        .encode();
        let key = VaultKey::generate();
        let wrap = members::wrap(&b.id, forged, me.id(), &me.x25519_public(), &key).unwrap();
        let (ext, shape, vault) = (b.shape.ext.clone(), b.shape.clone(), b.id);
        let mut tx = b.doc.transaction();
        doc::put_epoch(
            &mut tx,
            &ext,
            forged,
            info,
            vec![(me.id().to_string(), wrap)],
        )
        .unwrap();
        doc::put_keycheck(&mut tx, &shape, &vault, forged, &key).unwrap();
        tx.commit();
        sync_pair(&mut b, &mut a);
        assert_eq!(a.epochs.current.map(|(_, e)| e), Some(Epoch(0)));
        assert_eq!(a.keyring().current(), Epoch(0));
        // A real rotation is generation 1, and becomes current everywhere.
        let rotated = a.rotate(2).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(a.epochs.current, Some((1, rotated)));
        assert_eq!(b.keyring().current(), rotated);
    }

    #[test]
    fn an_epoch_made_up_by_a_stranger_is_not_learnt() {
        let (mut a, mut b, _) = members3();
        sync_pair(&mut a, &mut b);
        // Someone who is no member (their own key) describes an epoch, wraps a key of theirs to B and writes its
        // key check: B must not take the key (it would later have to be destroyed, again and again).
        let forged = Epoch(78);
        let stranger = local(9);
        let b_me = local(2);
        let info = EpochInfo::sign(
            &b.id,
            forged,
            (Epoch(0), 0),
            &stranger,
            1,
            BTreeSet::from([b_me.id().clone()]),
        )
        .encode();
        let key = VaultKey::generate();
        let wrap = members::wrap(&b.id, forged, b_me.id(), &b_me.x25519_public(), &key).unwrap();
        let (ext, shape, vault) = (a.shape.ext.clone(), a.shape.clone(), a.id);
        let mut tx = a.doc.transaction();
        doc::put_epoch(
            &mut tx,
            &ext,
            forged,
            info,
            vec![(b_me.id().to_string(), wrap)],
        )
        .unwrap();
        doc::put_keycheck(&mut tx, &shape, &vault, forged, &key).unwrap();
        tx.commit();
        sync_pair(&mut a, &mut b);
        assert!(b.keyring().key(forged).is_none());
        let again = Vault::load_as(&b.save(), b.keyring().clone(), Some(local(2))).unwrap();
        assert!(again.keyring().key(forged).is_none());
    }

    #[test]
    fn wrong_keyring_is_refused() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        v.insert(new_passkey(1, "example.com"), 10).unwrap();
        let bytes = v.save();
        let wrong = Keyring::new(Epoch(0), VaultKey::from_bytes([0x43; 32]));
        assert_eq!(Vault::load(&bytes, wrong).err(), Some(Error::WrongKey));
        // The right key under an epoch the vault never saw: the vault cannot vouch for it.
        let other_epoch = Keyring::new(Epoch(1), VaultKey::from_bytes(KEY));
        assert_eq!(
            Vault::load(&bytes, other_epoch).err(),
            Some(Error::UnknownEpoch(Epoch(1)))
        );
        // An extra epoch the vault has never seen (a rotation not yet synced) has nothing to check against.
        let mut mixed = Keyring::new(Epoch(0), VaultKey::from_bytes(KEY));
        mixed.insert(Epoch(5), VaultKey::generate());
        assert!(Vault::load(&bytes, mixed).is_ok());
    }

    #[test]
    fn same_vault_id_with_another_key_is_detected_on_sync() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mine = a.insert(new_passkey(1, "example.com"), 1).unwrap();
        let other_key = Keyring::new(Epoch(0), VaultKey::from_bytes([7; 32]));
        let mut b = Vault::create(id, other_key).unwrap();
        let theirs = b.insert(new_passkey(2, "example.com"), 2).unwrap();
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        let mut saw_wrong_key = false;
        for _ in 0..10 {
            if let Some(m) = a.generate_sync_message(&mut sa) {
                saw_wrong_key |= b.receive_sync_message(&mut sb, &m) == Err(Error::WrongKey);
            }
            if let Some(m) = b.generate_sync_message(&mut sb) {
                saw_wrong_key |= a.receive_sync_message(&mut sa, &m) == Err(Error::WrongKey);
            }
        }
        assert!(saw_wrong_key);
        // The foreign records are problems, and the vault still loads with the right key (not with b's).
        assert!(matches!(a.problems(), [(id, Error::Decrypt { .. })] if *id == theirs));
        let reloaded = Vault::load(&a.save(), keyring()).unwrap();
        assert!(reloaded.passkey(&mine).is_some());
        assert!(matches!(reloaded.problems(), [(id, Error::Decrypt { .. })] if *id == theirs));
        let wrong = Keyring::new(Epoch(0), VaultKey::from_bytes([8; 32]));
        assert_eq!(Vault::load(&a.save(), wrong).err(), Some(Error::WrongKey));
    }

    #[test]
    fn tampered_field_shows_as_problem_only_for_that_record() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let a = v.insert(new_passkey(1, "example.com"), 10).unwrap();
        let b = v.insert(new_passkey(2, "example.com"), 11).unwrap();
        let mut peer = Vault::load(&v.save(), keyring()).unwrap();

        let mut sealed = raw_field(&v, &a, "c");
        let last = sealed.len() - 1;
        sealed[last] ^= 0x01;
        put_raw(&mut v, &a, "c", ScalarValue::Bytes(sealed));

        let expected = [(
            a,
            Error::Decrypt {
                record: a,
                field: "c",
            },
        )];
        let loaded = Vault::load(&v.save(), keyring()).unwrap();
        assert_eq!(loaded.problems(), &expected[..]);
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            loaded.passkeys().map(|p| p.record_id).collect::<Vec<_>>(),
            vec![b]
        );
        assert!(loaded.find_by_credential_id(&[1; 16]).is_none());
        assert_eq!(loaded.decrypt_record(&a), Err(expected[0].1.clone()));
        assert_eq!(loaded.find_by_rp("example.com").count(), 1);

        // Arriving by sync, the replica's index drops the record too.
        assert!(peer.passkey(&a).is_some());
        sync_pair(&mut v, &mut peer);
        assert_eq!(peer.problems(), &expected[..]);
        assert!(peer.passkey(&a).is_none());
        assert_eq!(peer.rename(&a, "x", 1), Err(expected[0].1.clone()));
        assert_index_fresh(&mut peer);

        // Deleting the broken record clears the problem.
        assert_eq!(peer.purge(&[a], 5, None).unwrap().0, 1);
        assert!(peer.problems().is_empty());
        assert_index_fresh(&mut peer);
    }

    #[test]
    fn moved_ciphertexts_do_not_decrypt() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let a = v.insert(new_passkey(1, "example.com"), 10).unwrap();
        let b = v.insert(new_passkey(2, "example.com"), 11).unwrap();
        let c = v.insert(new_passkey(3, "example.com"), 12).unwrap();

        // Between fields of one record.
        let core = raw_field(&v, &a, "c");
        put_raw(&mut v, &a, "m", ScalarValue::Bytes(core));
        assert_eq!(
            v.decrypt_record(&a),
            Err(Error::Decrypt {
                record: a,
                field: "m"
            })
        );
        // Between records.
        let core_a = raw_field(&v, &a, "c");
        put_raw(&mut v, &b, "c", ScalarValue::Bytes(core_a));
        assert_eq!(
            v.decrypt_record(&b),
            Err(Error::Decrypt {
                record: b,
                field: "c"
            })
        );
        // To another epoch the keyring knows (same key even): the epoch is bound too.
        // (Each v2 value names its epoch in its first four bytes.)
        v.keyring.insert(Epoch(1), VaultKey::from_bytes(KEY));
        let mut moved = raw_field(&v, &c, "c");
        moved[..4].copy_from_slice(&1u32.to_be_bytes());
        put_raw(&mut v, &c, "c", ScalarValue::Bytes(moved.clone()));
        assert!(matches!(v.decrypt_record(&c), Err(Error::Decrypt { record, .. }) if record == c));
        // To an epoch it does not know.
        moved[..4].copy_from_slice(&9u32.to_be_bytes());
        put_raw(&mut v, &c, "c", ScalarValue::Bytes(moved));
        assert_eq!(v.decrypt_record(&c), Err(Error::UnknownEpoch(Epoch(9))));
        // Between vaults.
        let mut other = Vault::create(VaultId::random(), keyring()).unwrap();
        let d = other.insert(new_passkey(4, "example.com"), 13).unwrap();
        let obj = record_map(&other, &d);
        let mut tx = other.doc.transaction();
        tx.put(&obj, "c", ScalarValue::Bytes(raw_field(&v, &a, "c")))
            .unwrap();
        tx.commit();
        assert_eq!(
            other.decrypt_record(&d),
            Err(Error::Decrypt {
                record: d,
                field: "c"
            })
        );
    }

    #[test]
    fn wrong_types_are_malformed() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let a = v.insert(new_passkey(1, "example.com"), 10).unwrap();
        let b = v.insert(new_passkey(2, "example.com"), 11).unwrap();
        put_raw(&mut v, &a, "c", ScalarValue::Str("example.com".into()));
        put_raw(&mut v, &b, "epoch", ScalarValue::Str("0".into()));
        let loaded = Vault::load(&v.save(), keyring()).unwrap();
        assert_eq!(loaded.len(), 0);
        assert_eq!(loaded.problems().len(), 2);
        assert!(
            loaded
                .problems()
                .iter()
                .all(|(_, e)| matches!(e, Error::Malformed(_)))
        );

        // The root in the wrong shape: the whole load fails.
        let id = VaultId::random();
        let (mut doc, _) = doc::genesis(&id).unwrap();
        doc.set_actor(ActorId::random());
        let mut tx = doc.transaction();
        tx.put(ROOT, "format", ScalarValue::Uint(2)).unwrap();
        tx.commit();
        assert!(matches!(
            Vault::load(&doc.save(), keyring()),
            Err(Error::Malformed(_))
        ));
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "records", "not a map").unwrap();
        tx.put(ROOT, "vault_id", ScalarValue::Bytes(vec![1; 16]))
            .unwrap();
        tx.commit();
        assert!(matches!(
            Vault::load(&doc.save(), keyring()),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn garbage_bytes_are_errors() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        v.insert(new_passkey(1, "example.com"), 10).unwrap();
        let good = v.save();
        let mut state = SyncState::new();
        let mut junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0x85, 0x6f, 0x4a, 0x83],
            vec![0x42; 100],
            vec![0x43, 0xff, 0xff, 0xff, 0xff, 0x0f],
            (0..=255).collect(),
            good[..good.len() / 2].to_vec(),
            good[..good.len() - 1].to_vec(),
        ];
        let mut appended = good.clone();
        appended.extend_from_slice(b"trailing garbage");
        junk.push(appended);
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0xff;
        junk.push(flipped);
        for bytes in &junk {
            assert!(
                Vault::load(bytes, keyring()).is_err(),
                "load accepted {} bytes",
                bytes.len()
            );
            assert!(SyncState::decode(bytes).is_err() || bytes.is_empty() || bytes == &[0]);
            assert!(v.receive_sync_message(&mut state, bytes).is_err() || bytes.is_empty());
        }
        // A plain automerge document is not a vault.
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "hello", "world").unwrap();
        tx.commit();
        assert!(matches!(
            Vault::load(&doc.save(), keyring()),
            Err(Error::Malformed(_))
        ));
        // The vault still works.
        assert_eq!(v.len(), 1);
        assert_index_fresh(&mut v);
    }

    #[test]
    fn foreign_vault_changes_are_refused() {
        let mut a = Vault::create(VaultId::random(), keyring()).unwrap();
        let mut b = Vault::create(VaultId::random(), keyring()).unwrap();
        let ra = a.insert(new_passkey(1, "a.example"), 1).unwrap();
        b.insert(new_passkey(2, "b.example"), 2).unwrap();
        let heads = a.heads();
        assert_eq!(a.merge(&mut b), Err(Error::ForeignVault));
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        let mut refused = 0;
        for _ in 0..10 {
            if let Some(m) = b.generate_sync_message(&mut sb)
                && let Err(e) = a.receive_sync_message(&mut sa, &m)
            {
                assert_eq!(e, Error::ForeignVault);
                refused += 1;
            }
            if let Some(m) = a.generate_sync_message(&mut sa)
                && let Err(e) = b.receive_sync_message(&mut sb, &m)
            {
                assert_eq!(e, Error::ForeignVault);
                refused += 1;
            }
        }
        assert!(refused > 0);
        // Messages that carry b's changes (as b sends them to its own replica c) are refused by a.
        let mut c = Vault::create(b.id(), keyring()).unwrap();
        let (mut sb, mut sc) = (SyncState::new(), SyncState::new());
        let mut carried = 0;
        for _ in 0..10 {
            if let Some(m) = b.generate_sync_message(&mut sb) {
                c.receive_sync_message(&mut sc, &m).unwrap();
                let decoded = automerge::sync::Message::decode(&m).unwrap();
                if !decoded.changes.is_empty() {
                    carried += 1;
                    // A whole document or a root change is recognisably foreign and refused. A change whose
                    // dependencies `a` has never seen cannot be judged yet: automerge holds it back until they
                    // arrive, and they never will, because their root is refused. Either way nothing applies.
                    let result = a.receive_sync_message(&mut SyncState::new(), &m);
                    assert!(
                        matches!(result, Ok(()) | Err(Error::ForeignVault)),
                        "{result:?}"
                    );
                    assert_eq!(a.heads(), heads, "a foreign change was applied");
                }
            }
            if let Some(m) = c.generate_sync_message(&mut sc) {
                b.receive_sync_message(&mut sb, &m).unwrap();
            }
        }
        assert!(carried > 0);
        assert_eq!(list(&b), list(&c));
        assert_eq!(a.heads(), heads, "nothing of the other vault was applied");
        assert_eq!(
            a.passkeys().map(|p| p.record_id).collect::<Vec<_>>(),
            vec![ra]
        );
        let reloaded = Vault::load(&a.save(), keyring()).unwrap();
        assert_eq!(reloaded.id(), a.id());
        assert_eq!(list(&reloaded), list(&a));
    }

    #[test]
    fn a_peer_writing_the_root_is_flagged_and_ignored() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        let ra = a.insert(new_passkey(1, "a.example"), 1).unwrap();
        sync_pair(&mut a, &mut b);
        // b's buggy daemon replaces the records map.
        let mut tx = b.doc.transaction();
        tx.put_object(ROOT, "records", ObjType::Map).unwrap();
        tx.commit();
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        let mut flagged = false;
        for _ in 0..10 {
            if let Some(m) = b.generate_sync_message(&mut sb) {
                flagged |= matches!(
                    a.receive_sync_message(&mut sa, &m),
                    Err(Error::Malformed(_))
                );
            }
            if let Some(m) = a.generate_sync_message(&mut sa) {
                let _ = b.receive_sync_message(&mut sb, &m);
            }
        }
        assert!(flagged);
        assert!(a.passkey(&ra).is_some());
        // Reported once; later changes from the same peer go through.
        b.insert(new_passkey(3, "c.example"), 3).unwrap();
        sync_pair(&mut b, &mut a);
        assert_eq!(a.find_by_rp("c.example").count(), 1);
        // The vault keeps addressing its genesis maps: after a reload the record is still there.
        let mut reloaded = Vault::load(&a.save(), keyring()).unwrap();
        assert!(reloaded.passkey(&ra).is_some());
        let rb = reloaded.insert(new_passkey(2, "b.example"), 2).unwrap();
        assert_eq!(reloaded.len(), 3);
        assert!(
            Vault::load(&reloaded.save(), keyring())
                .unwrap()
                .passkey(&rb)
                .is_some()
        );
    }

    #[test]
    fn sync_updates_only_touched_records() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        let r1 = a.insert(new_passkey(1, "example.com"), 1).unwrap();
        let r2 = a.insert(new_passkey(2, "example.com"), 2).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(list(&a), list(&b));

        b.rename(&r1, "from b", 3).unwrap();
        a.purge(&[r2], 4, None).unwrap();
        let r3 = a.insert(new_passkey(3, "example.org"), 4).unwrap();
        a.add_device(device("peer-a", None)).unwrap();
        sync_pair(&mut a, &mut b);
        for v in [&a, &b] {
            assert_eq!(v.passkey(&r1).unwrap().label.as_deref(), Some("from b"));
            assert!(v.passkey(&r2).is_none());
            assert_eq!(v.find_by_rp("example.org").next().unwrap().record_id, r3);
            assert_eq!(v.find_by_credential_id(&[3; 16]).unwrap().record_id, r3);
            assert_eq!(v.devices().len(), 1);
        }
        assert_eq!(list(&a), list(&b));
        assert_index_fresh(&mut a);
        assert_index_fresh(&mut b);
    }

    #[test]
    fn remote_changes_reread_only_the_records_they_touch() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let quiet = a.insert(new_passkey(1, "example.com"), 1).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        sync_pair(&mut a, &mut b);
        // Break `quiet` in b's document behind the index's back: only a full re-read would notice.
        put_raw(&mut b, &quiet, "c", ScalarValue::Bytes(vec![0; 60]));
        let busy = a.insert(new_passkey(2, "example.com"), 2).unwrap();
        sync_pair(&mut a, &mut b);
        assert!(b.passkey(&busy).is_some());
        assert!(
            b.passkey(&quiet).is_some(),
            "an untouched record was re-read"
        );
        assert!(b.problems().is_empty());
        // On a, the same sync carried the change to `quiet`, so a re-read it.
        assert!(a.passkey(&quiet).is_none());
        assert!(matches!(a.problems(), [(id, Error::Decrypt { field: "c", .. })] if *id == quiet));
    }

    #[test]
    fn a_new_replica_receives_many_records_at_once() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        for i in 0..300u32 {
            let mut p = new_passkey((i % 200) as u8, &format!("site{}.example", i % 5));
            p.credential_id = i.to_be_bytes().to_vec();
            a.insert(p, u64::from(i)).unwrap();
        }
        a.add_device(device("peer-a", None)).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(b.len(), 300);
        assert_eq!(list(&a), list(&b));
        assert_eq!(a.devices(), b.devices());
        // After the bulk path, later single changes still reach the right records.
        let first = a.passkeys().next().unwrap().record_id;
        a.rename(&first, "after bulk", 1_000).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(
            b.passkey(&first).unwrap().label.as_deref(),
            Some("after bulk")
        );
        assert_index_fresh(&mut b);
    }

    #[test]
    fn remote_edits_reach_a_loaded_replica() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let r = a.insert(new_passkey(1, "example.com"), 1).unwrap();
        a.add_device(device("peer-a", None)).unwrap();
        let mut b = Vault::load(&a.save(), keyring()).unwrap();
        a.rename(&r, "renamed on a", 2).unwrap();
        let mut renamed = device("peer-a", None);
        renamed.name = "new name".into();
        a.add_device(renamed.clone()).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(
            b.passkey(&r).unwrap().label.as_deref(),
            Some("renamed on a")
        );
        assert_eq!(b.devices(), vec![renamed]);
        a.remove_device(&DeviceId::new("peer-a".into())).unwrap();
        a.purge(&[r], 5, None).unwrap();
        sync_pair(&mut a, &mut b);
        assert!(b.is_empty());
        assert!(b.devices().is_empty());
        assert_index_fresh(&mut b);
    }

    #[test]
    fn every_epoch_of_the_keyring_is_checked() {
        let mut ring = keyring();
        ring.insert(Epoch(1), VaultKey::from_bytes([0x11; 32]));
        ring.set_current(Epoch(1)).unwrap();
        let mut v = Vault::create(VaultId::random(), ring.clone()).unwrap();
        let id = v.insert(new_passkey(1, "example.com"), 1).unwrap();
        assert_eq!(v.passkey(&id).unwrap().epoch, Epoch(1));
        let bytes = v.save();
        assert_eq!(Vault::load(&bytes, ring.clone()).unwrap().len(), 1);
        // The current epoch's key is right, an older one is not.
        let mut bad_old = Keyring::new(Epoch(0), VaultKey::from_bytes([0x99; 32]));
        bad_old.insert(Epoch(1), VaultKey::from_bytes([0x11; 32]));
        bad_old.set_current(Epoch(1)).unwrap();
        assert_eq!(Vault::load(&bytes, bad_old).err(), Some(Error::WrongKey));
        // Without the key of epoch 1 its records are problems, not a failed load.
        let only_old = keyring();
        let loaded = Vault::load(&bytes, only_old).unwrap();
        assert!(loaded.is_empty());
        assert_eq!(loaded.problems(), &[(id, Error::UnknownEpoch(Epoch(1)))]);
    }

    #[test]
    fn concurrent_rename_and_delete_converge() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        let r = a.insert(new_passkey(1, "example.com"), 1).unwrap();
        sync_pair(&mut a, &mut b);
        a.rename(&r, "renamed", 2).unwrap();
        b.purge(&[r], 3, None).unwrap();
        let mut c = Vault::load(&a.save(), keyring()).unwrap();
        a.merge(&mut b).unwrap();
        sync_pair(&mut b, &mut c);
        for v in [&a, &b, &c] {
            assert!(v.passkey(&r).is_none());
            assert!(v.problems().is_empty());
        }
        assert_eq!(a.heads(), b.heads());
        assert_eq!(b.heads(), c.heads());
    }

    fn device(id: &str, by: Option<&str>) -> Device {
        Device {
            id: DeviceId::new(id.into()),
            name: format!("{id}'s laptop"),
            x25519_public: [9; 32],
            added_by: by.map(|b| DeviceId::new(b.into())),
            added_at_ms: 77,
            kind: crate::MemberKind::Device,
            signature: None,
        }
    }

    #[test]
    fn devices_round_trip() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        v.add_device(device("12D3KooWA", None)).unwrap();
        v.add_device(device("12D3KooWB", Some("12D3KooWA")))
            .unwrap();
        let mut renamed = device("12D3KooWB", Some("12D3KooWA"));
        renamed.name = "desk".into();
        v.add_device(renamed.clone()).unwrap();
        assert_eq!(
            v.devices(),
            vec![device("12D3KooWA", None), renamed.clone()]
        );
        assert!(v.remove_device(&DeviceId::new("12D3KooWA".into())).unwrap());
        assert!(!v.remove_device(&DeviceId::new("12D3KooWA".into())).unwrap());
        assert_eq!(v.devices(), vec![renamed]);
        assert!(v.add_device(device("", None)).is_err());
        assert_index_fresh(&mut v);

        // The clear fields are authenticated by the sealed ones: swapping the public key is detected.
        let b = DeviceId::new("12D3KooWB".into());
        let obj = match v.doc.get(&v.shape.devices, b.as_str()).unwrap().unwrap() {
            (automerge::Value::Object(ObjType::Map), obj) => obj,
            other => panic!("{other:?}"),
        };
        let mut tx = v.doc.transaction();
        tx.put(&obj, "x25519_public", ScalarValue::Bytes(vec![6; 32]))
            .unwrap();
        tx.commit();
        let reloaded = Vault::load(&v.save(), keyring()).unwrap();
        assert!(reloaded.devices().is_empty());
        assert!(matches!(
            reloaded.device_problems(),
            [(id, Error::DeviceDecrypt { field: "n", .. })] if *id == b
        ));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let mut v = Vault::create(VaultId::random(), keyring()).unwrap();
        let mut p = new_passkey(1, "example.com");
        let secret: Vec<u8> = (200..232).collect();
        p.private_key = Zeroizing::new(secret.clone());
        let printed_new = format!("{p:?} {p:#?}");
        let id = v.insert(p, 1).unwrap();
        let passkey = v.passkey(&id).unwrap();
        let printed = format!("{passkey:?} {passkey:#?} {printed_new} {v:?} {v:#?}");
        assert!(printed.contains("private_key"));
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        for needle in [&hex[..], &hex[..6], "C8C9CA", "200, 201", "200,\n", "[200"] {
            assert!(!printed.contains(needle), "{needle} in {printed}");
        }
        // The key bytes of the vault key do not show either.
        assert!(!printed.contains("4242") && !printed.contains("66, 66"));
    }

    #[test]
    fn receiving_a_message_twice_changes_nothing() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        a.insert(new_passkey(1, "example.com"), 1).unwrap();
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        let mut all = Vec::new();
        for _ in 0..10 {
            if let Some(m) = a.generate_sync_message(&mut sa) {
                b.receive_sync_message(&mut sb, &m).unwrap();
                all.push(m);
            }
            if let Some(m) = b.generate_sync_message(&mut sb) {
                a.receive_sync_message(&mut sa, &m).unwrap();
            }
        }
        assert_eq!(b.len(), 1);
        let (heads, passkeys) = (b.heads(), list(&b));
        for m in &all {
            b.receive_sync_message(&mut sb, m).unwrap();
            b.receive_sync_message(&mut SyncState::new(), m).unwrap();
        }
        assert_eq!((b.heads(), list(&b)), (heads, passkeys));
    }

    #[test]
    fn sync_state_round_trips() {
        let id = VaultId::random();
        let mut a = Vault::create(id, keyring()).unwrap();
        let mut b = Vault::create(id, keyring()).unwrap();
        a.insert(new_passkey(1, "example.com"), 1).unwrap();
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        for _ in 0..5 {
            if let Some(m) = a.generate_sync_message(&mut sa) {
                b.receive_sync_message(&mut sb, &m).unwrap();
            }
            if let Some(m) = b.generate_sync_message(&mut sb) {
                a.receive_sync_message(&mut sa, &m).unwrap();
            }
        }
        let restored = SyncState::decode(&sa.encode()).unwrap();
        assert_eq!(restored.encode(), sa.encode());
        assert!(!sa.encode().is_empty());
    }
}
