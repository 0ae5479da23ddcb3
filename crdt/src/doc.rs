//! The shape of the automerge document and the (de)serialisation of records, devices and key checks.
//!
//! ```text
//! ROOT
//! ├─ "format"   uint 1
//! ├─ "vault_id" bytes(16)
//! ├─ "records"  map  RecordId hex → { "epoch": uint,
//! │                                   "core": sealed(credential id, rp id, user handle, user name,
//! │                                                  display name, private key, created_at),
//! │                                   "updated_at": sealed(u64), "label": sealed(utf-8)? }
//! ├─ "devices"  map  DeviceId     → { "x25519_public": bytes(32), "added_by": str?, "epoch": uint,
//! │                                   "name": sealed(utf-8), "added_at": sealed(u64) }
//! └─ "keycheck" map  epoch (decimal) → sealed(fixed string)
//! ```
//!
//! `sealed(x)` is a 24-byte nonce ‖ XChaCha20-Poly1305 ciphertext ‖ tag, with associated data binding it to
//! the vault, the record (or device), the field name and the epoch (see `crypto`); a device's sealed values
//! also bind its clear public key and `added_by`, so those cannot be swapped unnoticed either. The fields fixed at creation
//! share one sealed value: a record decrypts with two AEAD operations instead of eight, which is what keeps
//! loading 10,000 records under 300 ms (every AEAD operation has a fixed cost of a few microseconds, far
//! more than the bytes it covers). The fields that change (`updated_at`, `label`) are separate, so a rename
//! touches only them and merges per field.
//!
//! The genesis change (format, vault id and the three empty maps) depends on the vault id only, so every
//! replica creates byte-identical genesis changes and the three maps are the same objects everywhere. Those
//! objects are addressed by their genesis op ids, never looked up by name after loading, so a stray write to
//! the root cannot redirect them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use automerge::iter::DocItem;
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue,
    ScalarValueRef, Value, ValueRef,
};
use zeroize::Zeroizing;

use crate::crypto::{self, Scope};
use crate::record::{self, field};
use crate::{Device, DeviceId, Epoch, Error, Keyring, Passkey, RecordId, VaultId, VaultKey};

pub(crate) const FORMAT: u64 = 1;
const KEY_FORMAT: &str = "format";
const KEY_VAULT_ID: &str = "vault_id";
const KEY_RECORDS: &str = "records";
const KEY_DEVICES: &str = "devices";
const KEY_KEYCHECK: &str = "keycheck";
// Op counters of the genesis change, in the order `genesis` writes them.
const OP_RECORDS: u64 = 3;
const OP_DEVICES: u64 = 4;
const OP_KEYCHECK: u64 = 5;

const KEYCHECK_PLAINTEXT: &[u8] = b"passmesh vault key check v1";

const KEY_EXT: &str = "ext";
const EXT_REMOVED: &str = "removed";
const EXT_EPOCHS: &str = "epochs";
const EXT_AUDIT: &str = "audit";
const EXT_INBOXES: &str = "inboxes";
// Op counters of the extension change, in the order `ext_change` writes them (the genesis used 1 to 5).
const OP_EXT: u64 = 6;
const OP_REMOVED: u64 = 7;
const OP_EPOCHS: u64 = 8;
const OP_AUDIT: u64 = 9;
const OP_INBOXES: u64 = 10;
/// In an epoch's map: its signed description.
const EPOCH_INFO: &str = "info";
/// In an epoch's map: the prefix of the key of a wrap to one device (`w/<device id>`).
const WRAP_PREFIX: &str = "w/";

/// The vault's three maps, as created by the genesis change, and the maps of the extension change.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub(crate) records: ObjId,
    pub(crate) devices: ObjId,
    pub(crate) keycheck: ObjId,
    pub(crate) ext: Ext,
}

/// The maps the extension change adds under `ROOT.ext`: removals, key epochs, the audit log and (reserved)
/// device inboxes.
#[derive(Clone, Debug)]
pub(crate) struct Ext {
    pub(crate) removed: ObjId,
    pub(crate) epochs: ObjId,
    pub(crate) audit: ObjId,
    pub(crate) inboxes: ObjId,
}

/// A fixed actor of vault `id`: `prefix` ‖ the vault id, distinct from the random actors of replicas.
fn fixed_actor(prefix: &[u8], id: &VaultId) -> ActorId {
    let mut bytes = Vec::with_capacity(prefix.len() + 16);
    bytes.extend_from_slice(prefix);
    bytes.extend_from_slice(id.as_bytes());
    ActorId::from(bytes)
}

/// The actor of the genesis change.
pub(crate) fn genesis_actor(id: &VaultId) -> ActorId {
    fixed_actor(b"pm-gen", id)
}

fn genesis_shape(id: &VaultId) -> Shape {
    let actor = genesis_actor(id);
    Shape {
        records: ObjId::Id(OP_RECORDS, actor.clone(), 0),
        devices: ObjId::Id(OP_DEVICES, actor.clone(), 0),
        keycheck: ObjId::Id(OP_KEYCHECK, actor, 0),
        ext: ext_shape(id),
    }
}

/// The actor of the extension change.
pub(crate) fn ext_actor(id: &VaultId) -> ActorId {
    fixed_actor(b"pm-ext1", id)
}

fn ext_shape(id: &VaultId) -> Ext {
    let actor = ext_actor(id);
    Ext {
        removed: ObjId::Id(OP_REMOVED, actor.clone(), 0),
        epochs: ObjId::Id(OP_EPOCHS, actor.clone(), 0),
        audit: ObjId::Id(OP_AUDIT, actor.clone(), 0),
        inboxes: ObjId::Id(OP_INBOXES, actor, 0),
    }
}

/// The extension change of vault `id`: `ROOT.ext` with its four empty maps, by the vault's extension actor,
/// depending on the genesis only, at time 0, with no message. Like the genesis it depends on the vault id
/// alone, so every replica that upgrades (or creates the vault) makes the byte-identical change, and the maps
/// are the same objects everywhere. See docs/vault-format.md.
pub(crate) fn ext_change(id: &VaultId) -> Result<Change, Error> {
    let (mut doc, _) = genesis(id)?;
    doc.set_actor(ext_actor(id));
    let mut tx = doc.transaction();
    let ext = tx.put_object(ROOT, KEY_EXT, ObjType::Map)?;
    let removed = tx.put_object(&ext, EXT_REMOVED, ObjType::Map)?;
    let epochs = tx.put_object(&ext, EXT_EPOCHS, ObjType::Map)?;
    let audit = tx.put_object(&ext, EXT_AUDIT, ObjType::Map)?;
    let inboxes = tx.put_object(&ext, EXT_INBOXES, ObjType::Map)?;
    tx.commit_with(CommitOptions::default().with_time(0));
    let shape = ext_shape(id);
    if ext != ObjId::Id(OP_EXT, ext_actor(id), 0)
        || removed != shape.removed
        || epochs != shape.epochs
        || audit != shape.audit
        || inboxes != shape.inboxes
    {
        return Err(Error::Automerge("extension op ids moved".into()));
    }
    doc.get_last_local_change()
        .ok_or_else(|| Error::Automerge("the extension change is missing".into()))
}

/// Applies the extension change to `doc` unless it has it. Returns whether it was applied.
pub(crate) fn ensure_ext(doc: &mut Automerge, id: &VaultId) -> Result<bool, Error> {
    let change = ext_change(id)?;
    if doc.get_change_by_hash(&change.hash()).is_some() {
        return Ok(false);
    }
    doc.apply_changes([change])?;
    Ok(true)
}

/// A document holding only the deterministic genesis change of vault `id`. Its actor is still the genesis
/// actor: the caller must switch to a replica actor before writing anything else.
pub(crate) fn genesis(id: &VaultId) -> Result<(Automerge, Shape), Error> {
    // Everything here is fixed by `id`: actor, op order, values, time 0, no message.
    let mut doc = Automerge::new();
    doc.set_actor(genesis_actor(id));
    let mut tx = doc.transaction();
    tx.put(ROOT, KEY_FORMAT, ScalarValue::Uint(FORMAT))?;
    tx.put(
        ROOT,
        KEY_VAULT_ID,
        ScalarValue::Bytes(id.as_bytes().to_vec()),
    )?;
    let records = tx.put_object(ROOT, KEY_RECORDS, ObjType::Map)?;
    let devices = tx.put_object(ROOT, KEY_DEVICES, ObjType::Map)?;
    let keycheck = tx.put_object(ROOT, KEY_KEYCHECK, ObjType::Map)?;
    tx.commit_with(CommitOptions::default().with_time(0));
    let shape = genesis_shape(id);
    if records != shape.records || devices != shape.devices || keycheck != shape.keycheck {
        return Err(Error::Automerge("genesis op ids moved".into()));
    }
    Ok((doc, shape))
}

/// Reads and checks the root of a loaded document: format, vault id, and the genesis maps.
pub(crate) fn read_shape(doc: &Automerge) -> Result<(VaultId, Shape), Error> {
    // Among possibly several (conflicting or overwritten) values, trust the one written by the genesis actor
    // of the vault id it names.
    let mut vault = None;
    for (value, op) in doc.get_all(ROOT, KEY_VAULT_ID)? {
        if let Value::Scalar(s) = &value
            && let ScalarValue::Bytes(b) = s.as_ref()
            && let Ok(bytes) = <[u8; 16]>::try_from(b.as_slice())
        {
            let id = VaultId::from_bytes(bytes);
            if op_actor(&op) == Some(&genesis_actor(&id)) {
                if vault.is_some_and(|v| v != id) {
                    return Err(Error::Malformed("two vault geneses in one document".into()));
                }
                vault = Some(id);
            }
        }
    }
    let id =
        vault.ok_or_else(|| Error::Malformed("no vault id written by a vault genesis".into()))?;
    let actor = genesis_actor(&id);
    let format = doc
        .get_all(ROOT, KEY_FORMAT)?
        .into_iter()
        .find(|(_, op)| op_actor(op) == Some(&actor))
        .ok_or_else(|| Error::Malformed("no format in the vault genesis".into()))?;
    match format.0 {
        Value::Scalar(s) if *s == ScalarValue::Uint(FORMAT) => {}
        _ => return Err(Error::Malformed("unsupported vault format".into())),
    }
    let shape = genesis_shape(&id);
    for (obj, name) in [
        (&shape.records, KEY_RECORDS),
        (&shape.devices, KEY_DEVICES),
        (&shape.keycheck, KEY_KEYCHECK),
    ] {
        if !matches!(doc.object_type(obj), Ok(ObjType::Map)) {
            return Err(Error::Malformed(format!(
                "the genesis {name} map is missing"
            )));
        }
    }
    Ok((id, shape))
}

/// Whether the root holds exactly what the genesis and the extension change wrote (no other write to the root,
/// visible or conflicting).
pub(crate) fn root_is_pristine(doc: &Automerge, id: &VaultId) -> Result<bool, Error> {
    const ROOT_KEYS: [&str; 5] = [
        KEY_DEVICES,
        KEY_FORMAT,
        KEY_KEYCHECK,
        KEY_RECORDS,
        KEY_VAULT_ID,
    ];
    if doc.length(ROOT) != ROOT_KEYS.len() + 1 {
        return Ok(false);
    }
    let (genesis, ext) = (genesis_actor(id), ext_actor(id));
    for (key, actor) in ROOT_KEYS
        .iter()
        .map(|k| (*k, &genesis))
        .chain([(KEY_EXT, &ext)])
    {
        let values = doc.get_all(ROOT, key)?;
        if values.len() != 1 || op_actor(&values[0].1) != Some(actor) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn op_actor(op: &ObjId) -> Option<&ActorId> {
    match op {
        ObjId::Id(_, actor, _) => Some(actor),
        ObjId::Root => None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Key check

fn keycheck_value(vault: &VaultId, epoch: Epoch, key: &VaultKey) -> Result<Vec<u8>, Error> {
    // A fixed plaintext under a nonce fixed per (vault, epoch): every replica writes the very same bytes, and
    // the nonce is never used for anything else.
    let mut nonce = [0u8; 24];
    nonce[..4].copy_from_slice(b"pmkc");
    nonce[4..20].copy_from_slice(vault.as_bytes());
    nonce[20..].copy_from_slice(&epoch.0.to_be_bytes());
    let aad = crypto::aad(vault, Scope::KeyCheck, KEY_KEYCHECK, epoch);
    crypto::seal_with_nonce(key, &nonce, &aad, KEYCHECK_PLAINTEXT)
}

/// Writes the key check of every epoch of `keyring` that the document does not have yet.
/// Returns whether anything was written.
pub(crate) fn write_missing_keychecks(
    doc: &mut Automerge,
    shape: &Shape,
    vault: &VaultId,
    keyring: &Keyring,
) -> Result<bool, Error> {
    let mut missing = Vec::new();
    for epoch in keyring.epochs() {
        if doc.get(&shape.keycheck, epoch.to_string())?.is_none()
            && let Some(key) = keyring.key(epoch)
        {
            missing.push((epoch, keycheck_value(vault, epoch, key)?));
        }
    }
    if missing.is_empty() {
        return Ok(false);
    }
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        for (epoch, value) in missing {
            tx.put(
                &shape.keycheck,
                epoch.to_string(),
                ScalarValue::Bytes(value),
            )?;
        }
        Ok(())
    })
    .map_err(|f| Error::from(f.error))?;
    Ok(true)
}

/// Whether `key` matches a key-check value of `epoch` in the document.
pub(crate) fn keycheck_matches(
    doc: &Automerge,
    shape: &Shape,
    vault: &VaultId,
    epoch: Epoch,
    key: &VaultKey,
) -> bool {
    let aad = crypto::aad(vault, Scope::KeyCheck, KEY_KEYCHECK, epoch);
    doc.get_all(&shape.keycheck, epoch.to_string())
        .unwrap_or_default()
        .iter()
        .any(|(value, _)| match value {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Bytes(b) => {
                    crypto::open(key, &aad, b).is_some_and(|pt| pt.as_slice() == KEYCHECK_PLAINTEXT)
                }
                _ => false,
            },
            Value::Object(_) => false,
        })
}

/// How strictly [`verify_keychecks`] judges conflicting key-check values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// Loading: every epoch the keyring and the document share needs one matching value. A conflicting
    /// mismatch (a replica that once wrote with another key) must not make the vault unloadable; its records
    /// show up as problems instead.
    AnyMatch,
    /// After receiving changes: every value must match, so a peer with another key is reported.
    AllMatch,
}

/// Checks the key-check values of every epoch the keyring knows. `WrongKey` on a mismatch (as judged by
/// `mode`); `UnknownEpoch(current)` if the document has a key check for none of the keyring's epochs.
pub(crate) fn verify_keychecks(
    doc: &Automerge,
    shape: &Shape,
    vault: &VaultId,
    keyring: &Keyring,
    mode: KeyCheck,
) -> Result<(), Error> {
    // The keyring must be this vault's: at least one of its epochs has a matching key check. Its current epoch
    // need not have one yet (a rotation whose write failed is still in the keyring), nor need the others.
    let mut any_seen = false;
    for epoch in keyring.epochs() {
        let Some(key) = keyring.key(epoch) else {
            continue;
        };
        let aad = crypto::aad(vault, Scope::KeyCheck, KEY_KEYCHECK, epoch);
        let (mut matched, mut mismatched) = (0, 0);
        for (value, _) in doc.get_all(&shape.keycheck, epoch.to_string())? {
            let ok = match &value {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Bytes(b) => crypto::open(key, &aad, b)
                        .is_some_and(|pt| pt.as_slice() == KEYCHECK_PLAINTEXT),
                    _ => false,
                },
                Value::Object(_) => false,
            };
            if ok {
                matched += 1;
            } else {
                mismatched += 1;
            }
        }
        let wrong = match mode {
            KeyCheck::AnyMatch => matched == 0 && mismatched > 0,
            KeyCheck::AllMatch => mismatched > 0,
        };
        if wrong {
            return Err(Error::WrongKey);
        }
        any_seen |= matched > 0;
    }
    if !any_seen {
        return Err(Error::UnknownEpoch(keyring.current()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Records

/// The sealed fields of a record (or device), ready to be written. Every field is in v2 form (its epoch
/// first); `drop_v1` names the v1 fields a whole rewrite replaces (and deletes).
pub(crate) struct SealedRecord {
    fields: Vec<(&'static str, Vec<u8>)>,
    drop_v1: &'static [&'static str],
}

fn seal_field(
    vault: &VaultId,
    scope: Scope<'_>,
    epoch: Epoch,
    key: &VaultKey,
    name: &'static str,
    plaintext: &[u8],
) -> Result<(&'static str, Vec<u8>), Error> {
    let aad = crypto::aad(vault, scope, name, epoch);
    let mut out = epoch.0.to_be_bytes().to_vec();
    out.extend_from_slice(&crypto::seal(key, &aad, plaintext)?);
    Ok((name, out))
}

/// Splits a v2 value into its epoch and sealed bytes.
fn split_epoch(value: &[u8]) -> Option<(Epoch, &[u8])> {
    let (epoch, sealed) = value.split_first_chunk::<4>()?;
    Some((Epoch(u32::from_be_bytes(*epoch)), sealed))
}

/// Encrypts all fields of `p` (which must be valid) under `key` of `p.epoch`, in v2 form: the core (with the
/// update time), and the label with the update time when there is a label.
pub(crate) fn seal_record(
    vault: &VaultId,
    key: &VaultKey,
    p: &Passkey,
) -> Result<SealedRecord, Error> {
    let scope = Scope::Record(&p.record_id);
    let e = p.epoch;
    let core = encode_core(p)?;
    let mut fields = vec![seal_field(vault, scope, e, key, field::CORE2, &core)?];
    if let Some(label) = &p.label {
        fields.push(seal_field(
            vault,
            scope,
            e,
            key,
            field::META2,
            &encode_meta(p.updated_at_ms, label),
        )?);
    }
    Ok(SealedRecord {
        fields,
        drop_v1: &field::RECORD_V1,
    })
}

/// The first core encoding: no update time (kept in a field of its own).
const CORE_V1: u8 = 1;
/// The core encoding of v2 records: the update time follows the creation time.
const CORE_V2: u8 = 2;

/// The core plaintext: version 2 ‖ six length-prefixed (u16 BE) byte strings ‖ created_at (u64 BE) ‖
/// updated_at (u64 BE). It holds the private key, hence the wiped buffer, sized up front so it never
/// reallocates.
fn encode_core(p: &Passkey) -> Result<Zeroizing<Vec<u8>>, Error> {
    let parts: [&[u8]; 6] = [
        &p.credential_id,
        p.rp_id.as_bytes(),
        &p.user_handle,
        p.user_name.as_bytes(),
        p.user_display_name.as_bytes(),
        &p.private_key,
    ];
    let len = 1 + parts.iter().map(|b| 2 + b.len()).sum::<usize>() + 16;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.push(CORE_V2);
    for part in parts {
        let n = u16::try_from(part.len())
            .map_err(|_| Error::InvalidInput("field longer than 65535 bytes"))?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&p.created_at_ms.to_be_bytes());
    out.extend_from_slice(&p.updated_at_ms.to_be_bytes());
    Ok(out)
}

/// The fields of a decoded core.
struct Core {
    credential_id: Vec<u8>,
    rp_id: String,
    user_handle: Vec<u8>,
    user_name: String,
    user_display_name: String,
    private_key: Zeroizing<Vec<u8>>,
    created_at_ms: u64,
    /// In v2 cores only.
    updated_at_ms: Option<u64>,
}

fn decode_core(pt: &[u8]) -> Option<Core> {
    let (&version, mut rest) = pt.split_first()?;
    if version != CORE_V1 && version != CORE_V2 {
        return None;
    }
    let mut part = || -> Option<&[u8]> {
        let (len, tail) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (bytes, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(bytes)
    };
    let credential_id = part()?.to_vec();
    let rp_id = String::from_utf8(part()?.to_vec()).ok()?;
    let user_handle = part()?.to_vec();
    let user_name = String::from_utf8(part()?.to_vec()).ok()?;
    let user_display_name = String::from_utf8(part()?.to_vec()).ok()?;
    let private_key = Zeroizing::new(part()?.to_vec());
    let (created_at_ms, updated_at_ms) = if version == CORE_V1 {
        (u64::from_be_bytes(<[u8; 8]>::try_from(rest).ok()?), None)
    } else {
        let times = <[u8; 16]>::try_from(rest).ok()?;
        let (created, updated) = times.split_at(8);
        (
            u64::from_be_bytes(created.try_into().ok()?),
            Some(u64::from_be_bytes(updated.try_into().ok()?)),
        )
    };
    Some(Core {
        credential_id,
        rp_id,
        user_handle,
        user_name,
        user_display_name,
        private_key,
        created_at_ms,
        updated_at_ms,
    })
}

/// The meta plaintext: updated_at (u64 BE) ‖ the label's UTF-8.
fn encode_meta(updated_at_ms: u64, label: &str) -> Vec<u8> {
    let mut out = updated_at_ms.to_be_bytes().to_vec();
    out.extend_from_slice(label.as_bytes());
    out
}

/// Encrypts a new label and update time for record `id` under `epoch` (the writer's current one).
pub(crate) fn seal_rename(
    vault: &VaultId,
    key: &VaultKey,
    id: &RecordId,
    epoch: Epoch,
    label: &str,
    now_ms: u64,
) -> Result<SealedRecord, Error> {
    let scope = Scope::Record(id);
    Ok(SealedRecord {
        fields: vec![seal_field(
            vault,
            scope,
            epoch,
            key,
            field::META2,
            &encode_meta(now_ms, label),
        )?],
        drop_v1: &[],
    })
}

/// Writes a whole record as a new map (replacing any previous one under the same id).
/// Returns the record's map object.
pub(crate) fn put_record(
    tx: &mut impl Transactable,
    shape: &Shape,
    id: &RecordId,
    sealed: SealedRecord,
) -> Result<ObjId, automerge::AutomergeError> {
    let obj = tx.put_object(&shape.records, id.to_string(), ObjType::Map)?;
    for (name, value) in sealed.fields {
        tx.put(&obj, name, ScalarValue::Bytes(value))?;
    }
    Ok(obj)
}

/// Overwrites sealed fields of an existing record or device map; a whole rewrite also deletes the v1 fields it
/// replaces.
pub(crate) fn update_fields(
    tx: &mut impl Transactable,
    obj: &ObjId,
    sealed: SealedRecord,
) -> Result<(), automerge::AutomergeError> {
    // Only a map with more keys than the fields written can hold v1 fields (looking each one up in a rotation's
    // transaction of thousands of records is what would cost).
    if tx.length(obj) > sealed.fields.len() {
        for name in sealed.drop_v1 {
            if tx.get(obj, *name)?.is_some() {
                tx.delete(obj, *name)?;
            }
        }
    }
    for (name, value) in sealed.fields {
        tx.put(obj, name, ScalarValue::Bytes(value))?;
    }
    Ok(())
}

/// The map object of record `id`, if the record exists. `Malformed` if the entry is not a map.
pub(crate) fn record_obj(
    doc: &Automerge,
    shape: &Shape,
    id: &RecordId,
) -> Result<Option<ObjId>, Error> {
    match doc.get(&shape.records, id.to_string())? {
        None => Ok(None),
        Some((Value::Object(ObjType::Map), obj)) => Ok(Some(obj)),
        Some(_) => Err(Error::Malformed(format!("record {id} is not a map"))),
    }
}

/// Raw sealed values of one record map, borrowed from the document.
#[derive(Default)]
pub(crate) struct RawRecord<'a> {
    epoch: Option<u64>,
    core: Option<Cow<'a, [u8]>>,
    updated_at: Option<Cow<'a, [u8]>>,
    label: Option<Cow<'a, [u8]>>,
    core2: Option<Cow<'a, [u8]>>,
    meta2: Option<Cow<'a, [u8]>>,
    trashed: Option<u64>,
    /// The first shape error met while gathering.
    error: Option<Error>,
}

impl<'a> RawRecord<'a> {
    fn absorb(&mut self, id: &RecordId, key: &str, value: ValueRef<'a>) {
        if self.error.is_some() {
            return;
        }
        let slot = match key {
            field::EPOCH => {
                match value {
                    ValueRef::Scalar(ScalarValueRef::Uint(e)) => self.epoch = Some(e),
                    _ => {
                        self.error = Some(Error::Malformed(format!(
                            "record {id}: epoch is not an unsigned integer"
                        )));
                    }
                }
                return;
            }
            field::TRASHED => {
                // Anything but a time is ignored: a bad trash mark must not make the record unreadable.
                if let ValueRef::Scalar(ScalarValueRef::Uint(t)) = value {
                    self.trashed = Some(t);
                }
                return;
            }
            field::CORE => &mut self.core,
            field::UPDATED_AT => &mut self.updated_at,
            field::LABEL => &mut self.label,
            field::CORE2 => &mut self.core2,
            field::META2 => &mut self.meta2,
            // Fields a newer version may add.
            _ => return,
        };
        match value {
            ValueRef::Scalar(ScalarValueRef::Bytes(b)) => *slot = Some(b),
            _ => {
                self.error = Some(Error::Malformed(format!(
                    "record {id}: field {key} is not bytes"
                )))
            }
        }
    }
}

/// Decrypts record `id` stored in map `obj`.
pub(crate) fn read_record(
    doc: &Automerge,
    obj: &ObjId,
    vault: &VaultId,
    keyring: &Keyring,
    id: &RecordId,
) -> Result<Passkey, Error> {
    let mut raw = RawRecord::default();
    for item in doc.map_range(obj, ..) {
        raw.absorb(id, &item.key, item.value);
    }
    open_record(&raw, vault, keyring, id)
}

/// Decrypts record `id` as map `obj` was at document heads `heads` (a version since deleted or overwritten).
pub(crate) fn read_record_at(
    doc: &Automerge,
    obj: &ObjId,
    heads: &[ChangeHash],
    vault: &VaultId,
    keyring: &Keyring,
    id: &RecordId,
) -> Result<Passkey, Error> {
    let mut raw = RawRecord::default();
    for item in doc.map_range_at(obj, .., heads) {
        raw.absorb(id, &item.key, item.value);
    }
    open_record(&raw, vault, keyring, id)
}

/// Below this many records a load decrypts on the calling thread only.
const PARALLEL_MIN: usize = 512;
/// Upper bound on decryption threads during a load.
const PARALLEL_MAX: usize = 4;
/// Records a worker claims at a time.
const PARALLEL_BLOCK: usize = 128;

/// Reads and decrypts every record of the document (with its map object when it is a map), in one sequential
/// pass over the records subtree, then decrypting on up to [`PARALLEL_MAX`] scoped threads (this is what
/// dominates a load after automerge's own).
pub(crate) fn read_all_records(
    doc: &Automerge,
    shape: &Shape,
    vault: &VaultId,
    keyring: &Keyring,
) -> Vec<(RecordId, Option<ObjId>, Result<Passkey, Error>)> {
    let mut out = Vec::new();
    let mut entries: Vec<(RecordId, ObjId, RawRecord<'_>)> = Vec::new();
    let mut slot_of: HashMap<ObjId, usize> = HashMap::new();
    for item in doc.map_range(&shape.records, ..) {
        // A key that is not a record id cannot be reported by id; it is not a record.
        let Ok(id) = item.key.parse::<RecordId>() else {
            continue;
        };
        if item.value == ValueRef::Object(ObjType::Map) {
            let obj = item.id();
            slot_of.insert(obj.clone(), entries.len());
            entries.push((id, obj, RawRecord::default()));
        } else {
            out.push((
                id,
                None,
                Err(Error::Malformed(format!("record {id} is not a map"))),
            ));
        }
    }
    // The whole subtree in storage order is much cheaper than one `map_range` per record.
    let mut current: Option<(Arc<ObjId>, Option<usize>)> = None;
    for item in doc.iter_at(&shape.records, None) {
        let DocItem::Map(m) = item.item else { continue };
        let slot = match &current {
            Some((obj, slot)) if Arc::ptr_eq(obj, &item.obj) => *slot,
            _ => {
                let slot = slot_of.get(item.obj.as_ref()).copied();
                current = Some((item.obj.clone(), slot));
                slot
            }
        };
        if let Some((id, _, raw)) = slot.and_then(|i| entries.get_mut(i)) {
            raw.absorb(id, &m.key, m.value);
        }
    }
    out.reserve(entries.len());
    // Workers claim blocks of records from a shared counter, so a thread that fails to start costs nothing but
    // speed: the calling thread works through whatever is left.
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let start = next.fetch_add(PARALLEL_BLOCK, Ordering::Relaxed);
            let Some(block) = entries.get(start..(start + PARALLEL_BLOCK).min(entries.len()))
            else {
                return done;
            };
            if block.is_empty() {
                return done;
            }
            done.extend(block.iter().map(|(id, obj, raw)| {
                (*id, Some(obj.clone()), open_record(raw, vault, keyring, id))
            }));
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(PARALLEL_MAX);
    if threads < 2 || entries.len() < PARALLEL_MIN {
        out.extend(work());
        return out;
    }
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
            .collect();
        out.extend(work());
        for h in helpers {
            out.extend(
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
    });
    out
}

type Raw<'r, 'a> = (&'static str, &'r Option<Cow<'a, [u8]>>);
/// A field's epoch and plaintext.
type Opened = (Epoch, Zeroizing<Vec<u8>>);

/// What opening the fields of one record or device entry needs.
struct Fields<'a> {
    vault: &'a VaultId,
    keyring: &'a Keyring,
    scope: Scope<'a>,
    /// The v1 epoch field of the object, if it has one.
    v1_epoch: Option<u64>,
    /// The error for a field that does not authenticate.
    fail: &'a dyn Fn(&'static str) -> Error,
    malformed: &'a dyn Fn(&str) -> Error,
}

impl Fields<'_> {
    /// Opens one field: its v2 value if there is one (under the epoch it names), else its v1 value (under the
    /// object's v1 epoch). `None` if it has neither. Returns the epoch with the plaintext.
    fn open(&self, v2: Raw<'_, '_>, v1: Raw<'_, '_>) -> Result<Option<Opened>, Error> {
        let (name, epoch, sealed) = match (v2, v1) {
            ((name, Some(value)), _) => {
                let (epoch, sealed) = split_epoch(value)
                    .ok_or_else(|| (self.malformed)(&format!("field {name} is too short")))?;
                (name, epoch, sealed)
            }
            (_, (name, Some(value))) => {
                let epoch = self.v1_epoch.ok_or_else(|| (self.malformed)("no epoch"))?;
                let epoch = Epoch(
                    u32::try_from(epoch).map_err(|_| (self.malformed)("epoch out of range"))?,
                );
                (name, epoch, value.as_ref())
            }
            _ => return Ok(None),
        };
        let key = self.keyring.key(epoch).ok_or(Error::UnknownEpoch(epoch))?;
        let aad = crypto::aad(self.vault, self.scope, name, epoch);
        let pt = crypto::open(key, &aad, sealed).ok_or_else(|| (self.fail)(name))?;
        Ok(Some((epoch, pt)))
    }
}

/// Decrypts and checks one gathered record.
fn open_record(
    raw: &RawRecord<'_>,
    vault: &VaultId,
    keyring: &Keyring,
    id: &RecordId,
) -> Result<Passkey, Error> {
    let malformed = |what: &str| Error::Malformed(format!("record {id}: {what}"));
    if let Some(e) = &raw.error {
        return Err(e.clone());
    }
    let fields = Fields {
        vault,
        keyring,
        scope: Scope::Record(id),
        v1_epoch: raw.epoch,
        fail: &|field| Error::Decrypt { record: *id, field },
        malformed: &malformed,
    };
    let (epoch, core) = fields
        .open((field::CORE2, &raw.core2), (field::CORE, &raw.core))?
        .ok_or_else(|| malformed("no field core"))?;
    let core = decode_core(&core).ok_or_else(|| malformed("core is not a valid encoding"))?;
    let mut epochs = vec![epoch];
    let (updated_at, label) = match fields.open((field::META2, &raw.meta2), ("", &None))? {
        Some((meta_epoch, pt)) => {
            epochs.push(meta_epoch);
            let (updated, label) = pt
                .split_first_chunk::<8>()
                .ok_or_else(|| malformed("meta is too short"))?;
            let label =
                String::from_utf8(label.to_vec()).map_err(|_| malformed("label is not UTF-8"))?;
            (u64::from_be_bytes(*updated), Some(label))
        }
        None => {
            // No rename in v2 form: the update time is the core's, or (records written before v2) the v1
            // field's, and so is the label.
            let updated_at = match core.updated_at_ms {
                Some(t) => t,
                None => {
                    let (updated_epoch, pt) = fields
                        .open(("", &None), (field::UPDATED_AT, &raw.updated_at))?
                        .ok_or_else(|| malformed("no field updated_at"))?;
                    epochs.push(updated_epoch);
                    u64::from_be_bytes(
                        <[u8; 8]>::try_from(pt.as_slice())
                            .map_err(|_| malformed("updated_at is not a time"))?,
                    )
                }
            };
            let label = match fields.open(("", &None), (field::LABEL, &raw.label))? {
                Some((label_epoch, mut pt)) => {
                    epochs.push(label_epoch);
                    Some(
                        String::from_utf8(std::mem::take(&mut *pt))
                            .map_err(|_| malformed("label is not UTF-8"))?,
                    )
                }
                None => None,
            };
            (updated_at, label)
        }
    };
    // A record is due for re-encryption if any of its fields is not under the current epoch: report that one.
    let epoch = epochs
        .into_iter()
        .find(|e| *e != keyring.current())
        .unwrap_or(epoch);
    let p = Passkey {
        record_id: *id,
        epoch,
        credential_id: core.credential_id,
        rp_id: core.rp_id,
        user_handle: core.user_handle,
        user_name: core.user_name,
        user_display_name: core.user_display_name,
        label,
        private_key: core.private_key,
        created_at_ms: core.created_at_ms,
        updated_at_ms: updated_at,
        trashed_at_ms: raw.trashed,
    };
    record::validate_fields(
        &p.credential_id,
        &p.rp_id,
        &p.user_handle,
        &p.user_name,
        &p.user_display_name,
        &p.private_key,
    )
    .and_then(|()| p.label.as_deref().map_or(Ok(()), record::validate_label))
    .map_err(|e| match e {
        Error::InvalidInput(what) => malformed(what),
        other => other,
    })?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------------------------
// Devices

/// Seals the name and time of device `d` under the current epoch, in v2 form.
pub(crate) fn seal_device(
    vault: &VaultId,
    keyring: &Keyring,
    d: &Device,
) -> Result<SealedRecord, Error> {
    let epoch = keyring.current();
    let key = keyring.current_key();
    let scope = Scope::Device {
        id: &d.id,
        x25519_public: &d.x25519_public,
        added_by: d.added_by.as_ref(),
    };
    Ok(SealedRecord {
        fields: vec![
            seal_field(vault, scope, epoch, key, field::NAME2, d.name.as_bytes())?,
            seal_field(
                vault,
                scope,
                epoch,
                key,
                field::ADDED_AT2,
                &d.added_at_ms.to_be_bytes(),
            )?,
        ],
        drop_v1: &field::DEVICE_V1,
    })
}

/// Writes device `d` as a new map (replacing any previous entry), sealed under the current epoch. Returns the
/// device's map object.
pub(crate) fn put_device(
    doc: &mut Automerge,
    shape: &Shape,
    vault: &VaultId,
    keyring: &Keyring,
    d: &Device,
    audit: Option<AuditValue>,
) -> Result<ObjId, Error> {
    let sealed = seal_device(vault, keyring, d)?;
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        put_audit(tx, &shape.ext, audit)?;
        let obj = tx.put_object(&shape.devices, d.id.as_str(), ObjType::Map)?;
        tx.put(
            &obj,
            field::X25519_PUBLIC,
            ScalarValue::Bytes(d.x25519_public.to_vec()),
        )?;
        if let Some(by) = &d.added_by {
            tx.put(&obj, field::ADDED_BY, ScalarValue::Str(by.as_str().into()))?;
        }
        if let Some(sig) = &d.signature {
            tx.put(
                &obj,
                field::ENTRY,
                ScalarValue::Bytes(crate::members::encode_entry(d, sig)),
            )?;
        }
        for (name, value) in sealed.fields {
            tx.put(&obj, name, ScalarValue::Bytes(value))?;
        }
        Ok(obj)
    })
    .map(|done| done.result)
    .map_err(|f| Error::from(f.error))
}

/// A decrypted device entry with the epoch its name is sealed under.
pub(crate) struct ReadDevice {
    pub(crate) device: Device,
    pub(crate) epoch: Epoch,
}

/// Decrypts the device entry `id`; `None` if there is none.
pub(crate) fn read_device(
    doc: &Automerge,
    shape: &Shape,
    vault: &VaultId,
    keyring: &Keyring,
    id: &DeviceId,
) -> Result<Option<ReadDevice>, Error> {
    let malformed = |what: &str| Error::Malformed(format!("device {id}: {what}"));
    let obj = match doc.get(&shape.devices, id.as_str())? {
        None => return Ok(None),
        Some((Value::Object(ObjType::Map), obj)) => obj,
        Some(_) => return Err(malformed("not a map")),
    };
    let (mut public, mut added_by, mut epoch) = (None, None, None);
    let (mut name, mut added_at, mut name2, mut added_at2) = (None, None, None, None);
    for item in doc.map_range(&obj, ..) {
        match (item.key.as_ref(), item.value) {
            (field::X25519_PUBLIC, ValueRef::Scalar(ScalarValueRef::Bytes(b))) => public = Some(b),
            (field::ADDED_BY, ValueRef::Scalar(ScalarValueRef::Str(s))) => added_by = Some(s),
            (field::EPOCH, ValueRef::Scalar(ScalarValueRef::Uint(e))) => epoch = Some(e),
            (field::NAME, ValueRef::Scalar(ScalarValueRef::Bytes(b))) => name = Some(b),
            (field::ADDED_AT, ValueRef::Scalar(ScalarValueRef::Bytes(b))) => added_at = Some(b),
            (field::NAME2, ValueRef::Scalar(ScalarValueRef::Bytes(b))) => name2 = Some(b),
            (field::ADDED_AT2, ValueRef::Scalar(ScalarValueRef::Bytes(b))) => added_at2 = Some(b),
            (
                field::X25519_PUBLIC
                | field::ADDED_BY
                | field::EPOCH
                | field::NAME
                | field::ADDED_AT
                | field::NAME2
                | field::ADDED_AT2,
                _,
            ) => {
                return Err(malformed(&format!("field {} has the wrong type", item.key)));
            }
            _ => {}
        }
    }
    let public = public
        .and_then(|b| <[u8; 32]>::try_from(b.as_ref()).ok())
        .ok_or_else(|| malformed("no 32-byte x25519 public key"))?;
    let added_by = added_by.map(|s| DeviceId::new(s.into_owned()));
    let fields = Fields {
        vault,
        keyring,
        scope: Scope::Device {
            id,
            x25519_public: &public,
            added_by: added_by.as_ref(),
        },
        v1_epoch: epoch,
        fail: &|field| Error::DeviceDecrypt {
            device: id.clone(),
            field,
        },
        malformed: &malformed,
    };
    let (name_epoch, mut name_pt) = fields
        .open((field::NAME2, &name2), (field::NAME, &name))?
        .ok_or_else(|| malformed("no field name"))?;
    let name = String::from_utf8(std::mem::take(&mut *name_pt))
        .map_err(|_| malformed("name is not UTF-8"))?;
    let (added_epoch, added_at) = fields
        .open((field::ADDED_AT2, &added_at2), (field::ADDED_AT, &added_at))?
        .ok_or_else(|| malformed("no field added_at"))?;
    let added_at = <[u8; 8]>::try_from(added_at.as_slice())
        .map_err(|_| malformed("added_at is not a time"))?;
    let d = Device {
        id: id.clone(),
        name,
        x25519_public: public,
        added_by,
        added_at_ms: u64::from_be_bytes(added_at),
        // The signed form of an entry is its `e` value, judged from the history (see `Vault::judge`).
        signature: None,
        // The table's fields are not signed: what a member is, only its signed entries say (`Vault::judge`).
        kind: crate::MemberKind::Device,
    };
    d.validate().map_err(|e| match e {
        Error::InvalidInput(what) => malformed(what),
        other => other,
    })?;
    let epoch = [name_epoch, added_epoch]
        .into_iter()
        .find(|e| *e != keyring.current())
        .unwrap_or(name_epoch);
    Ok(Some(ReadDevice { device: d, epoch }))
}

// ---------------------------------------------------------------------------------------------------------
// Removals and epochs

/// The change that wrote the op `op`, if known.
pub(crate) fn change_of(doc: &Automerge, op: &ObjId) -> Option<ChangeHash> {
    doc.hash_for_opid(op)
}

/// Writes a removal of device `id`.
pub(crate) fn put_removal(
    tx: &mut impl Transactable,
    ext: &Ext,
    id: &DeviceId,
    value: Vec<u8>,
) -> Result<(), automerge::AutomergeError> {
    tx.put(&ext.removed, id.as_str(), ScalarValue::Bytes(value))
}

/// An audit entry to append: its key (its hash) and its bytes (see `audit`).
pub(crate) type AuditValue = (String, Vec<u8>);

/// Appends an audit entry (nothing for `None`: a replica without a device of its own logs nothing).
pub(crate) fn put_audit(
    tx: &mut impl Transactable,
    ext: &Ext,
    entry: Option<AuditValue>,
) -> Result<(), automerge::AutomergeError> {
    match entry {
        Some((key, value)) => tx.put(&ext.audit, key, ScalarValue::Bytes(value)),
        None => Ok(()),
    }
}

/// Moves a record to the trash (`Some(time)`) or out of it (`None`).
pub(crate) fn set_trashed(
    tx: &mut impl Transactable,
    obj: &ObjId,
    at_ms: Option<u64>,
) -> Result<(), automerge::AutomergeError> {
    match at_ms {
        Some(at) => tx.put(obj, field::TRASHED, ScalarValue::Uint(at)),
        None => tx.delete(obj, field::TRASHED),
    }
}

/// One epoch of the extension's epochs map.
pub(crate) struct RawEpoch {
    pub(crate) epoch: Epoch,
    pub(crate) obj: ObjId,
}

/// Every epoch map of the extension (epoch 0 of vaults made before rotation has none).
pub(crate) fn read_epochs(doc: &Automerge, ext: &Ext) -> Result<Vec<RawEpoch>, Error> {
    let mut out = Vec::new();
    for item in doc.map_range(&ext.epochs, ..) {
        let Ok(epoch) = item.key.parse::<u32>() else {
            continue;
        };
        if item.value == ValueRef::Object(ObjType::Map) {
            out.push(RawEpoch {
                epoch: Epoch(epoch),
                obj: item.id(),
            });
        }
    }
    Ok(out)
}

/// Every wrap to device `to` in the epoch map `obj` (concurrent wraps are all listed).
pub(crate) fn read_wraps(doc: &Automerge, obj: &ObjId, to: &str) -> Result<Vec<Vec<u8>>, Error> {
    let key = format!("{WRAP_PREFIX}{to}");
    Ok(doc
        .get_all(obj, key.as_str())?
        .into_iter()
        .filter_map(|(value, _)| match value {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Bytes(b) => Some(b.clone()),
                _ => None,
            },
            Value::Object(_) => None,
        })
        .collect())
}

/// In an epoch's map: the prefix of a device's acknowledgement (`k/<device id>`, see `members::ack`).
const ACK_PREFIX: &str = "k/";

/// Writes device `by`'s acknowledgement of the epoch of map `obj`.
pub(crate) fn put_ack(
    tx: &mut impl Transactable,
    obj: &ObjId,
    by: &DeviceId,
    value: Vec<u8>,
) -> Result<(), automerge::AutomergeError> {
    tx.put(obj, format!("{ACK_PREFIX}{by}"), ScalarValue::Bytes(value))
}

/// The acknowledgements in epoch map `obj`: (device, value), every conflicting value.
pub(crate) fn read_acks(doc: &Automerge, obj: &ObjId) -> Vec<(DeviceId, Vec<u8>)> {
    let mut out = Vec::new();
    for key in doc.keys(obj) {
        let Some(id) = key.strip_prefix(ACK_PREFIX) else {
            continue;
        };
        for (value, _) in doc.get_all(obj, key.as_str()).unwrap_or_default() {
            if let Value::Scalar(s) = value
                && let ScalarValue::Bytes(b) = s.as_ref()
            {
                out.push((DeviceId::new(id.to_owned()), b.clone()));
            }
        }
    }
    out
}

/// Every epoch a sealed value of a record or device entry names, readable or not: the prefix of each v2 value
/// and the `epoch` field of v1 objects. What decides whether an old epoch key may be destroyed (a record this
/// replica cannot read may still be readable under it elsewhere, or later).
pub(crate) fn sealed_epochs(doc: &Automerge, shape: &Shape) -> std::collections::HashSet<Epoch> {
    let mut out = std::collections::HashSet::new();
    for root in [&shape.records, &shape.devices] {
        for item in doc.iter_at(root, None) {
            let DocItem::Map(m) = item.item else { continue };
            match (m.key.as_ref(), m.value) {
                (
                    field::CORE2 | field::META2 | field::NAME2 | field::ADDED_AT2,
                    ValueRef::Scalar(ScalarValueRef::Bytes(b)),
                ) => {
                    if let Some((epoch, _)) = split_epoch(&b) {
                        out.insert(epoch);
                    }
                }
                (field::EPOCH, ValueRef::Scalar(ScalarValueRef::Uint(e))) => {
                    if let Ok(e) = u32::try_from(e) {
                        out.insert(Epoch(e));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Where a wrap to a device is stored in an epoch map, after `w/`: the device id for a wrap to its
/// identity-derived x25519 key, `<device id>/<generation>` for one to its inbox key of that generation.
pub(crate) fn wrap_slot(to: &DeviceId, inbox: Option<u32>) -> String {
    match inbox {
        Some(g) => format!("{to}/{g}"),
        None => to.to_string(),
    }
}

/// The wrap slots epoch map `obj` holds (see [`wrap_slot`]).
pub(crate) fn wrap_slots(doc: &Automerge, obj: &ObjId) -> Vec<String> {
    doc.keys(obj)
        .filter_map(|k| k.strip_prefix(WRAP_PREFIX).map(str::to_owned))
        .collect()
}

/// The devices epoch map `obj` holds a wrap to (the recipients, and devices wrapped to since).
pub(crate) fn wrapped_to(doc: &Automerge, obj: &ObjId) -> Vec<DeviceId> {
    wrap_slots(doc, obj)
        .into_iter()
        .map(|slot| match slot.split_once('/') {
            Some((id, _)) => DeviceId::new(id.to_owned()),
            None => DeviceId::new(slot),
        })
        .collect()
}

/// Adds a wrap in `slot` (see [`wrap_slot`]) to the epoch map `obj`.
pub(crate) fn put_wrap(
    tx: &mut impl Transactable,
    obj: &ObjId,
    slot: &str,
    wrap: Vec<u8>,
) -> Result<(), automerge::AutomergeError> {
    tx.put(
        obj,
        format!("{WRAP_PREFIX}{slot}"),
        ScalarValue::Bytes(wrap),
    )
}

/// Publishes a device's inbox entry.
pub(crate) fn put_inbox(
    tx: &mut impl Transactable,
    ext: &Ext,
    device: &DeviceId,
    value: Vec<u8>,
) -> Result<(), automerge::AutomergeError> {
    tx.put(&ext.inboxes, device.as_str(), ScalarValue::Bytes(value))
}

/// Writes a new epoch: its map with the signed description and one wrap per recipient.
pub(crate) fn put_epoch(
    tx: &mut impl Transactable,
    ext: &Ext,
    epoch: Epoch,
    info: Vec<u8>,
    wraps: Vec<(String, Vec<u8>)>,
) -> Result<(), automerge::AutomergeError> {
    let obj = tx.put_object(&ext.epochs, epoch.to_string(), ObjType::Map)?;
    tx.put(&obj, EPOCH_INFO, ScalarValue::Bytes(info))?;
    for (slot, wrap) in wraps {
        tx.put(
            &obj,
            format!("{WRAP_PREFIX}{slot}"),
            ScalarValue::Bytes(wrap),
        )?;
    }
    Ok(())
}

/// Writes the key check of `epoch` (deterministic, see `keycheck_value`).
pub(crate) fn put_keycheck(
    tx: &mut impl Transactable,
    shape: &Shape,
    vault: &VaultId,
    epoch: Epoch,
    key: &VaultKey,
) -> Result<(), Error> {
    let value = keycheck_value(vault, epoch, key)?;
    tx.put(
        &shape.keycheck,
        epoch.to_string(),
        ScalarValue::Bytes(value),
    )?;
    Ok(())
}

/// The changes that wrote device entry `id` (every conflicting value's).
pub(crate) fn device_changes(doc: &Automerge, shape: &Shape, id: &DeviceId) -> Vec<ChangeHash> {
    doc.get_all(&shape.devices, id.as_str())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, op)| change_of(doc, &op))
        .collect()
}

/// A causal order on the document's changes, for judging removals: built on first use from every change's
/// dependencies, then answering "is `a` `b` or an ancestor of it" by walking back from `b` (memoized per `b`).
pub(crate) struct Causality<'a> {
    doc: &'a Automerge,
    deps: Option<HashMap<ChangeHash, Vec<ChangeHash>>>,
    ancestors: HashMap<ChangeHash, std::collections::HashSet<ChangeHash>>,
}

impl<'a> Causality<'a> {
    pub(crate) fn new(doc: &'a Automerge) -> Self {
        Self {
            doc,
            deps: None,
            ancestors: HashMap::new(),
        }
    }

    pub(crate) fn before(&mut self, a: &ChangeHash, b: &ChangeHash) -> bool {
        if a == b {
            return true;
        }
        let doc = self.doc;
        let deps = self.deps.get_or_insert_with(|| {
            doc.get_changes_meta(&[])
                .into_iter()
                .map(|m| (m.hash, m.deps.clone()))
                .collect()
        });
        self.ancestors
            .entry(*b)
            .or_insert_with(|| {
                let mut seen = std::collections::HashSet::new();
                let mut stack = vec![*b];
                while let Some(h) = stack.pop() {
                    for d in deps.get(&h).map(Vec::as_slice).unwrap_or_default() {
                        if seen.insert(*d) {
                            stack.push(*d);
                        }
                    }
                }
                seen
            })
            .contains(a)
    }
}

/// The hash of the genesis change of vault `id`.
pub(crate) fn genesis_hash(id: &VaultId) -> Result<ChangeHash, Error> {
    let (doc, _) = genesis(id)?;
    doc.get_heads()
        .first()
        .copied()
        .ok_or_else(|| Error::Automerge("genesis has no head".into()))
}

// ---------------------------------------------------------------------------------------------------------
// Lineage of incoming changes

const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// Runs automerge's parser on untrusted bytes, turning a panic inside it into `Malformed`. automerge 0.12 (its
/// column codec, hexane 1.0.0-alpha) still unwraps on some truncated or corrupt input — found by the
/// `crdt_load` fuzz target — and a damaged file or a peer's message must cost an error, never the daemon.
pub(crate) fn contained<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| Error::Malformed(format!("{what} crashed the automerge parser; refused")))
}

/// Refuses a peer's bloom filter (the `have` of a sync message, as `BloomFilter::to_bytes`) that automerge
/// would later choke on: with no bits per entry it divides by zero, and a huge probe count makes it allocate
/// and loop billions of times when it next generates a message for that peer (found by the `crdt_sync` fuzz
/// target). automerge itself writes 10 bits per entry and 7 probes.
pub(crate) fn check_bloom(encoded: &[u8]) -> Result<(), Error> {
    const MAX: u64 = 64;
    if encoded.is_empty() {
        return Ok(());
    }
    let bad = || Error::Malformed("unusable bloom filter in sync message".into());
    let mut rest = encoded;
    let mut field = || -> Result<u64, Error> {
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let (&byte, tail) = rest.split_first().ok_or_else(bad)?;
            rest = tail;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad())
    };
    let entries = field()?;
    let bits_per_entry = field()?;
    let probes = field()?;
    if entries > 0 && !((1..=MAX).contains(&bits_per_entry) && (1..=MAX).contains(&probes)) {
        return Err(bad());
    }
    Ok(())
}

/// Checks that `blob` (concatenated automerge chunks, as found in a sync message) carries no root change other
/// than `genesis`: every change then descends from this vault's genesis. Document chunks are loaded on the side
/// to see their history, which costs about as much as applying them. Returns whether there was one.
pub(crate) fn check_lineage(blob: &[u8], genesis: &ChangeHash) -> Result<bool, Error> {
    let malformed =
        |e: &dyn std::fmt::Display| Error::Malformed(format!("bad change in sync message: {e}"));
    let mut rest = blob;
    let mut whole_document = false;
    while !rest.is_empty() {
        let (kind, chunk, tail) = split_chunk(rest)?;
        rest = tail;
        match kind {
            CHUNK_CHANGE | CHUNK_COMPRESSED_CHANGE => {
                let change = Change::try_from(chunk).map_err(|e| malformed(&e))?;
                if change.deps().is_empty() && change.hash() != *genesis {
                    return Err(Error::ForeignVault);
                }
            }
            CHUNK_DOCUMENT => {
                whole_document = true;
                let side = Automerge::load(chunk).map_err(|e| malformed(&e))?;
                if side
                    .get_changes_meta(&[])
                    .iter()
                    .any(|m| m.deps.is_empty() && m.hash != *genesis)
                {
                    return Err(Error::ForeignVault);
                }
            }
            _ => {
                return Err(Error::Malformed(
                    "unsupported chunk type in sync message".into(),
                ));
            }
        }
    }
    Ok(whole_document)
}

/// Splits the first chunk off `b`: (chunk type, the whole chunk, the rest).
fn split_chunk(b: &[u8]) -> Result<(u8, &[u8], &[u8]), Error> {
    let bad = || Error::Malformed("truncated or foreign chunk in sync message".into());
    // magic (4) ‖ checksum (4) ‖ type (1) ‖ uLEB128 length ‖ data
    if b.len() < 9 || b[..4] != CHUNK_MAGIC {
        return Err(bad());
    }
    let kind = b[8];
    let mut len: u64 = 0;
    for (pos, shift) in (9..).zip((0..64).step_by(7)) {
        let byte = *b.get(pos).ok_or_else(bad)?;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| l.checked_add(pos + 1))
                .filter(|&end| end <= b.len())
                .ok_or_else(bad)?;
            return Ok((kind, &b[..end], &b[end..]));
        }
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Passkey {
        Passkey {
            record_id: RecordId::from_bytes([1; 16]),
            epoch: Epoch(0),
            credential_id: vec![1, 2, 3],
            rp_id: "example.com".into(),
            user_handle: vec![4; 10],
            user_name: "alice@example.com".into(),
            user_display_name: "Alice".into(),
            label: None,
            private_key: Zeroizing::new(vec![9; 32]),
            created_at_ms: 0x0102_0304_0506_0708,
            updated_at_ms: 5,
            trashed_at_ms: None,
        }
    }

    #[test]
    fn core_round_trips_and_rejects_bad_encodings() {
        let p = sample();
        let core = encode_core(&p).unwrap();
        let back = decode_core(&core).unwrap();
        assert_eq!(
            (
                back.credential_id,
                back.rp_id,
                back.user_handle,
                back.user_name,
                back.user_display_name
            ),
            (
                p.credential_id.clone(),
                p.rp_id.clone(),
                p.user_handle.clone(),
                p.user_name.clone(),
                p.user_display_name.clone()
            )
        );
        assert_eq!(&back.private_key[..], &p.private_key[..]);
        assert_eq!(back.created_at_ms, p.created_at_ms);

        assert!(decode_core(&[]).is_none());
        assert!(decode_core(&core[..core.len() - 1]).is_none(), "truncated");
        let mut longer = core.to_vec();
        longer.push(0);
        assert!(decode_core(&longer).is_none(), "trailing bytes");
        assert_eq!(back.updated_at_ms, Some(p.updated_at_ms));
        let mut version = core.to_vec();
        version[0] = 3;
        assert!(decode_core(&version).is_none(), "unknown version");
        version[0] = 1;
        assert!(
            decode_core(&version).is_none(),
            "a v1 core has one time only"
        );
        let v1 = &core[..core.len() - 8];
        let mut v1 = v1.to_vec();
        v1[0] = 1;
        let old = decode_core(&v1).expect("a v1 core");
        assert_eq!(
            (old.created_at_ms, old.updated_at_ms),
            (p.created_at_ms, None)
        );
        let mut utf8 = core.to_vec();
        utf8[1 + 2 + 3 + 2] = 0xff; // first byte of the rp id
        assert!(decode_core(&utf8).is_none(), "rp id not UTF-8");
        let mut overlong = core.to_vec();
        overlong[1] = 0xff; // credential id length runs past the end
        assert!(decode_core(&overlong).is_none());
    }

    #[test]
    fn decoded_records_are_validated() {
        let id = VaultId::from_bytes([5; 16]);
        let keyring = Keyring::new(Epoch(0), VaultKey::from_bytes([3; 32]));
        let (mut doc, shape) = genesis(&id).unwrap();
        doc.set_actor(ActorId::random());
        let mut p = sample();
        p.private_key = Zeroizing::new(vec![9; 31]);
        let sealed = seal_record(&id, keyring.current_key(), &p).unwrap();
        let obj = doc
            .transact(|tx| put_record(tx, &shape, &p.record_id, sealed))
            .unwrap()
            .result;
        assert!(matches!(
            read_record(&doc, &obj, &id, &keyring, &p.record_id),
            Err(Error::Malformed(m)) if m.contains("32-byte")
        ));
    }

    #[test]
    fn lineage_accepts_own_history_and_refuses_others() {
        let id = VaultId::from_bytes([5; 16]);
        let genesis_hash = genesis_hash(&id).unwrap();
        let (mut doc, shape) = genesis(&id).unwrap();
        doc.set_actor(ActorId::random());
        let mut tx = doc.transaction();
        tx.put(&shape.records, "x", ScalarValue::Uint(1)).unwrap();
        tx.commit();
        let mut tx = doc.transaction();
        tx.put(&shape.records, "y", ScalarValue::Uint(2)).unwrap();
        tx.commit();
        let full = doc.save();
        let changes = doc.save_after(&[]);
        assert!(check_lineage(&full, &genesis_hash).unwrap());
        assert!(!check_lineage(&changes, &genesis_hash).unwrap());
        let mut both = full.clone();
        both.extend_from_slice(&changes);
        assert!(check_lineage(&both, &genesis_hash).unwrap());
        assert!(!check_lineage(&[], &genesis_hash).unwrap());

        let (other, _) = genesis(&VaultId::from_bytes([6; 16])).unwrap();
        assert_eq!(
            check_lineage(&other.save(), &genesis_hash),
            Err(Error::ForeignVault)
        );
        assert_eq!(
            check_lineage(&other.save_after(&[]), &genesis_hash),
            Err(Error::ForeignVault)
        );
        let mut mixed = changes.clone();
        mixed.extend_from_slice(&other.save_after(&[]));
        assert_eq!(
            check_lineage(&mixed, &genesis_hash),
            Err(Error::ForeignVault)
        );

        for bad in [
            &full[..full.len() - 1],
            &full[..8],
            &b"garbage"[..],
            &[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0xff],
        ] {
            assert!(matches!(
                check_lineage(bad, &genesis_hash),
                Err(Error::Malformed(_))
            ));
        }
        let mut wrong_len = changes.clone();
        wrong_len.push(0);
        assert!(check_lineage(&wrong_len, &genesis_hash).is_err());
    }
}
