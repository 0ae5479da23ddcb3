//! Writes seed inputs for the fuzz targets into `corpus/<target>/`: a saved vault with an incremental chunk,
//! the messages and states of a first sync, every JSON example of docs/ipc.md, a pairing invitation, a keyring,
//! and a vault after a device removal (signed removal, a second epoch).
//! Run from `fuzz/`: `cargo run --bin seed-corpus`.

use std::fs;
use std::path::Path;

use passmesh_crdt::{Epoch, Keyring, NewPasskey, SyncState, Vault, VaultId, VaultKey};
use passmesh_transport::pairing::Invitation;
use zeroize::Zeroizing;

fn passkey(n: u8) -> NewPasskey {
    NewPasskey {
        credential_id: vec![n; 16],
        rp_id: "example.com".into(),
        user_handle: vec![n; 8],
        user_name: format!("user{n}"),
        user_display_name: format!("User {n}"),
        private_key: Zeroizing::new(vec![n; 32]),
        created_at_ms: u64::from(n),
    }
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let keyring = Keyring::new(Epoch(0), VaultKey::from_bytes([0x33; 32]));
    let id = VaultId::from_bytes([9; 16]);
    let mut a = Vault::create(id, keyring.clone()).expect("create");
    a.insert(passkey(1), 1).expect("insert");
    let mut file = a.save();
    a.insert(passkey(2), 2).expect("insert");
    let first = a.passkeys().next().expect("one").record_id;
    a.rename(&first, "work", 3).expect("rename");
    file.extend(a.save_incremental());
    write("crdt_load", "vault", &file);

    let mut b = Vault::create(id, keyring).expect("create");
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    let mut n = 0;
    for _ in 0..4 {
        if let Some(m) = a.generate_sync_message(&mut sa) {
            b.receive_sync_message(&mut sb, &m).expect("receive");
            write("crdt_sync", &format!("message-{n}"), &m);
            n += 1;
        }
        if let Some(m) = b.generate_sync_message(&mut sb) {
            a.receive_sync_message(&mut sa, &m).expect("receive");
            write("crdt_sync", &format!("message-{n}"), &m);
            n += 1;
        }
    }
    write("crdt_sync", "state", &sa.encode());

    let doc = fs::read_to_string("../docs/ipc.md").expect("read docs/ipc.md");
    for (i, block) in doc.split("```json\n").skip(1).enumerate() {
        if let Some((json, _)) = block.split_once("```") {
            write("ipc_request", &format!("doc-{i}.json"), json.as_bytes());
        }
    }

    let inviter = passmesh_transport::Identity::generate().peer_id();
    let addrs = vec![
        "/ip4/192.168.1.20/tcp/4001".parse().expect("addr"),
        "/ip4/192.168.1.20/udp/4001/quic-v1".parse().expect("addr"),
    ];
    let invitation = Invitation::new(inviter, addrs, [9; 16], 1_900_000_000);
    write("pair_uri", "invitation", invitation.uri().as_bytes());
    let mut ring = Keyring::new(Epoch(0), VaultKey::from_bytes([1; 32]));
    ring.insert(Epoch(1), VaultKey::from_bytes([2; 32]));
    ring.set_current(Epoch(1)).expect("epoch 1 has a key");
    write("keyring", "two-epochs", &ring.encode());

    // A vault with a device removed: a signed removal, a second epoch wrapped to the remaining device, every
    // record re-encrypted.
    let device = |seed: u8| {
        passmesh_crdt::LocalDevice::new(&Zeroizing::new([seed; 32]), &Zeroizing::new([seed; 32]))
    };
    let entry = |d: &passmesh_crdt::LocalDevice, by: Option<&passmesh_crdt::LocalDevice>| {
        passmesh_crdt::Device {
            id: d.id().clone(),
            name: format!("device {}", d.id()),
            x25519_public: d.x25519_public(),
            added_by: by.map(|b| b.id().clone()),
            added_at_ms: 1,
            kind: passmesh_crdt::MemberKind::Device,
            signature: None,
        }
    };
    let (first, second, third) = (device(1), device(2), device(3));
    let mut v = Vault::create(
        VaultId::from_bytes([8; 16]),
        Keyring::new(Epoch(0), VaultKey::from_bytes([0x44; 32])),
    )
    .expect("create");
    for (d, by) in [(&first, None), (&second, Some(&first)), (&third, Some(&first))] {
        v.add_device(entry(d, by)).expect("add device");
    }
    let third_id = third.id().clone();
    v.set_local(first);
    v.insert(passkey(3), 3).expect("insert");
    v.remove_member(&third_id, 4).expect("remove");
    write("crdt_load", "vault-rotated", &v.save());

    // An audit entry as the format describes it (version, event, device, time, subject, signature).
    let mut entry = vec![1u8, 2];
    for part in [third_id.as_str(), "0123456789abcdef0123456789abcdef"] {
        if part.len() == 32 {
            entry.extend_from_slice(&4u64.to_be_bytes());
        }
        entry.extend_from_slice(&u16::try_from(part.len()).expect("short").to_be_bytes());
        entry.extend_from_slice(part.as_bytes());
    }
    entry.extend_from_slice(&[0x5a; 64]);
    write("audit", "entry", &entry);
    println!("seeds written under fuzz/corpus/");
}
