//! The Passmesh daemon library: everything `passmeshd` and the `passmesh` CLI do, minus argument parsing.
//!
//! It wires the [`passmesh_crdt`] vault and the [`passmesh_ipc`] socket protocol together and owns the parts
//! with business logic: the WebAuthn authenticator, the per-device PIN, durable storage in sled and the
//! keystore that protects the vault keys, and replicates the vault to paired devices over the
//! [`passmesh_transport`] host. It does not implement the CRDT, the wire protocol or the libp2p stack.
//!
//! Module map:
//! - [`config`]: the TOML config file, command-line overrides and XDG defaults.
//! - [`keystore`]: seals and unseals the device's secrets (TPM through tss-esapi, or software).
//! - [`migrate`]: moves a vault to another keystore or re-seals it, through a fresh database.
//! - [`store`]: sled storage of one user's vault document, sealed keyring and PIN state.
//! - [`pin`]: argon2id PIN hashing and the attempt counter with lockout.
//! - [`origin`]: origin and rpId validation (public suffix list).
//! - [`authenticator`]: authenticator data, attestation objects, client data and ES256 signatures.
//! - [`vault`]: the actor owning one user's vault, store, PIN state and per-peer sync states.
//! - [`sync`]: the network tasks between the transport host and the vault actor.
//! - [`pairing`]: join material export/import with the daemon stopped (the internal API pairing builds on).
//! - [`pair`]: pairing by code between running daemons (invitation, `XXpsk3` handshake, key wrapping).
//! - [`service`]: the socket request handler and the daemon's run loop.

pub mod authenticator;
mod cbor;
pub mod config;
pub mod custody;
pub mod ids;
pub mod layout;
pub mod net;
pub mod notify;
pub mod origin;
pub mod pairing;
pub mod pin;
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
