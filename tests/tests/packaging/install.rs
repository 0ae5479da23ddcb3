//! The package installed for real: `dpkg -i` on a throwaway copy of this machine (an overlay of `/` with a
//! tmpfs on top, in a private mount namespace, entered with `chroot`), so the maintainer scripts run with the
//! real `systemd-sysusers`, `systemd-tmpfiles` and `deb-systemd-helper` while the machine itself stays as it
//! was. There is no systemd as PID 1 here, so the test starts the installed unit's `ExecStart=` as the unit
//! would: as its `User=`/`Group=`/`SupplementaryGroups=`, with its `UMask=`, `StateDirectory=` and
//! `RuntimeDirectory=`. Then two local users use the installed `passmesh` with no flags, and `dpkg --purge`
//! takes it all away again.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use passmesh_tests::rp::{RegistrationOptions, RelyingParty, User};

use crate::deb;

const ALICE: u32 = 61_101;
const BOB: u32 = 61_102;

/// A private mount namespace in which `merged` is `/` plus a throwaway upper layer.
struct Overlay {
    /// Keeps the namespace alive (`sleep`); killing it lets the mounts go.
    holder: Child,
    merged: PathBuf,
    _dir: tempfile::TempDir,
    /// Processes started inside, killed on drop.
    inside: Vec<Child>,
}

impl Overlay {
    fn new() -> Overlay {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().to_path_buf();
        let merged = base.join("m");
        let script = format!(
            "set -e
             mount -t tmpfs tmpfs {base}
             mkdir {base}/u {base}/w {base}/m
             mount -t overlay overlay -o lowerdir=/,upperdir={base}/u,workdir={base}/w {base}/m
             mount -t proc proc {base}/m/proc
             mount --rbind /dev {base}/m/dev
             mount --rbind /sys {base}/m/sys
             mount -t tmpfs -o mode=0755 tmpfs {base}/m/run
             echo ready
             exec sleep 100000",
            base = base.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare runs");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "ready", "the overlay could not be set up");
        Overlay {
            holder,
            merged,
            _dir: dir,
            inside: Vec::new(),
        }
    }

    /// `program args…` inside the copy, as root, with a clean environment.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.holder.id().to_string())
            .args(["--mount", "--", "chroot"])
            .arg(&self.merged)
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
            ])
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs a command inside to its end, feeding `stdin`.
    fn run(&self, program: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(program, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }

    /// Like [`Overlay::run`], panicking with both streams unless it exits 0; stdout.
    fn ok(&self, program: &str, args: &[&str], stdin: &str) -> String {
        let out = self.run(program, args, stdin);
        assert!(
            out.status.success(),
            "{program} {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `path` exists inside the copy (a dangling symlink counts). The overlay is visible only inside
    /// the namespace, so every look goes through a command run there.
    fn exists(&self, path: &str) -> bool {
        self.run("sh", &["-c", "test -e \"$0\" || test -L \"$0\"", path], "")
            .status
            .success()
    }

    /// The contents of `path` inside the copy.
    fn read(&self, path: &str) -> String {
        self.ok("cat", &[path], "")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        for child in &mut self.inside {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The values of `key=` in a unit file's `[Service]` section.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .collect()
}

fn one(unit: &str, key: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "{key}= in the unit: {values:?}");
    values[0].clone()
}

/// `passmesh --json ARGS` as `uid` inside the copy, with no socket flag and no XDG variables: it must find
/// the system service by itself.
fn passmesh_as(o: &Overlay, uid: u32, args: &[&str], stdin: &str) -> Output {
    let id = uid.to_string();
    let mut all = vec![
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        "/usr/bin/passmesh",
        "--json",
    ];
    all.extend_from_slice(args);
    o.run("setpriv", &all, stdin)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn list_names(o: &Overlay, uid: u32) -> Vec<String> {
    let out = passmesh_as(o, uid, &["list"], "");
    assert!(out.status.success(), "list as {uid}: {out:?}");
    json(&out)["passkeys"]
        .as_array()
        .expect("passkeys")
        .iter()
        .map(|p| p["userName"].as_str().expect("userName").to_owned())
        .collect()
}

#[test]
fn dpkg_installs_a_service_every_user_reaches_and_purge_removes_it() {
    assert!(
        rustix::process::geteuid().is_root(),
        "installing the package (in an overlay) needs root, as CI runs"
    );
    let deb = deb();
    let mut o = Overlay::new();
    let file = deb.file.to_str().expect("utf-8 path");

    // A user or a group named passmesh on the build machine would make this test meaningless.
    assert!(
        !o.run("getent", &["passwd", "passmesh"], "")
            .status
            .success(),
        "this machine already has a passmesh user"
    );
    o.ok("dpkg", &["-i", file], "");

    // The maintainer scripts made the system user (in tss), its private state directory, and enabled the unit.
    let passwd = o.ok("getent", &["passwd", "passmesh"], "");
    assert!(passwd.contains("/usr/sbin/nologin"), "{passwd}");
    let groups = o.ok("id", &["-nG", "passmesh"], "");
    assert!(
        groups.split_whitespace().any(|g| g == "tss"),
        "passmesh is not in tss: {groups}"
    );
    let state = o.ok("stat", &["-c", "%a %U %G", "/var/lib/passmesh"], "");
    assert_eq!(state.trim(), "700 passmesh passmesh");
    let wants = "/etc/systemd/system/multi-user.target.wants/passmesh.service";
    assert!(o.exists(wants), "the service is not enabled (no {wants})");

    // Start it as the unit says.
    let unit = o.read("/usr/lib/systemd/system/passmesh.service");
    let exec = one(&unit, "ExecStart");
    let (user, group) = (one(&unit, "User"), one(&unit, "Group"));
    let extra = one(&unit, "SupplementaryGroups");
    let umask = one(&unit, "UMask");
    let runtime = format!("/run/{}", one(&unit, "RuntimeDirectory"));
    let runtime_mode = one(&unit, "RuntimeDirectoryMode");
    let state_dir = format!("/var/lib/{}", one(&unit, "StateDirectory"));
    o.ok(
        "install",
        &[
            "-d",
            "-o",
            &user,
            "-g",
            &group,
            "-m",
            &runtime_mode,
            &runtime,
        ],
        "",
    );
    let log = "/var/log/passmesh-test.log";
    let launch = format!(
        "umask {umask}; exec setpriv --reuid {user} --regid {group} --groups {extra} \
         env STATE_DIRECTORY={state_dir} RUNTIME_DIRECTORY={runtime} {exec} 2>{log}"
    );
    let daemon = o
        .command("sh", &["-c", &launch])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the service");
    o.inside.push(daemon);
    let socket = format!("{runtime}/ipc.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !o.exists(&socket) {
        assert!(
            Instant::now() < deadline,
            "no socket after 30 s:\n{}",
            o.read(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let owner = o.ok("stat", &["-c", "%a %U", &socket], "");
    assert_eq!(owner.trim(), format!("666 {user}"));

    // Two users, no flags: each creates and sees only their own.
    let rp = RelyingParty::new("example.com", "https://login.example.com").expect("rp");
    let (options, reg_state) = rp
        .begin_registration(&User::new("alice"), &RegistrationOptions::default())
        .expect("options");
    let created = passmesh_as(
        &o,
        ALICE,
        &[
            "create",
            "--origin",
            "https://login.example.com",
            "--options",
            "-",
        ],
        &serde_json::to_string(&options).expect("json"),
    );
    assert!(
        created.status.success(),
        "create as alice: {created:?}\n{}",
        o.read(log)
    );
    let credential = serde_json::from_value(json(&created)["credential"].clone())
        .expect("a registration response");
    rp.finish_registration(&credential, &reg_state)
        .expect("the relying party accepts the passkey");
    assert_eq!(list_names(&o, ALICE), ["alice"]);
    assert!(list_names(&o, BOB).is_empty());
    let status = json(&passmesh_as(&o, BOB, &["status"], ""));
    assert_eq!(status["status"]["uid"], BOB, "{status}");
    // Each user's vault lives in the state directory, private to the service's user.
    let vault = o.ok(
        "stat",
        &["-c", "%a %U", &format!("{state_dir}/users/{ALICE}")],
        "",
    );
    assert_eq!(vault.trim(), format!("700 {user}"));

    // Stopped as systemd stops it.
    let pid = o.inside[0].id();
    o.ok("kill", &["-TERM", &pid.to_string()], "");
    let status = o.inside[0].wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    o.inside.clear();

    // Purge: files, unit links and every vault gone; the machine outside never saw any of it.
    o.ok("dpkg", &["--purge", "passmesh"], "");
    for gone in [
        "/usr/bin/passmeshd",
        "/usr/bin/passmesh",
        "/usr/lib/systemd/system/passmesh.service",
        "/var/lib/passmesh",
    ] {
        assert!(!o.exists(gone), "{gone} is still there after purge");
    }
    assert!(!o.exists(wants), "the enablement link stayed");
    drop(o);
    let host = Command::new("getent")
        .args(["passwd", "passmesh"])
        .output()
        .expect("getent");
    assert!(
        !host.status.success(),
        "the install leaked onto the machine"
    );
    assert!(!Path::new("/usr/bin/passmeshd").exists());
}
