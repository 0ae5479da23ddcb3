//! Connection gating: a connection survives only if its Noise-authenticated peer id is paired (or is one of the
//! configured relays). The check runs in `handle_established_*_connection`, before any other behaviour creates
//! a handler for the connection, so no sync stream can ever be opened on a refused connection.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// Refusals kept for reporting; beyond this a flood of unpaired dialers only shows in the log.
const MAX_QUEUED_REFUSALS: usize = 256;

/// A refused connection.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) peer: PeerId,
}

/// Why a connection was denied; only for logs, it names no secret.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not paired")]
struct NotPaired(PeerId);

/// The gating behaviour.
pub(crate) struct Behaviour {
    paired: HashSet<PeerId>,
    relays: HashSet<PeerId>,
    refusals: VecDeque<Refusal>,
}

impl Behaviour {
    pub(crate) fn new(paired: HashSet<PeerId>, relays: HashSet<PeerId>) -> Self {
        Self {
            paired,
            relays,
            refusals: VecDeque::new(),
        }
    }

    pub(crate) fn set_paired(&mut self, paired: HashSet<PeerId>) {
        self.paired = paired;
    }

    fn admit(&mut self, peer: PeerId) -> Result<Handler, ConnectionDenied> {
        if self.paired.contains(&peer) {
            return Ok(Handler { keep_alive: true });
        }
        if self.relays.contains(&peer) {
            // The relay client keeps its own connection alive while it holds a reservation.
            return Ok(Handler { keep_alive: false });
        }
        tracing::info!(%peer, "refusing connection from an unpaired peer");
        if self.refusals.len() < MAX_QUEUED_REFUSALS {
            self.refusals.push_back(Refusal { peer });
        }
        Err(ConnectionDenied::new(NotPaired(peer)))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Refusal;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.refusals.pop_front() {
            Some(r) => Poll::Ready(ToSwarm::GenerateEvent(r)),
            None => Poll::Pending,
        }
    }
}

/// Speaks no protocol; keeps connections to paired peers open while idle so that a change can be pushed at once.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    keep_alive: bool,
}

impl libp2p::swarm::ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        // DeniedUpgrade never negotiates, so there is nothing to handle.
        match event {
            ConnectionEvent::FullyNegotiatedInbound(n) => match n.protocol {},
            ConnectionEvent::FullyNegotiatedOutbound(n) => match n.protocol {},
            _ => {}
        }
    }
}
