//! End-to-end test harness for Passmesh: starts real `passmeshd` daemons in temporary
//! directories, talks to them over their Unix socket (and through the `passmesh` CLI), and
//! checks their WebAuthn answers with an independent relying party (webauthn-rs-core).
//!
//! What it does not do: it contains no daemon logic; the daemon and CLI are separate processes, built on first
//! use by [`binaries`]. The daemon library is linked (with its `test-utils` feature) for two things only: its
//! offline pairing API (`passmesh_daemon::pairing`), which [`mesh`] calls on stopped daemons' state
//! directories to pair them quickly, ending in the same state as pairing by code; and paths and types the tests
//! name (`layout::user_dir`, `custody::keystore::Choice`, `config`).
//!
//! Modules:
//! - [`bins`] — locate (and build once) the `passmeshd` and `passmesh` binaries.
//! - [`daemon`] — [`Daemon`]: spawn, wait until serving, restart, SIGKILL, run the CLI.
//! - [`ops`] — typed request helpers over [`passmesh_ipc::Client`], vault snapshots, error checks.
//! - [`rp`] — a relying party wrapping webauthn-rs-core, speaking Passmesh's JSON types.
//! - [`authdata`] — a small parser for authenticator data, so tests can read flags and the AAGUID.
//! - [`mesh`] — [`Node`]: paired daemons on loopback or in network namespaces, polling with a deadline.
//! - [`netns`] — [`Lan`]: a private LAN of network namespaces on a bridge, to cut devices off and heal them.
//! - [`pairing`] — drives `passmesh pair` / `passmesh join` between running daemons (pairing by code).
//! - [`recovery`] — `passmesh recovery setup` driven as a script drives it (phrase out, words back in).
//! - [`tpm`] — [`Swtpm`]: a private software TPM per test (own port pair and state), PCR and handle tools,
//!   running `passmeshd` to an expected refusal, state-directory snapshots.
//!
//! The integration tests live in `tests/e2e/` (daemons, CLI, sync, TPM, system mode), `tests/browser/` (the
//! extension in headless Chromium and Firefox) and `tests/packaging/` (the .deb, units, man pages); the
//! benchmark is `src/bin/passmesh-bench.rs`.

pub mod authdata;
pub mod bins;
pub mod daemon;
pub mod mesh;
pub mod netns;
pub mod ops;
pub mod pairing;
pub mod recovery;
pub mod rp;
pub mod tpm;

pub use bins::{Binaries, binaries};
pub use daemon::{CliOutput, Daemon, DaemonOptions, run_cli};
pub use mesh::Node;
pub use netns::Lan;
pub use tpm::Swtpm;
