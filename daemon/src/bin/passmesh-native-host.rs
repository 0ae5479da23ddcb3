//! `passmesh-native-host`: the browser's native-messaging host for the Passmesh extension.
//!
//! The browser starts it (one process per `sendNativeMessage`, or one per `connectNative` port)
//! and speaks to it on stdio: each message is a 4-byte length in the machine's native byte order
//! and UTF-8 JSON. The host accepts `create`, `get` and `list` requests from the extension,
//! relays them to `passmeshd` over its socket (same JSON, little-endian framing) and writes the
//! daemon's answers back. It exits when the browser closes stdin.
//!
//! Trust: the `origin` of a request is put there by the extension's service worker from the
//! browser's own sender information (`sender.origin` / `sender.url` of the tab), never by page
//! script. The host refuses `create`/`get`/`list` without one, and checks that a `list`'s rpId
//! belongs to that origin (the daemon checks `create`/`get` itself), so a page can only learn
//! which of its own passkeys exist, and only through the extension's prompt. Everything else
//! the daemon can do (`delete`, `setPin`, …) is not reachable from a browser.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use passmesh_ipc::{Client, ClientError, MAX_FRAME_LEN};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Command line. Chromium and Chrome pass the caller's origin (`chrome-extension://ID/`) and, on
/// Windows, a window handle; Firefox passes the path of the host's manifest and the add-on id.
/// None of it is needed, so extra positional arguments are accepted and ignored.
#[derive(Debug, Parser)]
#[command(name = "passmesh-native-host", version, about)]
struct Args {
    /// The daemon's socket (default: the per-user daemon's socket if it exists, else the system service's
    /// /run/passmesh/ipc.sock).
    #[arg(long, env = "PASSMESH_SOCKET")]
    socket: Option<PathBuf>,
    /// What the browser passes (see above); ignored.
    #[arg(hide = true)]
    browser_args: Vec<String>,
}

/// Largest message the browser may send us, and we it (Chromium's limit towards the browser).
const MAX_MESSAGE: usize = MAX_FRAME_LEN;

/// Request types the extension may use.
const ALLOWED: [&str; 3] = ["create", "get", "list"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = args
        .socket
        .unwrap_or_else(passmesh_daemon::config::client_socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut daemon: Option<Client> = None;

    loop {
        let message = match read_message(&mut stdin) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(Incoming::TooLarge(len)) => {
                // The rest of the stream cannot be framed any more: answer once and leave.
                let reply = error_reply(
                    Value::Null,
                    "ConstraintError",
                    &format!("message of {len} bytes exceeds the 1 MiB limit"),
                );
                write_message(&mut stdout, &reply)?;
                return Ok(());
            }
            Err(Incoming::Io(e)) => return Err(e).context("reading from the browser"),
        };
        let reply = runtime.block_on(handle(&socket, &mut daemon, &message));
        write_message(&mut stdout, &reply)?;
    }
}

/// The fields of a browser message the host looks at; the rest goes to the daemon untouched.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Value,
    #[serde(rename = "type")]
    kind: String,
    origin: Option<String>,
    #[serde(rename = "rpId")]
    rp_id: Option<String>,
}

/// Answers one message from the browser; never fails, errors become `{ok:false}` replies.
///
/// The message is relayed byte for byte, so a PIN in it exists only in the (wiped) input buffer.
async fn handle(socket: &std::path::Path, daemon: &mut Option<Client>, message: &[u8]) -> Vec<u8> {
    let envelope: Envelope = match serde_json::from_slice(message) {
        Ok(e) => e,
        Err(e) => {
            let id = serde_json::from_slice::<Value>(message)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            let name = if e.is_data() {
                "TypeError"
            } else {
                "SyntaxError"
            };
            return error_reply(id, name, &format!("invalid request: {e}"));
        }
    };
    if let Err((name, text)) = vet(&envelope) {
        return error_reply(envelope.id, name, &text);
    }
    let id = envelope.id;

    // One reconnect: a daemon restarted since the last message leaves a dead connection behind.
    let mut last_error = None;
    for _ in 0..2 {
        let client = match daemon {
            Some(c) => c,
            None => match Client::connect(socket).await {
                Ok(c) => daemon.insert(c),
                Err(e) => return unavailable_reply(id, &e),
            },
        };
        match client.call_raw(message).await {
            Ok(reply) if reply.len() <= MAX_MESSAGE => return reply,
            Ok(reply) => {
                return error_reply(
                    id,
                    "ConstraintError",
                    &format!("the daemon's answer of {} bytes is too large", reply.len()),
                );
            }
            Err(e) => {
                *daemon = None;
                last_error = Some(e);
            }
        }
    }
    match last_error {
        Some(e) => unavailable_reply(id, &e),
        None => error_reply(id, "UnknownError", "no answer from the daemon"),
    }
}

/// Checks what the browser may ask for; `Err((name, message))` otherwise.
fn vet(request: &Envelope) -> Result<(), (&'static str, String)> {
    if !ALLOWED.contains(&request.kind.as_str()) {
        return Err((
            "NotSupportedError",
            format!(
                "request type {:?} is not available to browsers",
                request.kind
            ),
        ));
    }
    let origin = request
        .origin
        .as_deref()
        .ok_or(("TypeError", "the request has no origin".to_owned()))?;
    if request.kind == "list" {
        let rp_id = request
            .rp_id
            .as_deref()
            .ok_or(("TypeError", "list needs an rpId".to_owned()))?;
        passmesh_daemon::origin::check(origin, Some(rp_id))
            .map_err(|e| ("SecurityError", e.to_string()))?;
    }
    Ok(())
}

fn error_reply(id: Value, name: &str, message: &str) -> Vec<u8> {
    json!({"id": id, "ok": false, "error": {"name": name, "message": message}})
        .to_string()
        .into_bytes()
}

/// The daemon cannot be reached: the extension falls back to the browser's own WebAuthn.
fn unavailable_reply(id: Value, e: &ClientError) -> Vec<u8> {
    json!({
        "id": id,
        "ok": false,
        "unavailable": true,
        "error": {"name": "NotReadableError", "message": format!("passmeshd is not reachable: {e}")}
    })
    .to_string()
    .into_bytes()
}

/// Why a message could not be read.
enum Incoming {
    /// The announced length exceeds [`MAX_MESSAGE`].
    TooLarge(u32),
    /// Reading stdin failed, or it ended mid-message.
    Io(io::Error),
}

/// Reads one browser message; `Ok(None)` when stdin closed between messages.
fn read_message(r: &mut impl Read) -> Result<Option<Zeroizing<Vec<u8>>>, Incoming> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(Incoming::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Incoming::Io(e)),
        }
    }
    // Browsers use the machine's byte order here (the daemon's socket is always little-endian).
    let len = u32::from_ne_bytes(header);
    let size = usize::try_from(len).map_err(|_| Incoming::TooLarge(len))?;
    if size > MAX_MESSAGE {
        return Err(Incoming::TooLarge(len));
    }
    let mut payload = Zeroizing::new(vec![0u8; size]);
    r.read_exact(&mut payload).map_err(Incoming::Io)?;
    Ok(Some(payload))
}

fn write_message(w: &mut impl Write, payload: &[u8]) -> anyhow::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= MAX_MESSAGE)
        .context("reply exceeds the 1 MiB limit")?;
    w.write_all(&len.to_ne_bytes())
        .and_then(|()| w.write_all(payload))
        .and_then(|()| w.flush())
        .context("writing to the browser")
}
