//! Passmesh transport: the libp2p host that connects a user's paired devices.
//!
//! It moves opaque byte messages between paired devices over `/passmesh/sync/2` and knows nothing of passkeys
//! or vaults. A [`Host`] runs one libp2p swarm (TCP and QUIC, Noise, Yamux, identify, ping, mDNS, relay client
//! and DCUtR) in a tokio task; the application talks to it through a cloneable [`Handle`] and reads [`Event`]s
//! from a bounded channel.
//!
//! Security: connections are gated by peer id right after the Noise handshake. A peer outside the paired set
//! ([`Handle::set_paired`]) is disconnected before any other protocol runs, so no sync byte is sent to or
//! accepted from it. Everything is bounded: connections, streams, message size, per-peer outbound queues.
//!
//! Pairing by code: [`pairing`] holds the invitation URI and the `Noise_XXpsk3` handshake (snow), sans-IO; the
//! host carries its messages on `/passmesh/pair/1` and opens the gate narrowly for it (one unknown peer at a
//! time, only while an invitation is open, never with a sync stream, closed at a deadline).
//!
//! Not here: the sync state machine, persistence, the vault keys and the device table; the daemon owns those.
//!
//! Modules:
//! - `config`: [`Config`], [`Limits`], [`Backoff`].
//! - `identity`: [`Identity`], the device's ed25519 key, exportable as 32 secret bytes for the keystore.
//! - `host`: [`Host::start`], [`Handle`], [`Event`]: the swarm actor, redial with backoff, per-peer queues.
//! - `gate`: the connection-gating behaviour.
//! - `codec`: length-limited framing of sync and pairing messages.
//! - [`pairing`]: [`pairing::Invitation`] (URI), [`pairing::PairKey`], the handshake and its wire messages.
//! - `error`: [`Error`].

mod codec;
mod config;
mod error;
mod gate;
mod host;
mod identity;
pub mod pairing;

pub use codec::PROTOCOL;
pub use config::{Backoff, Config, Limits};
pub use error::Error;
pub use host::{Event, Handle, Host, PairRequestId, RefuseReason, SendFailure};
pub use identity::Identity;
pub use libp2p::{Multiaddr, PeerId};
pub use zeroize::Zeroizing;
