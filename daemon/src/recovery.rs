//! The recovery phrase and the key derived from it.
//!
//! A phrase is 24 words of the BIP-39 English list: 256 bits of entropy and an 8-bit checksum. The recovery key
//! is derived from the entropy alone (never the BIP-39 wallet seed):
//!
//! ```text
//! master  = argon2id(password = entropy (32 bytes), salt = "passmesh/v1/recovery", 64 MiB, 3 passes, 1 lane,
//!                    32 bytes)
//! ed25519 = HKDF-SHA256(ikm = master, salt = none, info = "passmesh/v1/recovery/ed25519")  (signing seed)
//! x25519  = HKDF-SHA256(ikm = master, salt = none, info = "passmesh/v1/recovery/x25519")   (age identity)
//! ```
//!
//! The ed25519 key makes the recovery key's member id (a libp2p peer id, like a device's) and signs the entry of
//! a device restored with the phrase; the x25519 key is what every epoch key is wrapped to and what backups
//! are encrypted to: its secret, bech32-encoded, is a standard age identity (`AGE-SECRET-KEY-1…`), so the
//! `age` tool decrypts a backup with what `passmesh recovery identity` prints. The salt is fixed so that the
//! phrase alone gives the key, on any machine, without knowing the vault: with 256 bits of entropy a
//! precomputed table is out of reach anyway, and argon2id makes every guess cost 64 MiB and a few hundred
//! milliseconds.
//!
//! Typed phrases are forgiving where that cannot change their meaning: case, extra spaces, commas, numbering
//! ("1." or "1)"), and any word abbreviated to its first four letters or more (BIP-39 words are unique in their
//! first four).

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use bip39::{Language, Mnemonic};
use hkdf::Hkdf;
use passmesh_crdt::{DeviceId, LocalDevice};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Words in a recovery phrase.
pub const WORDS: usize = 24;

/// The argon2id parameters of the derivation (m KiB, passes, lanes).
pub const PARAMS: (u32, u32, u32) = (64 * 1024, 3, 1);

const SALT: &[u8] = b"passmesh/v1/recovery";
const INFO_ED25519: &[u8] = b"passmesh/v1/recovery/ed25519";
const INFO_X25519: &[u8] = b"passmesh/v1/recovery/x25519";

/// Why a typed phrase was refused. The messages name the word's position, never the word.
#[non_exhaustive]
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not 24 words.
    #[error("the phrase has {0} words; a Passmesh recovery phrase has 24")]
    WordCount(usize),
    /// A word that is not on the BIP-39 English list (nor the start of exactly one word of it).
    #[error("word {0} is not a word of the recovery word list (check its spelling)")]
    UnknownWord(usize),
    /// Every word is on the list but the checksum fails.
    #[error("the words do not form a valid phrase: one is wrong or out of order")]
    Checksum,
    /// The derivation failed (no memory for argon2id).
    #[error("cannot derive the recovery key: {0}")]
    Derive(String),
}

/// A recovery phrase: 24 words. The text is wiped when dropped; `Debug` shows nothing of it.
pub struct Phrase {
    entropy: Zeroizing<[u8; 32]>,
}

impl Phrase {
    /// A new phrase from 256 fresh random bits.
    pub fn generate() -> Phrase {
        let mut entropy = Zeroizing::new([0u8; 32]);
        rand::fill(&mut entropy[..]);
        Phrase { entropy }
    }

    /// Parses a typed phrase (see the module docs for what is forgiven).
    pub fn parse(text: &str) -> Result<Phrase, Error> {
        let list = Language::English;
        let mut indices: Vec<u16> = Vec::with_capacity(WORDS);
        let lower = Zeroizing::new(text.to_lowercase());
        let tokens = lower
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
            .filter(|t| !t.is_empty())
            // "1." / "1)" / "12:" before a word: numbering, not a word.
            .filter(|t| {
                !t.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | ')' | ':'))
            });
        for (n, token) in tokens.enumerate() {
            let word = token
                .trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ')' | ':'));
            let index = list.find_word(word).or_else(|| {
                let candidates = list.words_by_prefix(word);
                (word.len() >= 4 && candidates.len() == 1)
                    .then(|| list.find_word(candidates[0]))
                    .flatten()
            });
            match index {
                Some(i) => indices.push(i),
                None => return Err(Error::UnknownWord(n + 1)),
            }
        }
        if indices.len() != WORDS {
            return Err(Error::WordCount(indices.len()));
        }
        let words = list.word_list();
        let normal = Zeroizing::new(
            indices
                .iter()
                .map(|&i| words[usize::from(i)])
                .collect::<Vec<_>>()
                .join(" "),
        );
        indices.iter_mut().for_each(|i| *i = 0);
        let mnemonic = Mnemonic::parse_in_normalized(list, &normal).map_err(|_| Error::Checksum)?;
        let (bytes, len) = mnemonic.to_entropy_array();
        let bytes = Zeroizing::new(bytes);
        let entropy = Zeroizing::new(
            <[u8; 32]>::try_from(&bytes[..len]).map_err(|_| Error::WordCount(WORDS))?,
        );
        Ok(Phrase { entropy })
    }

    /// The 24 words, in order.
    pub fn words(&self) -> Words {
        // 32 bytes of entropy are always a valid 24-word mnemonic.
        match Mnemonic::from_entropy_in(Language::English, &self.entropy[..]) {
            Ok(m) => Words(m.words().collect()),
            Err(_) => Words(Vec::new()),
        }
    }

    /// The phrase as one line of space-separated words.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(self.words().join(" "))
    }

    /// Derives the recovery key (argon2id: about 64 MiB and a few hundred milliseconds).
    pub fn derive(&self) -> Result<RecoveryKey, Error> {
        let (m, t, p) = PARAMS;
        let params = Params::new(m, t, p, Some(32)).map_err(|e| Error::Derive(e.to_string()))?;
        let mut master = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(&self.entropy[..], SALT, &mut master[..])
            .map_err(|e| Error::Derive(e.to_string()))?;
        let hk = Hkdf::<Sha256>::new(None, &master[..]);
        let mut ed25519 = Zeroizing::new([0u8; 32]);
        let mut x25519 = Zeroizing::new([0u8; 32]);
        hk.expand(INFO_ED25519, &mut ed25519[..])
            .and_then(|()| hk.expand(INFO_X25519, &mut x25519[..]))
            .map_err(|_| Error::Derive("HKDF output length".into()))?;
        Ok(RecoveryKey { ed25519, x25519 })
    }
}

impl fmt::Debug for Phrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Phrase(..)")
    }
}

/// The words of a phrase (references into the word list: which ones is the secret, cleared on drop).
pub struct Words(Vec<&'static str>);

impl std::ops::Deref for Words {
    type Target = [&'static str];
    fn deref(&self) -> &[&'static str] {
        &self.0
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        for w in &mut self.0 {
            *w = "";
        }
        std::hint::black_box(&self.0);
    }
}

/// The key pair derived from a phrase. Secret; `Debug` shows its member id only.
pub struct RecoveryKey {
    ed25519: Zeroizing<[u8; 32]>,
    x25519: Zeroizing<[u8; 32]>,
}

impl RecoveryKey {
    /// The key as the vault's member (signs with its ed25519 key, unwraps with its x25519 key).
    pub fn member(&self) -> LocalDevice {
        LocalDevice::new(&self.ed25519, &self.x25519)
    }

    /// Its member id (a libp2p peer id of its ed25519 key).
    pub fn id(&self) -> DeviceId {
        self.member().id().clone()
    }

    /// Its x25519 public key: what epoch keys are wrapped to, and the age recipient.
    pub fn x25519_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*self.x25519)).to_bytes()
    }

    /// The standard age identity (`AGE-SECRET-KEY-1…`) of its x25519 key. Secret.
    pub fn age_identity(&self) -> Zeroizing<String> {
        use bech32::ToBase32;
        let encoded = bech32::encode(
            "age-secret-key-",
            self.x25519.to_base32(),
            bech32::Variant::Bech32,
        )
        .map(Zeroizing::new)
        .unwrap_or_default();
        Zeroizing::new(encoded.to_uppercase())
    }

    /// The age identity, parsed by the age crate.
    pub fn age(&self) -> Option<age::x25519::Identity> {
        self.age_identity().parse().ok()
    }
}

/// The age recipient (`age1…`) of an x25519 public key.
pub fn age_recipient(x25519_public: &[u8; 32]) -> String {
    use bech32::ToBase32;
    bech32::encode("age", x25519_public.to_base32(), bech32::Variant::Bech32).unwrap_or_default()
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// `count` distinct word positions (1-based, ascending) to ask back, chosen at random.
pub fn positions_to_confirm(count: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (1..=WORDS).collect();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.min(WORDS) {
        let i = rand::random_range(0..all.len());
        out.push(all.swap_remove(i));
    }
    out.sort_unstable();
    out
}

/// Whether `answer` (the words typed back, in the order of `positions`, forgiven as [`Phrase::parse`] forgives)
/// names the phrase's words at those positions.
pub fn confirms(phrase: &Phrase, positions: &[usize], answer: &str) -> bool {
    let words = phrase.words();
    let list = Language::English;
    let typed: Vec<Option<&'static str>> = answer
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let t = t.to_lowercase();
            list.find_word(&t)
                .or_else(|| {
                    let c = list.words_by_prefix(&t);
                    (t.len() >= 4 && c.len() == 1)
                        .then(|| list.find_word(c[0]))
                        .flatten()
                })
                .map(|i| list.word_list()[usize::from(i)])
        })
        .collect();
    typed.len() == positions.len()
        && positions
            .iter()
            .zip(&typed)
            .all(|(p, t)| words.get(p.wrapping_sub(1)).copied() == *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phrase_round_trips_and_forgives_what_cannot_change_it() {
        let p = Phrase::generate();
        let text = p.to_text();
        assert_eq!(text.split(' ').count(), WORDS);
        let back = Phrase::parse(&text).unwrap();
        assert_eq!(*back.entropy, *p.entropy);
        // Numbered, upper case, abbreviated to four letters, on several lines.
        let messy: String = p
            .words()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let w = if w.len() > 4 && i % 2 == 0 {
                    &w[..4]
                } else {
                    w
                };
                format!("{}. {}\n", i + 1, w.to_uppercase())
            })
            .collect();
        assert_eq!(*Phrase::parse(&messy).unwrap().entropy, *p.entropy);
    }

    #[test]
    fn wrong_phrases_are_refused_with_the_position_not_the_word() {
        let p = Phrase::generate();
        let words = p.words();
        let short = words[..23].join(" ");
        assert_eq!(Phrase::parse(&short).unwrap_err(), Error::WordCount(23));
        let mut bad: Vec<&str> = words.to_vec();
        bad[4] = "notaword";
        let err = Phrase::parse(&bad.join(" ")).unwrap_err();
        assert_eq!(err, Error::UnknownWord(5));
        assert!(!err.to_string().contains("notaword"));
        // Two words swapped: every word is valid, the checksum (almost always) is not.
        let mut swapped: Vec<&str> = words.to_vec();
        let (a, b) = (0..WORDS)
            .flat_map(|i| (i + 1..WORDS).map(move |j| (i, j)))
            .find(|&(i, j)| words[i] != words[j])
            .unwrap();
        swapped.swap(a, b);
        match Phrase::parse(&swapped.join(" ")) {
            Err(Error::Checksum) => {}
            Ok(q) => assert_ne!(*q.entropy, *p.entropy),
            Err(e) => panic!("{e}"),
        }
        assert!(format!("{p:?}").starts_with("Phrase(..)"));
    }

    #[test]
    fn the_key_is_fixed_by_the_phrase_and_is_a_standard_age_identity() {
        let p = Phrase::parse(
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
             abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art",
        )
        .unwrap();
        let k = p.derive().unwrap();
        let again = p.derive().unwrap();
        assert_eq!(k.id(), again.id());
        assert_eq!(k.x25519_public(), again.x25519_public());
        let other = Phrase::generate().derive().unwrap();
        assert_ne!(k.id(), other.id());
        let identity = k.age_identity();
        assert!(
            identity.starts_with("AGE-SECRET-KEY-1"),
            "{}",
            identity.len()
        );
        let parsed = k.age().expect("age parses it");
        use age::secrecy::ExposeSecret;
        assert_eq!(parsed.to_string().expose_secret(), identity.as_str());
        assert_eq!(
            parsed.to_public().to_string(),
            age_recipient(&k.x25519_public())
        );
        assert!(!format!("{k:?}").contains(identity.as_str()));
    }

    #[test]
    fn typed_back_words_are_checked_against_their_positions() {
        let p = Phrase::generate();
        let w = p.words();
        let at = positions_to_confirm(3);
        assert_eq!(at.len(), 3);
        assert!(at.windows(2).all(|x| x[0] < x[1]) && at.iter().all(|&i| (1..=24).contains(&i)));
        let answer: Vec<&str> = at.iter().map(|&i| w[i - 1]).collect();
        assert!(confirms(&p, &at, &answer.join(" ")));
        assert!(confirms(&p, &at, &answer.join(", ").to_uppercase()));
        let mut wrong = answer.clone();
        wrong.reverse();
        if wrong != answer {
            assert!(!confirms(&p, &at, &wrong.join(" ")));
        }
        assert!(!confirms(&p, &at, &answer[..2].join(" ")));
        assert!(!confirms(&p, &at, ""));
    }
}
