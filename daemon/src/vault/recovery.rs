//! Recovery as the vault actor does it: setting (or replacing) the vault's recovery key, taking what a backup
//! holds, and turning this empty device into a restored replica of a backed-up vault.

use std::collections::BTreeSet;

use passmesh_crdt::{DeviceId, Keyring, LocalDevice, Vault};

use super::actor::Actor;
use super::{Error, RecoveryStatus, Restored, Snapshot};
use crate::backup::Payload;
use crate::ids;
use crate::store::{Durability, Meta};

/// What `recoverySet` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverySet {
    /// The new key epoch, if one was made (the vault's first epoch has no map to wrap into; a replaced key is
    /// removed, which rotates).
    pub epoch: Option<passmesh_crdt::Epoch>,
    /// Recovery keys removed (replaced).
    pub replaced: u64,
}

impl Actor {
    /// Makes `id` (x25519 key `x25519`) the vault's recovery key. Without `replace`, refused if one is set
    /// (`RecoveryExists`); with it, every other recovery key is removed, so the new epoch that follows is wrapped
    /// to the new key only and the old phrase opens nothing made from then on.
    pub(super) fn set_recovery(
        &mut self,
        id: &DeviceId,
        x25519: [u8; 32],
        anchors: &[DeviceId],
        signature: &[u8; 64],
        replace: bool,
    ) -> Result<RecoverySet, Error> {
        let anchors: BTreeSet<DeviceId> = anchors.iter().cloned().collect();
        if self.vault.anchors() != Some(&anchors) {
            return Err(Error::Vault(passmesh_crdt::Error::InvalidInput(
                "the anchors signed are not this device's (they changed: run it again)",
            )));
        }
        let existing: Vec<DeviceId> = self
            .vault
            .recovery_keys()
            .into_iter()
            .map(|d| d.id)
            .filter(|d| d != id)
            .collect();
        if !replace && !existing.is_empty() {
            return Err(Error::RecoveryExists);
        }
        if replace && self.vault.recovery_keys().is_empty() {
            return Err(Error::NoRecovery);
        }
        let now = crate::now_ms();
        let heads = self.vault.heads();
        let mut result = self
            .vault
            .add_recovery(id, x25519, &anchors, signature, now)
            .map(|epoch| RecoverySet { epoch, replaced: 0 });
        if let Ok(set) = &mut result {
            for old in &existing {
                match self.vault.remove_member(old, now) {
                    Ok(epoch) => {
                        set.replaced += 1;
                        set.epoch = epoch.or(set.epoch);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if self.vault.heads() != heads {
            // Whatever was written is persisted with the batch; a failed rotation is redone by maintenance.
            self.dirty = true;
            self.maintenance_due = true;
            self.local_change();
        }
        let set = result?;
        tracing::info!(recovery = %id, replaced = set.replaced, "recovery key set");
        Ok(set)
    }

    /// The vault's recovery keys, and when this device last wrote a backup.
    pub(super) fn recovery_status(&self) -> RecoveryStatus {
        let last_backup = self
            .store
            .get(Meta::LastBackup)
            .ok()
            .flatten()
            .and_then(|b| {
                let at = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
                Some((at, String::from_utf8(b.get(8..)?.to_vec()).ok()?))
            });
        let restored_at_ms = self
            .store
            .get(Meta::RestoredAt)
            .ok()
            .flatten()
            .and_then(|b| Some(u64::from_be_bytes(b.as_slice().try_into().ok()?)));
        RecoveryStatus {
            keys: self
                .vault
                .recovery_keys()
                .into_iter()
                .map(|d| (d.id, d.added_at_ms))
                .collect(),
            last_backup,
            restored_at_ms,
            anchors: self
                .vault
                .anchors()
                .map(|a| a.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// What a backup holds now: the whole document and the epoch keys this device holds, and the recovery keys
    /// to encrypt to. With `only_if_changed`, `None` when the document is what
    /// the last automatic backup held. `NoRecovery` if the vault has no recovery key.
    pub(super) fn snapshot(&mut self, only_if_changed: bool) -> Result<Option<Snapshot>, Error> {
        let recipients: Vec<[u8; 32]> = self
            .vault
            .recovery_keys()
            .into_iter()
            .map(|d| d.x25519_public)
            .collect();
        if recipients.is_empty() {
            return Err(Error::NoRecovery);
        }
        let heads = self.vault.heads();
        if only_if_changed
            && self.store.get(Meta::BackupHeads)?.as_deref() == Some(heads.concat().as_slice())
        {
            return Ok(None);
        }
        let now = crate::now_ms();
        let payload = Payload {
            vault_id: self.vault.id(),
            made_at_ms: now,
            made_by: ids::device_id(&self.me),
            keyring: self.vault.keyring().shareable().encode(),
            document: self.vault.snapshot(),
        };
        Ok(Some(Snapshot {
            payload,
            recipients,
            heads,
            passkeys: self.vault.len() as u64,
        }))
    }

    /// Notes that a backup of `heads` was written as `file` at `at_ms`; with `keep`, an automatic one: returns
    /// the automatic backups this device wrote beyond the newest `keep`, to delete.
    pub(super) fn backup_written(
        &mut self,
        heads: &[[u8; 32]],
        at_ms: u64,
        file: &str,
        keep: Option<usize>,
    ) -> Vec<String> {
        let mut last = at_ms.to_be_bytes().to_vec();
        last.extend_from_slice(file.as_bytes());
        let mut old = Vec::new();
        let noted = (|| {
            self.store
                .put(Meta::BackupHeads, &heads.concat(), Durability::Lazy)?;
            self.store.put(Meta::LastBackup, &last, Durability::Lazy)?;
            if let Some(keep) = keep {
                let mut files: Vec<String> = self
                    .store
                    .get(Meta::BackupFiles)?
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                files.push(file.to_owned());
                let excess = files.len().saturating_sub(keep);
                old = files.drain(..excess).collect();
                let bytes = serde_json::to_vec(&files).unwrap_or_default();
                self.store
                    .put(Meta::BackupFiles, &bytes, Durability::Flushed)?;
            }
            Ok::<_, crate::store::Error>(())
        })();
        if let Err(e) = noted {
            tracing::warn!(error = %e, "cannot note the last backup");
        }
        old
    }

    /// Replaces this device's empty vault with the one `payload` holds, opened by `recovery` (the key derived
    /// from the phrase): the document as backed up, the epoch keys it held plus those wrapped to the recovery
    /// key, and this device added to it, signed by the recovery key. The old devices stay members until they
    /// are removed. Refused (nothing changed) if this device holds passkeys or is paired, or if the recovery key
    /// is not the vault's.
    pub(super) fn restore(
        &mut self,
        payload: &Payload,
        recovery: LocalDevice,
        name: &str,
    ) -> Result<Restored, Error> {
        if !self.vault.is_empty() {
            return Err(Error::RestoreNotEmpty(self.vault.len() as u64));
        }
        // What only this replica holds would be lost with it: a trash, unreadable records, passkeys another
        // device took away that this one keeps restorable.
        if self.vault.trashed_len() > 0
            || !self.vault.problems().is_empty()
            || !self.store.losses()?.is_empty()
        {
            return Err(Error::RestoreNotEmpty(
                (self.vault.trashed_len() + self.vault.problems().len()) as u64,
            ));
        }
        let others = self.replication.paired(&self.vault).len();
        if others > 0 {
            return Err(Error::AlreadyPaired(others as u64));
        }
        let ring = Keyring::decode(&payload.keyring)
            .map_err(|_| Error::BackupContent("its keyring does not decode"))?
            .shareable();
        let recovery_id = recovery.id().clone();
        let mut vault = Vault::load_as(&payload.document, ring, Some(recovery))?;
        if vault.id() != payload.vault_id {
            return Err(Error::BackupContent("its document is of another vault"));
        }
        // Whom to trust without a chain comes from the recovery key's own signature, never from the file: anyone
        // who knows the key's public half can make a file it opens.
        let anchors = vault
            .recovery_anchors(&recovery_id)
            .ok_or(Error::BackupContent(
                "the recovery key vouches for no device in it (it was not made by Passmesh)",
            ))?;
        // And only through entries they signed themselves: an unsigned entry in the file could give one any key.
        vault.set_signed_anchors(true);
        vault.set_anchors(Some(anchors.clone()));
        let now = crate::now_ms();
        vault.restore_as(ids::local_device(&self.identity), name, now)?;
        // This device vouches for the key too: it stays when the lost device that set it up is removed.
        vault.endorse_recovery(&recovery_id, now)?;
        let anchors: Vec<DeviceId> = anchors.into_iter().collect();
        let pinned =
            serde_json::to_vec(&self.anchors_with_me(&anchors)).map_err(|_| Error::PinState)?;
        let passkeys = vault.len() as u64;
        let me = ids::device_id(&self.me);
        let devices = vault.active_devices().iter().filter(|d| d.id != me).count() as u64;
        self.replace_vault(
            vault,
            &[
                (Meta::RestoredAt, &now.to_be_bytes()),
                (Meta::Anchors, &pinned),
                (Meta::SignedAnchors, &[1]),
            ],
        )?;
        tracing::info!(vault = %self.vault.id(), passkeys, "restored a vault from a backup");
        self.set_anchors(&anchors)?;
        Ok(Restored {
            vault_id: payload.vault_id,
            passkeys,
            devices,
            made_at_ms: payload.made_at_ms,
            made_by: payload.made_by.clone(),
            recovery: recovery_id,
        })
    }
}
