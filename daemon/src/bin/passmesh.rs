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
    /// The daemon's socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock]
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
        /// Credential id (base64url) or a unique prefix
        id: String,
    },
    /// Delete one passkey (credential id, or a unique prefix of it)
    Delete {
        /// Credential id (base64url) or a unique prefix
        id: String,
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
        .unwrap_or_else(passmesh_daemon::config::default_socket);
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
        Command::Create { .. } | Command::Get { .. } | Command::Keystore { .. } => {}
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
