//! Passkey records and device entries, as callers see them (decrypted).

use std::fmt;

use zeroize::Zeroizing;

use crate::{DeviceId, Epoch, Error, RecordId};

/// Field names inside record and device maps; each is also bound into the associated data of its ciphertext.
pub(crate) mod field {
    /// The key epoch of the record (clear).
    pub(crate) const EPOCH: &str = "epoch";
    /// The fields fixed at creation, sealed together: credential id, rp id, user handle, user name, display
    /// name, private key, creation time.
    pub(crate) const CORE: &str = "core";
    pub(crate) const UPDATED_AT: &str = "updated_at";
    pub(crate) const LABEL: &str = "label";

    /// Device map fields.
    pub(crate) const X25519_PUBLIC: &str = "x25519_public";
    pub(crate) const ADDED_BY: &str = "added_by";
    pub(crate) const NAME: &str = "name";
    pub(crate) const ADDED_AT: &str = "added_at";

    /// Version 2 fields: each value carries its own epoch (4 bytes, big-endian) before the sealed bytes, so a
    /// record whose fields were written by different replicas under different epochs (a rename concurrent with
    /// a key rotation) stays readable. A v2 field is preferred over its v1 counterpart.
    /// The core (v2 encoding: with the update time as of its writing).
    pub(crate) const CORE2: &str = "c";
    /// What a rename changes: the update time and the label. Absent until the first rename; when present it
    /// overrides the core's update time. One value, so a rotation rewrites one field of an unlabelled record.
    pub(crate) const META2: &str = "m";
    /// When the record was moved to the trash (clear unsigned integer, ms since the Unix epoch); absent for a
    /// live record. A restore deletes it; a trash concurrent with a restore wins (automerge keeps a put over a
    /// concurrent delete), so nothing is ever lost by that race.
    pub(crate) const TRASHED: &str = "t";
    pub(crate) const NAME2: &str = "n";
    pub(crate) const ADDED_AT2: &str = "a";
    /// A device's signed entry (clear; see `members::encode_entry`).
    pub(crate) const ENTRY: &str = "e";
    /// The v1 fields a rewrite in v2 form deletes.
    pub(crate) const RECORD_V1: [&str; 4] = [EPOCH, CORE, UPDATED_AT, LABEL];
    pub(crate) const DEVICE_V1: [&str; 3] = [EPOCH, NAME, ADDED_AT];
}

/// Longest credential id WebAuthn allows.
pub(crate) const MAX_CREDENTIAL_ID: usize = 1023;
/// Longest user handle WebAuthn allows.
pub(crate) const MAX_USER_HANDLE: usize = 64;
/// Bound on every text field (rp id, names, label); far above real values, it only keeps the document sane.
pub(crate) const MAX_TEXT: usize = 4096;
/// A raw P-256 scalar.
pub(crate) const PRIVATE_KEY_LEN: usize = 32;

/// A passkey as the authenticator hands it in, before it gets a record id and is encrypted.
#[derive(Clone)]
pub struct NewPasskey {
    /// The WebAuthn credential id (1–1023 bytes).
    pub credential_id: Vec<u8>,
    /// The relying party id (a domain).
    pub rp_id: String,
    /// The relying party's user handle (at most 64 bytes).
    pub user_handle: Vec<u8>,
    /// The account name, e.g. an email address.
    pub user_name: String,
    /// The human-friendly account name.
    pub user_display_name: String,
    /// The raw P-256 private scalar, 32 bytes.
    pub private_key: Zeroizing<Vec<u8>>,
    /// When the credential was created (ms since the Unix epoch).
    pub created_at_ms: u64,
}

impl NewPasskey {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        validate_fields(
            &self.credential_id,
            &self.rp_id,
            &self.user_handle,
            &self.user_name,
            &self.user_display_name,
            &self.private_key,
        )
    }
}

pub(crate) fn validate_fields(
    credential_id: &[u8],
    rp_id: &str,
    user_handle: &[u8],
    user_name: &str,
    user_display_name: &str,
    private_key: &[u8],
) -> Result<(), Error> {
    if credential_id.is_empty() || credential_id.len() > MAX_CREDENTIAL_ID {
        return Err(Error::InvalidInput("credential id must be 1 to 1023 bytes"));
    }
    if rp_id.is_empty() || rp_id.len() > MAX_TEXT {
        return Err(Error::InvalidInput("rp id must be 1 to 4096 bytes"));
    }
    if user_handle.len() > MAX_USER_HANDLE {
        return Err(Error::InvalidInput("user handle must be at most 64 bytes"));
    }
    if user_name.len() > MAX_TEXT || user_display_name.len() > MAX_TEXT {
        return Err(Error::InvalidInput("user names must be at most 4096 bytes"));
    }
    if private_key.len() != PRIVATE_KEY_LEN {
        return Err(Error::InvalidInput(
            "private key must be a 32-byte P-256 scalar",
        ));
    }
    Ok(())
}

pub(crate) fn validate_label(label: &str) -> Result<(), Error> {
    if label.len() > MAX_TEXT {
        return Err(Error::InvalidInput("label must be at most 4096 bytes"));
    }
    Ok(())
}

impl fmt::Debug for NewPasskey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewPasskey")
            .field("rp_id", &self.rp_id)
            .field("credential_id", &self.credential_id)
            .field("user_name", &self.user_name)
            .field("private_key", &"..")
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// A decrypted passkey record.
///
/// Holds the private key (wiped on drop) and personal data (user name, handle): do not log it; its `Debug`
/// leaves out the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Passkey {
    /// The record inside the vault.
    pub record_id: RecordId,
    /// The key epoch the record is encrypted under (when its fields are under different epochs, one that is
    /// not the current epoch: the record is due for re-encryption).
    pub epoch: Epoch,
    /// The WebAuthn credential id.
    pub credential_id: Vec<u8>,
    /// The relying party id.
    pub rp_id: String,
    /// The relying party's user handle.
    pub user_handle: Vec<u8>,
    /// The account name.
    pub user_name: String,
    /// The human-friendly account name.
    pub user_display_name: String,
    /// A name the user gave the passkey; `None` until renamed.
    pub label: Option<String>,
    /// The raw P-256 private scalar, 32 bytes.
    pub private_key: Zeroizing<Vec<u8>>,
    /// When the credential was created (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the record last changed (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// When it was moved to the trash (ms since the Unix epoch, the deleting device's clock); `None` for a live
    /// passkey. A trashed passkey is hidden from every lookup and listing but [`Vault::trashed`](crate::Vault::trashed).
    pub trashed_at_ms: Option<u64>,
}

impl Passkey {
    /// Whether `other` (another version of a record) is the same passkey: credential, private key, site and
    /// user, what no honest change alters (a label, the trash mark and re-encryption do not count).
    pub fn is_same_passkey(&self, other: &Passkey) -> bool {
        self.credential_id == other.credential_id
            && self.private_key.as_slice() == other.private_key.as_slice()
            && self.rp_id == other.rp_id
            && self.user_handle == other.user_handle
    }
}

impl fmt::Debug for Passkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passkey")
            .field("record_id", &self.record_id)
            .field("epoch", &self.epoch)
            .field("credential_id", &self.credential_id)
            .field("rp_id", &self.rp_id)
            .field("user_handle", &self.user_handle)
            .field("user_name", &self.user_name)
            .field("user_display_name", &self.user_display_name)
            .field("label", &self.label)
            .field("private_key", &"..")
            .field("created_at_ms", &self.created_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .field("trashed_at_ms", &self.trashed_at_ms)
            .finish()
    }
}

/// A device of the vault, as listed in the replicated device table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The device's id (its libp2p peer id).
    pub id: DeviceId,
    /// A human name ("laptop"); encrypted in the document.
    pub name: String,
    /// The device's x25519 public key (vault keys are wrapped to it); clear in the document, authenticated by
    /// the sealed fields.
    pub x25519_public: [u8; 32],
    /// The device that added this one (clear, authenticated like the public key); `None` for the first device.
    pub added_by: Option<DeviceId>,
    /// When it was added (ms since the Unix epoch); encrypted in the document.
    pub added_at_ms: u64,
    /// The ed25519 signature of the entry by the device that added it (by itself for the first device); `None`
    /// for entries written before entries were signed.
    pub signature: Option<[u8; 64]>,
    /// A device, or a recovery key (see [`MemberKind`]); part of what is signed.
    pub kind: MemberKind,
}

/// What a member of the vault is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MemberKind {
    /// A device: it connects, syncs, holds an inbox and acknowledges epochs.
    #[default]
    Device,
    /// A recovery key derived from a recovery phrase: every epoch key is wrapped to its x25519 key (never to an
    /// inbox), it never connects, and a device restored with the phrase is added by it.
    Recovery,
}

/// Longest device id accepted (libp2p peer ids are about 52 characters).
pub(crate) const MAX_DEVICE_ID: usize = 256;

pub(crate) fn validate_device_id(id: &DeviceId) -> Result<(), Error> {
    if id.as_str().is_empty() || id.as_str().len() > MAX_DEVICE_ID {
        return Err(Error::InvalidInput("device id must be 1 to 256 bytes"));
    }
    Ok(())
}

impl Device {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        validate_device_id(&self.id)?;
        if let Some(by) = &self.added_by {
            validate_device_id(by)?;
        }
        if self.name.len() > MAX_TEXT {
            return Err(Error::InvalidInput(
                "device name must be at most 4096 bytes",
            ));
        }
        Ok(())
    }
}
