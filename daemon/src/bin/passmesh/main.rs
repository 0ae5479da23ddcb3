//! `passmesh`: the command-line client of `passmeshd`.
//!
//! This file holds the command line (its clap types), `main` and the dispatch of each command; the work of the
//! commands is in the sibling modules.

mod device;
mod docs;
mod input;
mod keystore;
mod output;
mod pair;
mod recovery;
mod trash;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use passmesh_ipc::{Client, ClientError, ErrorBody, RequestBody, ResponseBody};

use crate::device::{DeviceCommand, device};
use crate::docs::generate_docs;
use crate::input::{read_call, read_new_pin, read_pin_arg, resolve};
use crate::keystore::{KeystoreCommand, VaultLocation, keystore};
use crate::output::{print_json, print_list, print_one, print_status};
use crate::pair::{decode_qr, follow_pairing, pair};
use crate::recovery::RecoveryCommand;
use crate::trash::{TrashCommand, audit, trash};

/// Talk to the Passmesh daemon: inspect and manage passkeys, set the device PIN, script WebAuthn calls.
#[derive(Debug, Parser)]
#[command(name = "passmesh", version)]
struct Args {
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system
    /// service's /run/passmesh/ipc.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon, vault, keystore and PIN state
    Status,
    /// List passkeys
    List {
        /// Only passkeys of this relying party id
        #[arg(long, value_name = "RP")]
        rp: Option<String>,
    },
    /// Show one passkey (credential id, or a unique prefix of it)
    Show {
        /// Credential id (base64url) or a unique prefix; put `--` before one that starts with `-`
        id: String,
    },
    /// Delete one passkey (credential id, or a unique prefix of it): it moves to the trash on every device
    ///
    /// It is hidden from sign-ins and `list` at once, restorable with `passmesh trash restore` from any device
    /// for `[vault] trash_days` (30 by default), then purged.
    Delete {
        /// Credential id (base64url) or a unique prefix; put `--` before one that starts with `-`
        id: String,
    },
    /// Label one passkey (credential id, or a unique prefix of it); the label syncs to every device
    Rename {
        /// Credential id (base64url) or a unique prefix; put `--` before one that starts with `-`
        id: String,
        /// The new label
        label: String,
    },
    /// The vault's devices: list, rename, and remove a lost or stolen one
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Deleted passkeys: list, restore, purge
    Trash {
        #[command(subcommand)]
        command: TrashCommand,
    },
    /// Recover after losing every device: the recovery phrase (setup, verify, rotate, identity)
    Recovery {
        #[command(subcommand)]
        command: RecoveryCommand,
    },
    /// Write a backup of the vault to FILE: an age file that opens with the recovery phrase only
    ///
    /// It holds the whole vault, so a device restored from it continues the same vault and syncs with any device
    /// that survived. Needs recovery to be set up (`passmesh recovery setup`).
    Backup {
        /// Where to write it (written whole, then renamed into place)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Read the PIN from the first line of stdin (needed when a PIN is set)
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Restore a backup FILE on this device (its vault must be empty), with the recovery phrase (prompt, or stdin)
    ///
    /// The vault and every passkey come back; this device becomes a member, and the vault's other devices are
    /// listed as not seen since the restore, ready to be removed.
    Restore {
        /// The backup file
        file: PathBuf,
        /// This device's name in the vault [default: the host name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the vault's audit log: who paired, renamed or removed devices, rotated the key, deleted, restored
    /// or purged passkeys, and when; each entry is checked (signed by the device it names, unaltered)
    Audit,
    /// Write the man pages and shell completions (for packagers) into DIR/man and DIR/completions
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory
        dir: PathBuf,
    },
    /// Manage the device PIN used for user verification
    Pin {
        #[command(subcommand)]
        command: PinCommand,
    },
    /// Manage the keystore that seals the vault's keys (works on the state directory; passmeshd must be stopped)
    Keystore {
        #[command(flatten)]
        location: VaultLocation,
        #[command(subcommand)]
        command: KeystoreCommand,
    },
    /// Invite a new device: shows a one-time pairing code (QR and URI) and waits until a device joins with it
    ///
    /// Both devices then show the same six-digit code (SAS), and nothing is sent before you confirm here that
    /// they match (`y`; a script answers on stdin). Ctrl-C cancels the invitation at once. The code works once,
    /// for --expires seconds, and dies after 3 failed attempts.
    Pair {
        /// Seconds the code stays valid
        #[arg(long, value_name = "S", default_value_t = 300)]
        expires: u64,
        /// Ask before sending any key (always the case now; kept so that older scripts still run)
        #[arg(long, hide = true)]
        confirm: bool,
        /// Also write the QR code to FILE (.png or .svg)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// This device's name as the new device will list it [default: its name in the vault]
        #[arg(long)]
        name: Option<String>,
    },
    /// Join the vault of another device with the pairing code it shows (`passmesh pair` there)
    ///
    /// This device's vault must be empty: it is replaced by the joined vault, whose passkeys then arrive.
    Join {
        /// The passmesh://pair?... code, or - to read it from stdin (keeps it out of the process list)
        #[arg(required_unless_present = "image", conflicts_with = "image")]
        uri: Option<String>,
        /// Read the code from a PNG image of its QR code (a screenshot or `passmesh pair --out`)
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// This device's name in the vault [default: the host name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Create a passkey from PublicKeyCredentialCreationOptionsJSON (for scripts and tests)
    Create {
        /// The calling origin, e.g. https://login.example.com
        #[arg(long)]
        origin: String,
        /// File with the options JSON, or - for stdin
        #[arg(long, value_name = "FILE")]
        options: PathBuf,
        /// Read the PIN from the first line of stdin
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Sign in with a passkey from PublicKeyCredentialRequestOptionsJSON (for scripts and tests)
    Get {
        /// The calling origin, e.g. https://login.example.com
        #[arg(long)]
        origin: String,
        /// File with the options JSON, or - for stdin
        #[arg(long, value_name = "FILE")]
        options: PathBuf,
        /// Read the PIN from the first line of stdin
        #[arg(long)]
        pin_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PinCommand {
    /// Set or change the PIN (prompts on a terminal; otherwise reads lines from stdin: the current PIN first if
    /// one is set, then the new PIN)
    Set,
}

/// A failure with its exit message.
enum Failure {
    Remote(ErrorBody),
    Local(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Remote(body) => Failure::Remote(body),
            other => Failure::Local(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(passmesh_daemon::config::client_socket);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("passmesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args, &socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Remote(body)) => {
            if args.json {
                let v = serde_json::json!({"ok": false, "error": body});
                println!("{v}");
            }
            eprintln!("passmesh: {}: {}", body.name, body.message);
            ExitCode::FAILURE
        }
        Err(Failure::Local(msg)) => {
            if args.json {
                let v = serde_json::json!({"ok": false, "error": {"name": "ClientError", "message": msg}});
                println!("{v}");
            }
            eprintln!("passmesh: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, socket: &Path) -> Result<(), Failure> {
    if let Command::Keystore { location, command } = &args.command {
        return keystore(location, command, args.json);
    }
    if let Command::Recovery {
        command: command @ RecoveryCommand::Identity,
    } = &args.command
    {
        return recovery::run(None, command, None, args.json).await;
    }
    if let Command::GenerateDocs { dir } = &args.command {
        return generate_docs(dir)
            .map_err(|e| Failure::Local(format!("cannot write into {}: {e}", dir.display())));
    }
    // Inputs are read before connecting, so a bad file fails fast and a prompt never holds a connection.
    let request = match &args.command {
        Command::Create {
            origin,
            options,
            pin_stdin,
        } => {
            let (options, pin) = read_call(options, *pin_stdin, "creation options")?;
            Some(RequestBody::Create {
                origin: origin.clone(),
                options,
                pin,
            })
        }
        Command::Get {
            origin,
            options,
            pin_stdin,
        } => {
            let (options, pin) = read_call(options, *pin_stdin, "request options")?;
            Some(RequestBody::Get {
                origin: origin.clone(),
                options,
                pin,
            })
        }
        _ => None,
    };
    let device_pin = match &args.command {
        Command::Device {
            command: DeviceCommand::Remove { pin_stdin, .. },
        }
        | Command::Trash {
            command: TrashCommand::Purge { pin_stdin, .. },
        }
        | Command::Recovery {
            command: RecoveryCommand::Setup { pin_stdin } | RecoveryCommand::Rotate { pin_stdin },
        }
        | Command::Backup { pin_stdin, .. } => read_pin_arg(*pin_stdin)?,
        _ => None,
    };
    let mut client = Client::connect(socket).await.map_err(|e| {
        Failure::Local(format!(
            "cannot reach passmeshd at {}: {} (is the daemon running? see --socket)",
            socket.display(),
            std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
        ))
    })?;
    if let Some(request) = request {
        let body = client.call(request).await?;
        let value = match &body {
            ResponseBody::Create { credential } => serde_json::to_value(credential),
            ResponseBody::Get { credential } => serde_json::to_value(credential),
            other => serde_json::to_value(other),
        }
        .map_err(|e| Failure::Local(e.to_string()))?;
        if args.json {
            print_json(&body)?;
        } else {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).map_err(|e| Failure::Local(e.to_string()))?
            );
        }
        return Ok(());
    }
    match &args.command {
        Command::Pair {
            expires, out, name, ..
        } => {
            return pair(
                &mut client,
                socket,
                args.json,
                *expires,
                out.as_deref(),
                name.clone(),
            )
            .await;
        }
        Command::Join { uri, image, name } => {
            let uri = match (uri.as_deref(), image) {
                (_, Some(path)) => decode_qr(path)?,
                (Some("-"), None) => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                        Failure::Local(format!("cannot read the code from stdin: {e}"))
                    })?;
                    line.trim().to_owned()
                }
                (Some(u), None) => u.trim().to_owned(),
                (None, None) => return Err(Failure::Local("give the code or --image FILE".into())),
            };
            client
                .call(RequestBody::PairJoin {
                    uri,
                    name: name.clone(),
                })
                .await?;
            return follow_pairing(&mut client, None, args.json).await;
        }
        Command::Device { command } => {
            return device(&mut client, command, device_pin, args.json).await;
        }
        Command::Trash { command } => {
            return trash(&mut client, command, device_pin, args.json).await;
        }
        Command::Audit => {
            return audit(&mut client, args.json).await;
        }
        Command::Recovery { command } => {
            return recovery::run(Some(&mut client), command, device_pin, args.json).await;
        }
        Command::Backup { out, .. } => {
            return recovery::backup(&mut client, out, device_pin, args.json).await;
        }
        Command::Restore { file, name } => {
            return recovery::restore(&mut client, file, name.clone(), args.json).await;
        }
        Command::Status => {
            let body = client.call(RequestBody::Status).await?;
            if args.json {
                return print_json(&body);
            }
            if let ResponseBody::Status { status } = body {
                print_status(&status, socket);
            }
        }
        Command::List { rp } => {
            let passkeys = client.list_all(rp.as_deref()).await?;
            if args.json {
                let total = passkeys.len() as u64;
                return print_json(&ResponseBody::List { passkeys, total });
            }
            print_list(&passkeys);
        }
        Command::Show { id } => {
            let p = resolve(&mut client, id).await?;
            if args.json {
                return print_json(&p);
            }
            print_one(&p);
        }
        Command::Delete { id } => {
            let p = resolve(&mut client, id).await?;
            let body = client
                .call(RequestBody::Delete {
                    credential_id: p.credential_id.clone(),
                })
                .await?;
            if args.json {
                return print_json(&body);
            }
            match body {
                ResponseBody::Delete { deleted: true } => println!(
                    "moved passkey {} ({} for {}) to the trash (`passmesh trash restore` brings it back)",
                    p.credential_id.to_base64(),
                    p.user_name,
                    p.rp_id
                ),
                _ => println!("passkey {} was already gone", p.credential_id.to_base64()),
            }
        }
        Command::Rename { id, label } => {
            let p = resolve(&mut client, id).await?;
            let body = client
                .call(RequestBody::Rename {
                    credential_id: p.credential_id.clone(),
                    label: label.clone(),
                })
                .await?;
            if args.json {
                return print_json(&body);
            }
            match body {
                ResponseBody::Rename { renamed: true } => println!(
                    "renamed passkey {} ({} for {}) to {label:?}",
                    p.credential_id.to_base64(),
                    p.user_name,
                    p.rp_id
                ),
                _ => println!("passkey {} is gone", p.credential_id.to_base64()),
            }
        }
        Command::Pin {
            command: PinCommand::Set,
        } => {
            let status = match client.call(RequestBody::Status).await? {
                ResponseBody::Status { status } => status,
                _ => return Err(Failure::Local("unexpected reply to status".into())),
            };
            let (current, pin) = read_new_pin(status.pin_set)?;
            let body = client
                .call(RequestBody::SetPin {
                    pin,
                    current_pin: current,
                })
                .await?;
            if args.json {
                return print_json(&body);
            }
            println!("PIN set");
        }
        Command::Create { .. }
        | Command::Get { .. }
        | Command::Keystore { .. }
        | Command::GenerateDocs { .. } => {}
    }
    Ok(())
}
