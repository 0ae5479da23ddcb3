//! What the commands read: option files, PINs from stdin or a terminal, and passkeys by (a prefix of) their id.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use passmesh_ipc::{Client, PasskeyInfo, Pin};
use zeroize::Zeroizing;

use crate::Failure;

/// Finds a passkey by exact credential id or unique prefix.
pub(crate) async fn resolve(client: &mut Client, id: &str) -> Result<PasskeyInfo, Failure> {
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
pub(crate) fn read_call<T: serde::de::DeserializeOwned>(
    path: &Path,
    pin_stdin: bool,
    what: &str,
) -> Result<(T, Option<Pin>), Failure> {
    let pin = read_pin_arg(pin_stdin)?;
    let options = serde_json::from_slice(&read_input(path)?)
        .map_err(|e| Failure::Local(format!("{}: not valid {what}: {e}", path.display())))?;
    Ok((options, pin))
}

pub(crate) fn read_pin_arg(from_stdin: bool) -> Result<Option<Pin>, Failure> {
    if !from_stdin {
        return Ok(None);
    }
    read_secret_line("PIN: ").map(Some)
}

pub(crate) fn read_new_pin(has_current: bool) -> Result<(Option<Pin>, Pin), Failure> {
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
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    match read_line(tty) {
        Ok(line) if line.is_empty() => Err(Failure::Local("no PIN given on stdin".into())),
        Ok(line) => Ok(Pin::new(line.trim_end_matches(['\n', '\r']).to_owned())),
        Err(e) => Err(Failure::Local(format!("reading the PIN: {e}"))),
    }
}

/// Reads one line of stdin; with `hidden` (a terminal), with echo off, restored however the read ends.
pub(crate) fn read_line(hidden: bool) -> std::io::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    let saved = hidden
        .then(|| rustix::termios::tcgetattr(&stdin).ok())
        .flatten();
    if let Some(mut t) = saved.clone() {
        t.local_modes.remove(rustix::termios::LocalModes::ECHO);
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
    }
    let mut line = Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        eprintln!();
    }
    read.map(|_| line)
}
