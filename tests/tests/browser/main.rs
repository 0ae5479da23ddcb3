//! Browser end-to-end tests: a real headless Chromium or Firefox, the Passmesh extension from
//! `packaging/browser-extension`, `passmesh-native-host`, a real `passmeshd`, and a relying-party
//! web server verifying with webauthn-rs-core. A test passes only when the server verified what
//! the page got from `navigator.credentials`.
//!
//! The prompt window is driven as a person would: the test finds the prompt page (over the
//! DevTools protocol in Chromium, WebDriver BiDi in Firefox), reads what it shows, types the PIN
//! and clicks the buttons with trusted input events (no test hook in the extension). The flows
//! are written once against [`Driver`]; `chromium.rs` and `firefox.rs` implement it and run them.
//!
//! Chromium (`apt-get install chromium`) and Firefox ESR (`apt-get install firefox-esr`) must be
//! installed; without them the tests fail and say so.

mod chromium;
mod cross_device;
mod firefox;
mod host;
mod server;

use std::time::Duration;

use chromium::{Browser, EXTENSION_ID};
use passmesh_tests::rp::{User, UserVerificationPolicy};
use passmesh_tests::{Daemon, DaemonOptions, ops};
use serde_json::Value;
use server::{Event, RpServer};

/// Bound on a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(180);
/// Bound on one step (a prompt appearing, the server hearing back).
const STEP: Duration = Duration::from_secs(30);

/// What the shared flows need from a browser driver. Methods taking a [`Window`] act in the
/// extension's prompt window.
trait Driver {
    /// Opens `url` in a new tab.
    async fn open(&mut self, url: &str) -> anyhow::Result<()>;
    /// Opens `url` in a new tab where the browser's own WebAuthn is answered by a virtual
    /// authenticator (no person needed); returns a handle to it.
    async fn open_with_authenticator(&mut self, url: &str) -> anyhow::Result<Authenticator>;
    /// The credential ids the virtual authenticator holds.
    async fn authenticator_credentials(
        &mut self,
        authenticator: &Authenticator,
    ) -> anyhow::Result<Vec<Vec<u8>>>;
    /// The extension's prompt window, if one is open (attached, ready for [`Driver::evaluate_in`]).
    async fn find_prompt(&mut self) -> anyhow::Result<Option<Window>>;
    /// Whether `window` is still open.
    async fn is_open(&mut self, window: &Window) -> anyhow::Result<bool>;
    /// Evaluates `expression` (awaiting a promise) in `window`; returns its JSON value.
    async fn evaluate_in(&mut self, window: &Window, expression: &str) -> anyhow::Result<Value>;
    /// Types `text` into the focused element with trusted input.
    async fn type_text(&mut self, window: &Window, text: &str) -> anyhow::Result<()>;
    /// Clicks at (`x`, `y`) with trusted mouse events; the window may close on the click.
    async fn click(&mut self, window: &Window, x: f64, y: f64) -> anyhow::Result<()>;
    /// The browser's last log lines, for failure messages.
    fn log_tail(&self) -> String;
}

/// A browser window (tab or popup) a [`Driver`] can act in.
#[derive(Debug, Clone)]
struct Window {
    /// Chromium's target id, Firefox's browsing-context id.
    id: String,
    /// What commands go to: Chromium's session id, Firefox's browsing-context id.
    session: String,
}

/// A virtual authenticator standing for the browser's own WebAuthn (security keys, phones).
#[derive(Debug, Clone)]
struct Authenticator {
    /// The authenticator's id.
    id: String,
    /// Chromium: the session of the tab it was added to (its `WebAuthn` domain is per tab).
    session: String,
}

/// What the test's person does in the prompt.
#[derive(Debug, Clone, Copy)]
enum Action<'a> {
    /// Types `pin` (if any) and clicks Continue.
    Approve(Option<&'a str>),
    /// Clicks Cancel.
    Cancel,
    /// Clicks "Use another device".
    OtherDevice,
}

/// What the prompt showed before the click.
#[derive(Debug)]
struct Prompt {
    title: String,
    origin: String,
    passkeys: Vec<String>,
    pin_shown: bool,
    approve_enabled: bool,
}

const PROMPT_READY_JS: &str = r#"
new Promise((resolve, reject) => {
  const started = Date.now();
  const centre = (id) => {
    const r = document.getElementById(id).getBoundingClientRect();
    return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
  };
  (function poll() {
    const state = document.body && document.body.dataset.state;
    if (state === 'ready') {
      resolve({
        title: document.getElementById('title').textContent,
        origin: document.getElementById('origin').textContent,
        passkeys: Array.from(document.querySelectorAll('#passkeys li')).map((li) => li.textContent.trim()),
        pinShown: !document.getElementById('pin-row').hidden,
        approveEnabled: !document.getElementById('approve').disabled,
        buttons: { approve: centre('approve'), cancel: centre('cancel'), other: centre('other') },
      });
    } else if (Date.now() - started > 15000) {
      reject(new Error('the prompt did not become ready (state ' + state + ')'));
    } else {
      setTimeout(poll, 20);
    }
  })();
})
"#;

/// A prompt window the test is attached to.
struct OpenPrompt {
    window: Window,
    shown: Prompt,
    /// Centres of the buttons, by name (`approve`, `cancel`, `other`).
    buttons: Value,
}

/// Waits for the prompt window, attaches to it and reads what it shows once it is ready.
///
/// Fails early with whatever the relying party heard if the page finished (or failed) without
/// a prompt appearing.
async fn open_prompt(browser: &mut impl Driver, rp: &mut RpServer) -> anyhow::Result<OpenPrompt> {
    let deadline = tokio::time::Instant::now() + STEP;
    let window = loop {
        if let Some(event) = rp.try_event() {
            anyhow::bail!("the relying party heard {event:?} while the test waited for a prompt");
        }
        if let Some(w) = browser.find_prompt().await? {
            break w;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no prompt window within {STEP:?}\n{}", browser.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A window that has just opened may still swap its first document for prompt.html.
    let mut attempts = 0;
    let seen = loop {
        match browser.evaluate_in(&window, PROMPT_READY_JS).await {
            Ok(seen) => break seen,
            Err(e) if attempts < 20 && !format!("{e}").contains("did not become ready") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let shown = Prompt {
        title: seen["title"].as_str().unwrap_or_default().to_owned(),
        origin: seen["origin"].as_str().unwrap_or_default().to_owned(),
        passkeys: seen["passkeys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        pin_shown: seen["pinShown"] == true,
        approve_enabled: seen["approveEnabled"] == true,
    };
    Ok(OpenPrompt {
        window,
        shown,
        buttons: seen["buttons"].clone(),
    })
}

/// Types the PIN (if any) and clicks the button `action` names, with trusted input events.
async fn act(
    browser: &mut impl Driver,
    prompt: &OpenPrompt,
    action: Action<'_>,
) -> anyhow::Result<()> {
    let button = match action {
        Action::Approve(pin) => {
            if let Some(pin) = pin {
                browser
                    .evaluate_in(&prompt.window, "document.getElementById('pin').focus()")
                    .await?;
                browser.type_text(&prompt.window, pin).await?;
            }
            &prompt.buttons["approve"]
        }
        Action::Cancel => &prompt.buttons["cancel"],
        Action::OtherDevice => &prompt.buttons["other"],
    };
    let (Some(x), Some(y)) = (button["x"].as_f64(), button["y"].as_f64()) else {
        anyhow::bail!("the prompt gave no position for the button: {button}");
    };
    browser.click(&prompt.window, x, y).await
}

/// Waits until the prompt shows a message to the person (and is ready again); returns it.
async fn prompt_message(browser: &mut impl Driver, prompt: &OpenPrompt) -> anyhow::Result<String> {
    let script = r#"
new Promise((resolve, reject) => {
  const started = Date.now();
  (function poll() {
    const text = document.getElementById('message').textContent;
    if (document.body.dataset.state === 'ready' && text) resolve(text);
    else if (Date.now() - started > 15000) reject(new Error('no message in the prompt'));
    else setTimeout(poll, 20);
  })();
})
"#;
    let message = browser.evaluate_in(&prompt.window, script).await?;
    Ok(message.as_str().unwrap_or_default().to_owned())
}

/// Waits until the prompt window has closed (it closes itself once the decision is taken).
async fn wait_closed(browser: &mut impl Driver, prompt: &OpenPrompt) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    while browser.is_open(&prompt.window).await? {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the prompt did not close: {:?}", prompt.shown);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits for the prompt, reads it, acts, and waits until it has closed.
async fn answer_prompt(
    browser: &mut impl Driver,
    rp: &mut RpServer,
    action: Action<'_>,
) -> anyhow::Result<Prompt> {
    let prompt = open_prompt(browser, rp).await?;
    act(browser, &prompt, action).await?;
    wait_closed(browser, &prompt).await?;
    Ok(prompt.shown)
}

/// Starts a browser on `daemon` and waits until the extension's service worker runs.
async fn browser_for(daemon: &Daemon) -> Browser {
    let mut browser = Browser::launch(daemon.socket_path()).unwrap_or_else(|e| panic!("{e:#}"));
    browser
        .wait_for_target(
            &format!("chrome-extension://{EXTENSION_ID}/background.js"),
            STEP,
        )
        .await
        .unwrap_or_else(|e| panic!("the extension did not load under its fixed ID: {e:#}"));
    browser
}

async fn daemon() -> Daemon {
    Daemon::start(DaemonOptions::default())
        .await
        .unwrap_or_else(|e| panic!("passmeshd did not start: {e:#}"))
}

/// The device PIN the tests set.
const PIN: &str = "482916";

/// What a browser test starts with, whichever the browser: a daemon (with [`PIN`] set when asked), a client
/// of it, and the relying-party server for `user`.
struct Case {
    daemon: Daemon,
    client: passmesh_ipc::Client,
    rp: RpServer,
}

impl Case {
    async fn start(with_pin: bool, user: &str, uv: UserVerificationPolicy) -> Case {
        let daemon = daemon().await;
        let mut client = daemon.client().await.expect("connect");
        if with_pin {
            ops::set_pin(&mut client, PIN, None)
                .await
                .expect("set the PIN");
        }
        let rp = RpServer::start_with(User::new(user), uv)
            .await
            .expect("rp server");
        Case { daemon, client, rp }
    }
}

fn report_stage(event: &Event) -> Option<&str> {
    match event {
        Event::Report(v) => v["stage"].as_str(),
        _ => None,
    }
}

fn assert_all_checks_pass(what: &str, checks: &Value) {
    let map = checks
        .as_object()
        .unwrap_or_else(|| panic!("{what}: the page sent no checks: {checks}"));
    assert!(!map.is_empty(), "{what}: no checks");
    let failed: Vec<&String> = map
        .iter()
        .filter(|(_, v)| **v != true)
        .map(|(k, _)| k)
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: the page saw failures {failed:?} in {checks}"
    );
}

/// Runs the page's register-then-sign-in flow on `http://localhost`, answering both prompts
/// with `pin`, and returns whether the sign-in was user-verified.
async fn register_and_sign_in(
    browser: &mut impl Driver,
    rp: &mut RpServer,
    pin: Option<&str>,
) -> anyhow::Result<bool> {
    browser
        .open(&rp.page("localhost", "register-login"))
        .await?;

    let prompt = answer_prompt(browser, rp, Action::Approve(pin)).await?;
    assert_eq!(prompt.title, "Create a passkey for localhost", "{prompt:?}");
    assert!(prompt.origin.starts_with("http://localhost:"), "{prompt:?}");
    assert!(
        prompt.pin_shown,
        "userVerification preferred shows the PIN field: {prompt:?}"
    );
    match rp.next_event(STEP).await? {
        Event::Registered { credential, checks } => {
            assert_all_checks_pass("registration", &checks);
            assert_eq!(
                credential.user_verified,
                pin.is_some(),
                "UV at registration"
            );
        }
        other => anyhow::bail!("expected a verified registration, got {other:?}"),
    }

    let prompt = answer_prompt(browser, rp, Action::Approve(pin)).await?;
    assert_eq!(prompt.title, "Sign in to localhost", "{prompt:?}");
    assert_eq!(prompt.passkeys.len(), 1, "{prompt:?}");
    assert!(prompt.passkeys[0].contains("alice"), "{prompt:?}");
    assert!(prompt.approve_enabled, "{prompt:?}");
    let verified = match rp.next_event(STEP).await? {
        Event::SignedIn {
            checks,
            user_verified,
        } => {
            assert_all_checks_pass("sign-in", &checks);
            user_verified
        }
        other => anyhow::bail!("expected a verified sign-in, got {other:?}"),
    };
    let done = rp.next_event(STEP).await?;
    assert_eq!(report_stage(&done), Some("done"), "{done:?}");
    Ok(verified)
}

/// Runs `body` under [`TEST_LIMIT`], panicking with its error while daemon and browser still
/// live (so their logs are printed).
async fn bounded(body: impl Future<Output = anyhow::Result<()>>) {
    match tokio::time::timeout(TEST_LIMIT, body).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e:#}"),
        Err(_) => panic!("the test did not finish within {TEST_LIMIT:?}"),
    }
}

/// Waits for the page's verified registration; returns the credential id the RP stored.
async fn expect_registered(rp: &mut RpServer) -> anyhow::Result<Vec<u8>> {
    match rp.next_event(STEP).await? {
        Event::Registered { credential, checks } => {
            assert_all_checks_pass("registration", &checks);
            Ok(credential.cred_id.to_vec())
        }
        other => anyhow::bail!("expected a verified registration, got {other:?}"),
    }
}

/// Waits for the page's verified sign-in and its final report.
async fn expect_signed_in(rp: &mut RpServer) -> anyhow::Result<()> {
    match rp.next_event(STEP).await? {
        Event::SignedIn { checks, .. } => assert_all_checks_pass("sign-in", &checks),
        other => anyhow::bail!("expected a verified sign-in, got {other:?}"),
    }
    let done = rp.next_event(STEP).await?;
    assert_eq!(report_stage(&done), Some("done"), "{done:?}");
    Ok(())
}

/// The flows every browser runs, each against a browser whose extension is loaded.
mod flows {
    use super::*;

    /// Registers and signs in with the device PIN typed into both prompts; the daemon then
    /// holds the page's passkey.
    pub async fn pin_register_and_sign_in(
        browser: &mut impl Driver,
        rp: &mut RpServer,
        client: &mut passmesh_ipc::Client,
        pin: &str,
    ) -> anyhow::Result<()> {
        let verified = register_and_sign_in(browser, rp, Some(pin)).await?;
        assert!(verified, "the PIN typed into the prompt must give UV");
        let stored = ops::list(client, Some("localhost")).await?;
        assert_eq!(stored.len(), 1, "the daemon holds the page's passkey");
        assert_eq!(stored[0].user_name, "alice");
        Ok(())
    }

    /// After a registration on `localhost`, a page on `127.0.0.1` can neither use that passkey
    /// (refused by Passmesh before any prompt) nor see it in its own prompt.
    pub async fn another_origin(
        browser: &mut impl Driver,
        rp: &mut RpServer,
    ) -> anyhow::Result<()> {
        let verified = register_and_sign_in(browser, rp, None).await?;
        assert!(!verified, "no PIN, no UV");

        browser.open(&rp.page("127.0.0.1", "steal")).await?;
        // First the page asks for the localhost passkey with rpId "localhost": refused before
        // any prompt, by the host's origin check (the daemon's rule).
        let event = rp.next_event(STEP).await?;
        let Event::Report(report) = &event else {
            anyhow::bail!("expected the page's report, got {event:?}");
        };
        assert_eq!(report["stage"], "their-rp-id", "{report}");
        assert_eq!(report["name"], "SecurityError", "{report}");
        assert!(
            report["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not match the origin")),
            "the refusal comes from Passmesh, not from the browser: {report}"
        );

        // Then with its own rpId: the prompt lists nothing, and Cancel gives NotAllowedError.
        let prompt = answer_prompt(browser, rp, Action::Cancel).await?;
        assert_eq!(prompt.title, "Sign in to 127.0.0.1", "{prompt:?}");
        assert!(prompt.passkeys.is_empty(), "{prompt:?}");
        assert!(!prompt.approve_enabled, "{prompt:?}");
        let event = rp.next_event(STEP).await?;
        let Event::Report(report) = &event else {
            anyhow::bail!("expected the page's report, got {event:?}");
        };
        assert_eq!(report["stage"], "own-rp-id", "{report}");
        assert_eq!(report["name"], "NotAllowedError", "{report}");
        let done = rp.next_event(STEP).await?;
        assert_eq!(report_stage(&done), Some("done"), "{done:?}");
        Ok(())
    }

    /// With a host that cannot reach any daemon: no prompt appears, and the browser's own
    /// WebAuthn (a virtual authenticator) makes the passkey the server verifies.
    pub async fn without_daemon(
        browser: &mut impl Driver,
        rp: &mut RpServer,
    ) -> anyhow::Result<()> {
        let authenticator = browser
            .open_with_authenticator(&rp.page("localhost", "register-login"))
            .await?;
        // No prompt may appear (nobody would click it, and the flow would time out).
        let id = expect_registered(rp).await?;
        expect_signed_in(rp).await?;
        let held = browser.authenticator_credentials(&authenticator).await?;
        assert_eq!(
            held,
            vec![id],
            "the browser's own authenticator made the passkey the server stored"
        );
        Ok(())
    }

    /// "Use another device" in both prompts hands the requests to the browser's own WebAuthn;
    /// the daemon holds nothing.
    pub async fn other_device(
        browser: &mut impl Driver,
        rp: &mut RpServer,
        client: &mut passmesh_ipc::Client,
    ) -> anyhow::Result<()> {
        let authenticator = browser
            .open_with_authenticator(&rp.page("localhost", "register-login"))
            .await?;
        let prompt = answer_prompt(browser, rp, Action::OtherDevice).await?;
        assert_eq!(prompt.title, "Create a passkey for localhost", "{prompt:?}");
        let id = expect_registered(rp).await?;
        let prompt = answer_prompt(browser, rp, Action::OtherDevice).await?;
        assert_eq!(prompt.title, "Sign in to localhost", "{prompt:?}");
        assert!(
            prompt.passkeys.is_empty(),
            "Passmesh holds nothing yet: {prompt:?}"
        );
        expect_signed_in(rp).await?;
        let held = browser.authenticator_credentials(&authenticator).await?;
        assert_eq!(held, vec![id], "the browser's own authenticator was used");
        assert!(
            ops::list(client, None).await?.is_empty(),
            "the daemon was not used"
        );
        Ok(())
    }

    /// A prompt nobody answers ends at the request's `timeout` (2 s here): it closes by itself,
    /// the page gets NotAllowedError and the daemon holds nothing.
    pub async fn unanswered_prompt_times_out(
        browser: &mut impl Driver,
        rp: &mut RpServer,
        client: &mut passmesh_ipc::Client,
    ) -> anyhow::Result<()> {
        let page = format!("{}&timeout=2000", rp.page("localhost", "register"));
        browser.open(&page).await?;
        let prompt = open_prompt(browser, rp).await?;
        let shown = std::time::Instant::now();
        wait_closed(browser, &prompt).await?;
        let event = rp.next_event(STEP).await?;
        let Event::Report(report) = &event else {
            anyhow::bail!("expected the page's report, got {event:?}");
        };
        assert_eq!(report["stage"], "register", "{report}");
        assert_eq!(report["name"], "NotAllowedError", "{report}");
        assert!(
            shown.elapsed() < Duration::from_secs(15),
            "the prompt outlived the request's timeout: {:?}",
            shown.elapsed()
        );
        assert!(
            ops::list(client, None).await?.is_empty(),
            "nothing was created"
        );
        Ok(())
    }

    /// With UV required: an empty PIN is held back in the prompt, a wrong PIN shows the daemon's
    /// verdict and can be typed again, the right one registers with UV; cancelling the sign-in
    /// gives the page NotAllowedError. The RP must require UV.
    pub async fn wrong_pin_then_cancel(
        browser: &mut impl Driver,
        rp: &mut RpServer,
        pin: &str,
    ) -> anyhow::Result<()> {
        browser
            .open(&rp.page("localhost", "register-login"))
            .await?;
        let prompt = open_prompt(browser, rp).await?;
        assert!(prompt.shown.pin_shown, "{:?}", prompt.shown);
        act(browser, &prompt, Action::Approve(None)).await?;
        let message = prompt_message(browser, &prompt).await?;
        assert!(
            message.contains("PIN"),
            "an empty PIN is not sent: {message}"
        );
        act(browser, &prompt, Action::Approve(Some("000000"))).await?;
        let message = prompt_message(browser, &prompt).await?;
        assert!(
            message.contains("wrong PIN"),
            "the daemon's verdict is shown: {message}"
        );
        act(browser, &prompt, Action::Approve(Some(pin))).await?;
        wait_closed(browser, &prompt).await?;
        match rp.next_event(STEP).await? {
            Event::Registered { credential, .. } => {
                assert!(credential.user_verified, "registered with UV")
            }
            other => anyhow::bail!("expected a verified registration, got {other:?}"),
        }
        // The sign-in requires UV too: cancelling it is the person's NotAllowedError.
        answer_prompt(browser, rp, Action::Cancel).await?;
        let event = rp.next_event(STEP).await?;
        let Event::Report(report) = &event else {
            anyhow::bail!("expected the page's report, got {event:?}");
        };
        assert_eq!(report["stage"], "login", "{report}");
        assert_eq!(report["name"], "NotAllowedError", "{report}");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_registers_and_signs_in_with_the_device_pin() {
    let mut c = Case::start(true, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = browser_for(&c.daemon).await;
    bounded(flows::pin_register_and_sign_in(
        &mut browser,
        &mut c.rp,
        &mut c.client,
        PIN,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_prompt_times_out_with_not_allowed() {
    let mut c = Case::start(false, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = browser_for(&c.daemon).await;
    bounded(flows::unanswered_prompt_times_out(
        &mut browser,
        &mut c.rp,
        &mut c.client,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_origin_cannot_use_the_passkey() {
    let mut c = Case::start(false, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = browser_for(&c.daemon).await;
    bounded(flows::another_origin(&mut browser, &mut c.rp)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_daemon_the_browser_answers_itself() {
    let nowhere = tempfile::tempdir().expect("tempdir");
    let socket = nowhere.path().join("no-daemon-here.sock");
    let mut rp = RpServer::start(User::new("alice"))
        .await
        .expect("rp server");
    let mut browser = Browser::launch(&socket).unwrap_or_else(|e| panic!("{e:#}"));

    bounded(async {
        browser
            .wait_for_target(
                &format!("chrome-extension://{EXTENSION_ID}/background.js"),
                STEP,
            )
            .await?;
        flows::without_daemon(&mut browser, &mut rp).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_another_device_hands_the_request_to_the_browser() {
    let mut c = Case::start(false, "alice", UserVerificationPolicy::Preferred).await;
    let mut browser = browser_for(&c.daemon).await;
    bounded(flows::other_device(&mut browser, &mut c.rp, &mut c.client)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_can_be_typed_again_when_verification_is_required() {
    let mut c = Case::start(true, "carol", UserVerificationPolicy::Required).await;
    let mut browser = browser_for(&c.daemon).await;
    bounded(flows::wrong_pin_then_cancel(&mut browser, &mut c.rp, PIN)).await;
}
