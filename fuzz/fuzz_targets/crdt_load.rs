//! A vault file from disk (or a damaged one): typed error or a working vault, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passmesh_crdt::{Epoch, Keyring, Vault, VaultKey};

fuzz_target!(|data: &[u8]| {
    // passmesh_crdt contains automerge's own panics (catch_unwind → Malformed); libfuzzer-sys's hook would
    // abort on them anyway. Restore the default hook: a panic that escapes the crate still aborts the run.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    let keyring = Keyring::new(Epoch(0), VaultKey::from_bytes([0x33; 32]));
    if let Ok(mut vault) = Vault::load(data, keyring.clone()) {
        // A vault that loaded must save and load again with the same passkeys.
        let saved = vault.save();
        let again = Vault::load(&saved, keyring).expect("a saved vault loads");
        assert_eq!(again.len(), vault.len());
    }
});
