//! The one conversion between the vault's device ids ([`DeviceId`], opaque strings in `crdt`) and the
//! transport's peer ids ([`PeerId`]): a device's id is its libp2p peer id written as a string.

use passmesh_crdt::DeviceId;
use passmesh_transport::PeerId;

/// The device id of the device whose libp2p identity is `peer`.
pub fn device_id(peer: &PeerId) -> DeviceId {
    DeviceId::new(peer.to_string())
}

/// The peer id a device entry names; `None` for an id that is not a peer id (such a device cannot connect).
pub fn peer_id(device: &DeviceId) -> Option<PeerId> {
    device.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_peer_ids_convert_both_ways() {
        let peer = PeerId::random();
        assert_eq!(peer_id(&device_id(&peer)), Some(peer));
        assert_eq!(peer_id(&DeviceId::new("laptop".into())), None);
    }
}
