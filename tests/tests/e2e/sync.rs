//! Replication between paired daemons on loopback: create/get/delete across devices, the honest BS flag, a
//! daemon killed mid-sync, an unpaired libp2p peer, and garbage from a paired identity.

use std::time::Duration;

use passmesh_daemon::custody::keystore::{Choice, TpmOptions};
use passmesh_daemon::pairing;
use passmesh_ipc::Client;
use passmesh_tests::authdata::{AuthData, flag};
use passmesh_tests::mesh::{self, Node, all_connected, eventually};
use passmesh_tests::ops;
use passmesh_tests::rp::{RelyingParty, UserVerificationPolicy};
use passmesh_transport as transport;

use crate::{Registered, example_rp, register_user};

const LIMIT: Duration = Duration::from_secs(20);

async fn pair() -> (Node, Node) {
    let mut nodes = mesh::paired(2)
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"));
    let b = nodes.pop().expect("two nodes");
    let a = nodes.pop().expect("two nodes");
    (a, b)
}

async fn connect(n: &Node) -> Client {
    n.daemon
        .client()
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e:#}"))
}

/// Signs in on `client` with `reg` (allow-listed), verified by the RP; `None` while the daemon does not have it.
pub(crate) async fn try_sign_in(
    client: &mut Client,
    rp: &RelyingParty,
    reg: &Registered,
) -> Option<AuthData> {
    let (request, pending) = rp
        .begin_authentication(
            std::slice::from_ref(&reg.credential),
            UserVerificationPolicy::Discouraged_DO_NOT_USE,
        )
        .expect("request options");
    let response = ops::get(client, rp.origin(), request, None).await.ok()?;
    rp.finish_authentication(
        &response,
        pending,
        &[(reg.user.clone(), reg.credential.clone())],
    )
    .unwrap_or_else(|e| panic!("the RP rejected a synced passkey: {e:#}"));
    Some(AuthData::parse(response.response.authenticator_data.as_bytes()).expect("authData"))
}

async fn listed(client: &mut Client, id: &[u8]) -> Option<passmesh_ipc::PasskeyInfo> {
    ops::list(client, None)
        .await
        .expect("list")
        .into_iter()
        .find(|p| p.credential_id.0 == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_one_sign_in_on_the_other_delete_back_with_honest_bs() {
    let (a, mut b) = pair().await;
    let rp = example_rp();
    // B is away: A alone holds the new passkey, so it is not backed up.
    b.daemon.stop().await.expect("stop B");
    let mut ca = connect(&a).await;
    let reg = register_user(&mut ca, &rp, "alice").await;
    let made =
        AuthData::parse(reg.response.response.authenticator_data.as_bytes()).expect("authData");
    assert!(made.has(flag::BE), "BE is set on create");
    assert!(!made.has(flag::BS), "BS=0 while no other device holds it");
    assert!(!listed(&mut ca, reg.id()).await.expect("listed").backed_up);
    let signed = try_sign_in(&mut ca, &rp, &reg).await.expect("A signs");
    assert!(!signed.has(flag::BS));
    let s = a.status().await.expect("status");
    assert_eq!(s.device_id.as_deref(), Some(a.peer_id.as_str()));
    assert_eq!(s.peers.len(), 1);
    assert!(!s.peers[0].connected);
    assert!(s.peers[0].pending_changes > 0, "{s:?}");
    assert!(
        s.listen_addrs
            .iter()
            .any(|l| l.contains(&format!("/tcp/{}", a.port))),
        "{s:?}"
    );

    // B comes back: it receives the passkey and signs with it; A learns B holds it.
    b.daemon.restart().await.expect("restart B");
    all_connected(&[&a, &b], LIMIT).await.expect("connected");
    let mut cb = connect(&b).await;
    let on_b = eventually(LIMIT, "the passkey on B", async || {
        try_sign_in(&mut cb, &rp, &reg).await
    })
    .await
    .expect("B signs with A's passkey");
    assert!(
        on_b.has(flag::BS),
        "B got it from A: another device holds it"
    );
    eventually(LIMIT, "BS=1 on A", async || {
        try_sign_in(&mut ca, &rp, &reg)
            .await
            .filter(|d| d.has(flag::BS))
    })
    .await
    .expect("A's BS flag turns on");
    assert!(listed(&mut ca, reg.id()).await.expect("listed").backed_up);
    let s = a.status().await.expect("status");
    assert!(
        s.peers[0].connected && s.peers[0].last_sync_ms.is_some(),
        "{s:?}"
    );
    assert_eq!(s.peers[0].device_id, b.peer_id);

    // Delete on B: gone on A.
    assert!(ops::delete(&mut cb, reg.id()).await.expect("delete"));
    eventually(LIMIT, "the delete on A", async || {
        listed(&mut ca, reg.id()).await.is_none().then_some(())
    })
    .await
    .expect("A forgets the passkey");
    assert!(try_sign_in(&mut ca, &rp, &reg).await.is_none());
    eventually(LIMIT, "nothing pending", async || {
        let s = a.status().await.ok()?;
        (s.peers[0].pending_changes == 0).then_some(())
    })
    .await
    .expect("A's changes all reached B");
}

/// A libp2p host of our own on loopback that considers `peer` paired, with room for oversized messages.
pub(crate) async fn own_host(
    identity: &transport::Identity,
    peer: transport::PeerId,
) -> (
    transport::Handle,
    tokio::sync::mpsc::Receiver<transport::Event>,
) {
    let config = transport::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        mdns: false,
        paired: [peer].into_iter().collect(),
        limits: transport::Limits {
            max_message_size: 16 * 1024 * 1024,
            ..transport::Limits::default()
        },
        ..transport::Config::default()
    };
    transport::Host::start(config, identity)
        .await
        .unwrap_or_else(|e| panic!("own host: {e}"))
}

/// Events until `pred` matches one (returned), or `None` after `limit`; every event seen is pushed to `seen`.
pub(crate) async fn wait_event(
    events: &mut tokio::sync::mpsc::Receiver<transport::Event>,
    limit: Duration,
    seen: &mut Vec<transport::Event>,
    pred: impl Fn(&transport::Event) -> bool,
) -> Option<transport::Event> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .ok()??;
        seen.push(e.clone());
        if pred(&e) {
            return Some(e);
        }
    }
}

/// Dials `node` as `identity` and keeps trying to send it a sync message for about 2 s; every event the host
/// saw. A device `node` does not admit sees no `Message`.
pub(crate) async fn knock_as(identity: &transport::Identity, node: &Node) -> Vec<transport::Event> {
    let peer: transport::PeerId = node.peer_id.parse().expect("peer id");
    let (host, mut events) = own_host(identity, peer).await;
    let _ = host.dial(node.addr().parse().expect("multiaddr")).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let _ = host.send(peer, b"let me in".to_vec()).await;
        wait_event(&mut events, Duration::from_millis(100), &mut seen, |_| {
            false
        })
        .await;
    }
    host.shutdown().await.expect("shutdown");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaired_libp2p_peer_is_refused_and_receives_nothing() {
    let (a, b) = pair().await;
    all_connected(&[&a, &b], LIMIT).await.expect("connected");
    let rp = example_rp();
    let mut ca = connect(&a).await;
    register_user(&mut ca, &rp, "alice").await;
    let stranger = transport::Identity::generate();
    // Keep trying to open the sync protocol for a while: every attempt must fail, nothing may arrive.
    let seen = knock_as(&stranger, &a).await;
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, transport::Event::Message { .. })),
        "the stranger received a sync message: {seen:?}"
    );
    let log = a.daemon.log();
    assert!(
        log.contains("refused a peer") && log.contains(&stranger.peer_id().to_string()),
        "A did not log the refusal:\n{log}"
    );
    // A serves on, its only peer is B, its vault is as it was.
    let s = a.status().await.expect("status");
    assert_eq!(s.passkeys, 1);
    assert_eq!(s.peers.len(), 1);
    assert_eq!(s.peers[0].device_id, b.peer_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_messages_from_a_paired_identity_drop_the_connection_only() {
    let (a, mut b) = pair().await;
    let rp = example_rp();
    let mut ca = connect(&a).await;
    let reg = register_user(&mut ca, &rp, "alice").await;
    b.daemon.stop().await.expect("stop B");
    // B's own identity, unsealed from its state directory while B is stopped.
    let identity =
        pairing::device_identity(b.state_dir(), Choice::Software, &TpmOptions::default())
            .await
            .expect("B's identity");
    assert_eq!(identity.peer_id().to_string(), b.peer_id);
    let a_peer: transport::PeerId = a.peer_id.parse().expect("peer id");
    let (host, mut events) = own_host(&identity, a_peer).await;
    host.dial(a.addr().parse().expect("multiaddr"))
        .await
        .expect("dial A");
    let mut seen = Vec::new();
    // The connection carrying the message closes (with a second connection up, the transport reports the
    // failed delivery instead of a disconnect).
    let is_gone = |e: &transport::Event| {
        matches!(
            e,
            transport::Event::Disconnected { .. } | transport::Event::SendFailed { .. }
        )
    };
    // Every sync message starts with the 16 bytes of its vault's id.
    let vault = a.status().await.expect("status").vault_id;
    let vault: Vec<u8> = (0..vault.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&vault[i..i + 2], 16).expect("hex vault id"))
        .collect();
    assert_eq!(vault.len(), 16);
    let framed = |body: &[u8]| [vault.as_slice(), body].concat();
    let mut not_automerge = [0x42u8; 64].to_vec();
    not_automerge[1] = 0xff;
    let is_message = |e: &transport::Event| matches!(e, transport::Event::Message { .. });
    // A frame for a vault the peer does not share is ignored (the connection may carry other vaults).
    wait_event(&mut events, LIMIT, &mut seen, is_message)
        .await
        .unwrap_or_else(|| panic!("A never greeted: {seen:?}"));
    host.send(a_peer, vec![0xde; 1000])
        .await
        .expect("send a frame for another vault");
    mesh::eventually(LIMIT, "A ignores the foreign frame", async || {
        a.daemon
            .log()
            .contains("a sync message was ignored: it is not for a vault this device shares")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", a.daemon.log()));
    // Everything else drops the connection.
    let bad: Vec<Vec<u8>> = vec![
        // No frame at all.
        vec![0xde; 10],
        // A's vault, but not a sync message.
        framed(&not_automerge),
        // Larger than any message may be.
        vec![0; 5 * 1024 * 1024],
    ];
    let mut dropped_at = seen.len();
    for (i, msg) in bad.into_iter().enumerate() {
        let len = msg.len();
        // A greets every new connection with a sync message: once it arrives, both ends have the connection
        // up (and A has dropped the previous one). Sending earlier could race A's own teardown. (The first
        // connection was greeted above and is still up.)
        // (A may have dialled back and greeted already while this end waited for the drop.)
        if i > 0 && !seen[dropped_at..].iter().any(is_message) {
            wait_event(&mut events, LIMIT, &mut seen, is_message)
                .await
                .unwrap_or_else(|| panic!("A never (re)connected and greeted: {seen:?}"));
        }
        // A drops the connection: this end sees it go, or (when A has already dialled back, so another
        // connection is up and the transport reports no disconnect) A's log says it dropped it.
        let drops = |log: &str| log.matches("peer unpaired; disconnecting").count();
        let before = drops(&a.daemon.log());
        if let Err(e) = host.send(a_peer, msg).await {
            panic!("could not send {len} bad bytes to A: {e}; events: {seen:?}");
        }
        // A greeting from here on is the next connection's.
        dropped_at = seen.len();
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if wait_event(&mut events, Duration::from_millis(200), &mut seen, is_gone)
                .await
                .is_some()
                || drops(&a.daemon.log()) > before
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "A kept the connection after {len} bad bytes: {seen:?}\nA's log:\n{}",
                a.daemon.log()
            );
        }
    }
    host.shutdown().await.expect("shutdown");
    // A serves on and its vault is unchanged.
    let list = ops::list(&mut ca, None).await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].credential_id.0, reg.id());
    assert!(try_sign_in(&mut ca, &rp, &reg).await.is_some());
    register_user(&mut ca, &rp, "bob").await;
    let log = a.daemon.log();
    // Both refusals: by the router (no frame) and by A's vault (not a sync message).
    assert!(
        log.contains("a sync message was refused: no vault id"),
        "{log}"
    );
    assert!(
        log.contains("a sync message was refused; dropping the connection"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_sync_converges_after_restart() {
    let (a, mut b) = pair().await;
    let rp = example_rp();
    b.daemon.stop().await.expect("stop B");
    let mut ca = connect(&a).await;
    let mut regs = Vec::new();
    for i in 0..150 {
        regs.push(register_user(&mut ca, &rp, &format!("user{i}")).await);
    }
    // B starts receiving, and dies with no chance to flush.
    b.daemon.restart().await.expect("start B");
    tokio::time::sleep(Duration::from_millis(30)).await;
    b.daemon.kill9().expect("SIGKILL B");
    // A keeps working meanwhile.
    regs.push(register_user(&mut ca, &rp, "late").await);
    b.daemon.restart().await.expect("restart B");
    let mut cb = connect(&b).await;
    eventually(LIMIT, "B to hold all passkeys", async || {
        let n = ops::list(&mut cb, None).await.ok()?.len();
        (n == regs.len()).then_some(())
    })
    .await
    .expect("B converges");
    for reg in [&regs[0], &regs[75], &regs[150]] {
        assert!(try_sign_in(&mut cb, &rp, reg).await.is_some());
    }
    eventually(LIMIT, "A to see everything held", async || {
        let all = ops::list(&mut ca, None).await.ok()?;
        all.iter().all(|p| p.backed_up).then_some(())
    })
    .await
    .expect("A's passkeys are all backed up");
}
