//! Two paired hosts that cannot reach each other directly meet through a relay (circuit relay v2).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, noise, relay, tcp, yamux};
use passmesh_transport::{Event, Identity};

#[derive(NetworkBehaviour)]
struct RelayServer {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
}

/// A plain libp2p relay on 127.0.0.1; returns its address (with `/p2p/`) and the task running it.
async fn start_relay() -> (Multiaddr, tokio::task::JoinHandle<()>) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| RelayServer {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay::Config::default()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/relay-test/1".into(),
                key.public(),
            )),
        })
        .unwrap()
        .build();
    swarm.listen_on(TCP.parse().unwrap()).unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    // The relay only serves reservations once it has a confirmed external address to hand out.
    swarm.add_external_address(addr.clone());
    let peer: PeerId = *swarm.local_peer_id();
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (addr.with(Protocol::P2p(peer)), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_hosts_meet_through_a_relay() {
    let (relay_addr, relay_task) = start_relay().await;
    let (ia, ib) = (Identity::generate(), Identity::generate());

    // A listens only through the relay: nobody can dial it directly.
    let mut ca = config(TCP);
    ca.listen.clear();
    ca.relays = vec![relay_addr.clone()];
    ca.paired = paired(&[ib.peer_id()]);
    let (a, mut arx) = start(ca, &ia).await;
    let circuit = match expect(
        &mut arx,
        "relayed listen address",
        |e| matches!(e, Event::ListenAddr(addr) if addr.iter().any(|p| p == Protocol::P2pCircuit)),
    )
    .await
    {
        Event::ListenAddr(addr) => addr,
        other => panic!("unexpected {other:?}"),
    };

    // B knows A only by its relayed address (which already ends in A's peer id).
    let mut cb = config(TCP);
    cb.relays = vec![relay_addr];
    cb.paired = paired(&[ia.peer_id()]);
    assert_eq!(circuit.iter().last(), Some(Protocol::P2p(ia.peer_id())));
    cb.peers = vec![circuit];
    let (b, mut brx) = start(cb, &ib).await;
    expect(&mut brx, "B connected to A", is_connected(ia.peer_id())).await;
    expect(&mut arx, "A connected to B", is_connected(ib.peer_id())).await;

    b.send(ia.peer_id(), b"via relay".to_vec()).await.unwrap();
    match expect(
        &mut arx,
        "message through the relay",
        is_message(ib.peer_id()),
    )
    .await
    {
        Event::Message { bytes, .. } => assert_eq!(bytes, b"via relay"),
        other => panic!("unexpected {other:?}"),
    }
    a.send(ib.peer_id(), b"and back".to_vec()).await.unwrap();
    expect(
        &mut brx,
        "reply through the relay",
        is_message(ia.peer_id()),
    )
    .await;
    // The relay itself is connected to both but is never reported as a peer.
    assert_eq!(a.connected_peers().await.unwrap(), vec![ib.peer_id()]);
    relay_task.abort();
}
