//! Helpers shared by the integration tests: hosts on 127.0.0.1 with ephemeral ports, event waiting.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use passmesh_transport::{Backoff, Config, Event, Handle, Host, Identity, Multiaddr, PeerId};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

pub const WAIT: Duration = Duration::from_secs(15);

pub const TCP: &str = "/ip4/127.0.0.1/tcp/0";
pub const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

/// A loopback config without mDNS (other tests run at the same time) and with a fast redial.
pub fn config(listen: &str) -> Config {
    Config {
        listen: vec![listen.parse().unwrap()],
        mdns: false,
        reconnect: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        },
        ..Config::default()
    }
}

pub fn paired(peers: &[PeerId]) -> HashSet<PeerId> {
    peers.iter().copied().collect()
}

/// Starts a host; `RUST_LOG=passmesh_transport=debug` shows its log in failing tests.
pub async fn start(config: Config, id: &Identity) -> (Handle, Receiver<Event>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Host::start(config, id).await.unwrap()
}

/// The host's first listen address with its `/p2p/` suffix.
pub async fn dial_addr(h: &Handle) -> Multiaddr {
    let addrs = h.listen_addrs().await.unwrap();
    let addr = addrs.first().expect("host listens somewhere").clone();
    addr.with_p2p(h.peer_id()).unwrap()
}

/// Waits for the first event satisfying `pred`, skipping others; panics after [`WAIT`].
pub async fn expect(rx: &mut Receiver<Event>, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Everything the host reports during `span`.
pub async fn collect(rx: &mut Receiver<Event>, span: Duration) -> Vec<Event> {
    let deadline = Instant::now() + span;
    let mut out = vec![];
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push(ev);
    }
    out
}

pub fn is_connected(peer: PeerId) -> impl Fn(&Event) -> bool {
    move |ev| matches!(ev, Event::Connected { peer: p, .. } if *p == peer)
}

pub fn is_message(peer: PeerId) -> impl Fn(&Event) -> bool {
    move |ev| matches!(ev, Event::Message { peer: p, .. } if *p == peer)
}

/// Starts two hosts that are paired with each other, A dialling B through [`Handle::dial`], and waits until
/// both see the connection.
pub async fn connected_pair(
    listen: &str,
    tweak_a: impl FnOnce(&mut Config),
    tweak_b: impl FnOnce(&mut Config),
) -> ((Handle, Receiver<Event>), (Handle, Receiver<Event>)) {
    let (ia, ib) = (Identity::generate(), Identity::generate());
    let mut cb = config(listen);
    cb.paired = paired(&[ia.peer_id()]);
    tweak_b(&mut cb);
    let (b, mut brx) = start(cb, &ib).await;
    let mut ca = config(listen);
    ca.paired = paired(&[ib.peer_id()]);
    tweak_a(&mut ca);
    let (a, mut arx) = start(ca, &ia).await;
    a.dial(dial_addr(&b).await).await.unwrap();
    expect(&mut arx, "A connected to B", is_connected(ib.peer_id())).await;
    expect(&mut brx, "B connected to A", is_connected(ia.peer_id())).await;
    ((a, arx), (b, brx))
}
