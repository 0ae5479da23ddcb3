//! The crate's error type.

use libp2p::{Multiaddr, PeerId};

/// Everything that can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The secret bytes do not form a valid ed25519 key.
    #[error("invalid identity secret")]
    InvalidIdentity,
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A relay address lacks its `/p2p/<peer id>` suffix.
    #[error("relay address {0} has no /p2p/ peer id")]
    RelayWithoutPeerId(Multiaddr),
    /// The libp2p transport stack could not be built.
    #[error("cannot build the libp2p stack: {0}")]
    Build(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address that was asked for.
        addr: Multiaddr,
        /// What the OS or libp2p said.
        reason: String,
    },
    /// Dialling an address failed at once.
    #[error("cannot dial {addr}: {reason}")]
    Dial {
        /// The address that was asked for.
        addr: Multiaddr,
        /// What libp2p said.
        reason: String,
    },
    /// A message is larger than `Limits::max_message_size`.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Size of the rejected message.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The peer is not in the paired set.
    #[error("peer {0} is not paired")]
    NotPaired(PeerId),
    /// The peer is paired but not connected right now.
    #[error("peer {0} is not connected")]
    NotConnected(PeerId),
    /// The peer's outbound queue is full (it is slow or stalled).
    #[error("outbound queue for peer {0} is full")]
    QueueFull(PeerId),
    /// A pairing exchange failed on the network (the reason names no secret).
    #[error("pairing: {0}")]
    Pairing(String),
    /// The host task has stopped.
    #[error("the transport host has stopped")]
    Stopped,
}
