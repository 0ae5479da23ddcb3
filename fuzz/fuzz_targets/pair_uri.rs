//! A pairing invitation as scanned or pasted: strict parse, and what parses prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passmesh_transport::pairing::Invitation;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(invitation) = Invitation::parse(text) {
            let again = Invitation::parse(&invitation.uri()).expect("a printed invitation parses");
            assert_eq!(*again.uri(), *invitation.uri());
        }
    }
});
