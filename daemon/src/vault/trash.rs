//! The trash and the audit log, as the vault actor serves them: listing, restoring and purging trashed
//! passkeys, purging those kept longer than `[vault] trash_days`, and the audit log with names resolved.

use passmesh_crdt::{AuditEntry, CredentialId, Epoch, Event, Passkey, PinKey, RecordId, Verdict};
use passmesh_ipc::{AuditInfo, TrashedPasskey};

use super::actor::Actor;
use super::passkeys::info;
use super::{Error, Purged};
use crate::store::{Durability, Meta};

/// What this device noted about a passkey another device took away (sled `lost/<record id>`): when (u64 ms),
/// whether it was ever replaced or made unreadable rather than deleted (u8 0/1), the document heads before the
/// first loss (u16 count, 32 bytes each) and the changes that deleted it (32 bytes each, the rest; none: it
/// was replaced or made unreadable).
pub(super) struct LossNote {
    pub(super) at_ms: u64,
    /// Once replaced, never confirmable: an approval confirms deletions only (a later deletion of the
    /// replaced passkey — the user purging the thief's version — must not confirm losing the good one).
    pub(super) replaced: bool,
    pub(super) before: Vec<[u8; 32]>,
    pub(super) deleted_by: Vec<[u8; 32]>,
}

impl LossNote {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.at_ms.to_be_bytes().to_vec();
        out.push(u8::from(self.replaced));
        out.extend_from_slice(
            &u16::try_from(self.before.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for h in self.before.iter().take(usize::from(u16::MAX)) {
            out.extend_from_slice(h);
        }
        for h in &self.deleted_by {
            out.extend_from_slice(h);
        }
        out
    }

    /// The note after loss `l` at `now_ms`, given the note so far: the first version is kept, the time renewed,
    /// the deleting changes gathered; once replaced, it stays replaced.
    fn noted(previous: Option<LossNote>, l: &passmesh_crdt::Lost, now_ms: u64) -> LossNote {
        match previous {
            Some(mut first) => {
                first.at_ms = now_ms;
                first.replaced |= l.deleted_by.is_empty();
                for d in &l.deleted_by {
                    if !first.deleted_by.contains(d) {
                        first.deleted_by.push(*d);
                    }
                }
                first
            }
            None => LossNote {
                at_ms: now_ms,
                replaced: l.deleted_by.is_empty(),
                before: l.before.clone(),
                deleted_by: l.deleted_by.clone(),
            },
        }
    }

    /// `None` for bytes that are not a note (a damaged store: the note is dropped, nothing else changes).
    fn decode(bytes: &[u8]) -> Option<LossNote> {
        let at_ms = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let replaced = match bytes.get(8)? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let n = usize::from(u16::from_be_bytes(bytes.get(9..11)?.try_into().ok()?));
        let rest = bytes.get(11..)?;
        if rest.len() % 32 != 0 || rest.len() / 32 < n {
            return None;
        }
        let hashes: Vec<[u8; 32]> = rest
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok())
            .collect();
        Some(LossNote {
            at_ms,
            replaced,
            before: hashes[..n].to_vec(),
            deleted_by: hashes[n..].to_vec(),
        })
    }
}

/// A passkey another device took away, as the trash offers it back.
struct Loss {
    note: LossNote,
    /// Its last good version.
    version: Passkey,
    /// The device whose purge entry is in a deleting change.
    purged_by: Option<passmesh_crdt::DeviceId>,
}

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
        self.seen(&p.record_id, p.trashed_at_ms.unwrap_or_default())
            .unwrap_or(now_ms)
            .saturating_add(self.keep_ms())
    }

    /// Notes (on disk) the passkeys the remote changes just applied took away (see
    /// [`passmesh_crdt::Vault::take_lost`]), with where their last good version is. A passkey already noted
    /// keeps its first version (the last good one) and gets the new time; every loss starts the keeping time of
    /// old keys over (the last good version may be under one).
    pub(super) fn note_lost(&mut self) {
        let lost = self.vault.take_lost();
        if lost.is_empty() {
            return;
        }
        let now = crate::now_ms();
        for l in &lost {
            let previous = self
                .store
                .get(Meta::Lost(&l.record_id))
                .ok()
                .flatten()
                .and_then(|v| LossNote::decode(&v));
            let note = LossNote::noted(previous, l, now);
            if let Err(e) =
                self.store
                    .put(Meta::Lost(&l.record_id), &note.encode(), Durability::Lazy)
            {
                tracing::warn!(error = %e, "cannot note a passkey another device took away");
            }
        }
        let _ = self.store.remove(Meta::EpochSeen);
        tracing::warn!(
            passkeys = lost.len(),
            "another device deleted or replaced passkeys; they are restorable from the trash"
        );
    }

    /// The passkeys other devices took away that this device still offers back, with their notes. Notes that no
    /// longer serve are dropped: the passkey is back as it was, the user confirmed the deletion (an approved
    /// purge after it, see [`passmesh_crdt::Vault::confirmed`]), the keeping time is over, or the version can
    /// no longer be read. O(notes) reads of old versions from the document's history.
    fn losses(&mut self, now_ms: u64) -> Vec<Loss> {
        let keep = self.keep_ms();
        let mut notes = Vec::new();
        for (id, value) in self.store.losses().unwrap_or_default() {
            match LossNote::decode(&value).filter(|n| n.at_ms.saturating_add(keep) > now_ms) {
                Some(note) => notes.push((id, note)),
                None => {
                    let _ = self.store.remove(Meta::Lost(&id));
                }
            }
        }
        let asked: Vec<(RecordId, &[[u8; 32]])> = notes
            .iter()
            // A passkey ever replaced is never confirmed (see `LossNote::replaced`).
            .map(|(id, n)| {
                (
                    *id,
                    if n.replaced {
                        &[][..]
                    } else {
                        n.deleted_by.as_slice()
                    },
                )
            })
            .collect();
        let answers = self.vault.confirmations(&asked);
        let mut out = Vec::new();
        for ((id, note), (confirmed, purged_by)) in notes.into_iter().zip(answers) {
            let version = (!confirmed)
                .then(|| self.vault.version_at(&id, &note.before))
                .flatten();
            let kept = version.filter(|v| {
                !self
                    .vault
                    .passkey(&id)
                    .is_some_and(|now| now.is_same_passkey(v))
            });
            match kept {
                Some(version) => out.push(Loss {
                    note,
                    version,
                    purged_by,
                }),
                None => {
                    let _ = self.store.remove(Meta::Lost(&id));
                }
            }
        }
        out.sort_by_key(|l| std::cmp::Reverse(l.note.at_ms));
        out
    }

    /// One page of the trash, with the number of passkeys in it: the trashed passkeys (longest there first),
    /// then those other devices purged, deleted outright or replaced that this device still offers back (see
    /// `Actor::losses`).
    pub(super) fn trash_list(&mut self, offset: u64, limit: usize) -> (Vec<TrashedPasskey>, u64) {
        let now = crate::now_ms();
        self.refresh_pin_trust(now);
        let losses = self.losses(now);
        let keep = self.keep_ms();
        let total = (self.vault.trashed_len() + losses.len()) as u64;
        let lost = losses.iter().map(|l| {
            let deleted = !l.note.replaced;
            TrashedPasskey {
                passkey: info(&l.version, false),
                trashed_at_ms: l.note.at_ms,
                purge_at_ms: l.note.at_ms.saturating_add(keep),
                purged: deleted,
                purged_by: l.purged_by.as_ref().map(ToString::to_string),
                altered: !deleted,
            }
        });
        let trashed = self.vault.trashed().map(|p| TrashedPasskey {
            passkey: info(p, self.replication.held(&p.record_id)),
            trashed_at_ms: p.trashed_at_ms.unwrap_or_default(),
            purge_at_ms: self.purge_at(p, now),
            purged: false,
            purged_by: None,
            altered: false,
        });
        let page = trashed
            .chain(lost)
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit)
            .collect();
        (page, total)
    }

    /// Whether some passkey another device took away is still offered back (and its keys must stay); the caller
    /// has refreshed the PIN-key trust.
    pub(super) fn losses_pending(&mut self, now_ms: u64) -> bool {
        !self.losses(now_ms).is_empty()
    }

    fn find_trashed(&self, credential_id: &CredentialId) -> Option<RecordId> {
        self.vault
            .trashed()
            .find(|p| p.credential_id == credential_id.as_bytes())
            .map(|p| p.record_id)
    }

    /// Takes a passkey out of the trash, or puts back the last good version of one another device took away;
    /// `false` if it is neither.
    pub(super) fn trash_restore(&mut self, credential_id: &CredentialId) -> Result<bool, Error> {
        let now = crate::now_ms();
        let result = match self.find_trashed(credential_id) {
            Some(id) => self
                .vault
                .restore(&id, now)
                .map(|()| {
                    let _ = self.store.remove(Meta::TrashSeen(&id));
                    true
                })
                .map_err(Error::from),
            None => {
                self.refresh_pin_trust(now);
                match self
                    .losses(now)
                    .into_iter()
                    .find(|l| l.version.credential_id == credential_id.as_bytes())
                {
                    Some(l) => {
                        let id = l.version.record_id;
                        self.vault
                            .restore_version(l.version, now)
                            .map(|()| {
                                let _ = self.store.remove(Meta::Lost(&id));
                                true
                            })
                            .map_err(Error::from)
                    }
                    None => Ok(false),
                }
            }
        };
        self.dirty |= matches!(result, Ok(true));
        self.local_change();
        result
    }

    /// Purges one trashed passkey, or the whole trash, and rotates the vault key. With `approval` (the key of
    /// the PIN the caller verified) the purge is approved, which confirms what other devices took away, too: so
    /// while there is some, only a purge of the whole trash (whose list shows it) is approved, and it counts
    /// those passkeys and drops what this device offered back.
    pub(super) fn trash_purge(
        &mut self,
        credential_id: Option<&CredentialId>,
        approval: Option<&PinKey>,
    ) -> Result<Purged, Error> {
        let now = crate::now_ms();
        let ids: Vec<RecordId> = match credential_id {
            Some(c) => self.find_trashed(c).into_iter().collect(),
            None => self.vault.trashed().map(|p| p.record_id).collect(),
        };
        self.refresh_pin_trust(now);
        let losses = self.losses(now);
        let approval = approval.filter(|_| credential_id.is_none() || losses.is_empty());
        if ids.is_empty() && (approval.is_none() || losses.is_empty()) {
            return Ok(Purged {
                count: 0,
                epoch: None,
                approved: false,
            });
        }
        let (n, epoch) = self.purge(&ids, approval)?;
        // Written and counting (this device trusts its own PIN key): not when the chain could not be extended.
        let approved = approval.is_some() && epoch.is_some() && self.vault.current_approved();
        if approved {
            for l in &losses {
                let _ = self.store.remove(Meta::Lost(&l.version.record_id));
            }
            return Ok(Purged {
                count: n + losses.len() as u64,
                epoch,
                approved: true,
            });
        }
        Ok(Purged {
            count: n,
            epoch,
            approved: false,
        })
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
pub(super) mod tests {
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
    pub(in crate::vault) fn software() -> Custody {
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
mod notes {
    use super::LossNote;
    use passmesh_crdt::{Lost, RecordId};

    #[test]
    fn a_replaced_passkey_stays_unconfirmable_when_it_is_deleted_later() {
        // A thief replaces the passkey (the user's good version is before [1]); the user then purges the
        // thief's version: the note keeps the good version and stays a replacement, which no approval confirms.
        let id = RecordId::from_bytes([5; 16]);
        let replaced = Lost {
            record_id: id,
            before: vec![[1; 32]],
            deleted_by: Vec::new(),
        };
        let purged = Lost {
            record_id: id,
            before: vec![[2; 32]],
            deleted_by: vec![[3; 32]],
        };
        let first = LossNote::noted(None, &replaced, 10);
        let both = LossNote::noted(Some(first), &purged, 20);
        assert!(both.replaced);
        assert_eq!(
            (both.at_ms, both.before, both.deleted_by),
            (20, vec![[1; 32]], vec![[3; 32]])
        );
        // A deletion alone is confirmable; noted twice, its changes are not repeated.
        let once = LossNote::noted(None, &purged, 10);
        let twice = LossNote::noted(Some(once), &purged, 20);
        assert!(!twice.replaced);
        assert_eq!(twice.deleted_by, vec![[3; 32]]);
    }

    #[test]
    fn a_loss_note_round_trips_and_damaged_bytes_are_no_note() {
        let note = LossNote {
            at_ms: 42,
            replaced: true,
            before: vec![[1; 32], [2; 32]],
            deleted_by: vec![[3; 32]],
        };
        let bytes = note.encode();
        let back = LossNote::decode(&bytes).expect("decodes");
        assert_eq!(
            (back.at_ms, back.replaced, back.before, back.deleted_by),
            (42, true, note.before.clone(), note.deleted_by.clone())
        );
        // Truncated, a ragged tail, or more heads announced than present: dropped, never a panic.
        for bad in [
            &bytes[..5],
            &bytes[..bytes.len() - 1],
            &[&bytes[..9], &[0xff, 0xff][..], &bytes[11..]].concat()[..],
            &[&bytes[..8], &[2][..], &bytes[9..]].concat()[..],
            &[][..],
        ] {
            assert!(LossNote::decode(bad).is_none(), "{bad:?}");
        }
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
            kind: passmesh_crdt::MemberKind::Device,
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
