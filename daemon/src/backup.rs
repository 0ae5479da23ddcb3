//! Backups: the whole vault in one file that only the recovery phrase opens.
//!
//! A backup file is a standard [age](https://age-encryption.org/v1) file encrypted to the x25519 recipient of
//! every recovery key of the vault (see [`crate::recovery`]); `age -d -i identity.txt FILE` decrypts it with
//! the identity `passmesh recovery identity` prints. What it holds (the **payload**):
//!
//! ```text
//! "PMBK" ‖ version 1 ‖ vault id (16) ‖ made at (u64 ms, big-endian) ‖ u16-prefixed id of the device that made it
//! ‖ u32-prefixed keyring (the epoch keys it held, keyring encoding version 1: no inbox key)
//! ‖ u32-prefixed document (the automerge document, saved whole)
//! ```
//!
//! The document is the vault itself (records, devices, epochs with their wraps, the audit log), so a device
//! restored from it continues the same vault and syncs with any device that survived. Nothing in the file is
//! trusted for being in it: age files are not signed, and anyone who knows a recovery key's public half (every
//! member does) can make one it opens. Whom a restored device trusts comes from what the recovery key itself
//! signed inside the document (`Vault::recovery_anchors`); the made-at time and maker are only shown. The parse is strict and
//! bounded (fuzz target `backup`): every length is checked before anything is allocated, and what decodes
//! encodes back to the same bytes.
//!
//! Files are written next to their final name, fsynced, then renamed over it (and the directory fsynced), so
//! a crash never leaves half a backup under a backup's name. Automatic backups delete only files this device
//! wrote (the vault actor keeps their names), beyond the newest `keep`.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use passmesh_crdt::{DeviceId, VaultId};
use zeroize::Zeroizing;

use crate::recovery::RecoveryKey;

const MAGIC: &[u8; 4] = b"PMBK";
const VERSION: u8 = 1;
/// Longest device id a payload may carry.
const MAX_ID: usize = 256;
/// Largest keyring (an encoded keyring of thousands of epochs is still far below this).
const MAX_KEYRING: usize = 1 << 20;
/// Largest backup file (and document) accepted: a vault far above any quota.
pub const MAX_FILE: usize = 256 << 20;

/// Why a backup could not be read or written. Messages say what to do; none carries a secret.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The phrase's key opens none of the file's recipients.
    #[error(
        "this recovery phrase does not open this file: the phrase is wrong, or the file was made for another \
         phrase (another vault, or a phrase replaced since)"
    )]
    WrongPhrase,
    /// Not an age file at all.
    #[error("this is not a Passmesh backup (not an age-encrypted file)")]
    NotAgeFile,
    /// The age file's authentication failed: it was altered or cut short.
    #[error("the backup file is damaged: it was altered or cut short ({0})")]
    Damaged(String),
    /// It decrypts, but what it holds is not a backup this release reads.
    #[error("the file decrypts but holds no Passmesh backup this release reads: {0}")]
    Malformed(&'static str),
    /// The file is larger than any backup.
    #[error("the file is larger than any backup ({0} bytes)")]
    TooLarge(usize),
    /// The vault has no recovery key to encrypt to.
    #[error(
        "recovery is not set up: run `passmesh recovery setup` first (a backup opens with the phrase only)"
    )]
    NoRecipient,
    /// Encryption failed.
    #[error("cannot encrypt the backup: {0}")]
    Encrypt(String),
    /// Writing the file failed.
    #[error("cannot write the backup to {path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a backup holds. `Debug` leaves the keyring out.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    /// The vault's id.
    pub vault_id: VaultId,
    /// When the backup was made, ms since the Unix epoch.
    pub made_at_ms: u64,
    /// The device that made it (as the file says: shown, not trusted).
    pub made_by: DeviceId,
    /// The epoch keys it held (encoded keyring, no inbox key). Secret.
    pub keyring: Zeroizing<Vec<u8>>,
    /// The automerge document.
    pub document: Vec<u8>,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("vault_id", &self.vault_id)
            .field("made_at_ms", &self.made_at_ms)
            .field("made_by", &self.made_by)
            .field("document", &self.document.len())
            .finish_non_exhaustive()
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

impl Payload {
    /// The payload's bytes (secret: they hold the keyring).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            64 + self.keyring.len() + self.document.len(),
        ));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.vault_id.as_bytes());
        out.extend_from_slice(&self.made_at_ms.to_be_bytes());
        push_str(&mut out, self.made_by.as_str());
        for part in [&self.keyring[..], &self.document[..]] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Parses [`encode`](Self::encode)'s bytes: strict, bounded, no panic on any input.
    pub fn decode(bytes: &[u8]) -> Result<Payload, Error> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(Error::Malformed("it does not start as a Passmesh backup"));
        }
        if r.u8()? != VERSION {
            return Err(Error::Malformed(
                "it is of another version (a newer release?)",
            ));
        }
        let vault_id = VaultId::from_bytes(
            r.take(16)?
                .try_into()
                .map_err(|_| Error::Malformed("vault id"))?,
        );
        let made_at_ms = r.u64()?;
        let made_by = r.id()?;
        let keyring = r.part(MAX_KEYRING)?;
        let keyring = Zeroizing::new(keyring.to_vec());
        let document = r.part(MAX_FILE)?.to_vec();
        if !r.0.is_empty() {
            return Err(Error::Malformed("bytes after its end"));
        }
        if document.is_empty() {
            return Err(Error::Malformed("no document"));
        }
        Ok(Payload {
            vault_id,
            made_at_ms,
            made_by,
            keyring,
            document,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Malformed("it ends early"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, Error> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| Error::Malformed("time"))?;
        Ok(u64::from_be_bytes(b))
    }

    fn id(&mut self) -> Result<DeviceId, Error> {
        let n = self.u16()?;
        if n == 0 || n > MAX_ID {
            return Err(Error::Malformed("a device id is empty or too long"));
        }
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| Error::Malformed("a device id is not text"))?;
        Ok(DeviceId::new(s.to_owned()))
    }

    fn part(&mut self, max: usize) -> Result<&'a [u8], Error> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| Error::Malformed("length"))?;
        let n = u32::from_be_bytes(b) as usize;
        if n > max {
            return Err(Error::Malformed("a part is too large"));
        }
        self.take(n)
    }
}

/// Encrypts `payload` to the age recipients of `recipients` (x25519 public keys of the recovery keys).
pub fn seal(payload: &Payload, recipients: &[[u8; 32]]) -> Result<Vec<u8>, Error> {
    if recipients.is_empty() {
        return Err(Error::NoRecipient);
    }
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| crate::recovery::age_recipient(r).parse())
        .collect::<Result<_, _>>()
        .map_err(|e: &str| Error::Encrypt(e.to_owned()))?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Encrypt(e.to_string()))?;
    let plain = payload.encode();
    let mut out = Vec::with_capacity(plain.len() + plain.len() / 64 + 512);
    let mut w = encryptor
        .wrap_output(&mut out)
        .map_err(|e| Error::Encrypt(e.to_string()))?;
    w.write_all(&plain)
        .and_then(|()| w.finish().map(|_| ()))
        .map_err(|e| Error::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Decrypts backup `file` with recovery key `key` and parses what it holds.
pub fn open(file: &[u8], key: &RecoveryKey) -> Result<Payload, Error> {
    if file.len() > MAX_FILE {
        return Err(Error::TooLarge(file.len()));
    }
    let identity = key
        .age()
        .ok_or_else(|| Error::Encrypt("the recovery key is no age identity".into()))?;
    let decryptor = age::Decryptor::new_buffered(file).map_err(|e| match e {
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => Error::NotAgeFile,
        other => Error::Damaged(other.to_string()),
    })?;
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::WrongPhrase,
            age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
                Error::NotAgeFile
            }
            other => Error::Damaged(other.to_string()),
        })?;
    let mut plain = Zeroizing::new(Vec::with_capacity(file.len()));
    reader
        .by_ref()
        .take(MAX_FILE as u64)
        .read_to_end(&mut plain)
        .map_err(|e| Error::Damaged(e.to_string()))?;
    Payload::decode(&plain)
}

/// The name of a backup made at `at_ms` by device `device`: sortable by time, with the device's id at the end
/// so devices that share a directory (a synced folder) keep their own files.
pub fn file_name(at_ms: u64, device: &DeviceId) -> String {
    let c = crate::clock::Civil::from_ms(at_ms);
    format!(
        "passmesh-backup-{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{}.age",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        at_ms % 1000,
        device_tag(device)
    )
}

/// The last 8 characters of a device id (peer ids end in base58 of its key, so these differ per device).
fn device_tag(device: &DeviceId) -> &str {
    let s = device.as_str();
    let cut = s.char_indices().rev().nth(7).map_or(0, |(i, _)| i);
    &s[cut..]
}

/// Writes `bytes` as `dir/name` atomically: a private temporary file beside it, written and fsynced, renamed
/// over the name, then the directory fsynced. Creates `dir` (mode 0700) if missing.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let fail = |source| Error::Write {
        path: path.clone(),
        source,
    };
    if !dir.exists() {
        crate::layout::private_dir(dir).map_err(fail)?;
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::Phrase;

    fn payload() -> Payload {
        Payload {
            vault_id: VaultId::from_bytes([7; 16]),
            made_at_ms: 1_795_305_845_123,
            made_by: DeviceId::new("12D3KooWdevice".into()),
            keyring: Zeroizing::new(vec![1, 2, 3]),
            document: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
        }
    }

    #[test]
    fn payloads_round_trip_and_refuse_every_damage() {
        let p = payload();
        let bytes = p.encode();
        assert_eq!(Payload::decode(&bytes).unwrap(), p);
        for cut in 0..bytes.len() {
            assert!(Payload::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Payload::decode(&longer).is_err());
        let mut version = bytes.to_vec();
        version[4] = 2;
        assert!(matches!(
            Payload::decode(&version),
            Err(Error::Malformed(_))
        ));
        assert!(!format!("{p:?}").contains("keyring: "));
    }

    #[test]
    fn a_backup_opens_with_its_phrase_only_and_refuses_damage() {
        let phrase = Phrase::generate();
        let key = phrase.derive().unwrap();
        let other = Phrase::generate().derive().unwrap();
        let file = seal(&payload(), &[key.x25519_public()]).unwrap();
        assert!(file.starts_with(b"age-encryption.org/v1\n"));
        assert_eq!(open(&file, &key).unwrap(), payload());
        assert!(matches!(open(&file, &other), Err(Error::WrongPhrase)));
        // Two recipients (two recovery keys): either opens it.
        let both = seal(&payload(), &[other.x25519_public(), key.x25519_public()]).unwrap();
        assert_eq!(open(&both, &key).unwrap(), payload());
        assert_eq!(open(&both, &other).unwrap(), payload());
        // A flipped byte in the body, a cut, garbage.
        let mut flipped = file.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 1;
        assert!(matches!(open(&flipped, &key), Err(Error::Damaged(_))));
        assert!(matches!(
            open(&file[..file.len() - 20], &key),
            Err(Error::Damaged(_))
        ));
        assert!(matches!(open(b"hello", &key), Err(Error::NotAgeFile)));
        assert!(matches!(seal(&payload(), &[]), Err(Error::NoRecipient)));
    }

    #[test]
    fn files_are_written_whole_and_private_with_names_by_time_and_device() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("backups");
        let me = DeviceId::new("12D3KooWAAAAAAAAmine1234".into());
        let name = file_name(1_795_305_845_123, &me);
        assert_eq!(name, "passmesh-backup-20261122T000405.123Z-mine1234.age");
        write_atomic(&target, &name, b"x").unwrap();
        write_atomic(&target, &name, b"yz").unwrap();
        let left: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![name.clone()], "no temporary file left");
        assert_eq!(std::fs::read(target.join(&name)).unwrap(), b"yz");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(target.join(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
