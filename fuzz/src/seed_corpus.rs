//! Writes seed inputs for the fuzz targets into `corpus/<target>/`: a saved vault with an incremental chunk,
//! the messages and states of a first sync, every JSON example of docs/ipc.md, and a pairing invitation.
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
    println!("seeds written under fuzz/corpus/");
}
