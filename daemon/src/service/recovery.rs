//! The recovery requests: setting the recovery key, making a backup and handing it over in chunks, taking a
//! backup in chunks and restoring it. Files cross the socket in chunks of [`MAX_CHUNK`]; each caller (uid) has
//! at most one backup to read and one to restore in flight, held for [`HELD_FOR`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use passmesh_crdt::DeviceId;
use passmesh_ipc::message::MAX_CHUNK;
use passmesh_ipc::{Base64Url, ErrorBody, ErrorName, Phrase, Pin, ResponseBody};

use super::{Session, e, internal};
use crate::backup;
use crate::names::DeviceName;
use crate::recovery;
use crate::vault;

/// How long a backup made for `backupRead`, or one handed over with `restoreWrite`, is kept.
const HELD_FOR: Duration = Duration::from_secs(600);
/// Largest backup a caller may hand over (see `backup::MAX_FILE`).
const MAX_RESTORE: usize = backup::MAX_FILE;

/// Bytes of backups being handed over, or restored, that the daemon holds at once for every caller together.
const UPLOAD_BUDGET: usize = 2 * MAX_RESTORE;

/// Backups on their way to or from callers, by uid, with the bytes handed over that are held.
#[derive(Debug, Default)]
pub(crate) struct Transfers(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    by_uid: HashMap<u32, Transfer>,
    /// Bytes handed over (being sent, or being restored) by every caller.
    held: usize,
}

#[derive(Debug, Default)]
struct Transfer {
    outgoing: Option<(Vec<u8>, Instant)>,
    incoming: Option<(Vec<u8>, Instant)>,
    /// A restore of this caller is running: no other until it ends.
    restoring: bool,
}

impl Transfers {
    fn with<T>(&self, uid: u32, f: impl FnOnce(&mut Transfer, &mut usize) -> T) -> T {
        let mut st = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        // What nobody came back for within HELD_FOR goes.
        let mut freed = 0;
        st.by_uid.retain(|_, t| {
            t.outgoing
                .take_if(|(_, at)| now.duration_since(*at) > HELD_FOR);
            if let Some((b, _)) = t
                .incoming
                .take_if(|(_, at)| now.duration_since(*at) > HELD_FOR)
            {
                freed += b.len();
            }
            t.outgoing.is_some() || t.incoming.is_some() || t.restoring
        });
        st.held -= freed.min(st.held);
        let State { by_uid, held } = &mut *st;
        f(by_uid.entry(uid).or_default(), held)
    }
}

/// Ends a caller's restore: its bytes are no longer held, and it may restore again.
struct Restoring<'a> {
    transfers: &'a Transfers,
    uid: u32,
    bytes: usize,
}

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.transfers.with(self.uid, |t, held| {
            t.restoring = false;
            *held -= bytes.min(*held);
        });
    }
}

fn backup_error(err: backup::Error) -> ErrorBody {
    let name = match &err {
        backup::Error::WrongPhrase => ErrorName::NotAllowedError,
        backup::Error::NoRecipient => ErrorName::InvalidStateError,
        backup::Error::TooLarge(_) => ErrorName::ConstraintError,
        backup::Error::Encrypt(_) | backup::Error::Write { .. } => ErrorName::UnknownError,
        _ => ErrorName::DataError,
    };
    e(name, err.to_string())
}

fn recovery_error(err: vault::Error) -> ErrorBody {
    use passmesh_crdt::Error as C;
    match &err {
        vault::Error::RecoveryExists | vault::Error::NoRecovery => {
            e(ErrorName::InvalidStateError, err.to_string())
        }
        vault::Error::RestoreNotEmpty(_) | vault::Error::AlreadyPaired(_) => {
            e(ErrorName::InvalidStateError, err.to_string())
        }
        vault::Error::Vault(C::NotRecoveryKey) => e(
            ErrorName::NotAllowedError,
            "this phrase opens the file but is not the vault's recovery key any more (it was replaced); nothing \
             was changed",
        ),
        vault::Error::Vault(C::InvalidInput(what)) => e(ErrorName::DataError, *what),
        vault::Error::Vault(C::Malformed(_) | C::WrongKey) | vault::Error::BackupContent(_) => e(
            ErrorName::DataError,
            format!("the backup cannot be restored: {err}; nothing was changed"),
        ),
        _ => internal(err),
    }
}

impl Session<'_> {
    pub(super) async fn recovery_set(
        &self,
        recovery_key: String,
        x25519: &Base64Url,
        anchors: Vec<String>,
        signature: &Base64Url,
        replace: bool,
        pin: Option<&Pin>,
    ) -> Result<ResponseBody, ErrorBody> {
        let x25519: [u8; 32] = x25519
            .0
            .as_slice()
            .try_into()
            .map_err(|_| e(ErrorName::DataError, "x25519 must be 32 bytes"))?;
        let signature: [u8; 64] = signature
            .0
            .as_slice()
            .try_into()
            .map_err(|_| e(ErrorName::DataError, "anchorsSignature must be 64 bytes"))?;
        if anchors.len() > 1024 {
            return Err(e(ErrorName::ConstraintError, "too many anchors"));
        }
        let anchors: Vec<DeviceId> = anchors.into_iter().map(DeviceId::new).collect();
        let what = if replace {
            "replacing the recovery phrase"
        } else {
            "setting up recovery"
        };
        self.require_pin(pin, what).await?;
        let id = DeviceId::new(recovery_key);
        let set = self
            .vault
            .set_recovery(id.clone(), x25519, anchors, signature, replace)
            .await
            .map_err(recovery_error)?;
        Ok(ResponseBody::RecoverySet {
            recovery_key: id.to_string(),
            epoch: set.epoch.map(|e| e.0),
            replaced: set.replaced,
        })
    }

    pub(super) async fn backup(&self, pin: Option<&Pin>) -> Result<ResponseBody, ErrorBody> {
        self.require_pin(pin, "making a backup").await?;
        let snapshot = self
            .vault
            .snapshot(false)
            .await
            .map_err(recovery_error)?
            .ok_or_else(|| e(ErrorName::UnknownError, "no snapshot"))?;
        let made_at_ms = snapshot.payload.made_at_ms;
        let made_by = snapshot.payload.made_by.clone();
        let passkeys = snapshot.passkeys;
        let file = self
            .service
            .off_runtime(move || backup::seal(&snapshot.payload, &snapshot.recipients))
            .await?
            .map_err(backup_error)?;
        let size = file.len() as u64;
        self.service.transfers.with(self.uid, |t, _| {
            t.outgoing = Some((file, Instant::now()));
        });
        Ok(ResponseBody::Backup {
            size,
            passkeys,
            made_at_ms,
            file_name: backup::file_name(made_at_ms, &made_by),
        })
    }

    pub(super) fn backup_read(&self, offset: u64) -> Result<ResponseBody, ErrorBody> {
        self.service.transfers.with(self.uid, |t, _| {
            let Some((file, _)) = &t.outgoing else {
                return Err(e(
                    ErrorName::InvalidStateError,
                    "no backup to read: ask for one with `backup` first",
                ));
            };
            let start = usize::try_from(offset)
                .ok()
                .filter(|o| *o <= file.len())
                .ok_or_else(|| {
                    e(
                        ErrorName::ConstraintError,
                        "offset past the end of the backup",
                    )
                })?;
            let end = (start + MAX_CHUNK).min(file.len());
            let data = Base64Url(file[start..end].to_vec());
            let last = end == file.len();
            if last {
                t.outgoing = None;
            }
            Ok(ResponseBody::BackupRead { data, end: last })
        })
    }

    pub(super) fn restore_write(
        &self,
        offset: u64,
        data: Base64Url,
    ) -> Result<ResponseBody, ErrorBody> {
        if data.0.len() > MAX_CHUNK {
            return Err(e(
                ErrorName::ConstraintError,
                format!("a chunk is at most {MAX_CHUNK} bytes"),
            ));
        }
        self.service.transfers.with(self.uid, |t, held| {
            if t.restoring {
                return Err(e(
                    ErrorName::InvalidStateError,
                    "a restore is running: wait until it ends",
                ));
            }
            if offset == 0 {
                if let Some((old, _)) = t.incoming.take() {
                    *held -= old.len().min(*held);
                }
                t.incoming = Some((Vec::new(), Instant::now()));
            }
            let Some((file, at)) = &mut t.incoming else {
                return Err(e(
                    ErrorName::InvalidStateError,
                    "no restore in progress: start at offset 0",
                ));
            };
            if offset != file.len() as u64 {
                return Err(e(
                    ErrorName::ConstraintError,
                    format!("expected the chunk at offset {}", file.len()),
                ));
            }
            if file.len() + data.0.len() > MAX_RESTORE {
                *held -= file.len().min(*held);
                t.incoming = None;
                return Err(e(
                    ErrorName::ConstraintError,
                    format!("a backup is at most {MAX_RESTORE} bytes"),
                ));
            }
            if *held + data.0.len() > UPLOAD_BUDGET {
                return Err(e(
                    ErrorName::ConstraintError,
                    "the daemon holds as many backups being restored as it takes: try again later",
                ));
            }
            *held += data.0.len();
            file.extend_from_slice(&data.0);
            *at = Instant::now();
            Ok(ResponseBody::RestoreWrite {
                received: file.len() as u64,
            })
        })
    }

    pub(super) async fn restore(
        &self,
        phrase: &Phrase,
        name: Option<String>,
    ) -> Result<ResponseBody, ErrorBody> {
        let name = DeviceName::try_from(name.unwrap_or_else(crate::vault::host_name))
            .map_err(|bad| e(ErrorName::DataError, bad.to_string()))?;
        let phrase = recovery::Phrase::parse(phrase.as_str())
            .map_err(|err| e(ErrorName::DataError, err.to_string()))?;
        let taken = self.service.transfers.with(self.uid, |t, _| {
            if t.restoring {
                return Err(e(
                    ErrorName::InvalidStateError,
                    "a restore is running: wait until it ends",
                ));
            }
            let file = t.incoming.take().map(|(f, _)| f);
            t.restoring = file.is_some();
            Ok(file)
        })?;
        let Some(file) = taken else {
            return Err(e(
                ErrorName::InvalidStateError,
                "no backup handed over: send it with `restoreWrite` first",
            ));
        };
        let _restoring = Restoring {
            transfers: &self.service.transfers,
            uid: self.uid,
            bytes: file.len(),
        };
        let opened = self
            .service
            .off_runtime(move || {
                let key = phrase.derive()?;
                let payload = backup::open(&file, &key);
                Ok::<_, recovery::Error>((key, payload))
            })
            .await?;
        let (key, payload) = opened.map_err(|err| e(ErrorName::UnknownError, err.to_string()))?;
        let payload = payload.map_err(backup_error)?;
        let restored = self
            .vault
            .restore(payload, key.member(), name.as_str().to_owned())
            .await
            .map_err(recovery_error)?;
        Ok(ResponseBody::Restore {
            vault_id: restored.vault_id.to_string(),
            passkeys: restored.passkeys,
            devices: restored.devices,
            backup_made_at_ms: restored.made_at_ms,
            backup_made_by: restored.made_by.to_string(),
            recovery_key: restored.recovery.to_string(),
        })
    }
}
