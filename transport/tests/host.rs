//! Two or more real hosts on 127.0.0.1: messaging, limits, gating and reconnection.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use passmesh_transport::{Error, Event, Identity, Multiaddr, RefuseReason, SendFailure};

async fn exchange_both_ways(listen: &str, transport_tag: &str) {
    let ((a, mut arx), (b, mut brx)) = connected_pair(listen, |_| {}, |_| {}).await;
    assert_eq!(a.connected_peers().await.unwrap(), vec![b.peer_id()]);
    assert_eq!(b.connected_peers().await.unwrap(), vec![a.peer_id()]);

    // Several messages in a row arrive complete and in order.
    for i in 0..20u8 {
        a.send(b.peer_id(), vec![i; 100 + usize::from(i)])
            .await
            .unwrap();
    }
    for i in 0..20u8 {
        match expect(&mut brx, "message from A", is_message(a.peer_id())).await {
            Event::Message { bytes, .. } => assert_eq!(bytes, vec![i; 100 + usize::from(i)]),
            other => panic!("unexpected {other:?}"),
        }
    }
    b.send(a.peer_id(), b"pong".to_vec()).await.unwrap();
    match expect(&mut arx, "message from B", is_message(b.peer_id())).await {
        Event::Message { bytes, .. } => assert_eq!(bytes, b"pong"),
        other => panic!("unexpected {other:?}"),
    }
    let addrs = a.listen_addrs().await.unwrap();
    assert!(
        addrs.iter().all(|a| a.to_string().contains(transport_tag)),
        "{addrs:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_hosts_exchange_messages_over_tcp() {
    exchange_both_ways(TCP, "/tcp/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_hosts_exchange_messages_over_quic() {
    exchange_both_ways(QUIC, "/quic-v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_at_the_limit_passes_and_one_over_is_dropped_while_hosts_keep_working() {
    const B_MAX: usize = 256 * 1024;
    // A may send more than B accepts, so B's own check is what is tested.
    let ((a, mut arx), (b, mut brx)) = connected_pair(
        TCP,
        |c| c.limits.max_message_size = 4 * B_MAX,
        |c| c.limits.max_message_size = B_MAX,
    )
    .await;
    let (pa, pb) = (a.peer_id(), b.peer_id());

    a.send(pb, vec![0xab; B_MAX]).await.unwrap();
    match expect(&mut brx, "max-size message", is_message(pa)).await {
        Event::Message { bytes, .. } => {
            assert!(bytes.len() == B_MAX && bytes.iter().all(|&x| x == 0xab))
        }
        other => panic!("unexpected {other:?}"),
    }

    a.send(pb, vec![0xcd; B_MAX + 1]).await.unwrap();
    let refused = expect(&mut brx, "refusal of the oversized message", |e| {
        matches!(e, Event::Refused { .. } | Event::Message { .. })
    })
    .await;
    assert_eq!(
        refused,
        Event::Refused {
            peer: pa,
            reason: RefuseReason::MessageTooLarge
        }
    );
    // The offending connection is closed, so A learns at once rather than after its request timeout.
    expect(&mut arx, "A sees the connection drop", |e| {
        *e == Event::Disconnected { peer: pb }
    })
    .await;
    expect(&mut arx, "A reconnects", is_connected(pb)).await;
    expect(&mut brx, "B sees A again", is_connected(pa)).await;

    // The hosts keep serving: the next message goes through, both ways.
    a.send(pb, b"after".to_vec()).await.unwrap();
    match expect(&mut brx, "message after the oversized one", |e| {
        matches!(e, Event::Message { .. })
    })
    .await
    {
        Event::Message { peer, bytes } => assert_eq!((peer, bytes.as_slice()), (pa, &b"after"[..])),
        other => panic!("unexpected {other:?}"),
    }
    b.send(pa, b"still here".to_vec()).await.unwrap();
    expect(&mut arx, "message from B", is_message(pb)).await;

    // B refuses to send over its own limit, locally and at once.
    let err = b.send(pa, vec![0; B_MAX + 1]).await.unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { size, max } if size == B_MAX + 1 && max == B_MAX)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaired_host_is_refused_and_no_message_flows_either_way() {
    let (ia, iu) = (Identity::generate(), Identity::generate());
    let other = Identity::generate().peer_id();
    // A is paired with someone else only.
    let mut ca = config(TCP);
    ca.paired = paired(&[other]);
    let (a, mut arx) = start(ca, &ia).await;
    // U believes A is paired and tries hard to talk to it.
    let mut cu = config(TCP);
    cu.paired = paired(&[ia.peer_id()]);
    cu.peers = vec![dial_addr(&a).await];
    let (u, mut urx) = start(cu, &iu).await;

    let refused = expect(&mut arx, "refusal of U", |e| {
        matches!(e, Event::Refused { .. })
    })
    .await;
    assert_eq!(
        refused,
        Event::Refused {
            peer: iu.peer_id(),
            reason: RefuseReason::NotPaired
        }
    );
    // U keeps redialling and sending whenever it thinks it is connected; none of it may arrive.
    let spam = async {
        for _ in 0..40 {
            let _ = u.send(ia.peer_id(), b"let me in".to_vec()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (a_events, u_events, ()) = tokio::join!(
        collect(&mut arx, Duration::from_secs(3)),
        collect(&mut urx, Duration::from_secs(3)),
        spam
    );
    assert!(
        !a_events
            .iter()
            .any(|e| matches!(e, Event::Message { .. } | Event::Connected { .. })),
        "{a_events:?}"
    );
    assert!(
        !u_events.iter().any(|e| matches!(e, Event::Message { .. })),
        "{u_events:?}"
    );
    assert!(
        a_events.iter().all(|e| matches!(
            e,
            Event::Refused {
                reason: RefuseReason::NotPaired,
                ..
            }
        )),
        "{a_events:?}"
    );
    assert!(a.connected_peers().await.unwrap().is_empty());
    assert!(matches!(
        a.send(iu.peer_id(), b"x".to_vec()).await,
        Err(Error::NotPaired(p)) if p == iu.peer_id()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpairing_a_connected_peer_disconnects_it_and_keeps_it_out() {
    let ((a, mut arx), (b, mut brx)) = connected_pair(TCP, |_| {}, |_| {}).await;
    let (pa, pb) = (a.peer_id(), b.peer_id());
    b.set_paired(paired(&[])).await.unwrap();
    expect(&mut brx, "B reports unpairing", |e| {
        *e == Event::Refused {
            peer: pa,
            reason: RefuseReason::Unpaired,
        }
    })
    .await;
    expect(&mut arx, "A sees the disconnect", |e| {
        *e == Event::Disconnected { peer: pb }
    })
    .await;
    // A redials by itself and is refused at the gate.
    expect(&mut brx, "B refuses the redial", |e| {
        *e == Event::Refused {
            peer: pa,
            reason: RefuseReason::NotPaired,
        }
    })
    .await;
    assert!(matches!(
        b.send(pa, vec![1]).await,
        Err(Error::NotPaired(_))
    ));

    // Pairing again lets A's next redial in.
    b.set_paired(paired(&[pa])).await.unwrap();
    expect(&mut brx, "B reconnected to A", is_connected(pa)).await;
    expect(&mut arx, "A reconnected to B", is_connected(pb)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_host_is_redialled_and_messages_flow_again() {
    let (ia, ib) = (Identity::generate(), Identity::generate());
    let mut cb = config(TCP);
    cb.paired = paired(&[ia.peer_id()]);
    let (b, mut brx) = start(cb.clone(), &ib).await;
    let b_addr = dial_addr(&b).await;
    let mut ca = config(TCP);
    ca.paired = paired(&[ib.peer_id()]);
    ca.peers = vec![b_addr.clone()];
    let (a, mut arx) = start(ca, &ia).await;
    expect(&mut arx, "A connected", is_connected(ib.peer_id())).await;
    expect(&mut brx, "B connected", is_connected(ia.peer_id())).await;

    b.shutdown().await.unwrap();
    drop((b, brx));
    expect(&mut arx, "A sees B go", |e| {
        *e == Event::Disconnected { peer: ib.peer_id() }
    })
    .await;
    assert!(matches!(
        a.send(ib.peer_id(), vec![1]).await,
        Err(Error::NotConnected(_))
    ));
    // Let a few redials fail so that the backoff grows.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Same identity, same port; B knows nothing of A's address: A must come back on its own.
    let mut cb2 = cb;
    let port_addr: Multiaddr = b_addr.iter().take(2).collect();
    cb2.listen = vec![port_addr.clone()];
    let (b, mut brx) = start(cb2, &ib).await;
    assert_eq!(b.listen_addrs().await.unwrap(), vec![port_addr]);
    expect(&mut arx, "A reconnected", is_connected(ib.peer_id())).await;
    expect(&mut brx, "B reconnected", is_connected(ia.peer_id())).await;

    a.send(ib.peer_id(), b"again".to_vec()).await.unwrap();
    match expect(&mut brx, "message after restart", is_message(ia.peer_id())).await {
        Event::Message { bytes, .. } => assert_eq!(bytes, b"again"),
        other => panic!("unexpected {other:?}"),
    }
    b.send(ia.peer_id(), b"back".to_vec()).await.unwrap();
    expect(&mut arx, "reply after restart", is_message(ib.peer_id())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_fails_fast_when_not_connected_or_queue_full() {
    let (ia, ib) = (Identity::generate(), Identity::generate());
    let mut ca = config(TCP);
    ca.paired = paired(&[ib.peer_id()]);
    ca.limits.max_pending_outbound = 2;
    let (a, _arx) = start(ca, &ia).await;
    assert!(matches!(
        a.send(ib.peer_id(), vec![1]).await,
        Err(Error::NotConnected(p)) if p == ib.peer_id()
    ));

    // B is connected but never reads its events: A's queue fills up and send fails at once.
    let ((a, _arx), (b, _brx)) = connected_pair(
        TCP,
        |c| c.limits.max_pending_outbound = 2,
        |c| c.limits.event_queue = 1,
    )
    .await;
    let started = tokio::time::Instant::now();
    let mut full = false;
    for _ in 0..200 {
        match a.send(b.peer_id(), vec![7; 1024]).await {
            Ok(()) => {}
            Err(Error::QueueFull(p)) => {
                assert_eq!(p, b.peer_id());
                full = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(full, "queue never reported full");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_does_not_hold_up_the_others() {
    let (ia, islow, ifast) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    // The slow peer's application never reads its events, so it stops acknowledging after the first message.
    let mut cs = config(TCP);
    cs.paired = paired(&[ia.peer_id()]);
    cs.limits.event_queue = 1;
    let (slow, _slow_rx_never_read) = start(cs, &islow).await;
    let mut cf = config(TCP);
    cf.paired = paired(&[ia.peer_id()]);
    let (fast, mut frx) = start(cf, &ifast).await;

    let mut ca = config(TCP);
    ca.paired = paired(&[islow.peer_id(), ifast.peer_id()]);
    ca.peers = vec![dial_addr(&slow).await, dial_addr(&fast).await];
    ca.limits.request_timeout = Duration::from_secs(1);
    ca.limits.max_pending_outbound = 4;
    let (a, mut arx) = start(ca, &ia).await;
    let mut waiting = paired(&[islow.peer_id(), ifast.peer_id()]);
    while !waiting.is_empty() {
        if let Event::Connected { peer, .. } = expect(&mut arx, "A connected to both", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await
        {
            waiting.remove(&peer);
        }
    }

    let mut slow_full = false;
    for i in 0..50u8 {
        if !slow_full {
            match a.send(islow.peer_id(), vec![i; 10]).await {
                Ok(()) => {}
                Err(Error::QueueFull(_)) => slow_full = true,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        a.send(ifast.peer_id(), vec![i; 10]).await.unwrap();
        match expect(
            &mut frx,
            "message to the fast peer",
            is_message(ia.peer_id()),
        )
        .await
        {
            Event::Message { bytes, .. } => assert_eq!(bytes, vec![i; 10]),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(slow_full, "the slow peer's queue should have filled up");
    // The stuck message is reported once its acknowledgement times out.
    expect(&mut arx, "timeout towards the slow peer", |e| {
        *e == Event::SendFailed {
            peer: islow.peer_id(),
            reason: SendFailure::Timeout,
        }
    })
    .await;
    drop(fast);
}
