//! Joining a device to a vault, with the daemons stopped: the internal API that tests use to set up paired
//! daemons without the network. Pairing by code between running daemons is [`crate::net::pairing`]; both end in the
//! same state (device entries with their x25519 keys, the vault keyring sealed by each device's keystore).
//!
//! The inviter exports an [`Invitation`] (vault id, keyring, its device entry and addresses); the joiner
//! [`join`]s with it, which creates a replica of the same vault sealed by the joiner's own keystore and lists
//! both devices; the inviter then [`admit`]s the joiner's device entry. Nothing here switches any check off:
//! after these steps both device tables list both devices, which is exactly what the transport gate checks.

use std::path::{Path, PathBuf};

use passmesh_crdt::{Device, Keyring, VaultId};
use passmesh_transport::Identity;
use zeroize::Zeroizing;

use crate::custody::{Choice, Custody, TpmOptions};
use crate::vault::{self, Error};

/// What a device needs to join a vault. Holds the vault keyring: `Debug` leaves it out.
pub struct Invitation {
    /// The vault's id.
    pub vault_id: VaultId,
    keyring: Zeroizing<Vec<u8>>,
    /// The inviting device's entry in the device table.
    pub inviter: Device,
    /// Multiaddrs where the inviter can be reached (without `/p2p/`, or with the inviter's).
    pub addrs: Vec<String>,
    /// The devices the inviter trusts without a signature chain.
    pub anchors: Vec<passmesh_crdt::DeviceId>,
    /// The first PIN keys whose approvals the inviter trusts.
    pub pin_keys: Vec<(passmesh_crdt::DeviceId, [u8; 32])>,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("vault_id", &self.vault_id)
            .field("keyring", &format_args!(".."))
            .field("inviter", &self.inviter)
            .field("addrs", &self.addrs)
            .finish()
    }
}

fn dir(state_dir: &Path) -> PathBuf {
    crate::layout::user_dir(state_dir, rustix::process::geteuid().as_raw())
}

/// Opens the (stopped) daemon's vault in `state_dir`, runs `f` on it and closes it again after a final flush.
async fn with_vault<T>(
    state_dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
    seed: Option<(VaultId, &[u8])>,
    f: impl AsyncFnOnce(&vault::Handle, &Identity) -> Result<T, Error>,
) -> Result<T, Error> {
    let custody = Custody::new(choice, tpm.clone());
    let (running, _) = vault::open_seeded(
        &dir(state_dir),
        &custody,
        vault::Rules::default(),
        seed,
        None,
    )?;
    let result = f(&running.handle, &running.identity).await;
    drop(running.handle);
    drop(running.outbound);
    let thread = running.thread;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|_| Error::Stopped)?
        .map_err(|_| Error::Stopped)?;
    result
}

/// Exports an invitation from the stopped daemon in `state_dir` (creating its vault if it has none), naming
/// `addrs` as where it listens.
pub async fn export_invitation(
    state_dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
    addrs: Vec<String>,
) -> Result<Invitation, Error> {
    with_vault(state_dir, choice, tpm, None, async |v, _| {
        let info = v.join_info().await?;
        Ok(Invitation {
            vault_id: info.vault_id,
            keyring: info.keyring,
            inviter: info.device,
            addrs,
            anchors: info.anchors,
            pin_keys: info.pin_keys,
        })
    })
    .await
}

/// Joins the vault of `invitation` from a fresh state directory: creates the replica (sealed by this
/// device's keystore), adds the inviter with its addresses and this device as added by it. Returns this
/// device's entry, for the inviter to [`admit`]. Fails if `state_dir` already holds another vault.
pub async fn join(
    state_dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
    invitation: &Invitation,
    name: &str,
) -> Result<Device, Error> {
    let seed = Some((invitation.vault_id, invitation.keyring.as_slice()));
    with_vault(state_dir, choice, tpm, seed, async |v, identity| {
        let info = v.join_info().await?;
        if info.vault_id != invitation.vault_id {
            return Err(Error::OtherVault);
        }
        v.set_anchors(invitation.anchors.clone()).await?;
        v.trust_pin_keys(invitation.pin_keys.clone()).await?;
        v.add_device(invitation.inviter.clone(), invitation.addrs.clone())
            .await?;
        let me = Device {
            id: crate::ids::device_id(&identity.peer_id()),
            name: name.to_owned(),
            added_by: Some(invitation.inviter.id.clone()),
            ..info.device
        };
        v.add_device(me.clone(), Vec::new()).await?;
        Ok(me)
    })
    .await
}

/// Adds a joined device's entry to the device table of the stopped daemon in `state_dir`, with addresses to
/// dial it at.
pub async fn admit(
    state_dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
    device: Device,
    addrs: Vec<String>,
) -> Result<(), Error> {
    with_vault(state_dir, choice, tpm, None, async |v, identity| {
        // Added (and signed) by this device, whoever added it first: its entry here is valid at once.
        let device = Device {
            added_by: Some(crate::ids::device_id(&identity.peer_id())),
            signature: None,
            ..device
        };
        v.add_device(device, addrs).await
    })
    .await
}

/// This device's libp2p identity, unsealed from the stopped daemon's state in `state_dir`.
pub async fn device_identity(
    state_dir: &Path,
    choice: Choice,
    tpm: &TpmOptions,
) -> Result<Identity, Error> {
    with_vault(state_dir, choice, tpm, None, async |_, identity| {
        Ok(identity.clone())
    })
    .await
}

/// What the stopped daemon in `state_dir` keeps on disk, unsealed by its own keystore: what a thief holding the
/// disk (and able to unseal it) has. `Debug` leaves the secrets out.
pub struct Disk {
    /// The sealed vault keyring.
    pub keyring: Keyring,
    /// The device identity (its x25519 key derives from it).
    pub identity: Identity,
    /// The vault document as stored.
    pub document: Vec<u8>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("keyring", &self.keyring)
            .field("identity", &self.identity)
            .field("document", &self.document.len())
            .finish()
    }
}

/// Appends `chunk` (automerge changes) to the vault document of the stopped daemon in `state_dir`, as a program
/// with write access to its disk could: what the daemon then loads and passes on to its peers.
pub fn append_to_document(state_dir: &Path, chunk: &[u8]) -> Result<(), Error> {
    let db = dir(state_dir).join(crate::layout::DB);
    let mut store = crate::store::Store::open(&db)?;
    store.append(chunk)?;
    store.flush()?;
    Ok(())
}

/// Reads and unseals everything the stopped daemon in `state_dir` keeps: see [`Disk`].
pub fn disk(state_dir: &Path, choice: Choice, tpm: &TpmOptions) -> Result<Disk, Error> {
    let custody = Custody::new(choice, tpm.clone());
    let db = dir(state_dir).join(crate::layout::DB);
    let sealed = crate::store::read_keyring(&db)?
        .ok_or_else(|| crate::store::Error::Damaged("no sealed keyring".into()))?;
    let mut opened = custody.open_for(Some(&sealed))?;
    let keyring = Keyring::decode(&opened.keystore.unseal(&sealed)?).map_err(|_| Error::Keyring)?;
    let identity =
        crate::custody::sealed_identity(&db, &mut opened.keystore).map_err(|_| Error::Keyring)?;
    let document = crate::store::Store::open(&db)?
        .document()?
        .ok_or_else(|| crate::store::Error::Damaged("no document".into()))?;
    Ok(Disk {
        keyring,
        identity,
        document,
    })
}
