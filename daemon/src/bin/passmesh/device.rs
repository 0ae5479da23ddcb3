//! `passmesh device list|rename|remove`: the vault's device table.

use passmesh_ipc::{Client, DeviceInfo, DeviceState, Pin, RequestBody, ResponseBody};

use crate::Failure;
use crate::output::{format_time, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeviceCommand {
    /// List the vault's devices: id, name, this device, connected, last seen, added by and when, standing
    List,
    /// Rename a device (its id, or a unique prefix of it); the name syncs to every device
    Rename {
        /// Device id or a unique prefix
        id: String,
        /// The new name
        name: String,
    },
    /// Remove a lost or stolen device (its id, or a unique prefix of it)
    ///
    /// Every device refuses its connections once it learns of the removal, and the vault key is rotated: the
    /// removed device cannot read any passkey created afterwards. What it held before, it may keep.
    Remove {
        /// Device id or a unique prefix
        id: String,
        /// Read the PIN from the first line of stdin (needed when a PIN is set)
        #[arg(long)]
        pin_stdin: bool,
    },
}

/// Runs a device command; `pin` is the PIN read (before connecting) for `remove --pin-stdin`.
pub(crate) async fn device(
    client: &mut Client,
    command: &DeviceCommand,
    pin: Option<Pin>,
    json: bool,
) -> Result<(), Failure> {
    match command {
        DeviceCommand::List => {
            let body = client.call(RequestBody::DeviceList).await?;
            if json {
                return print_json(&body);
            }
            let restored_at = match client.call(RequestBody::Status).await? {
                ResponseBody::Status { status } => status.recovery.and_then(|r| r.restored_at_ms),
                _ => None,
            };
            if let ResponseBody::DeviceList { devices } = body {
                print_devices(&devices, restored_at);
            }
        }
        DeviceCommand::Rename { id, name } => {
            let d = resolve(client, id).await?;
            let body = client
                .call(RequestBody::DeviceRename {
                    device_id: d.device_id.clone(),
                    name: name.clone(),
                })
                .await?;
            if json {
                return print_json(&body);
            }
            println!("renamed device {} ({}) to {name:?}", d.device_id, d.name);
        }
        DeviceCommand::Remove { id, .. } => {
            let d = resolve(client, id).await?;
            let body = client
                .call(RequestBody::DeviceRemove {
                    device_id: d.device_id.clone(),
                    pin,
                })
                .await?;
            if json {
                return print_json(&body);
            }
            match body {
                ResponseBody::DeviceRemove { epoch: Some(_) } => println!(
                    "removed device {} ({}): every device refuses it once it learns of this, and the vault key \
                     was rotated, so it cannot read passkeys created from now on",
                    d.device_id, d.name
                ),
                _ => println!("device {} ({}) was already removed", d.device_id, d.name),
            }
        }
    }
    Ok(())
}

/// Finds a device by exact id or unique prefix.
async fn resolve(client: &mut Client, id: &str) -> Result<DeviceInfo, Failure> {
    let ResponseBody::DeviceList { devices } = client.call(RequestBody::DeviceList).await? else {
        return Err(Failure::Local("unexpected reply to deviceList".into()));
    };
    if let Some(d) = devices.iter().find(|d| d.device_id == id) {
        return Ok(d.clone());
    }
    let matches: Vec<&DeviceInfo> = devices
        .iter()
        .filter(|d| !id.is_empty() && d.device_id.starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::Local(format!(
            "no device with id {id} (see `passmesh device list`)"
        ))),
        _ => Err(Failure::Local(format!(
            "{} devices start with {id}: give more of the id",
            matches.len()
        ))),
    }
}

fn print_devices(devices: &[DeviceInfo], restored_at: Option<u64>) {
    let name_of = |id: &str| {
        devices
            .iter()
            .find(|d| d.device_id == id)
            .map_or_else(|| id.to_owned(), |d| d.name.clone())
    };
    for d in devices {
        let this = if d.this_device { "  (this device)" } else { "" };
        println!("{}  {}{this}", d.device_id, d.name);
        let state = match d.state {
            DeviceState::Active if d.recovery => {
                "recovery key (from the recovery phrase; never connects)".to_owned()
            }
            DeviceState::Active if d.connected => "active, connected".to_owned(),
            DeviceState::Active => "active, not connected".to_owned(),
            DeviceState::Removed => format!(
                "REMOVED by {} on {}",
                d.removed_by
                    .as_deref()
                    .map_or_else(|| "?".to_owned(), name_of),
                d.removed_at_ms.map_or_else(|| "?".to_owned(), format_time)
            ),
            DeviceState::Invalid => format!(
                "INVALID: {}",
                d.invalid_reason
                    .as_deref()
                    .unwrap_or("the entry does not verify")
            ),
        };
        println!("  state      {state}");
        if !d.this_device && !d.recovery {
            let seen = match (d.last_seen_ms, restored_at) {
                (None, Some(r)) if d.state == DeviceState::Active => format!(
                    "not since this device was restored ({}): remove it if it is lost",
                    format_time(r)
                ),
                (Some(at), Some(r)) if at < r => format!(
                    "not since this device was restored ({}): remove it if it is lost",
                    format_time(r)
                ),
                (seen, _) => seen.map_or_else(|| "never".to_owned(), format_time),
            };
            println!("  last seen  {seen}");
        }
        let by = d
            .added_by
            .as_deref()
            .map_or_else(|| "(first device)".to_owned(), name_of);
        println!("  added      {} by {by}", format_time(d.added_at_ms));
        if let Some(epoch) = d.key_epoch {
            println!("  keys       epoch {epoch} only (older vault keys destroyed)");
        }
    }
    println!("{} device(s)", devices.len());
}
