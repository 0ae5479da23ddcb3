//! Recovery keys: a member that every epoch key is wrapped to, that never connects, and that adds the device a
//! vault is restored on. Real replicas with their own keys, exchanging real sync messages.

use passmesh_crdt::{
    Device, DeviceId, Epoch, Error, Event, Keyring, LocalDevice, MemberKind, MemberState,
    NewPasskey, OldKeys, SyncState, Vault, VaultId, VaultKey, Verdict, members,
};
use zeroize::Zeroizing;

const KEY: [u8; 32] = [0x42; 32];

/// The keyring every replica of [`world`] starts with: epoch 0 only.
fn keyring() -> Keyring {
    Keyring::new(Epoch(0), VaultKey::from_bytes(KEY))
}

fn local(seed: u8) -> LocalDevice {
    LocalDevice::new(
        &Zeroizing::new([seed; 32]),
        &Zeroizing::new([seed.wrapping_mul(7) ^ 0x5a; 32]),
    )
}

fn entry(d: &LocalDevice, by: Option<&DeviceId>) -> Device {
    Device {
        id: d.id().clone(),
        name: "device".into(),
        x25519_public: d.x25519_public(),
        added_by: by.cloned(),
        added_at_ms: 1,
        signature: None,
        kind: MemberKind::Device,
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

/// Two replicas of one vault: device 1 made it and added device 2.
fn world() -> (Vault, Vault) {
    let id = VaultId::random();
    let first = local(1);
    let mut a = Vault::create(id, keyring()).expect("create");
    let mut own = entry(&first, None);
    a.set_local(first);
    a.sign_entry(&mut own).expect("sign");
    a.add_device(own).expect("add");
    let mut second = entry(&local(2), a.local_device().cloned().as_ref());
    a.sign_entry(&mut second).expect("sign");
    a.add_device(second).expect("add");
    a.set_anchors(Some([a.local_device().expect("set").clone()].into()));
    let bytes = a.save();
    let mut b = Vault::load_as(&bytes, keyring(), Some(local(2))).expect("load");
    b.set_anchors(a.anchors().cloned());
    (a, b)
}

/// What `recovery setup` does: the key vouches for the anchors of the device that sets it up.
fn set_up(v: &mut Vault, key: &LocalDevice, now: u64) -> Result<Option<Epoch>, Error> {
    let anchors = v.anchors().cloned().unwrap_or_default();
    let sig = members::sign_recovery_anchors(&v.id(), key, &anchors);
    v.add_recovery(key.id(), key.x25519_public(), &anchors, &sig, now)
}

/// What `passmesh restore` does with a document and a phrase's key: trust only what the key vouches for, then
/// add this device (`me`).
fn restore(bytes: &[u8], key: LocalDevice, me: LocalDevice) -> Result<Vault, Error> {
    let id = key.id().clone();
    let mut v = Vault::load_as(bytes, keyring(), Some(key))?;
    let anchors = v.recovery_anchors(&id).ok_or(Error::NotRecoveryKey)?;
    v.set_signed_anchors(true);
    v.set_anchors(Some(anchors));
    v.restore_as(me, "restored", 50)?;
    v.endorse_recovery(&id, 51)?;
    Ok(v)
}

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

/// Syncs and maintains, then keeps keyrings as the daemon does (retiring old epochs when due), until nothing
/// changes.
fn settle(vaults: &mut [&mut Vault]) {
    for _ in 0..20 {
        for i in 0..vaults.len() {
            for j in i + 1..vaults.len() {
                let (left, right) = vaults.split_at_mut(j);
                sync(left[i], right[0]);
            }
        }
        let mut changed = false;
        for v in vaults.iter_mut() {
            changed |= v.maintain(1_000).expect("maintain").changed();
            if let Some(next) = v.keyring_due() {
                let next = Keyring::decode(&next.encode()).expect("decode");
                v.use_keyring(next, 2_000).expect("use keyring");
                changed = true;
            } else {
                changed |= v.publish_inbox(2_000).expect("publish inbox");
            }
        }
        if !changed {
            return;
        }
    }
    panic!("did not settle");
}

/// What a restore starts from: the document as saved, with a keyring of epoch 0 alone (what a backup made by a
/// device of the first day would hold), and the recovery key as the replica's device.
fn from_backup(bytes: &[u8], recovery: LocalDevice) -> Vault {
    Vault::load_as(bytes, keyring(), Some(recovery)).expect("load the backup")
}

fn logged(v: &mut Vault, event: Event, subject: &DeviceId) -> bool {
    v.audit().iter().any(|e| {
        e.event == event && e.subject == subject.as_str() && e.verdict == Verdict::Verified
    })
}

#[test]
fn a_vault_restored_with_the_recovery_key_reads_every_passkey_and_syncs_with_a_survivor() {
    let (mut a, mut b) = world();
    let first = a.insert(passkey(1), 10).unwrap();
    let recovery = local(100);
    // Epoch 0 has no map to put a wrap in: setting up recovery rotates.
    let rotated = set_up(&mut a, &local(100), 20).expect("add recovery");

    assert!(rotated.is_some());
    assert_eq!(set_up(&mut a, &local(100), 21).unwrap(), None, "once");
    settle(&mut [&mut a, &mut b]);
    // A later rotation (a removal, say) is wrapped to the recovery key too.
    let later = a.rotate(30).unwrap();
    let second = b.insert(passkey(2), 40).unwrap();
    settle(&mut [&mut a, &mut b]);
    assert_eq!(b.keyring().current(), later);
    assert!(logged(&mut a, Event::RecoverySet, recovery.id()));
    // The recovery key is no device: it never connects and no device waits for its acknowledgement.
    assert!(a.active_devices().iter().all(|d| d.id != *recovery.id()));
    assert_eq!(a.recovery_keys().len(), 1);
    assert_eq!(a.recovery_keys()[0].kind, MemberKind::Recovery);
    assert_eq!(
        a.old_keys(),
        OldKeys::None,
        "both retired: {:?}",
        a.old_keys()
    );

    // Every device is lost; the last document a device saved and the phrase remain.
    let bytes = b.save();
    let mut restored = restore(&bytes, local(100), local(9)).expect("restore");
    assert_eq!(restored.keyring().current(), later, "learnt from its wrap");
    assert!(restored.passkey(&first).is_some() && restored.passkey(&second).is_some());
    let me = local(9).id().clone();
    assert_eq!(restored.member_state(&me), Some(&MemberState::Active));
    assert!(logged(&mut restored, Event::VaultRestored, recovery.id()));
    let third = restored.insert(passkey(3), 60).unwrap();

    // A survivor accepts the restored device (added by the recovery key) and they sync both ways.
    settle(&mut [&mut a, &mut restored]);
    assert_eq!(a.member_state(&me), Some(&MemberState::Active));
    assert!(a.passkey(&third).is_some());
    assert!(logged(&mut a, Event::VaultRestored, recovery.id()));
}

#[test]
fn a_replaced_recovery_key_opens_nothing_made_afterwards() {
    let (mut a, mut b) = world();
    set_up(&mut a, &local(100), 20).unwrap();
    let before = a.insert(passkey(1), 25).unwrap();
    settle(&mut [&mut a, &mut b]);
    let old_backup = a.save();
    // `recovery rotate`: the new key joins, the old one is removed, which rotates.
    set_up(&mut a, &local(101), 30).unwrap();
    let epoch = a.remove_member(local(100).id(), 31).unwrap();
    assert!(epoch.is_some());
    let after = b.insert(passkey(2), 40).unwrap();
    settle(&mut [&mut a, &mut b]);
    assert_eq!(a.recovery_keys().len(), 1);
    assert_eq!(a.recovery_keys()[0].id, *local(101).id());

    let bytes = a.save();
    let old = from_backup(&bytes, local(100));
    assert!(old.passkey(&after).is_none(), "made after the replacement");
    assert!(old.keyring().key(a.keyring().current()).is_none());
    assert!(matches!(
        restore(&bytes, local(100), local(9)),
        Err(Error::NotRecoveryKey)
    ));
    drop(old);
    // The old phrase still opens the backups made while it was the recovery key.
    let earlier = restore(&old_backup, local(100), local(9)).expect("restore");
    assert!(earlier.passkey(&before).is_some());
    // The new phrase opens what was made after.
    let new = restore(&bytes, local(101), local(10)).expect("restore");
    assert!(new.passkey(&before).is_some() && new.passkey(&after).is_some());
}

#[test]
fn a_rotation_made_concurrently_with_the_recovery_setup_reaches_the_recovery_key() {
    let (mut a, mut b) = world();
    a.rotate(5).unwrap();
    settle(&mut [&mut a, &mut b]);
    a.insert(passkey(1), 10).unwrap();
    // Device 1 sets up recovery while device 2, not knowing it, makes a new epoch.
    assert_eq!(
        set_up(&mut a, &local(100), 20).unwrap(),
        None,
        "wrapped, no rotation"
    );
    let concurrent = b.rotate(21).unwrap();
    let p = b.insert(passkey(2), 22).unwrap();
    settle(&mut [&mut a, &mut b]);
    assert_eq!(a.keyring().current(), concurrent);
    let restored = from_backup(&a.save(), local(100));
    assert_eq!(restored.keyring().current(), concurrent, "healed to it");
    assert!(restored.passkey(&p).is_some());
    assert_eq!(restored.len(), 2);
}

#[test]
fn a_stranger_key_cannot_restore_and_a_device_entry_cannot_become_a_recovery_key() {
    let (mut a, mut b) = world();
    set_up(&mut a, &local(100), 20).unwrap();
    settle(&mut [&mut a, &mut b]);
    let bytes = a.save();
    // A key that is not the vault's recovery key learns nothing and cannot add a device.
    let stranger = Vault::load_as(&bytes, keyring(), Some(local(77))).expect("load");
    assert!(stranger.keyring().key(a.keyring().current()).is_none());
    let mut stranger = stranger;
    assert!(matches!(
        stranger.restore_as(local(9), "x", 1),
        Err(Error::NotRecoveryKey)
    ));
    // A device (not a recovery key) cannot act as one either.
    let mut device = Vault::load_as(&bytes, a.keyring().clone(), Some(local(2))).expect("load");
    assert!(matches!(
        device.restore_as(local(9), "x", 1),
        Err(Error::NotRecoveryKey)
    ));
}

/// A document made by someone who knows only the recovery key's public half (a removed device, say): its own
/// device, self-signed, adds an entry for the real recovery key. Restored with the real phrase, it gets nothing
/// trusted: the anchors come only from a statement the phrase's key signed.
#[test]
fn a_document_crafted_around_the_public_recovery_key_is_not_restored() {
    let (mut a, mut b) = world();
    set_up(&mut a, &local(100), 20).unwrap();
    settle(&mut [&mut a, &mut b]);
    let id = a.id();
    let key = local(100);
    // The attacker's vault, with the real vault's id.
    let x = local(66);
    let mut forged = Vault::create(id, keyring()).unwrap();
    forged.set_local(local(66));
    let mut own = entry(&x, None);
    forged.sign_entry(&mut own).unwrap();
    forged.add_device(own).unwrap();
    // A recovery entry for the real key, signed by X, with the real statement of anchors copied from the real
    // document (it names the real first device, which has no entry here).
    let anchors = a.recovery_anchors(key.id()).expect("the real statement");
    let mut bytes = forged.save();
    let mut crafted = Vault::load_as(&bytes, keyring(), Some(local(66))).unwrap();
    crafted.set_anchors(Some([x.id().clone()].into()));
    // The attacker cannot sign a statement naming X (it does not hold the phrase's key): one signed by any other
    // key is refused.
    let stolen_sig = members::sign_recovery_anchors(&id, &local(99), &[x.id().clone()].into());
    assert!(
        crafted
            .add_recovery(
                key.id(),
                key.x25519_public(),
                &[x.id().clone()].into(),
                &stolen_sig,
                30
            )
            .is_err(),
        "a statement the key did not sign is refused"
    );
    let real_sig = members::sign_recovery_anchors(&id, &key, &anchors);
    // (What the attacker can do: copy the real statement; the real anchors do not lead to X.)
    crafted
        .add_recovery(key.id(), key.x25519_public(), &anchors, &real_sig, 30)
        .unwrap();
    bytes = crafted.save();
    assert!(matches!(
        restore(&bytes, local(100), local(9)),
        Err(Error::NotRecoveryKey)
    ));
    // Without any statement at all, nothing is restored either.
    let mut bare = Vault::load_as(&forged.save(), keyring(), Some(local(100))).unwrap();
    assert!(bare.recovery_anchors(key.id()).is_none());
}

/// A stolen device sets its own recovery key before it is removed: the removal takes that key with it, so the
/// thief's phrase opens nothing made afterwards and adds no device.
#[test]
fn a_recovery_key_set_by_a_removed_device_goes_with_it() {
    let (mut a, mut b) = world();
    set_up(&mut a, &local(100), 10).unwrap();
    settle(&mut [&mut a, &mut b]);
    // The thief, on device 2, replaces the user's recovery key with its own.
    set_up(&mut b, &local(200), 20).unwrap();
    b.remove_member(local(100).id(), 21).unwrap();
    settle(&mut [&mut a, &mut b]);
    assert_eq!(a.recovery_keys()[0].id, *local(200).id());
    // The user removes the stolen device.
    a.remove_member(&local(2).id().clone(), 30).unwrap();
    assert!(a.recovery_keys().is_empty(), "the thief's key went with it");
    let secret = a.insert(passkey(7), 40).unwrap();
    let bytes = a.save();
    let thief = from_backup(&bytes, local(200));
    assert!(thief.passkey(&secret).is_none());
    assert!(thief.keyring().key(a.keyring().current()).is_none());
    assert!(matches!(
        restore(&bytes, local(200), local(9)),
        Err(Error::NotRecoveryKey)
    ));
}

#[test]
fn low_order_keys_and_device_ids_are_refused_as_recovery_keys() {
    let (mut a, _b) = world();
    let key = local(100);
    let anchors = a.anchors().cloned().unwrap_or_default();
    let sig = members::sign_recovery_anchors(&a.id(), &key, &anchors);
    assert!(matches!(
        a.add_recovery(key.id(), [0; 32], &anchors, &sig, 1),
        Err(Error::InvalidInput(_))
    ));
    let device = local(2);
    let sig = members::sign_recovery_anchors(&a.id(), &device, &anchors);
    assert!(matches!(
        a.add_recovery(device.id(), device.x25519_public(), &anchors, &sig, 1),
        Err(Error::InvalidInput(_))
    ));
    assert!(a.recovery_keys().is_empty());
}

/// A file built from scratch by someone who has read the document: the anchor gets an unsigned entry with the
/// maker's x25519 key (its real, self-signed entry left out), the real recovery key is added again by the maker's
/// own device, the real statement of anchors copied. Restored, the anchor counts only through an entry it signed
/// itself: there is none, so nothing chains to the recovery key and the file is refused.
#[test]
fn a_file_that_gives_an_anchor_another_key_is_not_restored() {
    let (mut a, mut b) = world();
    set_up(&mut a, &local(100), 20).unwrap();
    settle(&mut [&mut a, &mut b]);
    let key = local(100);
    let anchors = a.recovery_anchors(key.id()).unwrap();
    let anchor = anchors.iter().next().unwrap().clone();
    let sig = members::sign_recovery_anchors(&a.id(), &key, &anchors);
    let mut forged = Vault::create(a.id(), keyring()).unwrap();
    let evil = local(66);
    forged
        .add_device(Device {
            id: anchor.clone(),
            x25519_public: evil.x25519_public(),
            ..entry(&local(1), None)
        })
        .unwrap();
    let mut x = entry(&evil, None);
    forged.set_local(local(66));
    forged.sign_entry(&mut x).unwrap();
    forged.add_device(x).unwrap();
    // (With no anchors set, every unsigned entry is trusted here, as on any replica of an old vault.)
    forged
        .add_recovery(key.id(), key.x25519_public(), &anchors, &sig, 30)
        .unwrap();
    // The real recovery entry, signed by the anchor, copied as it is.
    let real = a
        .members()
        .into_iter()
        .find(|m| m.device.id == *key.id())
        .unwrap()
        .device;
    assert_eq!(real.added_by.as_ref(), Some(&anchor));
    forged.add_device(real).unwrap();
    assert!(matches!(
        restore(&forged.save(), local(100), local(9)),
        Err(Error::NotRecoveryKey)
    ));
}

/// After a restore, removing the lost device that set recovery up keeps the recovery key: the restored device
/// vouches for it too. A thief's own key (no other device vouches for it) still goes with the thief.
#[test]
fn removing_the_device_that_set_up_recovery_keeps_the_key_the_vault_was_restored_with() {
    let (mut a, mut b) = world();
    set_up(&mut a, &local(100), 20).unwrap();
    settle(&mut [&mut a, &mut b]);
    let mut restored = restore(&b.save(), local(100), local(9)).unwrap();
    restored.remove_member(&local(1).id().clone(), 60).unwrap();
    restored.remove_member(&local(2).id().clone(), 61).unwrap();
    assert_eq!(restored.recovery_keys().len(), 1, "the key stays");
    let p = restored.insert(passkey(5), 70).unwrap();
    let again =
        restore(&restored.save(), local(100), local(10)).expect("the phrase still restores");
    assert!(again.passkey(&p).is_some());
}
