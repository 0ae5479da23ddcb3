//! The Passmesh vault: one user's passkeys and device table in an automerge document, every sensitive field
//! encrypted with XChaCha20-Poly1305 under the vault key of an epoch.
//!
//! The document's structure (record ids, tombstones, epochs, device public keys) is visible to anyone holding
//! a replica; contents (credential ids, rp ids, user data, private keys, times, labels) are not. Each value is
//! bound to its vault, record or device, field and epoch by its associated data, so ciphertexts cannot be
//! swapped around undetected. Decrypted records live in an in-memory index, so reads never decrypt.
//!
//! Sync is sans-IO: [`Vault::generate_sync_message`] and [`Vault::receive_sync_message`] move opaque bytes,
//! the caller keeps one [`SyncState`] per peer and owns the transport. This crate does no I/O and knows nothing
//! of sockets, pairing or the TPM; the only threads it starts are scoped ones that decrypt in parallel during
//! [`Vault::load`] and finish before it returns. Removing a device rotates the vault key: see [`members`] and
//! [`Vault::remove_member`].
//!
//! Modules:
//! - [`keys`] — [`VaultKey`], [`Epoch`], [`Keyring`].
//! - [`ids`] — [`RecordId`], [`VaultId`], [`DeviceId`], [`CredentialId`].
//! - [`record`] — [`NewPasskey`], [`Passkey`], [`Device`].
//! - [`members`] — [`LocalDevice`], [`Member`], [`MemberState`]: signed membership, removals, epoch-key wraps.
//! - [`vault`] — [`Vault`], [`SyncState`].
//! - [`audit`] — the signed audit log; [`approval`] — [`PinKey`]: the user's approval of a purge.
//! - [`error`] — [`Error`].
//! - private: `crypto` (field encryption), `doc` (document shape), `index` (the in-memory index).

pub mod approval;
pub mod audit;
mod crypto;
mod doc;
pub mod error;
pub mod ids;
mod index;
pub mod keys;
pub mod members;
pub mod record;
pub mod vault;

pub use approval::PinKey;
pub use audit::{AuditEntry, Event, Verdict};
pub use error::Error;
pub use ids::{CredentialId, DeviceId, RecordId, VaultId};
pub use keys::{Epoch, Keyring, VaultKey};
pub use members::{LocalDevice, Member, MemberState, device_id_of};
pub use record::{Device, MemberKind, NewPasskey, Passkey};
pub use vault::{Lost, Maintenance, OldKeys, SyncState, Vault};
