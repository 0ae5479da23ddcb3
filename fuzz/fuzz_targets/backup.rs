//! A backup file handed to `passmesh restore` (from a USB stick, a NAS, anyone): the age envelope, opened with a
//! fixed recovery key, and the payload inside. Nothing panics; a payload that decodes encodes back to itself.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use passmesh_daemon::backup::{self, Payload};
use passmesh_daemon::recovery::{Phrase, RecoveryKey};

fn key() -> &'static RecoveryKey {
    static KEY: OnceLock<RecoveryKey> = OnceLock::new();
    KEY.get_or_init(|| {
        Phrase::parse(
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
             abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art",
        )
        .and_then(|p| p.derive())
        .expect("a fixed phrase")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Payload::decode(data) {
        let again = Payload::decode(&p.encode()).expect("an encoded payload decodes");
        assert_eq!(again, p);
    }
    let _ = backup::open(data, key());
});
