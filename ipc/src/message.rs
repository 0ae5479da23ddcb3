//! Typed requests and responses, and their JSON wire shapes.
//!
//! A request is `{"id": <u64>, "type": "...", ...fields}`. A response is either
//! `{"id": <u64>, "ok": true, "type": "...", ...fields}` or
//! `{"id": <u64|null>, "ok": false, "error": {"name": "...", "message": "..."}}`.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::b64::Base64Url;
use crate::pin::{Phrase, Pin};
use crate::webauthn::{
    AuthenticationResponseJson, PublicKeyCredentialCreationOptionsJson,
    PublicKeyCredentialRequestOptionsJson, RegistrationResponseJson,
};

/// A request frame: an id chosen by the caller and the request itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response so callers can match answers to questions.
    pub id: u64,
    /// What is asked.
    #[serde(flatten)]
    pub body: RequestBody,
}

/// What a caller can ask the daemon. The `"type"` field selects the variant.
#[expect(
    clippy::large_enum_variant,
    reason = "plain fields keep the daemon's construction and matching simple; a request lives once per connection"
)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum RequestBody {
    /// `navigator.credentials.create()` on behalf of `origin`.
    Create {
        /// The web origin the caller acts for, e.g. `https://example.com`.
        origin: String,
        /// The relying party's options.
        options: PublicKeyCredentialCreationOptionsJson,
        /// PIN for user verification, if the caller collected one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<Pin>,
    },
    /// `navigator.credentials.get()` on behalf of `origin`.
    Get {
        /// The web origin the caller acts for.
        origin: String,
        /// The relying party's options.
        options: PublicKeyCredentialRequestOptionsJson,
        /// PIN for user verification, if the caller collected one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<Pin>,
    },
    /// List the caller's passkeys, optionally only those of one relying party, one page at a time (oldest
    /// first). A page holds at most [`MAX_LIST_PAGE`] entries so that it always fits in a frame.
    List {
        /// Only passkeys for this relying party id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rp_id: Option<String>,
        /// Entries to skip (default 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
        /// Page size (default and maximum [`MAX_LIST_PAGE`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Move one passkey to the trash: hidden from `get`, `list` and the browser on every device, restorable
    /// with `trashRestore` until it is purged (`[vault] trash_days` later, or with `trashPurge`).
    Delete {
        /// The credential to delete.
        credential_id: Base64Url,
    },
    /// Give one passkey a label (shown by `list`; merges per field across devices, last writer wins).
    Rename {
        /// The credential to rename.
        credential_id: Base64Url,
        /// The new label: 1 to [`MAX_LABEL`] bytes, no control characters.
        label: String,
    },
    /// Daemon and vault status.
    Status,
    /// Set or change the PIN.
    SetPin {
        /// The new PIN.
        pin: Pin,
        /// The current PIN, required when one is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_pin: Option<Pin>,
    },
    /// Open a one-time pairing invitation on this device (one at a time). The answer carries the
    /// `passmesh://pair?...` URI, which holds the secret: show it to the person only.
    PairInvite {
        /// Lifetime in seconds (default [`DEFAULT_PAIR_EXPIRY_SECS`], at most [`MAX_PAIR_EXPIRY_SECS`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_secs: Option<u64>,
        /// Wait for `pairConfirm` (the person compares the SAS) before any key is sent.
        #[serde(default, skip_serializing_if = "is_false")]
        confirm: bool,
        /// This device's name as the joiner will list it (default: its name in the device table).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Join the vault of another device with its invitation URI; follow with `pairProgress`.
    PairJoin {
        /// The `passmesh://pair?...` URI.
        uri: String,
        /// This device's name in the device table (default: the host name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// The events of the current (or last) pairing from index `since` on; waits up to about 20 s for one.
    PairProgress {
        /// The first event index wanted (0 for all).
        #[serde(default)]
        since: u32,
    },
    /// Confirm (or reject) the SAS of a pairing opened with `confirm`.
    PairConfirm {
        /// True if the codes shown on both devices are equal.
        accept: bool,
    },
    /// Cancel this caller's pairing at once: an open invitation closes (a joiner waiting for the SAS confirmation
    /// is declined); the progress ends with `failed`.
    PairCancel,
    /// Every entry of the vault's device table, with its standing.
    DeviceList,
    /// Give a device of the vault a new name (it syncs to every device).
    DeviceRename {
        /// The device's full id (libp2p peer id).
        device_id: String,
        /// The new name: 1 to 64 bytes, no control characters.
        name: String,
    },
    /// Remove a device from the vault: it is refused by every device that learns of it, and the vault key is
    /// rotated so it cannot read anything written afterwards.
    DeviceRemove {
        /// The device's full id (libp2p peer id).
        device_id: String,
        /// The device PIN, required when one is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<Pin>,
    },
    /// The passkeys in the trash, one page at a time (longest there first).
    TrashList {
        /// Entries to skip (default 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
        /// Page size (default and maximum [`MAX_LIST_PAGE`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Take one passkey out of the trash.
    TrashRestore {
        /// The trashed credential.
        credential_id: Base64Url,
    },
    /// Purge passkeys from the trash for good, and rotate the vault key.
    TrashPurge {
        /// Only this trashed credential (default: the whole trash).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential_id: Option<Base64Url>,
        /// The device PIN, required when one is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<Pin>,
    },
    /// The vault's audit log, one page at a time (oldest first), each entry checked.
    Audit {
        /// Entries to skip (default 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
        /// Page size (default and maximum [`MAX_LIST_PAGE`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Make a recovery key the vault's: every key epoch is wrapped to it from now on, and backups are encrypted
    /// to it. The client derives it from a new phrase (the daemon never sees the phrase).
    RecoverySet {
        /// The recovery key's member id (the libp2p peer id of its ed25519 key).
        recovery_key: String,
        /// Its x25519 public key (32 bytes).
        x25519: Base64Url,
        /// The devices a replica restored with it trusts without a signature chain: `status.recovery.anchors`.
        anchors: Vec<String>,
        /// The recovery key's signature of `anchors` (64 bytes; see docs/vault-format.md).
        anchors_signature: Base64Url,
        /// Replace the current recovery key (`recovery rotate`); without it, refused if one is set.
        #[serde(default, skip_serializing_if = "is_false")]
        replace: bool,
        /// The device PIN, required when one is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<Pin>,
    },
    /// Make a backup file of the vault now (held for this caller; read it with `backupRead`).
    Backup {
        /// The device PIN, required when one is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<Pin>,
    },
    /// Read the backup made by `backup`, at most [`MAX_CHUNK`] bytes from `offset`.
    BackupRead {
        /// Where to read from.
        offset: u64,
    },
    /// Hand over a backup file to restore, at most [`MAX_CHUNK`] bytes at a time, in order (`offset` 0 starts
    /// over).
    RestoreWrite {
        /// Where this chunk goes: 0, or the number of bytes handed over so far.
        offset: u64,
        /// The chunk.
        data: Base64Url,
    },
    /// Restore the backup handed over with `restoreWrite` on this device, whose vault must be empty.
    Restore {
        /// The recovery phrase (24 words).
        phrase: Phrase,
        /// This device's name in the device table (default: the host name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

/// Most bytes of a backup one `backupRead` or `restoreWrite` carries (base64url keeps it within a frame).
pub const MAX_CHUNK: usize = 512 * 1024;

/// Default lifetime of an invitation, in seconds.
pub const DEFAULT_PAIR_EXPIRY_SECS: u64 = 300;
/// Longest lifetime of an invitation, in seconds.
pub const MAX_PAIR_EXPIRY_SECS: u64 = 3600;

fn is_false(v: &bool) -> bool {
    !*v
}

impl RequestBody {
    /// The wire `"type"` of this request, for logs and error messages (never the contents).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Get { .. } => "get",
            Self::List { .. } => "list",
            Self::Delete { .. } => "delete",
            Self::Rename { .. } => "rename",
            Self::Status => "status",
            Self::SetPin { .. } => "setPin",
            Self::PairInvite { .. } => "pairInvite",
            Self::PairJoin { .. } => "pairJoin",
            Self::PairProgress { .. } => "pairProgress",
            Self::PairConfirm { .. } => "pairConfirm",
            Self::PairCancel => "pairCancel",
            Self::DeviceList => "deviceList",
            Self::DeviceRename { .. } => "deviceRename",
            Self::DeviceRemove { .. } => "deviceRemove",
            Self::TrashList { .. } => "trashList",
            Self::TrashRestore { .. } => "trashRestore",
            Self::TrashPurge { .. } => "trashPurge",
            Self::Audit { .. } => "audit",
            Self::RecoverySet { .. } => "recoverySet",
            Self::Backup { .. } => "backup",
            Self::BackupRead { .. } => "backupRead",
            Self::RestoreWrite { .. } => "restoreWrite",
            Self::Restore { .. } => "restore",
        }
    }
}

/// Most entries one `list` reply carries. Stored user names and display names are at most 64 bytes, so a full
/// page stays far below [`crate::MAX_FRAME_LEN`].
pub const MAX_LIST_PAGE: u32 = 1000;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A successful answer. The `"type"` matches the request's.
#[expect(
    clippy::large_enum_variant,
    reason = "plain fields keep construction and matching simple; a response lives once per request"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ResponseBody {
    /// The new credential.
    Create {
        /// `RegistrationResponseJSON`, ready to hand to the relying party.
        credential: RegistrationResponseJson,
    },
    /// The assertion.
    Get {
        /// `AuthenticationResponseJSON`, ready to hand to the relying party.
        credential: AuthenticationResponseJson,
    },
    /// One page of the caller's passkeys.
    List {
        /// One entry per passkey, from `offset` on.
        passkeys: Vec<PasskeyInfo>,
        /// How many passkeys match in all (more pages follow while `offset + passkeys.len() < total`).
        total: u64,
    },
    /// Result of a delete.
    Delete {
        /// False if no such credential existed.
        deleted: bool,
    },
    /// Result of a rename.
    Rename {
        /// False if no such credential existed.
        renamed: bool,
    },
    /// Daemon and vault status.
    Status {
        /// The status.
        status: StatusInfo,
    },
    /// The PIN was set.
    SetPin {},
    /// The invitation is open.
    PairInvite {
        /// The `passmesh://pair?...` URI (holds the one-time secret).
        uri: String,
        /// When it expires, ms since the Unix epoch.
        expires_at_ms: u64,
    },
    /// Joining started; follow it with `pairProgress`.
    PairJoin {},
    /// Pairing events.
    PairProgress {
        /// Events from the requested index on, oldest first.
        events: Vec<PairEvent>,
        /// The index to ask for next.
        next: u32,
        /// The pairing ended (`done` or `failed` is among the events so far).
        finished: bool,
    },
    /// The answer was passed on.
    PairConfirm {},
    /// The pairing was cancelled.
    PairCancel {},
    /// The device table.
    DeviceList {
        /// Every entry, sorted by device id.
        devices: Vec<DeviceInfo>,
    },
    /// The device was renamed.
    DeviceRename {},
    /// The device is removed.
    DeviceRemove {
        /// The new key epoch everything was re-encrypted under; absent if the device was already removed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u32>,
    },
    /// One page of the trash.
    TrashList {
        /// One entry per trashed passkey, from `offset` on.
        passkeys: Vec<TrashedPasskey>,
        /// How many passkeys are in the trash in all.
        total: u64,
    },
    /// Result of a restore.
    TrashRestore {
        /// False if no such credential was in the trash.
        restored: bool,
    },
    /// Result of a purge.
    TrashPurge {
        /// How many passkeys were purged.
        purged: u64,
        /// The new key epoch (absent if nothing was purged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u32>,
        /// The purge was approved with the PIN: devices that trust this one's PIN key destroy the old keys as
        /// soon as all hold the new one (otherwise each keeps them `[vault] trash_days`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        approved: bool,
    },
    /// One page of the audit log.
    Audit {
        /// Entries from `offset` on, oldest first.
        entries: Vec<AuditInfo>,
        /// How many entries the log has in all.
        total: u64,
    },
    /// The recovery key is the vault's.
    RecoverySet {
        /// Its member id.
        recovery_key: String,
        /// The new key epoch, if one was made (replacing a key always makes one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u32>,
        /// Recovery keys it replaced.
        #[serde(default, skip_serializing_if = "is_zero")]
        replaced: u64,
    },
    /// The backup is made; read it with `backupRead`.
    Backup {
        /// Its size in bytes.
        size: u64,
        /// Passkeys in it.
        passkeys: u64,
        /// When it was made, ms since the Unix epoch.
        made_at_ms: u64,
        /// The file name automatic backups would give it.
        file_name: String,
    },
    /// A chunk of the backup.
    BackupRead {
        /// The bytes from the requested offset.
        data: Base64Url,
        /// This chunk ends the file (the daemon forgets it).
        end: bool,
    },
    /// The chunk was taken.
    RestoreWrite {
        /// Bytes handed over so far.
        received: u64,
    },
    /// This device is now a member of the restored vault.
    Restore {
        /// The vault's id.
        vault_id: String,
        /// Its passkeys.
        passkeys: u64,
        /// Its other devices (not seen since the restore: remove the lost ones).
        devices: u64,
        /// When the backup was made, ms since the Unix epoch.
        backup_made_at_ms: u64,
        /// The device that made it.
        backup_made_by: String,
        /// The recovery key that opened it.
        recovery_key: String,
    },
}

/// A passkey in the trash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrashedPasskey {
    /// The passkey as `list` shows it.
    #[serde(flatten)]
    pub passkey: PasskeyInfo,
    /// When it was deleted, ms since the Unix epoch (the deleting device's clock).
    pub trashed_at_ms: u64,
    /// When this device purges it unless it is restored, ms since the Unix epoch (for a passkey another device
    /// purged: when this device destroys the keys that still open it).
    pub purge_at_ms: u64,
    /// Another device purged it (or deleted it outright); this device keeps it restorable for a while, unless
    /// the purge was approved with the PIN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub purged: bool,
    /// The device that purged it (`None` for a deletion that names no device: no honest client makes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_by: Option<String>,
    /// Another device's changes replaced this passkey's content (or made it unreadable): this is its last good
    /// version (`trashedAtMs`: when this device saw it replaced), which restoring puts back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub altered: bool,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditInfo {
    /// When, ms since the Unix epoch (the acting device's clock).
    pub at_ms: u64,
    /// The acting device's id.
    pub device_id: String,
    /// Its name, if its entry is readable here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// `device-paired`, `device-removed`, `device-renamed`, `key-rotated`, `passkey-trashed`,
    /// `passkey-restored` or `passkey-purged` (`event-N` for an event of a later release).
    pub event: String,
    /// What it acted on: a device id, a passkey's record id or a key epoch.
    pub subject: String,
    /// What the subject is, when this device knows it (a device's name; a passkey's rpId, user name and
    /// label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_name: Option<String>,
    /// The entry is signed by the device it names, a member when it wrote it, and unaltered.
    pub verified: bool,
    /// Why it is not verified (`verified` false): forged, or altered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One entry of the device table as `deviceList` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInfo {
    /// Its device id (libp2p peer id).
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// Whether it is the device that answers.
    pub this_device: bool,
    /// Whether it is connected now.
    pub connected: bool,
    /// When a sync message from it was last applied, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// The device that added it (absent for the vault's first device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<String>,
    /// When it was added, ms since the Unix epoch.
    pub added_at_ms: u64,
    /// `active`, `removed` or `invalid`.
    pub state: DeviceState,
    /// Who removed it (state `removed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
    /// When it was removed, ms since the Unix epoch (state `removed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at_ms: Option<u64>,
    /// Why the entry is ignored (state `invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Whether the entry is signed by the device that added it (entries from before signatures are not).
    pub signed: bool,
    /// The one vault-key epoch the device keeps, as it last said: it has destroyed every older key (absent while
    /// it keeps several, e.g. until everything is re-encrypted after a rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_epoch: Option<u32>,
    /// A recovery key (derived from a recovery phrase), not a device: it never connects.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recovery: bool,
}

/// Where a device stands in the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceState {
    /// A member: it may connect and gets new keys.
    Active,
    /// Removed: refused everywhere, gets no new keys.
    Removed,
    /// The entry does not verify and is ignored.
    Invalid,
}

/// One step of a pairing, as both devices report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum PairEvent {
    /// The invitation is open; waiting for a device to join (inviter), or dialling the inviter (joiner).
    Waiting,
    /// The other device connected and the handshake started.
    PeerConnected {
        /// Its device id (peer id).
        peer: String,
    },
    /// The handshake finished: compare this short authentication string on both devices.
    Sas {
        /// Six digits in two groups, e.g. `"042 917"`.
        sas: String,
    },
    /// The inviter waits for `pairConfirm`.
    AwaitingConfirmation,
    /// A pairing attempt failed but the invitation stays open (inviter only).
    AttemptFailed {
        /// Why.
        reason: String,
        /// Attempts left before the invitation dies.
        attempts_left: u32,
    },
    /// Paired.
    Done {
        /// The other device's id.
        device_id: String,
        /// The other device's name.
        name: String,
        /// Joiner: passkeys this device held that moved into the joined vault.
        #[serde(default, skip_serializing_if = "is_zero")]
        merged: u64,
    },
    /// The pairing ended without pairing anything; nothing changed.
    Failed {
        /// Why, for the person.
        reason: String,
    },
}

impl ResponseBody {
    /// The wire `"type"` of this response.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Get { .. } => "get",
            Self::List { .. } => "list",
            Self::Delete { .. } => "delete",
            Self::Rename { .. } => "rename",
            Self::Status { .. } => "status",
            Self::SetPin {} => "setPin",
            Self::PairInvite { .. } => "pairInvite",
            Self::PairJoin {} => "pairJoin",
            Self::PairProgress { .. } => "pairProgress",
            Self::PairConfirm {} => "pairConfirm",
            Self::PairCancel {} => "pairCancel",
            Self::DeviceList { .. } => "deviceList",
            Self::DeviceRename {} => "deviceRename",
            Self::DeviceRemove { .. } => "deviceRemove",
            Self::TrashList { .. } => "trashList",
            Self::TrashRestore { .. } => "trashRestore",
            Self::TrashPurge { .. } => "trashPurge",
            Self::Audit { .. } => "audit",
            Self::RecoverySet { .. } => "recoverySet",
            Self::Backup { .. } => "backup",
            Self::BackupRead { .. } => "backupRead",
            Self::RestoreWrite { .. } => "restoreWrite",
            Self::Restore { .. } => "restore",
        }
    }
}

/// The longest label `rename` accepts, in bytes.
pub const MAX_LABEL: usize = 256;

/// One passkey as `list` shows it. No key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasskeyInfo {
    /// The credential id.
    pub credential_id: Base64Url,
    /// The relying party id it is scoped to.
    pub rp_id: String,
    /// The account name.
    pub user_name: String,
    /// The account's display name.
    pub user_display_name: String,
    /// The relying party's user handle.
    pub user_handle: Base64Url,
    /// A label the user gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether another paired device is known to hold it (the BS flag).
    pub backed_up: bool,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusInfo {
    /// Daemon version.
    pub version: String,
    /// The caller's uid, i.e. whose vault this is.
    pub uid: u32,
    /// The vault's id.
    pub vault_id: String,
    /// Number of passkeys in the vault.
    pub passkeys: u64,
    /// Which keystore seals the device secrets (`"tpm"` or `"software"`).
    pub keystore: String,
    /// Set when secrets are not TPM-protected, for display to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore_warning: Option<String>,
    /// Whether a PIN is set.
    pub pin_set: bool,
    /// PIN attempts left before lockout.
    pub pin_attempts_left: u32,
    /// Remaining lockout, if the PIN is locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_locked_for_ms: Option<u64>,
    /// The TPM that seals the device secrets, when the keystore is `"tpm"`. Absent from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmStatus>,
    /// This device's id in the vault's device table (its libp2p peer id). Absent from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The multiaddrs the daemon listens on for paired devices (empty when networking is off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen_addrs: Vec<String>,
    /// The other devices of the vault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerInfo>,
    /// Why networking (pairing and sync) is off when the daemon's mode, not its config, turned it off: the
    /// system service does not sync yet. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_off: Option<String>,
    /// Vault keys of epochs before the current one that this device still keeps, and why. Absent when it keeps
    /// the current one alone (and from older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_keys: Option<OldKeysInfo>,
    /// Recovery and backups. Absent from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryInfo>,
}

/// Recovery keys and backups, as `status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryInfo {
    /// The vault's recovery keys (empty: recovery is not set up).
    #[serde(default)]
    pub keys: Vec<RecoveryKeyInfo>,
    /// The devices this device trusts without a signature chain: what a new recovery key vouches for.
    #[serde(default)]
    pub anchors: Vec<String>,
    /// Where this device writes automatic backups (`[backup] dir`), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<String>,
    /// When this device last wrote a backup, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_at_ms: Option<u64>,
    /// That backup's file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_file: Option<String>,
    /// When this device was restored from a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at_ms: Option<u64>,
}

/// One recovery key of the vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryKeyInfo {
    /// Its member id.
    pub recovery_key: String,
    /// When it was set, ms since the Unix epoch.
    pub since_ms: u64,
}

/// Old vault keys a device keeps (what a purge destroys once nothing needs them; see docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OldKeysInfo {
    /// How many epochs before the current one.
    pub epochs: u64,
    /// Why: `kept` (the keeping time, `trash_days`, until `untilMs`, unless a purge is approved with the PIN),
    /// `unacknowledged` (devices in `waitingFor` have not acknowledged the current epoch), `still-used` (a value
    /// in the document is still under an old epoch), `rotating` (the current epoch is not settled here yet) or
    /// `pending` (to be destroyed after the next change).
    pub reason: String,
    /// For `kept`: when the keeping time ends, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// For `unacknowledged`: the device ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

/// One paired device as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    /// Its device id (libp2p peer id).
    pub device_id: String,
    /// Its name from the device table.
    pub name: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// Its address on the current or last connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// When a sync message from it was last applied, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<u64>,
    /// Changes of this device it is not known to hold yet.
    pub pending_changes: u64,
    /// Sync bytes sent to it since the daemon started.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Sync bytes received from it since the daemon started.
    #[serde(default)]
    pub bytes_received: u64,
}

/// The TPM part of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmStatus {
    /// TPM2_PT_MANUFACTURER as ASCII, e.g. `"IBM"` (swtpm), `"IFX"`, `"INTC"`.
    pub manufacturer: String,
    /// TPM2_PT_FIRMWARE_VERSION_1 and _2 as `"a.b.c.d"` (high and low 16 bits of each).
    pub firmware: String,
    /// The sha256 PCRs that bind the seal; empty when the seal is not bound to PCRs.
    #[serde(default)]
    pub pcrs: Vec<u8>,
}

/// WebAuthn `DOMException` names the daemon answers with.
///
/// Serialized as exactly the variant name; an unknown name on input reads as `UnknownError`, so
/// older clients keep working when a newer daemon adds names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorName {
    /// User verification failed or was required, PIN locked, unknown credential, caller refused.
    NotAllowedError,
    /// An excluded credential already exists here.
    InvalidStateError,
    /// Origin and rpId do not match, or the origin is not secure.
    SecurityError,
    /// The request asks for something this authenticator does not do.
    NotSupportedError,
    /// A size or option constraint cannot be met.
    ConstraintError,
    /// The operation was cancelled.
    AbortError,
    /// The frame was not UTF-8 JSON.
    SyntaxError,
    /// The JSON was not a valid request.
    TypeError,
    /// A value was well-formed but unusable.
    DataError,
    /// The thing named (e.g. a device) does not exist.
    NotFoundError,
    /// Internal failure, or a name this version does not know.
    UnknownError,
}

impl ErrorName {
    /// Every name, in declaration order.
    pub const ALL: [ErrorName; 11] = [
        Self::NotAllowedError,
        Self::InvalidStateError,
        Self::SecurityError,
        Self::NotSupportedError,
        Self::ConstraintError,
        Self::AbortError,
        Self::SyntaxError,
        Self::TypeError,
        Self::DataError,
        Self::NotFoundError,
        Self::UnknownError,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAllowedError => "NotAllowedError",
            Self::InvalidStateError => "InvalidStateError",
            Self::SecurityError => "SecurityError",
            Self::NotSupportedError => "NotSupportedError",
            Self::ConstraintError => "ConstraintError",
            Self::AbortError => "AbortError",
            Self::SyntaxError => "SyntaxError",
            Self::TypeError => "TypeError",
            Self::DataError => "DataError",
            Self::NotFoundError => "NotFoundError",
            Self::UnknownError => "UnknownError",
        }
    }

    /// Parses a wire name; anything unrecognised becomes `UnknownError`.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == name)
            .unwrap_or(Self::UnknownError)
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(Self::from_name(&name))
    }
}

/// A failed request: a WebAuthn error name and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Which kind of failure.
    pub name: ErrorName,
    /// What went wrong, for humans. Never contains secrets.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(name: ErrorName, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for ErrorBody {}

/// A response frame.
///
/// `id` is `None` only when the server could not tell which request it answers (the frame was
/// not JSON, had no usable id, or the connection was refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The id of the request answered.
    pub id: Option<u64>,
    /// The answer.
    pub result: Result<ResponseBody, ErrorBody>,
}

impl Response {
    /// A successful response to request `id`.
    pub fn ok(id: u64, body: ResponseBody) -> Self {
        Self {
            id: Some(id),
            result: Ok(body),
        }
    }

    /// A failed response.
    pub fn error(id: Option<u64>, error: ErrorBody) -> Self {
        Self {
            id,
            result: Err(error),
        }
    }
}

#[derive(Serialize)]
struct OkWire<'a> {
    id: Option<u64>,
    ok: bool,
    #[serde(flatten)]
    body: &'a ResponseBody,
}

#[derive(Serialize)]
struct ErrWire<'a> {
    id: Option<u64>,
    ok: bool,
    error: &'a ErrorBody,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.result {
            Ok(body) => OkWire {
                id: self.id,
                ok: true,
                body,
            }
            .serialize(serializer),
            Err(error) => ErrWire {
                id: self.id,
                ok: false,
                error,
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::deserialize(deserializer)?;
        let id = match map.remove("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| de::Error::custom("`id` must be an unsigned integer or null"))?,
            ),
        };
        let ok = match map.remove("ok") {
            Some(Value::Bool(ok)) => ok,
            Some(_) => return Err(de::Error::custom("`ok` must be a boolean")),
            None => return Err(de::Error::missing_field("ok")),
        };
        let result = if ok {
            Ok(ResponseBody::deserialize(Value::Object(map)).map_err(de::Error::custom)?)
        } else {
            let error = map
                .remove("error")
                .ok_or_else(|| de::Error::missing_field("error"))?;
            Err(ErrorBody::deserialize(error).map_err(de::Error::custom)?)
        };
        Ok(Self { id, result })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::webauthn::*;

    /// Serializes `value` and checks it equals the literal `expected` JSON.
    fn assert_wire<T: Serialize>(value: &T, expected: &str) {
        let got: Value = serde_json::to_value(value).unwrap();
        let want: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(got, want);
    }

    /// Parses the literal, re-serializes it, and checks nothing changed.
    fn round_trip_request(literal: &str) -> Request {
        let parsed: Request = serde_json::from_str(literal).unwrap();
        assert_wire(&parsed, literal);
        parsed
    }

    fn round_trip_response(literal: &str) -> Response {
        let parsed: Response = serde_json::from_str(literal).unwrap();
        assert_wire(&parsed, literal);
        parsed
    }

    const CREATE_OPTIONS: &str = r#"{
        "rp": {"id": "example.com", "name": "Example"},
        "user": {"id": "dXNlci0x", "name": "alice@example.com", "displayName": "Alice"},
        "challenge": "Y2hhbGxlbmdl",
        "pubKeyCredParams": [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -257}],
        "timeout": 60000,
        "excludeCredentials": [{"type": "public-key", "id": "AQID", "transports": ["internal"]}],
        "authenticatorSelection": {"residentKey": "required", "requireResidentKey": true, "userVerification": "preferred"},
        "attestation": "none",
        "extensions": {"credProps": true}
    }"#;

    #[test]
    fn create_request() {
        let literal = format!(
            r#"{{"id": 7, "type": "create", "origin": "https://example.com", "pin": "1234", "options": {CREATE_OPTIONS}}}"#
        );
        let req = round_trip_request(&literal);
        assert_eq!(req.id, 7);
        let RequestBody::Create {
            origin,
            options,
            pin,
        } = req.body
        else {
            panic!("expected create");
        };
        assert_eq!(origin, "https://example.com");
        assert_eq!(pin.unwrap().as_str(), "1234");
        assert_eq!(options.rp.id.as_deref(), Some("example.com"));
        assert_eq!(options.user.id.as_bytes(), b"user-1");
        assert_eq!(options.user.display_name, "Alice");
        assert_eq!(options.challenge.as_bytes(), b"challenge");
        assert_eq!(options.pub_key_cred_params[0].alg, -7);
        assert_eq!(options.exclude_credentials[0].id.as_bytes(), [1, 2, 3]);
        let sel = options.authenticator_selection.unwrap();
        assert_eq!(sel.resident_key.as_deref(), Some("required"));
        assert!(sel.require_resident_key);
        assert_eq!(options.extensions.cred_props, Some(true));
    }

    #[test]
    fn get_request() {
        let req = round_trip_request(
            r#"{"id": 8, "type": "get", "origin": "https://login.example.com",
                "options": {"challenge": "AAEC", "rpId": "example.com", "timeout": 30000,
                            "allowCredentials": [{"type": "public-key", "id": "BAUG"}],
                            "userVerification": "required"}}"#,
        );
        let RequestBody::Get { options, pin, .. } = req.body else {
            panic!("expected get");
        };
        assert!(pin.is_none());
        assert_eq!(options.rp_id.as_deref(), Some("example.com"));
        assert_eq!(options.allow_credentials[0].id.as_bytes(), [4, 5, 6]);
        assert!(options.allow_credentials[0].transports.is_empty());
        assert_eq!(options.user_verification.as_deref(), Some("required"));
    }

    #[test]
    fn list_delete_status_set_pin_requests() {
        let req = round_trip_request(r#"{"id": 1, "type": "list", "rpId": "example.com"}"#);
        assert!(
            matches!(req.body, RequestBody::List { rp_id: Some(ref r), offset: 0, limit: None } if r == "example.com")
        );
        let req = round_trip_request(r#"{"id": 2, "type": "list"}"#);
        assert!(matches!(req.body, RequestBody::List { rp_id: None, .. }));
        let req = round_trip_request(r#"{"id": 2, "type": "list", "offset": 1000, "limit": 10}"#);
        assert!(matches!(
            req.body,
            RequestBody::List {
                rp_id: None,
                offset: 1000,
                limit: Some(10)
            }
        ));
        let req = round_trip_request(r#"{"id": 3, "type": "delete", "credentialId": "AQID"}"#);
        assert!(
            matches!(req.body, RequestBody::Delete { ref credential_id } if credential_id.as_bytes() == [1, 2, 3])
        );
        let req = round_trip_request(r#"{"id": 4, "type": "status"}"#);
        assert!(matches!(req.body, RequestBody::Status));
        let req = round_trip_request(
            r#"{"id": 5, "type": "setPin", "pin": "9999", "currentPin": "1234"}"#,
        );
        let RequestBody::SetPin { pin, current_pin } = req.body else {
            panic!("expected setPin");
        };
        assert_eq!(pin.as_str(), "9999");
        assert_eq!(current_pin.unwrap().as_str(), "1234");
        round_trip_request(r#"{"id": 6, "type": "setPin", "pin": "9999"}"#);
    }

    #[test]
    fn request_kinds_match_the_wire_type() {
        for literal in [
            r#"{"id": 1, "type": "list"}"#,
            r#"{"id": 1, "type": "delete", "credentialId": ""}"#,
            r#"{"id": 1, "type": "status"}"#,
            r#"{"id": 1, "type": "setPin", "pin": ""}"#,
        ] {
            let req: Request = serde_json::from_str(literal).unwrap();
            let value: Value = serde_json::from_str(literal).unwrap();
            assert_eq!(value["type"], req.body.kind());
        }
    }

    #[test]
    fn debug_of_a_request_hides_pins() {
        let req: Request = serde_json::from_str(
            r#"{"id": 5, "type": "setPin", "pin": "secret-pin-9", "currentPin": "old-pin-1"}"#,
        )
        .unwrap();
        let debug = format!("{req:?}");
        assert!(!debug.contains("secret-pin-9"), "{debug}");
        assert!(!debug.contains("old-pin-1"), "{debug}");
    }

    #[test]
    fn invalid_requests_are_rejected() {
        for bad in [
            r#"{"id": 1, "type": "frobnicate"}"#,
            r#"{"id": 1}"#,
            r#"{"type": "status"}"#,
            r#"{"id": -1, "type": "status"}"#,
            r#"{"id": "1", "type": "status"}"#,
            r#"{"id": 1, "type": "delete"}"#,
            r#"{"id": 1, "type": "delete", "credentialId": "+/+/"}"#,
            r#"{"id": 1, "type": "setPin", "pin": 1234}"#,
            r#"[1, 2]"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    fn registration() -> RegistrationResponseJson {
        RegistrationResponseJson {
            id: "AQID".into(),
            raw_id: Base64Url(vec![1, 2, 3]),
            response: AuthenticatorAttestationResponseJson {
                client_data_json: Base64Url(b"{}".to_vec()),
                authenticator_data: Base64Url(vec![9; 3]),
                transports: vec!["internal".into(), "hybrid".into()],
                public_key: Some(Base64Url(vec![0x30, 0x59])),
                public_key_algorithm: -7,
                attestation_object: Base64Url(vec![0xA3]),
            },
            authenticator_attachment: Some("platform".into()),
            client_extension_results: ClientExtensionResults {
                cred_props: Some(CredProps { rk: true }),
            },
            type_: PUBLIC_KEY_TYPE.into(),
        }
    }

    #[test]
    fn create_response() {
        let literal = r#"{"id": 7, "ok": true, "type": "create", "credential": {
            "id": "AQID", "rawId": "AQID",
            "response": {"clientDataJSON": "e30", "authenticatorData": "CQkJ",
                         "transports": ["internal", "hybrid"], "publicKey": "MFk",
                         "publicKeyAlgorithm": -7, "attestationObject": "ow"},
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {"credProps": {"rk": true}},
            "type": "public-key"}}"#;
        let resp = Response::ok(
            7,
            ResponseBody::Create {
                credential: registration(),
            },
        );
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);
    }

    #[test]
    fn create_response_without_optional_parts() {
        let mut credential = registration();
        credential.response.public_key = None;
        credential.authenticator_attachment = None;
        credential.client_extension_results = ClientExtensionResults::default();
        let resp = Response::ok(7, ResponseBody::Create { credential });
        let literal = r#"{"id": 7, "ok": true, "type": "create", "credential": {
            "id": "AQID", "rawId": "AQID",
            "response": {"clientDataJSON": "e30", "authenticatorData": "CQkJ",
                         "transports": ["internal", "hybrid"],
                         "publicKeyAlgorithm": -7, "attestationObject": "ow"},
            "clientExtensionResults": {},
            "type": "public-key"}}"#;
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);
    }

    #[test]
    fn get_response() {
        let literal = r#"{"id": 8, "ok": true, "type": "get", "credential": {
            "id": "AQID", "rawId": "AQID",
            "response": {"clientDataJSON": "e30", "authenticatorData": "CQkJ",
                         "signature": "MEQ", "userHandle": "dXNlci0x"},
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "type": "public-key"}}"#;
        let resp = Response::ok(
            8,
            ResponseBody::Get {
                credential: AuthenticationResponseJson {
                    id: "AQID".into(),
                    raw_id: Base64Url(vec![1, 2, 3]),
                    response: AuthenticatorAssertionResponseJson {
                        client_data_json: Base64Url(b"{}".to_vec()),
                        authenticator_data: Base64Url(vec![9; 3]),
                        signature: Base64Url(vec![0x30, 0x44]),
                        user_handle: Some(Base64Url(b"user-1".to_vec())),
                    },
                    authenticator_attachment: Some("platform".into()),
                    client_extension_results: ClientExtensionResults::default(),
                    type_: PUBLIC_KEY_TYPE.into(),
                },
            },
        );
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);
    }

    #[test]
    fn list_response() {
        let literal = r#"{"id": 1, "ok": true, "type": "list", "passkeys": [
            {"credentialId": "AQID", "rpId": "example.com", "userName": "alice@example.com",
             "userDisplayName": "Alice", "userHandle": "dXNlci0x", "label": "work laptop",
             "createdAtMs": 1700000000000, "backedUp": true},
            {"credentialId": "BAUG", "rpId": "example.org", "userName": "bob",
             "userDisplayName": "Bob", "userHandle": "Ym9i",
             "createdAtMs": 1700000000001, "backedUp": false}], "total": 2}"#;
        let resp = Response::ok(
            1,
            ResponseBody::List {
                passkeys: vec![
                    PasskeyInfo {
                        credential_id: Base64Url(vec![1, 2, 3]),
                        rp_id: "example.com".into(),
                        user_name: "alice@example.com".into(),
                        user_display_name: "Alice".into(),
                        user_handle: Base64Url(b"user-1".to_vec()),
                        label: Some("work laptop".into()),
                        created_at_ms: 1_700_000_000_000,
                        backed_up: true,
                    },
                    PasskeyInfo {
                        credential_id: Base64Url(vec![4, 5, 6]),
                        rp_id: "example.org".into(),
                        user_name: "bob".into(),
                        user_display_name: "Bob".into(),
                        user_handle: Base64Url(b"bob".to_vec()),
                        label: None,
                        created_at_ms: 1_700_000_000_001,
                        backed_up: false,
                    },
                ],
                total: 2,
            },
        );
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);
    }

    #[test]
    fn delete_status_set_pin_responses() {
        let literal = r#"{"id": 3, "ok": true, "type": "delete", "deleted": true}"#;
        let resp = Response::ok(3, ResponseBody::Delete { deleted: true });
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);

        let literal = r#"{"id": 4, "ok": true, "type": "status", "status": {
            "version": "0.1.0", "uid": 1000, "vaultId": "v-1", "passkeys": 12,
            "keystore": "software", "keystoreWarning": "no TPM: secrets are sealed in software",
            "pinSet": true, "pinAttemptsLeft": 0, "pinLockedForMs": 30000}}"#;
        let resp = Response::ok(
            4,
            ResponseBody::Status {
                status: StatusInfo {
                    version: "0.1.0".into(),
                    uid: 1000,
                    vault_id: "v-1".into(),
                    passkeys: 12,
                    keystore: "software".into(),
                    keystore_warning: Some("no TPM: secrets are sealed in software".into()),
                    pin_set: true,
                    pin_attempts_left: 0,
                    pin_locked_for_ms: Some(30_000),
                    tpm: None,
                    device_id: None,
                    listen_addrs: Vec::new(),
                    peers: Vec::new(),
                    network_off: None,
                    old_keys: None,
                    recovery: None,
                },
            },
        );
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);

        let literal = r#"{"id": 4, "ok": true, "type": "status", "status": {
            "version": "0.1.0", "uid": 1000, "vaultId": "v-1", "passkeys": 0, "keystore": "tpm",
            "pinSet": false, "pinAttemptsLeft": 5,
            "tpm": {"manufacturer": "IBM", "firmware": "8217.4131.22.13878", "pcrs": [7, 14]}}}"#;
        let resp = Response::ok(
            4,
            ResponseBody::Status {
                status: StatusInfo {
                    version: "0.1.0".into(),
                    uid: 1000,
                    vault_id: "v-1".into(),
                    passkeys: 0,
                    keystore: "tpm".into(),
                    keystore_warning: None,
                    pin_set: false,
                    pin_attempts_left: 5,
                    pin_locked_for_ms: None,
                    tpm: Some(TpmStatus {
                        manufacturer: "IBM".into(),
                        firmware: "8217.4131.22.13878".into(),
                        pcrs: vec![7, 14],
                    }),
                    device_id: None,
                    listen_addrs: Vec::new(),
                    peers: Vec::new(),
                    network_off: None,
                    old_keys: None,
                    recovery: None,
                },
            },
        );
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);

        let literal = r#"{"id": 5, "ok": true, "type": "setPin"}"#;
        let resp = Response::ok(5, ResponseBody::SetPin {});
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);
    }

    #[test]
    fn error_responses() {
        let literal = r#"{"id": 9, "ok": false, "error": {"name": "NotAllowedError", "message": "user verification required"}}"#;
        let resp = Response::error(
            Some(9),
            ErrorBody::new(ErrorName::NotAllowedError, "user verification required"),
        );
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);

        let literal =
            r#"{"id": null, "ok": false, "error": {"name": "SyntaxError", "message": "bad"}}"#;
        let resp = Response::error(None, ErrorBody::new(ErrorName::SyntaxError, "bad"));
        assert_wire(&resp, literal);
        assert_eq!(round_trip_response(literal), resp);
    }

    #[test]
    fn every_error_name_round_trips_and_unknown_names_degrade() {
        for name in ErrorName::ALL {
            let json = serde_json::to_string(&name).unwrap();
            assert_eq!(json, format!("\"{}\"", name.as_str()));
            assert_eq!(serde_json::from_str::<ErrorName>(&json).unwrap(), name);
        }
        assert_eq!(
            serde_json::from_str::<ErrorName>(r#""QuotaExceededError""#).unwrap(),
            ErrorName::UnknownError
        );
        let resp: Response = serde_json::from_str(
            r#"{"id": 1, "ok": false, "error": {"name": "FancyNewError", "message": "m"}}"#,
        )
        .unwrap();
        assert_eq!(resp.result.unwrap_err().name, ErrorName::UnknownError);
    }

    #[test]
    fn malformed_responses_are_rejected() {
        for bad in [
            r#"{"id": 1, "type": "delete", "deleted": true}"#,
            r#"{"id": 1, "ok": "yes", "type": "delete", "deleted": true}"#,
            r#"{"id": -4, "ok": true, "type": "delete", "deleted": true}"#,
            r#"{"id": 1, "ok": false}"#,
            r#"{"id": 1, "ok": true, "type": "nope"}"#,
            r#"{"id": 1, "ok": true, "type": "delete"}"#,
        ] {
            assert!(serde_json::from_str::<Response>(bad).is_err(), "{bad}");
        }
    }

    /// What a page would pass to `PublicKeyCredential.parseCreationOptionsFromJSON`, as produced
    /// by a typical relying-party library, with fields this crate does not know.
    #[test]
    fn realistic_browser_creation_options() {
        let json = r#"{
            "rp": {"name": "Example Corp", "id": "login.example.com", "icon": "https://x/y.png"},
            "user": {
                "id": "3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "name": "alice@example.com",
                "displayName": "Alice Liddell"
            },
            "challenge": "gqVqGrzAQ4mCUsk7rRvg0mi4YI6y2r7wCq0t3gAPmrE",
            "pubKeyCredParams": [
                {"alg": -8, "type": "public-key"},
                {"alg": -7, "type": "public-key"},
                {"alg": -257, "type": "public-key"}
            ],
            "timeout": 300000,
            "excludeCredentials": [
                {"id": "lLTXAjc5GhAqW_Dnd_OQ5g", "type": "public-key", "transports": ["internal", "hybrid"]}
            ],
            "authenticatorSelection": {
                "residentKey": "required",
                "requireResidentKey": true,
                "userVerification": "required",
                "authenticatorAttachment": "platform"
            },
            "hints": ["client-device"],
            "attestation": "none",
            "attestationFormats": [],
            "extensions": {"credProps": true, "prf": {"eval": {"first": "AAAA"}}},
            "mediation": "conditional",
            "someFutureField": {"nested": [1, 2, 3]}
        }"#;
        let options: PublicKeyCredentialCreationOptionsJson = serde_json::from_str(json).unwrap();
        assert_eq!(options.rp.id.as_deref(), Some("login.example.com"));
        assert_eq!(options.user.id.as_bytes().len(), 32);
        assert_eq!(options.user.id.as_bytes()[..4], [0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(options.challenge.as_bytes().len(), 32);
        let algs: Vec<i64> = options.pub_key_cred_params.iter().map(|p| p.alg).collect();
        assert_eq!(algs, [-8, -7, -257]);
        assert!(
            options
                .pub_key_cred_params
                .iter()
                .all(|p| p.type_ == "public-key")
        );
        assert_eq!(options.timeout, Some(300_000));
        assert_eq!(options.exclude_credentials.len(), 1);
        assert_eq!(
            options.exclude_credentials[0].transports,
            ["internal", "hybrid"]
        );
        let sel = options.authenticator_selection.as_ref().unwrap();
        assert_eq!(sel.authenticator_attachment.as_deref(), Some("platform"));
        assert_eq!(sel.user_verification.as_deref(), Some("required"));
        assert_eq!(options.hints, ["client-device"]);
        assert_eq!(options.attestation.as_deref(), Some("none"));
        assert_eq!(options.extensions.cred_props, Some(true));
        assert_eq!(
            options.extensions.other.get("prf"),
            Some(&json!({"eval": {"first": "AAAA"}}))
        );

        // The same options, wrapped in a request, survive the flattened request envelope.
        let request = format!(
            r#"{{"id": 42, "type": "create", "origin": "https://login.example.com", "options": {json}}}"#
        );
        let req: Request = serde_json::from_str(&request).unwrap();
        let RequestBody::Create {
            options: wrapped, ..
        } = req.body
        else {
            panic!("expected create");
        };
        assert_eq!(wrapped, options);
    }

    #[test]
    fn minimal_creation_options_take_defaults() {
        let options: PublicKeyCredentialCreationOptionsJson = serde_json::from_str(
            r#"{"rp": {"name": "X"}, "user": {"id": "AA", "name": "u", "displayName": "U"},
                "challenge": "AA", "pubKeyCredParams": []}"#,
        )
        .unwrap();
        assert!(options.rp.id.is_none());
        assert!(options.exclude_credentials.is_empty());
        assert!(options.authenticator_selection.is_none());
        assert!(options.extensions.is_empty());
        assert_wire(
            &options,
            r#"{"rp": {"name": "X"}, "user": {"id": "AA", "name": "u", "displayName": "U"},
                "challenge": "AA", "pubKeyCredParams": []}"#,
        );
    }

    #[test]
    fn error_body_display() {
        let e = ErrorBody::new(ErrorName::SecurityError, "origin does not match rpId");
        assert_eq!(e.to_string(), "SecurityError: origin does not match rpId");
    }
}
