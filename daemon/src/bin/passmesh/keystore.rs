//! `passmesh keystore migrate|reseal`: its flags and subcommands, and the re-sealing it runs in this process.

use std::path::PathBuf;

use clap::Subcommand;

use crate::Failure;

/// Where `keystore` commands find the vault; the same flags and config file as passmeshd.
#[derive(Debug, clap::Args)]
pub(crate) struct VaultLocation {
    /// passmeshd's state directory [default: $XDG_DATA_HOME/passmesh]
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// passmeshd's TOML config file (for `[tpm]` and `state_dir`)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// TCTI of the TPM [default: from the config, else device:/dev/tpmrm0]
    #[arg(long, global = true, value_name = "TCTI")]
    tpm_tcti: Option<String>,
    /// The system service's state [default dir: /var/lib/passmesh]: every user's vault and the machine
    /// identity (run as its user, `sudo -u passmesh`, with passmesh.service stopped)
    #[arg(long, global = true)]
    system: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeystoreCommand {
    /// Move the vault's sealed keys to another keystore (run with passmeshd stopped)
    ///
    /// Writes a new database holding the vault, the newly sealed keys and the PIN state, swaps it in atomically
    /// and overwrites and deletes the old one, so that no copy of a software-sealed key stays in the state
    /// directory. Start passmeshd with the matching --keystore afterwards.
    Migrate {
        /// The keystore to move to: tpm or software
        #[arg(long, value_name = "KIND")]
        to: Backend,
    },
    /// Seal the vault's keys again with the TPM, bound to the configured PCRs or to --pcrs
    /// (run with passmeshd stopped)
    ///
    /// PCR binding means the TPM only unseals while those PCRs (sha256 bank) hold the values they had when
    /// sealing; after a firmware, bootloader or kernel change passmeshd refuses to start. For an intended
    /// change: run `passmesh keystore reseal --pcrs none` BEFORE it, make the change (reboot), then run
    /// `passmesh keystore reseal` to bind the PCRs of `[tpm] pcrs` in the config to their new values.
    /// If the change already happened and passmeshd refuses to start, boot the previous state (or restore
    /// the previous settings) first, then do the same.
    ///
    /// Like `migrate`, it writes a new store, checks that the new seal unseals, and swaps it in atomically.
    #[command(verbatim_doc_comment)]
    Reseal {
        /// PCRs to bind, e.g. 7,14, or `none`; default: `[tpm] pcrs` from the config
        #[arg(long, value_name = "LIST")]
        pcrs: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Backend {
    Tpm,
    Software,
}

/// Runs `keystore migrate|reseal` in this process: the daemon's library does the work on the state directory,
/// whose lock guarantees that no passmeshd has the vault open meanwhile.
pub(crate) fn keystore(
    location: &VaultLocation,
    command: &KeystoreCommand,
    json: bool,
) -> Result<(), Failure> {
    use passmesh_daemon::custody::keystore::{Backend as Kind, list_pcrs};
    use passmesh_daemon::custody::migrate::{Target, reseal};
    let config = passmesh_daemon::config::Config::resolve(&passmesh_daemon::config::Flags {
        config: location.config.clone(),
        state_dir: location.state_dir.clone(),
        tpm_tcti: location.tpm_tcti.clone(),
        system: location.system,
        ..Default::default()
    })
    .map_err(|e| Failure::Local(e.to_string()))?;
    let target = match command {
        KeystoreCommand::Migrate { to } => Target {
            backend: match to {
                Backend::Tpm => Kind::Tpm,
                Backend::Software => Kind::Software,
            },
            pcrs: match to {
                Backend::Tpm => config.tpm.pcrs.clone(),
                Backend::Software => Vec::new(),
            },
        },
        KeystoreCommand::Reseal { pcrs } => Target {
            backend: Kind::Tpm,
            pcrs: match pcrs.as_deref() {
                None => config.tpm.pcrs.clone(),
                Some(list) => parse_pcrs(list)?,
            },
        },
    };
    if location.system {
        return keystore_system(&config, &target, json);
    }
    let uid = rustix::process::geteuid().as_raw();
    let dir = passmesh_daemon::layout::user_dir(&config.state_dir, uid);
    let out = reseal(&dir, &config.tpm, &target).map_err(|e| Failure::Local(e.to_string()))?;
    if json {
        let v = serde_json::json!({
            "ok": true,
            "from": out.from.name(),
            "fromPcrs": out.from_pcrs,
            "to": out.to.backend.name(),
            "pcrs": out.to.pcrs,
        });
        println!("{v}");
        return Ok(());
    }
    let describe = |kind: Kind, pcrs: &[u8]| match (kind, pcrs) {
        (Kind::Tpm, []) => "the TPM (no PCR binding)".to_owned(),
        (Kind::Tpm, p) => format!("the TPM, bound to PCR(s) {} (sha256)", list_pcrs(p)),
        (Kind::Software, _) => "the software keystore".to_owned(),
    };
    println!(
        "vault keys re-sealed: from {} to {}",
        describe(out.from, &out.from_pcrs),
        describe(out.to.backend, &out.to.pcrs)
    );
    if out.to.backend == Kind::Software {
        println!(
            "WARNING: the vault keys are now protected by file permissions only; \
             start passmeshd with --keystore software"
        );
    }
    Ok(())
}

/// `keystore migrate|reseal --system`: the machine identity and every user's vault of the system service, under
/// the machine lock (which a running `passmeshd --system` holds, so it refuses then). Each vault is swapped in
/// atomically; after a failure the ones done stay done and running the command again finishes the rest.
fn keystore_system(
    config: &passmesh_daemon::config::Config,
    target: &passmesh_daemon::custody::migrate::Target,
    json: bool,
) -> Result<(), Failure> {
    use passmesh_daemon::custody::migrate::{lock_machine, reseal, reseal_machine};
    let local = |e: &dyn std::fmt::Display| Failure::Local(e.to_string());
    let machine = config.state_dir.join("machine");
    if !machine.exists() {
        return Err(Failure::Local(format!(
            "no system-mode state in {} (is this the right --state-dir?)",
            config.state_dir.display()
        )));
    }
    // Files written now must stay the service's: as root, the new stores would belong to root and the service
    // could not open them.
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(&config.state_dir).map_err(|e| local(&e))?,
    );
    let me = rustix::process::geteuid().as_raw();
    if owner != me {
        return Err(Failure::Local(format!(
            "{} belongs to uid {owner}, not to you (uid {me}): run this as that user, e.g. \
             `sudo -u passmesh passmesh keystore … --system`, so that the re-sealed files stay the service's",
            config.state_dir.display()
        )));
    }
    let lock = lock_machine(&machine).map_err(|e| local(&e))?;
    let mut uids: Vec<u32> = match std::fs::read_dir(config.state_dir.join("users")) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(local(&e)),
    };
    uids.sort_unstable();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for uid in uids {
        let dir = passmesh_daemon::layout::user_dir(&config.state_dir, uid);
        match reseal(&dir, &config.tpm, target) {
            Ok(out) => done.push((Some(uid), out)),
            Err(e) => failed.push((Some(uid), e.to_string())),
        }
    }
    match reseal_machine(&lock, &machine, &config.tpm, target) {
        Ok(out) => done.push((None, out)),
        Err(e) => failed.push((None, e.to_string())),
    }
    let who = |uid: Option<u32>| {
        uid.map_or_else(|| "machine identity".to_owned(), |u| format!("uid {u}"))
    };
    if json {
        let v = serde_json::json!({
            "ok": failed.is_empty(),
            "resealed": done.iter().map(|(uid, out)| serde_json::json!({
                "uid": uid,
                "from": out.from.name(),
                "fromPcrs": out.from_pcrs,
                "to": out.to.backend.name(),
                "pcrs": out.to.pcrs,
            })).collect::<Vec<_>>(),
            "failed": failed.iter().map(|(uid, e)| serde_json::json!({"uid": uid, "error": e})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        for (uid, out) in &done {
            println!(
                "{}: re-sealed from {} to {}",
                who(*uid),
                out.from.name(),
                out.to.backend.name()
            );
        }
        for (uid, e) in &failed {
            eprintln!("{}: {e}", who(*uid));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Local(format!(
            "{} of {} re-seals failed; the others are done, run the command again for the rest",
            failed.len(),
            failed.len() + done.len()
        )))
    }
}

fn parse_pcrs(list: &str) -> Result<Vec<u8>, Failure> {
    if list == "none" {
        return Ok(Vec::new());
    }
    let mut pcrs = list
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= passmesh_daemon::custody::keystore::tpm::MAX_PCR)
                .ok_or_else(|| {
                    Failure::Local(format!(
                        "--pcrs: {p:?} is not a PCR number 0..=23 (use e.g. 7,14 or none)"
                    ))
                })
        })
        .collect::<Result<Vec<u8>, _>>()?;
    pcrs.sort_unstable();
    pcrs.dedup();
    Ok(pcrs)
}
