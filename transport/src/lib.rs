//! Passmesh transport: the libp2p host that connects a user's paired devices.
//!
//! It will own the device identity, paired-peer gating, the pairing handshake (snow `XXpsk3`) and the
//! `/passmesh/sync/1` streams, moving opaque bytes and knowing nothing of passkeys. Nothing is implemented yet:
//! the single-device daemon does not use this crate; replication and pairing are the next issues' work.
