//! A vault file from disk (or a damaged one): typed error or a working vault, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passmesh_crdt::{Epoch, Keyring, Vault, VaultKey};

fuzz_target!(|data: &[u8]| {
    let keyring = Keyring::new(Epoch(0), VaultKey::from_bytes([0x33; 32]));
    if let Ok(mut vault) = Vault::load(data, keyring.clone()) {
        // A vault that loaded must save and load again with the same passkeys.
        let saved = vault.save();
        let again = Vault::load(&saved, keyring).expect("a saved vault loads");
        assert_eq!(again.len(), vault.len());
    }
});
