//! The service lifecycle as systemd sees it (`Type=notify`): `READY=1` on `$NOTIFY_SOCKET` only once the
//! socket answers, `STOPPING=1` on SIGTERM, exit status 0 within 2 s, and nothing acknowledged lost
//! across the restart. The test plays the service manager: it binds the notification socket itself.

use std::ffi::OsString;
use std::fs::File;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use passmesh_ipc::{Client, RequestBody, ResponseBody};
use passmesh_tests::rp::UserVerificationPolicy;
use passmesh_tests::{DaemonOptions, binaries, ops};
use rustix::process::{Pid, Signal};
use tokio::net::UnixDatagram;

use crate::{example_rp, register_user, sign_in};

/// What systemd promises a stopping service by default is 90 s; Passmesh promises 2.
const STOP_DEADLINE: Duration = Duration::from_secs(2);
/// Start-up of a debug daemon on two busy cores.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The service manager's side of `$NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    address: OsString,
}

impl Manager {
    /// Listens on a socket file in `dir`.
    fn at_path(dir: &Path) -> Manager {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
        Manager {
            socket,
            address: path.into_os_string(),
        }
    }

    /// Listens on an abstract socket (`@name`), as systemd itself does.
    fn abstract_named(name: &str) -> Manager {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let std = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
        std.set_nonblocking(true).expect("nonblocking");
        Manager {
            socket: UnixDatagram::from_std(std).expect("register with tokio"),
            address: format!("@{name}").into(),
        }
    }

    /// Receives notifications until one carries the assignment `wanted` (e.g. `READY=1`); returns every
    /// message received, in order. Panics with what did arrive if `wanted` does not within `timeout`.
    async fn until(&self, wanted: &str, timeout: Duration, service: &Service) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let done = message.lines().any(|l| l == wanted);
                    seen.push(message);
                    if done {
                        return seen;
                    }
                }
                Ok(Err(e)) => panic!("receiving notifications: {e}"),
                Err(_) => panic!(
                    "no {wanted} within {timeout:?}; received {seen:?}\n{}",
                    service.log()
                ),
            }
        }
    }
}

/// A `passmeshd` started as systemd would start it, in a private directory that survives restarts.
struct Service {
    dir: PathBuf,
    child: Option<Child>,
}

impl Service {
    fn new(dir: &Path) -> Service {
        // Sync runs (its shutdown is part of what is timed) but stays on loopback.
        std::fs::write(
            dir.join("config.toml"),
            "[network]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\n",
        )
        .expect("write config");
        Service {
            dir: dir.to_path_buf(),
            child: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("ipc.sock")
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        format!("--- passmeshd stderr ---\n{log}")
    }

    /// Spawns the daemon with `NOTIFY_SOCKET` set; does not wait for anything.
    fn spawn(&mut self, notify: &OsString) {
        let bins = binaries().unwrap_or_else(|e| panic!("{e:#}"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("open log");
        let child = Command::new(&bins.daemon)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .args(["--keystore", "software"])
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn passmeshd");
        self.child = Some(child);
    }

    fn sigterm(&self) {
        let child = self.child.as_ref().expect("running");
        rustix::process::kill_process(Pid::from_child(child), Signal::TERM).expect("SIGTERM");
    }

    /// Waits for the exit until `deadline`; `None` if it is still running then.
    async fn exit_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// One `status` call on a fresh connection, no retries: after `READY=1` the socket must serve.
async fn status_answers(socket: &Path, service: &Service) {
    let mut client = Client::connect(socket).await.unwrap_or_else(|e| {
        panic!(
            "READY=1 was sent but connecting failed: {e}\n{}",
            service.log()
        )
    });
    match client.call(RequestBody::Status).await {
        Ok(ResponseBody::Status { .. }) => {}
        other => panic!(
            "READY=1 was sent but `status` answered {other:?}\n{}",
            service.log()
        ),
    }
}

#[tokio::test]
async fn ready_is_sent_once_the_socket_answers() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::at_path(dir.path());
    let mut service = Service::new(dir.path());
    service.spawn(&manager.address);

    let messages = manager.until("READY=1", READY_TIMEOUT, &service).await;
    status_answers(&service.socket(), &service).await;

    let ready = messages.last().unwrap();
    let expected = format!("STATUS=serving {}", service.socket().display());
    assert!(
        ready.lines().any(|l| l == expected),
        "READY=1 without `{expected}`: {ready:?}"
    );
    // Before it was ready it said what it was doing, and never claimed to be stopping.
    assert!(
        messages
            .iter()
            .flat_map(|m| m.lines())
            .all(|l| l != "STOPPING=1"),
        "{messages:?}"
    );
    assert!(
        messages[0].starts_with("STATUS="),
        "first notification: {messages:?}"
    );
}

#[tokio::test]
async fn ready_reaches_an_abstract_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let unique = dir.path().file_name().unwrap().to_string_lossy();
    let name = format!("passmesh-lifecycle-{}-{unique}", std::process::id());
    let manager = Manager::abstract_named(&name);
    let mut service = Service::new(dir.path());
    service.spawn(&manager.address);

    manager.until("READY=1", READY_TIMEOUT, &service).await;
    status_answers(&service.socket(), &service).await;
}

#[tokio::test]
async fn sigterm_stops_within_two_seconds_and_the_passkey_survives() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::at_path(dir.path());
    let mut service = Service::new(dir.path());
    service.spawn(&manager.address);
    manager.until("READY=1", READY_TIMEOUT, &service).await;

    let rp = example_rp();
    let mut client = Client::connect(&service.socket()).await.unwrap();
    let alice = register_user(&mut client, &rp, "alice").await;
    // The connection stays open, as a browser's native host keeps it: it must not hold up the exit.

    let sent = Instant::now();
    service.sigterm();
    let stopping = manager.until("STOPPING=1", STOP_DEADLINE, &service).await;
    let status = service.exit_by(sent + STOP_DEADLINE).await;
    let took = sent.elapsed();
    let Some(status) = status else {
        panic!(
            "passmeshd still runs {took:?} after SIGTERM\n{}",
            service.log()
        );
    };
    assert!(
        status.success(),
        "exit status {status} after SIGTERM\n{}",
        service.log()
    );
    assert!(
        stopping
            .last()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("STATUS=")),
        "STOPPING=1 without a status line: {stopping:?}"
    );
    assert!(
        !service.socket().exists(),
        "the socket file was left behind"
    );
    eprintln!("passmeshd exited {took:?} after SIGTERM");
    drop(client);

    // Started again, as `Restart=` or the next boot would: the passkey is there and signs.
    service.spawn(&manager.address);
    manager.until("READY=1", READY_TIMEOUT, &service).await;
    let mut client = Client::connect(&service.socket()).await.unwrap();
    let listed = ops::list(&mut client, None).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].credential_id.as_bytes(), alice.id());
    let (assertion, _) = sign_in(
        &mut client,
        &rp,
        &[&alice],
        &[&alice],
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(assertion.raw_id.as_bytes(), alice.id());
}

#[tokio::test]
async fn a_broken_notify_socket_does_not_keep_the_daemon_from_serving() {
    // A relative path is not a valid NOTIFY_SOCKET; a path nobody listens on fails at send time.
    for value in ["relative/notify", "/nonexistent/passmesh/notify"] {
        let mut d = passmesh_tests::Daemon::start(DaemonOptions {
            env: vec![("NOTIFY_SOCKET".to_owned(), value.to_owned())],
            ..DaemonOptions::default()
        })
        .await
        .unwrap_or_else(|e| panic!("NOTIFY_SOCKET={value}: {e:#}"));
        let mut c = d.client().await.unwrap();
        assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 0);
        assert!(
            d.log().contains(value),
            "NOTIFY_SOCKET={value}: the problem is not logged\n{}",
            d.log_tail()
        );
        drop(c);
        let status = d.stop().await.unwrap();
        assert!(status.success(), "NOTIFY_SOCKET={value}: exit {status}");
    }
}

/// A sign-in allowing `reg` with `userVerification: discouraged` and `pin`; the daemon's error text on failure.
async fn try_get(
    client: &mut Client,
    reg: &crate::Registered,
    pin: Option<&str>,
) -> Result<(), String> {
    let rp = example_rp();
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&reg.credential),
            UserVerificationPolicy::Discouraged_DO_NOT_USE,
        )
        .expect("request options");
    ops::get(client, rp.origin(), request, pin)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn sighup_reloads_the_config_and_a_broken_config_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::at_path(dir.path());
    let mut service = Service::new(dir.path());
    service.spawn(&manager.address);
    manager.until("READY=1", READY_TIMEOUT, &service).await;
    let rp = example_rp();
    let mut client = Client::connect(&service.socket()).await.unwrap();
    let alice = register_user(&mut client, &rp, "alice").await;
    ops::set_pin(&mut client, "2468", None)
        .await
        .expect("set PIN");
    try_get(&mut client, &alice, None)
        .await
        .expect("no PIN needed while the RP discourages verification");
    let hangup = || {
        let child = service.child.as_ref().expect("running");
        rustix::process::kill_process(Pid::from_child(child), Signal::HUP).expect("SIGHUP");
    };

    // The administrator requires the PIN for everything and allows 2 wrong ones; also moves the listener,
    // which only a restart can apply.
    std::fs::write(
        dir.path().join("config.toml"),
        "[network]\nlisten = [\"/ip4/127.0.0.2/tcp/0\"]\nmdns = false\n\
         [pin]\nalways_required = true\nmax_attempts = 2\n",
    )
    .unwrap();
    hangup();
    let seen = manager.until("READY=1", READY_TIMEOUT, &service).await;
    let reloading = seen
        .iter()
        .find(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {seen:?}"));
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    assert!(
        seen.last().unwrap().contains("STATUS=config reloaded"),
        "{seen:?}"
    );
    let refused = try_get(&mut client, &alice, None)
        .await
        .expect_err("the PIN is required now");
    assert!(
        refused.contains("user verification is required"),
        "{refused}"
    );
    try_get(&mut client, &alice, Some("2468"))
        .await
        .expect("the right PIN signs");
    let wrong = try_get(&mut client, &alice, Some("1357"))
        .await
        .expect_err("a wrong PIN");
    assert!(
        wrong.contains("1 attempt(s) left"),
        "max_attempts = 2: {wrong}"
    );
    let log = service.log();
    assert!(
        log.contains("they take effect at the next restart") && log.contains("network.listen"),
        "{log}"
    );
    assert!(
        !log.contains("127.0.0.2"),
        "the listener moved without a restart\n{log}"
    );

    // A config that does not parse (or is out of range) is reported and changes nothing.
    std::fs::write(dir.path().join("config.toml"), "[pin]\nmax_attempts = 0\n").unwrap();
    hangup();
    let seen = manager.until("READY=1", READY_TIMEOUT, &service).await;
    assert!(
        seen.last().unwrap().contains("config reload failed"),
        "{seen:?}"
    );
    assert!(
        service
            .log()
            .contains("cannot reload the config; the running one stays"),
        "{}",
        service.log()
    );
    let still = try_get(&mut client, &alice, None)
        .await
        .expect_err("the PIN is still required");
    assert!(still.contains("user verification is required"), "{still}");
    try_get(&mut client, &alice, Some("2468"))
        .await
        .expect("the daemon serves on");
}
