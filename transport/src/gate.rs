//! Connection gating: a connection survives only if its Noise-authenticated peer id is paired (or is one of the
//! configured relays). The check runs in `handle_established_*_connection`, before any other behaviour creates
//! a handler for the connection, so no sync stream can ever be opened on a refused connection.
//!
//! The one exception is pairing: while an invitation is open, one unknown peer at a time may connect (the
//! *pairing slot*, over as many connections as it opens); while this device joins, the inviter it dials is let in. Such a connection only ever
//! carries `/passmesh/pair/1`: the host never sends a sync message to, or accepts one from, an unpaired peer,
//! and closes the slot's connection at its deadline unless the peer got paired meanwhile.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::ConnectionClosed;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// Refusals kept for reporting; beyond this a flood of unpaired dialers only shows in the log.
const MAX_QUEUED_REFUSALS: usize = 256;

/// What the gate reports to the host.
#[derive(Debug)]
pub(crate) enum GateEvent {
    /// A connection was refused.
    Refused { peer: PeerId },
    /// An unknown peer took the pairing slot with this connection.
    PairingAdmitted {
        peer: PeerId,
        connection: ConnectionId,
    },
}

/// Which unpaired peers pairing lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairingMode {
    /// None.
    Closed,
    /// An invitation is open until then: one unknown peer at a time.
    Invite { until: tokio::time::Instant },
    /// This device joins through this inviter.
    Join { peer: PeerId },
}

/// Why a connection was denied; only for logs, it names no secret.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not paired")]
struct NotPaired(PeerId);

/// The gating behaviour.
pub(crate) struct Behaviour {
    paired: HashSet<PeerId>,
    relays: HashSet<PeerId>,
    refusals: VecDeque<GateEvent>,
    mode: PairingMode,
    /// The peer holding the pairing slot, with its open connections: a joiner may reach this device over
    /// several (two addresses of the code, TCP and QUIC), and each must carry its pairing requests.
    slot: Option<(PeerId, HashSet<ConnectionId>)>,
}

impl Behaviour {
    pub(crate) fn new(paired: HashSet<PeerId>, relays: HashSet<PeerId>) -> Self {
        Self {
            paired,
            relays,
            refusals: VecDeque::new(),
            mode: PairingMode::Closed,
            slot: None,
        }
    }

    pub(crate) fn set_paired(&mut self, paired: HashSet<PeerId>) {
        if self.slot.as_ref().is_some_and(|(p, _)| paired.contains(p)) {
            // The peer that paired through the slot is an ordinary paired peer now.
            self.slot = None;
        }
        self.paired = paired;
    }

    pub(crate) fn set_pairing(&mut self, mode: PairingMode) {
        self.mode = mode;
    }

    pub(crate) fn pairing(&self) -> PairingMode {
        self.mode
    }

    fn admit(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
    ) -> Result<Handler, ConnectionDenied> {
        if self.paired.contains(&peer) {
            return Ok(Handler { keep_alive: true });
        }
        if self.relays.contains(&peer) {
            // The relay client keeps its own connection alive while it holds a reservation.
            return Ok(Handler { keep_alive: false });
        }
        match self.mode {
            PairingMode::Join { peer: inviter } if inviter == peer => {
                return Ok(Handler { keep_alive: true });
            }
            PairingMode::Invite { until } if tokio::time::Instant::now() < until => {
                match &mut self.slot {
                    None => {
                        tracing::info!(%peer, "an unknown peer takes the pairing slot");
                        self.slot = Some((peer, HashSet::from([connection])));
                        self.refusals
                            .push_back(GateEvent::PairingAdmitted { peer, connection });
                        return Ok(Handler { keep_alive: true });
                    }
                    Some((holder, connections)) if *holder == peer => {
                        // Another connection of the peer that holds the slot (refusing it made the joiner's
                        // requests on it fail as if no invitation were open).
                        connections.insert(connection);
                        return Ok(Handler { keep_alive: true });
                    }
                    Some(_) => {}
                }
            }
            _ => {}
        }
        tracing::info!(%peer, "refusing connection from an unpaired peer");
        if self.refusals.len() < MAX_QUEUED_REFUSALS {
            self.refusals.push_back(GateEvent::Refused { peer });
        }
        Err(ConnectionDenied::new(NotPaired(peer)))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = GateEvent;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(connection, peer)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(connection, peer)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event
            && let Some((_, connections)) = &mut self.slot
            && connections.remove(&connection_id)
            && connections.is_empty()
        {
            self.slot = None;
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pairing_slot_admits_every_connection_of_its_peer_and_no_other_peer() {
        let mut gate = Behaviour::new(HashSet::new(), HashSet::new());
        let (joiner, other) = (PeerId::random(), PeerId::random());
        let (c1, c2, c3) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        assert!(gate.admit(c1, joiner).is_err(), "no invitation open");
        gate.set_pairing(PairingMode::Invite {
            until: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        });
        assert!(gate.admit(c1, joiner).is_ok());
        assert!(
            gate.admit(c2, joiner).is_ok(),
            "the joiner's second connection"
        );
        assert!(
            gate.admit(c3, other).is_err(),
            "another peer while the slot is held"
        );
        // The slot is held while any of the joiner's connections is open.
        let close = |gate: &mut Behaviour, c: ConnectionId| {
            if let Some((_, connections)) = &mut gate.slot
                && connections.remove(&c)
                && connections.is_empty()
            {
                gate.slot = None;
            }
        };
        close(&mut gate, c1);
        assert!(gate.admit(c3, other).is_err());
        close(&mut gate, c2);
        assert!(gate.admit(c3, other).is_ok(), "free again");
        gate.set_pairing(PairingMode::Closed);
        assert!(gate.admit(ConnectionId::new_unchecked(4), joiner).is_err());
    }
}
