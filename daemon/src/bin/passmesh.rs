//! `passmesh`: the command-line client of `passmeshd`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use passmesh_ipc::{
    Client, ClientError, ErrorBody, PasskeyInfo, Pin, RequestBody, ResponseBody, StatusInfo,
};
use zeroize::Zeroizing;

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
    /// Delete one passkey (credential id, or a unique prefix of it)
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
    /// Both devices then show the same six-digit code (SAS); with --confirm nothing is sent before you confirm
    /// here that they match. The code works once, for --expires seconds, and dies after 3 failed attempts.
    Pair {
        /// Seconds the code stays valid
        #[arg(long, value_name = "S", default_value_t = 300)]
        expires: u64,
        /// Ask here whether the codes shown on both devices match before sending any key
        #[arg(long)]
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

/// Where `keystore` commands find the vault; the same flags and config file as passmeshd.
#[derive(Debug, clap::Args)]
struct VaultLocation {
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
enum KeystoreCommand {
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
enum Backend {
    Tpm,
    Software,
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
            expires,
            confirm,
            out,
            name,
        } => {
            return pair(
                &mut client,
                args.json,
                *expires,
                *confirm,
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
            return follow_pairing(&mut client, args.json).await;
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
                    "deleted passkey {} ({} for {})",
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

/// Runs `keystore migrate|reseal` in this process: the daemon's library does the work on the state directory,
/// whose lock guarantees that no passmeshd has the vault open meanwhile.
fn keystore(
    location: &VaultLocation,
    command: &KeystoreCommand,
    json: bool,
) -> Result<(), Failure> {
    use passmesh_daemon::keystore::{Backend as Kind, list_pcrs};
    use passmesh_daemon::migrate::{Target, reseal};
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
    let dir = passmesh_daemon::vault::user_dir(&config.state_dir, uid);
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
    target: &passmesh_daemon::migrate::Target,
    json: bool,
) -> Result<(), Failure> {
    use passmesh_daemon::migrate::{lock_machine, reseal, reseal_machine};
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
        let dir = passmesh_daemon::vault::user_dir(&config.state_dir, uid);
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
                .filter(|p| *p <= passmesh_daemon::keystore::tpm::MAX_PCR)
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

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let s = serde_json::to_string(v).map_err(|e| Failure::Local(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Finds a passkey by exact credential id or unique prefix.
async fn resolve(client: &mut Client, id: &str) -> Result<PasskeyInfo, Failure> {
    let passkeys = client.list_all(None).await?;
    let wanted = id.trim_end_matches('=');
    if let Some(p) = passkeys
        .iter()
        .find(|p| p.credential_id.to_base64() == wanted)
    {
        return Ok(p.clone());
    }
    let matches: Vec<&PasskeyInfo> = passkeys
        .iter()
        .filter(|p| !wanted.is_empty() && p.credential_id.to_base64().starts_with(wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::Local(format!("no passkey with id {id}"))),
        _ => Err(Failure::Local(format!(
            "{} passkeys start with {id}: give more of the id",
            matches.len()
        ))),
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::Local(format!("reading stdin: {e}")))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| Failure::Local(format!("{}: {e}", path.display())))
    }
}

/// The options JSON of `create`/`get` and, with `--pin-stdin`, the PIN (read first, from stdin's first line).
fn read_call<T: serde::de::DeserializeOwned>(
    path: &Path,
    pin_stdin: bool,
    what: &str,
) -> Result<(T, Option<Pin>), Failure> {
    let pin = read_pin_arg(pin_stdin)?;
    let options = serde_json::from_slice(&read_input(path)?)
        .map_err(|e| Failure::Local(format!("{}: not valid {what}: {e}", path.display())))?;
    Ok((options, pin))
}

fn read_pin_arg(from_stdin: bool) -> Result<Option<Pin>, Failure> {
    if !from_stdin {
        return Ok(None);
    }
    read_secret_line("PIN: ").map(Some)
}

fn read_new_pin(has_current: bool) -> Result<(Option<Pin>, Pin), Failure> {
    let current = if has_current {
        Some(read_secret_line("Current PIN: ")?)
    } else {
        None
    };
    let new = read_secret_line("New PIN: ")?;
    if std::io::stdin().is_terminal() {
        let again = read_secret_line("Repeat new PIN: ")?;
        if again.as_str() != new.as_str() {
            return Err(Failure::Local("the PINs do not match".into()));
        }
    }
    Ok((current, new))
}

/// Reads one line: from a terminal with echo off after a prompt, else from stdin as it is.
fn read_secret_line(prompt: &str) -> Result<Pin, Failure> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut saved = None;
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        if let Ok(mut t) = rustix::termios::tcgetattr(&stdin) {
            saved = Some(t.clone());
            t.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        }
    }
    let mut line = Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        eprintln!();
    }
    match read {
        Ok(0) => Err(Failure::Local("no PIN given on stdin".into())),
        Ok(_) => Ok(Pin::new(line.trim_end_matches(['\n', '\r']).to_owned())),
        Err(e) => Err(Failure::Local(format!("reading the PIN: {e}"))),
    }
}

fn print_status(s: &StatusInfo, socket: &Path) {
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

fn print_list(list: &[PasskeyInfo]) {
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

fn print_one(p: &PasskeyInfo) {
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

/// UTC `YYYY-MM-DD HH:MM:SS` from ms since the epoch (civil-from-days, no time-zone database needed).
fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn pair(
    client: &mut Client,
    json: bool,
    expires: u64,
    confirm: bool,
    out: Option<&Path>,
    name: Option<String>,
) -> Result<(), Failure> {
    let body = client
        .call(RequestBody::PairInvite {
            expires_secs: Some(expires),
            confirm,
            name,
        })
        .await?;
    let ResponseBody::PairInvite { uri, expires_at_ms } = body else {
        return Err(Failure::Local("unexpected answer from the daemon".into()));
    };
    let uri = Zeroizing::new(uri);
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| Failure::Local(format!("cannot make a QR code: {e}")))?;
    if let Some(path) = out {
        write_qr(&code, path)?;
    }
    if json {
        let v = serde_json::json!({"event": "invitation", "uri": uri.as_str(), "expiresAtMs": expires_at_ms});
        println!("{v}");
    } else {
        use qrcode::render::unicode::Dense1x2;
        let art = code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build();
        println!("Scan this code on the new device, or run `passmesh join CODE` there:\n");
        println!("{art}\n");
        println!("{}\n", uri.as_str());
        if let Some(path) = out {
            println!("QR code written to {}", path.display());
        }
        println!(
            "Valid until {} (once). Waiting for a device to join...",
            format_time(expires_at_ms)
        );
    }
    std::io::stdout().flush().ok();
    follow_pairing(client, json).await
}

fn write_qr(code: &qrcode::QrCode, path: &Path) -> Result<(), Failure> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let fail =
        |e: &dyn std::fmt::Display| Failure::Local(format!("cannot write {}: {e}", path.display()));
    match ext.as_deref() {
        Some("png") => code
            .render::<image::Luma<u8>>()
            .quiet_zone(true)
            .min_dimensions(320, 320)
            .build()
            .save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| fail(&e)),
        Some("svg") => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .quiet_zone(true)
                .min_dimensions(320, 320)
                .build();
            std::fs::write(path, svg).map_err(|e| fail(&e))
        }
        _ => Err(Failure::Local(format!(
            "{}: --out needs a .png or .svg file name",
            path.display()
        ))),
    }
}

/// Reads a pairing code from a PNG (or other supported) image of its QR code.
fn decode_qr(path: &Path) -> Result<String, Failure> {
    let img = image::open(path)
        .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?
        .to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        u32::try_from(x)
            .ok()
            .zip(u32::try_from(y).ok())
            .map_or(255, |(x, y)| img.get_pixel(x, y).0[0])
    });
    for grid in prepared.detect_grids() {
        if let Ok((_, text)) = grid.decode()
            && text.starts_with("passmesh://")
        {
            return Ok(text);
        }
    }
    Err(Failure::Local(format!(
        "no passmesh pairing code found in {}",
        path.display()
    )))
}

/// Prints pairing events until the pairing ends; asks for the SAS confirmation when the daemon waits for it.
async fn follow_pairing(client: &mut Client, json: bool) -> Result<(), Failure> {
    use passmesh_ipc::message::PairEvent;
    let mut since = 0;
    let mut outcome = Err(Failure::Local("the pairing ended without a result".into()));
    loop {
        let body = client.call(RequestBody::PairProgress { since }).await?;
        let ResponseBody::PairProgress {
            events,
            next,
            finished,
        } = body
        else {
            return Err(Failure::Local("unexpected answer from the daemon".into()));
        };
        for event in events {
            if json {
                print_json(&event)?;
            }
            match &event {
                PairEvent::Waiting => {}
                PairEvent::PeerConnected { peer } if !json => println!("Device {peer} connected."),
                PairEvent::Sas { sas } if !json => println!(
                    "Code: {sas}  (both devices must show the same code; if not, stop: someone else is pairing)"
                ),
                PairEvent::AttemptFailed {
                    reason,
                    attempts_left,
                } if !json => {
                    println!("A pairing attempt failed ({reason}); {attempts_left} left.")
                }
                PairEvent::AwaitingConfirmation => {
                    if !json {
                        print!("Does the other device show the same code? [y/N] ");
                    }
                    std::io::stdout().flush().ok();
                    let mut line = String::new();
                    let _ = std::io::stdin().lock().read_line(&mut line);
                    let accept = matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes");
                    client.call(RequestBody::PairConfirm { accept }).await?;
                }
                PairEvent::Done { device_id, name } => {
                    if !json {
                        println!("Paired with \"{name}\" ({device_id}).");
                    }
                    outcome = Ok(());
                }
                PairEvent::Failed { reason } => {
                    outcome = Err(Failure::Local(format!("pairing failed: {reason}")));
                }
                _ => {}
            }
        }
        std::io::stdout().flush().ok();
        since = next;
        if finished {
            return outcome;
        }
    }
}

/// Man pages (`passmesh.1` and one `passmesh-SUB.1` per visible subcommand) and bash/zsh/fish completions.
fn generate_docs(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Args::command();
    cmd.build();
    write_man_pages(&cmd, "", &man)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "passmesh.bash"),
        (clap_complete::Shell::Zsh, "_passmesh"),
        (clap_complete::Shell::Fish, "passmesh.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Args::command(), "passmesh", &mut out);
        std::fs::write(completions.join(file), out)?;
    }
    Ok(())
}

fn write_man_pages(cmd: &clap::Command, prefix: &str, dir: &Path) -> std::io::Result<()> {
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    let page = cmd.clone().name(name.clone());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            write_man_pages(sub, &name, dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_795_305_845_000), "2026-11-22 00:04:05 UTC");
    }
}
