//! Recovery with real daemons and the real CLI: every device lost, the vault and its passkeys back from a backup
//! and the 24-word phrase, checked by a relying party; backups from before a key rotation; the standard `age`
//! tool decrypting a backup; wrong phrases, damaged files and another vault's file changing nothing; replacing
//! the phrase.

use std::path::{Path, PathBuf};
use std::time::Duration;

use passmesh_ipc::{AuditInfo, DeviceInfo, DeviceState};
use passmesh_tests::mesh::{self, Node, all_connected, eventually};
use passmesh_tests::{Daemon, ops, pairing, recovery};

use crate::sync::try_sign_in;
use crate::{Registered, client, daemon, example_rp, register_user};

const LIMIT: Duration = Duration::from_secs(30);

/// Sets up recovery on `d` through the CLI; returns the phrase.
async fn setup(d: &Daemon) -> String {
    let (code, s, stderr) = recovery::setup(d.socket_path(), false, None, false)
        .await
        .expect("run recovery setup");
    assert_eq!(code, Some(0), "recovery setup failed: {stderr}");
    assert!(
        s.result["recoveryKey"]
            .as_str()
            .is_some_and(|k| k.starts_with("12D3KooW")),
        "{:?}",
        s.result
    );
    s.phrase
}

async fn list_len(d: &Daemon) -> Option<usize> {
    let mut c = d.client().await.ok()?;
    Some(ops::list(&mut c, None).await.ok()?.len())
}

async fn restore(d: &Daemon, file: &Path, phrase: &str) -> passmesh_tests::daemon::CliOutput {
    d.cli_with_stdin(
        &["--json", "restore", file.to_str().expect("utf-8 path")],
        phrase,
    )
    .await
    .expect("run the CLI")
}

async fn devices(d: &Daemon) -> Vec<DeviceInfo> {
    let out = d
        .cli(&["--json", "device", "list"])
        .await
        .expect("run the CLI");
    serde_json::from_value(out.json("device list")["devices"].clone()).expect("devices")
}

async fn audit(d: &Daemon) -> Vec<AuditInfo> {
    let out = d.cli(&["--json", "audit"]).await.expect("run the CLI");
    serde_json::from_value(out.json("audit")["entries"].clone()).expect("audit entries")
}

/// Every passkey of `regs` signs in through `d`, verified by the relying party.
async fn all_sign_in(d: &Daemon, regs: &[Registered]) {
    let rp = example_rp();
    let mut c = client(d).await;
    for reg in regs {
        assert!(
            try_sign_in(&mut c, &rp, reg).await.is_some(),
            "{} does not sign in after the restore",
            reg.user.name
        );
    }
}

fn backups_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "age"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_lost_then_restored_from_an_automatic_backup_and_the_phrase() {
    let shelf = tempfile::tempdir().unwrap();
    // The three devices write into one shared folder (a synced folder, a NAS), each keeping its own files.
    let extra = format!("[backup]\ndir = {:?}\nkeep = 3\n", shelf.path());
    let nodes = mesh::paired_with_config(3, &extra).await.unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    all_connected(&refs, LIMIT).await.unwrap();
    let rp = example_rp();
    let mut regs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = client(&n.daemon).await;
        for k in 0..2 {
            regs.push(register_user(&mut c, &rp, &format!("user{i}-{k}")).await);
        }
    }
    for n in &nodes {
        eventually(LIMIT, "every passkey on every device", async || {
            (list_len(&n.daemon).await? == 6).then_some(())
        })
        .await
        .unwrap();
    }
    // No recovery key yet: nothing is written (a backup must open with the phrase only).
    assert!(backups_in(shelf.path()).is_empty());
    let phrase = setup(&nodes[1].daemon).await;
    // The recovery key reaches every device; each writes a backup at once.
    for n in &nodes {
        eventually(LIMIT, "a backup from every device", async || {
            let s = n.status().await.ok()?;
            let r = s.recovery?;
            (r.keys.len() == 1 && r.last_backup_file.is_some()).then_some(())
        })
        .await
        .unwrap();
    }
    let files = backups_in(shelf.path());
    assert_eq!(files.len(), 3, "{files:?}");
    let text = nodes[0].daemon.cli(&["status"]).await.unwrap();
    let text = text.expect_success("status");
    assert!(text.contains("recovery   set up since"), "{text}");
    assert!(text.contains("backups    automatic"), "{text}");
    let old: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();

    // Every device is lost: daemons gone, state directories deleted.
    drop(nodes);
    let file = files.last().unwrap().clone();
    let fresh = daemon().await;
    let out = restore(&fresh, &file, &phrase).await;
    let v = out.json("restore");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(v["passkeys"], 6, "{v}");
    assert_eq!(v["devices"], 3, "{v}");
    all_sign_in(&fresh, &regs).await;

    // The old devices are members still, not seen since the restore: ready to be removed.
    let listed = devices(&fresh).await;
    for id in &old {
        let d = listed
            .iter()
            .find(|d| d.device_id == *id)
            .expect("old device listed");
        assert_eq!(d.state, DeviceState::Active);
        assert!(!d.connected && d.last_seen_ms.is_none());
    }
    assert!(
        listed
            .iter()
            .any(|d| d.recovery && d.state == DeviceState::Active)
    );
    let text = fresh.cli(&["device", "list"]).await.unwrap();
    let text = text.expect_success("device list");
    assert_eq!(
        text.matches("not since this device was restored").count(),
        3,
        "{text}"
    );
    let log = audit(&fresh).await;
    for event in ["recovery-set", "vault-restored"] {
        assert!(
            log.iter().any(|e| e.event == event && e.verified),
            "no verified {event} in {log:?}"
        );
    }
    // Removing a lost device works from the restored one (it is a full member).
    fresh
        .cli(&["device", "remove", &old[0]])
        .await
        .unwrap()
        .expect_success("device remove");

    // Durable: after a restart the vault and every passkey are still there.
    let mut fresh = fresh;
    fresh.restart().await.unwrap();
    assert_eq!(list_len(&fresh).await, Some(6));
    all_sign_in(&fresh, &regs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_from_before_a_key_rotation_restores_and_age_decrypts_a_backup() {
    let nodes = mesh::paired(2).await.unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    all_connected(&refs, LIMIT).await.unwrap();
    let rp = example_rp();
    let mut c = client(&nodes[0].daemon).await;
    let early = vec![
        register_user(&mut c, &rp, "early-1").await,
        register_user(&mut c, &rp, "early-2").await,
    ];
    let phrase = setup(&nodes[0].daemon).await;
    let shelf = tempfile::tempdir().unwrap();
    let before = shelf.path().join("before.age");
    let out = nodes[0]
        .daemon
        .cli(&["--json", "backup", "--out", before.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(out.json("backup")["passkeys"], 2, "{}", out.stderr);
    // A key rotation (removing the other device), then a passkey the first backup does not hold.
    nodes[0]
        .daemon
        .cli(&["device", "remove", &nodes[1].peer_id])
        .await
        .unwrap()
        .expect_success("device remove");
    let late = register_user(&mut c, &rp, "late").await;
    let after = shelf.path().join("after.age");
    nodes[0]
        .daemon
        .cli(&["backup", "--out", after.to_str().unwrap()])
        .await
        .unwrap()
        .expect_success("backup");
    drop(c);
    drop(nodes);

    let fresh = daemon().await;
    let out = restore(&fresh, &before, &phrase).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.json("restore")["passkeys"], 2);
    all_sign_in(&fresh, &early).await;

    let second = daemon().await;
    let out = restore(&second, &after, &phrase).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.json("restore")["passkeys"], 3);
    let mut all = early.clone();
    all.push(late);
    all_sign_in(&second, &all).await;

    // The standard age tool opens a backup with the identity the phrase gives (no daemon involved).
    let out = second
        .cli_with_stdin(&["recovery", "identity"], &phrase)
        .await
        .unwrap();
    let identity = out.expect_success("recovery identity");
    assert!(identity.contains("AGE-SECRET-KEY-1"), "{identity}");
    let id_file = shelf.path().join("identity.txt");
    std::fs::write(&id_file, identity).unwrap();
    let plain = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&id_file)
        .arg(&after)
        .output()
        .expect("run age (installed by scripts/test.sh)");
    assert!(
        plain.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert!(
        plain.stdout.starts_with(b"PMBK\x01"),
        "not a Passmesh backup inside"
    );
    // What age decrypted is this vault's backup: its id follows the header.
    let vault = ops::status(&mut client(&second).await)
        .await
        .unwrap()
        .vault_id;
    let id: String = plain.stdout[5..21]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(id, vault);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_phrases_damaged_files_and_another_vaults_backup_change_nothing() {
    let shelf = tempfile::tempdir().unwrap();
    let rp = example_rp();
    let a = daemon().await;
    let reg = register_user(&mut client(&a).await, &rp, "alice").await;
    let phrase_a = setup(&a).await;
    let file_a = shelf.path().join("a.age");
    a.cli(&["backup", "--out", file_a.to_str().unwrap()])
        .await
        .unwrap()
        .expect_success("backup");
    let b = daemon().await;
    register_user(&mut client(&b).await, &rp, "bob").await;
    let phrase_b = setup(&b).await;
    let file_b = shelf.path().join("b.age");
    b.cli(&["backup", "--out", file_b.to_str().unwrap()])
        .await
        .unwrap()
        .expect_success("backup");

    let fresh = daemon().await;
    let mut c = client(&fresh).await;
    let before = ops::snapshot(&mut c).await.unwrap();
    let vault_before = ops::status(&mut c).await.unwrap().vault_id;
    let bytes = std::fs::read(&file_a).unwrap();
    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x40;
    let tampered = shelf.path().join("tampered.age");
    std::fs::write(&tampered, &flipped).unwrap();
    let cut = shelf.path().join("cut.age");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let mut typo: Vec<&str> = phrase_a.split(' ').collect();
    typo[3] = "passmesh";
    let typo = typo.join(" ");
    let cases: [(&Path, &str, &str); 5] = [
        (&file_a, &phrase_b, "does not open this file"),
        // Another vault's backup, with this vault's phrase.
        (&file_b, &phrase_a, "does not open this file"),
        (&file_a, &typo, "word 4 is not a word"),
        (&tampered, &phrase_a, "damaged"),
        (&cut, &phrase_a, "damaged"),
    ];
    for (file, phrase, expected) in cases {
        let out = restore(&fresh, file, phrase).await;
        assert_eq!(out.code, Some(1), "{expected}: {}", out.stdout);
        assert!(
            out.stderr.contains(expected),
            "want {expected:?}: {}",
            out.stderr
        );
        assert_eq!(ops::snapshot(&mut c).await.unwrap(), before, "{expected}");
        assert_eq!(ops::status(&mut c).await.unwrap().vault_id, vault_before);
    }
    // A device that holds passkeys is not overwritten by a restore.
    let out = restore(&b, &file_a, &phrase_a).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("already holds 1 passkeys"),
        "{}",
        out.stderr
    );
    // The right phrase and file still restore (no failed attempt left anything behind).
    let out = restore(&fresh, &file_a, &phrase_a).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    all_sign_in(&fresh, &[reg]).await;
    // Typing back the wrong words sets nothing up.
    let c2 = daemon().await;
    let (code, _, stderr) = recovery::setup(c2.socket_path(), false, None, true)
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("recovery was not set up"), "{stderr}");
    let s = c2.cli(&["--json", "status"]).await.unwrap().json("status");
    assert_eq!(s["status"]["recovery"]["keys"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_phrase_opens_nothing_made_afterwards_and_verify_tells_them_apart() {
    let shelf = tempfile::tempdir().unwrap();
    let d = daemon().await;
    let rp = example_rp();
    register_user(&mut client(&d).await, &rp, "carol").await;
    // With a PIN set, setting up recovery needs it.
    d.cli_with_stdin(&["pin", "set"], "2468\n")
        .await
        .unwrap()
        .expect_success("pin set");
    let (code, _, stderr) = recovery::setup(d.socket_path(), false, None, false)
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--pin-stdin"), "{stderr}");
    let (code, first, stderr) = recovery::setup(d.socket_path(), false, Some("2468"), false)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let verify = |phrase: String| {
        let d = &d;
        async move {
            d.cli_with_stdin(&["recovery", "verify"], &phrase)
                .await
                .unwrap()
        }
    };
    let ok = verify(first.phrase.clone()).await;
    assert!(
        ok.expect_success("verify")
            .contains("this is the vault's recovery phrase")
    );
    let (code, second, stderr) = recovery::setup(d.socket_path(), true, Some("2468"), false)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(second.result["replaced"], 1);
    let old = verify(first.phrase.clone()).await;
    assert_eq!(old.code, Some(1));
    assert!(
        old.stderr.contains("not the vault's recovery phrase"),
        "{}",
        old.stderr
    );
    verify(second.phrase.clone())
        .await
        .expect_success("verify the new phrase");
    let file = shelf.path().join("new.age");
    let out = d
        .cli_with_stdin(
            &["backup", "--pin-stdin", "--out", file.to_str().unwrap()],
            "2468\n",
        )
        .await
        .unwrap();
    out.expect_success("backup");
    let fresh = daemon().await;
    let out = restore(&fresh, &file, &first.phrase).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("does not open this file"),
        "{}",
        out.stderr
    );
    let out = restore(&fresh, &file, &second.phrase).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(list_len(&fresh).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_survived_meets_the_restored_one_by_pairing_and_they_sync() {
    let (a, b) = (
        pairing::Device::start().await.unwrap(),
        pairing::Device::start().await.unwrap(),
    );
    pairing::pair(&a, &b, "phone").await.unwrap();
    let rp = example_rp();
    let early = register_user(&mut client(&a.daemon).await, &rp, "early").await;
    let phrase = setup(&a.daemon).await;
    let shelf = tempfile::tempdir().unwrap();
    let file = shelf.path().join("laptop.age");
    a.daemon
        .cli(&["backup", "--out", file.to_str().unwrap()])
        .await
        .unwrap()
        .expect_success("backup");
    // The laptop is lost; the phone survives and keeps being used.
    drop(a);
    let while_away = register_user(&mut client(&b.daemon).await, &rp, "while-away").await;
    let fresh = pairing::Device::start().await.unwrap();
    let out = restore(&fresh.daemon, &file, &phrase).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The phone does not know the restored laptop: pairing them again (same vault) lets them meet, nothing is
    // replaced on either side.
    pairing::pair(&fresh, &b, "phone").await.unwrap();
    let late = register_user(&mut client(&fresh.daemon).await, &rp, "late").await;
    for d in [&fresh.daemon, &b.daemon] {
        eventually(LIMIT, "all three passkeys on both devices", async || {
            (list_len(d).await? == 3).then_some(())
        })
        .await
        .unwrap();
        all_sign_in(d, &[early.clone(), while_away.clone(), late.clone()]).await;
    }
}
