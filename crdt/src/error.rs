//! The crate's error type.

use crate::{DeviceId, Epoch, RecordId};

/// What can go wrong with a vault. Messages never contain plaintext or key material.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A record field failed authentication: it was tampered with, moved, or encrypted under another key.
    #[error("record {record}: field {field} does not decrypt (tampered, moved or wrong key)")]
    Decrypt {
        /// The record.
        record: RecordId,
        /// The field that failed.
        field: &'static str,
    },
    /// A device entry failed authentication: tampered with, moved, or encrypted under another key.
    #[error("device {device}: field {field} does not decrypt (tampered, moved or wrong key)")]
    DeviceDecrypt {
        /// The device.
        device: DeviceId,
        /// The field that failed.
        field: &'static str,
    },
    /// The keyring has no key for this epoch.
    #[error("no key for epoch {0}")]
    UnknownEpoch(Epoch),
    /// The keyring does not match the key check stored in the vault.
    #[error("the keyring does not match this vault")]
    WrongKey,
    /// No record with this id.
    #[error("no record {0}")]
    NotFound(RecordId),
    /// Bytes or document contents that are not a well-formed vault (or sync message, or sync state).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A value handed in by the caller is out of bounds (e.g. a private key that is not 32 bytes).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// A peer sent changes that do not descend from this vault's genesis (another vault's document).
    #[error("changes from another vault")]
    ForeignVault,
    /// The device table has no readable entry for this device.
    #[error("no device {0} in the device table")]
    UnknownDevice(DeviceId),
    /// The operation needs this replica's device (see `Vault::load_as`), and none was given.
    #[error("this replica has no device keys")]
    NoLocalDevice,
    /// The operation needs this device to be an active member, and it is not (removed, or not in the table).
    #[error("this device is not an active member of the vault")]
    NotAMember,
    /// The recovery key is not an active recovery key of this vault (another vault's, or one replaced or removed
    /// since).
    #[error("this recovery key is not a recovery key of the vault")]
    NotRecoveryKey,
    /// Automerge refused an operation.
    #[error("automerge: {0}")]
    Automerge(String),
}

impl From<automerge::AutomergeError> for Error {
    fn from(e: automerge::AutomergeError) -> Self {
        Error::Automerge(e.to_string())
    }
}
