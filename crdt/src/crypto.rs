//! Field encryption: XChaCha20-Poly1305, value = 24-byte nonce ‖ ciphertext ‖ 16-byte tag.
//!
//! The associated data binds each value to its vault, its object (record or device), its field name and its
//! epoch, so a value copied to another place in the document fails to decrypt.

use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngExt;
use zeroize::Zeroizing;

use crate::{DeviceId, Epoch, Error, RecordId, VaultId, VaultKey};

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// What an encrypted value belongs to.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'a> {
    Record(&'a RecordId),
    /// A device entry, with the fields it keeps in clear: they are authenticated through the sealed ones.
    Device {
        id: &'a DeviceId,
        x25519_public: &'a [u8; 32],
        added_by: Option<&'a DeviceId>,
    },
    KeyCheck,
}

/// The associated data of one value. Every variable-length part is length-prefixed so that no two
/// (scope, field) pairs encode to the same bytes.
pub(crate) fn aad(vault: &VaultId, scope: Scope<'_>, field: &str, epoch: Epoch) -> Vec<u8> {
    let (domain, object): (&[u8], &[u8]) = match scope {
        Scope::Record(id) => (b"passmesh/v1/record", id.as_bytes()),
        Scope::Device { id, .. } => (b"passmesh/v1/device", id.as_str().as_bytes()),
        Scope::KeyCheck => (b"passmesh/v1/keycheck", b""),
    };
    let mut out =
        Vec::with_capacity(domain.len() + 1 + 16 + 8 + object.len() + field.len() + 4 + 64);
    out.extend_from_slice(domain);
    out.push(0);
    out.extend_from_slice(vault.as_bytes());
    push_len_prefixed(&mut out, object);
    push_len_prefixed(&mut out, field.as_bytes());
    out.extend_from_slice(&epoch.0.to_be_bytes());
    if let Scope::Device {
        x25519_public,
        added_by,
        ..
    } = scope
    {
        out.extend_from_slice(x25519_public);
        match added_by {
            Some(by) => {
                out.push(1);
                push_len_prefixed(&mut out, by.as_str().as_bytes());
            }
            None => out.push(0),
        }
    }
    out
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Objects and fields are bounded by input validation far below 4 GiB; saturate rather than wrap anyway.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn cipher(key: &VaultKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.as_bytes().into())
}

/// Encrypts under a fresh random nonce.
pub(crate) fn seal(key: &VaultKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let nonce: [u8; NONCE_LEN] = rand::rng().random();
    seal_with_nonce(key, &nonce, aad, plaintext)
}

/// Encrypts under a caller-chosen nonce. Only for values whose plaintext and associated data are fixed for
/// that nonce (the key check), so reuse can only ever produce the very same ciphertext.
pub(crate) fn seal_with_nonce(
    key: &VaultKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let ct = cipher(key)
        .encrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::InvalidInput("value too long to encrypt"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts and authenticates; `None` on any failure (short value, wrong key, tampering, wrong place).
pub(crate) fn open(key: &VaultKey, aad: &[u8], value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if value.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ct) = value.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).ok()?;
    // Decrypt inside a buffer that is wiped on drop; in-place decryption only shrinks it, so no copy of the
    // plaintext is left behind by a reallocation.
    let mut buf = Zeroizing::new(ct.to_vec());
    cipher(key).decrypt_in_place(&nonce, aad, &mut *buf).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> VaultKey {
        VaultKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_and_binding() {
        let v = VaultId::from_bytes([1; 16]);
        let r1 = RecordId::from_bytes([2; 16]);
        let r2 = RecordId::from_bytes([3; 16]);
        let a = aad(&v, Scope::Record(&r1), "rp_id", Epoch(0));
        let sealed = seal(&key(9), &a, b"example.com").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 11 + TAG_LEN);
        assert_eq!(&open(&key(9), &a, &sealed).unwrap()[..], b"example.com");
        // Another key, record, field, epoch, vault or domain: no.
        assert!(open(&key(8), &a, &sealed).is_none());
        for other in [
            aad(&v, Scope::Record(&r2), "rp_id", Epoch(0)),
            aad(&v, Scope::Record(&r1), "user_name", Epoch(0)),
            aad(&v, Scope::Record(&r1), "rp_id", Epoch(1)),
            aad(
                &VaultId::from_bytes([7; 16]),
                Scope::Record(&r1),
                "rp_id",
                Epoch(0),
            ),
            aad(
                &v,
                Scope::Device {
                    id: &DeviceId::new("x".into()),
                    x25519_public: &[0; 32],
                    added_by: None,
                },
                "rp_id",
                Epoch(0),
            ),
        ] {
            assert!(open(&key(9), &other, &sealed).is_none());
        }
        // Truncated or flipped: no.
        assert!(open(&key(9), &a, &sealed[..sealed.len() - 1]).is_none());
        assert!(open(&key(9), &a, &sealed[..10]).is_none());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(open(&key(9), &a, &flipped).is_none());
    }

    #[test]
    fn nonces_are_fresh() {
        let a = aad(
            &VaultId::from_bytes([1; 16]),
            Scope::KeyCheck,
            "k",
            Epoch(0),
        );
        assert_ne!(
            seal(&key(1), &a, b"x").unwrap(),
            seal(&key(1), &a, b"x").unwrap()
        );
    }

    #[test]
    fn aad_is_unambiguous() {
        let v = VaultId::from_bytes([1; 16]);
        let d1 = DeviceId::new("ab".into());
        let d2 = DeviceId::new("a".into());
        let dev = |id, added_by| Scope::Device {
            id,
            x25519_public: &[7; 32],
            added_by,
        };
        assert_ne!(
            aad(&v, dev(&d1, None), "c", Epoch(0)),
            aad(&v, dev(&d2, None), "bc", Epoch(0))
        );
        assert_ne!(
            aad(&v, dev(&d1, None), "c", Epoch(0)),
            aad(&v, dev(&d1, Some(&d2)), "c", Epoch(0))
        );
    }
}
