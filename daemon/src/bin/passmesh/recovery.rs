//! `passmesh recovery setup|verify|rotate|identity`, `passmesh backup` and `passmesh restore`.
//!
//! The phrase is made and read here; the daemon gets only the recovery key's public half (setup, rotate) or, to
//! restore, the phrase itself with the file. Backups cross the socket in chunks, with a progress bar on a
//! terminal.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use passmesh_crdt::{DeviceId, VaultId};
use passmesh_daemon::recovery::{self, Phrase};
use passmesh_ipc::message::MAX_CHUNK;
use passmesh_ipc::{Base64Url, Client, Pin, RequestBody, ResponseBody, StatusInfo};
use zeroize::Zeroizing;

use crate::Failure;
use crate::output::{format_time, print_json};

/// Words asked back at setup.
const CONFIRM_WORDS: usize = 3;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RecoveryCommand {
    /// Make a recovery phrase: 24 words that, with a backup file, bring every passkey back after losing every
    /// device
    ///
    /// The phrase is shown once; then you type back three of its words to show it is written down. Only then is
    /// its key added to the vault (every vault key is wrapped to it from now on, and backups are encrypted to
    /// it). For scripts (stdin not a terminal, or --json): the phrase and the positions asked are printed first
    /// (one JSON line with --json), then the words are read from one line of stdin.
    Setup {
        /// Read the PIN from the first line of stdin (needed when a PIN is set)
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Check a recovery phrase against this vault without changing anything (phrase on a terminal prompt, or
    /// stdin)
    Verify,
    /// Replace the recovery phrase: a new phrase as with `setup`; the old one opens nothing made afterwards
    /// (backups made before stay readable with it: delete them)
    Rotate {
        /// Read the PIN from the first line of stdin (needed when a PIN is set)
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Print the age identity of a recovery phrase (phrase on a prompt or stdin), to decrypt a backup with the
    /// standard `age` tool: `age -d -i identity.txt BACKUP.age`
    ///
    /// Needs no daemon. The identity opens every backup made for this phrase: keep it as secret as the phrase.
    Identity,
}

fn local(msg: impl Into<String>) -> Failure {
    Failure::Local(msg.into())
}

fn unexpected(what: &str) -> Failure {
    local(format!("unexpected reply to {what}"))
}

/// A bar on a terminal's stderr, nothing otherwise.
fn bar(len: u64, json: bool, what: &str) -> ProgressBar {
    let target = if json || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:12} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// A spinner on a terminal's stderr while the daemon works.
fn spinner(json: bool, what: &str) -> ProgressBar {
    let target = if json || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let s = ProgressBar::with_draw_target(None, target);
    s.set_message(what.to_owned());
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

async fn status(client: &mut Client) -> Result<StatusInfo, Failure> {
    match client.call(RequestBody::Status).await? {
        ResponseBody::Status { status } => Ok(status),
        _ => Err(unexpected("status")),
    }
}

/// Reads one line of stdin (`hidden`: echo off).
fn read_line(hidden: bool) -> Result<Zeroizing<String>, Failure> {
    crate::input::read_line(hidden).map_err(|e| local(format!("reading stdin: {e}")))
}

/// Reads a phrase: on a terminal after a prompt with echo off (one line), else all of stdin.
pub(crate) fn read_phrase() -> Result<Zeroizing<String>, Failure> {
    let stdin = std::io::stdin();
    let mut text = Zeroizing::new(String::new());
    if stdin.is_terminal() {
        eprint!("Recovery phrase (24 words): ");
        let _ = std::io::stderr().flush();
        text = read_line(true)?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut text)
            .map_err(|e| local(format!("reading the phrase from stdin: {e}")))?;
    }
    if text.trim().is_empty() {
        return Err(local(
            "no recovery phrase given (type it, or pipe it on stdin)",
        ));
    }
    Ok(text)
}

fn parse_phrase(text: &str) -> Result<Phrase, Failure> {
    Phrase::parse(text).map_err(|e| local(format!("{e}; nothing was changed")))
}

fn derive(phrase: &Phrase, json: bool) -> Result<recovery::RecoveryKey, Failure> {
    let s = spinner(json, "deriving the recovery key (argon2id, 64 MiB)");
    let key = phrase.derive().map_err(|e| local(e.to_string()));
    s.finish_and_clear();
    key
}

pub(crate) async fn run(
    client: Option<&mut Client>,
    command: &RecoveryCommand,
    pin: Option<Pin>,
    json: bool,
) -> Result<(), Failure> {
    match command {
        RecoveryCommand::Identity => {
            let phrase = parse_phrase(&read_phrase()?)?;
            let key = derive(&phrase, json)?;
            let identity = key.age_identity();
            let recipient = recovery::age_recipient(&key.x25519_public());
            if json {
                return print_json(&serde_json::json!({
                    "identity": identity.as_str(),
                    "recipient": recipient,
                    "recoveryKey": key.id().to_string(),
                }));
            }
            println!("# passmesh recovery identity for {}", key.id());
            println!("# public key: {recipient}");
            println!("{}", identity.as_str());
            Ok(())
        }
        RecoveryCommand::Verify => {
            let client = client.ok_or_else(|| local("no daemon"))?;
            let phrase = parse_phrase(&read_phrase()?)?;
            let key = derive(&phrase, json)?;
            let status = status(client).await?;
            let keys = status.recovery.map(|r| r.keys).unwrap_or_default();
            let id = key.id().to_string();
            let found = keys.iter().find(|k| k.recovery_key == id);
            if json {
                print_json(&serde_json::json!({
                    "valid": found.is_some(),
                    "recoveryKey": id,
                    "sinceMs": found.map(|k| k.since_ms),
                }))?;
            }
            match found {
                Some(k) => {
                    if !json {
                        println!(
                            "this is the vault's recovery phrase (set up {})",
                            format_time(k.since_ms)
                        );
                    }
                    Ok(())
                }
                None if keys.is_empty() => Err(local(
                    "recovery is not set up for this vault (`passmesh recovery setup`)",
                )),
                None => Err(local(
                    "this is not the vault's recovery phrase (a mistyped word in the right place is still a valid \
                     phrase; or it is an old phrase, replaced since)",
                )),
            }
        }
        RecoveryCommand::Setup { .. } | RecoveryCommand::Rotate { .. } => {
            let client = client.ok_or_else(|| local("no daemon"))?;
            let replace = matches!(command, RecoveryCommand::Rotate { .. });
            setup(client, replace, pin, json).await
        }
    }
}

async fn setup(
    client: &mut Client,
    replace: bool,
    pin: Option<Pin>,
    json: bool,
) -> Result<(), Failure> {
    // Refused early, before the person writes 24 words down for nothing.
    let status = status(client).await?;
    let set = status.recovery.as_ref().is_some_and(|r| !r.keys.is_empty());
    if set && !replace {
        return Err(local(
            "recovery is already set up: `passmesh recovery rotate` replaces the phrase",
        ));
    }
    if !set && replace {
        return Err(local(
            "recovery is not set up: run `passmesh recovery setup`",
        ));
    }
    if status.pin_set && pin.is_none() {
        return Err(local(
            "a PIN is set on this device: give it with --pin-stdin (first line of stdin)",
        ));
    }
    let phrase = Phrase::generate();
    let positions = recovery::positions_to_confirm(CONFIRM_WORDS);
    let terminal = std::io::stdin().is_terminal() && !json;
    let words = phrase.words();
    if json {
        print_json(&serde_json::json!({
            "phrase": phrase.to_text().as_str(),
            "words": words.len(),
            "confirm": positions,
        }))?;
    } else {
        println!(
            "Your recovery phrase. Write these 24 words on paper, in order, and keep it safe:"
        );
        println!();
        for row in 0..6 {
            let line: Vec<String> = (0..4)
                .map(|col| {
                    let i = row + col * 6;
                    format!("{:>2}. {:<9}", i + 1, words[i])
                })
                .collect();
            println!("    {}", line.join("  "));
        }
        println!();
        println!(
            "Anyone with these words and a backup file gets every passkey. Passmesh shows them only now."
        );
    }
    let _ = std::io::stdout().flush();
    let asked: Vec<String> = positions.iter().map(usize::to_string).collect();
    if terminal {
        eprint!("When it is written down, press Enter.");
        let _ = std::io::stderr().flush();
        let mut enter = String::new();
        let _ = std::io::stdin().lock().read_line(&mut enter);
        // Off the screen before the check (the terminal's scrollback may still hold it).
        print!("\x1b[2J\x1b[3J\x1b[H");
        let _ = std::io::stdout().flush();
    }
    if !json {
        eprint!("Type words {} of the phrase: ", asked.join(", "));
        let _ = std::io::stderr().flush();
    }
    let answer = read_line(terminal)?;
    if !recovery::confirms(&phrase, &positions, &answer) {
        return Err(local(
            "those are not the words at those positions: recovery was not set up (run it again; a new phrase is \
             made)",
        ));
    }
    let key = derive(&phrase, json)?;
    // The key vouches for this device's anchors: a device restored with it trusts those, and only those.
    let vault: VaultId = status
        .vault_id
        .parse()
        .map_err(|_| local("the daemon's vault id does not parse"))?;
    let anchors: Vec<String> = status
        .recovery
        .as_ref()
        .map(|r| r.anchors.clone())
        .unwrap_or_default();
    let set: BTreeSet<DeviceId> = anchors.iter().cloned().map(DeviceId::new).collect();
    let signature = passmesh_crdt::members::sign_recovery_anchors(&vault, &key.member(), &set);
    let body = client
        .call(RequestBody::RecoverySet {
            recovery_key: key.id().to_string(),
            x25519: Base64Url(key.x25519_public().to_vec()),
            anchors: set.iter().map(ToString::to_string).collect(),
            anchors_signature: Base64Url(signature.to_vec()),
            replace,
            pin,
        })
        .await?;
    let ResponseBody::RecoverySet {
        recovery_key,
        replaced,
        ..
    } = body
    else {
        return Err(unexpected("recoverySet"));
    };
    if json {
        return print_json(&serde_json::json!({
            "recoveryKey": recovery_key,
            "replaced": replaced,
        }));
    }
    if replace {
        println!(
            "The recovery phrase is replaced: the old phrase opens nothing made from now on. Backups made before \
             still open with it: delete them, and destroy the old paper."
        );
    } else {
        println!("Recovery is set up: every vault key is now also wrapped to the phrase's key.");
    }
    let dir = status.recovery.and_then(|r| r.backup_dir);
    match dir {
        Some(d) => println!("Automatic backups go to {d}."),
        None => println!(
            "Make a backup with `passmesh backup --out FILE` (or set [backup] dir for automatic ones) and keep \
             it anywhere: it opens with the phrase only."
        ),
    }
    Ok(())
}

/// `passmesh backup --out FILE`.
pub(crate) async fn backup(
    client: &mut Client,
    out: &Path,
    pin: Option<Pin>,
    json: bool,
) -> Result<(), Failure> {
    let s = spinner(json, "making the backup");
    let body = client.call(RequestBody::Backup { pin }).await;
    s.finish_and_clear();
    let ResponseBody::Backup {
        size,
        passkeys,
        made_at_ms,
        ..
    } = body?
    else {
        return Err(unexpected("backup"));
    };
    let bar = bar(size, json, "receiving");
    let mut file = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    loop {
        let ResponseBody::BackupRead { data, end } = client
            .call(RequestBody::BackupRead {
                offset: file.len() as u64,
            })
            .await?
        else {
            return Err(unexpected("backupRead"));
        };
        file.extend_from_slice(&data.0);
        bar.set_position(file.len() as u64);
        if end {
            break;
        }
        if data.0.is_empty() {
            return Err(local("the daemon sent an empty chunk before the end"));
        }
    }
    bar.finish_and_clear();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| local(format!("{}: not a file name", out.display())))?;
    passmesh_daemon::backup::write_atomic(&dir, name, &file).map_err(|e| local(e.to_string()))?;
    if json {
        return print_json(&serde_json::json!({
            "file": out.display().to_string(),
            "size": file.len(),
            "passkeys": passkeys,
            "madeAtMs": made_at_ms,
        }));
    }
    println!(
        "wrote {} ({} bytes, {passkeys} passkeys): it opens with the recovery phrase only",
        out.display(),
        file.len()
    );
    Ok(())
}

/// `passmesh restore FILE`.
pub(crate) async fn restore(
    client: &mut Client,
    path: &Path,
    name: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let file = std::fs::read(path).map_err(|e| local(format!("{}: {e}", path.display())))?;
    if file.len() > passmesh_daemon::backup::MAX_FILE {
        return Err(local(format!(
            "{}: larger than any backup ({} bytes)",
            path.display(),
            file.len()
        )));
    }
    let text = read_phrase()?;
    // Checked here first: a mistyped phrase fails before the file is sent.
    parse_phrase(&text)?;
    let bar = bar(file.len() as u64, json, "sending");
    let mut offset = 0usize;
    loop {
        let end = (offset + MAX_CHUNK).min(file.len());
        client
            .call(RequestBody::RestoreWrite {
                offset: offset as u64,
                data: Base64Url(file[offset..end].to_vec()),
            })
            .await?;
        offset = end;
        bar.set_position(offset as u64);
        if offset == file.len() {
            break;
        }
    }
    bar.finish_and_clear();
    let s = spinner(json, "restoring (argon2id, decrypting, loading the vault)");
    let body = client
        .call(RequestBody::Restore {
            phrase: passmesh_ipc::Phrase::new(text.as_str().to_owned()),
            name,
        })
        .await;
    s.finish_and_clear();
    let ResponseBody::Restore {
        vault_id,
        passkeys,
        devices,
        backup_made_at_ms,
        backup_made_by,
        recovery_key,
    } = body?
    else {
        return Err(unexpected("restore"));
    };
    if json {
        return print_json(&serde_json::json!({
            "vaultId": vault_id,
            "passkeys": passkeys,
            "devices": devices,
            "backupMadeAtMs": backup_made_at_ms,
            "backupMadeBy": backup_made_by,
            "recoveryKey": recovery_key,
        }));
    }
    println!(
        "Restored vault {vault_id}: {passkeys} passkeys, from the backup made {} by {backup_made_by}.",
        format_time(backup_made_at_ms)
    );
    if devices > 0 {
        println!(
            "This device is now a member. The vault's {devices} other device(s) are listed as not seen since the \
             restore (`passmesh device list`): remove every lost one with `passmesh device remove ID`; pair one \
             that is still yours with this device again (`passmesh pair` here, `passmesh join` there)."
        );
    }
    Ok(())
}
