//! Daemons in network namespaces on a private bridge: three devices, one cut off and healed while both sides
//! keep changing the vault; a pair speaking QUIC only; a pair that finds each other by mDNS alone.
//!
//! These tests need root (CI runs them as root) and iproute2; they fail and say so otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use passmesh_ipc::{Base64Url, Client, RequestBody, ResponseBody};
use passmesh_tests::Lan;
use passmesh_tests::mesh::{self, Discovery, Node, Placement, all_connected, eventually};
use passmesh_tests::ops;

use crate::sync::try_sign_in;
use crate::{Registered, example_rp, register_user};

const LIMIT: Duration = Duration::from_secs(20);
/// Every daemon listens on this port of its own namespace's address: namespaces do not share ports.
const PORT: u16 = 4001;

fn lan(devices: usize) -> Lan {
    passmesh_tests::netns::require_root().unwrap_or_else(|e| panic!("{e:#}"));
    // Build the daemon binaries first, so that a test's timings are its own.
    passmesh_tests::binaries().unwrap_or_else(|e| panic!("{e:#}"));
    Lan::new(devices).unwrap_or_else(|e| panic!("cannot build the namespace LAN: {e:#}"))
}

/// Pairs one daemon per device of `lan`, each listening on `listen(address)` inside its namespace.
async fn nodes_on(
    lan: &Lan,
    discovery: Discovery,
    listen: impl Fn(std::net::Ipv4Addr) -> String,
) -> Vec<Node> {
    let placements = (0..lan.len())
        .map(|i| Placement {
            listen: vec![listen(lan.addr(i))],
            netns: Some(lan.namespace(i).to_owned()),
        })
        .collect();
    mesh::paired_at(placements, discovery)
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"))
}

fn tcp(ip: std::net::Ipv4Addr) -> String {
    format!("/ip4/{ip}/tcp/{PORT}")
}

async fn connect(n: &Node) -> Client {
    n.daemon
        .client()
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e:#}"))
}

/// `rename`; whether the passkey existed.
async fn rename(client: &mut Client, id: &[u8], label: &str) -> bool {
    let body = RequestBody::Rename {
        credential_id: Base64Url(id.to_vec()),
        label: label.to_owned(),
    };
    match client.call(body).await {
        Ok(ResponseBody::Rename { renamed }) => renamed,
        other => panic!("rename answered {other:?}"),
    }
}

/// What `list` shows: credential id → label.
async fn labels(client: &mut Client) -> Option<BTreeMap<Vec<u8>, Option<String>>> {
    let list = ops::list(client, None).await.ok()?;
    Some(
        list.into_iter()
            .map(|p| (p.credential_id.0, p.label))
            .collect(),
    )
}

fn ids(regs: &[&Registered]) -> BTreeSet<Vec<u8>> {
    regs.iter().map(|r| r.id().to_vec()).collect()
}

/// Waits until `client` lists exactly the passkeys `want` (by id).
async fn holds_exactly(client: &mut Client, want: &BTreeSet<Vec<u8>>, what: &str) {
    eventually(LIMIT, what, async || {
        let have: BTreeSet<Vec<u8>> = labels(client).await?.into_keys().collect();
        (have == *want).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_cut_apart_and_healed_converge() {
    let lan = lan(3);
    let started = Instant::now();
    let nodes = nodes_on(&lan, Discovery::ConfigPeers, tcp).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    all_connected(&[a, b, c], LIMIT).await.expect("connected");
    let rp = example_rp();
    let (mut ca, mut cb, mut cc) = (connect(a).await, connect(b).await, connect(c).await);

    // Three passkeys made on A reach everyone before the cut.
    let keep = register_user(&mut ca, &rp, "keep").await;
    let gone_on_b = register_user(&mut ca, &rp, "gone-on-b").await;
    let gone_on_c = register_user(&mut ca, &rp, "gone-on-c").await;
    let before = ids(&[&keep, &gone_on_b, &gone_on_c]);
    for client in [&mut ca, &mut cb, &mut cc] {
        holds_exactly(client, &before, "the first passkeys everywhere").await;
    }

    lan.cut(2).expect("cut C off");
    assert!(!lan.is_connected(2).expect("link state"));

    // A and B go on working, and keep syncing with each other.
    let on_a = register_user(&mut ca, &rp, "made-on-a").await;
    eventually(LIMIT, "A's new passkey on B during the cut", async || {
        try_sign_in(&mut cb, &rp, &on_a).await
    })
    .await
    .expect("A and B sync while C is away");
    let on_b = register_user(&mut cb, &rp, "made-on-b").await;
    assert!(
        ops::delete(&mut cb, gone_on_b.id()).await.expect("delete"),
        "B deletes"
    );
    assert!(rename(&mut ca, keep.id(), "renamed on A").await);
    // C, alone, changes the vault too, renaming the same passkey.
    let on_c = register_user(&mut cc, &rp, "made-on-c").await;
    assert!(
        ops::delete(&mut cc, gone_on_c.id()).await.expect("delete"),
        "C deletes"
    );
    assert!(rename(&mut cc, keep.id(), "renamed on C").await);

    // A and B agree with each other; C saw none of it, nor did they see C's changes.
    let ab = ids(&[&keep, &gone_on_c, &on_a, &on_b]);
    holds_exactly(&mut ca, &ab, "A and B to agree during the cut").await;
    holds_exactly(&mut cb, &ab, "A and B to agree during the cut").await;
    eventually(LIMIT, "A's rename on B", async || {
        let l = labels(&mut cb).await?;
        (l.get(keep.id())? == &Some("renamed on A".to_owned())).then_some(())
    })
    .await
    .expect("the rename reaches B");
    let on_c_alone = labels(&mut cc).await.expect("list on C");
    assert_eq!(
        on_c_alone.keys().cloned().collect::<BTreeSet<_>>(),
        ids(&[&keep, &gone_on_b, &on_c]),
        "nothing crossed the cut"
    );
    assert_eq!(on_c_alone[keep.id()].as_deref(), Some("renamed on C"));
    assert!(try_sign_in(&mut ca, &rp, &on_c).await.is_none());
    let cut_for = started.elapsed();

    lan.heal(2).expect("heal");
    let healed = Instant::now();
    // Everything acknowledged anywhere is kept unless deleted; deletions on either side win everywhere.
    let all = ids(&[&keep, &on_a, &on_b, &on_c]);
    let agreed = eventually(LIMIT, "all three to converge", async || {
        let la = labels(&mut ca).await?;
        let lb = labels(&mut cb).await?;
        let lc = labels(&mut cc).await?;
        let same = la == lb && lb == lc && la.keys().cloned().collect::<BTreeSet<_>>() == all;
        same.then_some(la)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let converged_in = healed.elapsed();
    let label = agreed[keep.id()].clone();
    assert!(
        label.as_deref() == Some("renamed on A") || label.as_deref() == Some("renamed on C"),
        "the concurrent rename resolves to one of the two labels, not {label:?}"
    );
    // The passkeys made on either side of the cut sign in on the other, verified by the RP.
    assert!(try_sign_in(&mut ca, &rp, &on_c).await.is_some(), "C's on A");
    assert!(try_sign_in(&mut cc, &rp, &on_a).await.is_some(), "A's on C");
    assert!(try_sign_in(&mut cc, &rp, &on_b).await.is_some(), "B's on C");
    for client in [&mut ca, &mut cb, &mut cc] {
        assert!(try_sign_in(client, &rp, &gone_on_b).await.is_none());
        assert!(try_sign_in(client, &rp, &gone_on_c).await.is_none());
    }
    eprintln!(
        "three devices: set up and cut phase {cut_for:?}, converged {converged_in:?} after the heal, \
         whole test {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_speaking_only_quic_sync() {
    let lan = lan(2);
    let started = Instant::now();
    let nodes = nodes_on(&lan, Discovery::ConfigPeers, |ip| {
        format!("/ip4/{ip}/udp/{PORT}/quic-v1")
    })
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    all_connected(&[a, b], LIMIT).await.expect("connected");
    for n in [a, b] {
        let s = n.status().await.expect("status");
        assert!(
            !s.listen_addrs.is_empty() && s.listen_addrs.iter().all(|l| l.contains("/quic-v1")),
            "{s:?}"
        );
        assert!(
            s.peers[0]
                .address
                .as_deref()
                .is_some_and(|addr| addr.contains("/udp/") && addr.contains("/quic-v1")),
            "connected over QUIC: {s:?}"
        );
    }
    let rp = example_rp();
    let mut ca = connect(a).await;
    let mut cb = connect(b).await;
    let reg = register_user(&mut ca, &rp, "alice").await;
    eventually(LIMIT, "the passkey on B", async || {
        try_sign_in(&mut cb, &rp, &reg).await
    })
    .await
    .expect("B signs with A's passkey");
    eprintln!("QUIC pair: whole test {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_find_each_other_by_mdns() {
    let lan = lan(2);
    let started = Instant::now();
    let nodes = nodes_on(&lan, Discovery::Mdns, tcp).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    all_connected(&[a, b], LIMIT)
        .await
        .expect("mDNS brings them together");
    let found_in = started.elapsed();
    // They met on the LAN, at the addresses nobody told them.
    let s = a.status().await.expect("status");
    let want = format!("/ip4/{}/", lan.addr(1));
    assert!(
        s.peers[0]
            .address
            .as_deref()
            .is_some_and(|addr| addr.contains(&want)),
        "A reached B on the LAN: {s:?}"
    );
    let rp = example_rp();
    let mut ca = connect(a).await;
    let mut cb = connect(b).await;
    let reg = register_user(&mut ca, &rp, "alice").await;
    eventually(LIMIT, "the passkey on B", async || {
        try_sign_in(&mut cb, &rp, &reg).await
    })
    .await
    .expect("B signs with A's passkey");
    eprintln!(
        "mDNS pair: connected {found_in:?} after the start, whole test {:?}",
        started.elapsed()
    );
}
