//! A vault keyring as a joining device unwraps it from the inviter's grant (and as the keystore unseals it):
//! strict parse, and what parses encodes back to the same bytes' meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passmesh_crdt::Keyring;

fuzz_target!(|data: &[u8]| {
    if let Ok(ring) = Keyring::decode(data) {
        let again = Keyring::decode(&ring.encode()).expect("an encoded keyring decodes");
        assert_eq!(again.current(), ring.current());
        assert!(again.epochs().eq(ring.epochs()));
        for epoch in ring.epochs() {
            assert_eq!(
                again.key(epoch).map(|k| *k.as_bytes()),
                ring.key(epoch).map(|k| *k.as_bytes())
            );
        }
    }
});
