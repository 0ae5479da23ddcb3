//! The network side of vault replication: runs the one transport host of this daemon and moves sync messages
//! between it and the vault actors it carries (one in user mode, one per local user in system mode).
//!
//! Every sync message is framed with the id of the vault it belongs to ([`super::wire`]). A message is handed
//! to a vault only when its sender is in *that* vault's device table: a device paired with one user's vault can
//! never reach another user's vault on the same machine, whatever id it writes. The transport gate admits the
//! union of all carried vaults' paired sets.
//!
//! Tasks, all in one `JoinSet` owned by a supervisor task and stopped by one cancellation token (a child of
//! the daemon's root token): one *inbound* task turns transport events into [`PeerEvent`]s for the vaults
//! concerned (waiting when a vault's inbox is full, which in turn stops the transport from reading more); one
//! *outbound* task per vault sends what its actor produces and keeps the gate in step with its device table;
//! short tasks that cycle a peer through the gate. The actors never wait for the network and the network
//! never touches a vault's state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use passmesh_crdt::VaultId;
use passmesh_transport::{self as transport, Event, Identity, Multiaddr, PairRequestId, PeerId};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::wire;
use crate::config;
use crate::vault::{self, Outbound, PeerEvent};

/// Inbound pairing requests waiting for the pairing service, at most.
const PAIR_QUEUE: usize = 8;
/// Requests to the supervisor (vaults to carry, peers to cycle) waiting at most.
const CONTROL_QUEUE: usize = 64;

/// An inbound `/passmesh/pair/1` request: sender, id to answer, bytes.
pub type PairRequest = (PeerId, PairRequestId, Vec<u8>);

/// A vault for the host to carry.
#[derive(Debug)]
pub struct Attach {
    /// The local key of the vault: its user's uid.
    pub slot: u32,
    /// The vault's id now.
    pub vault_id: VaultId,
    /// Its paired set now.
    pub paired: HashSet<PeerId>,
    /// Peer addresses it learnt at pairing, to dial.
    pub addrs: Vec<Multiaddr>,
    /// Its actor.
    pub handle: vault::Handle,
    /// What its actor wants sent.
    pub outbound: mpsc::Receiver<Outbound>,
}

/// The running network: the transport handle, the router and its supervisor.
#[derive(Debug)]
pub struct Network {
    handle: transport::Handle,
    router: Arc<Router>,
    cancel: CancellationToken,
    supervisor: JoinHandle<()>,
    pair_requests: Option<mpsc::Receiver<PairRequest>>,
}

/// The vaults the host carries, for the pairing service and the user registry.
#[derive(Clone, Debug)]
pub struct Carried(Arc<Router>);

impl Carried {
    /// Carries one more vault (system mode: a user's vault opened after start): routing to it starts at once,
    /// so it counts for [`Carried::held_elsewhere`] from here on. Then [`Carried::start`] it.
    pub fn route(&self, a: Attach) -> Routed {
        Routed(self.0.take_on(a))
    }

    /// Starts sending for a vault [`Carried::route`] took on: admits its paired set, greets the peers already
    /// connected and dials the addresses it knows.
    pub async fn start(&self, routed: Routed) {
        let Routed(control) = routed;
        let slot = match &control {
            Control::Outbound { slot, .. } => *slot,
            Control::Cycle(_) => return,
        };
        if self.0.control.send(control).await.is_err() {
            // The supervisor has stopped: the daemon is shutting down.
            self.0.lock().by_slot.remove(&slot);
        }
    }

    /// Whether a vault other than `slot`'s has the id `vault` (two local vaults may never share one: the id
    /// routes sync messages).
    pub fn held_elsewhere(&self, slot: u32, vault: &VaultId) -> bool {
        self.0
            .lock()
            .by_slot
            .iter()
            .any(|(s, v)| *s != slot && v.vault == *vault)
    }
}

/// A vault the router routes to, whose outbound task is still to be started ([`Carried::start`]).
#[derive(Debug)]
pub struct Routed(Control);

/// What the supervisor is asked to run.
enum Control {
    /// The outbound task of a newly carried vault, after admitting its peers, greeting those already connected
    /// and dialling its known addresses.
    Outbound {
        slot: u32,
        vault: VaultId,
        rx: mpsc::Receiver<Outbound>,
        greet: Vec<(PeerId, String)>,
        handle: vault::Handle,
        dial: Vec<Multiaddr>,
    },
    /// Take a peer out of the gate and back in (its connections close; the exchange starts afresh).
    Cycle(PeerId),
}

#[derive(Debug)]
struct Router {
    transport: transport::Handle,
    slots: Mutex<Slots>,
    /// Serialises gate updates so the last union computed is the last one applied. Never taken by the
    /// inbound task.
    gate: tokio::sync::Mutex<()>,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Outbound { slot, .. } => write!(f, "Outbound({slot})"),
            Control::Cycle(peer) => write!(f, "Cycle({peer})"),
        }
    }
}

#[derive(Debug, Default)]
struct Slots {
    by_slot: HashMap<u32, Slot>,
    /// Paired peers connected now, with the address of their connection.
    connected: HashMap<PeerId, String>,
    /// Peers whose message for a vault they do not share was ignored (logged once each; bounded by the
    /// paired set, as only paired peers send messages).
    ignored_from: HashSet<PeerId>,
}

#[derive(Debug)]
struct Slot {
    vault: VaultId,
    peers: HashSet<PeerId>,
    handle: vault::Handle,
}

impl Slots {
    fn union(&self) -> HashSet<PeerId> {
        self.by_slot
            .values()
            .flat_map(|s| s.peers.iter().copied())
            .collect()
    }

    fn with_peer(&self, peer: &PeerId) -> Vec<vault::Handle> {
        self.by_slot
            .values()
            .filter(|s| s.peers.contains(peer))
            .map(|s| s.handle.clone())
            .collect()
    }
}

/// Starts the transport host with this device's `identity`, carrying `vaults`; more can be attached later
/// ([`Network::carried`]). Everything it starts stops when `cancel` is cancelled (or at [`Network::shutdown`]).
pub async fn start(
    settings: &config::Network,
    identity: &Identity,
    vaults: Vec<Attach>,
    cancel: CancellationToken,
) -> Result<Network, transport::Error> {
    let mut peers = settings.peers.clone();
    let mut slots = Slots::default();
    let mut outbound = Vec::new();
    for a in vaults {
        peers.extend(a.addrs);
        slots.by_slot.insert(
            a.slot,
            Slot {
                vault: a.vault_id,
                peers: a.paired,
                handle: a.handle,
            },
        );
        outbound.push((a.slot, a.vault_id, a.outbound));
    }
    let config = transport::Config {
        listen: settings.listen.clone(),
        mdns: settings.mdns,
        peers,
        relays: settings.relays.clone(),
        paired: slots.union(),
        ..transport::Config::default()
    };
    let (handle, events) = transport::Host::start(config, identity).await?;
    for a in handle.listen_addrs().await? {
        tracing::info!(addr = %a, peer = %identity.peer_id(), "listening for paired devices");
    }
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let router = Arc::new(Router {
        transport: handle.clone(),
        slots: Mutex::new(slots),
        gate: tokio::sync::Mutex::new(()),
        control,
        cancel: cancel.clone(),
    });
    let mut tasks = JoinSet::new();
    for (slot, vault, rx) in outbound {
        tasks.spawn(Arc::clone(&router).outbound(slot, vault, rx));
    }
    let (pair_tx, pair_rx) = mpsc::channel(PAIR_QUEUE);
    tasks.spawn(Arc::clone(&router).inbound(events, pair_tx));
    let supervisor = tokio::spawn(Arc::clone(&router).supervise(tasks, control_rx));
    Ok(Network {
        handle,
        router,
        cancel,
        supervisor,
        pair_requests: Some(pair_rx),
    })
}

impl Router {
    /// The only lock of the router's state; never held across an await.
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Owns the router's tasks: starts what it is asked to, reaps what ends, and at cancellation waits for
    /// every task (each watches the token) to finish.
    async fn supervise(
        self: Arc<Self>,
        mut tasks: JoinSet<()>,
        mut control: mpsc::Receiver<Control>,
    ) {
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                Some(c) = control.recv() => match c {
                    Control::Outbound { slot, vault, rx, greet, handle, dial } => {
                        let r = Arc::clone(&self);
                        tasks.spawn(async move {
                            if r.apply_gate(None).await.is_err() {
                                return;
                            }
                            for (peer, addr) in greet {
                                // This task does not read the vault's outbox yet, but the actor has room for
                                // its first messages.
                                let event = PeerEvent::Connected { peer, addr };
                                if r.cancel.run_until_cancelled(handle.peer_event(event)).await.is_none() {
                                    return;
                                }
                            }
                            drop(handle);
                            for addr in dial {
                                if let Err(e) = r.transport.dial(addr.clone()).await {
                                    tracing::debug!(%addr, error = %e, "cannot dial a known address");
                                }
                            }
                            r.outbound(slot, vault, rx).await;
                        });
                    }
                    Control::Cycle(peer) => {
                        tasks.spawn(Arc::clone(&self).cycle(peer));
                    }
                },
                Some(ended) = tasks.join_next() => {
                    if let Err(e) = ended
                        && e.is_panic()
                    {
                        tracing::error!("a sync task panicked");
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn inbound(
        self: Arc<Self>,
        mut events: mpsc::Receiver<Event>,
        pair_tx: mpsc::Sender<PairRequest>,
    ) {
        while let Some(Some(event)) = self.cancel.run_until_cancelled(events.recv()).await {
            let Some((targets, event)) = self.route(event, &pair_tx).await else {
                continue;
            };
            let Some((last, rest)) = targets.split_last() else {
                continue;
            };
            for t in rest {
                // A vault that stopped is leaving; the others still get the event.
                let _ = self
                    .cancel
                    .run_until_cancelled(t.peer_event(event.clone()))
                    .await;
            }
            let _ = self
                .cancel
                .run_until_cancelled(last.peer_event(event))
                .await;
        }
    }

    /// The vaults a transport event is for, and what they are told; `None` if it goes to no vault.
    async fn route(
        &self,
        event: Event,
        pair_tx: &mpsc::Sender<PairRequest>,
    ) -> Option<(Vec<vault::Handle>, PeerEvent)> {
        match event {
            Event::Connected { peer, addr } => {
                tracing::info!(%peer, %addr, "paired device connected");
                let addr = addr.to_string();
                let mut slots = self.lock();
                slots.connected.insert(peer, addr.clone());
                Some((slots.with_peer(&peer), PeerEvent::Connected { peer, addr }))
            }
            Event::Disconnected { peer } => {
                tracing::info!(%peer, "paired device disconnected");
                let mut slots = self.lock();
                slots.connected.remove(&peer);
                Some((slots.with_peer(&peer), PeerEvent::Disconnected { peer }))
            }
            Event::Message { peer, bytes } => {
                let Some(vault) = wire::vault_of(&bytes) else {
                    // Not even a frame: a broken or hostile peer.
                    tracing::warn!(%peer, "a sync message was refused: no vault id; dropping its connection");
                    // The supervisor drains its queue at once; waiting here is short.
                    let _ = self.control.send(Control::Cycle(peer)).await;
                    return None;
                };
                let target = self
                    .lock()
                    .by_slot
                    .values()
                    .find(|s| s.vault == vault && s.peers.contains(&peer))
                    .map(|s| s.handle.clone());
                let Some(target) = target else {
                    // Not a vault this peer shares with us. It is ignored rather than answered by dropping the
                    // connection, which also carries the vaults the peer does share (other users' in system
                    // mode). Nothing reaches any vault; the sender's vault resyncs from our next greeting.
                    if self.lock().ignored_from.insert(peer) {
                        tracing::warn!(%peer, "a sync message was ignored: it is not for a vault this device shares with the peer");
                    } else {
                        tracing::debug!(%peer, "a sync message was ignored: not for a vault shared with the peer");
                    }
                    return None;
                };
                let bytes = wire::unframe(bytes);
                Some((vec![target], PeerEvent::Message { peer, bytes }))
            }
            Event::SendFailed { peer, reason } => {
                tracing::debug!(%peer, ?reason, "a sync message was not acknowledged");
                // Which vault's message failed is not known: each vault shared with the peer starts over.
                Some((self.lock().with_peer(&peer), PeerEvent::Reset { peer }))
            }
            Event::Refused { peer, reason } => {
                tracing::warn!(%peer, ?reason, "refused a peer");
                None
            }
            Event::PairRequest { peer, id, bytes } => {
                // Never wait here: sync events must keep flowing while a pairing waits for a person.
                if pair_tx.try_send((peer, id, bytes)).is_err() {
                    tracing::warn!(%peer, "pairing requests are piling up; one was dropped");
                }
                None
            }
            _ => None,
        }
    }

    /// Sends what the vault of `slot` produces, framed with its id, and keeps the gate in step with its device
    /// table. When the vault stops, its slot is removed.
    async fn outbound(
        self: Arc<Self>,
        slot: u32,
        mut vault: VaultId,
        mut rx: mpsc::Receiver<Outbound>,
    ) {
        while let Some(Some(o)) = self.cancel.run_until_cancelled(rx.recv()).await {
            match o {
                Outbound::Send { peer, bytes } => {
                    if let Err(e) = self.transport.send(peer, wire::frame(&vault, &bytes)).await {
                        tracing::debug!(%peer, error = %e, "a sync message could not be queued");
                        if matches!(e, transport::Error::QueueFull(_)) {
                            self.reset_later(slot, peer);
                        }
                    }
                }
                Outbound::Paired { vault: id, peers } => {
                    vault = id;
                    if self.update(slot, id, peers).await.is_err() {
                        break;
                    }
                }
                // The peer sent this vault something that is not a sync message of it. Taking the peer out of
                // the gate closes its connections and putting it back lets it (or us) reconnect with a fresh
                // exchange; but when other vaults share the peer (system mode), only this vault starts over, so
                // that one vault's quarrel does not cut the others off.
                Outbound::Drop(peer) => {
                    let shared = self
                        .lock()
                        .by_slot
                        .iter()
                        .any(|(s, v)| *s != slot && v.peers.contains(&peer));
                    if shared {
                        self.reset_later(slot, peer);
                    } else {
                        Arc::clone(&self).cycle(peer).await;
                    }
                }
            }
        }
        self.lock().by_slot.remove(&slot);
        if !self.cancel.is_cancelled() {
            let _ = self.apply_gate(None).await;
        }
    }

    /// Tells the vault of `slot` to start over with `peer`, without waiting on its actor (which may be waiting
    /// for this task).
    fn reset_later(&self, slot: u32, peer: PeerId) {
        let handle = self.lock().by_slot.get(&slot).map(|s| s.handle.clone());
        if let Some(h) = handle
            && !h.try_peer_event(PeerEvent::Reset { peer })
        {
            tracing::warn!(%peer, "the vault is busy; the exchange resumes on the next change");
        }
    }

    /// Sets the gate to the union of the paired sets (without `without`).
    async fn apply_gate(&self, without: Option<PeerId>) -> Result<(), transport::Error> {
        let _turn = self.gate.lock().await;
        let mut union = self.lock().union();
        if let Some(p) = without {
            union.remove(&p);
        }
        self.transport.set_paired(union).await
    }

    /// Takes `peer` out of the gate (its connections close) and lets it back in.
    async fn cycle(self: Arc<Self>, peer: PeerId) {
        let _ = self.apply_gate(Some(peer)).await;
        let _ = self.apply_gate(None).await;
    }

    /// The vault of `slot` now has id `vault` and paired set `peers`.
    async fn update(
        &self,
        slot: u32,
        vault: VaultId,
        peers: HashSet<PeerId>,
    ) -> Result<(), transport::Error> {
        let _turn = self.gate.lock().await;
        let (handle, connect, disconnect, union) = {
            let mut slots = self.lock();
            let before = slots.union();
            let Some(s) = slots.by_slot.get_mut(&slot) else {
                return Ok(());
            };
            s.vault = vault;
            let old = std::mem::replace(&mut s.peers, peers.clone());
            let handle = s.handle.clone();
            let after = slots.union();
            // The transport announces a connected peer only when it enters the union and drops one only when
            // it leaves it: for a peer another vault already shares (or still shares), tell this vault here.
            let connect: Vec<(PeerId, String)> = peers
                .difference(&old)
                .filter(|p| before.contains(p))
                .filter_map(|p| slots.connected.get(p).map(|a| (*p, a.clone())))
                .collect();
            let disconnect: Vec<PeerId> = old
                .difference(&peers)
                .filter(|p| after.contains(p) && slots.connected.contains_key(p))
                .copied()
                .collect();
            (handle, connect, disconnect, after)
        };
        self.transport.set_paired(union).await?;
        for (peer, addr) in connect {
            if !handle.try_peer_event(PeerEvent::Connected { peer, addr }) {
                tracing::warn!(%peer, "the vault is busy; it meets this device at its next connection");
            }
        }
        for peer in disconnect {
            let _ = handle.try_peer_event(PeerEvent::Disconnected { peer });
        }
        Ok(())
    }

    /// Routes to one more vault at once; returns its outbound task for the supervisor to start.
    fn take_on(&self, a: Attach) -> Control {
        // Peers another vault already keeps connected: the transport will not announce them again.
        let mut slots = self.lock();
        let before = slots.union();
        let greet = a
            .paired
            .iter()
            .filter(|p| before.contains(p))
            .filter_map(|p| slots.connected.get(p).map(|addr| (*p, addr.clone())))
            .collect();
        slots.by_slot.insert(
            a.slot,
            Slot {
                vault: a.vault_id,
                peers: a.paired,
                handle: a.handle.clone(),
            },
        );
        Control::Outbound {
            slot: a.slot,
            vault: a.vault_id,
            rx: a.outbound,
            greet,
            handle: a.handle,
            dial: a.addrs,
        }
    }
}

impl Network {
    /// This device's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.handle.peer_id()
    }

    /// The inbound pairing requests, for the pairing service (once; `None` afterwards).
    pub fn take_pair_requests(&mut self) -> Option<mpsc::Receiver<PairRequest>> {
        self.pair_requests.take()
    }

    /// A handle to the transport host (for `status` and pairing).
    pub fn handle(&self) -> transport::Handle {
        self.handle.clone()
    }

    /// The carried vaults, for the pairing service.
    pub fn carried(&self) -> Carried {
        Carried(Arc::clone(&self.router))
    }

    /// The addresses the host listens on.
    pub async fn listen_addrs(&self) -> Vec<String> {
        self.handle
            .listen_addrs()
            .await
            .map(|l| l.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    }

    /// Stops every task (they drop their vault handles) and then the transport host.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if self.supervisor.await.is_err() {
            tracing::error!("the sync supervisor panicked");
        }
        self.router.lock().by_slot.clear();
        let _ = self.handle.shutdown().await;
    }
}
