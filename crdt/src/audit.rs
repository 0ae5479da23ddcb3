//! The audit log: signed, append-only records of who did what to the vault.
//!
//! Every membership and deletion event (a device paired, renamed or removed, a key rotation, a passkey moved
//! to the trash, restored or purged, a PIN key published, a purge approved: see [`approval`](crate::approval))
//! appends one entry to `ROOT.ext.audit`, in the same change as the event
//! itself, signed with the acting device's identity key:
//!
//! ```text
//! entry = 1 ‖ event u8 ‖ u16-prefixed device id ‖ at u64 ‖ u16-prefixed subject ‖ sig(64)
//! sig   = Ed25519 over "passmesh/v1/audit" 0x00 ‖ vault id ‖ event ‖ device ‖ at ‖ subject
//! key   = the first 16 bytes of SHA-256(entry), in hex
//! ```
//!
//! Entries are in clear: the subject is a record id (random, it says nothing about the passkey), a device id
//! (public anyway) or an epoch id; the log stays readable after old epoch keys are destroyed. It is
//! append-only by construction: entries are read from the document's history (every value ever written under
//! `audit`, see `Vault`), so deleting or overwriting one hides nothing, and an entry is keyed by its own hash,
//! so a value written under a key that is not its hash is shown as altered. An entry whose signature does not
//! verify against the id of the device it names, or whose device is not a valid member of the vault (or was
//! removed causally before it wrote it), is shown as forged.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::members::{self, LocalDevice, Reader};
use crate::{DeviceId, VaultId};

const AUDIT_V1: u8 = 1;
/// Longest subject accepted (record ids are 32 hex characters, device ids about 52).
const MAX_SUBJECT: usize = 256;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A device was added to the vault (subject: the new device); written by the device that added it.
    Paired,
    /// A device was removed (subject: the removed device).
    Removed,
    /// A device was renamed (subject: the device).
    DeviceRenamed,
    /// A new key epoch was made (subject: the epoch id).
    Rotated,
    /// A passkey was moved to the trash (subject: its record id).
    Trashed,
    /// A passkey was restored from the trash (subject: its record id).
    Restored,
    /// A passkey was purged for good (subject: its record id).
    Purged,
    /// The device published a key derived from its PIN (subject: see [`approval`](crate::approval)).
    PinKey,
    /// The user approved, with the PIN, destroying the keys of epochs before one (subject: see
    /// [`approval`](crate::approval)).
    Approved,
    /// A recovery key joined the vault (subject: its member id); written by the device that added it.
    RecoverySet,
    /// This device was restored from a backup with the recovery phrase (subject: the recovery key's member id);
    /// written by the restored device.
    VaultRestored,
    /// An event of a later release.
    Other(u8),
}

impl Event {
    fn code(self) -> u8 {
        match self {
            Event::Paired => 1,
            Event::Removed => 2,
            Event::DeviceRenamed => 3,
            Event::Rotated => 4,
            Event::Trashed => 5,
            Event::Restored => 6,
            Event::Purged => 7,
            Event::PinKey => 8,
            Event::Approved => 9,
            Event::RecoverySet => 10,
            Event::VaultRestored => 11,
            Event::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> Event {
        match c {
            1 => Event::Paired,
            2 => Event::Removed,
            3 => Event::DeviceRenamed,
            4 => Event::Rotated,
            5 => Event::Trashed,
            6 => Event::Restored,
            7 => Event::Purged,
            8 => Event::PinKey,
            9 => Event::Approved,
            10 => Event::RecoverySet,
            11 => Event::VaultRestored,
            c => Event::Other(c),
        }
    }

    /// The name `passmesh audit` shows.
    pub fn name(self) -> String {
        match self {
            Event::Paired => "device-paired".into(),
            Event::Removed => "device-removed".into(),
            Event::DeviceRenamed => "device-renamed".into(),
            Event::Rotated => "key-rotated".into(),
            Event::Trashed => "passkey-trashed".into(),
            Event::Restored => "passkey-restored".into(),
            Event::Purged => "passkey-purged".into(),
            Event::PinKey => "pin-key-set".into(),
            Event::Approved => "purge-approved".into(),
            Event::RecoverySet => "recovery-set".into(),
            Event::VaultRestored => "vault-restored".into(),
            Event::Other(c) => format!("event-{c}"),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Whether an entry can be believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by the device it names, a member of the vault when it wrote it.
    Verified,
    /// Not what it claims to be, for this reason.
    Forged(&'static str),
    /// Written under the key of another entry: an attempt to change an entry (the original, if it was ever
    /// written, is listed on its own).
    Altered,
}

/// One entry of the log, as found in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its key in the log (the hash of the entry, in hex).
    pub key: String,
    /// When (ms since the Unix epoch, the acting device's clock).
    pub at_ms: u64,
    /// The acting device.
    pub device: DeviceId,
    /// What it did.
    pub event: Event,
    /// What it acted on: a device id, a record id or an epoch id, by event.
    pub subject: String,
    /// Whether the entry can be believed.
    pub verdict: Verdict,
}

/// A decoded, not yet judged entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signed {
    pub(crate) event: Event,
    pub(crate) device: DeviceId,
    pub(crate) at_ms: u64,
    pub(crate) subject: String,
    pub(crate) sig: [u8; 64],
}

fn message(vault: &VaultId, event: Event, device: &DeviceId, at_ms: u64, subject: &str) -> Vec<u8> {
    let mut out = members::message(b"passmesh/v1/audit", vault);
    out.push(event.code());
    members::push_str(&mut out, device.as_str());
    out.extend_from_slice(&at_ms.to_be_bytes());
    members::push_str(&mut out, subject);
    out
}

/// A new entry by `me`, as (key, value) to write under `ext.audit`.
pub(crate) fn sign(
    vault: &VaultId,
    me: &LocalDevice,
    event: Event,
    subject: &str,
    at_ms: u64,
) -> (String, Vec<u8>) {
    let subject = &subject[..subject.len().min(MAX_SUBJECT)];
    let sig = me.sign(&message(vault, event, me.id(), at_ms, subject));
    let value = Signed {
        event,
        device: me.id().clone(),
        at_ms,
        subject: subject.to_owned(),
        sig,
    }
    .encode();
    (key_of(&value), value)
}

/// The key an entry is stored under: the first 16 bytes of its SHA-256, in hex.
pub fn key_of(value: &[u8]) -> String {
    let digest = Sha256::digest(value);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode(bytes: &[u8]) -> Option<Signed> {
    let mut r = Reader(bytes);
    if r.u8()? != AUDIT_V1 {
        return None;
    }
    let event = Event::from_code(r.u8()?);
    let device = DeviceId::new(r.string()?);
    let at_ms = r.u64()?;
    let subject = r.string()?;
    let sig = r.array::<64>()?;
    r.end()?;
    if subject.len() > MAX_SUBJECT {
        return None;
    }
    Some(Signed {
        event,
        device,
        at_ms,
        subject,
        sig,
    })
}

impl Signed {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut value = vec![AUDIT_V1, self.event.code()];
        members::push_str(&mut value, self.device.as_str());
        value.extend_from_slice(&self.at_ms.to_be_bytes());
        members::push_str(&mut value, &self.subject);
        value.extend_from_slice(&self.sig);
        value
    }

    /// Whether the signature is the named device's.
    pub(crate) fn verifies(&self, vault: &VaultId) -> bool {
        members::verify(
            &self.device,
            &message(vault, self.event, &self.device, self.at_ms, &self.subject),
            &self.sig,
        )
    }
}

/// Runs the audit-entry decoder on arbitrary bytes (the fuzz target's entry point): what decodes encodes back
/// to the same bytes (the parse is strict, so an entry's hash names exactly one entry).
pub fn fuzz_entry(bytes: &[u8]) {
    if let Some(s) = decode(bytes) {
        assert_eq!(
            s.encode(),
            bytes,
            "an audit entry re-encodes to other bytes"
        );
        let _ = s.verifies(&VaultId::from_bytes([0; 16]));
        crate::approval::fuzz_subject(&s.subject);
    }
    let _ = key_of(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn device(seed: u8) -> LocalDevice {
        LocalDevice::new(&Zeroizing::new([seed; 32]), &Zeroizing::new([seed; 32]))
    }

    #[test]
    fn an_entry_round_trips_verifies_and_is_keyed_by_its_hash() {
        let vault = VaultId::from_bytes([7; 16]);
        let me = device(1);
        let (key, value) = sign(&vault, &me, Event::Trashed, "ab12", 42);
        assert_eq!(key, key_of(&value));
        assert_eq!(key.len(), 32);
        let s = decode(&value).unwrap();
        assert_eq!(
            (s.event, &s.device, s.at_ms, s.subject.as_str()),
            (Event::Trashed, me.id(), 42, "ab12")
        );
        assert!(s.verifies(&vault));
        // Another vault, another subject, another device: no longer verifies.
        assert!(!s.verifies(&VaultId::from_bytes([8; 16])));
        let mut other = s.clone();
        other.subject = "cd34".into();
        assert!(!other.verifies(&vault));
        let mut other = s.clone();
        other.device = device(2).id().clone();
        assert!(!other.verifies(&vault));
        // Truncated or extended bytes do not decode.
        assert!(decode(&value[..value.len() - 1]).is_none());
        let mut longer = value.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
    }
}
