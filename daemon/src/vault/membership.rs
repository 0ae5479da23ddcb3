//! The device table as the vault actor keeps it: this device's own entry, devices added by pairing (with the
//! addresses learnt for them), what a joining device is handed, and adopting another vault when this device
//! joins one.

use std::collections::HashMap;

use passmesh_crdt::{Device, DeviceId, Epoch, Keyring, MemberState, Vault};
use passmesh_transport::Multiaddr;

use super::actor::Actor;
use super::{Adopted, Adoption, DeviceEntry, Error, JoinInfo, Member};
use crate::ids;
use crate::names::DeviceName;
use crate::store::{self, Durability, Meta};

/// This machine's host name, as the default device name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "passmesh device".to_owned())
}

impl Actor {
    /// Adds this device to the device table on first start (or fills in its x25519 key), and persists that.
    pub(super) fn start_up(&mut self) -> Result<(), Error> {
        let me = ids::device_id(&self.me);
        self.pin_anchors()?;
        match self.vault.devices().into_iter().find(|d| d.id == me) {
            None => {
                let mut own = Device {
                    id: me,
                    name: host_name(),
                    x25519_public: self.x25519,
                    added_by: None,
                    added_at_ms: crate::now_ms(),
                    kind: passmesh_crdt::MemberKind::Device,
                    signature: None,
                };
                self.vault.sign_entry(&mut own)?;
                self.vault.add_device(own)?;
                self.dirty = true;
            }
            // Entries written before devices had x25519 keys carry zeros: fill in the derived key.
            Some(d) if d.x25519_public != self.x25519 => {
                let mut fixed = Device {
                    x25519_public: self.x25519,
                    ..d
                };
                self.vault.sign_entry(&mut fixed)?;
                self.vault.add_device(fixed)?;
                self.dirty = true;
            }
            // An entry from before entries were signed: sign it as this device (valid where it is pinned, as on
            // every device that upgraded with it in its table).
            Some(d) if !self.own_entry_signed() => {
                let mut signed = d;
                self.vault.sign_entry(&mut signed)?;
                self.vault.add_device(signed)?;
                self.dirty = true;
            }
            Some(_) => {}
        }
        // A vault from before the extension change got it while loading.
        self.dirty |= self.vault.has_unsaved_changes();
        self.maintain();
        self.persist()?;
        self.keep_keys();
        self.persist()
    }

    /// Whether this device has a signed entry that makes it valid.
    fn own_entry_signed(&self) -> bool {
        let me = ids::device_id(&self.me);
        self.vault
            .members()
            .iter()
            .any(|m| m.device.id == me && m.signed)
    }

    /// Sets the devices this one trusts without a signature chain, pinning them on first start: this device
    /// alone for a vault it makes, or every device of the table of a vault from before entries were signed.
    fn pin_anchors(&mut self) -> Result<(), Error> {
        let anchors = match self.store.get(Meta::Anchors)? {
            Some(bytes) => serde_json::from_slice::<Vec<String>>(&bytes)
                .map_err(|e| store::Error::Damaged(format!("anchors: {e}")))?,
            None => {
                let mut ids: Vec<String> = self
                    .vault
                    .devices()
                    .into_iter()
                    .map(|d| d.id.to_string())
                    .collect();
                ids.push(self.me.to_string());
                ids.sort();
                ids.dedup();
                self.store_anchors(&ids)?;
                ids
            }
        };
        if self.store.get(Meta::SignedAnchors)?.is_some() {
            self.vault.set_signed_anchors(true);
        }
        self.vault
            .set_anchors(Some(anchors.into_iter().map(DeviceId::new).collect()));
        Ok(())
    }

    /// `anchors` and this device, sorted, as stored.
    pub(super) fn anchors_with_me(&self, anchors: &[DeviceId]) -> Vec<String> {
        let mut ids: Vec<String> = anchors.iter().map(ToString::to_string).collect();
        ids.push(self.me.to_string());
        ids.sort();
        ids.dedup();
        ids
    }

    fn store_anchors(&self, ids: &[String]) -> Result<(), Error> {
        let bytes = serde_json::to_vec(ids).map_err(|_| Error::PinState)?;
        self.store.put(Meta::Anchors, &bytes, Durability::Flushed)?;
        Ok(())
    }

    /// Trusts `anchors` (and this device) without a signature chain from now on: those of the device this one
    /// joined through.
    pub(super) fn set_anchors(&mut self, anchors: &[DeviceId]) -> Result<(), Error> {
        let mut ids: Vec<String> = anchors.iter().map(ToString::to_string).collect();
        ids.push(self.me.to_string());
        ids.sort();
        ids.dedup();
        self.store_anchors(&ids)?;
        self.vault
            .set_anchors(Some(ids.into_iter().map(DeviceId::new).collect()));
        self.maintenance_due = true;
        self.send_paired();
        Ok(())
    }

    /// The addresses learnt at pairing for the devices of the paired set, with their `/p2p/` id, to dial.
    pub(super) fn stored_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        let paired = self.replication.paired(&self.vault);
        let mut out = Vec::new();
        for (peer, value) in self.store.addrs()? {
            if !paired.contains(&peer) {
                continue;
            }
            let list: Vec<String> = serde_json::from_slice(&value).unwrap_or_default();
            // The transport dials only addresses that name the peer (`/p2p/…`): add it where missing.
            out.extend(
                list.iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok()?.with_p2p(peer).ok()),
            );
        }
        Ok(out)
    }

    /// Remembers where `device` was reachable when it was added (not flushed: the next write flushes it).
    fn remember_addrs(&self, device: &Device, addrs: &[String]) {
        let Some(peer) = ids::peer_id(&device.id) else {
            return;
        };
        let list = serde_json::to_vec(addrs).unwrap_or_default();
        if let Err(e) = self.store.put(Meta::Addrs(&peer), &list, Durability::Lazy) {
            tracing::warn!(error = %e, "cannot store peer addresses");
        }
    }

    /// Adds (or replaces) a device in the table, with the addresses it was reachable at.
    pub(super) fn add_device(&mut self, mut device: Device, addrs: &[String]) -> Result<(), Error> {
        let me = ids::device_id(&self.me);
        if device.signature.is_none() && (device.added_by.as_ref() == Some(&me) || device.id == me)
        {
            self.vault.sign_entry(&mut device)?;
        }
        let added = device.clone();
        self.vault.add_device(device)?;
        self.dirty = true;
        self.maintenance_due = true;
        self.remember_addrs(&added, addrs);
        self.send_paired();
        self.local_change();
        Ok(())
    }

    /// What a joining device gets: the vault id, the keyring and this device's entry.
    pub(super) fn join_info(&mut self) -> Result<JoinInfo, Error> {
        let me = ids::device_id(&self.me);
        let device = self
            .vault
            .members()
            .into_iter()
            .find(|m| m.device.id == me && m.state == MemberState::Active)
            .map(|m| m.device)
            .ok_or(Error::NotAMember)?;
        Ok(JoinInfo {
            vault_id: self.vault.id(),
            // Never this device's inbox key: only the epoch keys.
            keyring: self.vault.keyring().shareable().encode(),
            device,
            anchors: self
                .vault
                .anchors()
                .map(|a| a.iter().cloned().collect())
                .unwrap_or_default(),
            pin_keys: self.refresh_pin_trust(crate::now_ms()),
        })
    }

    /// Every active device with its signed entry (where it has one) and the addresses known for it. Recovery
    /// keys are not listed: a joining device learns them by sync, from the signed entries themselves.
    pub(super) fn members(&self) -> Vec<Member> {
        self.vault
            .members()
            .into_iter()
            .filter(|m| {
                m.state == MemberState::Active && m.device.kind == passmesh_crdt::MemberKind::Device
            })
            .map(|m| m.device)
            .map(|device| {
                let addrs = ids::peer_id(&device.id)
                    .and_then(|peer| self.store.get(Meta::Addrs(&peer)).ok().flatten())
                    .and_then(|b: Vec<u8>| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                Member { device, addrs }
            })
            .collect()
    }

    /// Every device-table entry with its standing, whether it is connected, and when it last synced.
    pub(super) fn device_entries(&self) -> Vec<DeviceEntry> {
        let live: HashMap<String, (bool, Option<u64>)> = self
            .replication
            .status(&self.vault, &super::actor::Peers(&self.store))
            .into_iter()
            .map(|p| (p.device_id, (p.connected, p.last_sync_ms)))
            .collect();
        let me = ids::device_id(&self.me);
        self.vault
            .members()
            .into_iter()
            .map(|member| {
                let (connected, last_seen_ms) = live
                    .get(member.device.id.as_str())
                    .copied()
                    .unwrap_or_else(|| {
                        let last = ids::peer_id(&member.device.id).and_then(|peer| {
                            use super::replication::PeerStore;
                            super::actor::Peers(&self.store).last_sync(&peer)
                        });
                        (false, last)
                    });
                DeviceEntry {
                    this_device: member.device.id == me,
                    key_epoch: self.vault.holds(&member.device.id),
                    member,
                    connected,
                    last_seen_ms,
                }
            })
            .collect()
    }

    /// Renames a device of the table.
    pub(super) fn rename_device(&mut self, id: &DeviceId, name: &DeviceName) -> Result<(), Error> {
        self.vault
            .rename_device(id, name.as_str(), crate::now_ms())?;
        self.dirty = true;
        self.local_change();
        Ok(())
    }

    /// Removes a device: a signed removal and a new key epoch that it does not get. Its connections are
    /// dropped as soon as the batch is on disk (the paired set goes to the network then).
    pub(super) fn remove_device(&mut self, id: &DeviceId) -> Result<Option<Epoch>, Error> {
        if *id == ids::device_id(&self.me) {
            return Err(Error::RemoveSelf);
        }
        let heads = self.vault.heads();
        let removed = self.vault.remove_member(id, crate::now_ms());
        if self.vault.heads() != heads {
            self.maintenance_due = true;
            // The removal is written even if its rotation failed (maintenance rotates on the next batch): it
            // is persisted, and the device dropped, either way.
            self.dirty = true;
            self.send_paired();
            self.local_change();
        }
        let epoch = removed?;
        if let Some(epoch) = epoch {
            tracing::info!(device = %id, %epoch, "removed a device; the vault key was rotated");
        }
        Ok(epoch)
    }

    /// Joining another vault is allowed only while this one is unpaired (its passkeys move along).
    fn may_adopt(&self) -> Result<(), Error> {
        let others = self.replication.paired(&self.vault).len();
        if others > 0 {
            return Err(Error::AlreadyPaired(others as u64));
        }
        // Live and trashed passkeys move along; what only this document holds (passkeys another device took away
        // that this one keeps restorable, records it cannot read) would be lost with it.
        if !self.vault.problems().is_empty() || !self.store.losses()?.is_empty() {
            return Err(Error::WouldLose);
        }
        Ok(())
    }

    /// Joins the vault an inviter hands over. Another vault replaces this one: same id and keyring, sealed by
    /// this device's keystore, with the members' entries and addresses and this device's entry, and every
    /// passkey this device held (live or in the trash) moved into it, re-encrypted under its key; the vault's
    /// own passkeys arrive by sync. The same vault (a device that survived meeting one restored from a backup,
    /// say) is kept as it is, and the members' entries are added to it, so the two sync again.
    pub(super) fn adopt(&mut self, adoption: Adoption) -> Result<Adopted, Error> {
        let same = adoption.vault_id == self.vault.id();
        if !same {
            self.may_adopt()?;
        }
        if adoption.check_only {
            return Ok(Adopted::default());
        }
        if same {
            return self.meet(&adoption.members);
        }
        let Adoption {
            vault_id,
            keyring,
            members,
            me,
            anchors,
            check_only: _,
        } = adoption;
        // The epoch keys only: an inbox key in what the inviter sent would be the inviter's (it could open what
        // is wrapped to this device later). This device makes its own.
        let ring = Keyring::decode(&keyring)
            .map_err(|_| Error::Keyring)?
            .shareable();
        let mut vault = Vault::create(vault_id, ring)?;
        vault.set_local(ids::local_device(&self.identity));
        let my_id = ids::device_id(&self.me);
        for m in &members {
            if m.device.id != my_id {
                vault.add_device(m.device.clone())?;
            }
        }
        vault.add_device(me)?;
        let merged = self.carry_passkeys(&mut vault)?;
        // Those the inviter trusts without a chain (an inviter that sends none: every member it listed), stored
        // with the document: a crash in between never leaves a vault this device is no member of.
        let anchors = if anchors.is_empty() {
            members.iter().map(|m| m.device.id.clone()).collect()
        } else {
            anchors
        };
        let pinned =
            serde_json::to_vec(&self.anchors_with_me(&anchors)).map_err(|_| Error::PinState)?;
        self.replace_vault(vault, &[(Meta::Anchors, &pinned)])?;
        for m in &members {
            self.remember_addrs(&m.device, &m.addrs);
        }
        tracing::info!(vault = %self.vault.id(), merged, "joined a vault: this device's passkeys moved into it");
        self.set_anchors(&anchors)?;
        Ok(Adopted {
            merged,
            same_vault: false,
        })
    }

    /// Copies every passkey of this device's vault (live and in the trash, with labels) into `vault`, under its
    /// key. Returns how many.
    fn carry_passkeys(&self, vault: &mut Vault) -> Result<u64, Error> {
        let now = crate::now_ms();
        let mut merged = 0;
        for p in self.vault.passkeys().chain(self.vault.trashed()) {
            let id = vault.insert(
                passmesh_crdt::NewPasskey {
                    credential_id: p.credential_id.clone(),
                    rp_id: p.rp_id.clone(),
                    user_handle: p.user_handle.clone(),
                    user_name: p.user_name.clone(),
                    user_display_name: p.user_display_name.clone(),
                    private_key: p.private_key.clone(),
                    created_at_ms: p.created_at_ms,
                },
                now,
            )?;
            if let Some(label) = &p.label {
                vault.rename(&id, label, now)?;
            }
            if p.trashed_at_ms.is_some() {
                vault.trash(&id, now)?;
            }
            merged += 1;
        }
        Ok(merged)
    }

    /// The inviter holds this very vault: adds the entries it listed that this device lacks (each is judged by
    /// its signature like any other), so the two know each other and sync.
    fn meet(&mut self, members: &[Member]) -> Result<Adopted, Error> {
        let known: std::collections::HashSet<DeviceId> = self
            .vault
            .members()
            .into_iter()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| m.device.id)
            .collect();
        for m in members {
            if !known.contains(&m.device.id) && m.device.signature.is_some() {
                self.vault.add_device(m.device.clone())?;
                self.remember_addrs(&m.device, &m.addrs);
                self.dirty = true;
            }
        }
        self.persist()?;
        self.maintenance_due = true;
        self.send_paired();
        self.local_change();
        tracing::info!(vault = %self.vault.id(), "met a device of this vault through pairing");
        Ok(Adopted {
            merged: 0,
            same_vault: true,
        })
    }

    /// Makes `vault` this device's, durably: its document and its sealed keyring in one batch (with `meta`),
    /// then the keyring file (interrupted in between, opening the store finishes it: see `vault::open`); then
    /// serves it, with every per-vault cache cleared and its keys due for maintenance.
    pub(super) fn replace_vault(
        &mut self,
        mut vault: Vault,
        meta: &[(Meta<'_>, &[u8])],
    ) -> Result<(), Error> {
        let keyring = vault.keyring().shareable().encode();
        let full = vault.save();
        let current = store::read_keyring(&self.db)?;
        let sealed = self.custody.seal_like(current.as_deref(), &keyring)?;
        let mut all: Vec<(Meta<'_>, &[u8])> = vec![(Meta::KeyringNext, &sealed)];
        all.extend_from_slice(meta);
        self.store.replace(&full, &all)?;
        store::write_keyring(&self.db, &sealed)?;
        self.store.remove(Meta::KeyringNext)?;
        self.store.flush()?;
        self.vault = vault;
        self.keys.clear();
        self.replication.clear();
        self.dirty = false;
        self.full_save_needed = false;
        self.maintenance_due = true;
        Ok(())
    }
}
