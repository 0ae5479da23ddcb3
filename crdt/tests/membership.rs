//! Removing devices: signed removals, key rotation and convergence, with replicas of real devices (their own
//! ed25519 and x25519 keys) exchanging real sync messages.

use passmesh_crdt::{
    Device, DeviceId, Epoch, Error, Event, Keyring, LocalDevice, Lost, MemberState, NewPasskey,
    Passkey, RecordId, SyncState, Vault, VaultId, VaultKey, Verdict,
};
use zeroize::Zeroizing;

const KEY: [u8; 32] = [0x42; 32];

fn keyring() -> Keyring {
    Keyring::new(Epoch(0), VaultKey::from_bytes(KEY))
}

fn local(seed: u8) -> LocalDevice {
    LocalDevice::new(
        &Zeroizing::new([seed; 32]),
        &Zeroizing::new([seed.wrapping_mul(7) ^ 0x5a; 32]),
    )
}

fn entry(d: &LocalDevice, by: Option<&LocalDevice>, name: &str) -> Device {
    Device {
        id: d.id().clone(),
        name: name.into(),
        x25519_public: d.x25519_public(),
        added_by: by.map(|b| b.id().clone()),
        added_at_ms: 1,
        kind: passmesh_crdt::MemberKind::Device,
        signature: None,
    }
}

fn passkey(n: u8) -> NewPasskey {
    NewPasskey {
        credential_id: vec![n; 16],
        rp_id: format!("site{n}.example"),
        user_handle: vec![n, 1],
        user_name: format!("user{n}"),
        user_display_name: format!("User {n}"),
        private_key: Zeroizing::new(vec![0x80 | n; 32]),
        created_at_ms: u64::from(n),
    }
}

/// `n` replicas of one vault: device 0 made it and added the others; each replica knows its own device.
fn world(n: u8) -> Vec<Vault> {
    let id = VaultId::random();
    let first = local(1);
    let mut a = Vault::create(id, keyring()).expect("create");
    a.add_device(entry(&first, None, "device 1")).expect("add");
    for i in 2..=n {
        a.add_device(entry(&local(i), Some(&first), &format!("device {i}")))
            .expect("add");
    }
    a.set_local(first);
    let bytes = a.save();
    let mut out = vec![a];
    for i in 2..=n {
        out.push(Vault::load_as(&bytes, keyring(), Some(local(i))).expect("load"));
    }
    out
}

/// Syncs `a` and `b` until neither has anything to say.
fn sync(a: &mut Vault, b: &mut Vault) {
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    for _ in 0..100 {
        let m1 = a.generate_sync_message(&mut sa);
        if let Some(m) = &m1 {
            b.receive_sync_message(&mut sb, m).expect("receive");
        }
        let m2 = b.generate_sync_message(&mut sb);
        if let Some(m) = &m2 {
            a.receive_sync_message(&mut sa, m).expect("receive");
        }
        if m1.is_none() && m2.is_none() {
            return;
        }
    }
    panic!("sync did not settle");
}

/// Syncs and maintains (as the daemon does after each batch) until nothing changes any more.
fn settle(vaults: &mut [&mut Vault]) {
    for _ in 0..10 {
        let mut changed = false;
        for i in 0..vaults.len() {
            for j in i + 1..vaults.len() {
                let (left, right) = vaults.split_at_mut(j);
                sync(left[i], right[0]);
            }
        }
        for v in vaults.iter_mut() {
            changed |= v.maintain(1_000).expect("maintain").changed();
        }
        if !changed {
            return;
        }
    }
    panic!("maintenance did not settle");
}

fn id(v: &Vault) -> DeviceId {
    v.local_device().expect("a local device").clone()
}

fn removed(v: &Vault, who: &DeviceId) -> bool {
    matches!(v.member_state(who), Some(MemberState::Removed { .. }))
}

#[test]
fn a_removed_device_cannot_read_what_is_created_after_its_removal() {
    let mut w = world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    let before = a.insert(passkey(1), 10).unwrap();
    settle(&mut [a, b, c]);
    assert!(c.passkey(&before).is_some());
    let c_id = id(c);

    let epoch = a.remove_member(&c_id, 20).unwrap().expect("a new epoch");
    assert_ne!(epoch, Epoch(0));
    assert_eq!(a.keyring().current(), epoch);
    assert!(removed(a, &c_id));
    assert!(a.passkeys().all(|p| p.epoch == epoch), "re-encrypted");
    assert_eq!(a.active_devices().len(), 2);
    // Removing it again changes nothing.
    assert_eq!(a.remove_member(&c_id, 21).unwrap(), None);

    let after = a.insert(passkey(2), 30).unwrap();
    sync(a, b);
    assert_eq!(
        b.maintain(40).unwrap(),
        passmesh_crdt::Maintenance {
            acknowledged: true,
            ..Default::default()
        },
        "B had nothing to do but acknowledge the new epoch"
    );
    assert_eq!(b.keyring().current(), epoch, "B unwrapped the new key");
    assert!(removed(b, &c_id));
    assert!(b.passkey(&after).is_some() && b.passkey(&before).is_some());
    assert!(b.problems().is_empty());

    // C's whole state (its keyring and its device keys) against the vault as it is now: nothing created after the
    // removal opens, and no key was wrapped to it.
    let now = a.save();
    let thief = Vault::load_as(&now, c.keyring().clone(), Some(local(3))).unwrap();
    assert!(thief.passkey(&after).is_none());
    assert_eq!(
        thief.decrypt_record(&after),
        Err(Error::UnknownEpoch(epoch))
    );
    assert!(thief.keyring().key(epoch).is_none());
    assert!(
        thief.is_empty(),
        "even the old passkey moved to the new epoch"
    );
}

#[test]
fn a_removal_made_during_a_partition_reaches_everyone_when_it_heals() {
    let mut w = world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    settle(&mut [a, b, c]);
    let c_id = id(c);
    // Partition: A removes C; B, not knowing, creates a passkey under the old epoch.
    let epoch = a.remove_member(&c_id, 20).unwrap().unwrap();
    let during = b.insert(passkey(5), 25).unwrap();
    assert_eq!(b.passkey(&during).unwrap().epoch, Epoch(0));
    settle(&mut [a, b]);
    for v in [&*a, &*b] {
        assert!(removed(v, &c_id));
        assert_eq!(v.keyring().current(), epoch);
        let p = v.passkey(&during).expect("the partition's passkey arrived");
        assert_eq!(p.epoch, epoch, "and was moved to the new epoch");
        assert!(v.problems().is_empty());
    }
    assert_eq!(a.heads(), b.heads());
}

#[test]
fn concurrent_removals_on_both_sides_of_a_partition_both_take_effect() {
    let mut w = world(4);
    let [a, b, c, d] = &mut w[..] else {
        unreachable!()
    };
    for n in 1..=20 {
        a.insert(passkey(n), u64::from(n)).unwrap();
    }
    settle(&mut [a, b, c, d]);
    let (c_id, d_id) = (id(c), id(d));
    // Partition {A, C} | {B, D}: A removes C, B removes D, each rotating to an epoch the other removed device got.
    let ea = a.remove_member(&c_id, 50).unwrap().unwrap();
    let eb = b.remove_member(&d_id, 51).unwrap().unwrap();
    assert_ne!(ea, eb);
    let first = a.passkeys().next().unwrap().record_id;
    a.rename(&first, "renamed during", 52).unwrap();
    settle(&mut [a, b]);
    for v in [&*a, &*b] {
        assert!(removed(v, &c_id) && removed(v, &d_id));
        assert_eq!(v.active_devices().len(), 2);
        assert!(!v.needs_rotation());
        assert_eq!(v.len(), 20);
        assert!(v.problems().is_empty(), "{:?}", v.problems());
    }
    let current = a.keyring().current();
    assert_eq!(b.keyring().current(), current, "one current epoch");
    assert!(
        current != ea && current != eb,
        "a third epoch, given to neither"
    );
    assert!(a.passkeys().all(|p| p.epoch == current));
    assert_eq!(a.heads(), b.heads());
    // Neither removed device can open anything of the final vault.
    let now = a.save();
    for (removed_keys, seed) in [(c.keyring().clone(), 3), (d.keyring().clone(), 4)] {
        let thief = Vault::load_as(&now, removed_keys, Some(local(seed))).unwrap();
        assert!(thief.is_empty());
        assert!(thief.keyring().key(current).is_none());
    }
}

#[test]
fn only_active_members_remove_and_not_themselves() {
    let mut w = world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    settle(&mut [a, b, c]);
    let (a_id, b_id, c_id) = (id(a), id(b), id(c));
    assert!(matches!(
        a.remove_member(&a_id, 1),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        a.remove_member(&DeviceId::new("12D3KooWnobody".into()), 1),
        Err(Error::UnknownDevice(_))
    ));
    a.remove_member(&c_id, 2).unwrap();
    // C learns of its removal (say a changed replica reaches it): it can no longer remove anyone, and a removal it
    // signs anyway after learning of its own does not count.
    sync(a, c);
    assert_eq!(c.remove_member(&b_id, 3), Err(Error::NotAMember));
    assert_eq!(c.maintain(4).unwrap(), Default::default());
    // A replica without device keys cannot remove.
    let mut anonymous = Vault::load(&a.save(), a.keyring().clone()).unwrap();
    assert_eq!(anonymous.remove_member(&b_id, 5), Err(Error::NoLocalDevice));
    settle(&mut [a, b]);
    assert_eq!(b.member_state(&b_id), Some(&MemberState::Active));
}

#[test]
fn renaming_a_device_reaches_the_others() {
    let mut w = world(2);
    let [a, b] = &mut w[..] else { unreachable!() };
    let b_id = id(b);
    a.rename_device(&b_id, "desk", 50).unwrap();
    settle(&mut [a, b]);
    let names: Vec<String> = b
        .members()
        .into_iter()
        .filter(|m| m.device.id == b_id)
        .map(|m| m.device.name)
        .collect();
    assert_eq!(names, ["desk"]);
    assert!(matches!(
        a.rename_device(&DeviceId::new("12D3KooWnobody".into()), "x", 51),
        Err(Error::UnknownDevice(_))
    ));
}

/// A vault written by the release before removals existed (`tests/data/vault-v1.bin`: three passkeys, one with a
/// label, two devices, keyring epoch 0 with key 0x42…).
#[test]
fn a_vault_of_the_previous_release_upgrades_identically_everywhere() {
    let old = include_bytes!("data/vault-v1.bin");
    let mut a = Vault::load_as(old, keyring(), Some(local(1))).unwrap();
    let mut b = Vault::load_as(old, keyring(), Some(local(2))).unwrap();
    assert!(a.has_unsaved_changes() && b.has_unsaved_changes());
    // Both replicas made the same upgrade change, byte for byte.
    let (ua, ub) = (a.save_incremental(), b.save_incremental());
    assert!(!ua.is_empty());
    assert_eq!(ua, ub);
    assert_eq!(a.heads(), b.heads());
    for v in [&a, &b] {
        assert_eq!(v.len(), 3);
        assert!(v.problems().is_empty());
        assert_eq!(
            v.passkeys()
                .filter_map(|p| p.label.clone())
                .collect::<Vec<_>>(),
            ["work"]
        );
        assert_eq!(v.devices().len(), 2);
        assert!(
            v.members()
                .iter()
                .all(|m| m.state == MemberState::Active && !m.signed)
        );
    }
    // The upgraded document loads again without another change, and syncs with an upgraded peer at once.
    let mut stored = old.to_vec();
    stored.extend_from_slice(&ua);
    let again = Vault::load(&stored, keyring()).unwrap();
    assert!(!again.has_unsaved_changes());
    sync(&mut a, &mut b);
    assert_eq!(a.heads(), b.heads());
}

#[test]
fn a_device_paired_during_a_partition_gets_the_key_of_a_rotation_it_missed() {
    let mut w = signed_world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    let p = a.insert(passkey(1), 1).unwrap();
    settle(&mut [a, b, c]);
    let c_id = id(c);
    // Partition {A, N} | {B}: A pairs a new device N (its entry, and the keyring with it); B removes C.
    let n_local = local(9);
    // Signed, as pairing signs it: N stays a member in its own eyes even when its entry's name is re-encrypted
    // under a key it does not have yet.
    let mut n_entry = entry(&n_local, Some(&local(1)), "new");
    a.sign_entry(&mut n_entry).unwrap();
    a.add_device(n_entry).unwrap();
    let mut n = Vault::load_as(&a.save(), a.keyring().clone(), Some(n_local)).unwrap();
    n.set_anchors(a.anchors().cloned());
    let rotated = b.remove_member(&c_id, 10).unwrap().unwrap();
    let made_on_b = b.insert(passkey(2), 11).unwrap();
    // Healing waits for N's inbox key, which its daemon publishes at start.
    settle_keys(&mut [a, b, &mut n]);
    // B's rotation did not know N; a device holding the key wrapped it to N since.
    assert_eq!(n.keyring().current(), a.keyring().current());
    assert!(n.keyring().key(rotated).is_some());
    for v in [&*a, &*b, &n] {
        assert!(v.problems().is_empty(), "{:?}", v.problems());
        assert!(v.passkey(&p).is_some() && v.passkey(&made_on_b).is_some());
        assert_eq!(v.active_devices().len(), 3);
    }
}

/// Like [`world`], with signed entries and every replica trusting device 1 (the vault's first device) only.
fn signed_world(n: u8) -> Vec<Vault> {
    let first = local(1);
    let mut a = Vault::create(VaultId::random(), keyring()).expect("create");
    a.set_local(first);
    let anchors = std::collections::BTreeSet::from([local(1).id().clone()]);
    a.set_anchors(Some(anchors.clone()));
    let mut own = entry(&local(1), None, "device 1");
    a.sign_entry(&mut own).expect("sign");
    a.add_device(own).expect("add");
    for i in 2..=n {
        let mut e = entry(&local(i), Some(&local(1)), &format!("device {i}"));
        a.sign_entry(&mut e).expect("sign");
        a.add_device(e).expect("add");
    }
    let bytes = a.save();
    let mut out = vec![a];
    for i in 2..=n {
        let mut v = Vault::load_as(&bytes, keyring(), Some(local(i))).expect("load");
        v.set_anchors(Some(anchors.clone()));
        out.push(v);
    }
    out
}

#[test]
fn a_forged_or_deleted_device_entry_changes_nothing() {
    let mut w = signed_world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    settle(&mut [a, b, c]);
    assert!(
        a.members()
            .iter()
            .all(|m| m.signed && m.state == MemberState::Active)
    );
    let (b_id, c_id) = (id(b), id(c));
    // B (a member gone bad, or a removed device's change passed on) writes an unsigned entry for a stranger,
    // another signed only by the stranger itself, and deletes C's entry.
    let stranger = local(7);
    b.add_device(entry(&stranger, Some(&local(2)), "stranger"))
        .unwrap();
    let mut self_signed = entry(&local(8), None, "root?");
    self_signed.signature = None;
    b.add_device(self_signed).unwrap();
    assert!(b.remove_device(&c_id).unwrap());
    sync(b, a);
    for m in a.members() {
        if m.device.id == *stranger.id() || m.device.id == *local(8).id() {
            assert!(matches!(m.state, MemberState::Invalid(_)), "{m:?}");
        }
    }
    assert_eq!(
        a.member_state(&c_id),
        Some(&MemberState::Active),
        "C's signed entry stands, deleted or not"
    );
    assert_eq!(a.active_devices().len(), 3);
    assert!(a.active_devices().iter().any(|d| d.id == b_id));
}

/// The audit entries of `v` as (event, acting device, subject, verdict).
fn log(v: &mut Vault) -> Vec<(Event, DeviceId, String, Verdict)> {
    v.audit()
        .into_iter()
        .map(|a| (a.event, a.device, a.subject, a.verdict))
        .collect()
}

/// Opens `v`'s document with automerge (as any program could) and lets `f` write to `ext.audit` directly.
fn tamper(
    v: &mut Vault,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>, &automerge::ObjId),
) -> Vec<u8> {
    use automerge::ReadDoc;
    let mut doc = automerge::Automerge::load(&v.save()).expect("load");
    let (_, ext) = doc.get(automerge::ROOT, "ext").expect("read").expect("ext");
    let (_, audit) = doc.get(&ext, "audit").expect("read").expect("audit");
    let mut tx = doc.transaction();
    f(&mut tx, &audit);
    tx.commit();
    doc.save()
}

#[test]
fn the_audit_log_records_who_did_what_and_shows_forged_altered_and_late_entries() {
    let mut w = signed_world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    settle(&mut [a, b, c]);
    let (a_id, b_id, c_id) = (id(a), id(b), id(c));
    let r = a.insert(passkey(1), 10).unwrap();
    settle(&mut [a, b, c]);
    b.trash(&r, 20).unwrap();
    settle(&mut [a, b, c]);
    c.restore(&r, 30).unwrap();
    a.rename_device(&b_id, "desk", 35).unwrap();
    settle(&mut [a, b, c]);
    let epoch = a.remove_member(&c_id, 40).unwrap().expect("rotated");
    // C, not knowing yet, deletes the passkey: concurrent with its removal, so its entry is not believed, but
    // the delete itself lands in the trash like any other and can be restored.
    c.trash(&r, 41).unwrap();
    settle(&mut [a, b]);
    sync(a, c);
    settle(&mut [a, b]);
    assert!(
        a.passkeys().all(|p| p.record_id != r),
        "C's delete took effect"
    );
    b.restore(&r, 50).unwrap();
    settle(&mut [a, b]);
    assert!(a.passkey(&r).is_some_and(|p| p.trashed_at_ms.is_none()));

    let rs = r.to_string();
    let mut expected = vec![
        (
            Event::Paired,
            a_id.clone(),
            b_id.to_string(),
            Verdict::Verified,
        ),
        (
            Event::Paired,
            a_id.clone(),
            c_id.to_string(),
            Verdict::Verified,
        ),
        (Event::Trashed, b_id.clone(), rs.clone(), Verdict::Verified),
        (Event::Restored, c_id.clone(), rs.clone(), Verdict::Verified),
        (
            Event::DeviceRenamed,
            a_id.clone(),
            b_id.to_string(),
            Verdict::Verified,
        ),
        (
            Event::Removed,
            a_id.clone(),
            c_id.to_string(),
            Verdict::Verified,
        ),
        (
            Event::Rotated,
            a_id.clone(),
            epoch.0.to_string(),
            Verdict::Verified,
        ),
        (
            Event::Trashed,
            c_id.clone(),
            rs.clone(),
            Verdict::Forged("it was written after, or concurrently with, its device's removal"),
        ),
        (Event::Restored, b_id.clone(), rs.clone(), Verdict::Verified),
    ];
    // Sorted by time, then key: the pairing entries are both at the devices' added time (1).
    let by_key =
        |l: &mut Vec<(Event, DeviceId, String, Verdict)>| l[..2].sort_by(|x, y| x.2.cmp(&y.2));
    by_key(&mut expected);
    let mut got = log(a);
    by_key(&mut got);
    assert_eq!(got, expected);
    let mut got = log(b);
    by_key(&mut got);
    assert_eq!(got, expected, "every replica shows the same log");

    // Someone with write access to the document (a buggy peer, a hostile program on a member's disk): a
    // made-up entry under its own hash, an existing entry overwritten with a changed time, and one deleted.
    let original = a.audit();
    let removal = original
        .iter()
        .find(|e| e.event == Event::Removed)
        .expect("removal entry")
        .key
        .clone();
    let trashed = original
        .iter()
        .find(|e| e.event == Event::Trashed)
        .expect("trash entry")
        .key
        .clone();
    let mut made_up = vec![1u8, 2];
    made_up.extend_from_slice(&u16::try_from(a_id.as_str().len()).unwrap().to_be_bytes());
    made_up.extend_from_slice(a_id.as_str().as_bytes());
    made_up.extend_from_slice(&60u64.to_be_bytes());
    made_up.extend_from_slice(&u16::try_from(b_id.as_str().len()).unwrap().to_be_bytes());
    made_up.extend_from_slice(b_id.as_str().as_bytes());
    made_up.extend_from_slice(&[7; 64]);
    let made_up_key = passmesh_crdt::audit::key_of(&made_up);
    let bytes = tamper(a, |tx, audit| {
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        tx.put(audit, made_up_key.as_str(), made_up.clone())
            .unwrap();
        let (value, _) = tx.get(audit, trashed.as_str()).unwrap().expect("entry");
        let mut changed = value.as_bytes().expect("bytes").to_vec();
        // The time field follows version, event and the device id.
        let at = 2 + 2 + b_id.as_str().len();
        changed[at + 7] ^= 1;
        tx.put(audit, trashed.as_str(), changed).unwrap();
        tx.delete(audit, removal.as_str()).unwrap();
    });
    let mut seen = Vault::load_as(&bytes, keyring(), Some(local(1))).expect("load");
    seen.set_anchors(Some(std::collections::BTreeSet::from([local(1)
        .id()
        .clone()])));
    let after = log(&mut seen);
    for entry in &expected {
        assert!(after.contains(entry), "{entry:?} is still listed as it was");
    }
    assert!(after.contains(&(
        Event::Removed,
        a_id.clone(),
        b_id.to_string(),
        Verdict::Forged("its signature does not verify")
    )));
    assert_eq!(
        after
            .iter()
            .filter(|(e, d, _, v)| *e == Event::Trashed && *d == b_id && *v == Verdict::Altered)
            .count(),
        1,
        "{after:?}"
    );
    assert_eq!(after.len(), expected.len() + 2);
}

/// What the daemon does after each batch: seal (here: keep) a new keyring when one is due and publish its inbox.
/// With `hold`, as the daemon does within its keeping time: old epochs are kept unless the user approved the
/// current one.
fn keep_keys_as(v: &mut Vault, hold: bool) -> bool {
    match v.keyring_due() {
        Some(next)
            if !hold
                || next.epochs().count() == v.keyring().epochs().count()
                || v.current_approved() =>
        {
            // What the daemon seals to disk, and reads back at its next start.
            let sealed = next.encode();
            let next = Keyring::decode(&sealed).expect("decode");
            v.use_keyring(next, 2_000).expect("use keyring");
            true
        }
        _ => v.publish_inbox(2_000).expect("publish inbox"),
    }
}

/// [`settle`], with the keyrings kept as the daemon keeps them (`hold`: see [`keep_keys_as`]).
fn settle_keys_as(vaults: &mut [&mut Vault], hold: bool) {
    for _ in 0..10 {
        settle(vaults);
        let mut changed = false;
        for v in vaults.iter_mut() {
            changed |= keep_keys_as(v, hold);
        }
        if !changed {
            return;
        }
    }
    panic!("keys did not settle");
}

fn settle_keys(vaults: &mut [&mut Vault]) {
    settle_keys_as(vaults, false)
}

#[test]
fn a_purge_destroys_old_epoch_keys_on_every_remaining_device() {
    let mut w = signed_world(4);
    let [a, b, c, d] = &mut w[..] else {
        unreachable!()
    };
    settle_keys(&mut [a, b, c, d]);
    for v in [&*a, &*b, &*c, &*d] {
        assert_eq!(v.keyring().inbox_generation(), Some(1));
    }
    let purged = a.insert(passkey(1), 10).unwrap();
    let kept = a.insert(passkey(2), 11).unwrap();
    settle_keys(&mut [a, b, c, d]);
    // A removal first: its epoch is wrapped to the inboxes, and every device then retires epoch 0.
    let removal_epoch = a.remove_member(&id(d), 20).unwrap().expect("rotated");
    settle_keys(&mut [a, b, c]);
    for v in [&*a, &*b, &*c] {
        assert_eq!(
            v.keyring().epochs().collect::<Vec<_>>(),
            vec![removal_epoch]
        );
        assert_eq!(v.keyring().inbox_generation(), Some(2));
    }

    // C is away when A purges a passkey; the purge makes a new epoch, and B and A destroy the old one.
    a.trash(&purged, 30).unwrap();
    sync(a, b);
    let (n, purge_epoch) = a.purge(&[purged], 31, None).unwrap();
    let purge_epoch = purge_epoch.expect("rotated");
    assert_eq!(n, 1);
    settle_keys(&mut [a, b]);
    // C has not acknowledged the new epoch yet: it may hold records under the old one that nobody else has seen,
    // so A and B keep the old key meanwhile.
    for v in [&*a, &*b] {
        assert!(v.keyring().key(removal_epoch).is_some());
        assert_ne!(v.holds(&id(v)), Some(purge_epoch));
    }
    // C comes back: it learns the new epoch through its inbox and destroys the old one too.
    settle_keys(&mut [a, b, c]);
    let remaining = [id(a), id(b), id(c)];
    for v in [&*a, &*b, &*c] {
        assert_eq!(v.keyring().epochs().collect::<Vec<_>>(), vec![purge_epoch]);
        for who in &remaining {
            assert_eq!(
                v.holds(who),
                Some(purge_epoch),
                "every device says it holds only the new epoch"
            );
        }
        assert!(v.passkey(&kept).is_some());
        assert!(v.passkey(&purged).is_none());
    }
    // Each device's disk: its sealed keyring, its identity and the document. Nothing there opens an epoch
    // before the purge (the purged record's history is under them), and nothing is lost of what remains.
    let bytes = a.save();
    for (v, seed) in [(&*a, 1), (&*b, 2), (&*c, 3)] {
        let disk = Keyring::decode(&v.keyring().encode()).unwrap();
        let seen = Vault::load_as(&bytes, disk, Some(local(seed))).expect("load");
        assert_eq!(
            seen.keyring().epochs().collect::<Vec<_>>(),
            vec![purge_epoch]
        );
        assert!(seen.passkey(&kept).is_some());
    }
    // The removed device, with its whole disk, opens neither the old epochs' wraps nor the new ones.
    let thief = Vault::load_as(&bytes, d.keyring().clone(), Some(local(4))).expect("load");
    assert!(thief.keyring().key(purge_epoch).is_none());
    assert!(thief.keyring().key(removal_epoch).is_none());

    // Life goes on: a passkey created now reaches everyone.
    let later = b.insert(passkey(3), 40).unwrap();
    settle_keys(&mut [a, b, c]);
    assert!(a.passkey(&later).is_some() && c.passkey(&later).is_some());
}

/// Opens `v`'s document with automerge (as any program could), lets `f` write to it, and loads the result as
/// device `seed`'s replica with `v`'s keys.
fn raw_edit(
    v: &mut Vault,
    seed: u8,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>, &automerge::ObjId),
) -> Vault {
    use automerge::ReadDoc;
    let mut doc = automerge::Automerge::load(&v.save()).expect("load");
    let (_, records) = doc
        .get(automerge::ROOT, "records")
        .expect("read")
        .expect("records");
    let mut tx = doc.transaction();
    f(&mut tx, &records);
    tx.commit();
    let mut out =
        Vault::load_as(&doc.save(), v.keyring().clone(), Some(local(seed))).expect("load");
    out.set_anchors(v.anchors().cloned());
    out
}

#[test]
fn an_old_key_is_kept_while_a_record_no_device_can_read_is_still_under_it() {
    let mut w = signed_world(2);
    let [a, b] = &mut w[..] else { unreachable!() };
    settle_keys(&mut [a, b]);
    let poisoned = a.insert(passkey(1), 10).unwrap();
    let other = a.insert(passkey(2), 11).unwrap();
    settle_keys(&mut [a, b]);
    let old = a.keyring().current();
    // Someone with write access to B's document breaks one record's label field (no key needed): the record
    // becomes unreadable everywhere, so no rotation can move it.
    let mut b2 = raw_edit(b, 2, |tx, records| {
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        let (_, obj) = tx
            .get(records, poisoned.to_string())
            .expect("read")
            .expect("record");
        tx.put(&obj, "m", vec![0u8, 0]).expect("put");
    });
    settle_keys(&mut [a, &mut b2]);
    assert!(a.passkey(&poisoned).is_none() && !a.problems().is_empty());
    // A purge rotates; every device acknowledges the new epoch, but the broken record's core is still under
    // the old one: no device destroys that key.
    a.trash(&other, 20).unwrap();
    let (_, new) = a.purge(&[other], 21, None).unwrap();
    let new = new.expect("rotated");
    settle_keys(&mut [a, &mut b2]);
    for v in [&*a, &b2] {
        assert_eq!(v.keyring().current(), new);
        assert!(v.keyring().key(old).is_some(), "the old key is kept");
    }
    // Once the field is repaired, the record reads again, moves to the new epoch, and only then is the old key
    // destroyed.
    let mut b3 = raw_edit(&mut b2, 2, |tx, records| {
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        let (_, obj) = tx
            .get(records, poisoned.to_string())
            .expect("read")
            .expect("record");
        tx.delete(&obj, "m").expect("delete");
    });
    settle_keys(&mut [a, &mut b3]);
    for v in [&*a, &b3] {
        assert!(v.passkey(&poisoned).is_some(), "nothing was lost");
        assert_eq!(v.keyring().epochs().collect::<Vec<_>>(), vec![new]);
    }
}

#[test]
fn a_destroyed_epoch_is_not_learnt_again_from_a_wrap_to_the_identity_key() {
    let mut w = signed_world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    settle(&mut [a, b, c]);
    // No inboxes yet (devices of the release before them): the removal's epoch is wrapped to B's identity key.
    let first = a.remove_member(&id(c), 10).unwrap().expect("rotated");
    settle(&mut [a, b]);
    assert!(b.keyring().key(first).is_some());
    // Then inboxes, a purge, and every device retires everything but the purge's epoch.
    let p = a.insert(passkey(1), 11).unwrap();
    settle_keys(&mut [a, b]);
    a.trash(&p, 12).unwrap();
    let second = a.purge(&[p], 13, None).unwrap().1.expect("rotated");
    settle_keys(&mut [a, b]);
    assert_eq!(b.keyring().epochs().collect::<Vec<_>>(), vec![second]);
    // B's next start: its sealed keyring and the document. The wrap of the first epoch to B's identity key is
    // still in the document; B does not take that key back.
    let restarted = Vault::load_as(
        &b.save(),
        Keyring::decode(&b.keyring().encode()).unwrap(),
        Some(local(2)),
    )
    .expect("load");
    assert_eq!(
        restarted.keyring().epochs().collect::<Vec<_>>(),
        vec![second]
    );
    assert_eq!(
        restarted.keyring_due().map(|k| k.inbox_generation()),
        None,
        "nothing to retire again"
    );
}

fn epochs(v: &Vault) -> Vec<Epoch> {
    v.keyring().epochs().collect()
}

/// What the daemon's trash offers back on `v` from the losses noted so far (kept in `notes`): each one's last
/// good version and the device that purged it, unless the user confirmed the deletion or it is back.
fn offered(v: &mut Vault, notes: &mut Vec<Lost>) -> Vec<(Passkey, Option<DeviceId>)> {
    notes.extend(v.take_lost());
    let asked: Vec<(RecordId, &[[u8; 32]])> = notes
        .iter()
        .map(|n| (n.record_id, n.deleted_by.as_slice()))
        .collect();
    let answers = v.confirmations(&asked);
    let mut out = Vec::new();
    for (n, (confirmed, by)) in notes.iter().zip(answers) {
        if confirmed {
            continue;
        }
        let Some(version) = v.version_at(&n.record_id, &n.before) else {
            continue;
        };
        if v.passkey(&n.record_id)
            .is_some_and(|now| now.is_same_passkey(&version))
        {
            continue;
        }
        out.push((version, by));
    }
    out
}

/// A change that deletes record `id` from `v`'s document, made as if from document heads `at` (any point a
/// modified client chooses), applied on top of `v`'s document; loaded as device `seed`'s replica.
fn delete_from(v: &mut Vault, seed: u8, id: &RecordId, at: &[[u8; 32]]) -> Vault {
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;
    let mut doc = automerge::Automerge::load(&v.save()).expect("load");
    let at: Vec<automerge::ChangeHash> = at.iter().map(|h| automerge::ChangeHash(*h)).collect();
    let mut old = doc.fork_at(&at).expect("fork");
    let (_, records) = old
        .get(automerge::ROOT, "records")
        .expect("read")
        .expect("records");
    let mut tx = old.transaction();
    tx.delete(&records, id.to_string()).expect("delete");
    tx.commit();
    let crafted = old.get_last_local_change().expect("the deletion").clone();
    doc.apply_changes([crafted]).expect("apply");
    let mut out =
        Vault::load_as(&doc.save(), v.keyring().clone(), Some(local(seed))).expect("load");
    out.set_anchors(v.anchors().cloned());
    out
}

#[test]
fn what_a_thief_purges_deletes_or_overwrites_is_offered_back_and_only_a_trusted_pin_approval_confirms()
 {
    let mut w = signed_world(3);
    let [a, b, c] = &mut w[..] else {
        unreachable!()
    };
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    settle_keys_as(&mut [a, b, c], true);
    let first = a.insert(passkey(1), 10).unwrap();
    let second = a.insert(passkey(2), 11).unwrap();
    let created = a.heads();
    let original = a.passkey(&first).unwrap().private_key.clone();
    settle_keys_as(&mut [a, b, c], true);

    // C is stolen; it had no PIN. Its thief sets one and purges a passkey with it: the purge rotates the key
    // and approves the new epoch with a first PIN key published after A and B joined, which they do not trust
    // yet. Every device acknowledges the new epoch, and yet A and B keep the old key, and offer the passkey
    // back, naming C.
    let thief_pin = passmesh_crdt::PinKey::from_seed(&Zeroizing::new([66; 32]));
    let (n, thief_epoch) = c.purge(&[first], 20, Some(&thief_pin)).unwrap();
    assert_eq!(n, 1);
    let thief_epoch = thief_epoch.expect("rotated");
    settle_keys_as(&mut [a, b, c], true);
    for (v, notes) in [(&mut *a, &mut on_a), (&mut *b, &mut on_b)] {
        assert!(v.passkey(&first).is_none());
        assert_eq!(v.keyring().current(), thief_epoch);
        assert!(!v.current_approved());
        assert!(epochs(v).len() > 1, "the old key is kept");
        let back = offered(v, notes);
        assert_eq!(back.len(), 1, "{back:?}");
        assert_eq!(back[0].0.record_id, first);
        assert_eq!(back[0].1.as_ref(), Some(&id(c)));
    }
    assert!(
        c.take_lost().is_empty(),
        "a device's own purge is no loss to it"
    );

    // The user removes C and brings the passkey back on B: it is live again everywhere, key and all.
    a.remove_member(&id(c), 30).unwrap();
    settle_keys_as(&mut [a, b], true);
    let back = offered(b, &mut on_b).remove(0).0;
    b.restore_version(back, 31).unwrap();
    // As the daemon does: a restored passkey's note is dropped.
    on_b.clear();
    assert!(offered(b, &mut on_b).is_empty());
    settle_keys_as(&mut [a, b], true);
    for v in [&*a, &*b] {
        let p = v.passkey(&first).expect("back");
        assert_eq!(p.private_key, original);
        assert_eq!(
            p.epoch,
            v.keyring().current(),
            "re-encrypted under the current epoch"
        );
    }

    // A modified client deletes a record with a change that claims to start from the record's creation (whose
    // version is under an epoch that may be gone), and writes garbage into the map it unlinked: B offers back
    // what it had just before, as it was then.
    let mut edited = delete_from(a, 1, &second, &created);
    {
        let mut doc = automerge::Automerge::load(&edited.save()).expect("load");
        let obj = {
            use automerge::ReadDoc;
            let (_, records) = doc.get(automerge::ROOT, "records").unwrap().unwrap();
            let heads = [created
                .iter()
                .map(|h| automerge::ChangeHash(*h))
                .collect::<Vec<_>>()];
            doc.get_at(&records, second.to_string(), &heads[0])
                .unwrap()
                .unwrap()
                .1
        };
        use automerge::transaction::Transactable;
        let mut tx = doc.transaction();
        tx.put(&obj, "c", automerge::ScalarValue::Bytes(vec![9; 80]))
            .unwrap();
        tx.commit();
        edited = Vault::load_as(&doc.save(), a.keyring().clone(), Some(local(1))).expect("load");
        edited.set_anchors(a.anchors().cloned());
    }
    assert!(edited.passkey(&second).is_none(), "deleted");
    let second_key = b.passkey(&second).unwrap().private_key.clone();
    sync(&mut edited, b);
    let back = offered(b, &mut on_b);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!((back[0].0.record_id, back[0].1.as_ref()), (second, None));
    assert_eq!(back[0].0.private_key, second_key);
    b.restore_version(back[0].0.clone(), 40).unwrap();
    on_b.clear();
    settle_keys_as(&mut [a, b], true);
    assert!(a.passkey(&second).is_some());
    let before_approval = a.heads();

    // A modified client deletes another passkey outright; A and B both get it, before the user's purge below.
    let third = a.insert(passkey(3), 42).unwrap();
    settle_keys_as(&mut [a, b], true);
    let mut gone = raw_edit(a, 1, |tx, records| {
        use automerge::transaction::Transactable;
        tx.delete(records, third.to_string()).expect("delete");
    });
    sync(&mut gone, a);
    sync(&mut gone, b);
    assert!(a.passkey(&third).is_none() && b.passkey(&third).is_none());

    // The user purges with the PIN on A. Its PIN key was published after B joined too: B keeps the old keys
    // until it has known that key for the keeping time (the daemon then tells it to trust it).
    let pin = passmesh_crdt::PinKey::from_seed(&Zeroizing::new([77; 32]));
    a.trash(&first, 50).unwrap();
    let (_, approved) = a.purge(&[first], 51, Some(&pin)).unwrap();
    let approved = approved.expect("rotated");
    settle_keys_as(&mut [a, b], true);
    assert!(!b.current_approved());
    assert!(epochs(b).len() > 1);
    assert_eq!(
        offered(b, &mut on_b).len(),
        2,
        "A's purge and the outright deletion are offered back on B, for now"
    );
    let roots = b.pin_key_roots().into_iter().collect();
    b.trust_pin_keys(roots);
    // Now the purge is approved: A's own purge is confirmed on B; the outright deletion, though it came before
    // the approval, is not (the approval confirms A's purges only): B still offers it back, and it is restored.
    let back = offered(b, &mut on_b);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!((back[0].0.record_id, back[0].1.as_ref()), (third, None));
    b.restore_version(back[0].0.clone(), 55).unwrap();
    on_b.clear();
    // Both destroy every older key at once.
    settle_keys_as(&mut [a, b], true);
    for v in [&mut *a, &mut *b] {
        assert!(v.current_approved());
        assert_eq!(epochs(v), vec![approved]);
        assert!(v.passkey(&second).is_some());
    }
    let log = log(a);
    assert!(
        log.iter()
            .any(|(e, d, _, v)| *e == Event::Approved && *d == id(a) && *v == Verdict::Verified),
        "{log:?}"
    );

    // A deletion made after the approval, even one claiming to start from before it, is not confirmed by it.
    let late = delete_from(a, 1, &second, &before_approval);
    let mut late = late;
    sync(&mut late, b);
    let lost = b.take_lost();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(!lost[0].deleted_by.is_empty());
    assert_eq!(
        b.confirmations(&[(second, lost[0].deleted_by.as_slice())]),
        vec![(false, None)]
    );
}

#[test]
fn a_record_a_member_overwrites_is_noted_and_its_last_good_version_restored() {
    let mut w = signed_world(2);
    let [a, b] = &mut w[..] else { unreachable!() };
    settle_keys(&mut [a, b]);
    let p = a.insert(passkey(1), 10).unwrap();
    let original = a.passkey(&p).unwrap().private_key.clone();
    a.rename(&p, "work", 11).unwrap();
    settle_keys(&mut [a, b]);
    assert!(
        a.take_lost().is_empty() && b.take_lost().is_empty(),
        "a label takes nothing away"
    );

    // A modified client on B overwrites the record's sealed content with garbage.
    let mut edited = raw_edit(b, 2, |tx, records| {
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        let (_, obj) = tx.get(records, p.to_string()).unwrap().unwrap();
        tx.put(&obj, "c", automerge::ScalarValue::Bytes(vec![7; 80]))
            .unwrap();
    });
    sync(&mut edited, a);
    assert!(a.passkey(&p).is_none(), "unreadable now");
    let altered = a.take_lost();
    assert_eq!(altered.len(), 1, "{altered:?}");
    assert_eq!(altered[0].record_id, p);
    assert!(altered[0].deleted_by.is_empty(), "still there, altered");
    assert!(a.take_lost().is_empty(), "taken once");

    // The version before those changes is still there, with the key it was under: put it back.
    let before = a
        .version_at(&p, &altered[0].before)
        .expect("the last good version");
    assert_eq!(before.private_key, original);
    assert_eq!(before.label.as_deref(), Some("work"));
    a.restore_version(before.clone(), 20).unwrap();
    assert!(matches!(
        a.restore_version(before, 21),
        Err(Error::InvalidInput(_))
    ));
    sync(&mut edited, a);
    for v in [&*a, &edited] {
        assert_eq!(v.passkey(&p).expect("back").private_key, original);
    }
    assert!(
        edited.take_lost().is_empty(),
        "restoring takes nothing away"
    );
}
