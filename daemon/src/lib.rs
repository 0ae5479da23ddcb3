//! The Passmesh daemon library: everything `passmeshd` and the `passmesh` CLI do, minus argument parsing.
//!
//! It wires the [`passmesh_crdt`] vault and the [`passmesh_ipc`] socket protocol together and owns the parts
//! with business logic: the WebAuthn authenticator, the per-device PIN, durable storage in sled and the
//! keystore that protects the vault keys, and replicates the vault to paired devices over the
//! [`passmesh_transport`] host. It does not implement the CRDT, the wire protocol or the libp2p stack.
//!
//! Module map, from the socket down (a module uses only those below it; no cycles):
//! - [`service`]: the socket request handler (caller uid → that user's vault), the WebAuthn steps and the run
//!   loop (start-up, reload, shutdown), one path for user and system mode over one user registry.
//! - [`net`]: the transport host's router (vault-framed sync messages to and from the vault actors) and
//!   pairing by code (inviter and joiner).
//! - [`vault`]: the actor owning one user's vault: document, store, PIN state, device table, and its
//!   sans-IO [`vault::replication`] with the paired devices.
//! - [`authenticator`]: authenticator data, attestation objects, client data and ES256 signatures;
//!   [`origin`]: origin and rpId validation (public suffix list).
//! - [`pin`]: argon2id PIN hashing and the attempt counter with lockout (a pure state machine).
//! - [`recovery`]: the 24-word recovery phrase and the key derived from it; [`backup`]: the age-encrypted backup
//!   file (format, sealing, opening, atomic writes, rotation); [`clock`]: UTC dates.
//! - [`names`]: a passkey's label and a device's name, parsed where they enter.
//! - [`config`]: the TOML config file, command-line overrides and XDG defaults; [`notify`]: sd_notify.
//! - [`custody`]: the keys: keystore (TPM or software), sealing, re-sealing and migrating, the device and machine
//!   identities, wrapping the keyring to a joining device.
//! - [`store`]: sled storage of one vault (document chunks, typed metadata with explicit durability, sealed
//!   files); [`layout`]: where everything lives under the state directory; [`ids`]: the one conversion
//!   between device ids and peer ids.
//! - `pairing` (feature `test-utils`): joining devices with the daemons stopped, for the end-to-end tests.

pub mod authenticator;
pub mod backup;
mod cbor;
pub mod clock;
pub mod config;
pub mod custody;
pub mod ids;
pub mod layout;
pub mod names;
pub mod net;
pub mod notify;
pub mod origin;
#[cfg(feature = "test-utils")]
pub mod pairing;
pub mod pin;
pub mod recovery;
pub mod service;
pub mod store;
pub mod vault;

/// Milliseconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
