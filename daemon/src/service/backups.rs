//! Automatic backups of one vault (`[backup] dir`, `keep`): one at start if the document changed since the last,
//! then after changes, at most once per [`MIN_INTERVAL`]; each written atomically, the oldest beyond `keep` of
//! those this device wrote deleted (never a file someone else put there). Nothing is written until the vault has a recovery key (the file opens with the phrase
//! only).

use std::path::PathBuf;
use std::time::Duration;

use passmesh_crdt::DeviceId;
use tokio::sync::watch;

use crate::backup;
use crate::vault;

/// The shortest time between two automatic backups.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// Where and how many.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The directory (system mode: the user's own under `[backup] dir`).
    pub(crate) dir: PathBuf,
    /// Backups of this device kept there.
    pub(crate) keep: usize,
    /// This device (names its files).
    pub(crate) device: DeviceId,
    /// System mode: the directory is the service's own (`<dir>/<uid>`): written only if it is a real directory
    /// owned by the service, so that no local user can plant a link that sends another's backups elsewhere.
    pub(crate) owned: bool,
}

/// Writes the backups of the vault behind `vault` until it stops (its change counter closes). Holds the vault
/// only while it takes a snapshot, so it never keeps a stopped daemon waiting.
pub(crate) async fn run(vault: vault::WeakHandle, mut changes: watch::Receiver<u64>, plan: Plan) {
    let mut last: Option<tokio::time::Instant> = None;
    let mut waiting_for_recovery = false;
    loop {
        if let Some(at) = last {
            tokio::time::sleep_until(at + MIN_INTERVAL).await;
        }
        changes.borrow_and_update();
        let Some(handle) = vault.upgrade() else {
            return;
        };
        let snapshot = handle.snapshot(true).await;
        match snapshot {
            Ok(Some(snapshot)) => {
                waiting_for_recovery = false;
                let heads = snapshot.heads.clone();
                let at = snapshot.payload.made_at_ms;
                let plan = plan.clone();
                let dir = plan.dir.clone();
                let keep = plan.keep;
                let written = tokio::task::spawn_blocking(move || write(&snapshot, &plan)).await;
                match written {
                    Ok(Ok(name)) => {
                        tracing::info!(file = %name, "wrote an automatic backup");
                        let old = handle
                            .backup_written(heads, at, name, Some(keep))
                            .await
                            .unwrap_or_default();
                        // Only files this device wrote; one already gone is fine.
                        for name in old {
                            if let Err(e) = std::fs::remove_file(dir.join(&name))
                                && e.kind() != std::io::ErrorKind::NotFound
                            {
                                tracing::warn!(error = %e, file = %name, "cannot delete an old backup");
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "automatic backup failed"),
                    Err(e) => tracing::error!(error = %e, "automatic backup failed"),
                }
                last = Some(tokio::time::Instant::now());
            }
            Ok(None) => {}
            Err(vault::Error::NoRecovery) => {
                if !waiting_for_recovery {
                    tracing::info!(
                        "automatic backups wait for a recovery key: run `passmesh recovery setup`"
                    );
                    waiting_for_recovery = true;
                }
            }
            Err(vault::Error::Stopped) => return,
            Err(e) => tracing::warn!(error = %e, "automatic backup failed"),
        }
        drop(handle);
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn write(snapshot: &vault::Snapshot, plan: &Plan) -> Result<String, backup::Error> {
    if plan.owned {
        crate::layout::private_dir(&plan.dir)
            .and_then(|()| check_own_dir(&plan.dir))
            .map_err(|source| backup::Error::Write {
                path: plan.dir.clone(),
                source,
            })?;
    }
    let file = backup::seal(&snapshot.payload, &snapshot.recipients)?;
    let name = backup::file_name(snapshot.payload.made_at_ms, &plan.device);
    backup::write_atomic(&plan.dir, &name, &file)?;
    Ok(name)
}

/// `dir` is a directory (not a link to one) owned by this process's user.
fn check_own_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(std::io::Error::other(
            "not a directory of the service's own (a link, or another user's): not written",
        ));
    }
    Ok(())
}
