//! The .deb as a Debian or Ubuntu user gets it: built once per run with cargo-deb (`cargo deb -p
//! passmesh-daemon`, a release build; `--fast` only picks lighter compression), then taken apart with
//! dpkg-deb and checked — every file with its mode and owner, the control fields, the maintainer scripts
//! (parsed, and run against stand-in commands), lintian, and the systemd units through
//! `systemd-analyze`; and installed for real on a throwaway overlay copy of the machine (`install`). Nothing
//! is installed on the machine running the tests.

mod install;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// One line of `dpkg-deb --contents`.
#[derive(Debug, Clone)]
struct Entry {
    /// `-rw-r--r--`, `drwxr-xr-x`, …
    mode: String,
    /// `root/root` (or `0/0` when the archive carries no names).
    owner: String,
}

/// The built package, unpacked.
struct Deb {
    file: PathBuf,
    /// The `-dbgsym` package with the debug symbols.
    dbgsym: PathBuf,
    /// Paths as dpkg lists them (`/usr/bin/passmeshd`), directories with a trailing `/`.
    entries: BTreeMap<String, Entry>,
    /// `dpkg-deb -x`: the files as they would be installed.
    root: PathBuf,
    /// `dpkg-deb -e`: control file and maintainer scripts.
    control: PathBuf,
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn deb() -> &'static Deb {
    static DEB: OnceLock<Deb> = OnceLock::new();
    DEB.get_or_init(build)
}

fn build() -> Deb {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let has_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_cargo_deb,
        "cargo-deb is not installed (./scripts/test.sh installs the pinned version)"
    );
    // Under target/tmp rather than a tempdir: the package is shared by every test through a static,
    // which is never dropped, so a tempdir would never be removed. Each run starts afresh.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the previous run's package");
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    run(Command::new(&cargo)
        .arg("deb")
        .arg("--manifest-path")
        .arg(repo().join("Cargo.toml"))
        .args(["-p", "passmesh-daemon", "--locked", "--fast", "--output"])
        .arg(&out));
    let made: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("read output dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    let named = |ext: &str| -> PathBuf {
        let found: Vec<&PathBuf> = made
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        assert_eq!(found.len(), 1, "cargo deb made {made:?}");
        found[0].clone()
    };
    let file = named("deb");
    let dbgsym = named("ddeb");

    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&file));
    let mut entries = BTreeMap::new();
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        // -rwxr-xr-x root/root   1234 2026-11-22 03:00 ./usr/bin/passmeshd
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() >= 6, "odd dpkg-deb line {line:?}");
        let path = fields[5].trim_start_matches('.').to_owned();
        entries.insert(
            path,
            Entry {
                mode: fields[0].to_owned(),
                owner: fields[1].to_owned(),
            },
        );
    }
    let root = dir.join("root");
    let control = dir.join("control");
    run(Command::new("dpkg-deb").arg("-x").arg(&file).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&file).arg(&control));
    Deb {
        file,
        dbgsym,
        entries,
        root,
        control,
    }
}

/// The files of `packaging/browser-extension/` that make the extension (its README goes to the docs).
fn extension_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("packaging/browser-extension"))
        .expect("extension dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "README.md")
        .collect();
    names.sort();
    names
}

/// The files under `packaging/generated/<kind>`, sorted.
fn generated_files(kind: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("packaging/generated").join(kind))
        .expect("packaging/generated exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The committed man pages and completions are what the current binaries generate, so the package never
/// documents options that changed.
#[test]
fn man_pages_and_completions_are_up_to_date() {
    let bins = passmesh_tests::binaries().expect("build the binaries");
    let fresh = tempfile::tempdir().expect("tempdir");
    run(Command::new(&bins.cli)
        .arg("generate-docs")
        .arg(fresh.path()));
    run(Command::new(&bins.daemon)
        .arg("--generate-man")
        .arg(fresh.path().join("man")));
    let committed = repo().join("packaging/generated");
    for kind in ["man", "completions"] {
        let mut names: Vec<String> = std::fs::read_dir(fresh.path().join(kind))
            .expect("generated dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            generated_files(kind),
            "packaging/generated/{kind} is out of date: run `passmesh generate-docs packaging/generated` and \
             `passmeshd --generate-man packaging/generated/man`"
        );
        for name in names {
            let new = std::fs::read(fresh.path().join(kind).join(&name)).expect("read");
            let old = std::fs::read(committed.join(kind).join(&name)).expect("read");
            assert!(
                new == old,
                "packaging/generated/{kind}/{name} is out of date: run `passmesh generate-docs \
                 packaging/generated` and `passmeshd --generate-man packaging/generated/man`"
            );
        }
    }
    // The pages name what a user looks for: pairing asks to confirm the codes, and Ctrl-C cancels it.
    let page = std::fs::read_to_string(committed.join("man/passmesh-pair.1")).expect("read");
    assert!(
        page.contains("nothing is sent before you confirm") && page.contains("Ctrl\\-C cancels"),
        "{page}"
    );
    let page =
        std::fs::read_to_string(committed.join("man/passmesh-device-remove.1")).expect("read");
    assert!(page.contains("\\-\\-pin\\-stdin"), "{page}");
    // Deleting says where the passkey goes, and the trash and the audit log have pages of their own.
    let page = std::fs::read_to_string(committed.join("man/passmesh-delete.1")).expect("read");
    assert!(page.contains("trash"), "{page}");
    for name in [
        "passmesh-trash-restore.1",
        "passmesh-trash-purge.1",
        "passmesh-audit.1",
    ] {
        assert!(
            committed.join("man").join(name).exists(),
            "no man page {name}"
        );
    }
}

/// Installed path → (mode, source in the repository whose bytes it must have).
fn expected_files() -> BTreeMap<String, (&'static str, Option<PathBuf>)> {
    let r = repo();
    let mut files: BTreeMap<String, (&'static str, Option<PathBuf>)> = BTreeMap::new();
    for bin in ["passmeshd", "passmesh", "passmesh-native-host"] {
        files.insert(format!("/usr/bin/{bin}"), ("-rwxr-xr-x", None));
    }
    let plain = [
        (
            "/usr/lib/systemd/system/passmesh.service",
            "packaging/systemd/passmesh.service",
        ),
        (
            "/usr/lib/systemd/user/passmesh.service",
            "packaging/systemd/passmesh-user.service",
        ),
        (
            "/usr/lib/sysusers.d/passmesh.conf",
            "packaging/systemd/sysusers.d/passmesh.conf",
        ),
        (
            "/usr/lib/tmpfiles.d/passmesh.conf",
            "packaging/systemd/tmpfiles.d/passmesh.conf",
        ),
        (
            "/etc/chromium/native-messaging-hosts/com.passmesh.native.json",
            "packaging/deb/native-messaging/com.passmesh.native.chromium.json",
        ),
        (
            "/etc/opt/chrome/native-messaging-hosts/com.passmesh.native.json",
            "packaging/deb/native-messaging/com.passmesh.native.chrome.json",
        ),
        (
            "/usr/lib/mozilla/native-messaging-hosts/com.passmesh.native.json",
            "packaging/deb/native-messaging/com.passmesh.native.firefox.json",
        ),
        ("/usr/share/doc/passmesh/README.md", "README.md"),
        (
            "/usr/share/doc/passmesh/README.packaging.md",
            "packaging/README.md",
        ),
        (
            "/usr/share/doc/passmesh/README.browser-extension.md",
            "packaging/browser-extension/README.md",
        ),
        (
            "/usr/share/doc/passmesh/copyright",
            "packaging/deb/copyright",
        ),
        (
            "/usr/share/lintian/overrides/passmesh",
            "packaging/deb/lintian-overrides",
        ),
    ];
    for (installed, source) in plain {
        files.insert(installed.to_owned(), ("-rw-r--r--", Some(r.join(source))));
    }
    files.insert(
        "/usr/share/doc/passmesh/changelog.Debian.gz".to_owned(),
        ("-rw-r--r--", None),
    );
    // Man pages are gzipped by cargo-deb (their text is checked against the binaries by
    // `man_pages_and_completions_are_up_to_date`); completions are installed as generated.
    for name in generated_files("man") {
        let section = name
            .rsplit('.')
            .next()
            .expect("a man page has a section suffix");
        files.insert(
            format!("/usr/share/man/man{section}/{name}.gz"),
            ("-rw-r--r--", None),
        );
    }
    for (installed, name) in [
        (
            "/usr/share/bash-completion/completions/passmesh",
            "passmesh.bash",
        ),
        ("/usr/share/zsh/vendor-completions/_passmesh", "_passmesh"),
        (
            "/usr/share/fish/vendor_completions.d/passmesh.fish",
            "passmesh.fish",
        ),
    ] {
        files.insert(
            installed.to_owned(),
            (
                "-rw-r--r--",
                Some(r.join("packaging/generated/completions").join(name)),
            ),
        );
    }
    for name in extension_files() {
        files.insert(
            format!("/usr/share/passmesh/browser-extension/{name}"),
            (
                "-rw-r--r--",
                Some(r.join("packaging/browser-extension").join(&name)),
            ),
        );
    }
    files
}

#[test]
fn every_file_is_there_with_its_mode_owner_and_contents() {
    let deb = deb();
    let expected = expected_files();
    for (path, (mode, source)) in &expected {
        let entry = deb
            .entries
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package"));
        assert_eq!(&entry.mode, mode, "mode of {path}");
        assert!(is_root(&entry.owner), "owner of {path}: {}", entry.owner);
        if let Some(source) = source {
            let installed = std::fs::read(deb.root.join(path.trim_start_matches('/'))).unwrap();
            let original = std::fs::read(source).unwrap();
            assert!(
                installed == original,
                "{path} differs from {}",
                source.display()
            );
        }
    }
    // Nothing else: no state, no setuid bits, no debug symbols, no stray files.
    for (path, entry) in &deb.entries {
        assert!(is_root(&entry.owner), "owner of {path}: {}", entry.owner);
        if path.ends_with('/') {
            assert_eq!(entry.mode, "drwxr-xr-x", "mode of {path}");
        } else {
            assert!(expected.contains_key(path), "unexpected file {path}");
        }
    }
}

fn is_root(owner: &str) -> bool {
    owner == "root/root" || owner == "0/0"
}

#[test]
fn debug_symbols_are_in_the_dbgsym_package() {
    let deb = deb();
    let name = deb.dbgsym.file_name().unwrap().to_string_lossy();
    assert!(name.starts_with("passmesh-dbgsym_"), "{name}");
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb.dbgsym));
    let debug_files = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.contains("/usr/lib/debug/.build-id/") && l.ends_with(".debug"))
        .count();
    assert_eq!(debug_files, 3, "one per binary");
}

#[test]
fn the_binaries_run_and_carry_no_debug_sections() {
    let deb = deb();
    for bin in ["passmeshd", "passmesh", "passmesh-native-host"] {
        let path = deb.root.join("usr/bin").join(bin);
        let output = run(Command::new(&path).arg("--version"));
        let version = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            version.trim(),
            format!("{bin} {}", env!("CARGO_PKG_VERSION")),
            "{bin} --version"
        );
        let sections = run(Command::new("readelf").arg("-S").arg("-W").arg(&path));
        let sections = String::from_utf8_lossy(&sections.stdout);
        assert!(
            !sections.contains(".debug_line") && !sections.contains(".symtab"),
            "{bin} is not stripped"
        );
        assert!(sections.contains(".gnu_debuglink"), "{bin}: no debug link");
    }
}

/// The control file's fields (continuation lines joined).
fn control_fields() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(deb().control.join("control")).expect("control file");
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with(' ') {
            let key = last.as_ref().expect("continuation after a field");
            let value: &mut String = fields.get_mut(key).expect("field");
            value.push('\n');
            value.push_str(line);
        } else if let Some((key, value)) = line.split_once(':') {
            fields.insert(key.to_owned(), value.trim().to_owned());
            last = Some(key.to_owned());
        }
    }
    fields
}

#[test]
fn control_fields_name_the_package_its_architecture_and_runtime_dependencies() {
    let fields = control_fields();
    assert_eq!(fields["Package"], "passmesh");
    assert_eq!(
        fields["Version"],
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        fields["Architecture"],
        String::from_utf8_lossy(&arch.stdout).trim()
    );
    assert!(!fields["Maintainer"].is_empty());
    assert_eq!(fields["Section"], "utils");
    assert_eq!(fields["Priority"], "optional");
    let depends: Vec<&str> = fields["Depends"].split(',').map(str::trim).collect();
    for wanted in ["libc6", "libtss2-esys", "libtss2-tctildr0", "libtss2-mu0"] {
        assert!(
            depends.iter().any(|d| d.starts_with(wanted)),
            "Depends lacks {wanted}: {depends:?}"
        );
    }
    for wanted in [
        "libtss2-tcti-device0 | libtss2-tcti-device0t64",
        "tpm-udev",
        "adduser",
    ] {
        assert!(
            depends.contains(&wanted),
            "Depends lacks {wanted}: {depends:?}"
        );
    }
    assert_eq!(fields["Recommends"], "systemd");
    assert!(
        fields["Description"].contains("passkeys"),
        "{}",
        fields["Description"]
    );
    // The browser manifests live in /etc: dpkg keeps an admin's edits to them.
    let conffiles = std::fs::read_to_string(deb().control.join("conffiles")).unwrap();
    let conffiles: BTreeSet<&str> = conffiles.lines().collect();
    assert_eq!(
        conffiles,
        BTreeSet::from([
            "/etc/chromium/native-messaging-hosts/com.passmesh.native.json",
            "/etc/opt/chrome/native-messaging-hosts/com.passmesh.native.json",
        ])
    );
}

/// A directory of stand-ins for the commands maintainer scripts call: each appends its name and
/// arguments to `log` and exits with the given code.
struct Stubs {
    dir: tempfile::TempDir,
}

impl Stubs {
    fn new(commands: &[(&str, i32)]) -> Stubs {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, code) in commands {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho \"{name} $*\" >> \"$STUB_LOG\"\nexit {code}\n"),
            )
            .expect("write stub");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod stub");
        }
        Stubs { dir }
    }

    /// Runs a maintainer script from the package with only the stand-ins on `PATH`; returns the calls.
    fn run(&self, script: &str, args: &[&str]) -> Vec<String> {
        let log = self.dir.path().join("calls.log");
        let _ = std::fs::remove_file(&log);
        std::fs::write(&log, "").expect("write log");
        run(Command::new("/bin/sh")
            .arg(deb().control.join(script))
            .args(args)
            .env_clear()
            .env("PATH", self.dir.path())
            .env("STUB_LOG", &log));
        std::fs::read_to_string(&log)
            .expect("read log")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn systemd_runs_here() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

#[test]
fn maintainer_scripts_parse_and_are_executable() {
    for script in ["postinst", "prerm", "postrm"] {
        let path = deb().control.join(script);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{script}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "mode of {script}");
        run(Command::new("sh").arg("-n").arg(&path));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{script}: shebang");
        assert!(text.contains("\nset -e\n"), "{script}: set -e");
    }
}

#[test]
fn postinst_creates_user_and_state_dir_with_systemd_then_enables_the_service() {
    let stubs = Stubs::new(&[
        ("systemd-sysusers", 0),
        ("systemd-tmpfiles", 0),
        ("deb-systemd-helper", 0),
        ("deb-systemd-invoke", 0),
        ("systemctl", 0),
    ]);
    let calls = stubs.run("postinst", &["configure"]);
    let mut expected = vec![
        "systemd-sysusers passmesh.conf",
        "systemd-tmpfiles --create passmesh.conf",
        "deb-systemd-helper unmask passmesh.service",
        "deb-systemd-helper --quiet was-enabled passmesh.service",
        "deb-systemd-helper enable passmesh.service",
    ];
    if systemd_runs_here() {
        expected.push("systemctl --system daemon-reload");
        expected.push("deb-systemd-invoke start passmesh.service");
    }
    assert_eq!(calls, expected);

    // An upgrade restarts the running daemon on the new binary instead of starting it.
    let calls = stubs.run("postinst", &["configure", "0.0.9-1"]);
    if systemd_runs_here() {
        assert!(calls.contains(&"deb-systemd-invoke restart passmesh.service".to_owned()));
    }
    assert!(calls.contains(&"systemd-sysusers passmesh.conf".to_owned()));
}

#[test]
fn postinst_falls_back_to_adduser_without_systemd() {
    // getent finds neither the tss group nor the passmesh user.
    let stubs = Stubs::new(&[
        ("getent", 2),
        ("addgroup", 0),
        ("adduser", 0),
        ("mkdir", 0),
        ("chown", 0),
        ("chmod", 0),
    ]);
    let calls = stubs.run("postinst", &["configure"]);
    assert_eq!(
        calls,
        [
            "getent group tss",
            "addgroup --system tss",
            "getent passwd passmesh",
            "adduser --system --group --home /var/lib/passmesh --no-create-home --shell \
             /usr/sbin/nologin --gecos Passmesh passkey daemon passmesh",
            "adduser passmesh tss",
            "mkdir -p /var/lib/passmesh",
            "chown passmesh:passmesh /var/lib/passmesh",
            "chmod 0700 /var/lib/passmesh",
        ]
    );
}

#[test]
fn only_purge_deletes_the_vaults() {
    let stubs = Stubs::new(&[
        ("deb-systemd-helper", 0),
        ("deb-systemd-invoke", 0),
        ("systemctl", 0),
        ("rm", 0),
    ]);
    for action in ["remove", "upgrade", "failed-upgrade", "abort-install"] {
        let calls = stubs.run("postrm", &[action]);
        assert!(
            calls.iter().all(|c| !c.starts_with("rm ")),
            "postrm {action}: {calls:?}"
        );
    }
    let calls = stubs.run("postrm", &["purge"]);
    assert_eq!(
        calls,
        [
            "deb-systemd-helper purge passmesh.service",
            "deb-systemd-helper unmask passmesh.service",
            "rm -rf /var/lib/passmesh",
        ]
    );

    // prerm stops the service on removal (where systemd runs), never on upgrade.
    let calls = stubs.run("prerm", &["remove"]);
    let expected: &[&str] = if systemd_runs_here() {
        &["deb-systemd-invoke stop passmesh.service"]
    } else {
        &[]
    };
    assert_eq!(calls, expected);
    assert_eq!(
        stubs.run("prerm", &["upgrade", "0.1.1-1"]),
        Vec::<String>::new()
    );
}

#[test]
fn native_messaging_manifests_point_at_the_installed_host() {
    let deb = deb();
    for (installed, template) in [
        (
            "etc/chromium/native-messaging-hosts/com.passmesh.native.json",
            "chromium",
        ),
        (
            "etc/opt/chrome/native-messaging-hosts/com.passmesh.native.json",
            "chrome",
        ),
        (
            "usr/lib/mozilla/native-messaging-hosts/com.passmesh.native.json",
            "firefox",
        ),
    ] {
        let text = std::fs::read_to_string(deb.root.join(installed)).expect("installed file");
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(manifest["name"], "com.passmesh.native", "{installed}");
        assert_eq!(manifest["type"], "stdio", "{installed}");
        assert_eq!(
            manifest["path"], "/usr/bin/passmesh-native-host",
            "{installed}"
        );
        // Exactly the template that install.sh fills in, so the two cannot drift apart.
        let template = std::fs::read_to_string(repo().join(format!(
            "packaging/native-messaging/com.passmesh.native.{template}.json"
        )))
        .unwrap()
        .replace("@HOST_PATH@", "/usr/bin/passmesh-native-host");
        let template: serde_json::Value = serde_json::from_str(&template).unwrap();
        assert_eq!(manifest, template, "{installed}");
    }
    let host = &deb.entries["/usr/bin/passmesh-native-host"];
    assert_eq!(host.mode, "-rwxr-xr-x");
}

#[test]
fn lintian_is_clean_and_every_override_says_why() {
    let deb = deb();
    let lintian = Command::new("lintian")
        .args(["--info", "--display-info", "--tag-display-limit", "0"])
        .arg(&deb.file)
        .output();
    let output = lintian
        .unwrap_or_else(|e| panic!("cannot run lintian ({e}): ./scripts/test.sh installs it"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: ") || l.starts_with("I: "))
        .collect();
    assert!(
        complaints.is_empty(),
        "lintian:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "lintian exited {}", output.status);

    // Each override is preceded by a comment giving the reason.
    let overrides =
        std::fs::read_to_string(repo().join("packaging/deb/lintian-overrides")).unwrap();
    let mut reason = false;
    for line in overrides.lines() {
        if line.starts_with('#') {
            reason = true;
        } else if line.trim().is_empty() {
            reason = false;
        } else {
            assert!(reason, "lintian override without a reason: {line}");
            reason = false;
        }
    }
}

/// `systemd-analyze`, or `None` (with a note) where it is not installed.
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("systemd-analyze is not installed: unit checks skipped");
    }
    found.then_some("systemd-analyze")
}

/// The unit from the package with its `ExecStart` pointed at the unpacked binary (`verify` checks
/// that the executable exists, and nothing is installed in /usr/bin here).
fn unit_for_verify(installed: &str, dir: &Path) -> PathBuf {
    let deb = deb();
    let text = std::fs::read_to_string(deb.root.join(installed)).expect("installed file");
    let daemon = deb.root.join("usr/bin/passmeshd");
    let replaced = text.replace("/usr/bin/passmeshd", &daemon.display().to_string());
    assert_ne!(
        text, replaced,
        "{installed} does not start /usr/bin/passmeshd"
    );
    let path = dir.join("passmesh.service");
    std::fs::write(&path, replaced).expect("write unit");
    path
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let system = dir.path().join("system");
    let user = dir.path().join("user");
    let runtime = dir.path().join("runtime");
    for d in [&system, &user, &runtime] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();

    let unit = unit_for_verify("usr/lib/systemd/system/passmesh.service", &system);
    let output = run(Command::new(analyze).arg("verify").arg(&unit));
    assert!(
        output.stderr.is_empty(),
        "system unit: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let unit = unit_for_verify("usr/lib/systemd/user/passmesh.service", &user);
    let output = run(Command::new(analyze)
        .args(["verify", "--user"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", &runtime));
    assert!(
        output.stderr.is_empty(),
        "user unit: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_system_unit_is_hardened() {
    let text = std::fs::read_to_string(deb().root.join("usr/lib/systemd/system/passmesh.service"))
        .unwrap();
    let lines: BTreeSet<&str> = text.lines().collect();
    for wanted in [
        "Type=notify",
        "ExecStart=/usr/bin/passmeshd --system",
        "User=passmesh",
        "Group=passmesh",
        "SupplementaryGroups=tss",
        "StateDirectory=passmesh",
        "StateDirectoryMode=0700",
        "RuntimeDirectory=passmesh",
        "RuntimeDirectoryMode=0755",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/tpmrm0 rw",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "UMask=0077",
        "Restart=on-failure",
    ] {
        assert!(lines.contains(wanted), "passmesh.service lacks {wanted}");
    }

    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_verify("usr/lib/systemd/system/passmesh.service", dir.path());
    let output = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&output.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for passmesh.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // 1.5 when written (packaging/README.md explains each remaining exposure); 10 is "UNSAFE".
    assert!(level <= 2.0, "exposure {level}:\n{text}");
}
