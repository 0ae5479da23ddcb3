//! Headless Chromium with the Passmesh extension and native-messaging host, driven over the
//! DevTools protocol.
//!
//! The protocol runs over `--remote-debugging-pipe` (NUL-terminated JSON on fds 3 and 4), which
//! needs no WebSocket client and no port: `sh` maps our stdin/stdout pipes to the browser's fds
//! 3/4. `setsid` gives the browser its own process group, so dropping [`Browser`] kills the
//! browser, its renderers and any host it started.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rustix::process::{Pid, Signal};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The extension's fixed ID, from the `key` in its manifest.
pub const EXTENSION_ID: &str = "fjimagjbcojglgkkfmpgildnkfmehmhc";
/// The native-messaging host name the extension connects to.
pub const HOST_NAME: &str = "com.passmesh.native";

/// How [`Browser::call`] errors start when the target went away while the command ran.
pub const TARGET_CLOSED: &str = "the target closed";

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium executable: `$PASSMESH_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PASSMESH_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "Chromium is not installed, and the browser tests need it: install it with \
         `apt-get install -y --no-install-recommends chromium` (or set PASSMESH_CHROMIUM to its path)"
    )
}

/// The packaged extension directory in this repository.
pub fn extension_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/browser-extension")
}

/// The `passmesh-native-host` binary, built by `passmesh_tests::binaries` next to the CLI.
pub fn native_host() -> anyhow::Result<PathBuf> {
    let bins = passmesh_tests::binaries()?;
    let host = bins.cli.with_file_name("passmesh-native-host");
    if !host.is_file() {
        bail!("{} was not built", host.display());
    }
    Ok(host)
}

/// Writes `dir/native-host.sh`, which runs `host` on the daemon at `socket`: browsers start the
/// host with only their own arguments (Chromium the caller's origin, Firefox the manifest path
/// and the add-on id), so the test daemon's socket has to be added by a wrapper.
pub(crate) fn host_wrapper(dir: &Path, host: &Path, socket: &Path) -> anyhow::Result<PathBuf> {
    let wrapper = dir.join("native-host.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' --socket '{}' \"$@\"\n",
            host.display(),
            socket.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(wrapper)
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a fresh profile whose native-messaging host talks to `socket`.
    pub fn launch(socket: &Path) -> anyhow::Result<Browser> {
        let chromium = chromium_path()?;
        let host = native_host()?;
        let profile = tempfile::Builder::new()
            .prefix("passmesh-chromium-")
            .tempdir()?;
        let user_data = profile.path().join("profile");
        let hosts_dir = user_data.join("NativeMessagingHosts");
        std::fs::create_dir_all(&hosts_dir)?;

        let wrapper = host_wrapper(profile.path(), &host, socket)?;
        let manifest = json!({
            "name": HOST_NAME,
            "description": "Passmesh (test)",
            "path": wrapper,
            "type": "stdio",
            "allowed_origins": [format!("chrome-extension://{EXTENSION_ID}/")],
        });
        std::fs::write(
            hosts_dir.join(format!("{HOST_NAME}.json")),
            serde_json::to_vec_pretty(&manifest)?,
        )?;

        let extension = extension_dir().canonicalize()?;
        let log = profile.path().join("chromium.log");
        let mut child = Command::new("setsid")
            .args(["sh", "-c", "exec \"$@\" 3<&0 4>&1 0</dev/null 1>&2", "sh"])
            .arg(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", user_data.display()))
            .arg(format!("--load-extension={}", extension.display()))
            .arg(format!(
                "--disable-extensions-except={}",
                extension.display()
            ))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .with_context(|| format!("cannot start {} (through setsid/sh)", chromium.display()))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, messages) = mpsc::channel(256);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.blocking_send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Browser {
            child,
            stdin,
            messages,
            next_id: 1,
            log,
            _profile: profile,
        })
    }

    /// The last lines Chromium wrote to stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Without a D-Bus, Chromium complains at length; that is never the problem here.
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus")).collect();
        let from = lines.len().saturating_sub(40);
        format!("--- chromium stderr ---\n{}", lines[from..].join("\n"))
    }

    /// Sends one DevTools command (to the browser, or to an attached `session`) and returns its
    /// result. Events arriving meanwhile are dropped.
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.stdin
            .write_all(&bytes)
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("chromium is gone\n{}", self.log_tail()))?;
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            let reply = tokio::time::timeout_at(deadline, self.messages.recv())
                .await
                .map_err(|_| anyhow!("no answer to {method} within {COMMAND_TIMEOUT:?}"))?
                .ok_or_else(|| anyhow!("chromium closed the DevTools pipe\n{}", self.log_tail()))?;
            if let Some(s) = session
                && reply["method"] == "Target.detachedFromTarget"
                && reply["params"]["sessionId"] == s
            {
                bail!("{TARGET_CLOSED} during {method}");
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(error) = reply.get("error") {
                bail!("{method} failed: {error}");
            }
            return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// Every target (pages, service workers…).
    pub async fn targets(&mut self) -> anyhow::Result<Vec<Value>> {
        let result = self.call("Target.getTargets", json!({}), None).await?;
        Ok(result
            .get("targetInfos")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until a target whose URL starts with `prefix` exists; returns its info.
    pub async fn wait_for_target(
        &mut self,
        prefix: &str,
        limit: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.targets().await?.into_iter().find(|t| {
                t.get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.starts_with(prefix))
            }) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                let urls: Vec<String> = self
                    .targets()
                    .await?
                    .iter()
                    .map(|t| format!("{} {}", t["type"], t["url"]))
                    .collect();
                bail!(
                    "no target at {prefix}… within {limit:?}; targets: {urls:?}\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&mut self, url: &str) -> anyhow::Result<()> {
        self.call("Target.createTarget", json!({"url": url}), None)
            .await?;
        Ok(())
    }

    /// Opens `url` in a new tab that has a virtual platform authenticator (Chromium's own
    /// WebAuthn, answering without a person); returns the tab's session and the authenticator id.
    pub async fn open_with_virtual_authenticator(
        &mut self,
        url: &str,
    ) -> anyhow::Result<(String, String)> {
        let created = self
            .call("Target.createTarget", json!({"url": "about:blank"}), None)
            .await?;
        let target = created["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("createTarget gave no targetId: {created}"))?
            .to_owned();
        let session = self.attach(&target).await?;
        self.call(
            "WebAuthn.enable",
            json!({"enableUI": false}),
            Some(&session),
        )
        .await?;
        let added = self
            .call(
                "WebAuthn.addVirtualAuthenticator",
                json!({"options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                    "automaticPresenceSimulation": true,
                }}),
                Some(&session),
            )
            .await?;
        let authenticator = added["authenticatorId"]
            .as_str()
            .ok_or_else(|| anyhow!("no authenticatorId: {added}"))?
            .to_owned();
        self.call("Page.navigate", json!({"url": url}), Some(&session))
            .await?;
        Ok((session, authenticator))
    }

    /// The credentials a virtual authenticator holds.
    pub async fn virtual_credentials(
        &mut self,
        session: &str,
        authenticator: &str,
    ) -> anyhow::Result<Vec<Value>> {
        let result = self
            .call(
                "WebAuthn.getCredentials",
                json!({"authenticatorId": authenticator}),
                Some(session),
            )
            .await?;
        Ok(result["credentials"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Attaches to a target; returns the session id for [`Browser::call`].
    pub async fn attach(&mut self, target_id: &str) -> anyhow::Result<String> {
        let result = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                None,
            )
            .await?;
        result
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("attachToTarget gave no session: {result}"))
    }

    /// Evaluates `expression` (awaiting a promise) in `session`; returns its JSON value.
    pub async fn evaluate(&mut self, session: &str, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
                Some(session),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!("script failed: {details}");
        }
        Ok(result
            .get("result")
            .and_then(|r| r.get("value"))
            .cloned()
            .unwrap_or(Value::Null))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: the browser, its helpers and the native host it started.
        let _ = rustix::process::kill_process_group(Pid::from_child(&self.child), Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

impl crate::Driver for Browser {
    async fn open(&mut self, url: &str) -> anyhow::Result<()> {
        Browser::open(self, url).await
    }

    async fn open_with_authenticator(&mut self, url: &str) -> anyhow::Result<crate::Authenticator> {
        let (session, id) = self.open_with_virtual_authenticator(url).await?;
        Ok(crate::Authenticator { id, session })
    }

    async fn authenticator_credentials(
        &mut self,
        authenticator: &crate::Authenticator,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        use base64::Engine as _;
        self.virtual_credentials(&authenticator.session, &authenticator.id)
            .await?
            .iter()
            .map(|c| {
                let id = c["credentialId"].as_str().unwrap_or_default();
                base64::engine::general_purpose::STANDARD
                    .decode(id)
                    .with_context(|| format!("credential id {id:?}"))
            })
            .collect()
    }

    async fn find_prompt(&mut self) -> anyhow::Result<Option<crate::Window>> {
        let prefix = format!("chrome-extension://{EXTENSION_ID}/prompt.html");
        let Some(target) = self.targets().await?.into_iter().find(|t| {
            t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(&prefix))
        }) else {
            return Ok(None);
        };
        let id = target["targetId"].as_str().unwrap_or_default().to_owned();
        let session = self.attach(&id).await?;
        Ok(Some(crate::Window { id, session }))
    }

    async fn is_open(&mut self, window: &crate::Window) -> anyhow::Result<bool> {
        Ok(self
            .targets()
            .await?
            .iter()
            .any(|t| t["targetId"] == window.id.as_str()))
    }

    async fn evaluate_in(
        &mut self,
        window: &crate::Window,
        expression: &str,
    ) -> anyhow::Result<Value> {
        self.evaluate(&window.session, expression).await
    }

    async fn type_text(&mut self, window: &crate::Window, text: &str) -> anyhow::Result<()> {
        self.call(
            "Input.insertText",
            json!({"text": text}),
            Some(&window.session),
        )
        .await?;
        Ok(())
    }

    async fn click(&mut self, window: &crate::Window, x: f64, y: f64) -> anyhow::Result<()> {
        for kind in ["mousePressed", "mouseReleased"] {
            let clicked = self
                .call(
                    "Input.dispatchMouseEvent",
                    json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                    Some(&window.session),
                )
                .await;
            match clicked {
                Ok(_) => {}
                // The click may close the window before Chromium acknowledges the release.
                Err(e) if kind == "mouseReleased" && format!("{e}").starts_with(TARGET_CLOSED) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        Browser::log_tail(self)
    }
}
