//! The TPM keystore against a real TPM emulator: each test starts its own swtpm on its own ports.

#![allow(
    clippy::unwrap_used,
    reason = "test code: the helpers below run only inside tests, where a panic is the failure report"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use passmesh_tests::rp::UserVerificationPolicy;
use passmesh_tests::tpm::{copy_tree, passmeshd_once, snapshot};
use passmesh_tests::{Daemon, DaemonOptions, Swtpm, ops, run_cli};

use crate::{Registered, client, contains_bytes, example_rp, register_user, sign_in};

pub(crate) const SOFTWARE_TAG: &[u8] = b"passmesh-sw-v1\0";
pub(crate) const TPM_TAG: &[u8] = b"passmesh-tpm-v1\0";
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

fn swtpm() -> Swtpm {
    Swtpm::start().unwrap_or_else(|e| panic!("swtpm: {e:#}"))
}

async fn start(options: DaemonOptions) -> Daemon {
    Daemon::start(options)
        .await
        .unwrap_or_else(|e| panic!("daemon did not start: {e:#}"))
}

/// Signs in with `registered` and checks the RP accepts the assertion.
async fn signs_in(d: &Daemon, registered: &Registered) {
    let mut c = client(d).await;
    let (assertion, _) = sign_in(
        &mut c,
        &example_rp(),
        &[registered],
        &[registered],
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(assertion.raw_id.as_bytes(), registered.id());
}

/// Files added, removed or changed between two snapshots (the contents are too large for a message).
fn changed_files(
    before: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    after: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<PathBuf> {
    before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

pub(crate) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    snapshot(dir)
        .unwrap()
        .into_iter()
        .filter(|(_, bytes)| contains_bytes(bytes, needle))
        .map(|(p, _)| p)
        .collect()
}

/// The vault key as the software keystore stores it: after the tag come the keyring's version (1 byte),
/// current epoch (4), then epoch 0 (4) and its 32-byte key.
fn software_vault_key(state: &Path) -> Vec<u8> {
    // The device identity (`device.sealed`) carries the same tag: skip it.
    for (path, bytes) in snapshot(state).unwrap() {
        if path.file_name().is_some_and(|n| n == "device.sealed") {
            continue;
        }
        if let Some(at) = bytes
            .windows(SOFTWARE_TAG.len())
            .position(|w| w == SOFTWARE_TAG)
        {
            let start = at + SOFTWARE_TAG.len() + 9;
            return bytes[start..start + 32].to_vec();
        }
    }
    panic!("no software-sealed keyring under {}", state.display());
}

async fn keystore_cli(state: &Path, tcti: &str, extra: &[&str]) -> passmesh_tests::CliOutput {
    let mut args = vec![
        "keystore",
        "--state-dir",
        state.to_str().unwrap(),
        "--tpm-tcti",
        tcti,
    ];
    args.extend_from_slice(extra);
    run_cli(Path::new("/nonexistent.sock"), &args, None)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_tpm_unseals_the_vault_across_restarts_and_status_shows_it() {
    let tpm = swtpm();
    let mut d = start(tpm.daemon_options()).await;
    let mut c = client(&d).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.keystore, "tpm");
    assert_eq!(status.keystore_warning, None);
    let info = status.tpm.expect("status names the TPM");
    assert_eq!(info.manufacturer, "IBM", "swtpm reports IBM");
    assert_eq!(info.firmware.split('.').count(), 4, "{}", info.firmware);
    assert!(info.pcrs.is_empty());
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    drop(c);

    for _ in 0..2 {
        d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
        signs_in(&d, &alice).await;
    }
    let text = d.cli(&["status"]).await.unwrap();
    let text = text.expect_success("status");
    assert!(text.contains("TPM        IBM firmware"), "{text}");
    assert!(text.contains("not bound to PCRs"), "{text}");
    // The daemon holds no TPM object while it serves: startup flushed everything it loaded.
    assert_eq!(tpm.transient_handles().unwrap(), Vec::<String>::new());
    // Nothing under the state directory is a software-sealed keyring.
    assert!(files_containing(d.state_dir(), SOFTWARE_TAG).is_empty());
    assert!(!files_containing(d.state_dir(), TPM_TAG).is_empty());
}

#[tokio::test]
async fn a_copied_state_dir_is_refused_by_another_tpm_and_still_works_on_its_own() {
    let tpm = swtpm();
    let mut d = start(tpm.daemon_options()).await;
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    drop(c);
    d.stop().await.unwrap();

    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("state");
    copy_tree(d.state_dir(), &copy).unwrap();
    let other = swtpm();
    for keystore in ["tpm", "auto"] {
        let out = passmeshd_once(
            &[
                "--state-dir",
                copy.to_str().unwrap(),
                "--keystore",
                keystore,
                "--tpm-tcti",
                &other.tcti(),
            ],
            REFUSAL_TIMEOUT,
        )
        .unwrap();
        assert!(
            out.code.is_some_and(|c| c != 0),
            "--keystore {keystore}: expected a refusal, got {out:?}"
        );
        assert!(
            out.stderr.contains("sealed by a different TPM"),
            "--keystore {keystore}: {}",
            out.stderr
        );
    }
    // Without any TPM, `auto` must not quietly make a new software vault over the TPM-sealed one.
    let out = passmeshd_once(
        &[
            "--state-dir",
            copy.to_str().unwrap(),
            "--keystore",
            "auto",
            "--tpm-tcti",
            "swtpm:host=127.0.0.1,port=1",
        ],
        REFUSAL_TIMEOUT,
    )
    .unwrap();
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr.contains("sealed by the TPM"), "{}", out.stderr);

    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    signs_in(&d, &alice).await;
}

#[tokio::test]
async fn a_pcr_change_is_refused_without_touching_the_disk_and_reseal_recovers() {
    let mut tpm = swtpm();
    let mut options = tpm.daemon_options();
    options.config_toml = Some("[tpm]\npcrs = [7, 14]\n".to_owned());
    let mut d = start(options).await;
    let mut c = client(&d).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.tpm.expect("tpm").pcrs, vec![7, 14]);
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    drop(c);
    d.stop().await.unwrap();

    // An unexpected change of the boot state.
    tpm.extend_pcr(14).unwrap();
    let before = snapshot(d.state_dir()).unwrap();
    let config = d.dir().join("config.toml");
    let state = d.state_dir().to_str().unwrap().to_owned();
    let tcti = tpm.tcti();
    let args = [
        "--state-dir",
        state.as_str(),
        "--config",
        config.to_str().unwrap(),
        "--keystore",
        "tpm",
        "--tpm-tcti",
        tcti.as_str(),
    ];
    let out = passmeshd_once(&args, REFUSAL_TIMEOUT).unwrap();
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(
        out.stderr.contains("PCR(s) 14 (sha256) changed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("passmesh keystore reseal --pcrs none"),
        "{}",
        out.stderr
    );
    assert_eq!(
        changed_files(&before, &snapshot(d.state_dir()).unwrap()),
        Vec::<PathBuf>::new(),
        "the refusal changed files"
    );
    // `auto` refuses the same way rather than falling back to software.
    let mut auto = args.to_vec();
    auto[5] = "auto";
    let out = passmeshd_once(&auto, REFUSAL_TIMEOUT).unwrap();
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr.contains("PCR(s) 14"), "{}", out.stderr);
    assert_eq!(
        changed_files(&before, &snapshot(d.state_dir()).unwrap()),
        Vec::<PathBuf>::new()
    );

    // The documented recovery: back to the old boot state (a reboot resets the PCRs), unbind, change, rebind.
    tpm.restart().unwrap();
    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    signs_in(&d, &alice).await;
    d.stop().await.unwrap();
    let out = keystore_cli(d.state_dir(), &tcti, &["reseal", "--pcrs", "none"]).await;
    assert!(
        out.expect_success("reseal --pcrs none")
            .contains("no PCR binding"),
        "{out:?}"
    );
    tpm.extend_pcr(14).unwrap();
    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = client(&d).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.tpm.expect("tpm").pcrs, Vec::<u8>::new());
    assert!(
        status
            .keystore_warning
            .is_some_and(|w| w.contains("passmesh keystore reseal")),
        "an unbound seal under a PCR config is worth a warning"
    );
    drop(c);
    d.stop().await.unwrap();
    let out = run_cli(
        Path::new("/nonexistent.sock"),
        &[
            "keystore",
            "--state-dir",
            d.state_dir().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--tpm-tcti",
            &tcti,
            "reseal",
        ],
        None,
    )
    .await
    .unwrap();
    assert!(
        out.expect_success("reseal").contains("PCR(s) 7, 14"),
        "{out:?}"
    );
    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    signs_in(&d, &alice).await;
    let mut c = client(&d).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.tpm.expect("tpm").pcrs, vec![7, 14]);
    assert_eq!(status.keystore_warning, None);
    drop(c);
    d.stop().await.unwrap();
    // Bound to the new values: another change is refused again.
    tpm.extend_pcr(7).unwrap();
    let out = passmeshd_once(&args, REFUSAL_TIMEOUT).unwrap();
    assert!(
        out.stderr.contains("PCR(s) 7 (sha256) changed"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn migrating_to_the_tpm_leaves_no_vault_key_in_clear_on_disk() {
    let tpm = swtpm();
    let mut d = start(DaemonOptions::default()).await;
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    drop(c);
    let state = d.state_dir().to_owned();
    let tcti = tpm.tcti();

    // While the daemon runs, the migration refuses rather than fight over the store.
    let out = keystore_cli(&state, &tcti, &["migrate", "--to", "tpm"]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("stop passmeshd"), "{}", out.stderr);
    d.stop().await.unwrap();

    let key = software_vault_key(&state);
    assert!(!files_containing(&state, &key).is_empty());
    // Opening the software vault with --keystore tpm names the way out.
    let out = passmeshd_once(
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--keystore",
            "tpm",
            "--tpm-tcti",
            &tcti,
        ],
        REFUSAL_TIMEOUT,
    )
    .unwrap();
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(
        out.stderr.contains("passmesh keystore migrate --to tpm"),
        "{}",
        out.stderr
    );

    // `auto` keeps serving the software vault, and says that a TPM could seal it.
    let mut auto = start(DaemonOptions {
        keystore: "auto".to_owned(),
        extra_args: vec!["--tpm-tcti".to_owned(), tcti.clone()],
        state_dir: Some(state.clone()),
        ..DaemonOptions::default()
    })
    .await;
    let mut c = client(&auto).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.keystore, "software");
    assert!(
        status
            .keystore_warning
            .as_deref()
            .is_some_and(|w| w.contains("passmesh keystore migrate --to tpm")),
        "{status:?}"
    );
    drop(c);
    auto.stop().await.unwrap();

    let out = keystore_cli(&state, &tcti, &["migrate", "--to", "tpm"]).await;
    assert!(
        out.expect_success("migrate").contains("to the TPM"),
        "{out:?}"
    );
    // Records are encrypted under the vault key (XChaCha20-Poly1305), so without the key in clear no private
    // key is readable either; the key and the software keyring are gone from every file.
    assert_eq!(files_containing(&state, &key), Vec::<PathBuf>::new());
    assert_eq!(
        files_containing(&state, SOFTWARE_TAG),
        Vec::<PathBuf>::new()
    );
    assert!(!files_containing(&state, TPM_TAG).is_empty());

    let mut options = tpm.daemon_options();
    options.state_dir = Some(state.clone());
    let t = start(options).await;
    signs_in(&t, &alice).await;
    let mut c = client(&t).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.keystore, "tpm");
    assert_eq!(status.passkeys, 1);
    let bob = register_user(&mut c, &example_rp(), "bob").await;
    drop(c);
    signs_in(&t, &bob).await;
    assert_eq!(files_containing(&state, &key), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn repeated_sigkill_does_not_exhaust_tpm_object_slots() {
    let tpm = swtpm();
    // What killed clients of a TPM without a resource manager leave behind: every session and object slot
    // taken (sessions first: creating a primary with tpm2-tools needs a session).
    let helper = Path::new(env!("CARGO_BIN_EXE_tpm-leftovers"));
    let sessions = tpm.fill_session_slots(helper).unwrap();
    assert!(sessions >= 1, "swtpm has session slots");
    assert_eq!(tpm.loaded_sessions().unwrap().len(), sessions);
    let d = start(tpm.daemon_options()).await;
    drop(d);
    assert_eq!(tpm.loaded_sessions().unwrap(), Vec::<String>::new());
    let filled = tpm.fill_object_slots().unwrap();
    assert!(filled >= 1, "swtpm has object slots");
    let mut options = tpm.daemon_options();
    options.config_toml = Some("[tpm]\npcrs = [7]\n".to_owned());
    let mut d = start(options).await;
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    drop(c);
    // Kill it while serving and while starting (mid-unseal, at varying points), five times each.
    for round in 0..5u64 {
        d.kill9().unwrap();
        d.restart()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
    }
    for delay_ms in [0u64, 2, 5, 10, 20] {
        d.kill9().unwrap();
        let bins = passmesh_tests::binaries().unwrap();
        let config = d.dir().join("config.toml");
        let mut child = std::process::Command::new(&bins.daemon)
            .args(["--state-dir", d.state_dir().to_str().unwrap()])
            .args(["--socket", d.dir().join("kill.sock").to_str().unwrap()])
            .args(["--config", config.to_str().unwrap()])
            .args(["--keystore", "tpm", "--tpm-tcti", &tpm.tcti()])
            .env("TSS2_LOG", "all+none")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        d.restart()
            .await
            .unwrap_or_else(|e| panic!("delay {delay_ms} ms: {e:#}"));
    }
    signs_in(&d, &alice).await;
    d.stop().await.unwrap();
    assert_eq!(tpm.transient_handles().unwrap(), Vec::<String>::new());
    assert_eq!(tpm.loaded_sessions().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn keystore_tpm_without_a_tpm_refuses_and_auto_falls_back_loudly() {
    // Port 1 on loopback: nothing answers there.
    let nowhere = "swtpm:host=127.0.0.1,port=1";
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let out = passmeshd_once(
        &[
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--keystore",
            "tpm",
            "--tpm-tcti",
            nowhere,
        ],
        REFUSAL_TIMEOUT,
    )
    .unwrap();
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr.contains("no usable TPM"), "{}", out.stderr);
    assert!(
        out.stderr.contains("--keystore software") && out.stderr.contains("--keystore auto"),
        "{}",
        out.stderr
    );
    assert!(
        snapshot(&state_dir).map(|s| s.is_empty()).unwrap_or(true),
        "a refused start wrote files"
    );

    let d = start(DaemonOptions {
        keystore: "auto".to_owned(),
        extra_args: vec!["--tpm-tcti".to_owned(), nowhere.to_owned()],
        ..DaemonOptions::default()
    })
    .await;
    let mut c = client(&d).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.keystore, "software");
    assert!(status.tpm.is_none());
    assert!(
        status
            .keystore_warning
            .as_deref()
            .is_some_and(|w| w.contains("no TPM") && w.contains("file permissions only")),
        "{status:?}"
    );
    assert!(d.log().contains("no TPM available"), "{}", d.log());
    let text = d.cli(&["status"]).await.unwrap();
    assert!(
        text.expect_success("status").contains("WARNING"),
        "{text:?}"
    );
}
