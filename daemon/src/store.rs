//! Durable storage of one user's vault on this device, in sled.
//!
//! One sled tree, two key spaces: `d` ‖ seq (u64 big-endian) holds the automerge document as a snapshot
//! (seq 0) followed by incremental chunks, and `m:` ‖ name holds small metadata (the PIN state). Every write
//! that acknowledges something to a caller is flushed before it returns. Compaction replaces snapshot and
//! chunks in one atomic batch, so a crash leaves either the old or the new layout.
//!
//! The sealed keyring is a file of its own, [`KEYRING_FILE`], inside the store's directory: the daemon must be
//! able to refuse to start (no TPM, changed PCRs) without opening sled, because opening sled writes to its
//! files. It is replaced atomically (write, fsync, rename, fsync the directory). Stores written before this
//! layout keep the keyring under the metadata name `keyring`; [`Store::meta`] still reads it.

use std::path::Path;

use passmesh_transport::PeerId;

/// Storage failures.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled could not open, read, write or flush.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// The keyring file cannot be read or written.
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    /// A key in the store has an unexpected shape (written by something else, or damaged).
    #[error("storage is damaged: {0}")]
    Damaged(String),
}

const DOC: u8 = b'd';

fn doc_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = DOC;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = b"m:".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// A metadata entry, by what it holds. [`Meta::name`] is its name on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta<'a> {
    /// The PIN state (JSON).
    Pin,
    /// The automerge sync state with a peer (`sync/<peer>`).
    SyncState(&'a PeerId),
    /// When a sync message from a peer was last applied, ms since the Unix epoch, u64 big-endian
    /// (`synced/<peer>`).
    LastSync(&'a PeerId),
    /// The addresses learnt for a device when it was added, a JSON list (`addrs/<peer>`).
    Addrs(&'a PeerId),
    /// The sealed keyring, in stores of the layout before [`KEYRING_FILE`].
    LegacyKeyring,
    /// The devices this device trusts without a signature chain (a JSON list of device ids): pinned here, not in
    /// the replicated document, where any member could change them.
    Anchors,
    /// When this device first saw a passkey in the trash, ms since the Unix epoch, u64 big-endian
    /// (`trash-seen/<record id>`): the trash's keeping time runs from here, not from the time in the document,
    /// which any member (or its clock) could set in the past.
    TrashSeen(&'a passmesh_crdt::RecordId),
    /// The current vault key epoch and when this device first saw it, or last noted a passkey another device
    /// took away: u32 ‖ u64 ms, big-endian (`epoch-seen`). Older epoch keys are kept `[vault] trash_days` from
    /// then, unless a purge was approved.
    EpochSeen,
    /// A device's first PIN key and when this device first saw it: 32 bytes ‖ u64 ms big-endian
    /// (`pin-key-seen/<device id>`). Its approvals count `[vault] trash_days` from then.
    PinKeySeen(&'a passmesh_crdt::DeviceId),
    /// A passkey another device deleted or replaced: when this device saw it, where its last good version is
    /// (`lost/<record id>`, see `vault::trash::LossNote`). Offered back for `[vault] trash_days`.
    Lost(&'a passmesh_crdt::RecordId),
    /// The document heads the last automatic backup held, concatenated (`backup-heads`).
    BackupHeads,
    /// When this device last wrote a backup and its file name: u64 ms big-endian ‖ UTF-8 (`last-backup`).
    LastBackup,
    /// The automatic backups this device wrote and has not deleted, oldest first (JSON list of file names,
    /// `backup-files`): rotation deletes only these, never a file someone else put in the directory.
    BackupFiles,
    /// When this device was restored from a backup, u64 ms big-endian (`restored-at`).
    RestoredAt,
    /// The sealed keyring of a document that replaced the vault's (joining, restoring), stored with it in one
    /// batch until the keyring file holds it too (`keyring-next`).
    KeyringNext,
    /// Present on a device restored from a backup: its anchors count only through entries they signed
    /// themselves (`signed-anchors`).
    SignedAnchors,
}

const ADDRS_PREFIX: &str = "addrs/";
const LOST_PREFIX: &str = "lost/";

impl Meta<'_> {
    /// The entry's name in the store.
    pub fn name(&self) -> String {
        match self {
            Meta::Pin => "pin".to_owned(),
            Meta::SyncState(peer) => format!("sync/{peer}"),
            Meta::LastSync(peer) => format!("synced/{peer}"),
            Meta::Addrs(peer) => format!("{ADDRS_PREFIX}{peer}"),
            Meta::LegacyKeyring => "keyring".to_owned(),
            Meta::Anchors => "anchors".to_owned(),
            Meta::TrashSeen(id) => format!("trash-seen/{id}"),
            Meta::EpochSeen => "epoch-seen".to_owned(),
            Meta::PinKeySeen(device) => format!("pin-key-seen/{device}"),
            Meta::Lost(id) => format!("{LOST_PREFIX}{id}"),
            Meta::BackupHeads => "backup-heads".to_owned(),
            Meta::LastBackup => "last-backup".to_owned(),
            Meta::BackupFiles => "backup-files".to_owned(),
            Meta::RestoredAt => "restored-at".to_owned(),
            Meta::KeyringNext => "keyring-next".to_owned(),
            Meta::SignedAnchors => "signed-anchors".to_owned(),
        }
    }
}

/// Whether a write is on disk when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed before returning: for what acknowledges something to someone.
    Flushed,
    /// On disk with the next flush: for state that is rebuilt if a crash loses it.
    Lazy,
}

/// The sealed keyring's file name inside the store's directory.
pub const KEYRING_FILE: &str = "keyring.sealed";

/// Reads the sealed keyring of the store in `dir` without opening the store; `None` if there is none.
pub fn read_keyring(dir: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(dir.join(KEYRING_FILE)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(e)),
    }
}

/// Replaces the sealed keyring of the store in `dir` atomically and durably.
pub fn write_keyring(dir: &Path, blob: &[u8]) -> Result<(), Error> {
    write_sealed(dir, KEYRING_FILE, blob)
}

/// The sealed device identity's file name inside the store's directory, beside the keyring.
pub const DEVICE_FILE: &str = "device.sealed";

/// Reads the sealed device identity of the store in `dir`; `None` if there is none yet.
pub fn read_device(dir: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(dir.join(DEVICE_FILE)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(e)),
    }
}

/// The path of the sealed device identity in `dir`.
pub fn device_file(dir: &Path) -> std::path::PathBuf {
    dir.join(DEVICE_FILE)
}

/// Replaces the sealed device identity of the store in `dir` atomically and durably.
pub fn write_device(dir: &Path, blob: &[u8]) -> Result<(), Error> {
    write_sealed(dir, DEVICE_FILE, blob)
}

fn write_sealed(dir: &Path, name: &str, blob: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(blob)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// An open store.
pub struct Store {
    db: sled::Db,
    next_seq: u64,
    chunks: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("next_seq", &self.next_seq)
            .field("chunks", &self.chunks)
            .finish()
    }
}

/// How long [`Store::open`] waits for a lock that a just-closed store of this process may still hold.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Store {
    /// Opens (creating if needed) the store in directory `dir`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        // sled releases its file lock only when its background flusher has finished with a dropped Db, a moment
        // after the drop; so a store closed by this same process (pairing steps, a restart in-process) can still
        // look locked. Wait for that briefly; another live process keeps it locked and still fails, a bit later.
        let mut waited = std::time::Duration::ZERO;
        let step = std::time::Duration::from_millis(20);
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .mode(sled::Mode::LowSpace)
                .open()
            {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock && waited < LOCK_WAIT =>
                {
                    std::thread::sleep(step);
                    waited += step;
                }
                other => break other?,
            }
        };
        let mut next_seq = 0;
        let mut chunks = 0;
        if let Some((k, _)) = db.scan_prefix([DOC]).next_back().transpose()? {
            next_seq = parse_seq(&k)? + 1;
            chunks = db.scan_prefix([DOC]).count() as u64;
        }
        Ok(Store {
            db,
            next_seq,
            chunks,
        })
    }

    /// The stored document: snapshot and chunks concatenated in order, `None` for a new store.
    pub fn document(&self) -> Result<Option<Vec<u8>>, Error> {
        let mut out = Vec::new();
        let mut any = false;
        for item in self.db.scan_prefix([DOC]) {
            let (_, v) = item?;
            out.extend_from_slice(&v);
            any = true;
        }
        Ok(any.then_some(out))
    }

    /// Number of document entries (snapshot plus chunks) stored.
    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }

    /// Appends an incremental document chunk and flushes it to disk.
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.db.insert(doc_key(self.next_seq), chunk)?;
        self.db.flush()?;
        self.next_seq += 1;
        self.chunks += 1;
        Ok(())
    }

    /// Replaces the whole document with `full` (a compacted save), plus optional metadata, atomically, then flushes.
    pub fn replace(&mut self, full: &[u8], meta: &[(Meta<'_>, &[u8])]) -> Result<(), Error> {
        self.replace_named(full, meta.iter().map(|(m, v)| (m.name(), *v)))
    }

    /// Like [`Store::replace`], with metadata named as on disk (a re-seal copies every entry as it is).
    pub fn replace_copying(
        &mut self,
        full: &[u8],
        meta: &[(String, Vec<u8>)],
    ) -> Result<(), Error> {
        self.replace_named(full, meta.iter().map(|(n, v)| (n.clone(), v.as_slice())))
    }

    fn replace_named<'v>(
        &mut self,
        full: &[u8],
        meta: impl Iterator<Item = (String, &'v [u8])>,
    ) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for item in self.db.scan_prefix([DOC]) {
            let (k, _) = item?;
            batch.remove(k);
        }
        batch.insert(&doc_key(0), full);
        for (name, value) in meta {
            batch.insert(meta_key(&name), value);
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        self.next_seq = 1;
        self.chunks = 1;
        Ok(())
    }

    /// Reads a metadata entry.
    pub fn get(&self, entry: Meta<'_>) -> Result<Option<Vec<u8>>, Error> {
        self.raw_meta(&entry.name())
    }

    /// Writes a metadata entry, flushed or not as `durability` says.
    pub fn put(&self, entry: Meta<'_>, value: &[u8], durability: Durability) -> Result<(), Error> {
        self.db.insert(meta_key(&entry.name()), value)?;
        if durability == Durability::Flushed {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Deletes a metadata entry (on disk with the next flush).
    pub fn remove(&self, entry: Meta<'_>) -> Result<(), Error> {
        self.db.remove(meta_key(&entry.name()))?;
        Ok(())
    }

    /// Every [`Meta::Addrs`] entry whose name is a peer id, with its value.
    pub fn addrs(&self) -> Result<Vec<(PeerId, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(meta_key(ADDRS_PREFIX)) {
            let (k, v) = item?;
            let peer = std::str::from_utf8(&k[2 + ADDRS_PREFIX.len()..])
                .ok()
                .and_then(|p| p.parse::<PeerId>().ok());
            if let Some(peer) = peer {
                out.push((peer, v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Every [`Meta::Lost`] entry whose name is a record id, with its value.
    pub fn losses(&self) -> Result<Vec<(passmesh_crdt::RecordId, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(meta_key(LOST_PREFIX)) {
            let (k, v) = item?;
            let id = std::str::from_utf8(&k[2 + LOST_PREFIX.len()..])
                .ok()
                .and_then(|p| p.parse().ok());
            if let Some(id) = id {
                out.push((id, v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Reads a metadata value by its name on disk.
    fn raw_meta(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get(meta_key(name))?.map(|v| v.to_vec()))
    }

    /// Every metadata entry, by name on disk (a re-seal copies them as they are).
    pub fn meta_entries(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(b"m:") {
            let (k, v) = item?;
            let name = std::str::from_utf8(&k[2..])
                .map_err(|_| Error::Damaged("a metadata name is not UTF-8".into()))?;
            out.push((name.to_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Flushes everything written so far.
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush()?;
        Ok(())
    }
}

fn parse_seq(key: &[u8]) -> Result<u64, Error> {
    key.get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .filter(|_| key.len() == 9)
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Damaged(format!("bad document key of {} bytes", key.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's background flusher holds the lock for a moment after the last `Db` handle drops.
    fn reopen(dir: &Path) -> Store {
        for _ in 0..100 {
            if let Ok(s) = Store::open(dir) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Store::open(dir).unwrap()
    }

    #[test]
    fn chunks_concatenate_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            assert_eq!(s.document().unwrap(), None);
            s.replace(b"snap-", &[(Meta::Pin, b"v")]).unwrap();
            for i in 0..300u32 {
                s.append(format!("{i},").as_bytes()).unwrap();
            }
        }
        let mut s = reopen(dir.path());
        let doc = String::from_utf8(s.document().unwrap().unwrap()).unwrap();
        let want: String = std::iter::once("snap-".to_owned())
            .chain((0..300).map(|i| format!("{i},")))
            .collect();
        assert_eq!(doc, want);
        assert_eq!(s.chunk_count(), 301);
        assert_eq!(s.get(Meta::Pin).unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            s.meta_entries().unwrap(),
            vec![("pin".to_owned(), b"v".to_vec())]
        );
        s.append(b"more").unwrap();
        s.replace(b"compacted", &[]).unwrap();
        assert_eq!(s.document().unwrap().as_deref(), Some(&b"compacted"[..]));
        assert_eq!(s.chunk_count(), 1);
        s.append(b"+1").unwrap();
        drop(s);
        let s = reopen(dir.path());
        assert_eq!(s.document().unwrap().as_deref(), Some(&b"compacted+1"[..]));
    }

    #[test]
    fn the_keyring_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_keyring(dir.path()).unwrap(), None);
        write_keyring(dir.path(), b"first").unwrap();
        write_keyring(dir.path(), b"second").unwrap();
        assert_eq!(
            read_keyring(dir.path()).unwrap().as_deref(),
            Some(&b"second"[..])
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEYRING_FILE)]);
    }

    #[test]
    fn second_open_of_the_same_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        assert!(Store::open(dir.path()).is_err());
    }
}
