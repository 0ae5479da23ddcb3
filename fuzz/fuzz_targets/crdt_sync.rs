//! Sync messages and persisted sync states from a peer: a replica that receives junk stays usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passmesh_crdt::{Epoch, Keyring, NewPasskey, SyncState, Vault, VaultId, VaultKey};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    // passmesh_crdt contains automerge's own panics (catch_unwind → Malformed); libfuzzer-sys's hook would
    // abort on them anyway. Restore the default hook: a panic that escapes the crate still aborts the run.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    let keyring = Keyring::new(Epoch(0), VaultKey::from_bytes([0x33; 32]));
    let mut vault = Vault::create(VaultId::from_bytes([9; 16]), keyring).expect("create");
    let mut state = SyncState::decode(data).unwrap_or_default();
    let before = vault.heads();
    if vault.receive_sync_message(&mut state, data).is_err() {
        assert_eq!(vault.heads(), before, "a refused message changed the document");
    }
    let _ = vault.generate_sync_message(&mut state);
    vault
        .insert(
            NewPasskey {
                credential_id: vec![1; 16],
                rp_id: "example.com".into(),
                user_handle: vec![2; 8],
                user_name: "alice".into(),
                user_display_name: "Alice".into(),
                private_key: Zeroizing::new(vec![3; 32]),
                created_at_ms: 1,
            },
            1,
        )
        .expect("the replica still takes a passkey");
});
