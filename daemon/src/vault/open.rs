//! Opening a vault directory: the keystore unseals (or seals, for a new vault) the keyring before sled opens
//! the store, the document is loaded, this device's identity unsealed, and the actor started.

use std::collections::HashMap;
use std::path::Path;

use passmesh_crdt::{Epoch, Keyring, Vault, VaultId, VaultKey};
use passmesh_transport::Identity;
use tokio::sync::mpsc;

use super::actor::{Actor, Peers};
use super::replication::Replication;
use super::{Command, Error, Handle, INBOX, KeystoreReport, OUTBOX, Rules, Running};

/// How often a vault looks for passkeys kept in the trash longer than `[vault] trash_days`.
const TICK: std::time::Duration = std::time::Duration::from_secs(3600);
use crate::custody::keystore::{self, tpm};
use crate::custody::{self, Custody};
use crate::ids;
use crate::layout::{self, DB};
use crate::pin::PinState;
use crate::store::{self, Meta, Store};

/// Opens (or creates on first use) the vault stored in `dir` and starts its actor. The keystore (`custody`) is only
/// used here: it unseals or seals the keyring and is closed before this returns.
pub fn open(
    dir: &Path,
    custody: &Custody,
    rules: Rules,
) -> Result<(Running, KeystoreReport), Error> {
    open_seeded(dir, custody, rules, None, None)
}

/// Like [`open`], but a vault created here (the directory has none) is a replica of the vault `seed` names
/// (its id and encoded keyring) instead of a new one: how a device joins a vault. With `identity`, the vault
/// is this device's under that identity (system mode: the machine's, shared by every user's vault) instead of
/// one of its own sealed in `dir`.
pub fn open_seeded(
    dir: &Path,
    custody: &Custody,
    rules: Rules,
    seed: Option<(VaultId, &[u8])>,
    identity: Option<Identity>,
) -> Result<(Running, KeystoreReport), Error> {
    layout::private_dir(dir)
        .map_err(|e| store::Error::Damaged(format!("cannot create {}: {e}", dir.display())))?;
    custody::migrate::remove_leftovers(dir);
    let tpm = custody.tpm();
    let db = dir.join(DB);
    // Everything that can refuse (no TPM, another backend, changed PCRs) happens before sled opens the store,
    // because opening it writes to its files: a refused start leaves the disk as it was.
    let sealed = store::read_keyring(&db)?;
    let mut opened = match (&sealed, db.exists()) {
        (Some(blob), _) => Some(custody.open_for(Some(blob))?),
        (None, false) => Some(custody.open_for(None)?),
        // A store of the older layout, or one whose creation was interrupted: decided once it is open.
        (None, true) => None,
    };
    let unsealed = match (&sealed, opened.as_mut()) {
        (Some(blob), Some(o)) => Some(o.keystore.unseal(blob)?),
        _ => None,
    };
    let mut store = Store::open(&db)?;
    let document = store.document()?;
    let (sealed, unsealed) = match (sealed, unsealed) {
        (Some(s), u) => (Some(s), u),
        (None, _) => match store.get(Meta::LegacyKeyring)? {
            Some(legacy) => {
                let mut o = custody.open_for(Some(&legacy))?;
                let u = o.keystore.unseal(&legacy)?;
                opened = Some(o);
                (Some(legacy), Some(u))
            }
            None => (None, None),
        },
    };
    let mut opened = match opened {
        Some(o) => o,
        None => custody.open_for(None)?,
    };
    let identity = match identity {
        Some(given) => given,
        None => custody::sealed_identity(&db, &mut opened.keystore).map_err(|e| match e {
            custody::Error::Keystore(k) => Error::Keystore(k),
            custody::Error::Store(s) => Error::Store(s),
            _ => Error::Keyring,
        })?,
    };
    let ks = &mut opened.keystore;
    let (vault, blob_pcrs) = match (unsealed, document) {
        (Some(secret), Some(doc)) => {
            let keyring = Keyring::decode(&secret).map_err(|_| Error::Keyring)?;
            let loaded = Vault::load_as(&doc, keyring, Some(ids::local_device(&identity)));
            // A replacement of the vault (joining, restoring) stores the new document with its sealed keyring
            // in one batch, then writes the keyring file: interrupted in between, the document is the new one
            // and the keyring for it is in the store.
            let next = store.get(Meta::KeyringNext)?;
            let vault = match (loaded, next) {
                (Ok(vault), next) => {
                    if next.is_some() {
                        store.remove(Meta::KeyringNext)?;
                    }
                    vault
                }
                (Err(e), None) => return Err(e.into()),
                (Err(_), Some(blob)) => {
                    let secret = ks.unseal(&blob)?;
                    let keyring = Keyring::decode(&secret).map_err(|_| Error::Keyring)?;
                    let vault = Vault::load_as(&doc, keyring, Some(ids::local_device(&identity)))?;
                    store::write_keyring(&db, &blob)?;
                    store.remove(Meta::KeyringNext)?;
                    tracing::warn!(
                        "finished replacing the vault (joining or restoring was interrupted)"
                    );
                    vault
                }
            };
            for (id, problem) in vault.problems() {
                tracing::warn!(record = %id, %problem, "a vault record cannot be read and is left out");
            }
            (vault, sealed.as_deref().and_then(tpm::bound_pcrs))
        }
        // No document yet: a new vault, or a creation interrupted after the keyring was written (nothing was
        // ever encrypted under that keyring, so a new one replaces it).
        (_, None) => {
            let (id, keyring) = match seed {
                Some((id, ring)) => (id, Keyring::decode(ring).map_err(|_| Error::Keyring)?),
                None => (
                    VaultId::random(),
                    Keyring::new(Epoch(0), VaultKey::generate()),
                ),
            };
            let sealed = ks.seal(&keyring.encode())?;
            let mut vault = Vault::create(id, keyring)?;
            vault.set_local(ids::local_device(&identity));
            let full = vault.save();
            let pin_state = serde_json::to_vec(&PinState::default()).map_err(|_| Error::Keyring)?;
            store::write_keyring(&db, &sealed)?;
            store.replace(&full, &[(Meta::Pin, &pin_state)])?;
            tracing::info!(vault = %vault.id(), keystore = ks.name(), "created a new vault");
            (vault, tpm::bound_pcrs(&sealed))
        }
        (None, Some(_)) => {
            return Err(store::Error::Damaged("document without a keyring".into()).into());
        }
    };
    let mut warning = opened.warning.take();
    if let Some(bound) = &blob_pcrs
        && *bound != tpm.pcrs
        && warning.is_none()
    {
        warning = Some(format!(
            "the seal is bound to PCR(s) [{}] but the config asks for [{}]: run `passmesh keystore reseal` \
             (passmeshd stopped) to apply the config",
            keystore::list_pcrs(bound),
            keystore::list_pcrs(&tpm.pcrs)
        ));
    }
    let report = KeystoreReport {
        backend: opened.keystore.backend(),
        warning,
        tpm: opened.keystore.tpm_info().cloned(),
        pcrs: blob_pcrs,
    };
    // Closes the TPM connection and flushes its handles: nothing after startup touches the TPM.
    drop(opened);
    let pin = match store.get(Meta::Pin)? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| store::Error::Damaged(format!("PIN state: {e}")))?,
        None => PinState::default(),
    };
    let (out, outbound) = mpsc::channel(OUTBOX);
    let me = identity.peer_id();
    let replication = Replication::start(me, &vault, &Peers(&store));
    let (changes, changes_rx) = tokio::sync::watch::channel(0);
    let mut actor = Actor {
        changes,
        vault,
        keys: HashMap::new(),
        store,
        pin,
        policy: rules.pin,
        trash_for: rules.trash,
        old_keys: super::actor::OldKeysState::default(),
        dirty: false,
        full_save_needed: false,
        maintenance_due: true,
        me,
        out,
        replication,
        x25519: passmesh_transport::pairing::PairKey::derive(&identity).public(),
        identity: identity.clone(),
        db: db.clone(),
        custody: custody.clone(),
    };
    actor.start_up()?;
    let paired = actor.replication.paired(&actor.vault);
    let addrs = actor.stored_addrs()?;
    let vault_id = actor.vault.id();
    let (tx, rx) = mpsc::channel(INBOX);
    let name = format!(
        "vault-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    );
    let ticks = tx.downgrade();
    // The trash is looked at once at start, then every TICK.
    let _ = tx.try_send(Command::Tick);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || actor.run(rx))
        .map_err(Error::Thread)?;
    // Holds no sender between ticks, so it never keeps the actor alive; it ends at the first tick after the
    // actor stopped.
    let ticker = std::thread::Builder::new()
        .name("vault-tick".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                match ticks.upgrade() {
                    Some(tx) => {
                        // A full inbox means a busy actor; the next tick will do.
                        let _ = tx.try_send(Command::Tick);
                    }
                    None => return,
                }
            }
        });
    if let Err(e) = ticker {
        tracing::warn!(error = %e, "cannot start the trash timer: expired passkeys are purged at start only");
    }
    Ok((
        Running {
            handle: Handle { tx },
            thread,
            identity,
            vault_id,
            outbound,
            paired,
            addrs,
            changes: changes_rx,
        },
        report,
    ))
}

#[cfg(test)]
mod tests {
    use passmesh_crdt::NewPasskey;
    use zeroize::Zeroizing;

    use crate::layout::DB;
    use crate::store::{self, Meta, Store};
    use crate::vault::{self, Rules};

    fn passkey(n: u8) -> NewPasskey {
        NewPasskey {
            credential_id: vec![n; 16],
            rp_id: "example.com".into(),
            user_handle: vec![n],
            user_name: format!("user{n}"),
            user_display_name: String::new(),
            private_key: Zeroizing::new(vec![0x80 | n; 32]),
            created_at_ms: 1,
        }
    }

    /// Opens `dir`, inserts `n`'s passkey (if any), stops; returns the passkeys' credential ids.
    fn cycle(dir: &std::path::Path, n: Option<u8>) -> Vec<Vec<u8>> {
        let (running, _) =
            vault::open(dir, &vault::trash::tests::software(), Rules::default()).unwrap();
        let ids = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                if let Some(n) = n {
                    running.handle.insert(passkey(n)).await.unwrap();
                }
                let (list, _) = running.handle.list(None, 0, 100).await.unwrap();
                list.into_iter().map(|p| p.credential_id.0).collect()
            });
        drop(running.handle);
        running.thread.join().unwrap();
        ids
    }

    #[test]
    fn a_replacement_interrupted_before_the_keyring_file_is_finished_at_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (here, other) = (tmp.path().join("here"), tmp.path().join("other"));
        cycle(&here, Some(1));
        cycle(&other, Some(2));
        // What joining or restoring writes in one batch: the new document with its sealed keyring. The crash
        // comes before the keyring file is replaced.
        let next = store::read_keyring(&other.join(DB)).unwrap().unwrap();
        let doc = Store::open(&other.join(DB))
            .unwrap()
            .document()
            .unwrap()
            .unwrap();
        let old = store::read_keyring(&here.join(DB)).unwrap().unwrap();
        assert_ne!(old, next);
        {
            let mut s = Store::open(&here.join(DB)).unwrap();
            s.replace(&doc, &[(Meta::KeyringNext, &next)]).unwrap();
        }
        // The store holds the new document: it opens with the new keyring, which becomes the file.
        assert_eq!(cycle(&here, None), vec![vec![2; 16]]);
        assert_eq!(store::read_keyring(&here.join(DB)).unwrap().unwrap(), next);
        let s = Store::open(&here.join(DB)).unwrap();
        assert_eq!(s.get(Meta::KeyringNext).unwrap(), None);
        drop(s);
        // Interrupted after the keyring file: the leftover entry is dropped, nothing else changes.
        {
            let s = Store::open(&here.join(DB)).unwrap();
            s.put(Meta::KeyringNext, &old, store::Durability::Flushed)
                .unwrap();
        }
        assert_eq!(cycle(&here, None), vec![vec![2; 16]]);
        assert_eq!(store::read_keyring(&here.join(DB)).unwrap().unwrap(), next);
    }
}
