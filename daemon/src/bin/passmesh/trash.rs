//! `passmesh trash list|restore|purge` and `passmesh audit`.

use passmesh_ipc::{AuditInfo, Client, Pin, RequestBody, ResponseBody, TrashedPasskey};

use crate::Failure;
use crate::output::{format_time, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TrashCommand {
    /// List the deleted passkeys, with when each is purged
    List,
    /// Take a deleted passkey out of the trash (credential id, or a unique prefix of it)
    Restore {
        /// Credential id (base64url) or a unique prefix; put `--` before one that starts with `-`
        id: String,
    },
    /// Purge deleted passkeys for good: one (credential id, or a unique prefix of it), or the whole trash
    ///
    /// The vault key is rotated with it. Needs the PIN when one is set; with the PIN the purge is approved:
    /// every device destroys the old keys at once (without, each keeps them `trash_days`), and passkeys other
    /// devices purged are confirmed too.
    Purge {
        /// Credential id (base64url) or a unique prefix [default: the whole trash]
        id: Option<String>,
        /// Read the PIN from the first line of stdin (needed when a PIN is set)
        #[arg(long)]
        pin_stdin: bool,
    },
}

/// Runs a trash command; `pin` is the PIN read (before connecting) for `purge --pin-stdin`.
pub(crate) async fn trash(
    client: &mut Client,
    command: &TrashCommand,
    pin: Option<Pin>,
    json: bool,
) -> Result<(), Failure> {
    match command {
        TrashCommand::List => {
            let passkeys = client.trash_all().await?;
            if json {
                let total = passkeys.len() as u64;
                return print_json(&ResponseBody::TrashList { passkeys, total });
            }
            print_trash(&passkeys);
        }
        TrashCommand::Restore { id } => {
            let p = resolve(client, id).await?;
            let body = client
                .call(RequestBody::TrashRestore {
                    credential_id: p.passkey.credential_id.clone(),
                })
                .await?;
            if json {
                return print_json(&body);
            }
            match body {
                ResponseBody::TrashRestore { restored: true } => println!(
                    "restored passkey {} ({} for {})",
                    p.passkey.credential_id.to_base64(),
                    p.passkey.user_name,
                    p.passkey.rp_id
                ),
                _ => println!(
                    "passkey {} is no longer in the trash",
                    p.passkey.credential_id.to_base64()
                ),
            }
        }
        TrashCommand::Purge { id, .. } => {
            let credential_id = match id {
                Some(id) => Some(resolve(client, id).await?.passkey.credential_id),
                None => None,
            };
            let body = client
                .call(RequestBody::TrashPurge { credential_id, pin })
                .await?;
            if json {
                return print_json(&body);
            }
            match body {
                ResponseBody::TrashPurge {
                    purged, approved, ..
                } if purged > 0 => {
                    println!("purged {purged} passkey(s) for good; the vault key was rotated");
                    if approved {
                        println!(
                            "approved with the PIN: the other devices destroy the old keys once all hold the new one"
                        );
                    } else {
                        println!(
                            "not approved with a PIN: each other device keeps the old keys for its trash_days (`passmesh trash list` there offers these passkeys back)"
                        );
                    }
                }
                _ => println!("nothing to purge"),
            }
        }
    }
    Ok(())
}

/// Finds a trashed passkey by exact credential id or unique prefix.
async fn resolve(client: &mut Client, id: &str) -> Result<TrashedPasskey, Failure> {
    let trashed = client.trash_all().await?;
    let wanted = id.trim_end_matches('=');
    let id_of = |p: &TrashedPasskey| p.passkey.credential_id.to_base64();
    if let Some(p) = trashed.iter().find(|p| id_of(p) == wanted) {
        return Ok(p.clone());
    }
    let matches: Vec<&TrashedPasskey> = trashed
        .iter()
        .filter(|p| !wanted.is_empty() && id_of(p).starts_with(wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::Local(format!(
            "no passkey with id {id} in the trash (see `passmesh trash list`)"
        ))),
        _ => Err(Failure::Local(format!(
            "{} passkeys in the trash start with {id}: give more of the id",
            matches.len()
        ))),
    }
}

fn print_trash(list: &[TrashedPasskey]) {
    if list.is_empty() {
        println!("the trash is empty");
        return;
    }
    for t in list {
        let p = &t.passkey;
        let label = p
            .label
            .as_deref()
            .map_or_else(String::new, |l| format!(" [{l}]"));
        println!(
            "{}  {}  {}{label}",
            p.credential_id.to_base64(),
            p.rp_id,
            p.user_name
        );
        if t.altered {
            println!(
                "  its content was replaced by another device on {}: this is the last good version, restorable until {}",
                format_time(t.trashed_at_ms),
                format_time(t.purge_at_ms)
            );
        } else if t.purged {
            let by = t.purged_by.as_deref().map_or_else(
                || "deleted outright (no device named itself)".to_owned(),
                |d| format!("purged by device {d}"),
            );
            println!(
                "  {by}, not approved with a PIN; restorable here until {}",
                format_time(t.purge_at_ms)
            );
        } else {
            println!(
                "  deleted {}, purged {}",
                format_time(t.trashed_at_ms),
                format_time(t.purge_at_ms)
            );
        }
    }
    println!("{} passkey(s) in the trash", list.len());
}

/// `passmesh audit`.
pub(crate) async fn audit(client: &mut Client, json: bool) -> Result<(), Failure> {
    let entries = client.audit_all().await?;
    if json {
        let total = entries.len() as u64;
        return print_json(&ResponseBody::Audit { entries, total });
    }
    print_audit(&entries);
    Ok(())
}

fn print_audit(entries: &[AuditInfo]) {
    if entries.is_empty() {
        println!("the audit log is empty");
        return;
    }
    for a in entries {
        let who = a
            .device_name
            .as_deref()
            .map_or_else(|| a.device_id.clone(), |n| format!("{n} ({})", a.device_id));
        let what = a
            .subject_name
            .as_deref()
            .map_or_else(|| a.subject.clone(), |n| format!("{} ({n})", a.subject));
        let mark = if a.verified {
            "verified".to_owned()
        } else {
            format!(
                "NOT VERIFIED: {}",
                a.problem.as_deref().unwrap_or("it does not verify")
            )
        };
        println!("{}  {}  {what}", format_time(a.at_ms), a.event);
        println!("  by {who}  [{mark}]");
    }
    let bad = entries.iter().filter(|a| !a.verified).count();
    println!(
        "{} entr{}, {bad} not verified",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
}
