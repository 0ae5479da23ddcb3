//! The device identity: an ed25519 key pair whose public half is the libp2p [`PeerId`].

use std::fmt;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use zeroize::Zeroizing;

use crate::Error;

/// A device's long-term libp2p identity (ed25519).
///
/// The 32 secret bytes are what the daemon's keystore seals; [`Identity::secret_bytes`] hands them out in a
/// [`Zeroizing`] buffer. `Debug` prints the peer id only.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
    peer_id: PeerId,
}

impl Identity {
    /// Creates a fresh random identity.
    pub fn generate() -> Self {
        Self::from_keypair(Keypair::generate_ed25519())
    }

    /// Restores an identity from the 32 secret bytes previously returned by [`Identity::secret_bytes`].
    pub fn from_secret_bytes(secret: Zeroizing<[u8; 32]>) -> Result<Self, Error> {
        // libp2p zeroes the buffer it parses from; it is a copy inside our own Zeroizing box.
        let mut copy = secret;
        let keypair =
            Keypair::ed25519_from_bytes(&mut copy[..]).map_err(|_| Error::InvalidIdentity)?;
        Ok(Self::from_keypair(keypair))
    }

    /// The 32 secret bytes of the ed25519 key, for sealing in the keystore.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        // Identities are only ever built from ed25519 keys, so the conversion cannot fail. `to_bytes` (secret then
        // public half) rather than `secret()`, whose copy would not be wiped on drop.
        if let Ok(ed) = self.keypair.clone().try_into_ed25519() {
            let both = Zeroizing::new(ed.to_bytes());
            out.copy_from_slice(&both[..32]);
        }
        out
    }

    /// The peer id derived from the public key.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub(crate) fn keypair(&self) -> Keypair {
        self.keypair.clone()
    }

    fn from_keypair(keypair: Keypair) -> Self {
        let peer_id = keypair.public().to_peer_id();
        Self { keypair, peer_id }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .field("secret", &format_args!(".."))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trip_keeps_peer_id() {
        let a = Identity::generate();
        let b = Identity::from_secret_bytes(a.secret_bytes()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        assert_eq!(*a.secret_bytes(), *b.secret_bytes());
        assert_ne!(Identity::generate().peer_id(), a.peer_id());
    }

    #[test]
    fn debug_hides_secret() {
        let id = Identity::generate();
        let secret = id.secret_bytes();
        let text = format!("{id:?}");
        assert!(text.contains(&id.peer_id().to_string()));
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex));
        assert!(!text.contains(&format!("{:?}", &secret[..])));
    }
}
