//! Service-manager notifications (the `sd_notify` protocol), without libsystemd.
//!
//! A service started with `Type=notify` finds a Unix datagram socket in `$NOTIFY_SOCKET` (a path, or
//! `@name` for the abstract namespace) and sends it newline-separated `KEY=VALUE` assignments:
//! `READY=1` once it serves, `STATUS=…` for `systemctl status`, `STOPPING=1` when it begins to shut down.
//! Without `$NOTIFY_SOCKET` there is nobody to tell and [`Notifier::from_env`] gives `None`.
//!
//! Notifications are best effort: a daemon must not fail because its service manager went away, so
//! the callers log a failed send and carry on.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// How long one notification may block: the manager's socket buffer is only full if it is stuck, and
/// then waiting longer would only delay the daemon.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor `@` followed by an abstract socket name.
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract socket name (@name)")]
    Address(String),
    /// The datagram socket could not be created or the message could not be sent.
    #[error("cannot notify the service manager at {address}: {source}")]
    Send {
        /// The socket address, as given in `$NOTIFY_SOCKET`.
        address: String,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for error messages.
    shown: String,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when it is unset or empty (not started by a service
    /// manager that wants to hear from us).
    pub fn from_env() -> Result<Option<Notifier>, Error> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(value) if !value.is_empty() => Notifier::new(&value).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for the socket named like `$NOTIFY_SOCKET`: an absolute path, or `@name` for the
    /// abstract namespace.
    pub fn new(value: &OsStr) -> Result<Notifier, Error> {
        let shown = value.to_string_lossy().into_owned();
        let address = address(value).ok_or_else(|| Error::Address(shown.clone()))?;
        let send_error = |source| Error::Send {
            address: shown.clone(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(send_error)?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(send_error)?;
        Ok(Notifier {
            socket,
            address,
            shown,
        })
    }

    /// Sends `READY=1` with a status line: the daemon serves requests from now on.
    pub fn ready(&self, status: &str) -> Result<(), Error> {
        self.send(&[("READY", "1"), ("STATUS", status)])
    }

    /// Sends a status line, shown by `systemctl status`.
    pub fn status(&self, status: &str) -> Result<(), Error> {
        self.send(&[("STATUS", status)])
    }

    /// Sends `RELOADING=1` with the monotonic time (as `Type=notify-reload` wants): the daemon is reloading its
    /// configuration; [`Notifier::ready`] follows when done.
    pub fn reloading(&self, status: &str) -> Result<(), Error> {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
        self.send(&[
            ("RELOADING", "1"),
            ("MONOTONIC_USEC", &usec.to_string()),
            ("STATUS", status),
        ])
    }

    /// Sends `STOPPING=1` with a status line: the daemon has begun to shut down.
    pub fn stopping(&self, status: &str) -> Result<(), Error> {
        self.send(&[("STOPPING", "1"), ("STATUS", status)])
    }

    /// Sends the assignments as one datagram. A newline inside a value would start a new assignment,
    /// so it is sent as a space.
    pub fn send(&self, assignments: &[(&str, &str)]) -> Result<(), Error> {
        let message = assignments
            .iter()
            .map(|(key, value)| format!("{key}={}", value.replace(['\n', '\r'], " ")))
            .collect::<Vec<_>>()
            .join("\n");
        self.socket
            .send_to_addr(message.as_bytes(), &self.address)
            .map(drop)
            .map_err(|source| Error::Send {
                address: self.shown.clone(),
                source,
            })
    }
}

/// Parses `$NOTIFY_SOCKET`: `@name` is in the abstract namespace, anything else must be an absolute
/// path (systemd's other forms, such as `vsock:`, are for virtual machines and not supported).
fn address(value: &OsStr) -> Option<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) if !name.is_empty() => SocketAddr::from_abstract_name(name).ok(),
        Some((b'/', _)) => SocketAddr::from_pathname(Path::new(value)).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_ready_status_and_stopping_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.as_os_str()).unwrap();

        notifier.ready("serving /run/x.sock").unwrap();
        assert_eq!(receive(&manager), "READY=1\nSTATUS=serving /run/x.sock");
        notifier.status("still here").unwrap();
        assert_eq!(receive(&manager), "STATUS=still here");
        notifier.stopping("bye").unwrap();
        assert_eq!(receive(&manager), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("passmesh-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.ready("ok").unwrap();
        assert_eq!(receive(&manager), "READY=1\nSTATUS=ok");
    }

    #[test]
    fn a_newline_in_a_status_cannot_inject_an_assignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.as_os_str()).unwrap();
        notifier.status("failed\nREADY=1").unwrap();
        assert_eq!(receive(&manager), "STATUS=failed READY=1");
    }

    #[test]
    fn rejects_relative_empty_and_vsock_addresses() {
        for value in ["notify.sock", "", "@", "vsock:2:1234"] {
            assert!(
                matches!(Notifier::new(OsStr::new(value)), Err(Error::Address(_))),
                "{value:?} was accepted"
            );
        }
    }

    #[test]
    fn a_vanished_manager_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(dir.path().join("gone").as_os_str()).unwrap();
        assert!(matches!(notifier.ready("x"), Err(Error::Send { .. })));
    }
}
