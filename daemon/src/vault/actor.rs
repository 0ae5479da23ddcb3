//! The vault actor's loop: it takes up to [`BATCH`] queued commands, applies them, persists what changed
//! with one incremental chunk and one flush (group commit), answers, and only then lets replication send.
//! After a failed write the document goes back to what the store holds and the next write is a full snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use p256::ecdsa::SigningKey;
use passmesh_crdt::{CredentialId, SyncState, Vault};
use passmesh_transport::PeerId;
use tokio::sync::mpsc;

use super::replication::{Action, PeerStore, Replication};
use super::{Command, Error, Outbound, PeerEvent, Reply, Status};
use crate::custody::Custody;
use crate::pin::{PinState, Policy};
use crate::store::{self, Durability, Meta, Store};
use passmesh_ipc::OldKeysInfo;

/// Commands applied per group commit at most.
const BATCH: usize = 64;
/// Incremental chunks kept before the document is compacted into one snapshot.
const COMPACT_AFTER: u64 = 512;

pub(super) struct Actor {
    pub(super) vault: Vault,
    /// Parsed signing keys by credential id: building a `SigningKey` derives its public key, a scalar
    /// multiplication as costly as the signature itself, so it is done once per credential, not per `get`.
    pub(super) keys: HashMap<CredentialId, Arc<SigningKey>>,
    pub(super) store: Store,
    pub(super) pin: PinState,
    pub(super) policy: Policy,
    /// How long a passkey stays in the trash before it is purged.
    pub(super) trash_for: std::time::Duration,
    /// Changes applied in memory but not yet stored.
    pub(super) dirty: bool,
    /// A write failed: the next one must store a full snapshot.
    pub(super) full_save_needed: bool,
    /// Changes arrived from peers, or the membership changed: the keys may need maintenance (see
    /// [`Actor::maintain`]). Local passkey writes never do (they are under the current epoch), so `create`
    /// does not pay for a look at every record.
    pub(super) maintenance_due: bool,
    /// This device.
    pub(super) me: PeerId,
    /// To the network task.
    pub(super) out: mpsc::Sender<Outbound>,
    pub(super) replication: Replication,
    /// This device's x25519 public key (derived from its identity), for its device-table entry.
    pub(super) x25519: [u8; 32],
    /// This device's identity (a vault adopted when joining gets its keys).
    pub(super) identity: passmesh_transport::Identity,
    /// The store's directory (the sealed keyring lives beside the database).
    pub(super) db: PathBuf,
    /// How to reopen the keystore, for the one write that needs it after start-up (adopting a vault).
    pub(super) custody: Custody,
    /// What keeps old epoch keys on this device, as of the last [`Actor::keep_keys`] (for `status`).
    pub(super) old_keys: OldKeysState,
    /// Bumped after each batch that stored changes to the document.
    pub(super) changes: tokio::sync::watch::Sender<u64>,
}

/// What keeps this device's epoch keys before the current one.
#[derive(Clone, Debug, Default)]
pub(crate) enum OldKeysState {
    /// None kept (or not known yet).
    #[default]
    None,
    /// Kept until then, unless a purge is approved with the PIN (see [`Actor::keys_kept_until`]).
    Kept { until_ms: u64 },
    /// The keeping time is over (or a purge was approved), and the document still needs them.
    Waiting(passmesh_crdt::OldKeys),
}

/// The store as replication's [`PeerStore`]: sync states and last-sync times as metadata.
pub(super) struct Peers<'a>(pub(super) &'a Store);

impl PeerStore for Peers<'_> {
    fn sync_state(&self, peer: &PeerId) -> SyncState {
        match self.0.get(Meta::SyncState(peer)) {
            Ok(Some(b)) => SyncState::decode(&b).unwrap_or_default(),
            _ => SyncState::new(),
        }
    }

    fn last_sync(&self, peer: &PeerId) -> Option<u64> {
        self.0
            .get(Meta::LastSync(peer))
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
    }

    fn save(&mut self, peer: &PeerId, state: &SyncState, now_ms: u64) {
        // Lost in a crash, the exchange starts over from the previous state: no flush of its own.
        if let Err(e) = self
            .0
            .put(Meta::SyncState(peer), &state.encode(), Durability::Lazy)
            .and_then(|()| {
                self.0.put(
                    Meta::LastSync(peer),
                    &now_ms.to_be_bytes(),
                    Durability::Lazy,
                )
            })
        {
            tracing::warn!(error = %e, "cannot store a sync state");
        }
    }
}

/// Replies held back until the batch's writes are on disk: a reader must never see what a crash could still
/// lose, and a writer is answered with the persist failure instead of its success.
#[derive(Default)]
pub(super) struct Deferred(Vec<Answer>);

/// One held-back reply, given the batch's persist failure if there was one.
type Answer = Box<dyn FnOnce(Option<&Arc<Error>>) + Send>;

impl Deferred {
    /// Answers `value` once the batch is on disk.
    pub(super) fn read<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        self.0.push(Box::new(move |_| {
            let _ = reply.send(value);
        }));
    }

    /// Answers a write's `value` once the batch is on disk, or the batch's failure instead of a success.
    pub(super) fn write<T: Send + 'static>(
        &mut self,
        reply: Reply<Result<T, Error>>,
        value: Result<T, Error>,
    ) {
        self.0.push(Box::new(move |failure| {
            let value = match (value, failure) {
                (Ok(_), Some(f)) => Err(Error::Persist(Arc::clone(f))),
                (v, _) => v,
            };
            let _ = reply.send(value);
        }));
    }

    fn answer(&mut self, failure: Option<&Arc<Error>>) {
        for reply in self.0.drain(..) {
            reply(failure);
        }
    }
}

impl Actor {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut deferred = Deferred::default();
        self.send_paired();
        while let Some(cmd) = rx.blocking_recv() {
            self.apply(cmd, &mut deferred);
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(cmd) => self.apply(cmd, &mut deferred),
                    Err(_) => break,
                }
            }
            let maintained = self.maintenance_due;
            if maintained {
                self.maintain();
            }
            let wrote = self.dirty;
            let failure = self.persist().err().map(|e| {
                tracing::error!(error = %e, "persisting the vault failed");
                Arc::new(e)
            });
            deferred.answer(failure.as_ref());
            let now = crate::now_ms();
            if failure.is_some() {
                // The document went back to what is on disk: every exchange starts over from there.
                self.replication.persist_failed(now, &Peers(&self.store));
            } else if wrote {
                self.replication.persisted();
                self.changes.send_modify(|n| *n += 1);
            }
            if maintained && failure.is_none() {
                // Only once the batch (a rotation, re-encrypted records) is on disk may old keys go.
                self.keep_keys();
                if let Err(e) = self.persist() {
                    tracing::error!(error = %e, "persisting this device's inbox key failed");
                }
            }
            let due = self.replication.push(&mut self.vault, now);
            self.act(due);
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    /// Dispatches one command to its handler; replies that reveal state wait in `deferred` for the flush.
    fn apply(&mut self, cmd: Command, deferred: &mut Deferred) {
        match cmd {
            Command::AnyExcluded { rp_id, ids, reply } => {
                deferred.read(reply, self.any_excluded(&rp_id, &ids));
            }
            Command::Insert { passkey, reply } => deferred.write(reply, self.insert(*passkey)),
            Command::FindForGet {
                rp_id,
                allow,
                reply,
            } => deferred.read(reply, self.find_for_get(&rp_id, &allow)),
            Command::List {
                rp_id,
                offset,
                limit,
                reply,
            } => deferred.read(reply, self.list(rp_id.as_deref(), offset, limit)),
            Command::Delete {
                credential_id,
                reply,
            } => deferred.write(reply, self.delete(&credential_id)),
            Command::Rename {
                credential_id,
                label,
                reply,
            } => deferred.write(reply, self.rename(&credential_id, &label)),
            Command::Status { reply } => deferred.read(reply, self.status()),
            Command::TrashList {
                offset,
                limit,
                reply,
            } => deferred.read(reply, self.trash_list(offset, limit)),
            Command::TrashRestore {
                credential_id,
                reply,
            } => deferred.write(reply, self.trash_restore(&credential_id)),
            Command::TrashPurge {
                credential_id,
                approval,
                reply,
            } => deferred.write(
                reply,
                self.trash_purge(credential_id.as_ref(), approval.as_deref()),
            ),
            Command::Audit {
                offset,
                limit,
                reply,
            } => deferred.read(reply, self.audit(offset, limit)),
            Command::Tick => {
                self.purge_expired();
                // Old keys kept for a while (see `Actor::keep_keys`) go once that while is over.
                self.maintenance_due = true;
            }
            Command::Peer(event) => self.peer_event(event),
            Command::AddDevice {
                device,
                addrs,
                reply,
            } => deferred.write(reply, self.add_device(*device, &addrs)),
            Command::Members { reply } => deferred.read(reply, self.members()),
            Command::JoinInfo { reply } => {
                let _ = reply.send(self.join_info());
            }
            Command::Adopt { adoption, reply } => {
                let _ = reply.send(self.adopt(*adoption));
            }
            // Counters and lockouts already running are kept; the new limits apply from the next attempt.
            Command::SetRules { rules, reply } => {
                self.policy = rules.pin;
                self.trash_for = rules.trash;
                let _ = reply.send(());
            }
            Command::PinBegin { reply } => {
                let _ = reply.send(self.pin_begin());
            }
            Command::PinFinish { ok, reply } => {
                let _ = reply.send(self.pin_finish(ok));
            }
            Command::SetPin {
                hash,
                previous,
                keys,
                reply,
            } => deferred.write(reply, self.set_pin(hash, previous, keys.map(|k| *k))),
            Command::Devices { reply } => deferred.read(reply, self.device_entries()),
            Command::RenameDevice { id, name, reply } => {
                deferred.write(reply, self.rename_device(&id, &name));
            }
            Command::RemoveDevice { id, reply } => deferred.write(reply, self.remove_device(&id)),
            Command::SetAnchors { anchors, reply } => {
                let _ = reply.send(self.set_anchors(&anchors));
            }
            Command::SetRecovery {
                id,
                x25519,
                anchors,
                signature,
                replace,
                reply,
            } => deferred.write(
                reply,
                self.set_recovery(&id, x25519, &anchors, &signature, replace),
            ),
            Command::Snapshot {
                only_if_changed,
                reply,
            } => deferred.read(reply, self.snapshot(only_if_changed)),
            Command::BackupWritten {
                heads,
                at_ms,
                file,
                keep,
                reply,
            } => {
                let _ = reply.send(self.backup_written(&heads, at_ms, &file, keep));
            }
            Command::Restore {
                payload,
                recovery,
                name,
                reply,
            } => {
                let _ = reply.send(self.restore(&payload, *recovery, &name));
            }
            Command::TrustPinKeys { keys, reply } => {
                let _ = reply.send(self.trust_pin_keys(&keys));
            }
        }
    }

    fn status(&self) -> Status {
        let now = crate::now_ms();
        Status {
            vault_id: self.vault.id().to_string(),
            passkeys: self.vault.len() as u64,
            pin_set: self.pin.hash.is_some(),
            pin_attempts_left: self.pin.attempts_left(now, &self.policy),
            pin_locked_for_ms: self
                .pin
                .locked_for(now)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            device_id: self.me.to_string(),
            peers: self.replication.status(&self.vault, &Peers(&self.store)),
            old_keys: self.old_keys_info(),
            recovery: self.recovery_status(),
        }
    }

    fn peer_event(&mut self, event: PeerEvent) {
        let store = Peers(&self.store);
        match event {
            PeerEvent::Connected { peer, addr } => {
                self.replication.connected(&self.vault, peer, addr, &store);
            }
            PeerEvent::Disconnected { peer } => self.replication.disconnected(peer, &store),
            PeerEvent::Reset { peer } => self.replication.reset(peer, &store),
            PeerEvent::Message { peer, bytes } => {
                let mut store = Peers(&self.store);
                let received = self.replication.receive(
                    &mut self.vault,
                    peer,
                    &bytes,
                    crate::now_ms(),
                    &mut store,
                );
                self.dirty |= received.changed;
                self.maintenance_due |= received.changed;
                if received.changed {
                    self.note_lost();
                }
                self.act(received.actions);
            }
        }
    }

    /// Hands replication's actions to the network task.
    fn act(&self, actions: Vec<Action>) {
        for action in actions {
            self.send(match action {
                Action::Send { peer, bytes } => Outbound::Send { peer, bytes },
                Action::Drop(peer) => Outbound::Drop(peer),
                Action::Paired(peers) => Outbound::Paired {
                    vault: self.vault.id(),
                    peers,
                },
            });
        }
    }

    pub(super) fn send_paired(&self) {
        self.send(Outbound::Paired {
            vault: self.vault.id(),
            peers: self.replication.paired(&self.vault),
        });
    }

    fn send(&self, o: Outbound) {
        // Closed only when networking is off or shutting down; then nothing is to be sent.
        let _ = self.out.blocking_send(o);
    }

    /// Keeps the vault's keys right after changes: a new epoch when the current one was given to a device that
    /// is now removed, or records and entries left under an older epoch moved to the current one. What it
    /// writes is persisted with the batch that caused it.
    pub(super) fn maintain(&mut self) {
        self.maintenance_due = false;
        match self.vault.maintain(crate::now_ms()) {
            Ok(done) if done.changed() => {
                if let Some(epoch) = done.rotated {
                    tracing::info!(%epoch, "the vault key was rotated: a device that held it is removed");
                }
                if done.wrapped > 0 {
                    tracing::info!(
                        devices = done.wrapped,
                        "wrapped the current vault key to devices that lacked it"
                    );
                }
                if done.reencrypted > 0 {
                    tracing::info!(
                        entries = done.reencrypted,
                        "moved records written under an older key to the current one"
                    );
                }
                self.dirty = true;
                self.local_change();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "vault key maintenance failed"),
        }
    }

    /// Seals a new keyring when one is due — a first inbox key, or only the current epoch with a fresh inbox key
    /// once everything this device reads is under it (see `Vault::keyring_due`) — and only then publishes the
    /// inbox key in the document: old epoch keys are destroyed here, on disk and in memory. A failure keeps
    /// the old keyring (nothing is lost) and is tried again after the next change. Runs only when the document
    /// holds nothing unsaved: the keyring must never be ahead of what the document on disk needs (a crash
    /// between a rotation and its write would otherwise leave every record under a destroyed key).
    pub(super) fn keep_keys(&mut self) {
        if self.dirty || self.vault.has_unsaved_changes() {
            return;
        }
        let now = crate::now_ms();
        // Cheap checks first: while the old keys are kept anyway, the scan of the document that tells whether
        // they could go is not made after every batch.
        let holds_old = self.vault.keyring().epochs().nth(1).is_some();
        let kept_until = holds_old.then(|| self.keys_kept_until(now));
        let due = if let Some(until_ms) = kept_until.filter(|u| !self.may_destroy_old_keys(*u, now))
        {
            self.old_keys = OldKeysState::Kept { until_ms };
            self.vault.inbox_due()
        } else {
            let due = self.vault.keyring_due();
            self.old_keys = match &due {
                Some(next) if next.epochs().nth(1).is_none() => OldKeysState::None,
                _ if !holds_old => OldKeysState::None,
                _ => OldKeysState::Waiting(self.vault.old_keys()),
            };
            due
        };
        let written = match due {
            Some(next) => {
                let dropped = self.vault.keyring().epochs().count() - next.epochs().count();
                let sealed = store::read_keyring(&self.db)
                    .map_err(Error::from)
                    .and_then(|current| {
                        self.custody
                            .seal_like(current.as_deref(), &next.encode())
                            .map_err(Error::from)
                    })
                    .and_then(|blob| store::write_keyring(&self.db, &blob).map_err(Error::from));
                match sealed.and_then(|()| self.vault.use_keyring(next, now).map_err(Error::from)) {
                    Ok(()) => {
                        if dropped > 0 {
                            tracing::info!(
                                epochs = dropped,
                                "destroyed old vault keys: everything is under the current one"
                            );
                        }
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot seal a new keyring; the old one is kept");
                        false
                    }
                }
            }
            None => self.vault.publish_inbox(now).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot publish this device's inbox key");
                false
            }),
        };
        if written {
            self.dirty = true;
            self.local_change();
        }
    }

    /// Whether this device may destroy the keys of epochs before the current one (when nothing else needs
    /// them, see [`passmesh_crdt::Vault::keyring_due`]): once the keeping time is over (`kept_until_ms`, see
    /// [`Actor::keys_kept_until`]), or once the user approved the current epoch with the PIN (a purge with the
    /// PIN, on a device whose PIN key this one trusts) and nothing another device took away is still offered
    /// back here (an approval confirms only its own device's purges before it). Until then what another
    /// device purged, deleted or replaced — a stolen one, say — stays restorable here (see `trash_list`).
    fn may_destroy_old_keys(&mut self, kept_until_ms: u64, now_ms: u64) -> bool {
        if kept_until_ms <= now_ms {
            return true;
        }
        self.refresh_pin_trust(now_ms);
        self.vault.current_approved() && !self.losses_pending(now_ms)
    }

    /// When the keeping time of the epochs before the current one ends: `[vault] trash_days` after this device
    /// first saw the current epoch, or noted a passkey another device took away after that (noted on disk the
    /// first time it asks).
    pub(super) fn keys_kept_until(&mut self, now_ms: u64) -> u64 {
        let current = self.vault.keyring().current();
        let noted = self
            .store
            .get(Meta::EpochSeen)
            .ok()
            .flatten()
            .and_then(|b| <[u8; 12]>::try_from(b.as_slice()).ok())
            .map(|b| {
                let epoch = u32::from_be_bytes(b[..4].try_into().unwrap_or_default());
                let at = u64::from_be_bytes(b[4..].try_into().unwrap_or_default());
                (epoch, at)
            });
        let since = match noted {
            Some((epoch, at)) if epoch == current.0 => at,
            _ => {
                let mut value = current.0.to_be_bytes().to_vec();
                value.extend_from_slice(&now_ms.to_be_bytes());
                // Lost in a crash, it is noted again later: that only keeps the old keys longer.
                if let Err(e) = self.store.put(Meta::EpochSeen, &value, Durability::Lazy) {
                    tracing::warn!(error = %e, "cannot note when the current vault key was first seen");
                }
                now_ms
            }
        };
        since.saturating_add(self.keep_ms())
    }

    pub(super) fn keep_ms(&self) -> u64 {
        u64::try_from(self.trash_for.as_millis()).unwrap_or(u64::MAX)
    }

    /// Tells the vault which devices' first PIN keys this device has known for `[vault] trash_days` (noting
    /// the ones it sees for the first time): their approvals count (see [`passmesh_crdt::approval`]).
    pub(super) fn refresh_pin_trust(
        &mut self,
        now_ms: u64,
    ) -> Vec<(passmesh_crdt::DeviceId, [u8; 32])> {
        let keep = self.keep_ms();
        let me = crate::ids::device_id(&self.me);
        let mut trusted = std::collections::HashSet::new();
        for (device, root) in self.vault.pin_key_roots() {
            let noted = self
                .store
                .get(Meta::PinKeySeen(&device))
                .ok()
                .flatten()
                .and_then(|b| <[u8; 40]>::try_from(b.as_slice()).ok())
                .filter(|b| b[..32] == root)
                .map(|b| u64::from_be_bytes(b[32..].try_into().unwrap_or_default()));
            let since = noted.unwrap_or_else(|| {
                let mut value = root.to_vec();
                value.extend_from_slice(&now_ms.to_be_bytes());
                if let Err(e) = self
                    .store
                    .put(Meta::PinKeySeen(&device), &value, Durability::Lazy)
                {
                    tracing::warn!(error = %e, "cannot note when a PIN key was first seen");
                }
                now_ms
            });
            if device == me || since.saturating_add(keep) <= now_ms {
                trusted.insert((device, root));
            }
        }
        self.vault.trust_pin_keys(trusted.clone());
        trusted.into_iter().collect()
    }

    /// Trusts these first PIN keys at once (noted as seen at time 0): those the inviting device trusted.
    pub(super) fn trust_pin_keys(
        &mut self,
        keys: &[(passmesh_crdt::DeviceId, [u8; 32])],
    ) -> Result<(), Error> {
        for (device, key) in keys {
            let mut value = key.to_vec();
            value.extend_from_slice(&0u64.to_be_bytes());
            self.store
                .put(Meta::PinKeySeen(device), &value, Durability::Flushed)?;
        }
        self.refresh_pin_trust(crate::now_ms());
        Ok(())
    }

    /// What `status` says about old keys kept on this device; `None` when it keeps none.
    fn old_keys_info(&self) -> Option<OldKeysInfo> {
        use passmesh_crdt::OldKeys;
        let held = self.vault.keyring().epochs().count().saturating_sub(1);
        if held == 0 {
            return None;
        }
        let (reason, until_ms, waiting_for) = match &self.old_keys {
            OldKeysState::Kept { until_ms } => ("kept", Some(*until_ms), Vec::new()),
            OldKeysState::Waiting(OldKeys::Unacknowledged(devices)) => (
                "unacknowledged",
                None,
                devices.iter().map(ToString::to_string).collect(),
            ),
            OldKeysState::Waiting(OldKeys::StillUsed) => ("still-used", None, Vec::new()),
            OldKeysState::Waiting(OldKeys::Rotating) => ("rotating", None, Vec::new()),
            // Due, or not looked at yet: the next batch decides.
            _ => ("pending", None, Vec::new()),
        };
        Some(OldKeysInfo {
            epochs: held as u64,
            reason: reason.to_owned(),
            until_ms,
            waiting_for,
        })
    }

    /// A local change: every connected peer gets it as soon as it is on disk.
    pub(super) fn local_change(&mut self) {
        if self.dirty {
            self.replication.local_change();
        }
    }

    pub(super) fn persist(&mut self) -> Result<(), Error> {
        if !self.dirty {
            return Ok(());
        }
        let written = if self.full_save_needed {
            self.compact()
        } else {
            let chunk = self.vault.save_incremental();
            self.store.append(&chunk).map_err(Error::from)
        };
        if let Err(e) = written {
            self.recover();
            return Err(e);
        }
        self.dirty = false;
        if self.store.chunk_count() > COMPACT_AFTER
            && let Err(e) = self.compact()
        {
            // The write itself is on disk; the chunks stay until a compaction succeeds.
            tracing::warn!(error = %e, "compacting the vault failed");
        }
        Ok(())
    }

    /// After a failed write: the document in memory is ahead of the disk, and `save_incremental` has already
    /// moved on, so later chunks would depend on changes that were never stored. Go back to what the store
    /// holds (the failed change is not acknowledged, so nobody may rely on it) and make the next write a full
    /// snapshot.
    fn recover(&mut self) {
        self.full_save_needed = true;
        self.dirty = false;
        let reloaded = self.store.document().map_err(Error::from).and_then(|doc| {
            let doc = doc.ok_or_else(|| {
                Error::Store(crate::store::Error::Damaged(
                    "the store lost its document".into(),
                ))
            })?;
            Vault::load_as(
                &doc,
                self.vault.keyring().clone(),
                Some(crate::ids::local_device(&self.identity)),
            )
            .map_err(Error::from)
        });
        match reloaded {
            Ok(vault) => {
                self.vault = vault;
                self.keys.clear();
                self.maintenance_due = true;
                // A device added in the failed batch is not in the table any more: the network must not admit
                // it either.
                self.send_paired();
            }
            // Keep the in-memory state; the next successful full save stores all of it.
            Err(e) => tracing::error!(error = %e, "cannot reload the vault after a failed write"),
        }
    }

    fn compact(&mut self) -> Result<(), Error> {
        let full = self.vault.save();
        self.store.replace(&full, &[])?;
        self.full_save_needed = false;
        Ok(())
    }
}
