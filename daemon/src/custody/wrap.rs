//! Wrapping a vault keyring to a joining device's x25519 static key (pairing): X25519 with a fresh ephemeral
//! key, HKDF-SHA256 (salt: both public keys), XChaCha20-Poly1305 with the vault id and the joiner's peer id as
//! associated data. Output: ephemeral public key ‖ nonce ‖ ciphertext.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use passmesh_crdt::VaultId;
use passmesh_transport::PeerId;
use passmesh_transport::pairing::PairKey;
use rand::RngExt as _;
use sha2::Sha256;
use zeroize::Zeroizing;

const WRAP_INFO: &[u8] = b"passmesh pair keyring v1";

fn wrap_key(shared: &[u8; 32], eph: &[u8; 32], to: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = Vec::with_capacity(64);
    salt.extend_from_slice(eph);
    salt.extend_from_slice(to);
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(WRAP_INFO, key.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn wrap_ad(vault: &VaultId, joiner: &PeerId) -> Vec<u8> {
    let mut ad = vault.as_bytes().to_vec();
    ad.extend_from_slice(&joiner.to_bytes());
    ad
}

/// Wraps `keyring` to the joiner's x25519 public key.
pub fn wrap_keyring(
    keyring: &[u8],
    joiner_x25519: &[u8; 32],
    vault: &VaultId,
    joiner: &PeerId,
) -> Option<Vec<u8>> {
    let eph = PairKey::generate();
    let shared = eph.diffie_hellman(joiner_x25519)?;
    let key = wrap_key(&shared, &eph.public(), joiner_x25519);
    let nonce: [u8; 24] = rand::rng().random();
    let ct = XChaCha20Poly1305::new((&*key).into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: keyring,
                aad: &wrap_ad(vault, joiner),
            },
        )
        .ok()?;
    let mut out = eph.public().to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Some(out)
}

/// Unwraps a keyring wrapped to `key` by [`wrap_keyring`]; `None` if it does not authenticate.
pub fn unwrap_keyring(
    wrapped: &[u8],
    key: &PairKey,
    vault: &VaultId,
    me: &PeerId,
) -> Option<Zeroizing<Vec<u8>>> {
    let (eph, rest) = wrapped.split_at_checked(32)?;
    let (nonce, ct) = rest.split_at_checked(24)?;
    let eph: [u8; 32] = eph.try_into().ok()?;
    let nonce: [u8; 24] = nonce.try_into().ok()?;
    let shared = key.diffie_hellman(&eph)?;
    let k = wrap_key(&shared, &eph, &key.public());
    XChaCha20Poly1305::new((&*k).into())
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ct,
                aad: &wrap_ad(vault, me),
            },
        )
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_wrap_round_trips_and_binds_vault_and_joiner() {
        let joiner = PairKey::generate();
        let vault = VaultId::from_bytes([3; 16]);
        let peer = PeerId::random();
        let wrapped = wrap_keyring(b"keyring bytes", &joiner.public(), &vault, &peer).unwrap();
        assert_eq!(
            unwrap_keyring(&wrapped, &joiner, &vault, &peer)
                .unwrap()
                .as_slice(),
            b"keyring bytes"
        );
        assert!(unwrap_keyring(&wrapped, &PairKey::generate(), &vault, &peer).is_none());
        assert!(unwrap_keyring(&wrapped, &joiner, &VaultId::from_bytes([4; 16]), &peer).is_none());
        assert!(unwrap_keyring(&wrapped, &joiner, &vault, &PeerId::random()).is_none());
        assert!(unwrap_keyring(&wrapped[..40], &joiner, &vault, &peer).is_none());
    }
}
