//! The trash and the audit log, as the vault actor serves them: listing, restoring and purging trashed
//! passkeys, purging those kept longer than `[vault] trash_days`, and the audit log with names resolved.

use passmesh_crdt::{AuditEntry, CredentialId, Epoch, Event, Passkey, PinKey, RecordId, Verdict};
use passmesh_ipc::{AuditInfo, TrashedPasskey};

use super::Error;
use super::actor::Actor;
use super::passkeys::info;
use crate::store::{Durability, Meta};

impl Actor {
    /// When this device first saw passkey `id` in the trash with the deletion time `trashed_at_ms`; `None` if it
    /// has not noted this deletion yet (a passkey restored and deleted again is a new deletion).
    fn seen(&self, id: &RecordId, trashed_at_ms: u64) -> Option<u64> {
        let b = self.store.get(Meta::TrashSeen(id)).ok().flatten()?;
        let b = <[u8; 16]>::try_from(b.as_slice()).ok()?;
        let (seen, at) = b.split_at(8);
        let seen = u64::from_be_bytes(seen.try_into().ok()?);
        let at = u64::from_be_bytes(at.try_into().ok()?);
        (at == trashed_at_ms).then_some(seen)
    }

    /// Notes that this device saw passkey `id` in the trash (deleted at `trashed_at_ms`) at `now_ms`; a crash
    /// forgets it: it is noted again later, which only delays the purge.
    pub(super) fn note_seen(&self, id: &RecordId, trashed_at_ms: u64, now_ms: u64) {
        let mut value = now_ms.to_be_bytes().to_vec();
        value.extend_from_slice(&trashed_at_ms.to_be_bytes());
        if let Err(e) = self
            .store
            .put(Meta::TrashSeen(id), &value, Durability::Lazy)
        {
            tracing::warn!(error = %e, "cannot note when a passkey was seen in the trash");
        }
    }

    /// When this device purges passkey `p`: `[vault] trash_days` after it first saw this deletion in the trash
    /// (not after the time in the document: a stolen device with its clock set back must not make every device
    /// purge at once).
    fn purge_at(&self, p: &Passkey, now_ms: u64) -> u64 {
        let keep = u64::try_from(self.trash_for.as_millis()).unwrap_or(u64::MAX);
        self.seen(&p.record_id, p.trashed_at_ms.unwrap_or_default())
            .unwrap_or(now_ms)
            .saturating_add(keep)
    }

    /// Notes (on disk) the records whose content the changes just applied replaced, with where their last good
    /// version is; a record already noted keeps its first note (the version before the first alteration).
    pub(super) fn note_altered(&mut self) {
        let now = crate::now_ms();
        for (id, heads) in self.vault.take_altered() {
            if matches!(self.store.get(Meta::Altered(&id)), Ok(Some(_))) {
                continue;
            }
            tracing::warn!(record = %id, "another device replaced a passkey's content; its last good version is in the trash");
            let mut value = now.to_be_bytes().to_vec();
            for h in &heads {
                value.extend_from_slice(h);
            }
            if let Err(e) = self.store.put(Meta::Altered(&id), &value, Durability::Lazy) {
                tracing::warn!(error = %e, "cannot note a replaced passkey");
            }
            // The keeping time of old keys starts over: the last good version may be under one.
            let _ = self.store.remove(Meta::EpochSeen);
        }
    }

    /// The altered records still offered back: (when noted, the last good version). Notes that no longer
    /// serve (the record is that passkey again, the version cannot be read any more, or the keeping time is
    /// over) are dropped.
    fn altered_versions(&mut self, now_ms: u64) -> Vec<(u64, Passkey)> {
        let keep = u64::try_from(self.trash_for.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for (id, value) in self.store.altered().unwrap_or_default() {
            let parsed = (value.len() >= 8 && (value.len() - 8).is_multiple_of(32)).then(|| {
                let at = u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
                let heads: Vec<[u8; 32]> = value[8..]
                    .chunks_exact(32)
                    .filter_map(|c| c.try_into().ok())
                    .collect();
                (at, heads)
            });
            let version = parsed.as_ref().and_then(|(at, heads)| {
                (at.saturating_add(keep) > now_ms)
                    .then(|| self.vault.version_at(&id, heads))
                    .flatten()
            });
            let current = self.vault.passkey(&id);
            match (parsed, version) {
                (Some((at, _)), Some(v))
                    if current.is_none_or(|c| {
                        c.credential_id != v.credential_id
                            || c.private_key.as_slice() != v.private_key.as_slice()
                    }) =>
                {
                    out.push((at, v));
                }
                _ => {
                    let _ = self.store.remove(Meta::Altered(&id));
                }
            }
        }
        out
    }

    /// One page of the trash, with the number of passkeys in it: the trashed passkeys (longest there first),
    /// then those other devices purged or deleted outright that this device can still bring back (see
    /// [`passmesh_crdt::Vault::vanished`]; kept until the old keys go, see `Actor::keys_kept_until`).
    pub(super) fn trash_list(&mut self, offset: u64, limit: usize) -> (Vec<TrashedPasskey>, u64) {
        let now = crate::now_ms();
        self.refresh_pin_trust(now);
        let vanished = self.vault.vanished();
        let kept_until = self.keys_kept_until(now);
        let altered = self.altered_versions(now);
        let keep = u64::try_from(self.trash_for.as_millis()).unwrap_or(u64::MAX);
        let total = (self.vault.trashed_len() + vanished.len() + altered.len()) as u64;
        let trashed = self.vault.trashed().map(|p| TrashedPasskey {
            passkey: info(p, self.replication.held(&p.record_id)),
            trashed_at_ms: p.trashed_at_ms.unwrap_or_default(),
            purge_at_ms: self.purge_at(p, now),
            purged: false,
            purged_by: None,
            altered: false,
        });
        let purged = vanished.iter().map(|v| TrashedPasskey {
            passkey: info(&v.passkey, false),
            trashed_at_ms: v.passkey.trashed_at_ms.unwrap_or_default(),
            purge_at_ms: kept_until,
            purged: true,
            purged_by: v.purged_by.as_ref().map(ToString::to_string),
            altered: false,
        });
        let replaced = altered.iter().map(|(at, v)| TrashedPasskey {
            passkey: info(v, false),
            trashed_at_ms: *at,
            purge_at_ms: at.saturating_add(keep),
            purged: false,
            purged_by: None,
            altered: true,
        });
        let page = trashed
            .chain(purged)
            .chain(replaced)
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit)
            .collect();
        (page, total)
    }

    fn find_trashed(&self, credential_id: &CredentialId) -> Option<RecordId> {
        self.vault
            .trashed()
            .find(|p| p.credential_id == credential_id.as_bytes())
            .map(|p| p.record_id)
    }

    /// Takes a passkey out of the trash, brings back one another device purged, or puts back the last good
    /// version of one whose content another device replaced; `false` if it is none of these.
    pub(super) fn trash_restore(&mut self, credential_id: &CredentialId) -> Result<bool, Error> {
        let now = crate::now_ms();
        self.refresh_pin_trust(now);
        let result = match self.find_trashed(credential_id) {
            Some(id) => self
                .vault
                .restore(&id, now)
                .map(|()| {
                    let _ = self.store.remove(Meta::TrashSeen(&id));
                    true
                })
                .map_err(Error::from),
            None => match self
                .vault
                .vanished()
                .into_iter()
                .find(|v| v.passkey.credential_id == credential_id.as_bytes())
            {
                Some(v) => self
                    .vault
                    .bring_back(&v.passkey.record_id, now)
                    .map(|()| true)
                    .map_err(Error::from),
                None => match self
                    .altered_versions(now)
                    .into_iter()
                    .find(|(_, v)| v.credential_id == credential_id.as_bytes())
                {
                    Some((_, v)) => {
                        let id = v.record_id;
                        self.vault
                            .restore_version(v, now)
                            .map(|()| {
                                let _ = self.store.remove(Meta::Altered(&id));
                                true
                            })
                            .map_err(Error::from)
                    }
                    None => Ok(false),
                },
            },
        };
        self.dirty |= matches!(result, Ok(true));
        self.local_change();
        result
    }

    /// Purges one trashed passkey, or the whole trash, and rotates the vault key. With `approval` (the key of
    /// the PIN the caller verified) the purge is approved, which also confirms what other devices purged (the
    /// count includes those): so while there are such passkeys, only a purge of the whole trash is approved.
    pub(super) fn trash_purge(
        &mut self,
        credential_id: Option<&CredentialId>,
        approval: Option<&PinKey>,
    ) -> Result<(u64, Option<Epoch>), Error> {
        let ids: Vec<RecordId> = match credential_id {
            Some(c) => self.find_trashed(c).into_iter().collect(),
            None => self.vault.trashed().map(|p| p.record_id).collect(),
        };
        self.refresh_pin_trust(crate::now_ms());
        let vanished = self.vault.vanished().len() as u64;
        // An approval confirms what other devices purged as well: only a purge of the whole trash (whose list
        // shows them) makes one while there are such passkeys.
        let approval = approval.filter(|_| credential_id.is_none() || vanished == 0);
        let confirmed = if approval.is_some() { vanished } else { 0 };
        let (n, epoch) = self.purge(&ids, approval)?;
        Ok((n + if epoch.is_some() { confirmed } else { 0 }, epoch))
    }

    fn purge(
        &mut self,
        ids: &[RecordId],
        approval: Option<&PinKey>,
    ) -> Result<(u64, Option<Epoch>), Error> {
        if ids.is_empty() && approval.is_none() {
            return Ok((0, None));
        }
        let result = self.vault.purge(ids, crate::now_ms(), approval);
        for id in ids {
            let _ = self.store.remove(Meta::TrashSeen(id));
        }
        // Whatever happened, the document may have changed (the deletions are written before the rotation).
        self.dirty = true;
        // The old epochs are to be destroyed once everything is under the new one (see `Actor::keep_keys`).
        self.maintenance_due = true;
        self.local_change();
        let (n, epoch) = result?;
        Ok((n as u64, epoch))
    }

    /// Purges the passkeys this device has seen in the trash for longer than `[vault] trash_days`, and notes the
    /// ones it sees there for the first time. Hourly, and at start: one look at each trashed passkey.
    pub(super) fn purge_expired(&mut self) {
        let now = crate::now_ms();
        let mut ids = Vec::new();
        let mut unseen = Vec::new();
        for p in self.vault.trashed() {
            let at = p.trashed_at_ms.unwrap_or_default();
            match self.seen(&p.record_id, at) {
                None => unseen.push((p.record_id, at)),
                Some(_) if self.purge_at(p, now) <= now => ids.push(p.record_id),
                Some(_) => {}
            }
        }
        for (id, at) in unseen {
            self.note_seen(&id, at, now);
        }
        if ids.is_empty() {
            return;
        }
        match self.purge(&ids, None) {
            Ok((n, _)) => {
                tracing::info!(passkeys = n, "purged passkeys kept in the trash too long")
            }
            Err(e) => tracing::warn!(error = %e, "purging the expired trash failed"),
        }
    }

    /// One page of the audit log (oldest first) with the number of entries, the devices and passkeys it names
    /// resolved where this device knows them.
    pub(super) fn audit(&mut self, offset: u64, limit: usize) -> (Vec<AuditInfo>, u64) {
        let entries = self.vault.audit();
        let total = entries.len() as u64;
        let devices: std::collections::HashMap<String, String> = self
            .vault
            .devices()
            .into_iter()
            .map(|d| (d.id.to_string(), d.name))
            .collect();
        let page = entries
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit)
            .map(|a| self.audit_info(a, &devices))
            .collect();
        (page, total)
    }

    fn audit_info(
        &self,
        a: AuditEntry,
        devices: &std::collections::HashMap<String, String>,
    ) -> AuditInfo {
        let subject_name = match a.event {
            Event::Paired | Event::Removed | Event::DeviceRenamed => {
                devices.get(&a.subject).cloned()
            }
            Event::Trashed | Event::Restored | Event::Purged => a
                .subject
                .parse::<RecordId>()
                .ok()
                .and_then(|id| self.vault.passkey(&id))
                .map(|p| match &p.label {
                    Some(label) => format!("{} {} ({label})", p.rp_id, p.user_name),
                    None => format!("{} {}", p.rp_id, p.user_name),
                }),
            _ => None,
        };
        let (verified, problem) = match a.verdict {
            Verdict::Verified => (true, None),
            Verdict::Forged(why) => (false, Some(format!("forged: {why}"))),
            Verdict::Altered => (
                false,
                Some("altered: written under another entry's key".to_owned()),
            ),
        };
        AuditInfo {
            at_ms: a.at_ms,
            device_name: devices.get(a.device.as_str()).cloned(),
            device_id: a.device.to_string(),
            event: a.event.name(),
            subject: a.subject,
            subject_name,
            verified,
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use passmesh_crdt::NewPasskey;
    use zeroize::Zeroizing;

    use crate::custody::Custody;
    use crate::custody::keystore::{Choice, TpmOptions};
    use crate::vault::{self, Rules};

    fn passkey(n: u8) -> NewPasskey {
        NewPasskey {
            credential_id: vec![n; 16],
            rp_id: "example.com".into(),
            user_handle: vec![n],
            user_name: format!("user{n}"),
            user_display_name: String::new(),
            private_key: Zeroizing::new(vec![0x80 | n; 32]),
            created_at_ms: 1,
        }
    }

    /// The software keystore, with no TPM to find.
    pub(super) fn software() -> Custody {
        Custody::new(
            Choice::Software,
            TpmOptions {
                tcti: "device:/nonexistent".into(),
                pcrs: vec![],
            },
        )
    }

    /// Opens the vault in `dir`, runs `f` on it and stops it again.
    fn with_vault(dir: &std::path::Path, rules: Rules, f: impl AsyncFnOnce(&vault::Handle)) {
        let (running, _) = vault::open(dir, &software(), rules).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f(&running.handle));
        drop(running.handle);
        running.thread.join().unwrap();
    }

    #[test]
    fn a_passkey_kept_in_the_trash_longer_than_trash_days_is_purged_and_logged() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let days = Rules::default();
        with_vault(&dir, days, async |v| {
            v.insert(passkey(1)).await.unwrap();
            v.insert(passkey(2)).await.unwrap();
            assert!(v.delete(vec![1; 16].into()).await.unwrap());
            let (trash, total) = v.trash_list(0, 10).await.unwrap();
            assert_eq!(total, 1);
            let t = &trash[0];
            assert_eq!(t.purge_at_ms - t.trashed_at_ms, 30 * 86_400_000);
        });
        // Opened again with the default keeping time: nothing is due yet.
        with_vault(&dir, days, async |v| {
            assert_eq!(v.trash_list(0, 10).await.unwrap().1, 1);
        });
        // A keeping time that has passed: the look at start purges it, and the log says so.
        let short = Rules {
            trash: Duration::from_millis(1),
            ..Rules::default()
        };
        std::thread::sleep(Duration::from_millis(5));
        with_vault(&dir, short, async |v| {
            assert_eq!(v.trash_list(0, 10).await.unwrap().1, 0);
            let (list, total) = v.list(None, 0, 10).await.unwrap();
            assert_eq!((list.len(), total), (1, 1));
            let (log, _) = v.audit(0, 100).await.unwrap();
            let events: Vec<&str> = log.iter().map(|e| e.event.as_str()).collect();
            assert_eq!(
                events,
                ["passkey-trashed", "passkey-purged", "key-rotated"],
                "{log:?}"
            );
            assert!(log.iter().all(|e| e.verified));
        });
    }
}

#[cfg(test)]
mod joining {
    use passmesh_crdt::{Device, Keyring};
    use zeroize::Zeroizing;

    use crate::vault::{self, Member, Rules};

    /// A joining device seals only the epoch keys it was sent: an inbox key in them (the inviter's, which could
    /// open what is later wrapped to this device) is dropped and a fresh one made.
    #[test]
    fn a_joining_device_keeps_no_inbox_key_the_inviter_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let custody = super::tests::software();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (inviter, _) = vault::open(&tmp.path().join("a"), &custody, Rules::default()).unwrap();
        let info = rt.block_on(inviter.handle.join_info()).unwrap();
        // The inviter's keyring with an inbox key planted in it: version 2, floor 0, generation 7, secret 0x42….
        let planted = [0x42u8; 32];
        let mut sent = vec![2u8];
        sent.extend_from_slice(&info.keyring[1..5]);
        sent.extend_from_slice(&0u32.to_be_bytes());
        sent.extend_from_slice(&7u32.to_be_bytes());
        sent.extend_from_slice(&planted);
        sent.extend_from_slice(&info.keyring[5..]);
        assert!(Keyring::decode(&sent).unwrap().inbox_generation() == Some(7));

        let dir = tmp.path().join("b");
        let (joiner, _) = vault::open(&dir, &custody, Rules::default()).unwrap();
        let me = Device {
            id: crate::ids::device_id(&joiner.identity.peer_id()),
            name: "joiner".into(),
            x25519_public: passmesh_transport::pairing::PairKey::derive(&joiner.identity).public(),
            added_by: Some(info.device.id.clone()),
            added_at_ms: 1,
            signature: None,
        };
        let members = vec![Member {
            device: info.device.clone(),
            addrs: vec![],
        }];
        rt.block_on(joiner.handle.adopt(
            info.vault_id,
            Zeroizing::new(sent),
            members,
            me,
            info.anchors.clone(),
            false,
        ))
        .unwrap();
        // A batch after the adoption: the joiner seals its own inbox key.
        rt.block_on(joiner.handle.status()).unwrap();
        for running in [joiner, inviter] {
            drop(running.handle);
            running.thread.join().unwrap();
        }
        let db = dir.join(crate::layout::DB);
        let blob = crate::store::read_keyring(&db).unwrap().unwrap();
        let mut opened = custody.open_for(Some(&blob)).unwrap();
        let sealed = Keyring::decode(&opened.keystore.unseal(&blob).unwrap()).unwrap();
        let bytes = sealed.encode();
        assert!(
            !bytes.windows(32).any(|w| w == planted),
            "the inviter's inbox key was kept"
        );
        assert_eq!(sealed.inbox_generation(), Some(1));
    }
}
