//! Moving a vault to another keystore (`passmesh keystore migrate`) and re-sealing it (`passmesh keystore
//! reseal`), with the daemon stopped.
//!
//! sled is log-structured: overwriting the sealed keyring would leave the old value (with the software
//! keystore, the vault key itself) in an old segment. So nothing is overwritten: the document, the other
//! metadata and the new sealed keyring go into a fresh store directory next to the old one, which is flushed, checked
//! (the new seal must unseal to the same keyring), swapped in with one atomic `renameat2(RENAME_EXCHANGE)`,
//! and the old database is overwritten with zeros and deleted. A crash before the swap leaves the old
//! database in place; after it, the new one. Either way the leftover directory is removed on the next start.
//! (Zero-filling cannot reach copies that a copy-on-write file system or an SSD's wear levelling keep.)

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::keystore::{self, Backend, Keystore, TpmOptions};
use crate::layout::DB;
use crate::store::{self, Meta, Store};

/// Where the new database is written before the swap.
const NEXT: &str = "db.next";

/// Migration failures.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no vault in the directory.
    #[error("no vault at {0}")]
    NoVault(PathBuf),
    /// The store is open in another process.
    #[error(
        "the vault at {0} is in use (is passmeshd running?): stop passmeshd first, then run this again"
    )]
    InUse(PathBuf),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The keystore failed.
    #[error(transparent)]
    Keystore(#[from] keystore::Error),
    /// The new seal did not unseal to the same secret; nothing was changed.
    #[error("the new seal could not be verified; nothing was changed")]
    Verify,
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The target of a migration or reseal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend to seal with.
    pub backend: Backend,
    /// With the TPM: the sha256 PCRs that bind the new seal (empty: none).
    pub pcrs: Vec<u8>,
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The backend that had sealed the vault.
    pub from: Backend,
    /// The PCRs that had bound it (empty: none).
    pub from_pcrs: Vec<u8>,
    /// The new seal.
    pub to: Target,
}

/// Re-seals the vault in `dir` (a user's vault directory) for `target`, writing a fresh database and
/// swapping it in. `tpm.tcti` reaches the TPM for unsealing and sealing as needed.
pub fn reseal(dir: &Path, tpm: &TpmOptions, target: &Target) -> Result<Outcome, Error> {
    let db = dir.join(DB);
    if !db.exists() {
        return Err(Error::NoVault(dir.to_owned()));
    }
    remove_leftovers(dir);
    let old = Store::open(&db).map_err(|e| match e {
        // sled reports a held lock as an io::Error whose kind and text vary by version.
        store::Error::Sled(sled::Error::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            Error::InUse(dir.to_owned())
        }
        other => Error::Store(other),
    })?;
    let sealed = match store::read_keyring(&db)? {
        Some(s) => s,
        None => old
            .get(Meta::LegacyKeyring)?
            .ok_or_else(|| Error::NoVault(dir.to_owned()))?,
    };
    let document = old
        .document()?
        .ok_or_else(|| Error::NoVault(dir.to_owned()))?;
    let meta: Vec<(String, Vec<u8>)> = old
        .meta_entries()?
        .into_iter()
        .filter(|(name, _)| *name != Meta::LegacyKeyring.name())
        .collect();
    let from = Backend::of(&sealed).ok_or(keystore::Error::Damaged)?;
    let from_pcrs = keystore::tpm::bound_pcrs(&sealed).unwrap_or_default();

    let mut keys = Resealer::open(from, target, tpm)?;
    let secret = keys.unseal(&sealed)?;
    // The device identity is sealed by the same keystore and moves with the keyring.
    let device = match store::read_device(&db)? {
        Some(blob) => Some(keys.unseal(&blob)?),
        None => None,
    };
    // The secret must be a keyring this daemon can read before it is sealed anew.
    passmesh_crdt::Keyring::decode(&secret).map_err(|_| keystore::Error::Damaged)?;
    let new_sealed = keys.seal(&secret)?;
    let new_device = match &device {
        Some(d) => Some(keys.seal(d)?),
        None => None,
    };
    drop(keys);

    let next = dir.join(NEXT);
    {
        let mut fresh = Store::open(&next)?;
        fresh.replace_copying(&document, &meta)?;
        fresh.flush()?;
        store::write_keyring(&next, &new_sealed)?;
        if let Some(blob) = &new_device {
            store::write_device(&next, blob)?;
        }
    }
    drop(old);
    // sled finishes background work on other threads after the handle is dropped; no thread of either store
    // may still write by path when the directories trade places.
    wait_released(&db)?;
    wait_released(&next)?;
    sync_tree(&next)?;
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        &db,
        rustix::fs::CWD,
        &next,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| Error::Io {
        what: "cannot swap in the new database at",
        path: db.clone(),
        source: e.into(),
    })?;
    sync_dir(dir)?;
    // `next` now holds the old database.
    scrub_and_remove(&next).map_err(|source| Error::Io {
        what: "the vault was re-sealed, but the old database could not be removed from",
        path: next.clone(),
        source,
    })?;
    sync_dir(dir)?;
    Ok(Outcome {
        from,
        from_pcrs,
        to: target.clone(),
    })
}

/// The keystores one re-seal needs: the software keystore, and one TPM connection for both sides when either is
/// the TPM (a TPM without a resource manager serves one client at a time).
struct Resealer {
    from: Backend,
    target: Backend,
    software: Keystore,
    tpm: Option<Keystore>,
}

impl Resealer {
    fn open(from: Backend, target: &Target, tpm: &TpmOptions) -> Result<Resealer, Error> {
        let tpm = if from == Backend::Tpm || target.backend == Backend::Tpm {
            let mut ks = keystore::open(keystore::Choice::Tpm, tpm)?.keystore;
            if target.backend == Backend::Tpm {
                // Unsealing checks the PCRs recorded in each blob; these bind only what is sealed anew.
                ks.set_pcrs(target.pcrs.clone());
            }
            Some(ks)
        } else {
            None
        };
        Ok(Resealer {
            from,
            target: target.backend,
            software: Keystore::Software,
            tpm,
        })
    }

    fn keystore(&mut self, backend: Backend) -> Result<&mut Keystore, Error> {
        match backend {
            Backend::Software => Ok(&mut self.software),
            Backend::Tpm => self.tpm.as_mut().ok_or(Error::Verify),
        }
    }

    /// Unseals a blob of the old keystore.
    fn unseal(&mut self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        Ok(self.keystore(self.from)?.unseal(blob)?)
    }

    /// Seals `secret` for the target and checks that the new blob unseals to it.
    fn seal(&mut self, secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let ks = self.keystore(self.target)?;
        let blob = ks.seal(secret)?;
        if ks.unseal(&blob)?.as_slice() != secret {
            return Err(Error::Verify);
        }
        Ok(blob)
    }
}

/// The lock a system-mode daemon holds on its machine identity for as long as it runs (`flock` on
/// `machine/lock`); `keystore` commands take it too, so they never re-seal under a running daemon.
#[derive(Debug)]
pub struct MachineLock(#[allow(dead_code)] std::fs::File);

/// Takes the machine lock in `machine_dir` (created with the directory if missing); `InUse` if a running
/// daemon (or another `keystore` command) holds it.
pub fn lock_machine(machine_dir: &Path) -> Result<MachineLock, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = machine_dir.join("lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("cannot open", &path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| Error::InUse(machine_dir.to_owned()))?;
    Ok(MachineLock(file))
}

/// Re-seals system mode's machine identity (`machine/device.sealed`) for `target`; the caller holds the
/// machine `lock` (of the same directory). The new seal is verified, written beside the old one and renamed over
/// it; then the old file's blocks are overwritten with zeros through a descriptor opened before the rename. (A
/// crash between the rename and the overwrite leaves the old blocks in a freed inode, like the copies
/// copy-on-write file systems and SSDs keep: use full-disk encryption as well.)
pub fn reseal_machine(
    _lock: &MachineLock,
    machine_dir: &Path,
    tpm: &TpmOptions,
    target: &Target,
) -> Result<Outcome, Error> {
    let sealed =
        store::read_device(machine_dir)?.ok_or_else(|| Error::NoVault(machine_dir.to_owned()))?;
    let from = Backend::of(&sealed).ok_or(keystore::Error::Damaged)?;
    let from_pcrs = keystore::tpm::bound_pcrs(&sealed).unwrap_or_default();
    let mut keys = Resealer::open(from, target, tpm)?;
    let secret = keys.unseal(&sealed)?;
    let new_sealed = keys.seal(&secret)?;
    drop(keys);
    let path = store::device_file(machine_dir);
    let mut old = std::fs::File::options()
        .write(true)
        .open(&path)
        .map_err(io("cannot open", &path))?;
    store::write_device(machine_dir, &new_sealed)?;
    sync_dir(machine_dir)?;
    std::io::Write::write_all(&mut old, &vec![0u8; sealed.len()])
        .and_then(|()| old.sync_all())
        .map_err(io(
            "the identity was re-sealed and the new seal is in place, but the old copy (now unlinked, not reachable \
             by running this again) could not be overwritten at",
            &path,
        ))?;
    Ok(Outcome {
        from,
        from_pcrs,
        to: target.clone(),
    })
}

/// Removes what an interrupted migration left next to the database (before or after the swap, it is not the
/// database in use).
pub fn remove_leftovers(dir: &Path) {
    let next = dir.join(NEXT);
    if next.exists() {
        match scrub_and_remove(&next) {
            Ok(()) => {
                tracing::info!(path = %next.display(), "removed an interrupted migration's leftover")
            }
            Err(e) => {
                tracing::warn!(path = %next.display(), error = %e, "cannot remove an interrupted migration's leftover");
            }
        }
    }
}

/// Waits until no process or thread holds sled's lock on the store in `dir` (the `db` file, locked with
/// `flock` for as long as the store's page cache lives).
fn wait_released(dir: &Path) -> Result<(), Error> {
    let file = dir.join("db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let f = std::fs::File::open(&file).map_err(io("cannot open", &file))?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            // Closing the file releases the probe's own lock.
            Ok(()) => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => return Err(Error::InUse(dir.to_owned())),
        }
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("cannot sync", dir))
}

fn sync_tree(dir: &Path) -> Result<(), Error> {
    for entry in walk(dir).map_err(io("cannot list", dir))? {
        if entry.is_file() {
            std::fs::File::open(&entry)
                .and_then(|f| f.sync_all())
                .map_err(io("cannot sync", &entry))?;
        }
    }
    sync_dir(dir)
}

/// Every path under `dir` (files and directories, depth first), not following symlinks.
fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

/// Overwrites every file under `dir` with zeros (synced), then deletes the tree.
fn scrub_and_remove(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    for path in walk(dir)? {
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_file() {
            continue;
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = meta.len();
        while left > 0 {
            let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
    }
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::Custody;
    use crate::store::Durability;
    use crate::vault;

    fn software(tpm: &TpmOptions) -> Custody {
        Custody::new(keystore::Choice::Software, tpm.clone())
    }

    fn files_contain(dir: &Path, needle: &[u8]) -> bool {
        walk(dir).unwrap().iter().any(|p| {
            p.is_file()
                && std::fs::read(p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
        })
    }

    /// The 32-byte vault key of epoch 0 from a software blob: tag, version, current epoch, epoch, key.
    fn software_key(dir: &Path) -> Vec<u8> {
        let blob = store::read_keyring(&dir.join(DB)).unwrap().unwrap();
        blob[b"passmesh-sw-v1\0".len() + 1 + 4 + 4..][..32].to_vec()
    }

    fn wait_unlocked(dir: &Path) {
        for _ in 0..200 {
            if Store::open(&dir.join(DB)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn software_reseal_rewrites_the_database_and_keeps_the_vault() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let tpm = TpmOptions {
            tcti: "device:/nonexistent".into(),
            pcrs: vec![],
        };
        let (running, report) =
            vault::open(&dir, &software(&tpm), vault::Rules::default()).unwrap();
        assert_eq!(report.backend, Backend::Software);
        let device = running.identity.peer_id();
        drop(running.handle);
        running.thread.join().unwrap();
        wait_unlocked(&dir);
        let key = software_key(&dir);
        assert!(files_contain(&dir, &key));
        wait_unlocked(&dir);
        let target = Target {
            backend: Backend::Software,
            pcrs: vec![],
        };
        let out = reseal(&dir, &tpm, &target).unwrap();
        assert_eq!(out.from, Backend::Software);
        assert!(!dir.join(NEXT).exists());
        wait_unlocked(&dir);
        assert_eq!(software_key(&dir), key);
        wait_unlocked(&dir);
        let (running, _) = vault::open(&dir, &software(&tpm), vault::Rules::default()).unwrap();
        // The device identity was re-sealed along with the keyring.
        assert_eq!(running.identity.peer_id(), device);
        drop(running.handle);
        running.thread.join().unwrap();
    }

    #[test]
    fn a_store_of_the_older_layout_opens_and_migrating_it_erases_the_key_from_sled() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let tpm = TpmOptions::default();
        let open = || vault::open(&dir, &software(&tpm), vault::Rules::default());
        let (running, _) = open().unwrap();
        drop(running.handle);
        running.thread.join().unwrap();
        wait_unlocked(&dir);
        // The older layout kept the sealed keyring inside sled, where overwritten values linger in the log.
        let key = software_key(&dir);
        let db = dir.join(DB);
        let blob = store::read_keyring(&db).unwrap().unwrap();
        {
            let s = Store::open(&db).unwrap();
            for value in [&blob[..], b"overwritten", &blob[..]] {
                s.put(Meta::LegacyKeyring, value, Durability::Flushed)
                    .unwrap();
            }
        }
        std::fs::remove_file(db.join(store::KEYRING_FILE)).unwrap();
        wait_unlocked(&dir);
        let (running, report) = open().unwrap();
        assert_eq!(report.backend, Backend::Software);
        drop(running.handle);
        running.thread.join().unwrap();
        wait_unlocked(&dir);
        assert!(files_contain(&dir, &key));

        let target = Target {
            backend: Backend::Software,
            pcrs: vec![],
        };
        reseal(&dir, &tpm, &target).unwrap();
        // Only the new keyring file holds the (software) key now; sled's files do not.
        let holders: Vec<PathBuf> = walk(&dir)
            .unwrap()
            .into_iter()
            .filter(|p| p.is_file() && files_contain_file(p, &key))
            .collect();
        assert_eq!(holders, vec![db.join(store::KEYRING_FILE)]);
        wait_unlocked(&dir);
        let (running, _) = open().unwrap();
        drop(running.handle);
        running.thread.join().unwrap();
    }

    fn files_contain_file(p: &Path, needle: &[u8]) -> bool {
        std::fs::read(p)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }

    #[test]
    fn an_interrupted_migration_leaves_nothing_after_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let tpm = TpmOptions::default();
        let open = || vault::open(&dir, &software(&tpm), vault::Rules::default());
        let (running, _) = open().unwrap();
        drop(running.handle);
        running.thread.join().unwrap();
        wait_unlocked(&dir);
        // As a crash right after the swap leaves it: the old store, with a clear key, under the next name.
        let key = software_key(&dir);
        std::fs::create_dir_all(dir.join(NEXT)).unwrap();
        std::fs::write(dir.join(NEXT).join("db"), &key).unwrap();
        let (running, _) = open().unwrap();
        assert!(!dir.join(NEXT).exists());
        drop(running.handle);
        running.thread.join().unwrap();
    }

    #[test]
    fn a_vault_in_use_is_refused_and_a_missing_one_named() {
        let tmp = tempfile::tempdir().unwrap();
        let tpm = TpmOptions::default();
        let target = Target {
            backend: Backend::Software,
            pcrs: vec![],
        };
        assert!(matches!(
            reseal(tmp.path(), &tpm, &target),
            Err(Error::NoVault(_))
        ));
        let dir = tmp.path().join("v");
        let (running, _) = vault::open(&dir, &software(&tpm), vault::Rules::default()).unwrap();
        let err = reseal(&dir, &tpm, &target).unwrap_err();
        assert!(err.to_string().contains("stop passmeshd"), "{err}");
        drop(running);
    }
}
