//! The request dispatch, and the requests that are not WebAuthn: list, delete, rename, status and pairing.

use passmesh_crdt::{DeviceId, MemberState};
use passmesh_ipc::{
    DeviceInfo, DeviceState, ErrorBody, ErrorName, MAX_LIST_PAGE, Pin, RecoveryInfo,
    RecoveryKeyInfo, RequestBody, ResponseBody, StatusInfo,
    message::{PeerInfo, TpmStatus},
};

use super::{Session, e, internal, pair_error};
use crate::names::{DeviceName, Label};
use crate::vault;

impl Session<'_> {
    pub(super) async fn handle(&self, request: RequestBody) -> Result<ResponseBody, ErrorBody> {
        match request {
            RequestBody::Create {
                origin,
                options,
                pin,
            } => self.create(&origin, &options, pin.as_ref()).await,
            RequestBody::Get {
                origin,
                options,
                pin,
            } => self.get(&origin, &options, pin.as_ref()).await,
            RequestBody::List {
                rp_id,
                offset,
                limit,
            } => {
                let limit = limit.unwrap_or(MAX_LIST_PAGE).min(MAX_LIST_PAGE) as usize;
                let (passkeys, total) = self
                    .vault
                    .list(rp_id, offset, limit)
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::List { passkeys, total })
            }
            RequestBody::Delete { credential_id } => {
                let deleted = self
                    .vault
                    .delete(credential_id.0.into())
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::Delete { deleted })
            }
            RequestBody::Rename {
                credential_id,
                label,
            } => {
                let label = Label::try_from(label)
                    .map_err(|bad| e(ErrorName::ConstraintError, bad.to_string()))?;
                let renamed = self
                    .vault
                    .rename(credential_id.0.into(), label)
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::Rename { renamed })
            }
            RequestBody::Status => self.status().await,
            RequestBody::PairInvite {
                expires_secs,
                confirm,
                name,
            } => {
                let secs = expires_secs.unwrap_or(passmesh_ipc::message::DEFAULT_PAIR_EXPIRY_SECS);
                if secs == 0 || secs > passmesh_ipc::message::MAX_PAIR_EXPIRY_SECS {
                    return Err(e(
                        ErrorName::ConstraintError,
                        format!(
                            "an invitation lasts 1 to {} seconds",
                            passmesh_ipc::message::MAX_PAIR_EXPIRY_SECS
                        ),
                    ));
                }
                let name = name
                    .map(DeviceName::try_from)
                    .transpose()
                    .map_err(|bad| e(ErrorName::DataError, bad.to_string()))?;
                let (uri, expires_at_ms) = self
                    .pairing()?
                    .invite(
                        self.uid,
                        self.vault,
                        std::time::Duration::from_secs(secs),
                        confirm,
                        name,
                    )
                    .await
                    .map_err(pair_error)?;
                Ok(ResponseBody::PairInvite {
                    uri: uri.to_string(),
                    expires_at_ms,
                })
            }
            RequestBody::PairJoin { uri, name } => {
                let name = DeviceName::try_from(name.unwrap_or_else(crate::vault::host_name))
                    .map_err(|bad| e(ErrorName::DataError, bad.to_string()))?;
                self.pairing()?
                    .join(self.uid, self.vault, &uri, name)
                    .await
                    .map_err(pair_error)?;
                Ok(ResponseBody::PairJoin {})
            }
            RequestBody::PairProgress { since } => {
                let (events, next, finished) = self.pairing()?.progress(self.uid, since).await;
                Ok(ResponseBody::PairProgress {
                    events,
                    next,
                    finished,
                })
            }
            RequestBody::PairConfirm { accept } => {
                self.pairing()?
                    .confirm(self.uid, accept)
                    .await
                    .map_err(pair_error)?;
                Ok(ResponseBody::PairConfirm {})
            }
            RequestBody::SetPin { pin, current_pin } => {
                self.set_pin(&pin, current_pin.as_ref()).await
            }
            RequestBody::PairCancel => {
                self.pairing()?.cancel(self.uid).await.map_err(pair_error)?;
                Ok(ResponseBody::PairCancel {})
            }
            RequestBody::DeviceList => self.device_list().await,
            RequestBody::DeviceRename { device_id, name } => {
                let name = DeviceName::try_from(name)
                    .map_err(|bad| e(ErrorName::DataError, bad.to_string()))?;
                self.vault
                    .rename_device(DeviceId::new(device_id), name)
                    .await
                    .map_err(device_error)?;
                Ok(ResponseBody::DeviceRename {})
            }
            RequestBody::DeviceRemove { device_id, pin } => {
                self.device_remove(DeviceId::new(device_id), pin.as_ref())
                    .await
            }
            RequestBody::TrashList { offset, limit } => {
                let limit = limit.unwrap_or(MAX_LIST_PAGE).min(MAX_LIST_PAGE) as usize;
                let (passkeys, total) = self
                    .vault
                    .trash_list(offset, limit)
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::TrashList { passkeys, total })
            }
            RequestBody::TrashRestore { credential_id } => {
                let restored = self
                    .vault
                    .trash_restore(credential_id.0.into())
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::TrashRestore { restored })
            }
            RequestBody::TrashPurge { credential_id, pin } => {
                // With the PIN, the purge is approved: every device destroys the old keys at once.
                let approval = match self.require_pin(pin.as_ref(), "purging the trash").await? {
                    Some(pin) => Some(self.approval_key(pin).await?),
                    None => None,
                };
                let vault::Purged {
                    count: purged,
                    epoch,
                    approved,
                } = self
                    .vault
                    .trash_purge(credential_id.map(|c| c.0.into()), approval)
                    .await
                    .map_err(internal)?;
                Ok(ResponseBody::TrashPurge {
                    purged,
                    epoch: epoch.map(|e| e.0),
                    approved,
                })
            }
            RequestBody::RecoverySet {
                recovery_key,
                x25519,
                anchors,
                anchors_signature,
                replace,
                pin,
            } => {
                self.recovery_set(
                    recovery_key,
                    &x25519,
                    anchors,
                    &anchors_signature,
                    replace,
                    pin.as_ref(),
                )
                .await
            }
            RequestBody::Backup { pin } => self.backup(pin.as_ref()).await,
            RequestBody::BackupRead { offset } => self.backup_read(offset),
            RequestBody::RestoreWrite { offset, data } => self.restore_write(offset, data),
            RequestBody::Restore { phrase, name } => self.restore(&phrase, name).await,
            RequestBody::Audit { offset, limit } => {
                let limit = limit.unwrap_or(MAX_LIST_PAGE).min(MAX_LIST_PAGE) as usize;
                let (entries, total) = self.vault.audit(offset, limit).await.map_err(internal)?;
                Ok(ResponseBody::Audit { entries, total })
            }
        }
    }

    /// Verifies the PIN when one is set: what cannot be undone (`what`) needs it. Returns the PIN it verified.
    pub(super) async fn require_pin<'p>(
        &self,
        pin: Option<&'p Pin>,
        what: &str,
    ) -> Result<Option<&'p Pin>, ErrorBody> {
        let status = self.vault.status().await.map_err(internal)?;
        if !status.pin_set {
            return Ok(None);
        }
        let Some(pin) = pin else {
            return Err(e(
                ErrorName::NotAllowedError,
                format!("a PIN is set on this device: {what} needs it (--pin-stdin)"),
            ));
        };
        Ok(self.check_pin(pin).await?.map(|_| pin))
    }

    async fn device_list(&self) -> Result<ResponseBody, ErrorBody> {
        let devices = self
            .vault
            .devices()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|d| {
                let (state, removed_by, removed_at_ms, invalid_reason) = match d.member.state {
                    MemberState::Active => (DeviceState::Active, None, None, None),
                    MemberState::Removed { by, at_ms } => (
                        DeviceState::Removed,
                        Some(by.to_string()),
                        Some(at_ms),
                        None,
                    ),
                    MemberState::Invalid(why) => {
                        (DeviceState::Invalid, None, None, Some(why.to_owned()))
                    }
                };
                DeviceInfo {
                    device_id: d.member.device.id.to_string(),
                    name: d.member.device.name,
                    this_device: d.this_device,
                    connected: d.connected,
                    last_seen_ms: d.last_seen_ms,
                    added_by: d.member.device.added_by.map(|b| b.to_string()),
                    added_at_ms: d.member.device.added_at_ms,
                    state,
                    removed_by,
                    removed_at_ms,
                    invalid_reason,
                    signed: d.member.signed,
                    key_epoch: d.key_epoch.map(|e| e.0),
                    recovery: d.member.device.kind == passmesh_crdt::MemberKind::Recovery,
                }
            })
            .collect();
        Ok(ResponseBody::DeviceList { devices })
    }

    /// Removes a device, after the PIN when one is set.
    async fn device_remove(
        &self,
        id: DeviceId,
        pin: Option<&Pin>,
    ) -> Result<ResponseBody, ErrorBody> {
        self.require_pin(pin, "removing a device").await?;
        let epoch = self.vault.remove_device(id).await.map_err(device_error)?;
        Ok(ResponseBody::DeviceRemove {
            epoch: epoch.map(|e| e.0),
        })
    }

    fn pairing(&self) -> Result<&crate::net::pairing::Pairing, ErrorBody> {
        self.service.pairing.as_ref().ok_or_else(|| {
            e(
                ErrorName::NotSupportedError,
                match self.service.network_off {
                    Some(why) => format!("{why}: pairing needs networking"),
                    None => {
                        "networking is off ([network] enabled = false): pairing needs it".to_owned()
                    }
                },
            )
        })
    }

    async fn status(&self) -> Result<ResponseBody, ErrorBody> {
        let s = self.vault.status().await.map_err(internal)?;
        let listen_addrs = match &self.service.network {
            Some(n) => n
                .listen_addrs()
                .await
                .map(|l| l.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let peers = s
            .peers
            .into_iter()
            .map(|p| PeerInfo {
                device_id: p.device_id,
                name: p.name,
                connected: p.connected,
                address: p.address,
                last_sync_ms: p.last_sync_ms,
                pending_changes: p.pending_changes,
                bytes_sent: p.bytes_sent,
                bytes_received: p.bytes_received,
            })
            .collect();
        Ok(ResponseBody::Status {
            status: StatusInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uid: self.uid,
                vault_id: s.vault_id,
                passkeys: s.passkeys,
                keystore: self.keystore.backend.name().to_owned(),
                keystore_warning: self.keystore.warning.clone(),
                pin_set: s.pin_set,
                pin_attempts_left: s.pin_attempts_left,
                pin_locked_for_ms: s.pin_locked_for_ms,
                tpm: self.keystore.tpm.as_ref().map(|t| TpmStatus {
                    manufacturer: t.manufacturer.clone(),
                    firmware: t.firmware.clone(),
                    pcrs: self.keystore.pcrs.clone().unwrap_or_default(),
                }),
                device_id: Some(s.device_id),
                listen_addrs,
                peers,
                network_off: self.service.network_off.map(str::to_owned),
                old_keys: s.old_keys,
                recovery: Some(RecoveryInfo {
                    keys: s
                        .recovery
                        .keys
                        .into_iter()
                        .map(|(id, since_ms)| RecoveryKeyInfo {
                            recovery_key: id.to_string(),
                            since_ms,
                        })
                        .collect(),
                    backup_dir: self
                        .service
                        .users
                        .backup_dir(self.uid)
                        .map(|d| d.display().to_string()),
                    last_backup_at_ms: s.recovery.last_backup.as_ref().map(|(at, _)| *at),
                    last_backup_file: s.recovery.last_backup.map(|(_, f)| f),
                    restored_at_ms: s.recovery.restored_at_ms,
                    anchors: s.recovery.anchors.iter().map(ToString::to_string).collect(),
                }),
            },
        })
    }
}

/// The error a device command answers with.
fn device_error(err: vault::Error) -> ErrorBody {
    use passmesh_crdt::Error as C;
    match &err {
        vault::Error::RemoveSelf => e(ErrorName::InvalidStateError, err.to_string()),
        vault::Error::Vault(C::UnknownDevice(id)) => e(
            ErrorName::NotFoundError,
            format!("no device {id} in this vault (see `passmesh device list`)"),
        ),
        vault::Error::Vault(C::NotAMember) => e(
            ErrorName::InvalidStateError,
            "this device is no longer a member of the vault (it was removed): it cannot change the device table",
        ),
        vault::Error::Vault(C::InvalidInput(what)) => e(ErrorName::DataError, *what),
        _ => internal(err),
    }
}
