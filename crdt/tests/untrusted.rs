//! Arbitrary bytes from disk or peers: typed errors, never a panic.

use passmesh_crdt::{Epoch, Keyring, NewPasskey, SyncState, Vault, VaultId, VaultKey};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use zeroize::Zeroizing;

fn keyring() -> Keyring {
    Keyring::new(Epoch(0), VaultKey::from_bytes([0x33; 32]))
}

fn passkey(n: u8) -> NewPasskey {
    NewPasskey {
        credential_id: vec![n; 20],
        rp_id: "example.com".into(),
        user_handle: vec![n; 4],
        user_name: "alice".into(),
        user_display_name: "Alice".into(),
        private_key: Zeroizing::new(vec![n; 32]),
        created_at_ms: u64::from(n),
    }
}

const ID: VaultId = VaultId::from_bytes([9; 16]);

/// A saved vault plus an incremental chunk, sync states, and the messages of a first sync with a new replica.
fn samples() -> &'static [Vec<u8>] {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(make_samples)
}

fn make_samples() -> Vec<Vec<u8>> {
    let id = ID;
    let mut a = Vault::create(id, keyring()).expect("create");
    a.insert(passkey(1), 1).expect("insert");
    let mut file = a.save();
    a.insert(passkey(2), 2).expect("insert");
    file.extend(a.save_incremental());
    let mut b = Vault::create(id, keyring()).expect("create");
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    let mut samples = vec![file, sa.encode()];
    for _ in 0..4 {
        if let Some(m) = a.generate_sync_message(&mut sa) {
            b.receive_sync_message(&mut sb, &m).expect("receive");
            samples.push(m);
        }
        if let Some(m) = b.generate_sync_message(&mut sb) {
            a.receive_sync_message(&mut sa, &m).expect("receive");
            samples.push(m);
        }
    }
    samples.push(sa.encode());
    samples
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/untrusted.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mangled_inputs_never_panic(
        which in any::<usize>(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<Option<usize>>(),
    ) {
        let samples = samples();
        let mut target = Vault::create(ID, keyring()).expect("create");
        let mut bytes = samples[which % samples.len()].clone();
        for (pos, x) in flips {
            if !bytes.is_empty() {
                let i = pos % bytes.len();
                bytes[i] ^= x.max(1);
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let _ = Vault::load(&bytes, keyring());
        let _ = SyncState::decode(&bytes);
        let _ = target.receive_sync_message(&mut SyncState::new(), &bytes);
        // Whatever happened, the replica still works and its index matches its document.
        target.insert(passkey(7), 7).expect("insert after junk");
        let reloaded = Vault::load(&target.save(), keyring()).expect("reload");
        prop_assert_eq!(reloaded.passkeys().cloned().collect::<Vec<_>>(), target.passkeys().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Vault::load(&bytes, keyring()).is_err());
        let mut target = Vault::create(ID, keyring()).expect("create");
        let _ = target.receive_sync_message(&mut SyncState::new(), &bytes);
        let _ = SyncState::decode(&bytes);
    }
}

/// Found by the `crdt_load` fuzz target: a vault file on which automerge's column decoder panics (an unwrap in
/// hexane). Loading it, or receiving it from a peer inside a sync message, must be an error — not a crash.
#[test]
fn input_that_panics_automerge_is_an_error() {
    let bytes = include_bytes!("data/automerge-load-panic-1.bin");
    assert!(matches!(
        Vault::load(bytes, keyring()),
        Err(passmesh_crdt::Error::Malformed(_))
    ));
    // The same bytes as the document a peer sends when we lack most of its history.
    let mut target = Vault::create(ID, keyring()).expect("create");
    let heads = target.heads();
    let message = automerge::sync::Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: automerge::sync::ChunkList::from(vec![bytes.to_vec()]),
        flags: None,
        version: automerge::sync::MessageVersion::V2,
    };
    let encoded = message.encode();
    assert!(
        target
            .receive_sync_message(&mut SyncState::new(), &encoded)
            .is_err()
    );
    assert_eq!(target.heads(), heads);
    target
        .insert(passkey(7), 7)
        .expect("the replica still works");
}
