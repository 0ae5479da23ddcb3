//! The one conversion between the vault's device ids ([`DeviceId`], opaque strings in `crdt`) and the
//! transport's peer ids ([`PeerId`]): a device's id is its libp2p peer id written as a string.

use passmesh_crdt::{DeviceId, LocalDevice};
use passmesh_transport::pairing::PairKey;
use passmesh_transport::{Identity, PeerId};

/// The device id of the device whose libp2p identity is `peer`.
pub fn device_id(peer: &PeerId) -> DeviceId {
    DeviceId::new(peer.to_string())
}

/// The peer id a device entry names; `None` for an id that is not a peer id (such a device cannot connect).
pub fn peer_id(device: &DeviceId) -> Option<PeerId> {
    device.as_str().parse().ok()
}

/// This device as the vault knows it: its identity's ed25519 key (signs removals and epochs) and its x25519
/// key (epoch keys are wrapped to it; the same key pairing uses).
pub fn local_device(identity: &Identity) -> LocalDevice {
    LocalDevice::new(
        &identity.secret_bytes(),
        &PairKey::derive(identity).secret_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vaults_device_id_of_an_identity_is_its_peer_id() {
        let identity = Identity::generate();
        let local = local_device(&identity);
        assert_eq!(*local.id(), device_id(&identity.peer_id()));
        assert_eq!(local.x25519_public(), PairKey::derive(&identity).public());
    }

    #[test]
    fn device_and_peer_ids_convert_both_ways() {
        let peer = PeerId::random();
        assert_eq!(peer_id(&device_id(&peer)), Some(peer));
        assert_eq!(peer_id(&DeviceId::new("laptop".into())), None);
    }
}
