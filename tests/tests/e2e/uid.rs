//! Callers are identified by the kernel (SO_PEERCRED), not by anything they say: a process of another uid
//! that reaches the socket is refused and learns nothing. Needs root to act as another uid.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use passmesh_tests::{binaries, ops};

use crate::{client, daemon, example_rp, register_user};

const NOBODY: &str = "65534";

#[tokio::test]
async fn a_caller_of_another_uid_is_refused_even_when_the_socket_is_open_to_it() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: acting as another uid needs root (CI runs as root)");
        return;
    }
    let d = daemon().await;
    let mut c = client(&d).await;
    register_user(&mut c, &example_rp(), "alice").await;
    let before = ops::snapshot(&mut c).await.expect("snapshot");

    // Open the way to the socket for everyone, as a careless admin might.
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o711)).expect("chmod dir");
    std::fs::set_permissions(d.socket_path(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");

    let cli = binaries().expect("binaries").cli.clone();
    let socket = d.socket_path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("setpriv")
            .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
            .arg(&cli)
            .arg("--socket")
            .arg(&socket)
            .args(["--json", "list"])
            .output()
            .expect("setpriv runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {stdout} stderr {stderr}"
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json error");
    assert_eq!(reply["error"]["name"], "NotAllowedError", "{reply}");
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert!(
        !stdout.contains("alice"),
        "another uid must not see the vault: {stdout}"
    );

    // The vault's files are private to the daemon's user.
    let mode = std::fs::metadata(d.state_dir().join("users/0"))
        .expect("vault dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "vault directory mode {mode:o}");

    assert_eq!(ops::snapshot(&mut c).await.expect("snapshot"), before);
}
