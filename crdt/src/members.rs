//! Who belongs to the vault, and the keys that prove it.
//!
//! - [`LocalDevice`]: this device's ed25519 signing key (its libp2p identity) and x25519 key (what epoch keys
//!   are wrapped to). Both are secret; `Debug` shows the device id only.
//! - Device ids are libp2p peer ids of ed25519 keys, so anyone can check a signature against the id itself
//!   ([`device_id_of`]).
//! - The signed values of the membership: device entries (signed by the device that added them), removals
//!   (signed by the remover) and epochs (signed by the device that made them, naming every device the epoch
//!   key was wrapped to). Each message starts with a domain string of its own and binds the vault id.
//! - [`judge`]: which entries are valid and which devices are removed, given when each value was written
//!   (its change) and a causal order on changes.
//! - Epoch-key wraps: X25519 with a fresh ephemeral key, HKDF-SHA256, XChaCha20-Poly1305 bound to the vault, the
//!   epoch and the recipient.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use automerge::ChangeHash;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand::RngExt;
use sha2::Sha256;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::{Device, DeviceId, Epoch, MemberKind, VaultId, VaultKey};

/// The multihash and protobuf prefix of a libp2p peer id of an ed25519 key: identity multihash (0x00) of 36
/// bytes (0x24), holding the protobuf `PublicKey { Type = Ed25519 (0x08 0x01), Data = 32 bytes (0x12 0x20) }`.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// The device id (libp2p peer id, base58) of an ed25519 public key.
pub fn device_id_of(ed25519_public: &[u8; 32]) -> DeviceId {
    let mut bytes = Vec::with_capacity(38);
    bytes.extend_from_slice(&PEER_ID_PREFIX);
    bytes.extend_from_slice(ed25519_public);
    DeviceId::new(bs58::encode(bytes).into_string())
}

/// The ed25519 key a device id names; `None` for ids that are not peer ids of an ed25519 key.
pub(crate) fn verifying_key(id: &DeviceId) -> Option<VerifyingKey> {
    if id.as_str().len() > 64 {
        return None;
    }
    let bytes = bs58::decode(id.as_str()).into_vec().ok()?;
    let key = bytes.strip_prefix(&PEER_ID_PREFIX[..])?;
    VerifyingKey::from_bytes(&<[u8; 32]>::try_from(key).ok()?).ok()
}

/// This device, as far as the vault needs it: the key it signs membership changes with and the key epoch
/// keys are wrapped to. `Debug` prints the device id only.
pub struct LocalDevice {
    id: DeviceId,
    signing: SigningKey,
    x25519: StaticSecret,
}

impl LocalDevice {
    /// From the 32 secret bytes of the device's ed25519 identity and of its x25519 key.
    pub fn new(ed25519_secret: &Zeroizing<[u8; 32]>, x25519_secret: &Zeroizing<[u8; 32]>) -> Self {
        let signing = SigningKey::from_bytes(ed25519_secret);
        let id = device_id_of(signing.verifying_key().as_bytes());
        Self {
            id,
            signing,
            x25519: StaticSecret::from(**x25519_secret),
        }
    }

    /// The device id (its libp2p peer id).
    pub fn id(&self) -> &DeviceId {
        &self.id
    }

    /// The x25519 public key epoch keys are wrapped to.
    pub fn x25519_public(&self) -> [u8; 32] {
        XPublic::from(&self.x25519).to_bytes()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for LocalDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalDevice")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Whether `sig` is `signer`'s signature of `message` (strict verification: no malleable encodings).
pub(crate) fn verify(signer: &DeviceId, message: &[u8], sig: &[u8; 64]) -> bool {
    verifying_key(signer).is_some_and(|k| {
        k.verify_strict(message, &Signature::from_bytes(sig))
            .is_ok()
    })
}

pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    // Every string here is validated far below 64 KiB.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn message(domain: &[u8], vault: &VaultId) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(domain);
    out.push(0);
    out.extend_from_slice(vault.as_bytes());
    out
}

/// What the device that adds `d` signs. A recovery key's entry has a domain of its own, so no device entry's
/// signature makes a recovery key, nor the other way round.
pub(crate) fn entry_message(vault: &VaultId, d: &Device) -> Vec<u8> {
    let domain: &[u8] = match d.kind {
        MemberKind::Device => b"passmesh/v1/device-entry",
        MemberKind::Recovery => b"passmesh/v1/recovery-entry",
    };
    let mut out = message(domain, vault);
    push_str(&mut out, d.id.as_str());
    out.extend_from_slice(&d.x25519_public);
    push_str(&mut out, d.added_by.as_ref().map_or("", DeviceId::as_str));
    out.extend_from_slice(&d.added_at_ms.to_be_bytes());
    out
}

const ENTRY_V1: u8 = 1;
/// A recovery key's entry: the same fields as [`ENTRY_V1`]. Releases before recovery keys refuse it (the key is
/// then no member there, and nothing is wrapped to it by them).
const ENTRY_RECOVERY: u8 = 2;

/// A signed device entry as stored (the `e` field of a device's map): the entry's fields and the signature of
/// [`entry_message`], either by the device that added it or by the device itself (see [`judge`]).
pub(crate) fn encode_entry(d: &Device, sig: &[u8; 64]) -> Vec<u8> {
    let mut out = vec![match d.kind {
        MemberKind::Device => ENTRY_V1,
        MemberKind::Recovery => ENTRY_RECOVERY,
    }];
    push_str(&mut out, d.id.as_str());
    out.extend_from_slice(&d.x25519_public);
    push_str(&mut out, d.added_by.as_ref().map_or("", DeviceId::as_str));
    out.extend_from_slice(&d.added_at_ms.to_be_bytes());
    out.extend_from_slice(sig);
    out
}

/// Parses [`encode_entry`]'s bytes (the name is not in them: it is left empty).
pub(crate) fn decode_entry(bytes: &[u8]) -> Option<Device> {
    let mut r = Reader(bytes);
    let kind = match r.u8()? {
        ENTRY_V1 => MemberKind::Device,
        ENTRY_RECOVERY => MemberKind::Recovery,
        _ => return None,
    };
    let id = DeviceId::new(r.string()?);
    let x25519_public = r.array::<32>()?;
    let added_by = Some(r.string()?)
        .filter(|s| !s.is_empty())
        .map(DeviceId::new);
    let added_at_ms = r.u64()?;
    let sig = r.array::<64>()?;
    r.end()?;
    if id.as_str().is_empty() {
        return None;
    }
    Some(Device {
        id,
        name: String::new(),
        x25519_public,
        added_by,
        added_at_ms,
        signature: Some(sig),
        kind,
    })
}

/// A signed removal of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Removal {
    pub(crate) by: DeviceId,
    pub(crate) at_ms: u64,
    pub(crate) sig: [u8; 64],
}

const REMOVAL_V1: u8 = 1;

impl Removal {
    pub(crate) fn message(
        vault: &VaultId,
        removed: &DeviceId,
        by: &DeviceId,
        at_ms: u64,
    ) -> Vec<u8> {
        let mut out = message(b"passmesh/v1/removal", vault);
        push_str(&mut out, removed.as_str());
        push_str(&mut out, by.as_str());
        out.extend_from_slice(&at_ms.to_be_bytes());
        out
    }

    pub(crate) fn sign(vault: &VaultId, removed: &DeviceId, me: &LocalDevice, at_ms: u64) -> Self {
        let sig = me.sign(&Self::message(vault, removed, me.id(), at_ms));
        Removal {
            by: me.id().clone(),
            at_ms,
            sig,
        }
    }

    pub(crate) fn verifies(&self, vault: &VaultId, removed: &DeviceId) -> bool {
        verify(
            &self.by,
            &Self::message(vault, removed, &self.by, self.at_ms),
            &self.sig,
        )
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![REMOVAL_V1];
        push_str(&mut out, self.by.as_str());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&self.sig);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != REMOVAL_V1 {
            return None;
        }
        let by = DeviceId::new(r.string()?);
        let at_ms = r.u64()?;
        let sig = r.array::<64>()?;
        r.end()?;
        Some(Removal { by, at_ms, sig })
    }
}

/// A signed key epoch: its generation (one more than the epoch it replaced), who made it and when, and every
/// device its key was wrapped to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EpochInfo {
    /// The epoch this one replaces (its generation is one less).
    pub(crate) parent: Epoch,
    pub(crate) generation: u32,
    pub(crate) by: DeviceId,
    pub(crate) at_ms: u64,
    pub(crate) recipients: BTreeSet<DeviceId>,
    pub(crate) sig: [u8; 64],
}

const EPOCH_V1: u8 = 1;

impl EpochInfo {
    fn message(
        vault: &VaultId,
        epoch: Epoch,
        parent: Epoch,
        generation: u32,
        by: &DeviceId,
        at_ms: u64,
        recipients: &BTreeSet<DeviceId>,
    ) -> Vec<u8> {
        let mut out = message(b"passmesh/v1/epoch", vault);
        out.extend_from_slice(&epoch.0.to_be_bytes());
        out.extend_from_slice(&parent.0.to_be_bytes());
        out.extend_from_slice(&generation.to_be_bytes());
        push_str(&mut out, by.as_str());
        out.extend_from_slice(&at_ms.to_be_bytes());
        let n = u16::try_from(recipients.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for r in recipients {
            push_str(&mut out, r.as_str());
        }
        out
    }

    pub(crate) fn sign(
        vault: &VaultId,
        epoch: Epoch,
        parent: (Epoch, u32),
        me: &LocalDevice,
        at_ms: u64,
        recipients: BTreeSet<DeviceId>,
    ) -> Self {
        let (parent, parent_generation) = parent;
        let generation = parent_generation.saturating_add(1);
        let sig = me.sign(&Self::message(
            vault,
            epoch,
            parent,
            generation,
            me.id(),
            at_ms,
            &recipients,
        ));
        EpochInfo {
            parent,
            generation,
            by: me.id().clone(),
            at_ms,
            recipients,
            sig,
        }
    }

    pub(crate) fn verifies(&self, vault: &VaultId, epoch: Epoch) -> bool {
        verify(
            &self.by,
            &Self::message(
                vault,
                epoch,
                self.parent,
                self.generation,
                &self.by,
                self.at_ms,
                &self.recipients,
            ),
            &self.sig,
        )
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![EPOCH_V1];
        out.extend_from_slice(&self.parent.0.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        push_str(&mut out, self.by.as_str());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        let n = u16::try_from(self.recipients.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for r in &self.recipients {
            push_str(&mut out, r.as_str());
        }
        out.extend_from_slice(&self.sig);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != EPOCH_V1 {
            return None;
        }
        let parent = Epoch(r.u32()?);
        let generation = r.u32()?;
        let by = DeviceId::new(r.string()?);
        let at_ms = r.u64()?;
        let n = r.u16()?;
        let mut recipients = BTreeSet::new();
        for _ in 0..n {
            let id = DeviceId::new(r.string()?);
            // One encoding per value: recipients strictly ascending, as `encode` writes them.
            if recipients.last().is_some_and(|last| *last >= id) {
                return None;
            }
            recipients.insert(id);
        }
        let sig = r.array::<64>()?;
        r.end()?;
        Some(EpochInfo {
            parent,
            generation,
            by,
            at_ms,
            recipients,
            sig,
        })
    }
}

/// A bounds-checked reader of the encodings above.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        let (s, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }
    pub(crate) fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// What a recovery key vouches for

const ANCHORS_V1: u8 = 1;
/// Most devices a recovery key's statement names.
const MAX_ANCHORS: usize = 1024;

fn recovery_anchors_message(
    vault: &VaultId,
    recovery: &DeviceId,
    anchors: &BTreeSet<DeviceId>,
) -> Vec<u8> {
    let mut out = message(b"passmesh/v1/recovery-anchors", vault);
    push_str(&mut out, recovery.as_str());
    out.extend_from_slice(
        &u16::try_from(anchors.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for a in anchors {
        push_str(&mut out, a.as_str());
    }
    out
}

/// The recovery key's signature of the devices a replica restored with it trusts without a signature chain (the
/// anchors of the device that set it up). Made where the phrase is, at setup: a document made by someone who
/// knows only the key's public half cannot name other anchors.
pub fn sign_recovery_anchors(
    vault: &VaultId,
    recovery: &LocalDevice,
    anchors: &BTreeSet<DeviceId>,
) -> [u8; 64] {
    recovery.sign(&recovery_anchors_message(vault, recovery.id(), anchors))
}

/// `1 ‖ u16 count ‖ u16-prefixed ids (strictly ascending) ‖ sig(64)`.
pub(crate) fn encode_recovery_anchors(anchors: &BTreeSet<DeviceId>, sig: &[u8; 64]) -> Vec<u8> {
    let mut out = vec![ANCHORS_V1];
    out.extend_from_slice(
        &u16::try_from(anchors.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for a in anchors {
        push_str(&mut out, a.as_str());
    }
    out.extend_from_slice(sig);
    out
}

/// The anchors `bytes` names, if it is a statement `recovery` signed for `vault`.
pub(crate) fn verified_recovery_anchors(
    vault: &VaultId,
    recovery: &DeviceId,
    bytes: &[u8],
) -> Option<BTreeSet<DeviceId>> {
    let mut r = Reader(bytes);
    if r.u8()? != ANCHORS_V1 {
        return None;
    }
    let n = usize::from(r.u16()?);
    if n == 0 || n > MAX_ANCHORS {
        return None;
    }
    let mut anchors = BTreeSet::new();
    let mut last: Option<DeviceId> = None;
    for _ in 0..n {
        let id = DeviceId::new(r.string()?);
        if id.as_str().is_empty() || last.as_ref().is_some_and(|l| *l >= id) {
            return None;
        }
        last = Some(id.clone());
        anchors.insert(id);
    }
    let sig = r.array::<64>()?;
    r.end()?;
    verify(
        recovery,
        &recovery_anchors_message(vault, recovery, &anchors),
        &sig,
    )
    .then_some(anchors)
}

/// Whether `public` is an x25519 key a wrap can be made to (not of low order: a Diffie-Hellman with it must
/// depend on the other side's secret).
pub(crate) fn contributory(public: &[u8; 32]) -> bool {
    StaticSecret::from([0x42; 32])
        .diffie_hellman(&XPublic::from(*public))
        .was_contributory()
}

// ---------------------------------------------------------------------------------------------------------
// Epoch acknowledgements

const ACK_V1: u8 = 1;

fn ack_message(vault: &VaultId, epoch: Epoch, device: &DeviceId) -> Vec<u8> {
    let mut out = message(b"passmesh/v1/epoch-ack", vault);
    out.extend_from_slice(&epoch.0.to_be_bytes());
    push_str(&mut out, device.as_str());
    out
}

/// `me`'s acknowledgement of `epoch`: it holds the epoch's key and everything it reads is under it, so it needs
/// no older key any more. `1 ‖ sig(64)`.
pub(crate) fn ack(vault: &VaultId, epoch: Epoch, me: &LocalDevice) -> Vec<u8> {
    let mut out = vec![ACK_V1];
    out.extend_from_slice(&me.sign(&ack_message(vault, epoch, me.id())));
    out
}

/// Whether `value` is `device`'s acknowledgement of `epoch`.
pub(crate) fn ack_verifies(vault: &VaultId, epoch: Epoch, device: &DeviceId, value: &[u8]) -> bool {
    let mut r = Reader(value);
    match (r.u8(), r.array::<64>(), r.end()) {
        (Some(ACK_V1), Some(sig), Some(())) => {
            verify(device, &ack_message(vault, epoch, device), &sig)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Inboxes

/// A device's published inbox key (`ext.inboxes[<device id>]`, every value ever written counts): generation,
/// x25519 public key, the one epoch its keyring held when it published (`None` if it held several), when, and
/// its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InboxEntry {
    pub(crate) generation: u32,
    pub(crate) public: [u8; 32],
    pub(crate) holds: Option<Epoch>,
    pub(crate) at_ms: u64,
    pub(crate) sig: [u8; 64],
}

const INBOX_V1: u8 = 1;

/// `holds` as 1 ‖ epoch, or 0 ‖ 0 for none.
fn push_holds(out: &mut Vec<u8>, holds: Option<Epoch>) {
    match holds {
        Some(e) => {
            out.push(1);
            out.extend_from_slice(&e.0.to_be_bytes());
        }
        None => out.extend_from_slice(&[0; 5]),
    }
}

impl InboxEntry {
    fn message(
        vault: &VaultId,
        device: &DeviceId,
        generation: u32,
        public: &[u8; 32],
        holds: Option<Epoch>,
        at_ms: u64,
    ) -> Vec<u8> {
        let mut out = message(b"passmesh/v1/inbox", vault);
        push_str(&mut out, device.as_str());
        out.extend_from_slice(&generation.to_be_bytes());
        out.extend_from_slice(public);
        push_holds(&mut out, holds);
        out.extend_from_slice(&at_ms.to_be_bytes());
        out
    }

    pub(crate) fn sign(
        vault: &VaultId,
        me: &LocalDevice,
        generation: u32,
        public: [u8; 32],
        holds: Option<Epoch>,
        at_ms: u64,
    ) -> Self {
        let sig = me.sign(&Self::message(
            vault,
            me.id(),
            generation,
            &public,
            holds,
            at_ms,
        ));
        InboxEntry {
            generation,
            public,
            holds,
            at_ms,
            sig,
        }
    }

    /// Whether it is signed by `device` itself.
    pub(crate) fn verifies(&self, vault: &VaultId, device: &DeviceId) -> bool {
        verify(
            device,
            &Self::message(
                vault,
                device,
                self.generation,
                &self.public,
                self.holds,
                self.at_ms,
            ),
            &self.sig,
        )
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![INBOX_V1];
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.public);
        push_holds(&mut out, self.holds);
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&self.sig);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != INBOX_V1 {
            return None;
        }
        let generation = r.u32()?;
        let public = r.array::<32>()?;
        let holds = match (r.u8()?, r.u32()?) {
            (0, 0) => None,
            (1, e) => Some(Epoch(e)),
            _ => return None,
        };
        let at_ms = r.u64()?;
        let sig = r.array::<64>()?;
        r.end()?;
        Some(InboxEntry {
            generation,
            public,
            holds,
            at_ms,
            sig,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Epoch-key wraps

const WRAP_V1: u8 = 1;
const WRAP_INFO: &[u8] = b"passmesh epoch key v1";

fn wrap_ad(vault: &VaultId, epoch: Epoch, to: &DeviceId) -> Vec<u8> {
    let mut out = message(b"passmesh/v1/epoch-wrap", vault);
    out.extend_from_slice(&epoch.0.to_be_bytes());
    push_str(&mut out, to.as_str());
    out
}

fn wrap_cipher(shared: &[u8; 32], eph: &[u8; 32], to: &[u8; 32]) -> XChaCha20Poly1305 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(to);
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(WRAP_INFO, key.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XChaCha20Poly1305::new((&*key).into())
}

/// Wraps the key of `epoch` to device `to`'s x25519 key: version ‖ ephemeral public key ‖ nonce ‖ ciphertext.
/// `None` if `to_x25519` is a low-order point.
pub(crate) fn wrap(
    vault: &VaultId,
    epoch: Epoch,
    to: &DeviceId,
    to_x25519: &[u8; 32],
    key: &VaultKey,
) -> Option<Vec<u8>> {
    let eph_bytes = Zeroizing::new(rand::rng().random::<[u8; 32]>());
    let eph = StaticSecret::from(*eph_bytes);
    let eph_public = XPublic::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&XPublic::from(*to_x25519));
    if !shared.was_contributory() {
        return None;
    }
    let nonce: [u8; 24] = rand::rng().random();
    let ct = wrap_cipher(shared.as_bytes(), &eph_public, to_x25519)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: key.as_bytes(),
                aad: &wrap_ad(vault, epoch, to),
            },
        )
        .ok()?;
    let mut out = Vec::with_capacity(1 + 32 + 24 + ct.len());
    out.push(WRAP_V1);
    out.extend_from_slice(&eph_public);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Some(out)
}

/// Unwraps a key of `epoch` wrapped to `me`'s identity-derived x25519 key; `None` if it does not authenticate.
pub(crate) fn unwrap(
    vault: &VaultId,
    epoch: Epoch,
    me: &LocalDevice,
    wrapped: &[u8],
) -> Option<VaultKey> {
    unwrap_with(vault, epoch, me.id(), &me.x25519, wrapped)
}

/// Unwraps a key of `epoch` wrapped to device `to`'s x25519 key `secret` (its identity-derived key, or an
/// inbox key); `None` if it does not authenticate.
pub(crate) fn unwrap_with(
    vault: &VaultId,
    epoch: Epoch,
    to: &DeviceId,
    secret: &StaticSecret,
    wrapped: &[u8],
) -> Option<VaultKey> {
    let mut r = Reader(wrapped);
    if r.u8()? != WRAP_V1 {
        return None;
    }
    let eph = r.array::<32>()?;
    let nonce = r.array::<24>()?;
    let shared = secret.diffie_hellman(&XPublic::from(eph));
    if !shared.was_contributory() {
        return None;
    }
    let public = XPublic::from(secret).to_bytes();
    let pt = Zeroizing::new(
        wrap_cipher(shared.as_bytes(), &eph, &public)
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: r.0,
                    aad: &wrap_ad(vault, epoch, to),
                },
            )
            .ok()?,
    );
    let bytes = Zeroizing::new(<[u8; 32]>::try_from(pt.as_slice()).ok()?);
    Some(VaultKey::from_bytes(*bytes))
}

/// Parses `bytes` as each signed value a replica reads from another's document (a removal, an epoch's
/// description) and as an epoch-key wrap, checking that what parses encodes back to the very same bytes. For the
/// `membership` fuzz target; no use otherwise.
#[doc(hidden)]
pub fn fuzz_values(bytes: &[u8]) {
    if let Some(r) = Removal::decode(bytes) {
        assert_eq!(r.encode(), bytes, "a removal has one encoding");
    }
    if let Some(e) = EpochInfo::decode(bytes) {
        assert_eq!(e.encode(), bytes, "an epoch description has one encoding");
    }
    if let Some(i) = InboxEntry::decode(bytes) {
        assert_eq!(i.encode(), bytes, "an inbox entry has one encoding");
    }
    if let Some(d) = decode_entry(bytes)
        && let Some(sig) = &d.signature
    {
        assert_eq!(
            encode_entry(&d, sig),
            bytes,
            "a device entry has one encoding"
        );
    }
    let me = LocalDevice::new(&Zeroizing::new([7; 32]), &Zeroizing::new([8; 32]));
    let vault = VaultId::from_bytes([9; 16]);
    assert!(
        unwrap(&vault, Epoch(1), &me, bytes).is_none(),
        "nothing unwraps without the key it was wrapped to"
    );
    assert!(
        verified_recovery_anchors(&vault, me.id(), bytes).is_none(),
        "no statement verifies without the key's signature"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Judging the membership

/// Where a device stands in the vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// A member: it may connect and receives new epoch keys.
    Active,
    /// Removed (the earliest valid removal is shown).
    Removed {
        /// The device that removed it.
        by: DeviceId,
        /// When (ms since the Unix epoch, the remover's clock).
        at_ms: u64,
    },
    /// The entry does not verify, or it was added by a device that had been removed: it is ignored.
    Invalid(&'static str),
}

/// A device-table entry and where the device stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The entry.
    pub device: Device,
    /// Whether the entry is signed (entries written before signatures existed are not).
    pub signed: bool,
    /// Its standing.
    pub state: MemberState,
}

/// One device entry as found in the document.
pub(crate) struct EntryFact {
    /// The entry; its `signature` is `None` for an unsigned entry of the current table.
    pub(crate) device: Device,
    /// The changes that wrote this entry (several when replicas wrote the same entry concurrently).
    pub(crate) changes: Vec<ChangeHash>,
}

/// One removal as found in the document.
pub(crate) struct RemovalFact {
    pub(crate) removed: DeviceId,
    pub(crate) removal: Removal,
    pub(crate) change: Option<ChangeHash>,
}

/// Decides every device's standing from its entries (several per device: each signed entry ever written, and
/// the current table's).
///
/// - A device is valid if one of its entries is. An entry signed by the device that added it is valid if the
///   adder is valid and — if the adder was removed — the entry was written causally before every removal of the
///   adder (an entry written concurrently with, or after, the removal is ignored). An entry signed by the device
///   itself, or unsigned (the table of a vault from before signatures), is valid only if this replica trusts
///   the device without a chain: it is in `anchors` (the vault's first device, or the devices of an upgraded
///   vault, pinned on each replica). With `anchors` `None` such entries are all taken as they are.
/// - A removal counts if it is signed by a device whose entry is valid and it was not written causally after a
///   removal of that device. Removals made concurrently (say on two sides of a partition) all count.
///
/// `before(a, b)`: whether change `a` is `b` or one of its ancestors.
///
/// With `signed_anchors`, an anchor is trusted only through an entry it signed itself, never through an unsigned
/// one (a replica restored from a backup: the file's unsigned entries could name any key).
pub(crate) fn judge(
    vault: &VaultId,
    entries: &[EntryFact],
    removals: &[RemovalFact],
    anchors: Option<&BTreeSet<DeviceId>>,
    signed_anchors: bool,
    before: &mut dyn FnMut(&ChangeHash, &ChangeHash) -> bool,
) -> Judgement {
    let trusted = |id: &DeviceId| anchors.is_none_or(|a| a.contains(id));
    // Device entries first: how each could be valid, from its signature alone.
    let device_kind = |d: &Device| -> Kind {
        let Some(sig) = &d.signature else {
            return if trusted(&d.id) && !signed_anchors {
                Kind::Anchored
            } else {
                Kind::Bad("it is unsigned and this device does not trust it without a signature")
            };
        };
        let message = entry_message(vault, d);
        match &d.added_by {
            Some(by) if verify(by, &message, sig) => Kind::Chain(by.clone()),
            _ if verify(&d.id, &message, sig) => {
                if trusted(&d.id) {
                    Kind::Anchored
                } else {
                    Kind::Bad("it is signed by the device itself, which this device does not trust")
                }
            }
            _ => Kind::Bad("its signature does not verify"),
        }
    };
    let mut kinds: Vec<Kind> = entries
        .iter()
        .map(|e| match e.device.kind {
            MemberKind::Device => device_kind(&e.device),
            MemberKind::Recovery => Kind::Bad("not judged yet"),
        })
        .collect();
    // An id is a device or a recovery key, never both: one with a device entry that could be valid has no valid
    // recovery entry (an entry whose signature does not verify counts for nothing here).
    let devices: BTreeSet<&DeviceId> = entries
        .iter()
        .zip(&kinds)
        .filter(|(e, k)| e.device.kind == MemberKind::Device && !matches!(k, Kind::Bad(_)))
        .map(|(e, _)| &e.device.id)
        .collect();
    let recovery_entry_ok = |d: &Device| {
        d.signature
            .as_ref()
            .zip(d.added_by.as_ref())
            .is_some_and(|(sig, by)| verify(by, &entry_message(vault, d), sig))
    };
    let recovery_ids: BTreeSet<&DeviceId> = entries
        .iter()
        .filter(|e| e.device.kind == MemberKind::Recovery && recovery_entry_ok(&e.device))
        .map(|e| &e.device.id)
        .collect();
    for (e, kind) in entries.iter().zip(kinds.iter_mut()) {
        let d = &e.device;
        if d.kind != MemberKind::Recovery {
            continue;
        }
        *kind = match &d.added_by {
            _ if devices.contains(&d.id) => {
                Kind::Bad("a device of the vault has this id: it is no recovery key")
            }
            _ if !contributory(&d.x25519_public) => Kind::Bad("its x25519 key is of low order"),
            Some(by) if !recovery_ids.contains(by) && recovery_entry_ok(d) => {
                Kind::Chain(by.clone())
            }
            _ => Kind::Bad("a recovery key is valid only as added (and signed) by a device"),
        };
    }
    let signed_removals: Vec<&RemovalFact> = removals
        .iter()
        .filter(|r| r.removal.verifies(vault, &r.removed))
        .collect();
    let mut counted: Vec<&RemovalFact> = signed_removals.clone();
    let mut valid: BTreeMap<DeviceId, Result<usize, &'static str>> = BTreeMap::new();
    // Each round fixes the valid entries for the removals counted so far, then the removals for those entries;
    // it settles within a few rounds (each round can only change what depends on the last one's changes).
    for _ in 0..=entries.len() + 1 {
        valid = valid_entries(entries, &kinds, &counted, before);
        let next: Vec<&RemovalFact> = signed_removals
            .iter()
            .copied()
            .filter(|r| {
                valid.get(&r.removal.by).is_some_and(Result::is_ok) && !counted.iter().any(|own| {
                    own.removed == r.removal.by
                        && matches!((&own.change, &r.change), (Some(o), Some(c)) if before(o, c))
                })
            })
            .collect();
        let same = next.len() == counted.len()
            && next.iter().zip(&counted).all(|(a, b)| std::ptr::eq(*a, *b));
        counted = next;
        if same {
            break;
        }
    }
    let removal_changes = counted
        .iter()
        .map(|r| (r.removed.clone(), r.change))
        .collect();
    let chosen = valid
        .iter()
        .filter_map(|(id, v)| v.ok().map(|i| (id.clone(), i)))
        .collect();
    let states = valid
        .into_iter()
        .map(|(id, v)| {
            let state = match v {
                Err(why) => MemberState::Invalid(why),
                Ok(_) => counted
                    .iter()
                    .filter(|r| r.removed == id)
                    .min_by_key(|r| (r.removal.at_ms, r.removal.by.clone()))
                    .map_or(MemberState::Active, |r| MemberState::Removed {
                        by: r.removal.by.clone(),
                        at_ms: r.removal.at_ms,
                    }),
            };
            (id, state)
        })
        .collect();
    Judgement {
        states,
        chosen,
        removal_changes,
    }
}

/// What [`judge`] decided.
pub(crate) struct Judgement {
    /// Every device's standing.
    pub(crate) states: BTreeMap<DeviceId, MemberState>,
    /// For each valid device, the index (in the entries judged) of an entry that makes it valid.
    pub(crate) chosen: BTreeMap<DeviceId, usize>,
    /// The removals that count: the removed device and the change that wrote each.
    pub(crate) removal_changes: Vec<(DeviceId, Option<ChangeHash>)>,
}

/// How an entry could be valid.
enum Kind {
    /// Signed by the device that added it: valid if that one is.
    Chain(DeviceId),
    /// Trusted without a chain (see [`judge`]).
    Anchored,
    /// Never valid, for this reason.
    Bad(&'static str),
}

/// The devices valid given the counted removals, walking from the trusted ones along "added by"; for each device,
/// the index of an entry that makes it valid, or why none does.
fn valid_entries(
    entries: &[EntryFact],
    kinds: &[Kind],
    removals: &[&RemovalFact],
    before: &mut dyn FnMut(&ChangeHash, &ChangeHash) -> bool,
) -> BTreeMap<DeviceId, Result<usize, &'static str>> {
    let mut ok: BTreeMap<DeviceId, usize> = BTreeMap::new();
    loop {
        let mut progress = false;
        for (i, (e, kind)) in entries.iter().zip(kinds).enumerate() {
            if ok.contains_key(&e.device.id) {
                continue;
            }
            let valid = match kind {
                Kind::Anchored => true,
                Kind::Bad(_) => false,
                Kind::Chain(by) => {
                    ok.contains_key(by)
                        && !removals.iter().filter(|r| &r.removed == by).any(|r| {
                            !r.change
                                .as_ref()
                                .is_some_and(|rc| e.changes.iter().any(|ec| before(ec, rc)))
                        })
                }
            };
            if valid {
                ok.insert(e.device.id.clone(), i);
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let mut out: BTreeMap<DeviceId, Result<usize, &'static str>> =
        ok.into_iter().map(|(id, i)| (id, Ok(i))).collect();
    for (e, kind) in entries.iter().zip(kinds) {
        if matches!(out.get(&e.device.id), Some(Ok(_))) {
            continue;
        }
        let why = match kind {
            Kind::Bad(why) => why,
            Kind::Anchored => continue,
            Kind::Chain(by) => {
                if !entries.iter().any(|other| &other.device.id == by) {
                    "it was added by a device that is not in the table"
                } else if matches!(out.get(by), Some(Err(_))) || !out.contains_key(by) {
                    "it was added by a device whose entry is not valid"
                } else {
                    "it was added by a device after that device's removal"
                }
            }
        };
        // A more telling reason (about its adder) wins over a bad copy of the entry.
        match out.get(&e.device.id) {
            Some(Err(old)) if old.starts_with("it was added") => {}
            _ => {
                out.insert(e.device.id.clone(), Err(why));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(seed: u8) -> LocalDevice {
        LocalDevice::new(
            &Zeroizing::new([seed; 32]),
            &Zeroizing::new([seed ^ 0x55; 32]),
        )
    }

    #[test]
    fn device_ids_are_peer_ids_of_their_keys() {
        let d = device(1);
        assert!(d.id().as_str().starts_with("12D3KooW"), "{}", d.id());
        let key = verifying_key(d.id()).unwrap();
        assert_eq!(device_id_of(key.as_bytes()), *d.id());
        assert!(verifying_key(&DeviceId::new("not a peer id".into())).is_none());
        assert!(
            verifying_key(&DeviceId::new(
                "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".into()
            ))
            .is_none()
        );
    }

    #[test]
    fn a_recovery_keys_statement_verifies_only_as_signed() {
        let vault = VaultId::from_bytes([1; 16]);
        let (key, other) = (device(1), device(2));
        let anchors: BTreeSet<DeviceId> = [device(3).id().clone(), device(4).id().clone()].into();
        let sig = sign_recovery_anchors(&vault, &key, &anchors);
        let bytes = encode_recovery_anchors(&anchors, &sig);
        assert_eq!(
            verified_recovery_anchors(&vault, key.id(), &bytes),
            Some(anchors.clone())
        );
        assert_eq!(
            verified_recovery_anchors(&vault, other.id(), &bytes),
            None,
            "another key"
        );
        let elsewhere = VaultId::from_bytes([2; 16]);
        assert_eq!(
            verified_recovery_anchors(&elsewhere, key.id(), &bytes),
            None
        );
        let fewer: BTreeSet<DeviceId> = anchors.iter().take(1).cloned().collect();
        let forged = encode_recovery_anchors(&fewer, &sig);
        assert_eq!(
            verified_recovery_anchors(&vault, key.id(), &forged),
            None,
            "the ids are signed"
        );
        for cut in 0..bytes.len() {
            assert_eq!(
                verified_recovery_anchors(&vault, key.id(), &bytes[..cut]),
                None
            );
        }
        fuzz_values(&bytes);
    }

    #[test]
    fn a_device_entry_cannot_be_relabelled_as_a_recovery_key() {
        let vault = VaultId::from_bytes([1; 16]);
        let (me, other) = (device(1), device(2));
        let mut d = Device {
            id: other.id().clone(),
            name: String::new(),
            x25519_public: other.x25519_public(),
            added_by: Some(me.id().clone()),
            added_at_ms: 5,
            signature: None,
            kind: MemberKind::Device,
        };
        let sig = me.sign(&entry_message(&vault, &d));
        d.signature = Some(sig);
        let bytes = encode_entry(&d, &sig);
        assert_eq!(decode_entry(&bytes), Some(d.clone()));
        assert!(verify(me.id(), &entry_message(&vault, &d), &sig));
        let mut relabelled = bytes.clone();
        relabelled[0] = ENTRY_RECOVERY;
        let r = decode_entry(&relabelled).expect("decodes");
        assert_eq!(r.kind, MemberKind::Recovery);
        assert!(!verify(me.id(), &entry_message(&vault, &r), &sig));
        relabelled[0] = 3;
        assert!(decode_entry(&relabelled).is_none());
    }

    #[test]
    fn signed_values_round_trip_and_bind_their_fields() {
        let vault = VaultId::from_bytes([1; 16]);
        let me = device(1);
        let other = device(2);
        let r = Removal::sign(&vault, other.id(), &me, 77);
        let back = Removal::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(back.verifies(&vault, other.id()));
        assert!(!back.verifies(&vault, me.id()), "another device");
        assert!(
            !back.verifies(&VaultId::from_bytes([2; 16]), other.id()),
            "another vault"
        );
        let mut later = back.clone();
        later.at_ms += 1;
        assert!(!later.verifies(&vault, other.id()));
        let enc = r.encode();
        assert!(Removal::decode(&enc[..enc.len() - 1]).is_none());
        assert!(Removal::decode(&[enc.as_slice(), &[0]].concat()).is_none());

        let recipients = BTreeSet::from([me.id().clone(), other.id().clone()]);
        let e = EpochInfo::sign(&vault, Epoch(9), (Epoch(4), 2), &me, 5, recipients);
        assert_eq!((e.parent, e.generation), (Epoch(4), 3));
        let back = EpochInfo::decode(&e.encode()).unwrap();
        assert_eq!(back, e);
        assert!(back.verifies(&vault, Epoch(9)));
        assert!(!back.verifies(&vault, Epoch(8)));
        let mut fewer = back.clone();
        fewer.recipients.remove(other.id());
        assert!(!fewer.verifies(&vault, Epoch(9)), "recipients are signed");
        // Recipients out of order (or twice) are not an encoding `encode` writes: refused.
        let mut swapped = e.clone();
        swapped.recipients = BTreeSet::from([me.id().clone()]);
        let one = swapped.encode();
        let twice = [
            &one[..one.len() - 64 - 2 - me.id().as_str().len() - 2],
            &2u16.to_be_bytes(),
            &(me.id().as_str().len() as u16).to_be_bytes(),
            me.id().as_str().as_bytes(),
            &(me.id().as_str().len() as u16).to_be_bytes(),
            me.id().as_str().as_bytes(),
            &one[one.len() - 64..],
        ]
        .concat();
        assert!(EpochInfo::decode(&twice).is_none());
        fuzz_values(&e.encode());
        fuzz_values(&r.encode());
    }

    #[test]
    fn wraps_open_only_for_their_recipient_epoch_and_vault() {
        let vault = VaultId::from_bytes([1; 16]);
        let (me, other) = (device(1), device(2));
        let key = VaultKey::from_bytes([7; 32]);
        let w = wrap(&vault, Epoch(3), me.id(), &me.x25519_public(), &key).unwrap();
        assert_eq!(
            unwrap(&vault, Epoch(3), &me, &w).unwrap().as_bytes(),
            &[7; 32]
        );
        assert!(unwrap(&vault, Epoch(4), &me, &w).is_none());
        assert!(unwrap(&VaultId::from_bytes([2; 16]), Epoch(3), &me, &w).is_none());
        assert!(unwrap(&vault, Epoch(3), &other, &w).is_none());
        assert!(unwrap(&vault, Epoch(3), &me, &w[..w.len() - 1]).is_none());
        assert!(
            wrap(&vault, Epoch(3), me.id(), &[0; 32], &key).is_none(),
            "low order"
        );
    }

    fn entry(vault: &VaultId, d: &LocalDevice, by: Option<&LocalDevice>, change: u8) -> EntryFact {
        let device = Device {
            id: d.id().clone(),
            name: "d".into(),
            x25519_public: d.x25519_public(),
            added_by: by.map(|b| b.id().clone()),
            added_at_ms: 1,
            kind: crate::MemberKind::Device,
            signature: None,
        };
        let sig = by.unwrap_or(d).sign(&entry_message(vault, &device));
        EntryFact {
            device: Device {
                signature: Some(sig),
                ..device
            },
            changes: vec![ChangeHash([change; 32])],
        }
    }

    fn removal(vault: &VaultId, who: &LocalDevice, by: &LocalDevice, change: u8) -> RemovalFact {
        RemovalFact {
            removed: who.id().clone(),
            removal: Removal::sign(vault, who.id(), by, 2),
            change: Some(ChangeHash([change; 32])),
        }
    }

    /// Changes numbered by time, with `concurrent` pairs that are not ordered.
    fn order(concurrent: &'static [(u8, u8)]) -> impl FnMut(&ChangeHash, &ChangeHash) -> bool {
        move |a, b| {
            let (a, b) = (a.0[0], b.0[0]);
            a <= b && !concurrent.contains(&(a, b)) && !concurrent.contains(&(b, a))
        }
    }

    #[test]
    fn only_anchored_devices_may_stand_without_a_chain() {
        let vault = VaultId::from_bytes([1; 16]);
        let (a, b, x) = (device(1), device(2), device(4));
        let anchor_set = BTreeSet::from([a.id().clone()]);
        let unsigned = |d: &LocalDevice, by: Option<&LocalDevice>| {
            let mut e = entry(&vault, d, by, 9);
            e.device.signature = None;
            e
        };
        let entries = vec![
            unsigned(&a, None),
            entry(&vault, &b, Some(&a), 2),
            // A self-signed root and an unsigned entry for X, which nobody trusts.
            entry(&vault, &x, None, 3),
            unsigned(&x, Some(&b)),
        ];
        let judged = judge(
            &vault,
            &entries,
            &[],
            Some(&anchor_set),
            false,
            &mut order(&[]),
        )
        .states;
        assert_eq!(judged[a.id()], MemberState::Active, "the anchor, unsigned");
        assert_eq!(judged[b.id()], MemberState::Active, "signed by the anchor");
        assert!(matches!(judged[x.id()], MemberState::Invalid(_)));
        // Without anchors (a replica that never pinned any), unsigned and self-signed entries are taken as they are.
        let judged = judge(&vault, &entries, &[], None, false, &mut order(&[])).states;
        assert_eq!(judged[x.id()], MemberState::Active);
        // A device with one good entry among bad copies is valid.
        let mut bad = entry(&vault, &b, Some(&a), 5);
        bad.device.added_at_ms = 99;
        let judged = judge(
            &vault,
            &[unsigned(&a, None), bad, entry(&vault, &b, Some(&a), 6)],
            &[],
            Some(&anchor_set),
            false,
            &mut order(&[]),
        );
        assert_eq!(judged.states[b.id()], MemberState::Active);
        assert_eq!(judged.chosen[b.id()], 2);
    }

    #[test]
    fn membership_follows_signatures_and_causality() {
        let vault = VaultId::from_bytes([1; 16]);
        let (a, b, c, x) = (device(1), device(2), device(3), device(4));
        let anchor_set = BTreeSet::from([a.id().clone()]);
        let anchors = Some(&anchor_set);
        let entries = vec![
            entry(&vault, &a, None, 1),
            entry(&vault, &b, Some(&a), 2),
            entry(&vault, &c, Some(&b), 3),
        ];
        let judged = judge(&vault, &entries, &[], anchors, false, &mut order(&[])).states;
        assert!(judged.values().all(|s| *s == MemberState::Active));

        // A forged entry (signed by X, claiming A added it) is invalid.
        let mut forged = entry(&vault, &x, Some(&x), 4);
        forged.device.added_by = Some(a.id().clone());
        let with_forged: Vec<EntryFact> = entries
            .iter()
            .map(|e| EntryFact {
                device: e.device.clone(),
                changes: e.changes.clone(),
            })
            .chain([forged])
            .collect();
        let judged = judge(&vault, &with_forged, &[], anchors, false, &mut order(&[])).states;
        assert_eq!(
            judged[x.id()],
            MemberState::Invalid("its signature does not verify")
        );

        // A removes B (change 5); C, added by B before that, stays; X added by B after it is ignored.
        let mut more: Vec<EntryFact> = entries;
        more.push(entry(&vault, &x, Some(&b), 6));
        let removals = [removal(&vault, &b, &a, 5)];
        let judged = judge(&vault, &more, &removals, anchors, false, &mut order(&[])).states;
        assert!(matches!(&judged[b.id()], MemberState::Removed { by, .. } if by == a.id()));
        assert_eq!(judged[c.id()], MemberState::Active);
        assert_eq!(
            judged[x.id()],
            MemberState::Invalid("it was added by a device after that device's removal")
        );
        // Added concurrently with the removal: ignored too.
        let judged = judge(
            &vault,
            &more,
            &removals,
            anchors,
            false,
            &mut order(&[(5, 6)]),
        )
        .states;
        assert!(matches!(judged[x.id()], MemberState::Invalid(_)));

        // B and C remove each other concurrently (changes 7 and 8): both removals count.
        let both = [removal(&vault, &c, &b, 7), removal(&vault, &b, &c, 8)];
        let judged = judge(
            &vault,
            &more[..3],
            &both,
            anchors,
            false,
            &mut order(&[(7, 8)]),
        )
        .states;
        assert!(matches!(judged[b.id()], MemberState::Removed { .. }));
        assert!(matches!(judged[c.id()], MemberState::Removed { .. }));
        // C's removal of B made after C learnt of its own removal does not count.
        let judged = judge(&vault, &more[..3], &both, anchors, false, &mut order(&[])).states;
        assert_eq!(judged[b.id()], MemberState::Active);
        assert!(matches!(judged[c.id()], MemberState::Removed { .. }));
        // A removal signed by someone else than it claims does not count.
        let mut fake = removal(&vault, &a, &x, 9);
        fake.removal.by = b.id().clone();
        let judged = judge(&vault, &more[..3], &[fake], anchors, false, &mut order(&[])).states;
        assert_eq!(judged[a.id()], MemberState::Active);
    }
}
