//! Vault keys and the keyring of epochs.
//!
//! Every record is encrypted under the key of one epoch. Rotation adds an epoch and makes it current; older
//! epochs stay in the keyring as long as records encrypted under them must stay readable, and are dropped
//! (destroyed) once nothing needs them ([`Keyring::retired`]). The keyring also keeps this device's **inbox**:
//! the x25519 key new epoch keys are wrapped to, replaced whenever old epochs are destroyed so that the wraps
//! of those epochs in the document can no longer be opened either.

use std::collections::BTreeMap;
use std::fmt;

use rand::RngExt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Error;

/// A 256-bit XChaCha20-Poly1305 key of one vault epoch. Wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct VaultKey([u8; 32]);

impl VaultKey {
    /// A fresh key from the thread-local CSPRNG (seeded from the operating system).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill(&mut bytes[..]);
        Self(*bytes)
    }

    /// Wraps existing key material (e.g. unsealed from the TPM or received while pairing).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key material.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(..)")
    }
}

/// A key epoch. Records remember the epoch they were encrypted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u32);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The vault keys of all known epochs, which epoch new records are encrypted under, and this device's inbox key.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<Epoch, VaultKey>,
    current: Epoch,
    inbox: Option<Inbox>,
    /// Epochs of a generation below this one are never learnt again: their keys were destroyed here (a wrap of
    /// one to a key this device still has, e.g. its identity-derived key, must not bring it back).
    floor: u32,
}

/// This device's inbox: an x25519 key pair of one generation, published (signed) in the vault document so that
/// new epoch keys are wrapped to it. Secret; wiped when dropped.
#[derive(Clone)]
pub(crate) struct Inbox {
    pub(crate) generation: u32,
    pub(crate) secret: Zeroizing<[u8; 32]>,
}

impl Inbox {
    fn generate(generation: u32) -> Inbox {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rng().fill(&mut secret[..]);
        Inbox { generation, secret }
    }

    pub(crate) fn static_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(*self.secret)
    }

    pub(crate) fn public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.static_secret()).to_bytes()
    }
}

impl Keyring {
    /// A keyring with a single epoch, which is current.
    pub fn new(epoch: Epoch, key: VaultKey) -> Self {
        Self {
            keys: BTreeMap::from([(epoch, key)]),
            current: epoch,
            inbox: None,
            floor: 0,
        }
    }

    /// The keyring without this device's inbox key: what pairing hands to a joining device.
    pub fn shareable(&self) -> Keyring {
        Keyring {
            inbox: None,
            floor: 0,
            ..self.clone()
        }
    }

    /// The generation below which this keyring learns no epoch (see [`retired`](Self::retired)).
    pub(crate) fn floor(&self) -> u32 {
        self.floor
    }

    /// The generation of this device's inbox key, if it has one.
    pub fn inbox_generation(&self) -> Option<u32> {
        self.inbox.as_ref().map(|i| i.generation)
    }

    pub(crate) fn inbox(&self) -> Option<&Inbox> {
        self.inbox.as_ref()
    }

    /// This keyring with a fresh inbox key, of a generation above its own and above `published` (the highest
    /// the document lists for this device).
    pub(crate) fn with_new_inbox(&self, published: u32) -> Keyring {
        let generation = self
            .inbox_generation()
            .unwrap_or(0)
            .max(published)
            .saturating_add(1);
        Keyring {
            inbox: Some(Inbox::generate(generation)),
            ..self.clone()
        }
    }

    /// The current epoch alone, with a fresh inbox key (see [`with_new_inbox`](Self::with_new_inbox)): every other
    /// epoch key, and the old inbox key, are left out (and wiped when this keyring's source is dropped); no epoch
    /// of a generation below `generation` (the current one's) is learnt again.
    pub(crate) fn retired(&self, published: u32, generation: u32) -> Keyring {
        let mut next = self.with_new_inbox(published);
        next.keys.retain(|e, _| *e == self.current);
        next.floor = next.floor.max(generation);
        next
    }

    /// Adds (or replaces) the key of `epoch`. Does not change the current epoch.
    pub fn insert(&mut self, epoch: Epoch, key: VaultKey) {
        self.keys.insert(epoch, key);
    }

    /// The epoch new records are encrypted under.
    pub fn current(&self) -> Epoch {
        self.current
    }

    /// Makes `epoch` current; `Error::UnknownEpoch` if the keyring has no key for it.
    pub fn set_current(&mut self, epoch: Epoch) -> Result<(), Error> {
        if !self.keys.contains_key(&epoch) {
            return Err(Error::UnknownEpoch(epoch));
        }
        self.current = epoch;
        Ok(())
    }

    /// The key of `epoch`, if known.
    pub fn key(&self, epoch: Epoch) -> Option<&VaultKey> {
        self.keys.get(&epoch)
    }

    /// The key of the current epoch.
    pub fn current_key(&self) -> &VaultKey {
        // `new` inserts the current epoch, `set_current` only accepts known epochs and nothing removes keys.
        self.keys
            .get(&self.current)
            .expect("the current epoch always has a key")
    }

    /// All epochs with a key, ascending.
    pub fn epochs(&self) -> impl Iterator<Item = Epoch> + '_ {
        self.keys.keys().copied()
    }
}

/// Version byte of [`Keyring::encode`]'s format without an inbox key.
const KEYRING_FORMAT: u8 = 1;
/// Version byte of the format with an inbox key: after the current epoch, the floor generation (u32), the inbox
/// generation (u32) and its secret.
const KEYRING_FORMAT_INBOX: u8 = 2;
/// Bytes of one (epoch, key) entry in the encoding.
const KEYRING_ENTRY: usize = 4 + 32;

impl Keyring {
    /// The keyring as bytes, to be sealed (secret: the caller keeps them zeroized). Layout: version 1, the
    /// current epoch (u32 big-endian), then each epoch with its 32-byte key, ascending; with an inbox key,
    /// version 2 and the inbox's generation (u32) and secret (32 bytes) after the current epoch. What pairing
    /// sends is [`shareable`](Self::shareable)'s encoding (version 1).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(41 + KEYRING_ENTRY * self.keys.len()));
        out.push(match self.inbox {
            Some(_) => KEYRING_FORMAT_INBOX,
            None => KEYRING_FORMAT,
        });
        out.extend_from_slice(&self.current.0.to_be_bytes());
        if let Some(inbox) = &self.inbox {
            out.extend_from_slice(&self.floor.to_be_bytes());
            out.extend_from_slice(&inbox.generation.to_be_bytes());
            out.extend_from_slice(&*inbox.secret);
        }
        for (epoch, key) in &self.keys {
            out.extend_from_slice(&epoch.0.to_be_bytes());
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    /// Parses [`Keyring::encode`]'s bytes; `Error::Malformed` for anything else (no key material in the
    /// message).
    pub fn decode(bytes: &[u8]) -> Result<Keyring, Error> {
        let bad = || Error::Malformed("not an encoded keyring".into());
        let (&[format], rest) = bytes.split_at_checked(1).ok_or_else(bad)? else {
            return Err(bad());
        };
        let (current, mut entries) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let (inbox, floor) = match format {
            KEYRING_FORMAT => (None, 0),
            KEYRING_FORMAT_INBOX => {
                let (floor, rest) = entries.split_first_chunk::<4>().ok_or_else(bad)?;
                let (generation, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
                let (secret, rest) = rest.split_first_chunk::<32>().ok_or_else(bad)?;
                entries = rest;
                let inbox = Inbox {
                    generation: u32::from_be_bytes(*generation),
                    secret: Zeroizing::new(*secret),
                };
                (Some(inbox), u32::from_be_bytes(*floor))
            }
            _ => return Err(bad()),
        };
        if entries.is_empty() || entries.len() % KEYRING_ENTRY != 0 {
            return Err(bad());
        }
        let mut keys = BTreeMap::new();
        for entry in entries.chunks_exact(KEYRING_ENTRY) {
            let (epoch, key) = entry.split_first_chunk::<4>().ok_or_else(bad)?;
            let mut raw = Zeroizing::new([0u8; 32]);
            raw.copy_from_slice(key);
            keys.insert(
                Epoch(u32::from_be_bytes(*epoch)),
                VaultKey::from_bytes(*raw),
            );
        }
        let current = Epoch(u32::from_be_bytes(*current));
        if !keys.contains_key(&current) {
            return Err(bad());
        }
        Ok(Keyring {
            keys,
            current,
            inbox,
            floor,
        })
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("epochs", &self.keys.keys().map(|e| e.0).collect::<Vec<_>>())
            .field("current", &self.current.0)
            .field("inbox", &self.inbox_generation())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_tracks_epochs() {
        let mut k = Keyring::new(Epoch(0), VaultKey::from_bytes([1; 32]));
        assert_eq!(k.set_current(Epoch(1)), Err(Error::UnknownEpoch(Epoch(1))));
        k.insert(Epoch(1), VaultKey::from_bytes([2; 32]));
        assert_eq!(k.current(), Epoch(0));
        k.set_current(Epoch(1)).unwrap();
        assert_eq!(k.current_key().as_bytes(), &[2; 32]);
        assert_eq!(k.key(Epoch(0)).unwrap().as_bytes(), &[1; 32]);
        assert!(k.key(Epoch(7)).is_none());
        assert_eq!(k.epochs().collect::<Vec<_>>(), vec![Epoch(0), Epoch(1)]);
    }

    #[test]
    fn keyring_encoding_round_trips_and_rejects_garbage() {
        let mut k = Keyring::new(Epoch(0), VaultKey::from_bytes([7; 32]));
        k.insert(Epoch(1), VaultKey::from_bytes([9; 32]));
        k.set_current(Epoch(1)).unwrap();
        let b = k.encode();
        let d = Keyring::decode(&b).unwrap();
        assert_eq!(d.current(), Epoch(1));
        assert_eq!(d.key(Epoch(0)).unwrap().as_bytes(), &[7; 32]);
        assert_eq!(d.key(Epoch(1)).unwrap().as_bytes(), &[9; 32]);
        let mut unknown_current = b.to_vec();
        unknown_current[1..5].copy_from_slice(&5u32.to_be_bytes());
        for bad in [
            &b[..0],
            &b[..3],
            &b[..5],
            &b[..b.len() - 1],
            &[2u8, 0, 0, 0, 0][..],
            &unknown_current[..],
        ] {
            assert!(Keyring::decode(bad).is_err());
        }
    }

    #[test]
    fn an_inbox_key_is_sealed_with_the_keyring_and_never_shared() {
        let mut k = Keyring::new(Epoch(0), VaultKey::from_bytes([7; 32])).with_new_inbox(0);
        k.insert(Epoch(5), VaultKey::from_bytes([9; 32]));
        k.set_current(Epoch(5)).unwrap();
        assert_eq!(k.inbox_generation(), Some(1));
        let d = Keyring::decode(&k.encode()).unwrap();
        assert_eq!(d.inbox_generation(), Some(1));
        assert_eq!(d.inbox().unwrap().public(), k.inbox().unwrap().public());
        assert_eq!(d.epochs().collect::<Vec<_>>(), vec![Epoch(0), Epoch(5)]);
        // What pairing hands over has no inbox key, in the older format.
        let shared = k.shareable().encode();
        assert_eq!(shared[0], KEYRING_FORMAT);
        assert!(Keyring::decode(&shared).unwrap().inbox().is_none());
        // Retiring keeps the current epoch alone and makes a new inbox key, above the published generation.
        let r = k.retired(3, 2);
        assert_eq!(Keyring::decode(&r.encode()).unwrap().floor(), 2);
        assert_eq!(r.epochs().collect::<Vec<_>>(), vec![Epoch(5)]);
        assert_eq!(r.inbox_generation(), Some(4));
        assert_ne!(r.inbox().unwrap().public(), k.inbox().unwrap().public());
        let b = k.encode();
        for bad in [&b[..5], &b[..9], &b[..45], &b[..b.len() - 1]] {
            assert!(Keyring::decode(bad).is_err());
        }
        let printed = format!("{k:?}");
        assert!(printed.contains("inbox: Some(1)"), "{printed}");
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            VaultKey::generate().as_bytes(),
            VaultKey::generate().as_bytes()
        );
    }

    #[test]
    fn debug_hides_key_material() {
        let bytes = [0xa7u8; 32];
        let key = VaultKey::from_bytes(bytes);
        let mut ring = Keyring::new(Epoch(3), key.clone());
        ring.insert(Epoch(4), VaultKey::from_bytes([0x5c; 32]));
        let printed = format!("{key:?} {ring:?} {key:#?} {ring:#?}");
        assert!(printed.contains("VaultKey(..)"));
        assert!(printed.contains('3') && printed.contains('4'));
        for needle in ["a7", "A7", "167", "5c", "92"] {
            assert!(!printed.contains(needle), "{needle} in {printed}");
        }
    }
}
