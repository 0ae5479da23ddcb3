//! The gate's pairing exception on real hosts: only while an invitation is open, one unknown peer at a time,
//! pairing requests only (never a sync message), answered by the application; a peer paired meanwhile becomes
//! an ordinary connected peer on the same connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use passmesh_transport::{Error, Event, Identity};

fn addrs_without_p2p(a: &passmesh_transport::Multiaddr) -> Vec<passmesh_transport::Multiaddr> {
    let text = a.to_string();
    let base = text.split("/p2p/").next().unwrap().to_owned();
    vec![base.parse().unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitation_admits_one_unknown_peer_for_pairing_only() {
    let (ia, ib, ic) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (a, mut arx) = start(config(TCP), &ia).await;
    let (b, mut brx) = start(config(TCP), &ib).await;
    let (c, _crx) = start(config(TCP), &ic).await;
    let at = addrs_without_p2p(&dial_addr(&a).await);

    // No invitation: the joiner's connection is refused after the Noise handshake.
    let err = b
        .pair_request(a.peer_id(), at.clone(), b"hello".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Pairing(_)), "{err:?}");
    b.end_join(a.peer_id()).await.unwrap();

    a.open_invitation(Duration::from_secs(30)).await.unwrap();
    let asker = {
        let b = b.clone();
        let at = at.clone();
        let pa = a.peer_id();
        tokio::spawn(async move { b.pair_request(pa, at, b"hello".to_vec()).await })
    };
    let (id, bytes) = match expect(&mut arx, "a pairing request", |e| {
        matches!(e, Event::PairRequest { .. })
    })
    .await
    {
        Event::PairRequest { peer, id, bytes } => {
            assert_eq!(peer, b.peer_id());
            (id, bytes)
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(bytes, b"hello");
    a.pair_respond(id, b"welcome".to_vec()).await.unwrap();
    assert_eq!(asker.await.unwrap().unwrap(), b"welcome");

    // The slot's peer gets no sync message and cannot send one: it is not paired on either side.
    assert!(matches!(
        a.send(b.peer_id(), b"vault bytes".to_vec()).await,
        Err(Error::NotPaired(_))
    ));
    assert!(matches!(
        b.send(a.peer_id(), b"sync".to_vec()).await,
        Err(Error::NotPaired(_))
    ));
    // The slot is taken: another unknown peer is refused.
    let err = c
        .pair_request(a.peer_id(), at.clone(), b"me too".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Pairing(_)), "{err:?}");

    // Paired on both sides: the pairing connection now carries sync.
    a.set_paired(paired(&[b.peer_id()])).await.unwrap();
    b.set_paired(paired(&[a.peer_id()])).await.unwrap();
    expect(&mut arx, "B announced", is_connected(b.peer_id())).await;
    expect(&mut brx, "A announced", is_connected(a.peer_id())).await;
    b.end_join(a.peer_id()).await.unwrap();
    a.send(b.peer_id(), b"sync".to_vec()).await.unwrap();
    expect(&mut brx, "a sync message", is_message(a.peer_id())).await;

    // Closed: unknown peers are refused again.
    a.close_invitation().await.unwrap();
    assert!(
        c.pair_request(a.peer_id(), at, b"late".to_vec())
            .await
            .is_err()
    );
    for h in [a, b, c] {
        h.shutdown().await.unwrap();
    }
}
