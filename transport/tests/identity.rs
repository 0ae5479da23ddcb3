//! Device identity: export and import of the secret, redacted Debug.

#![allow(clippy::unwrap_used)]

use passmesh_transport::{Identity, Zeroizing};

#[test]
fn identity_round_trip_via_secret_bytes_gives_the_same_peer_id() {
    let id = Identity::generate();
    let secret = id.secret_bytes();
    let back = Identity::from_secret_bytes(Zeroizing::new(*secret)).unwrap();
    assert_eq!(back.peer_id(), id.peer_id());
    assert_ne!(Identity::generate().peer_id(), id.peer_id());
}

#[test]
fn debug_of_identity_hides_the_secret() {
    let id = Identity::generate();
    let secret = id.secret_bytes();
    let shown = format!("{id:?} {id:#?}");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!shown.contains(&hex));
    assert!(!shown.contains(&format!("{:?}", *secret)));
    assert!(shown.contains(&id.peer_id().to_string()));
}
