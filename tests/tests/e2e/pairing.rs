//! Pairing by code between running daemons, through the CLI: QR image round trip, SAS equality, passkeys
//! usable on the new device, a chain of three devices, and every refusal (wrong secret, expired, replayed,
//! tampered, too many attempts, SAS not confirmed) leaving both devices as they were.

use std::time::Duration;

use passmesh_ipc::Client;
use passmesh_tests::mesh::eventually;
use passmesh_tests::ops;
use passmesh_tests::pairing::{self, Device, field, json_lines, outcome, sas, with_field};
use passmesh_tests::rp::{RelyingParty, UserVerificationPolicy};

use crate::{Registered, example_rp, register_user};

const LIMIT: Duration = Duration::from_secs(30);

async fn device() -> Device {
    Device::start()
        .await
        .unwrap_or_else(|e| panic!("daemon did not start: {e:#}"))
}

async fn client(d: &Device) -> Client {
    d.daemon
        .client()
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e:#}"))
}

/// Whether `reg` signs on `d`, verified by the RP.
async fn signs(d: &Device, rp: &RelyingParty, reg: &Registered) -> bool {
    let mut c = client(d).await;
    let (request, pending) = rp
        .begin_authentication(
            std::slice::from_ref(&reg.credential),
            UserVerificationPolicy::Discouraged_DO_NOT_USE,
        )
        .expect("request options");
    let Ok(response) = ops::get(&mut c, rp.origin(), request, None).await else {
        return false;
    };
    rp.finish_authentication(
        &response,
        pending,
        &[(reg.user.clone(), reg.credential.clone())],
    )
    .unwrap_or_else(|e| panic!("the RP rejected a synced passkey: {e:#}"));
    true
}

async fn wait_signs(d: &Device, rp: &RelyingParty, reg: &Registered) {
    eventually(
        LIMIT,
        "the passkey to sign on the other device",
        async || signs(d, rp, reg).await.then_some(()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.daemon.log_tail()));
}

/// The device table as a device sees it: its own id and its peers' ids, sorted.
async fn table(d: &Device) -> Vec<String> {
    let s = d.status().await.expect("status");
    let mut ids: Vec<String> = s.peers.iter().map(|p| p.device_id.clone()).collect();
    ids.push(s.device_id.expect("device id"));
    ids.sort();
    ids
}

/// What must not change when a pairing fails: vault id, passkeys, peers.
async fn fingerprint(d: &Device) -> (String, u64, Vec<String>) {
    let s = d.status().await.expect("status");
    (
        s.vault_id,
        s.passkeys,
        s.peers.into_iter().map(|p| p.device_id).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_png_round_trip_pairs_two_running_daemons_with_equal_sas() {
    let (a, b) = (device().await, device().await);
    let rp = example_rp();
    let mut ca = client(&a).await;
    let before = register_user(&mut ca, &rp, "alice").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("code.png");
    let png_arg = png.to_str().expect("utf-8 path");
    let mut invite = a
        .invite(
            &["--expires", "60", "--out", png_arg, "--name", "desk"],
            "y\n",
        )
        .expect("pair");
    let uri = invite.uri().await.expect("code");
    assert!(uri.starts_with("passmesh://pair?v=1&"), "{uri}");
    assert!(png.exists(), "--out wrote the PNG");
    let joined = b
        .join(&["--image", png_arg, "--name", "laptop"])
        .await
        .expect("join");
    let (code, events) = invite.finish().await.expect("pair ends");
    let joined = json_lines(&joined);
    assert_eq!(code, Some(0), "{events:?}\n{}", a.daemon.log_tail());
    assert_eq!(outcome(&events), Ok(b.peer_id.clone()), "{events:?}");
    assert_eq!(outcome(&joined), Ok(a.peer_id.clone()), "{joined:?}");
    let (sa, sb) = (
        sas(&events).expect("inviter SAS"),
        sas(&joined).expect("joiner SAS"),
    );
    assert_eq!(sa, sb, "both devices show the same SAS");
    assert!(sa.len() == 7 && sa.chars().filter(char::is_ascii_digit).count() == 6);
    // The new device got the whole vault, and names as given.
    wait_signs(&b, &rp, &before).await;
    let sb = b.status().await.expect("status");
    assert_eq!(sb.vault_id, a.status().await.expect("status").vault_id);
    assert_eq!(sb.peers.len(), 1);
    assert_eq!(sb.peers[0].name, "desk");
    let sa = a.status().await.expect("status");
    assert_eq!(sa.peers[0].name, "laptop");
    // And it stays in sync both ways.
    let mut cb = client(&b).await;
    let made_on_b = register_user(&mut cb, &rp, "bob").await;
    wait_signs(&a, &rp, &made_on_b).await;
    let after = register_user(&mut ca, &rp, "carol").await;
    wait_signs(&b, &rp, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_paired_in_a_chain_see_each_other_and_sync() {
    let (a, b, c) = (device().await, device().await, device().await);
    pairing::pair(&a, &b, "b").await.expect("A invites B");
    pairing::pair(&b, &c, "c").await.expect("B invites C");
    eventually(LIMIT, "equal device tables", async || {
        let (ta, tb, tc) = (table(&a).await, table(&b).await, table(&c).await);
        (ta.len() == 3 && ta == tb && tb == tc).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", a.daemon.log_tail()));
    for d in [&a, &b, &c] {
        eventually(LIMIT, "all peers connected", async || {
            let s = d.status().await.ok()?;
            (s.peers.iter().filter(|p| p.connected).count() == 2).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.daemon.log_tail()));
    }
    let rp = example_rp();
    let mut cc = client(&c).await;
    let reg = register_user(&mut cc, &rp, "carol").await;
    wait_signs(&a, &rp, &reg).await;
    wait_signs(&b, &rp, &reg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_three_times_kills_the_invitation_and_changes_nothing() {
    let (a, c) = (device().await, device().await);
    let rp = example_rp();
    let mut ca = client(&a).await;
    register_user(&mut ca, &rp, "alice").await;
    let (a_before, c_before) = (fingerprint(&a).await, fingerprint(&c).await);
    let mut invite = a.invite(&["--expires", "60"], "y\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    let wrong = with_field(&uri, "s", &"A".repeat(43)).expect("tamper");
    for attempt in 1..=3 {
        let out = c.join(&[&wrong]).await.expect("join");
        let err = outcome(&json_lines(&out)).expect_err("a wrong secret is refused");
        let want = if attempt < 3 {
            "wrong or altered code"
        } else {
            "too many failed attempts"
        };
        assert!(err.contains(want), "attempt {attempt}: {err}");
        assert_ne!(out.code, Some(0));
    }
    // Dead: even the right code is refused now.
    let out = c.join(&[&uri]).await.expect("join");
    let err = outcome(&json_lines(&out)).expect_err("dead invitation");
    assert!(err.contains("too many failed attempts"), "{err}");
    let (code, events) = invite.finish().await.expect("pair ends");
    assert_ne!(code, Some(0));
    let reason = outcome(&events).expect_err("the inviter reports the death");
    assert!(reason.contains("too many failed attempts"), "{reason}");
    assert_eq!(fingerprint(&a).await, a_before);
    assert_eq!(fingerprint(&c).await, c_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_replayed_codes_are_refused_on_both_sides() {
    let (a, b, c) = (device().await, device().await, device().await);
    // Expired: refused by the joiner before it dials, and reported by the inviter.
    let mut invite = a.invite(&["--expires", "1"], "y\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let c_before = fingerprint(&c).await;
    let out = c.join(&[&uri]).await.expect("join");
    let err = outcome(&json_lines(&out)).expect_err("expired");
    assert!(err.contains("expired"), "{err}");
    let (code, events) = invite.finish().await.expect("pair ends");
    assert_ne!(code, Some(0));
    assert!(outcome(&events).expect_err("expired").contains("expired"));
    assert_eq!(fingerprint(&c).await, c_before);
    // Replayed: B uses the code, then C tries the same one.
    let mut invite = a.invite(&["--expires", "60"], "y\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    let out = b.join(&[&uri, "--name", "b"]).await.expect("join");
    assert_eq!(
        outcome(&json_lines(&out)),
        Ok(a.peer_id.clone()),
        "{}",
        out.stdout
    );
    let (code, _) = invite.finish().await.expect("pair ends");
    assert_eq!(code, Some(0));
    let a_after_b = fingerprint(&a).await;
    let out = c.join(&[&uri]).await.expect("join");
    let err = outcome(&json_lines(&out)).expect_err("replayed");
    assert!(err.contains("already used"), "{err}");
    assert_eq!(fingerprint(&c).await, c_before);
    assert_eq!(fingerprint(&a).await, a_after_b);
    assert_eq!(a_after_b.2, vec![b.peer_id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_codes_are_refused_field_by_field() {
    let (a, c) = (device().await, device().await);
    let a_before = fingerprint(&a).await;
    let c_before = fingerprint(&c).await;
    let mut invite = a.invite(&["--expires", "60"], "y\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    let other_peer = {
        // A valid peer id that is not A's: the joiner dials A's address and the transport's Noise handshake
        // finds another identity there.
        let b = device().await;
        let s = b.status().await.expect("status");
        drop(b);
        s.device_id.expect("id")
    };
    let other_peer_b64 = {
        use base64::Engine as _;
        let id: passmesh_transport::PeerId = other_peer.parse().expect("peer id");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_bytes())
    };
    let closed_port = {
        use base64::Engine as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let addr: passmesh_transport::Multiaddr =
            format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(addr.to_vec())
    };
    let flip = |v: &str| {
        let mut chars: Vec<char> = v.chars().collect();
        chars[2] = if chars[2] == 'B' { 'C' } else { 'B' };
        chars.into_iter().collect::<String>()
    };
    // Fields the inviter never sees (not counted as attempts): version, peer id, addresses.
    let cases = [
        ("v", "2".to_owned(), "version 2 is not supported"),
        ("p", other_peer_b64, "cannot reach"),
        ("a", closed_port, "cannot reach"),
        ("p", "!!".to_owned(), "malformed"),
    ];
    for (f, value, want) in cases {
        let bad = with_field(&uri, f, &value).expect("tamper");
        let out = c.join(&[&bad]).await.expect("join");
        let err = outcome(&json_lines(&out)).expect_err("tampered");
        assert!(err.contains(want), "{f}: {err}");
    }
    // Fields bound by the handshake's prologue: each fails the handshake and counts as one attempt.
    let later_exp = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bytes = b64.decode(field(&uri, "exp").expect("exp")).expect("b64");
        let exp = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
        b64.encode((exp + 60).to_be_bytes())
    };
    let tampered = [
        ("vault", flip(&field(&uri, "vault").expect("vault"))),
        ("exp", later_exp),
    ];
    for (f, value) in tampered {
        let bad = with_field(&uri, f, &value).expect("tamper");
        let out = c.join(&[&bad]).await.expect("join");
        let err = outcome(&json_lines(&out)).expect_err("tampered");
        assert!(err.contains("wrong or altered code"), "{f}: {err}");
    }
    // Unknown and duplicate fields.
    for bad in [
        format!("{uri}&x=1"),
        format!("{uri}&s={}", field(&uri, "s").expect("s")),
    ] {
        let out = c.join(&[&bad]).await.expect("join");
        assert!(outcome(&json_lines(&out)).is_err());
    }
    assert_eq!(fingerprint(&a).await, a_before);
    assert_eq!(fingerprint(&c).await, c_before);
    // Two failed attempts leave one: the real code still pairs.
    let out = c.join(&[&uri, "--name", "c"]).await.expect("join");
    assert_eq!(
        outcome(&json_lines(&out)),
        Ok(a.peer_id.clone()),
        "{}",
        out.stdout
    );
    let (code, events) = invite.finish().await.expect("pair ends");
    assert_eq!(code, Some(0), "{events:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "attemptFailed")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_sas_refuses_the_joiner_and_changes_nothing() {
    let (a, b) = (device().await, device().await);
    let (a_before, b_before) = (fingerprint(&a).await, fingerprint(&b).await);
    let mut invite = a.invite(&["--expires", "60"], "n\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    let out = b.join(&[&uri]).await.expect("join");
    let joined = json_lines(&out);
    let err = outcome(&joined).expect_err("declined");
    assert!(err.contains("not confirmed"), "{err}");
    let (code, events) = invite.finish().await.expect("pair ends");
    assert_ne!(code, Some(0));
    assert!(events.iter().any(|e| e["event"] == "awaitingConfirmation"));
    assert_eq!(
        sas(&events),
        sas(&joined),
        "the SAS was shown on both sides"
    );
    assert!(outcome(&events).is_err());
    assert_eq!(fingerprint(&a).await, a_before);
    assert_eq!(fingerprint(&b).await, b_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_sas_pairs() {
    let (a, b) = (device().await, device().await);
    let mut invite = a.invite(&["--expires", "60"], "y\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    let out = b.join(&[&uri]).await.expect("join");
    assert_eq!(
        outcome(&json_lines(&out)),
        Ok(a.peer_id.clone()),
        "{}",
        out.stdout
    );
    let (code, _) = invite.finish().await.expect("pair ends");
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_with_passkeys_merges_both_sides() {
    let (a, b) = (device().await, device().await);
    let rp = example_rp();
    let alice = register_user(&mut client(&a).await, &rp, "alice").await;
    let mut cb = client(&b).await;
    let bob = register_user(&mut cb, &rp, "bob").await;
    let carol = register_user(&mut cb, &rp, "carol").await;
    // A passkey in the trash moves along too, still in the trash.
    ops::delete(&mut cb, carol.id()).await.expect("delete");
    drop(cb);
    let vault_a = fingerprint(&a).await.0;
    let mut invite = a.invite(&["--expires", "60"], "y\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    let out = b.join(&[&uri]).await.expect("join");
    let events = json_lines(&out);
    assert_eq!(outcome(&events), Ok(a.peer_id.clone()), "{}", out.stdout);
    let done = events
        .iter()
        .find(|e| e["event"] == "done")
        .expect("a done event");
    assert_eq!(done["merged"], 2, "{done}");
    let (code, _) = invite.finish().await.expect("pair ends");
    assert_eq!(code, Some(0));
    assert_eq!(fingerprint(&b).await.0, vault_a, "b is in a's vault now");
    // Both sides hold both passkeys, and each signs in on both devices.
    for d in [&a, &b] {
        eventually(LIMIT, "both passkeys on both devices", async || {
            (d.status().await.ok()?.passkeys == 2).then_some(())
        })
        .await
        .unwrap();
        for reg in [&alice, &bob] {
            assert!(
                signs(d, &rp, reg).await,
                "{} on {}",
                reg.user.name,
                d.peer_id
            );
        }
        let mut c = client(d).await;
        let trash = c.trash_all().await.expect("trash");
        assert!(
            trash
                .iter()
                .any(|t| t.passkey.credential_id.0 == carol.id())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_nothing_is_sent_before_the_codes_are_confirmed() {
    let (a, b) = (device().await, device().await);
    let (a_before, b_before) = (fingerprint(&a).await, fingerprint(&b).await);
    // No flag: `passmesh pair` asks, and an empty answer (stdin closed) is a no.
    let mut invite = a.invite(&["--expires", "60"], "").expect("pair");
    let uri = invite.uri().await.expect("code");
    let out = b.join(&[&uri]).await.expect("join");
    let joined = json_lines(&out);
    let err = outcome(&joined).expect_err("declined");
    assert!(err.contains("not confirmed"), "{err}");
    let (code, events) = invite.finish().await.expect("pair ends");
    assert_ne!(code, Some(0));
    assert!(events.iter().any(|e| e["event"] == "awaitingConfirmation"));
    assert_eq!(fingerprint(&a).await, a_before);
    assert_eq!(fingerprint(&b).await, b_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_pair_cancels_the_invitation_at_once() {
    let (a, b) = (device().await, device().await);
    let mut invite = a.invite(&["--expires", "300"], "y\n").expect("pair");
    let uri = invite.uri().await.expect("code");
    // The CLI is long-polling the progress when the person presses Ctrl-C.
    invite
        .next_event(Duration::from_secs(10))
        .await
        .expect("the waiting event");
    invite.interrupt().expect("SIGINT");
    let (code, events) = invite.finish().await.expect("pair ends");
    assert_ne!(code, Some(0));
    assert!(
        events.iter().any(|e| e["event"] == "cancelled"),
        "{events:?}"
    );
    // The code is dead at once, though it had minutes left.
    let out = b.join(&[&uri]).await.expect("join");
    let err = outcome(&json_lines(&out)).expect_err("the invitation is closed");
    assert!(err.contains("no invitation open"), "{err}");
    assert_eq!(b.status().await.expect("status").peers.len(), 0);
    // And a new invitation can be made right away.
    let mut again = a.invite(&["--expires", "60"], "y\n").expect("pair");
    again.uri().await.expect("a new code");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_daemon_does_not_wait_for_a_pairing_in_progress() {
    let (mut a, b) = (device().await, device().await);
    let mut ca = client(&a).await;
    let uri = match ca
        .call(passmesh_ipc::RequestBody::PairInvite {
            expires_secs: Some(300),
            confirm: true,
            name: None,
        })
        .await
        .expect("invite")
    {
        passmesh_ipc::ResponseBody::PairInvite { uri, .. } => uri,
        other => panic!("{other:?}"),
    };
    // B joins; A's person never answers: A waits (up to 50 s) for the confirmation.
    let joining = tokio::spawn(async move {
        let out = b.join(&[&uri]).await;
        (b, out)
    });
    eventually(LIMIT, "A to wait for the confirmation", async || {
        match ca
            .call(passmesh_ipc::RequestBody::PairProgress { since: 0 })
            .await
            .ok()?
        {
            passmesh_ipc::ResponseBody::PairProgress { events, .. } => events
                .iter()
                .any(|e| matches!(e, passmesh_ipc::message::PairEvent::AwaitingConfirmation))
                .then_some(()),
            _ => None,
        }
    })
    .await
    .expect("awaiting confirmation");
    let stopping = std::time::Instant::now();
    a.daemon.stop().await.expect("stop");
    let took = stopping.elapsed();
    eprintln!("passmeshd stopped in {took:?} during a pairing");
    // Nothing waits for the pairing's own timers (the confirmation has 50 s, the progress poll 20 s).
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let (b, out) = joining.await.expect("join task");
    assert!(outcome(&json_lines(&out.expect("join"))).is_err());
    assert_eq!(b.status().await.expect("status").peers.len(), 0);
}
