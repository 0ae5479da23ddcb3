//! Headless Firefox (ESR) with the Passmesh extension and native-messaging host, driven over
//! WebDriver BiDi, and the same flows as in Chromium.
//!
//! Firefox needs no geckodriver: it is started with `--marionette --remote-debugging-port=0`.
//! Marionette (length-prefixed JSON on a TCP port the profile names) opens the session, asking
//! for a BiDi WebSocket, and is kept for what BiDi lacks: virtual WebAuthn authenticators
//! (Firefox's own WebAuthn, answering without a person). Everything else goes over BiDi: the
//! extension is installed as a temporary add-on with `webExtension.install`, pages are opened
//! with `browsingContext.create`/`navigate`, the prompt window is found with
//! `browsingContext.getTree`, read with `script.evaluate`, and typed into and clicked with
//! `input.performActions` (trusted input).
//!
//! The WebSocket client is a small one written here (text frames, client masking, no
//! extensions): it only ever talks to the browser this test started, on loopback.
//!
//! `HOME` points into the test's temporary directory, so Firefox finds the host's manifest in
//! `$HOME/.mozilla/native-messaging-hosts/`, where a user's own install puts it. `setsid` gives
//! the browser its own process group, so dropping [`Firefox`] kills the browser, its content
//! processes and any host it started.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use passmesh_tests::rp::{User, UserVerificationPolicy};
use passmesh_tests::{Daemon, ops};
use rustix::process::{Pid, Signal};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::chromium::{HOST_NAME, extension_dir, host_wrapper, native_host};
use crate::server::RpServer;
use crate::{
    Action, Authenticator, Case, Driver, PIN, Window, act, bounded, expect_registered, flows,
    open_prompt, wait_closed,
};

/// The add-on id, from `browser_specific_settings.gecko.id` in the manifest.
pub const ADDON_ID: &str = "passmesh@passmesh.invalid";
/// The internal UUID the test profile gives the add-on, so its pages live at a known
/// `moz-extension://` origin (Firefox otherwise picks a random one per profile).
const ADDON_UUID: &str = "6d1c7f0e-3b5a-4c1e-9f57-2f1d4c8e9a10";

/// How long the test profile lets the extension's background page idle before suspending it
/// (Firefox's default is 30 s); short, so that a test can outlast it.
const BACKGROUND_IDLE_MS: u64 = 8000;

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Firefox may take to start and open its Marionette port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest protocol message accepted from the browser.
const MAX_MESSAGE: usize = 64 << 20;

/// The Firefox executable: `$PASSMESH_FIREFOX`, else `firefox-esr` or `firefox` on PATH.
fn firefox_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PASSMESH_FIREFOX") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["firefox-esr", "firefox"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "Firefox is not installed, and the Firefox browser tests need it: install it with \
         `apt-get install -y --no-install-recommends firefox-esr` (or set PASSMESH_FIREFOX to its path)"
    )
}

/// Preferences of the test profile (`user.js`).
fn user_prefs() -> String {
    let uuids = json!({ ADDON_ID: ADDON_UUID }).to_string();
    let prefs: [(&str, Value); 13] = [
        (
            "extensions.background.idle.timeout",
            json!(BACKGROUND_IDLE_MS),
        ),
        // Marionette picks a free port and writes it to `MarionetteActivePort` in the profile.
        ("marionette.port", json!(0)),
        ("extensions.webextensions.uuids", json!(uuids)),
        // Firefox's own WebAuthn answers only through virtual authenticators the tests add, never
        // through a USB key that may be plugged into the machine.
        ("security.webauth.webauthn_enable_softtoken", json!(true)),
        ("security.webauth.webauthn_enable_usbtoken", json!(false)),
        ("browser.shell.checkDefaultBrowser", json!(false)),
        ("browser.startup.homepage_override.mstone", json!("ignore")),
        ("browser.aboutwelcome.enabled", json!(false)),
        ("datareporting.policy.dataSubmissionEnabled", json!(false)),
        ("toolkit.telemetry.reportingpolicy.firstRun", json!(false)),
        ("app.update.disabledForTesting", json!(true)),
        ("extensions.update.enabled", json!(false)),
        ("browser.safebrowsing.update.enabled", json!(false)),
    ];
    prefs
        .iter()
        .map(|(name, value)| format!("user_pref({name:?}, {value});\n"))
        .collect()
}

/// A running headless Firefox with the extension installed.
pub struct Firefox {
    child: Child,
    bidi: WebSocket,
    marionette: Marionette,
    next_id: u64,
    log: PathBuf,
    _home: tempfile::TempDir,
}

impl Firefox {
    /// Starts Firefox with a fresh profile whose native-messaging host talks to `socket`, and
    /// installs the extension from `packaging/browser-extension` as a temporary add-on.
    pub async fn launch(socket: &Path) -> anyhow::Result<Firefox> {
        let firefox = firefox_path()?;
        let host = native_host()?;
        let home = tempfile::Builder::new()
            .prefix("passmesh-firefox-")
            .tempdir()?;
        let profile = home.path().join("profile");
        std::fs::create_dir_all(&profile)?;
        std::fs::write(profile.join("user.js"), user_prefs())?;

        let hosts_dir = home.path().join(".mozilla/native-messaging-hosts");
        std::fs::create_dir_all(&hosts_dir)?;
        let wrapper = host_wrapper(home.path(), &host, socket)?;
        let manifest = json!({
            "name": HOST_NAME,
            "description": "Passmesh (test)",
            "path": wrapper,
            "type": "stdio",
            "allowed_extensions": [ADDON_ID],
        });
        std::fs::write(
            hosts_dir.join(format!("{HOST_NAME}.json")),
            serde_json::to_vec_pretty(&manifest)?,
        )?;

        let log = home.path().join("firefox.log");
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new("setsid")
            .arg(&firefox)
            .args([
                "--headless",
                "--no-remote",
                "--marionette",
                "--remote-debugging-port=0",
            ])
            .arg("--profile")
            .arg(&profile)
            .arg("about:blank")
            .env("HOME", home.path())
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("cannot start {} (through setsid)", firefox.display()))?;

        let port_file = profile.join("MarionetteActivePort");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse::<u16>().ok())
            {
                break port;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "firefox exited ({status}) before Marionette listened\n{}",
                    tail(&log)
                );
            }
            if tokio::time::Instant::now() > deadline {
                let _ = rustix::process::kill_process_group(Pid::from_child(&child), Signal::KILL);
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "firefox did not open Marionette within {START_TIMEOUT:?}\n{}",
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let started = async {
            let mut marionette = Marionette::connect(port).await?;
            // A classic session whose capabilities ask for WebDriver BiDi: Firefox allows one
            // session, and this one serves both protocols.
            let session = marionette
                .call("WebDriver:NewSession", json!({"webSocketUrl": true}))
                .await?;
            let url = session["capabilities"]["webSocketUrl"]
                .as_str()
                .ok_or_else(|| anyhow!("the session has no webSocketUrl: {session}"))?;
            let bidi = WebSocket::connect(url).await?;
            anyhow::Ok((marionette, bidi))
        };
        let (marionette, bidi) = match started.await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = rustix::process::kill_process_group(Pid::from_child(&child), Signal::KILL);
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.context(tail(&log)));
            }
        };
        let mut browser = Firefox {
            child,
            bidi,
            marionette,
            next_id: 1,
            log,
            _home: home,
        };
        let extension = extension_dir().canonicalize()?;
        let installed = browser
            .call(
                "webExtension.install",
                json!({"extensionData": {"type": "path", "path": extension}}),
            )
            .await
            .context("installing the extension as a temporary add-on")?;
        if installed["extension"] != ADDON_ID {
            bail!("the extension was installed under another id: {installed}");
        }
        Ok(browser)
    }

    /// Sends one BiDi command and returns its result. Events arriving meanwhile are dropped.
    pub async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({"id": id, "method": method, "params": params});
        self.bidi
            .send(&message.to_string())
            .await
            .with_context(|| format!("firefox is gone\n{}", self.log_tail()))?;
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            let reply = tokio::time::timeout_at(deadline, self.bidi.messages.recv())
                .await
                .map_err(|_| anyhow!("no answer to {method} within {COMMAND_TIMEOUT:?}"))?
                .ok_or_else(|| {
                    anyhow!("firefox closed the BiDi connection\n{}", self.log_tail())
                })?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if reply["type"] == "error" {
                bail!("{method} failed: {}: {}", reply["error"], reply["message"]);
            }
            return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// The top-level browsing contexts (tabs and windows): `(id, url)`.
    pub async fn contexts(&mut self) -> anyhow::Result<Vec<(String, String)>> {
        let tree = self
            .call("browsingContext.getTree", json!({"maxDepth": 0}))
            .await?;
        Ok(tree["contexts"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|c| {
                        let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                        (field("context"), field("url"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The last lines Firefox wrote.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// The last lines of Firefox's output.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!("--- firefox output ---\n{}", lines[from..].join("\n"))
}

impl Drop for Firefox {
    fn drop(&mut self) {
        self.bidi.reader.abort();
        // The whole process group: the browser, its content processes and the native host.
        let _ = rustix::process::kill_process_group(Pid::from_child(&self.child), Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

impl Driver for Firefox {
    async fn open(&mut self, url: &str) -> anyhow::Result<()> {
        let created = self
            .call("browsingContext.create", json!({"type": "tab"}))
            .await?;
        let context = created["context"]
            .as_str()
            .ok_or_else(|| anyhow!("browsingContext.create gave no context: {created}"))?
            .to_owned();
        self.call(
            "browsingContext.navigate",
            json!({"context": context, "url": url, "wait": "none"}),
        )
        .await?;
        Ok(())
    }

    async fn open_with_authenticator(&mut self, url: &str) -> anyhow::Result<Authenticator> {
        // Firefox's virtual authenticators are browser-wide (a Marionette command, not BiDi).
        let added = self
            .marionette
            .call(
                "WebAuthn:AddVirtualAuthenticator",
                json!({
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserConsenting": true,
                    "isUserVerified": true,
                }),
            )
            .await?;
        let id = added["value"]
            .as_str()
            .ok_or_else(|| anyhow!("no authenticator id: {added}"))?
            .to_owned();
        Driver::open(self, url).await?;
        Ok(Authenticator {
            id,
            session: String::new(),
        })
    }

    async fn authenticator_credentials(
        &mut self,
        authenticator: &Authenticator,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let held = self
            .marionette
            .call(
                "WebAuthn:GetCredentials",
                json!({"authenticatorId": authenticator.id}),
            )
            .await?;
        held["value"]
            .as_array()
            .ok_or_else(|| anyhow!("GetCredentials gave no list: {held}"))?
            .iter()
            .map(|c| {
                let id = c["credentialId"].as_str().unwrap_or_default();
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(id)
                    .with_context(|| format!("credential id {id:?}"))
            })
            .collect()
    }

    async fn find_prompt(&mut self) -> anyhow::Result<Option<Window>> {
        let prefix = format!("moz-extension://{ADDON_UUID}/prompt.html");
        Ok(self
            .contexts()
            .await?
            .into_iter()
            .find(|(_, url)| url.starts_with(&prefix))
            .map(|(id, _)| Window {
                session: id.clone(),
                id,
            }))
    }

    async fn is_open(&mut self, window: &Window) -> anyhow::Result<bool> {
        Ok(self
            .contexts()
            .await?
            .iter()
            .any(|(id, _)| *id == window.id))
    }

    async fn evaluate_in(&mut self, window: &Window, expression: &str) -> anyhow::Result<Value> {
        // BiDi returns values as typed remote values; JSON text is simpler to read back.
        let wrapped = format!("(async () => JSON.stringify(await ({expression})))()");
        let result = self
            .call(
                "script.evaluate",
                json!({
                    "expression": wrapped,
                    "target": {"context": window.session},
                    "awaitPromise": true,
                    "resultOwnership": "none",
                }),
            )
            .await?;
        if result["type"] != "success" {
            bail!("script failed: {}", result["exceptionDetails"]);
        }
        match result["result"]["value"].as_str() {
            Some(text) => Ok(serde_json::from_str(text)?),
            None => Ok(Value::Null),
        }
    }

    async fn type_text(&mut self, window: &Window, text: &str) -> anyhow::Result<()> {
        let keys: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                let c = c.to_string();
                [
                    json!({"type": "keyDown", "value": c}),
                    json!({"type": "keyUp", "value": c}),
                ]
            })
            .collect();
        self.call(
            "input.performActions",
            json!({
                "context": window.session,
                "actions": [{"type": "key", "id": "keyboard", "actions": keys}],
            }),
        )
        .await?;
        Ok(())
    }

    async fn click(&mut self, window: &Window, x: f64, y: f64) -> anyhow::Result<()> {
        let clicked = self
            .call(
                "input.performActions",
                json!({
                    "context": window.session,
                    "actions": [{
                        "type": "pointer",
                        "id": "mouse",
                        "parameters": {"pointerType": "mouse"},
                        "actions": [
                            {"type": "pointerMove", "x": x.round() as i64, "y": y.round() as i64},
                            {"type": "pointerDown", "button": 0},
                            {"type": "pointerUp", "button": 0},
                        ],
                    }],
                }),
            )
            .await;
        match clicked {
            Ok(_) => Ok(()),
            // The click may close the window before Firefox finishes the action.
            Err(e) => {
                if self.is_open(window).await? {
                    Err(e)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn log_tail(&self) -> String {
        Firefox::log_tail(self)
    }
}

/// A Marionette connection: `LEN:JSON` messages, commands `[0, id, name, params]`, answers
/// `[1, id, error, result]`.
struct Marionette {
    stream: TcpStream,
    next_id: u64,
}

impl Marionette {
    async fn connect(port: u16) -> anyhow::Result<Marionette> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .context("connecting to Marionette")?;
        let mut marionette = Marionette { stream, next_id: 1 };
        let hello = marionette.read().await?;
        if hello["marionetteProtocol"] != 3 {
            bail!("unexpected Marionette greeting: {hello}");
        }
        Ok(marionette)
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        let mut len = 0usize;
        loop {
            let b = self.stream.read_u8().await.context("Marionette closed")?;
            match b {
                b':' => break,
                b'0'..=b'9' if len < MAX_MESSAGE => len = len * 10 + usize::from(b - b'0'),
                _ => bail!("bad Marionette framing (byte {b})"),
            }
        }
        if len > MAX_MESSAGE {
            bail!("Marionette message of {len} bytes");
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn call(&mut self, name: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!([0, id, name, params]).to_string();
        self.stream
            .write_all(format!("{}:{body}", body.len()).as_bytes())
            .await?;
        tokio::time::timeout(COMMAND_TIMEOUT, async {
            loop {
                let reply = self.read().await?;
                if reply[0] != 1 || reply[1] != id {
                    continue;
                }
                if !reply[2].is_null() {
                    bail!("{name} failed: {}", reply[2]);
                }
                return Ok(reply[3].clone());
            }
        })
        .await
        .map_err(|_| anyhow!("no answer to {name} within {COMMAND_TIMEOUT:?}"))?
    }
}

/// A minimal WebSocket client: sends text frames, receives JSON messages on a channel.
struct WebSocket {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    messages: mpsc::Receiver<Value>,
    reader: JoinHandle<()>,
}

/// Random bytes for the handshake key and frame masks (they only need to vary, not be secret).
fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

impl WebSocket {
    /// Connects to `ws://HOST:PORT/PATH`.
    async fn connect(url: &str) -> anyhow::Result<WebSocket> {
        let parsed = url::Url::parse(url).with_context(|| format!("bad WebSocket URL {url}"))?;
        if parsed.scheme() != "ws" {
            bail!("not a ws:// URL: {url}");
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow!("no host in {url}"))?;
        let port = parsed.port().ok_or_else(|| anyhow!("no port in {url}"))?;
        let stream = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let (mut read, mut write) = stream.into_split();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&random_u64().to_le_bytes());
        key[8..].copy_from_slice(&random_u64().to_le_bytes());
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            parsed.path()
        );
        write.write_all(request.as_bytes()).await?;
        // The response head ends with an empty line; read it byte by byte so that no frame
        // data is consumed with it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                bail!("WebSocket handshake answer too long");
            }
            head.push(read.read_u8().await.context("WebSocket handshake")?);
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101") {
            bail!("WebSocket handshake refused: {head}");
        }
        let writer = Arc::new(Mutex::new(write));
        let (tx, messages) = mpsc::channel(256);
        let pong_writer = Arc::clone(&writer);
        let reader = tokio::spawn(async move {
            let mut message = Vec::new();
            while let Ok((fin, opcode, payload)) = read_frame(&mut read).await {
                match opcode {
                    0..=2 => {
                        if message.len() + payload.len() > MAX_MESSAGE {
                            return;
                        }
                        message.extend_from_slice(&payload);
                        if fin {
                            let parsed = serde_json::from_slice::<Value>(&message);
                            message.clear();
                            if let Ok(v) = parsed
                                && tx.send(v).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    9 => {
                        let mut w = pong_writer.lock().await;
                        if write_frame(&mut w, 10, &payload).await.is_err() {
                            return;
                        }
                    }
                    8 => return,
                    _ => {}
                }
            }
        });
        Ok(WebSocket {
            writer,
            messages,
            reader,
        })
    }

    /// Sends one text message.
    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let mut w = self.writer.lock().await;
        write_frame(&mut w, 1, text.as_bytes()).await
    }
}

/// Writes one final, masked frame (clients must mask).
async fn write_frame(w: &mut OwnedWriteHalf, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = (random_u64() as u32).to_be_bytes();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame: `(fin, opcode, payload)`.
async fn read_frame(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let fin = head[0] & 0x80 != 0;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_MESSAGE)
        .ok_or_else(|| anyhow!("WebSocket frame of {len} bytes"))?;
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((fin, opcode, payload))
}

/// Starts Firefox on `daemon`, with the extension installed.
async fn firefox_for(daemon: &Daemon) -> Firefox {
    Firefox::launch(daemon.socket_path())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_registers_and_signs_in_with_the_device_pin() {
    let mut c = Case::start(true, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = firefox_for(&c.daemon).await;
    bounded(flows::pin_register_and_sign_in(
        &mut browser,
        &mut c.rp,
        &mut c.client,
        PIN,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_an_unanswered_prompt_times_out_with_not_allowed() {
    let mut c = Case::start(false, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = firefox_for(&c.daemon).await;
    bounded(flows::unanswered_prompt_times_out(
        &mut browser,
        &mut c.rp,
        &mut c.client,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_another_origin_cannot_use_the_passkey() {
    let mut c = Case::start(false, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = firefox_for(&c.daemon).await;
    bounded(flows::another_origin(&mut browser, &mut c.rp)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_wrong_pin_can_be_typed_again_and_cancel_is_not_allowed() {
    let mut c = Case::start(true, "carol", UserVerificationPolicy::Required).await;
    let mut browser = firefox_for(&c.daemon).await;
    bounded(flows::wrong_pin_then_cancel(&mut browser, &mut c.rp, PIN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_use_another_device_hands_the_request_to_firefox() {
    let mut c = Case::start(false, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = firefox_for(&c.daemon).await;
    bounded(flows::other_device(&mut browser, &mut c.rp, &mut c.client)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_without_the_daemon_answers_itself() {
    let nowhere = tempfile::tempdir().expect("tempdir");
    let socket = nowhere.path().join("no-daemon-here.sock");
    let mut rp = RpServer::start(User::new("alice"))
        .await
        .expect("rp server");
    let mut browser = Firefox::launch(&socket)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    bounded(flows::without_daemon(&mut browser, &mut rp)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_keeps_the_request_while_the_person_takes_their_time() {
    let Case {
        daemon,
        mut client,
        mut rp,
    } = Case::start(false, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = firefox_for(&daemon).await;
    bounded(async {
        browser.open(&rp.page("localhost", "register")).await?;
        let prompt = open_prompt(&mut browser, &mut rp).await?;
        // Longer than Firefox lets an idle background page live: the request must still be
        // there when the person decides.
        tokio::time::sleep(Duration::from_millis(BACKGROUND_IDLE_MS * 3 / 2)).await;
        act(&mut browser, &prompt, Action::Approve(None)).await?;
        wait_closed(&mut browser, &prompt).await?;
        expect_registered(&mut rp).await?;
        assert_eq!(
            ops::list(&mut client, None).await?.len(),
            1,
            "Passmesh made it"
        );
        Ok(())
    })
    .await;
}
