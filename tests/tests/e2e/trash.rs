//! The trash and the audit log with real daemons: a passkey deleted on one device (even one removed afterwards)
//! is restored from another; a purge rotates the key everywhere; the audit log records who did what, the same on
//! every device; and a device entry and an audit entry forged on a member's disk are refused and shown as such.

use std::time::Duration;

use automerge::ReadDoc;
use automerge::transaction::Transactable;
use passmesh_crdt::Vault;
use passmesh_daemon::custody::keystore::{Choice, TpmOptions};
use passmesh_daemon::{ids, pairing};
use passmesh_ipc::{AuditInfo, Client, DeviceInfo, DeviceState, RequestBody, ResponseBody};
use passmesh_tests::mesh::{self, Node, all_connected, eventually};
use passmesh_transport as transport;

use crate::sync::{knock_as, try_sign_in};
use crate::{Registered, example_rp, register_user};

const LIMIT: Duration = Duration::from_secs(20);

async fn connect(n: &Node) -> Client {
    n.daemon
        .client()
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e:#}"))
}

async fn call(n: &Node, body: RequestBody) -> Option<ResponseBody> {
    n.daemon.client().await.ok()?.call(body).await.ok()
}

/// Whether `n` lists the passkey (`list`), and whether it has it in the trash.
async fn where_is(n: &Node, reg: &Registered) -> Option<(bool, bool)> {
    let mut c = n.daemon.client().await.ok()?;
    let listed = c
        .list_all(None)
        .await
        .ok()?
        .iter()
        .any(|p| p.credential_id.0 == reg.id());
    let trashed = c
        .trash_all()
        .await
        .ok()?
        .iter()
        .any(|t| t.passkey.credential_id.0 == reg.id());
    Some((listed, trashed))
}

async fn wait_where(n: &Node, reg: &Registered, want: (bool, bool), what: &str) {
    eventually(LIMIT, what, async || {
        (where_is(n, reg).await? == want).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `passmesh trash restore ID` on `n`; its output, once it succeeded.
async fn restore(n: &Node, id: &str) -> String {
    n.daemon
        .cli(&["trash", "restore", id])
        .await
        .expect("run the CLI")
        .expect_success("trash restore")
        .to_owned()
}

fn credential(reg: &Registered) -> String {
    passmesh_ipc::Base64Url(reg.id().to_vec()).to_base64()
}

async fn audit(n: &Node) -> Vec<AuditInfo> {
    let out = n
        .daemon
        .cli(&["--json", "audit"])
        .await
        .expect("run the CLI");
    let v = out.json("audit");
    serde_json::from_value(v["entries"].clone()).expect("audit entries")
}

async fn devices(n: &Node) -> Vec<DeviceInfo> {
    match call(n, RequestBody::DeviceList).await {
        Some(ResponseBody::DeviceList { devices }) => devices,
        other => panic!("deviceList: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_passkey_is_restored_from_another_device_even_when_its_deleter_was_removed() {
    // A's PIN is set before the others join: they trust its approvals at once.
    let mut nodes = mesh::paired_with_pin(3, "482916")
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    all_connected(&[a, b, c], LIMIT).await.expect("connected");
    let rp = example_rp();
    let mut ca = connect(a).await;
    let kept = register_user(&mut ca, &rp, "kept").await;
    let purged = register_user(&mut ca, &rp, "purged").await;
    for n in [b, c] {
        wait_where(n, &purged, (true, false), "both passkeys everywhere").await;
    }

    // C deletes a passkey: it leaves every list and every sign-in, and sits in every trash.
    let out = c
        .daemon
        .cli(&["delete", &credential(&kept)[..12]])
        .await
        .expect("run the CLI");
    assert!(out.expect_success("delete").contains("to the trash"));
    for n in [a, b, c] {
        wait_where(n, &kept, (false, true), "the deleted passkey in the trash").await;
    }
    assert!(try_sign_in(&mut ca, &rp, &kept).await.is_none());

    // C turns out to be stolen: A removes it. What C deleted is still B's to restore.
    let out = a
        .daemon
        .cli_with_stdin(
            &["device", "remove", &c.peer_id[..20], "--pin-stdin"],
            "482916\n",
        )
        .await
        .expect("run the CLI");
    out.expect_success("device remove");
    assert!(
        restore(b, &credential(&kept)[..12])
            .await
            .contains("restored passkey")
    );
    wait_where(a, &kept, (true, false), "the restored passkey back on A").await;
    eventually(
        LIMIT,
        "a sign-in on A with the restored passkey",
        async || try_sign_in(&mut ca, &rp, &kept).await,
    )
    .await
    .expect("restored");

    // B deletes the other; A purges it for good, which rotates the key.
    b.daemon
        .cli(&["delete", &credential(&purged)])
        .await
        .expect("run the CLI")
        .expect_success("delete");
    wait_where(a, &purged, (false, true), "B's delete on A").await;
    // With A's PIN, so that the purge is approved and every device destroys the old keys at once.
    let out = a
        .daemon
        .cli_with_stdin(
            &[
                "--json",
                "trash",
                "purge",
                &credential(&purged)[..12],
                "--pin-stdin",
            ],
            "482916\n",
        )
        .await
        .expect("run the CLI");
    let v = out.json("trash purge");
    assert_eq!(v["purged"], 1, "{v}");
    assert_eq!(v["approved"], true, "{v}");
    let purge_epoch = u32::try_from(v["epoch"].as_u64().expect("an epoch")).expect("u32");
    wait_where(b, &purged, (false, false), "the purge on B").await;
    wait_where(a, &kept, (true, false), "the other passkey untouched").await;

    // Both remaining devices show the same log, every entry verified, C's delete (made while it was a
    // member) included. The mesh was set up by each device admitting the others: A added B and C, B added C,
    // C added B.
    let mut expect: Vec<(&str, &str)> = vec![
        ("pin-key-set", &a.peer_id),
        ("device-paired", &a.peer_id),
        ("device-paired", &a.peer_id),
        ("device-paired", &b.peer_id),
        ("device-paired", &c.peer_id),
        ("passkey-trashed", &c.peer_id),
        ("device-removed", &a.peer_id),
        ("key-rotated", &a.peer_id),
        ("passkey-restored", &b.peer_id),
        ("passkey-trashed", &b.peer_id),
        ("passkey-purged", &a.peer_id),
        ("key-rotated", &a.peer_id),
        ("purge-approved", &a.peer_id),
    ];
    expect.sort_unstable();
    let mut logs = Vec::new();
    for n in [a, b] {
        let waited = eventually(LIMIT, "every event in the log", async || {
            let log = audit(n).await;
            (log.len() == expect.len()).then_some(log)
        })
        .await;
        let log = match waited {
            Ok(log) => log,
            Err(e) => panic!("{e:#}\n{:#?}", audit(n).await),
        };
        let mut got: Vec<(&str, &str)> = log
            .iter()
            .map(|e| (e.event.as_str(), e.device_id.as_str()))
            .collect();
        got.sort_unstable();
        assert_eq!(got, expect, "{log:#?}");
        assert!(log.iter().all(|e| e.verified), "{log:#?}");
        // Entries about a passkey this device still holds name it.
        for e in log.iter().filter(|e| e.event.starts_with("passkey-")) {
            let name = e.subject_name.as_deref().unwrap_or_default();
            if e.event == "passkey-restored" || e.device_id == c.peer_id {
                assert!(name.contains(&kept.user.name), "{e:?}");
            } else {
                assert!(
                    e.subject_name.is_none(),
                    "a purged passkey is not named: {e:?}"
                );
            }
        }
        logs.push(log);
    }
    assert_eq!(logs[0], logs[1]);
    // The text form marks each entry.
    let text = a.daemon.cli(&["audit"]).await.expect("run the CLI");
    let text = text.expect_success("audit");
    assert!(
        text.contains("passkey-purged") && text.contains("0 not verified"),
        "{text}"
    );

    // Both remaining devices say they keep the new epoch's key alone.
    for n in [a, b] {
        eventually(LIMIT, "no old keys in status", async || {
            match call(n, RequestBody::Status).await? {
                ResponseBody::Status { status } => status.old_keys.is_none().then_some(()),
                _ => None,
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        eventually(LIMIT, "old keys destroyed everywhere", async || {
            let listed = devices(n).await;
            [a, b]
                .iter()
                .all(|m| {
                    listed
                        .iter()
                        .any(|d| d.device_id == m.peer_id && d.key_epoch == Some(purge_epoch))
                })
                .then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let text = b
        .daemon
        .cli(&["device", "list"])
        .await
        .expect("run the CLI");
    assert!(
        text.expect_success("device list")
            .contains(&format!("epoch {purge_epoch} only")),
        "{}",
        text.stdout
    );
    // Each remaining device's whole disk — its sealed keyring and identity, unsealed, and its document — opens
    // no epoch before the purge: the purged passkey's ciphertext in the document's history is under those.
    drop(ca);
    let tpm = TpmOptions::default();
    for n in &mut nodes[..2] {
        n.daemon.stop().await.expect("stop");
        let disk = pairing::disk(n.state_dir(), Choice::Software, &tpm).expect("disk");
        assert_eq!(
            disk.keyring.epochs().map(|e| e.0).collect::<Vec<_>>(),
            vec![purge_epoch],
            "the sealed keyring keeps the new epoch alone"
        );
        let opened = Vault::load_as(
            &disk.document,
            disk.keyring.clone(),
            Some(ids::local_device(&disk.identity)),
        )
        .expect("the vault");
        assert_eq!(
            opened.keyring().epochs().map(|e| e.0).collect::<Vec<_>>(),
            vec![purge_epoch],
            "no wrap in the document opens an older epoch with what is on this disk"
        );
        assert!(opened.find_by_credential_id(kept.id()).is_some());
        assert_eq!((opened.len(), opened.trashed_len()), (1, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_stolen_device_purges_is_kept_restorable_on_the_others_even_with_a_pin_it_set() {
    let nodes = mesh::paired(2)
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"));
    let (a, b) = (&nodes[0], &nodes[1]);
    all_connected(&[a, b], LIMIT).await.expect("connected");
    let rp = example_rp();
    let mut ca = connect(a).await;
    let victim = register_user(&mut ca, &rp, "victim").await;
    wait_where(b, &victim, (true, false), "the passkey on B").await;

    // B is stolen, its session unlocked and no PIN set: its thief deletes the passkey, sets a PIN of its own
    // and purges with it at once, which rotates the key everywhere and approves the purge with a PIN key that
    // A has not known for the keeping time.
    b.daemon
        .cli(&["delete", &credential(&victim)])
        .await
        .expect("run the CLI")
        .expect_success("delete");
    b.daemon
        .cli_with_stdin(&["pin", "set"], "1111\n")
        .await
        .expect("run the CLI")
        .expect_success("pin set");
    let out = b
        .daemon
        .cli_with_stdin(&["--json", "trash", "purge", "--pin-stdin"], "1111\n")
        .await
        .expect("run the CLI");
    let v = out.json("trash purge");
    assert_eq!(v["purged"], 1, "{v}");
    assert!(v["epoch"].is_u64(), "rotated: {v}");

    // A follows the purge (the passkey leaves its list and sign-in fails), but keeps the old key and lists the
    // passkey in its trash as purged by B, not approved.
    let listed = eventually(LIMIT, "B's purge on A, kept restorable", async || {
        let trash = connect(a).await.trash_all().await.ok()?;
        let listed = connect(a).await.list_all(None).await.ok()?;
        (listed.is_empty() && trash.len() == 1 && trash[0].purged).then_some(trash)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(listed[0].purged, "{listed:?}");
    assert_eq!(listed[0].purged_by.as_deref(), Some(b.peer_id.as_str()));
    assert_eq!(listed[0].passkey.credential_id.0, victim.id());
    assert!(try_sign_in(&mut ca, &rp, &victim).await.is_none());
    let text = a.daemon.cli(&["trash", "list"]).await.expect("run the CLI");
    assert!(
        text.expect_success("trash list")
            .contains(&format!("purged by device {}", b.peer_id)),
        "{}",
        text.stdout
    );
    // A says why: the keeping time, about `trash_days` (30) from now.
    let status = a
        .daemon
        .cli(&["--json", "status"])
        .await
        .expect("run the CLI")
        .json("status");
    let kept = &status["status"]["oldKeys"];
    assert_eq!(kept["reason"], "kept", "{status}");
    let until = kept["untilMs"].as_u64().expect("until");
    let in_days = until.saturating_sub(listed[0].trashed_at_ms) / 86_400_000;
    assert!((29..=30).contains(&in_days), "{status}");

    // The user removes B (a rotation that A alone acknowledges at once: without the keeping time it would
    // destroy every older key right away) and brings the passkey back from A's trash: it signs in again.
    a.daemon
        .cli(&["device", "remove", &b.peer_id[..20]])
        .await
        .expect("run the CLI")
        .expect_success("device remove");
    let out = restore(a, &credential(&victim)[..12]).await;
    assert!(out.contains("restored passkey"), "{out}");
    eventually(
        LIMIT,
        "a sign-in on A with the passkey the thief purged",
        async || try_sign_in(&mut ca, &rp, &victim).await,
    )
    .await
    .expect("brought back");
    assert!(
        connect(a)
            .await
            .trash_all()
            .await
            .expect("trash")
            .is_empty()
    );
    let log = audit(a).await;
    assert!(
        log.iter()
            .any(|e| e.event == "passkey-restored" && e.device_id == a.peer_id && e.verified),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_entry_and_an_audit_entry_forged_on_a_members_disk_are_refused() {
    let mut nodes = mesh::paired(2)
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"));
    all_connected(&[&nodes[0], &nodes[1]], LIMIT)
        .await
        .expect("connected");
    let rp = example_rp();
    let victim = register_user(&mut connect(&nodes[0]).await, &rp, "victim").await;
    let overwritten = register_user(&mut connect(&nodes[0]).await, &rp, "overwritten").await;
    wait_where(&nodes[1], &overwritten, (true, false), "the passkeys on B").await;
    nodes[1].daemon.stop().await.expect("stop B");

    // Someone with write access to B's disk (and its unsealed keys) adds a device of their own, unsigned, an
    // audit entry claiming that A removed B, deletes a passkey with B's clock set back to 1970 (so that it
    // would have expired from the trash decades ago), and overwrites another passkey's content.
    let tpm = TpmOptions::default();
    let disk = pairing::disk(nodes[1].state_dir(), Choice::Software, &tpm).expect("B's disk");
    let mut vault = Vault::load_as(
        &disk.document,
        disk.keyring.clone(),
        Some(ids::local_device(&disk.identity)),
    )
    .expect("B's vault");
    let intruder = transport::Identity::generate();
    vault
        .add_device(passmesh_crdt::Device {
            id: passmesh_crdt::DeviceId::new(intruder.peer_id().to_string()),
            name: "intruder".into(),
            x25519_public: transport::pairing::PairKey::derive(&intruder).public(),
            added_by: Some(passmesh_crdt::DeviceId::new(nodes[1].peer_id.clone())),
            added_at_ms: 1,
            kind: passmesh_crdt::MemberKind::Device,
            signature: None,
        })
        .expect("add");
    let record = vault
        .find_by_credential_id(victim.id())
        .expect("the passkey")
        .record_id;
    vault.trash(&record, 1_000).expect("trash");
    let mut chunk = vault.save_incremental();
    let mut doc = automerge::Automerge::load(&[disk.document.as_slice(), &chunk].concat())
        .expect("the document");
    let heads = doc.get_heads();
    let a_id = nodes[0].peer_id.clone();
    let b_id = nodes[1].peer_id.clone();
    let mut forged = vec![1u8, 2];
    for (s, at) in [(&a_id, Some(1_800_000_000_000u64)), (&b_id, None)] {
        forged.extend_from_slice(&u16::try_from(s.len()).expect("short").to_be_bytes());
        forged.extend_from_slice(s.as_bytes());
        if let Some(at) = at {
            forged.extend_from_slice(&at.to_be_bytes());
        }
    }
    forged.extend_from_slice(&[0x11; 64]);
    let (_, ext) = doc.get(automerge::ROOT, "ext").expect("read").expect("ext");
    let (_, log) = doc.get(&ext, "audit").expect("read").expect("audit");
    let (_, records) = doc
        .get(automerge::ROOT, "records")
        .expect("read")
        .expect("records");
    let overwritten_id = vault
        .find_by_credential_id(overwritten.id())
        .expect("the other passkey")
        .record_id;
    let (_, overwritten_obj) = doc
        .get(&records, overwritten_id.to_string())
        .expect("read")
        .expect("the record");
    let mut tx = doc.transaction();
    tx.put(&log, passmesh_crdt::audit::key_of(&forged), forged)
        .expect("put");
    tx.put(
        &overwritten_obj,
        "c",
        automerge::ScalarValue::Bytes(vec![7; 96]),
    )
    .expect("put");
    tx.commit();
    chunk.extend(doc.save_after(&heads));
    pairing::append_to_document(nodes[1].state_dir(), &chunk).expect("write B's disk");
    nodes[1].daemon.restart().await.expect("restart B");
    let (a, b) = (&nodes[0], &nodes[1]);
    all_connected(&[a, b], LIMIT)
        .await
        .expect("connected again");

    // A gets both, refuses the intruder's entry and shows the entry as forged.
    let intruder_id = intruder.peer_id().to_string();
    let seen = eventually(LIMIT, "the forged entries on A", async || {
        let listed = devices(a).await;
        let entry = listed.into_iter().find(|d| d.device_id == intruder_id)?;
        let log = audit(a).await;
        let forged = log.into_iter().find(|e| e.event == "device-removed")?;
        Some((entry, forged))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(seen.0.state, DeviceState::Invalid, "{:?}", seen.0);
    assert!(!seen.1.verified, "{:?}", seen.1);
    assert_eq!(
        seen.1.problem.as_deref(),
        Some("forged: its signature does not verify")
    );
    assert_eq!(seen.1.subject, b_id);
    let text = a.daemon.cli(&["audit"]).await.expect("run the CLI");
    assert!(
        text.expect_success("audit")
            .contains("NOT VERIFIED: forged"),
        "{}",
        text.stdout
    );
    // B is still a member, and the intruder's identity is refused at A's gate.
    let listed = devices(a).await;
    let b_entry = listed.iter().find(|d| d.device_id == b_id).expect("B");
    assert_eq!(b_entry.state, DeviceState::Active);
    let knocked = knock_as(&intruder, a).await;
    assert!(
        !knocked
            .iter()
            .any(|e| matches!(e, transport::Event::Message { .. })),
        "the intruder received a sync message: {knocked:?}"
    );
    assert!(
        a.daemon.log().contains(&intruder_id),
        "A did not refuse the intruder at its gate"
    );

    // The passkey went to A's trash, to be purged 30 days after A saw it there, not after the time B claims;
    // A's look at the trash at its next start leaves it there, restorable.
    wait_where(a, &victim, (false, true), "the delete on A").await;
    let trashed = connect(a).await.trash_all().await.expect("trash");
    let now = passmesh_daemon::now_ms();
    assert_eq!(trashed[0].trashed_at_ms, 1_000);
    assert!(
        trashed[0].purge_at_ms > now + 29 * 86_400_000,
        "{trashed:?}"
    );
    nodes[0].daemon.restart().await.expect("restart A");
    let a = &nodes[0];
    eventually(LIMIT, "A's trash after its restart", async || {
        where_is(a, &victim).await
    })
    .await
    .map(|w| assert_eq!(w, (false, true), "still in the trash"))
    .unwrap_or_else(|e| panic!("{e:#}"));
    restore(a, &credential(&victim)).await;
    wait_where(a, &victim, (true, false), "restored on A").await;

    // The overwritten passkey no longer signs in, but A's trash offers its last good version, which signs in
    // again once restored, on both devices.
    let mut ca = connect(a).await;
    assert!(try_sign_in(&mut ca, &rp, &overwritten).await.is_none());
    let trashed = connect(a).await.trash_all().await.expect("trash");
    let offered = trashed
        .iter()
        .find(|t| t.passkey.credential_id.0 == overwritten.id())
        .unwrap_or_else(|| panic!("the overwritten passkey is not offered: {trashed:?}"));
    assert!(offered.altered && !offered.purged, "{offered:?}");
    restore(a, &credential(&overwritten)).await;
    eventually(
        LIMIT,
        "the overwritten passkey signs in again on A",
        async || try_sign_in(&mut ca, &rp, &overwritten).await,
    )
    .await
    .expect("restored");
    let mut cb = connect(&nodes[1]).await;
    eventually(LIMIT, "and on B", async || {
        try_sign_in(&mut cb, &rp, &overwritten).await
    })
    .await
    .expect("restored on B");
    assert!(
        connect(a)
            .await
            .trash_all()
            .await
            .expect("trash")
            .iter()
            .all(|t| !t.altered),
        "no longer offered"
    );
}
