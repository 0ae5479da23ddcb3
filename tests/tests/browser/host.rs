//! `passmesh-native-host` on its own, spoken to as a browser would: native-endian frames on
//! stdio, the origin inside the request as the extension's service worker puts it there.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use passmesh_ipc::RegistrationResponseJson;
use passmesh_tests::rp::{RegistrationOptions, RelyingParty, User};
use serde_json::{Value, json};

use crate::chromium::native_host;

const REPLY_LIMIT: Duration = Duration::from_secs(20);

/// A running host with pipes on both ends.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: mpsc::Receiver<Vec<u8>>,
}

impl Host {
    fn start(socket: &Path) -> Host {
        let host = native_host().unwrap_or_else(|e| panic!("{e:#}"));
        let mut child = Command::new(host)
            .arg("--socket")
            .arg(socket)
            // What Chromium passes: the calling extension's origin.
            .arg(format!("chrome-extension://{}/", crate::EXTENSION_ID))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn passmesh-native-host");
        let mut stdout = child.stdout.take().expect("stdout pipe");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut header = [0u8; 4];
                if stdout.read_exact(&mut header).is_err() {
                    return;
                }
                let mut payload = vec![0u8; u32::from_ne_bytes(header) as usize];
                if stdout.read_exact(&mut payload).is_err() || tx.send(payload).is_err() {
                    return;
                }
            }
        });
        Host {
            stdin: child.stdin.take(),
            child,
            replies,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("write to the host");
        stdin.flush().expect("flush");
    }

    fn reply(&mut self) -> Value {
        let bytes = self
            .replies
            .recv_timeout(REPLY_LIMIT)
            .expect("the host answers within 20 s");
        serde_json::from_slice(&bytes).expect("the host answers JSON")
    }

    fn ask(&mut self, request: &Value) -> Value {
        let payload = serde_json::to_vec(request).expect("encode");
        let mut frame = (payload.len() as u32).to_ne_bytes().to_vec();
        frame.extend_from_slice(&payload);
        self.send_raw(&frame);
        self.reply()
    }

    /// Closes stdin and waits (bounded) for the exit; returns whether it exited successfully.
    fn close(&mut self) -> bool {
        self.stdin = None;
        let deadline = Instant::now() + REPLY_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the host did not exit after stdin closed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_name(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "expected an error: {reply}");
    reply["error"]["name"].as_str().unwrap_or("")
}

#[tokio::test]
async fn the_host_relays_create_and_list_for_the_senders_origin() {
    let daemon = crate::daemon().await;
    let origin = "http://localhost:8080";
    let rp = RelyingParty::new("localhost", origin).expect("rp");
    let user = User::new("bob");
    let (options, state) = rp
        .begin_registration(&user, &RegistrationOptions::default())
        .expect("options");
    let mut host = Host::start(daemon.socket_path());

    let reply = host.ask(&json!({"id": 7, "type": "create", "origin": origin, "options": options}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["id"], 7, "the daemon's id comes back: {reply}");
    let credential: RegistrationResponseJson =
        serde_json::from_value(reply["credential"].clone()).expect("a RegistrationResponseJSON");
    rp.finish_registration(&credential, &state)
        .expect("the relying party accepts the registration made through the host");

    let listed = host.ask(&json!({"id": 8, "type": "list", "origin": origin, "rpId": "localhost"}));
    assert_eq!(listed["ok"], true, "{listed}");
    assert_eq!(listed["passkeys"][0]["userName"], "bob", "{listed}");
    assert!(
        host.close(),
        "the host exits cleanly when the browser closes stdin"
    );
}

#[tokio::test]
async fn the_host_refuses_what_a_browser_must_not_ask() {
    let daemon = crate::daemon().await;
    let mut host = Host::start(daemon.socket_path());

    let reply = host.ask(&json!({"id": 1, "type": "delete", "credentialId": "AAAA"}));
    assert_eq!(error_name(&reply), "NotSupportedError", "{reply}");
    let reply = host.ask(&json!({"id": 2, "type": "setPin", "pin": "123456"}));
    assert_eq!(error_name(&reply), "NotSupportedError", "{reply}");
    let reply = host.ask(&json!({"id": 3, "type": "get", "options": {"challenge": "AAAA"}}));
    assert_eq!(
        error_name(&reply),
        "TypeError",
        "no origin, no request: {reply}"
    );
    let reply = host.ask(
        &json!({"id": 4, "type": "list", "origin": "http://127.0.0.1:8080", "rpId": "localhost"}),
    );
    assert_eq!(error_name(&reply), "SecurityError", "{reply}");
    host.send_raw(&3u32.to_ne_bytes());
    host.send_raw(b"{x}");
    assert_eq!(error_name(&host.reply()), "SyntaxError");

    // Still usable after all that; then a header over 1 MiB ends the conversation.
    let reply = host
        .ask(&json!({"id": 5, "type": "list", "origin": "http://localhost", "rpId": "localhost"}));
    assert_eq!(reply["ok"], true, "{reply}");
    host.send_raw(&(2u32 << 20).to_ne_bytes());
    assert_eq!(error_name(&host.reply()), "ConstraintError");
    assert!(host.close(), "the host leaves after an unframeable message");
}

#[tokio::test]
async fn the_host_says_when_no_daemon_answers() {
    let nowhere = tempfile::tempdir().expect("tempdir");
    let mut host = Host::start(&nowhere.path().join("missing.sock"));
    let reply = host
        .ask(&json!({"id": 1, "type": "list", "origin": "http://localhost", "rpId": "localhost"}));
    assert_eq!(
        reply["unavailable"], true,
        "the extension falls back on this flag: {reply}"
    );
    assert_eq!(reply["id"], 1, "{reply}");
}
