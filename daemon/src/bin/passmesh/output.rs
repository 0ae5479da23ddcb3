//! What the commands print: the status, passkey lists and details, times, and JSON.

use std::path::Path;

use passmesh_ipc::{PasskeyInfo, StatusInfo};

use crate::Failure;

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let s = serde_json::to_string(v).map_err(|e| Failure::Local(e.to_string()))?;
    println!("{s}");
    Ok(())
}

pub(crate) fn print_status(s: &StatusInfo, socket: &Path) {
    println!(
        "passmeshd {} serving uid {} at {}",
        s.version,
        s.uid,
        socket.display()
    );
    println!("vault      {}", s.vault_id);
    println!("passkeys   {}", s.passkeys);
    match &s.keystore_warning {
        Some(w) => println!("keystore   {} (WARNING: {w})", s.keystore),
        None => println!("keystore   {}", s.keystore),
    }
    if let Some(t) = &s.tpm {
        println!("TPM        {} firmware {}", t.manufacturer, t.firmware);
        if t.pcrs.is_empty() {
            println!("PCRs       seal not bound to PCRs");
        } else {
            let list: Vec<String> = t.pcrs.iter().map(u8::to_string).collect();
            println!("PCRs       seal bound to sha256 PCR(s) {}", list.join(", "));
        }
    }
    let pin = match (s.pin_set, s.pin_locked_for_ms) {
        (false, _) => "not set (user verification unavailable; `passmesh pin set`)".to_owned(),
        (true, Some(ms)) => format!("set, LOCKED for {} s", ms.div_ceil(1000)),
        (true, None) => format!("set, {} attempt(s) left", s.pin_attempts_left),
    };
    println!("PIN        {pin}");
    if let Some(d) = &s.device_id {
        println!("device     {d}");
    }
    if let Some(k) = &s.old_keys {
        let why = match (k.reason.as_str(), k.until_ms) {
            ("kept", Some(until)) => format!(
                "kept until {} (what other devices purged stays restorable; a purge with the PIN ends it)",
                format_time(until)
            ),
            ("unacknowledged", _) => format!(
                "waiting for {} to acknowledge the current key (remove a device that will not come back)",
                k.waiting_for.join(", ")
            ),
            ("still-used", _) => "a value in the vault is still under one of them".to_owned(),
            ("rotating", _) => "a key rotation is under way".to_owned(),
            _ => "to be destroyed".to_owned(),
        };
        println!("old keys   {} epoch(s): {why}", k.epochs);
    }
    if let Some(r) = &s.recovery {
        match r.keys.iter().map(|k| k.since_ms).min() {
            Some(since) => println!("recovery   set up since {}", format_time(since)),
            None => println!("recovery   NOT set up (`passmesh recovery setup`)"),
        }
        match (&r.backup_dir, r.last_backup_at_ms) {
            (Some(dir), Some(at)) => println!(
                "backups    automatic, to {dir}; last {} ({})",
                format_time(at),
                r.last_backup_file.as_deref().unwrap_or("?")
            ),
            (Some(dir), None) => println!("backups    automatic, to {dir}; none written yet"),
            (None, Some(at)) => println!("backups    last {}", format_time(at)),
            (None, None) => {}
        }
        if let Some(at) = r.restored_at_ms {
            println!("restored   from a backup on {}", format_time(at));
        }
    }
    if let Some(why) = &s.network_off {
        println!("network    {why}");
    }
    for a in &s.listen_addrs {
        println!("listening  {a}");
    }
    for p in &s.peers {
        let state = if p.connected {
            "connected"
        } else {
            "not connected"
        };
        println!("peer       {} ({}): {state}", p.name, p.device_id);
        if let Some(a) = &p.address {
            println!("  address  {a}");
        }
        let last = p
            .last_sync_ms
            .map(format_time)
            .unwrap_or_else(|| "never".to_owned());
        println!("  synced   {last}");
        println!("  pending  {} change(s)", p.pending_changes);
    }
}

pub(crate) fn print_list(list: &[PasskeyInfo]) {
    if list.is_empty() {
        println!("no passkeys");
        return;
    }
    let rows: Vec<[String; 4]> = list
        .iter()
        .map(|p| {
            [
                p.credential_id.to_base64(),
                p.rp_id.clone(),
                user_label(p),
                format_time(p.created_at_ms),
            ]
        })
        .collect();
    let header = ["ID", "RELYING PARTY", "USER", "CREATED"].map(str::to_owned);
    let mut widths = [0usize; 4];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(rows.iter()) {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    println!("{} passkey(s)", list.len());
}

fn user_label(p: &PasskeyInfo) -> String {
    let mut s = p.user_name.clone();
    if !p.user_display_name.is_empty() && p.user_display_name != p.user_name {
        s.push_str(&format!(" ({})", p.user_display_name));
    }
    if let Some(l) = &p.label {
        s.push_str(&format!(" [{l}]"));
    }
    s
}

pub(crate) fn print_one(p: &PasskeyInfo) {
    println!("id             {}", p.credential_id.to_base64());
    println!("relying party  {}", p.rp_id);
    println!("user           {}", p.user_name);
    println!("display name   {}", p.user_display_name);
    println!("user handle    {}", p.user_handle.to_base64());
    if let Some(l) = &p.label {
        println!("label          {l}");
    }
    println!("created        {}", format_time(p.created_at_ms));
    println!(
        "backed up      {}",
        if p.backed_up {
            "yes (another paired device holds it)"
        } else {
            "no (only on this device)"
        }
    );
}

/// UTC `YYYY-MM-DD HH:MM:SS UTC` from ms since the epoch.
pub(crate) fn format_time(ms: u64) -> String {
    passmesh_daemon::clock::format_utc(ms)
}
