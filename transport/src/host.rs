//! The swarm actor and its client handle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, connection_limits, dcutr, identify, mdns, noise, ping, relay, tcp,
    yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::codec::{self, Frame, FrameError};
use crate::config::{Backoff, Config, Limits};
use crate::gate::{GateEvent, PairingMode};
use crate::{Error, Identity, gate, pairing};

/// Addresses remembered per peer; older ones are forgotten first.
const MAX_ADDRS_PER_PEER: usize = 16;
/// Commands waiting for the actor.
const COMMAND_QUEUE: usize = 64;
/// Events held back while the application is not reading; past this the swarm is not polled (backpressure).
const OUTBOX_LIMIT: usize = 1024;
/// How long [`Host::start`] waits for listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Connections without a paired peer (relays, refused dialers) close after this long idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Inbound pairing requests awaiting the application's answer, at most.
const MAX_PAIR_INBOUND: usize = 4;

/// What the host reports to the application.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A paired peer is connected (first connection to it).
    Connected {
        /// The peer.
        peer: PeerId,
        /// Its address on that connection.
        addr: Multiaddr,
    },
    /// The last connection to a paired peer closed; messages still queued for it, including one awaiting its
    /// acknowledgement, were dropped. A paired peer with a known address is redialled with backoff.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A sync message from a paired peer. It was acknowledged to the sender when this event was queued.
    Message {
        /// The sender.
        peer: PeerId,
        /// The opaque message.
        bytes: Vec<u8>,
    },
    /// A peer was refused: a connection from or to an unpaired peer was closed right after the Noise handshake,
    /// or a paired peer sent an invalid message, which was dropped unread together with its connection.
    Refused {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: RefuseReason,
    },
    /// A message accepted by [`Handle::send`] was not acknowledged by the peer (it was still connected).
    SendFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: SendFailure,
    },
    /// The host listens on a new address.
    ListenAddr(Multiaddr),
    /// A `/passmesh/pair/1` request arrived while an invitation is open; answer it with
    /// [`Handle::pair_respond`] (dropping it closes the stream unanswered).
    PairRequest {
        /// The sender (the pairing slot's peer, or a paired peer).
        peer: PeerId,
        /// Which request to answer.
        id: PairRequestId,
        /// The request, at most [`pairing::MAX_MESSAGE`] bytes, not yet parsed.
        bytes: Vec<u8>,
    },
}

/// Identifies an inbound pairing request until it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairRequestId(u64);

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected { peer, addr } => write!(f, "Connected({peer}, {addr})"),
            Self::Disconnected { peer } => write!(f, "Disconnected({peer})"),
            Self::Message { peer, bytes } => write!(f, "Message({peer}, {} bytes)", bytes.len()),
            Self::Refused { peer, reason } => write!(f, "Refused({peer}, {reason:?})"),
            Self::SendFailed { peer, reason } => write!(f, "SendFailed({peer}, {reason:?})"),
            Self::ListenAddr(a) => write!(f, "ListenAddr({a})"),
            Self::PairRequest { peer, id, bytes } => {
                write!(f, "PairRequest({peer}, {id:?}, {} bytes)", bytes.len())
            }
        }
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The peer is not in the paired set; its connection was closed after the Noise handshake.
    NotPaired,
    /// The peer was removed from the paired set while connected and has been disconnected.
    Unpaired,
    /// The peer announced a message over `Limits::max_message_size`; it was dropped unread.
    MessageTooLarge,
    /// The peer sent a truncated message.
    MalformedMessage,
}

/// Why a sent message was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendFailure {
    /// No acknowledgement within `Limits::request_timeout`.
    Timeout,
    /// The connection closed before the acknowledgement.
    ConnectionClosed,
    /// The peer does not speak `/passmesh/sync/2`.
    Unsupported,
    /// The stream failed, e.g. the peer dropped it because the message was over its own limit.
    Stream,
}

/// Starts hosts.
#[derive(Debug)]
pub struct Host;

/// A cloneable client of a running host. The host stops when [`Handle::shutdown`] is called or the last handle
/// is dropped.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

enum Command {
    Send {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    SetPaired {
        peers: HashSet<PeerId>,
        reply: oneshot::Sender<()>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    OpenInvitation {
        until: Instant,
        reply: oneshot::Sender<()>,
    },
    CloseInvitation {
        reply: oneshot::Sender<()>,
    },
    PairRequest {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    },
    PairRespond {
        id: PairRequestId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    EndJoin {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
}

impl Handle {
    /// This host's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Queues `bytes` for `peer`. Fails at once if the message is too large, the peer is not paired or not
    /// connected, or its queue is full. Messages to one peer are delivered in order, one at a time, each
    /// acknowledged by the receiver; a later failure is reported as [`Event::SendFailed`].
    ///
    /// Cancel-safe: if the future is dropped the message may or may not have been queued.
    pub async fn send(&self, peer: PeerId, bytes: Vec<u8>) -> Result<(), Error> {
        self.call(|reply| Command::Send { peer, bytes, reply })
            .await?
    }

    /// Dials an address (with or without `/p2p/<peer id>`). A paired peer's address is remembered for redialling;
    /// an unpaired peer is refused after the handshake like any other.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Replaces the paired set. Peers no longer in it are disconnected at once; new ones with known addresses
    /// are dialled.
    pub async fn set_paired(&self, peers: HashSet<PeerId>) -> Result<(), Error> {
        self.call(|reply| Command::SetPaired { peers, reply }).await
    }

    /// The addresses the host listens on now.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// The paired peers connected now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Opens the gate for pairing until `until`: one unknown peer at a time may connect (for at most
    /// `Limits::pairing_deadline` unless it gets paired) and send `/passmesh/pair/1` requests, which arrive as
    /// [`Event::PairRequest`]. It never gets a sync stream.
    pub async fn open_invitation(&self, until: Duration) -> Result<(), Error> {
        let until = Instant::now() + until;
        self.call(|reply| Command::OpenInvitation { until, reply })
            .await
    }

    /// Closes the pairing gate; a pending pairing connection still ends at its deadline.
    pub async fn close_invitation(&self) -> Result<(), Error> {
        self.call(|reply| Command::CloseInvitation { reply }).await
    }

    /// Sends a pairing request to `peer` (an inviter; dialled at `addrs` if not connected, and let through the
    /// gate although unpaired) and waits for its answer, at most `Limits::pairing_deadline`.
    pub async fn pair_request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        self.call(|reply| Command::PairRequest {
            peer,
            addrs,
            bytes,
            reply,
        })
        .await?
    }

    /// Answers an inbound pairing request.
    pub async fn pair_respond(&self, id: PairRequestId, bytes: Vec<u8>) -> Result<(), Error> {
        self.call(|reply| Command::PairRespond { id, bytes, reply })
            .await?
    }

    /// Ends joining through `peer`: the gate stops letting it in, and unless it is paired by now its connection
    /// is closed.
    pub async fn end_join(&self, peer: PeerId) -> Result<(), Error> {
        self.call(|reply| Command::EndJoin { peer, reply }).await
    }

    /// Stops the host and waits until its sockets are closed. Other handles then fail with [`Error::Stopped`].
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.call(|reply| Command::Shutdown { reply }).await
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // First, so that a refused connection never reaches the other behaviours.
    gate: gate::Behaviour,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay: relay::client::Behaviour,
    dcutr: Toggle<dcutr::Behaviour>,
    sync: request_response::Behaviour<codec::Codec>,
    pair: request_response::Behaviour<codec::PairCodec>,
}

impl Host {
    /// Builds the libp2p stack (TCP and QUIC, Noise, Yamux, identify, ping, mDNS when enabled, relay client and
    /// DCUtR), starts listening, waits until each listener has an address, dials paired peers from
    /// `config.peers`, and spawns the host task on the current tokio runtime.
    pub async fn start(
        config: Config,
        identity: &Identity,
    ) -> Result<(Handle, mpsc::Receiver<Event>), Error> {
        config.validate()?;
        let local = identity.peer_id();
        let mut relays = HashMap::new();
        for addr in &config.relays {
            let peer = peer_of(addr).ok_or_else(|| Error::RelayWithoutPeerId(addr.clone()))?;
            relays.insert(peer, addr.clone());
        }
        let limits = config.limits.clone();
        let mdns = if config.mdns {
            let m = mdns::tokio::Behaviour::new(mdns::Config::default(), local)
                .map_err(|e| Error::Build(format!("mdns: {e}")))?;
            Some(m)
        } else {
            None
        };
        let gate = gate::Behaviour::new(config.paired.clone(), relays.keys().copied().collect());
        let conn_limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(limits.max_connections))
                .with_max_established_per_peer(Some(limits.max_connections_per_peer))
                .with_max_pending_incoming(Some(limits.max_pending_incoming)),
        );
        let sync = request_response::Behaviour::with_codec(
            codec::Codec::new(limits.max_message_size),
            [(codec::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(limits.request_timeout)
                .with_max_concurrent_streams(limits.max_streams_per_connection),
        );
        let pair = request_response::Behaviour::with_codec(
            codec::PairCodec,
            [(pairing::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(limits.pairing_deadline)
                .with_max_concurrent_streams(2),
        );
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_interval.saturating_mul(2)),
        );
        let use_dcutr = !relays.is_empty();

        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity.keypair())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| Error::Build(e.to_string()))?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| Error::Build(e.to_string()))?
            .with_behaviour(|key, relay| Behaviour {
                gate,
                limits: conn_limits,
                identify: identify::Behaviour::new(
                    identify::Config::new("/passmesh/1".to_owned(), key.public())
                        .with_agent_version(format!("passmesh/{}", env!("CARGO_PKG_VERSION")))
                        .with_push_listen_addr_updates(true),
                ),
                ping,
                mdns: Toggle::from(mdns),
                relay,
                dcutr: Toggle::from(
                    use_dcutr.then(|| dcutr::Behaviour::new(key.public().to_peer_id())),
                ),
                sync,
                pair,
            })
            .map_err(|e| Error::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
            .build();

        let mut pending_listeners = HashMap::new();
        for addr in &config.listen {
            let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
            pending_listeners.insert(id, addr.clone());
        }

        let mut state = State {
            limits,
            backoff: config.reconnect,
            paired: config.paired.clone(),
            relays,
            relay_listeners: HashMap::new(),
            relay_retry: HashMap::new(),
            peers: HashMap::new(),
            listen_addrs: Vec::new(),
            outbox: VecDeque::new(),
            pair_in: HashMap::new(),
            next_pair_id: 0,
            pair_out: HashMap::new(),
            pairing_conn: None,
        };

        // Wait for the listeners' addresses so that callers can hand them out right away.
        let deadline = Instant::now() + LISTEN_WAIT;
        while !pending_listeners.is_empty() {
            let Ok(ev) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
                tracing::warn!("listeners did not report addresses in time");
                break;
            };
            match &ev {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    pending_listeners.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(e),
                    ..
                }
                | SwarmEvent::ListenerError {
                    listener_id,
                    error: e,
                } if pending_listeners.contains_key(listener_id) => {
                    return Err(Error::Listen {
                        addr: pending_listeners
                            .remove(listener_id)
                            .unwrap_or_else(Multiaddr::empty),
                        reason: e.to_string(),
                    });
                }
                _ => {}
            }
            state.on_swarm_event(&mut swarm, ev);
        }

        let relay_addrs: Vec<Multiaddr> = state.relays.values().cloned().collect();
        for addr in relay_addrs {
            state.listen_via_relay(&mut swarm, addr);
        }
        let now = Instant::now();
        for addr in &config.peers {
            match peer_of(addr) {
                Some(peer) => state.remember(peer, addr.clone(), now),
                None => tracing::warn!(%addr, "configured peer address has no /p2p/ id; ignored"),
            }
        }

        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(state.limits.event_queue);
        tokio::spawn(run(swarm, state, cmd_rx, ev_tx));
        Ok((
            Handle {
                commands: cmd_tx,
                peer_id: local,
            },
            ev_rx,
        ))
    }
}

/// The peer id at the end of an address, if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

struct Outgoing {
    event: Event,
    ack: Option<ResponseChannel<()>>,
}

#[derive(Default)]
struct Peer {
    addrs: VecDeque<Multiaddr>,
    connections: u32,
    announced: bool,
    queue: VecDeque<Vec<u8>>,
    in_flight: Option<OutboundRequestId>,
    dialing: bool,
    backoff: Duration,
    next_dial: Option<Instant>,
    /// Remote address of the latest connection (for announcing a peer that got paired while connected).
    last_addr: Option<Multiaddr>,
}

struct State {
    limits: Limits,
    backoff: Backoff,
    paired: HashSet<PeerId>,
    relays: HashMap<PeerId, Multiaddr>,
    relay_listeners: HashMap<ListenerId, Multiaddr>,
    /// Relay circuits to listen on again, with the next attempt and the current backoff.
    relay_retry: HashMap<Multiaddr, (Instant, Duration)>,
    peers: HashMap<PeerId, Peer>,
    listen_addrs: Vec<Multiaddr>,
    outbox: VecDeque<Outgoing>,
    /// Inbound pairing requests awaiting an answer.
    pair_in: HashMap<PairRequestId, request_response::ResponseChannel<Vec<u8>>>,
    next_pair_id: u64,
    /// Outbound pairing requests awaiting the inviter's answer.
    pair_out: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, Error>>>,
    /// The connection in the pairing slot and when it must be closed unless its peer got paired.
    pairing_conn: Option<(PeerId, ConnectionId, Instant)>,
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut state: State,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) {
    let mut events_open = true;
    let mut shutdown_reply = None;
    loop {
        let wake = state.next_wake();
        let sleep = tokio::time::sleep_until(
            wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        );
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Command::Shutdown { reply }) => {
                    shutdown_reply = Some(reply);
                    break;
                }
                Some(cmd) => state.on_command(&mut swarm, cmd),
            },
            permit = events.reserve(), if events_open && !state.outbox.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(out) = state.outbox.pop_front() {
                        permit.send(out.event);
                        if let Some(ch) = out.ack {
                            // Fails only if the stream is already gone; the sender then reports it.
                            let _ = swarm.behaviour_mut().sync.send_response(ch, ());
                        }
                    }
                }
                Err(_) => {
                    tracing::debug!("event receiver dropped; events are discarded from now on");
                    events_open = false;
                    state.outbox.clear();
                }
            },
            ev = swarm.select_next_some(), if state.outbox.len() < OUTBOX_LIMIT => {
                state.on_swarm_event(&mut swarm, ev);
                if !events_open {
                    state.outbox.clear();
                }
            }
            () = sleep, if wake.is_some() => state.on_timer(&mut swarm),
        }
    }
    drop(swarm);
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(());
    }
}

impl State {
    fn push(&mut self, event: Event) {
        self.outbox.push_back(Outgoing { event, ack: None });
    }

    fn next_wake(&self) -> Option<Instant> {
        let peers = self
            .peers
            .iter()
            .filter(|(id, p)| self.paired.contains(id) && p.connections == 0 && !p.dialing)
            .filter_map(|(_, p)| p.next_dial);
        let relays = self.relay_retry.values().map(|(at, _)| *at);
        let pairing = self.pairing_conn.map(|(_, _, at)| at);
        peers.chain(relays).chain(pairing).min()
    }

    /// Records an address for a peer and, if the peer is paired and disconnected, dials it soon.
    fn remember(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) {
        let initial = self.backoff.initial;
        let p = self.peers.entry(peer).or_insert_with(|| Peer {
            backoff: initial,
            ..Peer::default()
        });
        if let Some(pos) = p.addrs.iter().position(|a| *a == addr) {
            p.addrs.remove(pos);
        }
        p.addrs.push_front(addr);
        p.addrs.truncate(MAX_ADDRS_PER_PEER);
        if p.connections == 0 && p.next_dial.is_none() {
            p.next_dial = Some(now);
        }
    }

    fn on_timer(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        if let Some((peer, _, at)) = self.pairing_conn
            && at <= now
        {
            self.pairing_conn = None;
            if !self.paired.contains(&peer) {
                tracing::info!(%peer, "pairing deadline passed; closing its connections");
                let _ = swarm.disconnect_peer_id(peer);
            }
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                self.paired.contains(id)
                    && p.connections == 0
                    && !p.dialing
                    && !p.addrs.is_empty()
                    && p.next_dial.is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let opts = DialOpts::peer_id(peer)
                .addresses(p.addrs.iter().cloned().collect())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            p.next_dial = None;
            match swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%peer, "redialling paired peer");
                    p.dialing = true;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "redial not started");
                    p.next_dial = Some(now + p.backoff);
                    p.backoff = self.backoff.next(p.backoff);
                }
            }
        }
        let due: Vec<Multiaddr> = self
            .relay_retry
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in due {
            self.listen_via_relay(swarm, addr);
        }
    }

    fn listen_via_relay(&mut self, swarm: &mut Swarm<Behaviour>, relay: Multiaddr) {
        match swarm.listen_on(relay.clone().with(Protocol::P2pCircuit)) {
            Ok(id) => {
                self.relay_listeners.insert(id, relay);
            }
            Err(e) => {
                tracing::warn!(%relay, error = %e, "cannot listen via relay");
                self.retry_relay(relay);
            }
        }
    }

    fn retry_relay(&mut self, relay: Multiaddr) {
        let now = Instant::now();
        let initial = self.backoff.initial;
        let next = self
            .relay_retry
            .get(&relay)
            .map_or(initial, |(_, d)| self.backoff.next(*d));
        self.relay_retry.insert(relay, (now + next, next));
    }

    fn on_command(&mut self, swarm: &mut Swarm<Behaviour>, cmd: Command) {
        match cmd {
            Command::Send { peer, bytes, reply } => {
                let _ = reply.send(self.enqueue(swarm, peer, bytes));
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.dial(swarm, addr));
            }
            Command::SetPaired { peers, reply } => {
                self.set_paired(swarm, peers);
                let _ = reply.send(());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::ConnectedPeers { reply } => {
                let peers = self
                    .peers
                    .iter()
                    .filter(|(id, p)| p.announced && self.paired.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                let _ = reply.send(peers);
            }
            // Handled by the loop, which must stop.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
            Command::OpenInvitation { until, reply } => {
                swarm
                    .behaviour_mut()
                    .gate
                    .set_pairing(PairingMode::Invite { until });
                let _ = reply.send(());
            }
            Command::CloseInvitation { reply } => {
                if matches!(swarm.behaviour().gate.pairing(), PairingMode::Invite { .. }) {
                    swarm.behaviour_mut().gate.set_pairing(PairingMode::Closed);
                }
                self.pair_in.clear();
                let _ = reply.send(());
            }
            Command::PairRequest {
                peer,
                addrs,
                bytes,
                reply,
            } => {
                if bytes.len() > pairing::MAX_MESSAGE {
                    let _ = reply.send(Err(Error::MessageTooLarge {
                        size: bytes.len(),
                        max: pairing::MAX_MESSAGE,
                    }));
                    return;
                }
                let b = swarm.behaviour_mut();
                if !matches!(b.gate.pairing(), PairingMode::Join { peer: p } if p == peer) {
                    b.gate.set_pairing(PairingMode::Join { peer });
                }
                let id = b.pair.send_request_with_addresses(&peer, bytes, addrs);
                self.pair_out.insert(id, reply);
            }
            Command::PairRespond { id, bytes, reply } => {
                let result = match self.pair_in.remove(&id) {
                    Some(ch) => swarm
                        .behaviour_mut()
                        .pair
                        .send_response(ch, bytes)
                        .map_err(|_| Error::Pairing("the joiner closed the stream".into())),
                    None => Err(Error::Pairing(
                        "the pairing request is no longer pending".into(),
                    )),
                };
                let _ = reply.send(result);
            }
            Command::EndJoin { peer, reply } => {
                if matches!(swarm.behaviour().gate.pairing(), PairingMode::Join { peer: p } if p == peer)
                {
                    swarm.behaviour_mut().gate.set_pairing(PairingMode::Closed);
                }
                if !self.paired.contains(&peer) && swarm.is_connected(&peer) {
                    let _ = swarm.disconnect_peer_id(peer);
                }
                let _ = reply.send(());
            }
        }
    }

    fn enqueue(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> Result<(), Error> {
        let max = self.limits.max_message_size;
        if bytes.len() > max {
            return Err(Error::MessageTooLarge {
                size: bytes.len(),
                max,
            });
        }
        if !self.paired.contains(&peer) {
            return Err(Error::NotPaired(peer));
        }
        let limit = self.limits.max_pending_outbound;
        let p = self
            .peers
            .get_mut(&peer)
            .filter(|p| p.announced)
            .ok_or(Error::NotConnected(peer))?;
        if p.queue.len() >= limit {
            return Err(Error::QueueFull(peer));
        }
        p.queue.push_back(bytes);
        self.pump(swarm, peer);
        Ok(())
    }

    /// Sends the next queued message to `peer` unless one is still awaiting its acknowledgement.
    fn pump(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.in_flight.is_some() || !p.announced {
            return;
        }
        if let Some(msg) = p.queue.pop_front() {
            p.in_flight = Some(
                swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, Frame::Bytes(msg)),
            );
        }
    }

    fn dial(&mut self, swarm: &mut Swarm<Behaviour>, addr: Multiaddr) -> Result<(), Error> {
        let err = |e: libp2p::swarm::DialError| Error::Dial {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        match peer_of(&addr) {
            Some(peer) => {
                let now = Instant::now();
                self.remember(peer, addr.clone(), now);
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match swarm.dial(opts) {
                    Ok(()) => {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.dialing = true;
                            p.next_dial = None;
                        }
                        Ok(())
                    }
                    // Already connected or dialling: nothing to do.
                    Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => Ok(()),
                    Err(e) => Err(err(e)),
                }
            }
            None => swarm.dial(addr.clone()).map_err(err),
        }
    }

    fn set_paired(&mut self, swarm: &mut Swarm<Behaviour>, peers: HashSet<PeerId>) {
        swarm.behaviour_mut().gate.set_paired(peers.clone());
        let now = Instant::now();
        let removed: Vec<PeerId> = self.paired.difference(&peers).copied().collect();
        self.paired = peers;
        for peer in removed {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.queue.clear();
                p.next_dial = None;
            }
            if swarm.is_connected(&peer) && !self.relays.contains_key(&peer) {
                tracing::info!(%peer, "peer unpaired; disconnecting");
                let _ = swarm.disconnect_peer_id(peer);
                self.push(Event::Refused {
                    peer,
                    reason: RefuseReason::Unpaired,
                });
            }
        }
        let initial = self.backoff.initial;
        let mut announce = Vec::new();
        for peer in self.paired.clone() {
            let p = self.peers.entry(peer).or_insert_with(|| Peer {
                backoff: initial,
                ..Peer::default()
            });
            if p.connections == 0 && !p.dialing && p.next_dial.is_none() && !p.addrs.is_empty() {
                p.next_dial = Some(now);
            }
            // Paired while connected (through pairing): the connection serves sync from now on.
            if p.connections > 0 && !p.announced && swarm.is_connected(&peer) {
                p.announced = true;
                p.backoff = initial;
                announce.push((peer, p.last_addr.clone().unwrap_or_else(Multiaddr::empty)));
            }
        }
        for (peer, addr) in announce {
            tracing::info!(%peer, %addr, "newly paired peer connected");
            self.push(Event::Connected { peer, addr });
            self.pump(swarm, peer);
        }
    }

    fn on_swarm_event(&mut self, swarm: &mut Swarm<Behaviour>, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                tracing::info!(%address, "listening");
                if let Some(relay) = self.relay_listeners.get(&listener_id) {
                    self.relay_retry.remove(relay);
                }
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address.clone());
                }
                self.push(Event::ListenAddr(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                self.listen_addrs.retain(|a| !addresses.contains(a));
                if let Some(relay) = self.relay_listeners.remove(&listener_id) {
                    tracing::info!(%relay, ?reason, "relay listener closed; will retry");
                    self.retry_relay(relay);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => self.on_connected(swarm, peer_id, &endpoint, num_established.get()),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                self.on_disconnected(peer_id, num_established);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, error = %error, "dial failed");
                if let Some(p) = peer_id.and_then(|id| self.peers.get_mut(&id))
                    && p.dialing
                    && p.connections == 0
                {
                    p.dialing = false;
                    p.next_dial = Some(Instant::now() + p.backoff);
                    p.backoff = self.backoff.next(p.backoff);
                }
            }
            SwarmEvent::IncomingConnectionError { error, peer_id, .. } => {
                tracing::debug!(?peer_id, error = %error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(swarm, ev),
            _ => {}
        }
    }

    fn on_connected(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        endpoint: &ConnectedPoint,
        n: u32,
    ) {
        if !self.paired.contains(&peer) {
            // A pairing (or relay) connection: remembered so that it can be announced once the peer is paired.
            let initial = self.backoff.initial;
            let p = self.peers.entry(peer).or_insert_with(|| Peer {
                backoff: initial,
                ..Peer::default()
            });
            p.connections = n;
            p.last_addr = Some(endpoint.get_remote_address().clone());
            return;
        }
        let initial = self.backoff.initial;
        let now = Instant::now();
        if let ConnectedPoint::Dialer { address, .. } = endpoint
            && !is_relayed(address)
        {
            self.remember(peer, address.clone(), now);
        }
        let p = self.peers.entry(peer).or_default();
        p.connections = n;
        p.last_addr = Some(endpoint.get_remote_address().clone());
        p.dialing = false;
        p.backoff = initial;
        p.next_dial = None;
        if !p.announced {
            p.announced = true;
            let addr = endpoint.get_remote_address().clone();
            tracing::info!(%peer, %addr, "paired peer connected");
            self.push(Event::Connected { peer, addr });
        }
        self.pump(swarm, peer);
    }

    fn on_disconnected(&mut self, peer: PeerId, remaining: u32) {
        if remaining == 0 && !self.paired.contains(&peer) && !self.relays.contains_key(&peer) {
            // A pairing connection (or one of a peer unpaired meanwhile): nothing to redial or announce, and
            // keeping its entry would let fresh peer ids grow the map for as long as invitations are open.
            self.peers.remove(&peer);
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.connections = remaining;
        if remaining > 0 {
            return;
        }
        p.queue.clear();
        p.in_flight = None;
        p.next_dial = Some(Instant::now() + self.backoff.initial);
        if p.announced {
            p.announced = false;
            tracing::info!(%peer, "paired peer disconnected");
            self.push(Event::Disconnected { peer });
        }
    }

    fn on_behaviour_event(&mut self, swarm: &mut Swarm<Behaviour>, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gate(GateEvent::Refused { peer }) => self.push(Event::Refused {
                peer,
                reason: RefuseReason::NotPaired,
            }),
            BehaviourEvent::Gate(GateEvent::PairingAdmitted { peer, connection }) => {
                let deadline = Instant::now() + self.limits.pairing_deadline;
                self.pairing_conn = Some((peer, connection, deadline));
            }
            BehaviourEvent::Pair(ev) => self.on_pair_event(swarm, ev),
            BehaviourEvent::Sync(ev) => self.on_sync_event(swarm, ev),
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            }) if !matches!(e, ping::Failure::Unsupported) => {
                tracing::info!(%peer, error = %e, "ping failed; closing connection");
                swarm.close_connection(connection);
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if self.paired.contains(&peer_id) =>
            {
                let now = Instant::now();
                for addr in info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                    if !is_relayed(&addr) {
                        self.remember(peer_id, addr, now);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let now = Instant::now();
                for (peer, addr) in found {
                    if self.paired.contains(&peer) {
                        tracing::debug!(%peer, %addr, "paired peer discovered by mdns");
                        self.remember(peer, addr, now);
                    }
                }
            }
            BehaviourEvent::Dcutr(ev) => tracing::debug!(?ev, "dcutr"),
            BehaviourEvent::Relay(ev) => tracing::debug!(?ev, "relay client"),
            _ => {}
        }
    }

    fn on_sync_event(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        ev: request_response::Event<Frame, ()>,
    ) {
        use request_response::{Event as Rr, InboundFailure, Message, OutboundFailure};
        match ev {
            Rr::Message {
                peer,
                connection_id,
                message:
                    Message::Request {
                        request, channel, ..
                    },
            } => {
                if !self.paired.contains(&peer) {
                    // A relay (the only unpaired peer allowed to connect): drop the stream unanswered.
                    tracing::warn!(%peer, "sync message from an unpaired peer dropped");
                    return;
                }
                match request {
                    Frame::Bytes(bytes) => self.outbox.push_back(Outgoing {
                        event: Event::Message { peer, bytes },
                        ack: Some(channel),
                    }),
                    // The rest of the frame is never read. Closing only the stream would leave a sender that
                    // is out of flow-control credit blocked until its timeout, so the whole connection goes;
                    // the peer is redialled like after any other disconnect.
                    Frame::Rejected(e) => {
                        tracing::warn!(%peer, error = %e, "invalid sync message; closing the connection");
                        drop(channel);
                        swarm.close_connection(connection_id);
                        let reason = match e {
                            FrameError::TooLarge { .. } => RefuseReason::MessageTooLarge,
                            _ => RefuseReason::MalformedMessage,
                        };
                        self.push(Event::Refused { peer, reason });
                    }
                }
            }
            Rr::Message {
                peer,
                message: Message::Response { request_id, .. },
                ..
            } => self.finish_send(swarm, peer, request_id),
            Rr::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::info!(%peer, error = %error, "sync message not acknowledged");
                let reason = match error {
                    OutboundFailure::Timeout => SendFailure::Timeout,
                    OutboundFailure::ConnectionClosed | OutboundFailure::DialFailure => {
                        SendFailure::ConnectionClosed
                    }
                    OutboundFailure::UnsupportedProtocols => SendFailure::Unsupported,
                    _ => SendFailure::Stream,
                };
                let connected = self.peers.get(&peer).is_some_and(|p| p.announced);
                if self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.in_flight == Some(request_id))
                    && connected
                {
                    self.push(Event::SendFailed { peer, reason });
                }
                self.finish_send(swarm, peer, request_id);
            }
            Rr::InboundFailure { peer, error, .. } => {
                if !matches!(error, InboundFailure::ResponseOmission) {
                    tracing::info!(%peer, error = %error, "inbound sync stream failed");
                }
            }
            Rr::ResponseSent { .. } => {}
        }
    }

    fn on_pair_event(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        ev: request_response::Event<Vec<u8>, Vec<u8>>,
    ) {
        use request_response::{Event as Rr, Message};
        match ev {
            Rr::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let inviting =
                    matches!(swarm.behaviour().gate.pairing(), PairingMode::Invite { .. });
                let from_slot = self.pairing_conn.is_some_and(|(p, _, _)| p == peer);
                if !inviting || !(from_slot || self.paired.contains(&peer)) {
                    tracing::info!(%peer, "pairing request while no invitation is open for it; dropped");
                    return;
                }
                if self.pair_in.len() >= MAX_PAIR_INBOUND {
                    tracing::warn!(%peer, "too many pairing requests pending; dropped");
                    return;
                }
                let id = PairRequestId(self.next_pair_id);
                self.next_pair_id += 1;
                self.pair_in.insert(id, channel);
                self.push(Event::PairRequest {
                    peer,
                    id,
                    bytes: request,
                });
            }
            Rr::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pair_out.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Rr::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::info!(%peer, %error, "pairing request failed");
                if let Some(reply) = self.pair_out.remove(&request_id) {
                    let why = match error {
                        request_response::OutboundFailure::DialFailure => {
                            "cannot reach the inviting device at the code's addresses".to_owned()
                        }
                        request_response::OutboundFailure::Timeout => {
                            "the inviting device did not answer in time".to_owned()
                        }
                        request_response::OutboundFailure::UnsupportedProtocols
                        | request_response::OutboundFailure::ConnectionClosed => {
                            "the inviting device closed the connection: it has no invitation open for this \
                             device (the code expired or was used, its pairing was cancelled, or another device \
                             is pairing with it)"
                                .to_owned()
                        }
                        other => format!("the pairing stream failed: {other}"),
                    };
                    let _ = reply.send(Err(Error::Pairing(why)));
                }
            }
            Rr::InboundFailure { peer, error, .. } => {
                tracing::info!(%peer, %error, "inbound pairing stream failed");
            }
            Rr::ResponseSent { .. } => {}
        }
    }

    fn finish_send(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, id: OutboundRequestId) {
        if let Some(p) = self.peers.get_mut(&peer)
            && p.in_flight == Some(id)
        {
            p.in_flight = None;
        }
        self.pump(swarm, peer);
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}
