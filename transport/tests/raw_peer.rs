//! A peer built on plain libp2p, without any of the host's gating, dials a host and opens `/passmesh/sync/2`
//! directly: the host must refuse it and never read or answer a sync byte.

#![allow(clippy::unwrap_used)]

mod common;

use std::io;
use std::time::Duration;

use common::*;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, noise, tcp, yamux};
use passmesh_transport::{Event, Identity, PROTOCOL, RefuseReason};

/// Speaks the sync framing (u32 length, bytes; one ack byte back) so only the gate can stop it.
#[derive(Clone, Default)]
struct Intruder;

impl request_response::Codec for Intruder {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&u32::try_from(req.len()).unwrap().to_be_bytes())
            .await?;
        io.write_all(&req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_libp2p_peer_opening_the_sync_protocol_is_refused_and_gets_nothing() {
    let ia = Identity::generate();
    let mut ca = config(TCP);
    ca.paired = paired(&[Identity::generate().peer_id()]);
    let (a, mut arx) = start(ca, &ia).await;
    let a_addr = dial_addr(&a).await;

    let mut intruder = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::<Intruder>::new(
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            )
        })
        .unwrap()
        .build();
    let intruder_id = *intruder.local_peer_id();
    intruder.add_peer_address(ia.peer_id(), a_addr);
    // Queued before any connection exists, so it goes out the moment the connection would allow it.
    intruder
        .behaviour_mut()
        .send_request(&ia.peer_id(), b"give me your vault".to_vec());

    let mut failures = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while failures == 0 {
        let ev = tokio::time::timeout_at(deadline, intruder.select_next_some())
            .await
            .expect("intruder's request neither failed nor succeeded");
        match ev {
            SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                panic!("intruder got an answer: {message:?}")
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => failures += 1,
            _ => {}
        }
    }

    let refused = expect(&mut arx, "refusal", |e| {
        matches!(e, Event::Refused { .. } | Event::Message { .. })
    })
    .await;
    assert_eq!(
        refused,
        Event::Refused {
            peer: intruder_id,
            reason: RefuseReason::NotPaired
        }
    );
    let later = collect(&mut arx, Duration::from_millis(500)).await;
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, Event::Message { .. } | Event::Connected { .. })),
        "{later:?}"
    );
    assert!(a.connected_peers().await.unwrap().is_empty());
    assert!(!intruder.is_connected(&ia.peer_id()));
}
