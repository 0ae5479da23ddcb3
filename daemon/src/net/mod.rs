//! The daemon's network side, over the one [`passmesh_transport`] host: routing vault-framed sync messages
//! between the host and the vault actors, and pairing new devices by code.
//!
//! - [`wire`]: the vault-framed message format of `/passmesh/sync/2`.
//! - [`router`]: starts the host, routes sync messages and connection events to the vaults that share the
//!   peer, keeps the gate at the union of their paired sets.
//! - [`pairing`]: the pairing service: an invitation (inviter) or a join (joiner), one at a time per machine.

pub mod pairing;
pub mod router;
pub mod wire;
