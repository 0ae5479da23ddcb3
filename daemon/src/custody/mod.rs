//! Key custody: everything that protects this device's secrets (the vault keyring and the device identity)
//! and hands them over to another device.
//!
//! - [`keystore`]: the backends that seal and unseal a secret (TPM through tss-esapi, or software).
//! - [`Custody`]: the configured keystore choice; the one object that opens a keystore for a sealed blob, seals
//!   anew, and loads this device's sealed identity. A keystore (a TPM connection) is opened per operation and
//!   closed after it: nothing on the `create`/`get` path touches the TPM.
//! - [`migrate`]: moves a stopped vault to another keystore or re-seals it, through a fresh database.
//! - [`wrap`]: wraps a vault keyring to a joining device's x25519 key (pairing).
//!
//! Nothing here knows the vault document, the network or the socket.

pub mod keystore;
pub mod migrate;
pub mod wrap;

use std::path::Path;

use passmesh_transport::Identity;
use zeroize::Zeroizing;

pub use keystore::{Backend, Choice, TpmOptions};

use crate::store;

/// Failures of custody operations.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The keystore could not open, seal or unseal.
    #[error(transparent)]
    Keystore(#[from] keystore::Error),
    /// A sealed file cannot be read or written.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// An unsealed device identity is not a valid ed25519 secret key.
    #[error("the sealed device identity is damaged")]
    Identity,
}

/// How this daemon keeps its secrets: the configured keystore (`--keystore`) and TPM options.
#[derive(Debug, Clone)]
pub struct Custody {
    choice: Choice,
    tpm: TpmOptions,
}

impl Custody {
    /// Custody with the keystore `choice` and the TPM reached through `tpm`.
    pub fn new(choice: Choice, tpm: TpmOptions) -> Custody {
        Custody { choice, tpm }
    }

    /// The configured keystore choice.
    pub fn choice(&self) -> Choice {
        self.choice
    }

    /// The configured TPM options.
    pub fn tpm(&self) -> &TpmOptions {
        &self.tpm
    }

    /// Opens the keystore that can unseal `blob` (`None`: the one that seals a new secret), honouring the
    /// configured choice (see [`keystore::open_for`]).
    pub fn open_for(&self, blob: Option<&[u8]>) -> Result<keystore::Opened, keystore::Error> {
        keystore::open_for(self.choice, &self.tpm, blob)
    }

    /// Seals `secret` with the keystore that sealed `current` (or, with none, the configured one), closing
    /// the keystore again.
    pub fn seal_like(
        &self,
        current: Option<&[u8]>,
        secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, keystore::Error> {
        self.open_for(current)?.keystore.seal(secret)
    }

    /// System mode: the machine's libp2p identity, sealed in `machine_dir` (created on first use). Every user's
    /// vault is this device's under it, so one libp2p host carries them all.
    pub fn machine_identity(&self, machine_dir: &Path) -> Result<Identity, Error> {
        crate::layout::private_dir(machine_dir).map_err(store::Error::Io)?;
        let blob = store::read_device(machine_dir)?;
        let mut opened = self.open_for(blob.as_deref())?;
        sealed_identity(machine_dir, &mut opened.keystore)
    }
}

/// The device identity sealed in `dir` by `keystore` (created and sealed on first use).
pub fn sealed_identity(dir: &Path, keystore: &mut keystore::Keystore) -> Result<Identity, Error> {
    match store::read_device(dir)? {
        Some(blob) => {
            let secret = keystore.unseal(&blob)?;
            let bytes: [u8; 32] = secret.as_slice().try_into().map_err(|_| Error::Identity)?;
            Identity::from_secret_bytes(Zeroizing::new(bytes)).map_err(|_| Error::Identity)
        }
        None => {
            let identity = Identity::generate();
            let blob = keystore.seal(identity.secret_bytes().as_slice())?;
            store::write_device(dir, &blob)?;
            tracing::info!(device = %identity.peer_id(), "created this device's identity");
            Ok(identity)
        }
    }
}
