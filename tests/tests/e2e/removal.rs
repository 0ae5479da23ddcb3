//! Removing a lost or stolen device from real daemons: the removed device is refused by every device that
//! learns of the removal, a passkey created afterwards never reaches it and cannot be decrypted from its disk;
//! a removal made during a partition, and removals made on both sides of one, all take effect when it heals.
//!
//! The partition tests use network namespaces: they need root (CI runs them as root) and iproute2.

use std::time::Duration;

use passmesh_crdt::Vault;
use passmesh_daemon::custody::keystore::{Choice, TpmOptions};
use passmesh_daemon::{ids, pairing};
use passmesh_ipc::{Client, DeviceInfo, DeviceState, RequestBody, ResponseBody};
use passmesh_tests::Lan;
use passmesh_tests::mesh::{self, Discovery, Node, Placement, all_connected, eventually};
use passmesh_transport as transport;

use crate::sync::{knock_as, try_sign_in};
use crate::{example_rp, register_user};

const LIMIT: Duration = Duration::from_secs(20);
const PORT: u16 = 4001;

async fn connect(n: &Node) -> Client {
    n.daemon
        .client()
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e:#}"))
}

async fn devices(n: &Node) -> Option<Vec<DeviceInfo>> {
    let mut c = n.daemon.client().await.ok()?;
    match c.call(RequestBody::DeviceList).await.ok()? {
        ResponseBody::DeviceList { devices } => Some(devices),
        _ => None,
    }
}

/// Waits until `n` lists `removed` as removed (by `by`) and no longer counts it among its peers.
async fn sees_removed(n: &Node, removed: &Node, by: &Node, what: &str) {
    eventually(LIMIT, what, async || {
        let list = devices(n).await?;
        let entry = list.iter().find(|d| d.device_id == removed.peer_id)?;
        let status = n.status().await.ok()?;
        (entry.state == DeviceState::Removed
            && entry.removed_by.as_deref() == Some(by.peer_id.as_str())
            && !entry.connected
            && status.peers.iter().all(|p| p.device_id != removed.peer_id))
        .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Waits until `n` is connected to none of `others` (they refuse it).
async fn refused_by(n: &Node, others: &[&Node], what: &str) {
    eventually(LIMIT, what, async || {
        let s = n.status().await.ok()?;
        s.peers
            .iter()
            .filter(|p| others.iter().any(|o| o.peer_id == p.device_id))
            .all(|p| !p.connected)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `passmesh device remove` on `on`, naming `whom` by a prefix of its id.
async fn remove(on: &Node, whom: &Node) {
    let prefix = &whom.peer_id[..20];
    let out = on
        .daemon
        .cli(&["device", "remove", prefix])
        .await
        .expect("run the CLI");
    let text = out.expect_success("device remove");
    assert!(text.contains("removed device"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_refused_everywhere_and_cannot_read_new_passkeys() {
    let mut nodes = mesh::paired(3)
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    all_connected(&[a, b, c], LIMIT).await.expect("connected");
    let rp = example_rp();
    let (mut ca, mut cb, mut cc) = (connect(a).await, connect(b).await, connect(c).await);
    let before = register_user(&mut ca, &rp, "before").await;
    eventually(LIMIT, "the first passkey on C", async || {
        try_sign_in(&mut cc, &rp, &before).await
    })
    .await
    .expect("C had it");

    // Removing this device itself is refused, and the message says what to do.
    let own = a
        .daemon
        .cli(&["device", "remove", &a.peer_id])
        .await
        .expect("run the CLI");
    assert_ne!(own.code, Some(0));
    assert!(
        own.stderr
            .contains("remove it from another of your devices"),
        "{}",
        own.stderr
    );

    remove(a, c).await;
    sees_removed(a, c, a, "A to drop C").await;
    sees_removed(b, c, a, "B to learn of the removal and drop C").await;
    refused_by(c, &[a, b], "C to be refused by A and B").await;
    // The device list tells who is who.
    let listed = devices(b).await.expect("device list");
    assert_eq!(listed.len(), 3);
    let b_entry = listed.iter().find(|d| d.this_device).expect("B itself");
    assert_eq!(b_entry.device_id, b.peer_id);
    assert_eq!(b_entry.state, DeviceState::Active);
    let a_entry = listed.iter().find(|d| d.device_id == a.peer_id).expect("A");
    assert!(a_entry.connected && a_entry.last_seen_ms.is_some());

    // A passkey created after the removal reaches B and never C.
    let after = register_user(&mut ca, &rp, "after").await;
    eventually(LIMIT, "the new passkey on B", async || {
        try_sign_in(&mut cb, &rp, &after).await
    })
    .await
    .expect("B gets it");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(try_sign_in(&mut cc, &rp, &after).await.is_none());
    refused_by(c, &[a, b], "C to stay refused").await;

    // A thief need not run C's daemon (which gives up once it hears of its removal): it dials A with
    // C's identity, taken from C's disk. A's gate refuses it before any vault byte moves.
    drop(cc);
    nodes[2].daemon.stop().await.expect("stop C");
    let (a, c) = (&nodes[0], &nodes[2]);
    let tpm = TpmOptions::default();
    let thief = pairing::disk(c.state_dir(), Choice::Software, &tpm).expect("C's disk");
    assert_eq!(thief.identity.peer_id().to_string(), c.peer_id);
    let seen = knock_as(&thief.identity, a).await;
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, transport::Event::Message { .. })),
        "the removed device received a sync message: {seen:?}"
    );
    let log = a.daemon.log();
    assert!(
        log.contains("refused a peer") && log.contains(&c.peer_id),
        "A did not refuse C at its gate:\n{log}"
    );

    // C's whole disk — its sealed keyring and identity, unsealed — against the vault as A holds it now: nothing
    // opens, not the new passkey nor the old one (re-encrypted under the new key).
    drop((ca, cb));
    for n in &mut nodes[..2] {
        n.daemon.stop().await.expect("stop");
    }
    let a = &nodes[0];
    let now = pairing::disk(a.state_dir(), Choice::Software, &tpm).expect("A's disk");
    let current = Vault::load_as(
        &now.document,
        now.keyring.clone(),
        Some(ids::local_device(&now.identity)),
    )
    .expect("A's vault");
    assert!(current.find_by_credential_id(after.id()).is_some());
    let seen_by_thief = Vault::load_as(
        &now.document,
        thief.keyring.clone(),
        Some(ids::local_device(&thief.identity)),
    )
    .expect("the vault opens (its structure is not secret)");
    assert!(seen_by_thief.find_by_credential_id(after.id()).is_none());
    assert!(seen_by_thief.find_by_credential_id(before.id()).is_none());
    assert!(seen_by_thief.is_empty());
    assert!(
        seen_by_thief
            .keyring()
            .key(current.keyring().current())
            .is_none()
    );
    // And C's own replica never received it.
    let own = Vault::load_as(
        &thief.document,
        thief.keyring,
        Some(ids::local_device(&thief.identity)),
    )
    .expect("C's vault");
    assert!(own.find_by_credential_id(after.id()).is_none());
}

fn lan(devices: usize) -> Lan {
    passmesh_tests::netns::require_root().unwrap_or_else(|e| panic!("{e:#}"));
    passmesh_tests::binaries().unwrap_or_else(|e| panic!("{e:#}"));
    Lan::new(devices).unwrap_or_else(|e| panic!("cannot build the namespace LAN: {e:#}"))
}

async fn nodes_on(lan: &Lan) -> Vec<Node> {
    let placements = (0..lan.len())
        .map(|i| Placement {
            listen: vec![format!("/ip4/{}/tcp/{PORT}", lan.addr(i))],
            netns: Some(lan.namespace(i).to_owned()),
        })
        .collect();
    mesh::paired_at(placements, Discovery::ConfigPeers)
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_made_during_a_partition_reaches_everyone_when_it_heals() {
    let lan = lan(3);
    let nodes = nodes_on(&lan).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    all_connected(&[a, b, c], LIMIT).await.expect("connected");
    lan.cut(1).expect("cut B off");
    remove(a, c).await;
    sees_removed(a, c, a, "A to drop C").await;
    // B, cut off, still counts C as a member.
    let on_b = devices(b).await.expect("B's list");
    assert_eq!(
        on_b.iter()
            .find(|d| d.device_id == c.peer_id)
            .map(|d| d.state),
        Some(DeviceState::Active)
    );
    lan.heal(1).expect("heal");
    sees_removed(b, c, a, "B to learn of the removal once healed").await;
    refused_by(c, &[a, b], "C to be refused by both").await;
    // A and B sync on: a passkey made on B reaches A.
    let rp = example_rp();
    let (mut ca, mut cb) = (connect(a).await, connect(b).await);
    let made = register_user(&mut cb, &rp, "after the heal").await;
    eventually(LIMIT, "B's passkey on A", async || {
        try_sign_in(&mut ca, &rp, &made).await
    })
    .await
    .expect("A gets it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_made_on_both_sides_of_a_partition_both_take_effect() {
    let lan = lan(4);
    let nodes = nodes_on(&lan).await;
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    all_connected(&[a, b, c, d], LIMIT)
        .await
        .expect("connected");
    let rp = example_rp();
    let (mut ca, mut cb) = (connect(a).await, connect(b).await);
    let old = register_user(&mut ca, &rp, "old").await;
    eventually(LIMIT, "the passkey on B", async || {
        try_sign_in(&mut cb, &rp, &old).await
    })
    .await
    .expect("B has it");
    // A and B, each cut off alone, remove a different device.
    lan.cut(0).expect("cut A");
    lan.cut(1).expect("cut B");
    remove(a, c).await;
    remove(b, d).await;
    let made_on_a = register_user(&mut ca, &rp, "made on A during the cut").await;
    lan.heal(0).expect("heal A");
    lan.heal(1).expect("heal B");
    for (n, name) in [(a, "A"), (b, "B")] {
        sees_removed(n, c, a, &format!("{name} to drop C")).await;
        sees_removed(n, d, b, &format!("{name} to drop D")).await;
    }
    refused_by(c, &[a, b], "C to be refused by A and B").await;
    refused_by(d, &[a, b], "D to be refused by A and B").await;
    all_connected(&[a, b], LIMIT)
        .await
        .expect("A and B reconnect");
    // A and B converge, every passkey signing in on both.
    for reg in [&old, &made_on_a] {
        eventually(LIMIT, "every passkey on B", async || {
            try_sign_in(&mut cb, &rp, reg).await
        })
        .await
        .expect("B has it");
        assert!(try_sign_in(&mut ca, &rp, reg).await.is_some());
    }
    let made_on_b = register_user(&mut cb, &rp, "made on B after the heal").await;
    eventually(LIMIT, "B's new passkey on A", async || {
        try_sign_in(&mut ca, &rp, &made_on_b).await
    })
    .await
    .expect("A gets it");
}
